"""Per-sink spool: alerts wait here, on disk, until their sink has them.

Why a spool: the checkpoint acknowledges input once alerts are *handed over*; if handing over
meant "the remote answered", one slow webhook would stall ingestion.  So an alert is written to
its sink's spool first (the checkpoint waits only for that write to be durable) and a delivery
task drains the spool in order, deleting an entry only after the sink confirmed it.

Why SQLite (stdlib ``sqlite3``, WAL mode) rather than hand-rolled append-only segment files:

* **crash safety for free** — a commit is atomic; a torn write at the tail (power loss, SIGKILL
  mid-write) is rolled back by SQLite on open instead of by our own framing/CRC/truncation code;
* **durability where it matters** — ``synchronous=NORMAL`` in WAL mode: every commit reaches the OS
  (safe against a process crash); :meth:`SqliteSpool.flush` runs a WAL checkpoint, which fsyncs the
  WAL and the database.  The pipeline's checkpoint calls it before acknowledging input, so after a
  power loss anything not fsynced is also not acknowledged and gets re-detected;
* **in-order drain and deletion** are one indexed ``SELECT … ORDER BY seq LIMIT n`` and one
  ``DELETE … WHERE seq <= ?`` — no read/ack offsets to persist next to segment files;
* **bounded size and compaction** — ``max_bytes`` bounds the sum of payloads (the dispatcher blocks
  producers beyond it); ``auto_vacuum=INCREMENTAL`` hands freed pages back when the spool drains,
  and ``journal_size_limit`` truncates the WAL after checkpoints.

One database file per sink (``<spool_dir>/<sink>.spool.sqlite``) so one sink's damage or backlog
never touches another's.  All SQLite work runs on one dedicated thread per spool, off the event loop.
A file that SQLite cannot open is moved aside (``.corrupt-<time>``) and logged at ERROR.

:class:`MemorySpool` has the same interface and ordering without durability (no ``spool_dir``).
Dead letters — alerts a sink refused permanently — go to :class:`DeadLetterFile`, JSON lines.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import orjson
import structlog

from detectors.alert import Alert, wire_extras
from detectors.event import parse_event_time

__all__ = [
    "DeadLetterFile",
    "MemorySpool",
    "Spool",
    "SpoolEntry",
    "SqliteSpool",
    "alert_from_dict",
    "decode_alert",
    "encode_alert",
]

_T = TypeVar("_T")
_FORMAT = 1
log = structlog.get_logger("trailguard.spool")


# -- alert (de)serialisation ---------------------------------------------------------------------
def alert_from_dict(data: Mapping[str, Any], *, entity: str = "") -> Alert:
    """The inverse of :meth:`Alert.to_dict` (times parsed from RFC 3339; ``entity`` is not on the wire)."""
    def seconds(value: Any) -> float:
        return float(value) if isinstance(value, (int, float)) else parse_event_time(str(value))

    return Alert(
        detector=data["detector"],
        title=data["title"],
        severity=data["severity"],
        time=seconds(data["time"]),
        summary=data.get("summary") or "",
        account_id=data.get("account_id") or "",
        region=data.get("region") or "",
        principal=data.get("principal") or "",
        source_ips=list(data.get("source_ips") or []),
        event_ids=list(data.get("event_ids") or []),
        evidence=dict(data.get("evidence") or {}),
        tags=list(data.get("tags") or []),
        rule_id=data.get("rule_id"),
        runbook=data.get("runbook"),
        id=data.get("id") or "",
        detected_at=seconds(data["detected_at"]) if data.get("detected_at") else 0.0,
        entity=entity,
        **wire_extras(data),
        kind=data.get("kind") or "opened",
        incident=dict(data["incident"]) if data.get("incident") else None,
    )


def encode_alert(alert: Alert) -> bytes:
    """Spool form: the wire dict plus the exact float times and the entity."""
    return orjson.dumps({"v": _FORMAT, "alert": alert.to_dict(), "time": alert.time,
                         "detected_at": alert.detected_at, "entity": alert.entity})


def decode_alert(payload: bytes) -> Alert:
    """Inverse of :func:`encode_alert`."""
    data = orjson.loads(payload)
    wire = {**data["alert"], "time": data["time"], "detected_at": data["detected_at"]}
    return alert_from_dict(wire, entity=data.get("entity") or "")


# -- spools --------------------------------------------------------------------------------------
class SpoolEntry(NamedTuple):
    """One spooled alert: its position, id and encoded form."""

    seq: int
    alert_id: str
    payload: bytes


class Spool(ABC):
    """An ordered, bounded-by-the-caller queue of encoded alerts for one sink."""

    durable: bool = False

    def __init__(self) -> None:
        self.depth = 0
        self.size = 0

    @abstractmethod
    async def open(self) -> list[str]:
        """Open (recovering what a previous run left); returns the ids of the entries found."""

    @abstractmethod
    async def append(self, entries: list[tuple[str, bytes]]) -> None:
        """Add ``(alert_id, payload)`` entries at the tail, in one atomic write."""

    @abstractmethod
    async def peek(self, limit: int) -> list[SpoolEntry]:
        """The first ``limit`` entries, oldest first (not removed)."""

    @abstractmethod
    async def remove_through(self, seq: int) -> None:
        """Delete every entry up to and including ``seq`` (they were delivered or dead-lettered)."""

    async def flush(self) -> None:
        """Make every append so far survive a power loss."""
        return None

    async def close(self) -> None:
        """Flush and release the storage."""
        await self.flush()


class MemorySpool(Spool):
    """Same ordering and accounting as :class:`SqliteSpool`, in memory: lost on exit."""

    def __init__(self) -> None:
        super().__init__()
        self._entries: deque[SpoolEntry] = deque()
        self._seq = 0

    async def open(self) -> list[str]:
        """Nothing to recover."""
        return []

    async def append(self, entries: list[tuple[str, bytes]]) -> None:
        """Queue the entries."""
        for alert_id, payload in entries:
            self._seq += 1
            self._entries.append(SpoolEntry(self._seq, alert_id, payload))
            self.size += len(payload)
        self.depth = len(self._entries)

    async def peek(self, limit: int) -> list[SpoolEntry]:
        """The head of the queue."""
        out = []
        for entry in self._entries:
            if len(out) >= limit:
                break
            out.append(entry)
        return out

    async def remove_through(self, seq: int) -> None:
        """Pop delivered entries."""
        entries = self._entries
        while entries and entries[0].seq <= seq:
            self.size -= len(entries.popleft().payload)
        self.depth = len(entries)

    def pending_ids(self) -> list[str]:
        """Ids still queued (logged as lost when the daemon stops before delivering them)."""
        return [entry.alert_id for entry in self._entries]


class SqliteSpool(Spool):
    """A SQLite database in WAL mode, driven from one dedicated thread."""

    durable = True
    #: Hand freed pages back to the file system when this many are free and the spool is empty.
    _VACUUM_PAGES = 256

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"spool:{self.path.stem}")
        self._conn: sqlite3.Connection | None = None
        self._dirty = False

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # Everything below named _sync_* runs on the spool thread.
    def _sync_connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"journal_mode is {mode}, WAL needed")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA journal_size_limit=4194304")
        conn.execute("CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                     "alert_id TEXT NOT NULL, payload BLOB NOT NULL)")
        if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("quick_check failed")
        return conn

    def _sync_open(self) -> list[str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        wal = Path(str(self.path) + "-wal")
        if (self.path.exists() and self.path.stat().st_size == 0
                and not (wal.exists() and wal.stat().st_size > 0)):
            # Truncated (disk full, a copy interrupted) or created and never written: nothing to recover.
            log.warning("spool file is empty (zero length); treated as an empty spool, no alert was "
                        "waiting in it", path=str(self.path))
        try:
            conn = self._sync_connect()
        except sqlite3.DatabaseError as error:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                source = Path(str(self.path) + suffix)
                if source.exists():
                    source.rename(str(aside) + suffix)
            log.error("spool file unreadable; moved aside and starting empty (its alerts are lost "
                      "unless recovered by hand)", path=str(self.path), moved_to=str(aside),
                      error=type(error).__name__, detail=str(error)[:200])
            conn = self._sync_connect()
        self._conn = conn
        rows = conn.execute("SELECT alert_id, length(payload) FROM spool ORDER BY seq").fetchall()
        self.depth = len(rows)
        self.size = sum(size for _, size in rows)
        return [alert_id for alert_id, _ in rows]

    def _sync_append(self, entries: list[tuple[str, bytes]]) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT INTO spool (alert_id, payload) VALUES (?, ?)", entries)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self.depth += len(entries)
        self.size += sum(len(payload) for _, payload in entries)
        self._dirty = True

    def _sync_peek(self, limit: int) -> list[SpoolEntry]:
        assert self._conn is not None
        rows = self._conn.execute("SELECT seq, alert_id, payload FROM spool ORDER BY seq LIMIT ?", (limit,))
        return [SpoolEntry(seq, alert_id, bytes(payload)) for seq, alert_id, payload in rows]

    def _sync_remove(self, seq: int) -> None:
        conn = self._conn
        assert conn is not None
        removed = conn.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM spool WHERE seq <= ?",
                               (seq,)).fetchone()
        conn.execute("DELETE FROM spool WHERE seq <= ?", (seq,))
        self.depth -= removed[0]
        self.size -= removed[1]
        self._dirty = True
        if self.depth == 0 and conn.execute("PRAGMA freelist_count").fetchone()[0] >= self._VACUUM_PAGES:
            conn.executescript("PRAGMA incremental_vacuum;")  # executescript steps it to completion

    def _sync_flush(self) -> None:
        if self._conn is not None and self._dirty:
            self._dirty = False
            # synchronous=NORMAL + WAL: a checkpoint fsyncs the WAL, then the database file.
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _sync_close(self) -> None:
        if self._conn is not None:
            self._sync_flush()
            self._conn.close()
            self._conn = None

    async def open(self) -> list[str]:
        """Open or create the database; returns the ids a previous run left undelivered."""
        return await self._run(self._sync_open)

    async def append(self, entries: list[tuple[str, bytes]]) -> None:
        """One transaction for the whole list."""
        if entries:
            await self._run(self._sync_append, entries)

    async def peek(self, limit: int) -> list[SpoolEntry]:
        """The oldest ``limit`` entries."""
        return await self._run(self._sync_peek, limit)

    async def remove_through(self, seq: int) -> None:
        """Delete delivered entries (and compact when the spool is empty)."""
        await self._run(self._sync_remove, seq)

    async def flush(self) -> None:
        """fsync everything appended or removed since the last flush."""
        await self._run(self._sync_flush)

    async def close(self) -> None:
        """Checkpoint (fsync) and close; the thread ends."""
        try:
            await self._run(self._sync_close)
        finally:
            self._executor.shutdown(wait=False)


# -- dead letters --------------------------------------------------------------------------------
class DeadLetterFile:
    """Appends alerts a sink refused permanently, with the reason, as fsynced JSON lines."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None

    def _write(self, line: bytes) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def keep(self, sink: str, alert: Mapping[str, Any], reason: str) -> bool:
        """Append one record; False (nothing written) when no path is configured."""
        if self.path is None:
            return False
        record = {"sink": sink, "failed_at": time.time(), "reason": reason, "alert": alert}
        await asyncio.to_thread(self._write, orjson.dumps(record) + b"\n")
        return True
