"""Where input that is not a usable CloudTrail event goes: counted, logged once, kept whole.

Bad input must never stop the daemon and never vanish silently.  Every source and the pipeline
hand each rejected piece to one :class:`InvalidReporter`, which

* increments ``trailguard_events_invalid_total{reason}`` (``reason`` is a fixed, low-cardinality
  label, one of :data:`REASONS`),
* logs one stable warning line (``invalid input skipped``) with a short preview, never the payload,
* and, when a dead-letter path is configured, appends one JSON line holding the payload *whole*
  so that an operator can inspect or replay it — up to :data:`MAX_PAYLOAD_BYTES` (more than the
  largest record accepted).  A larger payload (a gzip bomb, a 500 MB junk file) is kept as a
  bounded excerpt plus its size and SHA-256, so one hostile input cannot fill the disk.

Decoding runs in worker threads (``asyncio.to_thread``), so :meth:`InvalidReporter.report` is
thread-safe.  A dead-letter file that cannot be written is logged once at ERROR (data is lost from
then on) and never raises into the pipeline.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

import orjson
import structlog

from daemon.metrics import Metrics

__all__ = ["EXCERPT_BYTES", "MAX_PAYLOAD_BYTES", "REASONS", "InvalidReporter"]

#: Every ``reason`` label trailguard uses for invalid input (documented in the metrics reference).
REASONS: Final[frozenset[str]] = frozenset({
    "invalid_json",     # not parseable as JSON (a whole document, or one JSON-lines line)
    "truncated_gzip",   # the gzip stream ends early; what came out before was kept if usable
    "bad_gzip",         # corrupt gzip data
    "unknown_shape",    # valid JSON, but not a CloudTrail shape
    "not_an_object",    # a record that is not a JSON object
    "missing_field",    # a record without eventTime / eventName
    "wrong_type",       # a field of the wrong JSON type
    "bad_event_time",   # an eventTime that does not parse, or lies outside 1970..9999 in UTC
    "future_time",      # an eventTime further ahead of the wall clock than pipeline.max_future_skew
    "too_large",        # a record, file or decompressed stream over its size (or gzip ratio) limit
    "too_deep",         # a record nested past what JSON encoders allow (254 levels)
    "repaired_json",    # junk around a document, invalid UTF-8 or a raw NUL: dropped, records kept
    "undecodable",      # decoding failed unexpectedly; the unit is dead-lettered, the source goes on
    "unreadable",       # an I/O error reading the input
})

_PREVIEW_CHARS: Final = 200
#: Payloads up to this size are dead-lettered whole (a record is at most 1 MiB by default).
MAX_PAYLOAD_BYTES: Final = 2 << 20
#: Bytes kept from the start of a larger payload.
EXCERPT_BYTES: Final = 64 << 10


def _preview(payload: bytes | str | object | None) -> str | None:
    """At most :data:`_PREVIEW_CHARS` characters of ``payload`` for the log line."""
    if payload is None:
        return None
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload[: _PREVIEW_CHARS * 4]).decode("utf-8", "replace")[:_PREVIEW_CHARS]
    if isinstance(payload, str):
        return payload[:_PREVIEW_CHARS]
    try:
        text = orjson.dumps(payload, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        text = _safe_repr(payload)
    return text[:_PREVIEW_CHARS]


def _safe_repr(payload: object) -> str:
    """``repr`` that survives a value nested past the interpreter's recursion limit."""
    try:
        return repr(payload)
    except RecursionError:
        return f"<{type(payload).__name__} nested too deeply to represent>"


def _excerpt_fields(raw: bytes) -> dict[str, Any]:
    """A payload too large to keep: its first :data:`EXCERPT_BYTES`, its size and its SHA-256."""
    head = raw[:EXCERPT_BYTES]
    return {
        "payload": base64.b64encode(head).decode("ascii"),
        "payload_encoding": "base64",
        "payload_truncated": True,
        "payload_bytes": len(raw),
        "payload_sha256": hashlib.sha256(raw).hexdigest(),
    }


def _payload_fields(payload: bytes | str | object | None) -> dict[str, Any]:
    """The dead-letter ``payload`` (and ``payload_encoding`` when it is not plain text)."""
    if payload is None:
        return {"payload": None}
    if isinstance(payload, str) and len(payload) > MAX_PAYLOAD_BYTES // 4:
        payload = payload.encode("utf-8", "surrogatepass")
    if not isinstance(payload, (bytes, bytearray, memoryview, str)):
        try:
            encoded = orjson.dumps(payload, default=str, option=orjson.OPT_NON_STR_KEYS)
        except (TypeError, orjson.JSONEncodeError):
            encoded = None
        if encoded is not None and len(encoded) > MAX_PAYLOAD_BYTES:
            return _excerpt_fields(encoded)
    if isinstance(payload, (bytes, bytearray, memoryview)):
        raw = bytes(payload)
        if len(raw) > MAX_PAYLOAD_BYTES:
            return _excerpt_fields(raw)
        try:
            return {"payload": raw.decode("utf-8")}
        except UnicodeDecodeError:
            return {"payload": base64.b64encode(raw).decode("ascii"), "payload_encoding": "base64"}
    if isinstance(payload, str):
        return {"payload": payload}
    # A decoded JSON value (a dict or list that failed validation): kept as JSON, not as text.
    return {"payload": payload, "payload_encoding": "json"}


class InvalidReporter:
    """Counts, logs and dead-letters invalid input; shared by every source and the pipeline."""

    def __init__(
        self,
        metrics: Metrics,
        dead_letter_path: Path | None = None,
        logger: Any | None = None,
    ) -> None:
        self.metrics = metrics
        self.dead_letter_path = Path(dead_letter_path) if dead_letter_path is not None else None
        self._log = logger if logger is not None else structlog.get_logger("trailguard.deadletter")
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._broken = False

    def report(
        self,
        reason: str,
        *,
        origin: str,
        location: int | str | None,
        detail: str,
        payload: bytes | str | object | None = None,
    ) -> None:
        """Record one piece of invalid input; never raises."""
        self.metrics.events_invalid.labels(reason=reason).inc()
        self._log.warning(
            "invalid input skipped",
            reason=reason,
            origin=origin,
            location=location,
            detail=detail,
            preview=_preview(payload),
        )
        if self.dead_letter_path is not None and not self._broken:
            self._write(reason, origin, location, detail, payload)

    def _write(
        self, reason: str, origin: str, location: int | str | None, detail: str, payload: object
    ) -> None:
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "reason": reason,
            "origin": origin,
            "location": location,
            "detail": detail,
        }
        entry.update(_payload_fields(payload))
        try:
            line = orjson.dumps(
                entry, default=str, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
            )
        except (TypeError, orjson.JSONEncodeError):
            entry["payload"] = _safe_repr(payload)[:EXCERPT_BYTES]
            entry["payload_encoding"] = "repr"
            line = orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)
        with self._lock:
            if self._broken:
                return
            try:
                if self._file is None:
                    assert self.dead_letter_path is not None
                    self.dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
                    self._file = open(self.dead_letter_path, "ab")  # noqa: SIM115 - kept open
                self._file.write(line)
                self._file.flush()
            except OSError as error:
                self._broken = True
                self._close_quietly()
                self._log.error(
                    "dead-letter file unwritable, invalid input is no longer kept",
                    path=str(self.dead_letter_path),
                    error=str(error),
                )

    def _close_quietly(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def close(self) -> None:
        """Close the dead-letter file (further reports reopen it)."""
        with self._lock:
            self._close_quietly()
