"""Checkpoint files: one versioned, atomically replaced msgpack snapshot of all detector state.

Written as temp file → fsync → rename → fsync(directory), so a crash at any instant leaves either
the previous or the new checkpoint, never a torn one.  msgpack (not JSON) because snapshots hold
large lists of floats and ids: it is several times smaller and faster to write than JSON, and it
keeps bytes as bytes.  The header names the format version; a newer trailguard reads older
versions, and an unknown newer version is refused with a message saying what to do.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path
from typing import Any, Final

import msgpack

from daemon import __version__

__all__ = ["FORMAT", "FORMAT_VERSION", "CheckpointError", "StateStore"]

FORMAT: Final = "trailguard-checkpoint"
FORMAT_VERSION: Final = 1
_FILE: Final = "checkpoint.msgpack"


class CheckpointError(Exception):
    """A checkpoint exists but cannot be used; the message says why and what to do."""


class StateStore:
    """Reads and writes ``<dir>/checkpoint.msgpack``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / _FILE

    def prepare(self) -> None:
        """Create the directory and prove it is writable (refuse to start otherwise)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        probe = self.directory / ".write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()

    def load(self) -> dict[str, Any] | None:
        """The last checkpoint's body, or ``None`` when there is none."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            document = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception as error:
            raise CheckpointError(
                f"{self.path}: checkpoint is unreadable ({error}); fix: move it aside to start with "
                "empty state (detections spanning the restart may be missed)"
            ) from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise CheckpointError(f"{self.path}: not a trailguard checkpoint; fix: point state.path at "
                                  "a directory used only by trailguard")
        version = document.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(
                f"{self.path}: checkpoint format version {version} was written by a newer trailguard "
                f"({document.get('trailguard_version')}); this is {__version__} (format {FORMAT_VERSION}); "
                "fix: run the newer version, or move the file aside to start with empty state"
            )
        body = document.get("body")
        return body if isinstance(body, dict) else {}

    def write(self, body: dict[str, Any]) -> int:
        """Encode and atomically replace the checkpoint; returns its size in bytes."""
        return self.write_encoded(self.encode(body))

    def encode(self, body: dict[str, Any]) -> bytes:
        """Serialise a snapshot body with its versioned header (done while state is consistent)."""
        document = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "trailguard_version": __version__,
            "written_at": time.time(),
            "body": body,
        }
        return msgpack.packb(document, use_bin_type=True)

    def write_encoded(self, data: bytes) -> int:
        """Atomically replace the checkpoint with ``data`` (temp → fsync → rename → fsync dir)."""
        # Unique per write: replicas sharing a directory are all pid 1 in their containers.
        temp = self.directory / f".{_FILE}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, self.path)
        except BaseException:
            # Disk full (ENOSPC), quota, I/O error: leave no temp file behind.
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return len(data)
