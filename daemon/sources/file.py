"""The ``file`` source: CloudTrail from local files, directories, globs and standard input.

This is how trailguard replays a downloaded trail (the S3 ``AWSLogs/<account>/CloudTrail/...``
layout), investigates an incident from an export, follows a directory that a sync tool keeps
filling, or reads a live ``tail -f ... | trailguard run``.  Files are processed in sorted path
order (CloudTrail's S3 names sort by delivery time); shapes are detected by :mod:`daemon.decode`.
A small file (most S3 delivery files) is read and decoded inline: a worker thread would cost more
than the decode, and with the GIL it overlaps nothing.  A bigger file is read in a worker thread;
if it is JSON lines it is then decoded a piece (:data:`~daemon.decode.LINE_CHUNK_BYTES`) at a time
on the loop, each piece's batches handed on before the next is decoded (processing starts at once,
memory holds a piece, not the whole file decoded, and the loop runs between pieces); any other big
file is decoded whole in the worker thread.

Resume is at-least-once: each batch carries a :class:`FilePosition`; acknowledged positions
become the checkpoint (files completed, records done in a partly processed file), and a restored
source skips exactly what was acknowledged.  A file is identified by path plus fingerprint (size
and modification time): one that changes is read again, and duplicates are left to the pipeline's
``eventID`` de-duplication.
"""

from __future__ import annotations

import asyncio
import fnmatch
import glob
import os
import stat
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, NamedTuple, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field

from daemon.config import Duration
from daemon.deadletter import InvalidReporter
from daemon.decode import GZIP_MAGIC, decode_bytes, decode_line_chunk, decode_lines, is_json_lines, line_chunks
from daemon.sources.base import Source, SourceBatch
from detectors.event import MAX_RECORD_BYTES

__all__ = ["STDIN", "FilePosition", "FileSource", "FileSourceConfig", "validate_paths"]

#: The path that means standard input.
STDIN: Final = "-"
STDIN_ORIGIN: Final = "<stdin>"
DEFAULT_INCLUDE: Final = ("*.json", "*.json.gz", "*.jsonl", "*.jsonl.gz", "*.ndjson", "*.gz")

_GLOB_CHARS: Final = frozenset("*?[")
_READ_CHUNK: Final = 1 << 16
#: Files up to this size are read and decoded on the loop (a thread hand-off costs more).
_INLINE_BYTES: Final = 256 << 10
_T = TypeVar("_T")


class FileSourceConfig(BaseModel):
    """Settings of one ``file`` source; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["file"] = "file"
    name: str | None = None
    #: Files, directories (searched recursively), glob patterns (``**`` allowed), ``-`` for stdin.
    paths: list[str] = Field(min_length=1)
    #: Keep watching directories and globs for new or changed files.
    follow: bool = False
    poll_interval: Duration = Field(2.0, gt=0)
    #: Most records in one batch handed to the pipeline.
    batch_size: int = Field(500, ge=1)
    #: Larger files (or decompressed streams) are skipped as ``too_large``.
    max_file_bytes: int = Field(512 << 20, ge=1)
    max_record_bytes: int = Field(MAX_RECORD_BYTES, ge=1)
    #: File names picked inside directories (explicit files and glob matches are always read).
    include: list[str] = Field(default_factory=lambda: list(DEFAULT_INCLUDE))


class FilePosition(NamedTuple):
    """Where a batch ends: the file, its fingerprint, records done after it, and if it is the last."""

    path: str
    fingerprint: str
    records_done: int
    last: bool


@dataclass(frozen=True, slots=True)
class _Found:
    path: str
    fingerprint: str
    size: int
    mtime: float


def _is_glob(path: str) -> bool:
    return any(char in _GLOB_CHARS for char in path)


def validate_paths(config: FileSourceConfig) -> list[str]:
    """Human-readable problems with the configured paths (empty when the source can start)."""
    problems: list[str] = []
    if config.paths.count(STDIN) > 1:
        problems.append("file source: '-' (standard input) is listed more than once")
    for raw in config.paths:
        if raw == STDIN:
            continue
        path = os.path.expanduser(raw)
        if _is_glob(path):
            if not config.follow and not glob.glob(path, recursive=True):
                problems.append(f"file source: the pattern {raw!r} matches no file")
            continue
        if not os.path.exists(path):
            problems.append(f"file source: {raw!r} does not exist")
        elif os.path.isdir(path):
            if not os.access(path, os.R_OK | os.X_OK):
                problems.append(f"file source: the directory {raw!r} is not readable")
        elif not os.access(path, os.R_OK):
            problems.append(f"file source: the file {raw!r} is not readable")
    return problems


def _fingerprint(info: os.stat_result) -> str:
    return f"{info.st_size}:{info.st_mtime_ns}"


class FileSource(Source):
    """Reads CloudTrail records from files, directories, globs and stdin (see the module doc)."""

    kind = "file"
    Config: ClassVar[type[FileSourceConfig]] = FileSourceConfig
    #: Acknowledging only records positions in memory, so it happens before the snapshot that stores them.
    local_acknowledge: ClassVar[bool] = True

    def __init__(
        self,
        config: FileSourceConfig,
        invalid: InvalidReporter,
        name: str | None = None,
        *,
        stdin_fd: int | None = None,
    ) -> None:
        super().__init__(name or config.name or config.type, invalid)
        self.config = config
        self._stdin_fd = stdin_fd
        self._stop_event = asyncio.Event()
        #: Acknowledged: path → fingerprint of files fully processed.
        self._completed: dict[str, str] = {}
        #: Acknowledged: path → (fingerprint, records done) of files partly processed.
        self._partial: dict[str, tuple[str, int]] = {}
        #: Files whose batches were all handed out in this run (acknowledged or not).
        self._emitted: dict[str, str] = {}
        #: Fingerprints seen at the previous poll (follow mode: a file is read once it is stable).
        self._previous: dict[str, str] = {}
        self._reported_dirs: set[str] = set()
        self._scans = 0

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def finite(self) -> bool:
        """Without ``follow`` the input ends (standard input ends at EOF)."""
        return not self.config.follow

    async def start(self) -> None:
        """Reset the stop flag; nothing to open (files are opened one at a time)."""
        await super().start()
        self._stop_event.clear()

    async def stop(self) -> None:
        """Make :meth:`batches` return promptly (a poll sleep or a stdin read is interrupted)."""
        await super().stop()
        self._stop_event.set()

    async def _until_stopped(self, awaitable: Awaitable[_T]) -> _T | None:
        """Await ``awaitable`` unless :meth:`stop` comes first (then ``None``)."""
        work = asyncio.ensure_future(awaitable)
        waiter = asyncio.ensure_future(self._stop_event.wait())
        try:
            await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if not work.done():
                work.cancel()
        if work.done() and not work.cancelled():
            return work.result()
        return None

    # -- batches ---------------------------------------------------------------------------------
    async def batches(self) -> AsyncIterator[SourceBatch]:
        """Standard input first (when listed), then files in sorted order; in follow mode, poll."""
        if STDIN in self.config.paths and not self._stopping:
            async for batch in self._stdin_batches():
                yield batch
        if all(path == STDIN for path in self.config.paths):
            return
        while not self._stopping:
            found = await asyncio.to_thread(self._scan)
            self._scans += 1
            self._prune({item.path for item in found})
            now = time.time()
            for item in found:
                if self._stopping:
                    return
                if self._completed.get(item.path) == item.fingerprint:
                    continue
                if self._emitted.get(item.path) == item.fingerprint:
                    continue
                if self.config.follow and not self._stable(item, now):
                    continue
                async for batch in self._file_batches(item):
                    yield batch
            self._previous = {item.path: item.fingerprint for item in found}
            if not self.config.follow:
                return
            await self._until_stopped(asyncio.sleep(self.config.poll_interval))

    def _stable(self, item: _Found, now: float) -> bool:
        """Not still being written: unchanged since the previous poll.

        At the first scan there is no previous poll: files untouched for a poll interval are
        taken as complete, so a restart does not wait a poll for the whole backlog.
        """
        if self._previous.get(item.path) == item.fingerprint:
            return True
        return self._scans == 1 and now - item.mtime >= self.config.poll_interval

    def _split(
        self,
        records: list[Any],
        lines: list[int] | None,
        origin: str,
        start: int,
        position: Callable[[int, bool], FilePosition] | None,
    ) -> list[SourceBatch]:
        """Cut ``records[start:]`` into batches of at most ``batch_size``.

        ``position(records_done, last)`` makes each batch's position (``None``: not resumable).
        """
        size = self.config.batch_size
        total = len(records)
        out: list[SourceBatch] = []
        for begin in range(start, total, size):
            end = min(begin + size, total)
            whole = begin == 0 and end == total
            out.append(SourceBatch(
                source=self.name,
                records=records if whole else records[begin:end],
                origin=origin,
                locations=None if lines is None else (lines if whole else lines[begin:end]),
                first_index=begin,
                position=None if position is None else position(end, end == total),
            ))
        return out

    def _acknowledged_records(self, item: _Found) -> int:
        """Records of ``item`` a checkpoint already covers (its partial position, if unchanged)."""
        partial = self._partial.get(item.path)
        return partial[1] if partial is not None and partial[0] == item.fingerprint else 0

    async def _file_batches(self, item: _Found) -> AsyncIterator[SourceBatch]:
        if item.size <= _INLINE_BYTES:
            decoded = self._load(item)
        else:
            data = await asyncio.to_thread(self._read, item)
            if data is not None and is_json_lines(data):
                async for batch in self._line_batches(item, data):
                    yield batch
                return
            decoded = None if data is None else await asyncio.to_thread(self._decode, item, data)
        self._emitted[item.path] = item.fingerprint
        if decoded is None:
            return
        records, lines = decoded
        skip = self._acknowledged_records(item)
        if skip >= len(records):
            # Nothing (left) to process: nothing to acknowledge either, so it is complete now.
            self._completed[item.path] = item.fingerprint
            self._partial.pop(item.path, None)
            return

        def position(done: int, last: bool) -> FilePosition:
            return FilePosition(item.path, item.fingerprint, done, last)

        for batch in self._split(records, lines, item.path, skip, position):
            if self._stopping:
                return
            yield batch

    async def _line_batches(self, item: _Found, data: bytes) -> AsyncIterator[SourceBatch]:
        """A big JSON-lines file, decoded a piece at a time, cut into the same batches (records,
        line numbers, positions) as decoding it whole; the last one is marked ``last``.

        Records wait in ``records`` until a full batch *and one more* exist, so the file's final
        batch is known to be its last even when the final piece decodes to nothing (bad lines).
        """
        self._emitted[item.path] = item.fingerprint
        skip = self._acknowledged_records(item)
        size = self.config.batch_size
        records: list[Any] = []
        lines: list[int] = []
        first = skip  # the file's index of records[0]
        decoded = 0  # records of the file decoded so far
        for begin, end, first_line in line_chunks(data):
            if self._stopping:
                return
            piece, numbers = decode_line_chunk(data[begin:end], item.path, self.invalid, first_line=first_line,
                                               max_record_bytes=self.config.max_record_bytes)
            keep = max(skip - decoded, 0)
            decoded += len(piece)
            records += piece[keep:] if keep else piece
            lines += numbers[keep:] if keep else numbers
            while len(records) > size:
                yield self._file_batch(item, records[:size], lines[:size], first, last=False)
                del records[:size], lines[:size]
                first += size
            await asyncio.sleep(0)  # the loop runs between pieces (operator endpoint, delivery)
        if not records:  # nothing (left) to process: nothing to acknowledge either, so it is complete now
            self._completed[item.path] = item.fingerprint
            self._partial.pop(item.path, None)
            return
        yield self._file_batch(item, records, lines, first, last=True)

    def _file_batch(self, item: _Found, records: list[Any], lines: list[int], first: int, *, last: bool) -> SourceBatch:
        return SourceBatch(source=self.name, records=records, origin=item.path, locations=lines, first_index=first,
                           position=FilePosition(item.path, item.fingerprint, first + len(records), last))

    # -- files (big ones in a worker thread) -----------------------------------------------------
    def _included(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.config.include)

    def _scan(self) -> list[_Found]:
        """Every file the configured paths name now, sorted by path."""
        found: dict[str, _Found] = {}
        for raw in self.config.paths:
            if raw == STDIN:
                continue
            path = os.path.expanduser(raw)
            for match in glob.glob(path, recursive=True) if _is_glob(path) else [path]:
                if os.path.isdir(match):
                    self._walk(match, found)
                else:
                    self._add(match, found)
        return [found[path] for path in sorted(found)]

    def _walk(self, directory: str, found: dict[str, _Found]) -> None:
        def on_error(error: OSError) -> None:
            where = error.filename or directory
            if where not in self._reported_dirs:  # once per directory, not at every poll
                self._reported_dirs.add(where)
                self.invalid.report("unreadable", origin=str(where), location=None,
                                    detail=f"cannot list directory: {error.strerror or error}")

        for root, _dirs, files in os.walk(directory, onerror=on_error, followlinks=True):
            for name in files:
                if self._included(name):
                    self._add(os.path.join(root, name), found)

    @staticmethod
    def _add(path: str, found: dict[str, _Found]) -> None:
        try:
            info = os.stat(path)
        except OSError:
            return  # vanished between listing and stat; a later poll sees the truth
        if stat.S_ISREG(info.st_mode):
            found[path] = _Found(path, _fingerprint(info), info.st_size, info.st_mtime)

    def _load(self, item: _Found) -> tuple[list[Any], list[int] | None] | None:
        """Read and decode one file; ``None`` when it could not be read."""
        data = self._read(item)
        return None if data is None else self._decode(item, data)

    def _read(self, item: _Found) -> bytes | None:
        """The bytes of one file; ``b""`` when it is too large, ``None`` when it could not be read."""
        limit = self.config.max_file_bytes
        if item.size > limit:
            self.invalid.report("too_large", origin=item.path, location=None,
                                detail=f"file of {item.size} bytes exceeds max_file_bytes {limit}")
            return b""
        try:
            with open(item.path, "rb") as handle:
                data = handle.read(limit + 1)
        except OSError as error:
            self.invalid.report("unreadable", origin=item.path, location=None,
                                detail=f"{type(error).__name__}: {error.strerror or error}")
            return None
        if len(data) > limit:
            self.invalid.report("too_large", origin=item.path, location=None,
                                detail=f"file grew past max_file_bytes {limit}")
            return b""
        return data

    def _decode(self, item: _Found, data: bytes) -> tuple[list[Any], list[int] | None]:
        return decode_bytes(data, item.path, self.invalid,
                            max_record_bytes=self.config.max_record_bytes, max_bytes=self.config.max_file_bytes)

    # -- standard input --------------------------------------------------------------------------
    async def _stdin_chunks(self) -> AsyncIterator[bytes]:
        """Bytes from stdin as they arrive, without blocking the event loop; stops on :meth:`stop`."""
        fd = self._stdin_fd if self._stdin_fd is not None else sys.stdin.fileno()
        loop = asyncio.get_running_loop()
        transport: asyncio.BaseTransport | None = None
        reader: asyncio.StreamReader | None = None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            reader = asyncio.StreamReader(limit=_READ_CHUNK, loop=loop)
            pipe = os.fdopen(os.dup(fd), "rb", buffering=0)
            try:
                transport, _ = await loop.connect_read_pipe(
                    lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe)
            except (OSError, ValueError):
                pipe.close()  # e.g. /dev/null, which epoll refuses: reads never block, use a thread
                reader = None
        try:
            while not self._stopping:
                if reader is not None:
                    chunk = await self._until_stopped(reader.read(_READ_CHUNK))
                else:
                    chunk = await asyncio.to_thread(os.read, fd, 1 << 20)
                if not chunk:
                    return
                yield chunk
        finally:
            if transport is not None:
                transport.close()
                try:
                    os.set_blocking(fd, True)  # the pipe transport made the shared description non-blocking
                except OSError:
                    pass

    @staticmethod
    def _stdin_mode(buffer: bytearray) -> str | None:
        """``lines`` when the first non-blank line is a JSON value alone, ``document`` when it is
        not (pretty-printed or gzip), ``None`` while no complete non-blank line has arrived."""
        start = 0
        while start < len(buffer) and buffer[start] in b" \t\r\n":
            start += 1
        if start >= len(buffer):
            return None
        if buffer[start:start + 2] == GZIP_MAGIC:
            return "document"
        end = buffer.find(b"\n", start)
        if end < 0:
            return None
        try:
            value = orjson.loads(buffer[start:end])
        except orjson.JSONDecodeError:
            return "document"
        return "lines" if isinstance(value, (dict, list)) else "document"

    async def _stdin_batches(self) -> AsyncIterator[SourceBatch]:
        """JSON lines are decoded as they arrive; a document is buffered to EOF, then decoded."""
        limit = self.config.max_file_bytes
        buffer = bytearray()
        mode: str | None = None
        lineno = 0  # lines consumed so far
        overflow = False  # a document over the limit: drain to EOF
        skipping = False  # a line over the limit: drop it up to its newline
        chunks = self._stdin_chunks()
        try:
            async for chunk in chunks:
                if overflow:
                    continue
                buffer += chunk
                if mode is None:
                    mode = self._stdin_mode(buffer)
                if mode != "lines":
                    if len(buffer) > limit:
                        self.invalid.report("too_large", origin=STDIN_ORIGIN, location=None,
                                            detail=f"standard input exceeds max_file_bytes {limit}")
                        buffer = bytearray()
                        overflow = True
                    continue
                if skipping:
                    newline = buffer.find(b"\n")
                    if newline < 0:
                        buffer.clear()
                        continue
                    del buffer[: newline + 1]
                    lineno += 1
                    skipping = False
                cut = buffer.rfind(b"\n")
                if cut >= 0:
                    complete = bytes(buffer[: cut + 1])
                    del buffer[: cut + 1]
                    for batch in self._decode_stdin_lines(complete, lineno):
                        yield batch
                    lineno += complete.count(b"\n")
                if len(buffer) > limit:  # the unfinished line
                    self.invalid.report("too_large", origin=STDIN_ORIGIN, location=lineno + 1,
                                        detail=f"line exceeds max_file_bytes {limit}")
                    buffer.clear()
                    skipping = True
            if self._stopping or overflow or skipping or not buffer:
                return
            if mode == "lines":
                for batch in self._decode_stdin_lines(bytes(buffer), lineno):
                    yield batch
                return
            records, lines = await asyncio.to_thread(
                decode_bytes, bytes(buffer), STDIN_ORIGIN, self.invalid,
                max_record_bytes=self.config.max_record_bytes, max_bytes=limit)
            for batch in self._split(records, lines, STDIN_ORIGIN, 0, None):
                yield batch
        finally:
            await chunks.aclose()

    def _decode_stdin_lines(self, data: bytes, lines_before: int) -> list[SourceBatch]:
        records, lines = decode_lines(data, STDIN_ORIGIN, self.invalid, first_line=lines_before + 1,
                                      max_record_bytes=self.config.max_record_bytes)
        return self._split(records, lines, STDIN_ORIGIN, 0, None)

    # -- positions -------------------------------------------------------------------------------
    async def acknowledge(self, positions: list[Any]) -> None:
        """Record batches a checkpoint covers: a file is complete once its last batch is."""
        for position in positions:
            if not isinstance(position, FilePosition):
                continue  # standard input is not resumable
            path, fingerprint, done, last = position
            if last:
                self._completed[path] = fingerprint
                current = self._partial.get(path)
                if current is not None and current[0] == fingerprint:
                    del self._partial[path]
                continue
            if self._completed.get(path) == fingerprint:
                continue
            current = self._partial.get(path)
            if current is None or current[0] != fingerprint or current[1] < done:
                self._partial[path] = (fingerprint, done)

    def checkpoint_positions(self) -> dict[str, Any]:
        """``{"completed": {path: fingerprint}, "partial": {path: {"fingerprint", "records"}}}``."""
        return {
            "completed": dict(self._completed),
            "partial": {path: {"fingerprint": fp, "records": done}
                        for path, (fp, done) in self._partial.items()},
        }

    def restore_positions(self, positions: dict[str, Any]) -> None:
        """Skip completed, unchanged files and the acknowledged records of a partly done file."""
        completed = positions.get("completed")
        if isinstance(completed, dict):
            self._completed = {path: fp for path, fp in completed.items()
                               if isinstance(path, str) and isinstance(fp, str)}
        partial = positions.get("partial")
        if isinstance(partial, dict):
            self._partial = {}
            for path, entry in partial.items():
                if not isinstance(entry, dict):
                    continue
                fp, done = entry.get("fingerprint"), entry.get("records")
                if isinstance(fp, str) and isinstance(done, int) and done >= 0:
                    self._partial[path] = (fp, done)

    def _prune(self, present: set[str]) -> None:
        """Forget files that no longer exist, so memory stays bounded by what is on disk."""
        for table in (self._completed, self._partial, self._emitted, self._previous):
            for path in [path for path in table if path not in present]:
                del table[path]
