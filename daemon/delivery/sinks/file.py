"""``file`` sink: JSON lines appended to a file, fsynced on flush (a checkpoint waits for it)."""

from __future__ import annotations

import asyncio
import os
from typing import Literal

import orjson

from daemon.delivery.sinks.base import Sink, SinkConfig
from detectors.alert import Alert

__all__ = ["FileSink", "FileSinkConfig"]


class FileSinkConfig(SinkConfig):
    """``type: file`` with the ``path`` to append to (created with its directory if missing)."""

    type: Literal["file"] = "file"
    path: str
    fsync: bool = True


class FileSink(Sink):
    """Appends alerts as JSON lines; :meth:`flush` fsyncs so a checkpoint never outruns the file."""

    kind = "file"
    Config = FileSinkConfig

    def __init__(self, config: FileSinkConfig) -> None:
        super().__init__(config)
        self.path = config.path
        self._fd: int | None = None
        self._dirty = False

    async def start(self) -> None:
        """Open the file for appending (O_APPEND keeps concurrent writers' lines whole)."""
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    async def send(self, alerts: list[Alert]) -> None:
        """Append one line per alert in a single write."""
        if self._fd is None:
            await self.start()
        data = b"".join(orjson.dumps(a.to_dict()) + b"\n" for a in alerts)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)  # type: ignore[arg-type]
            view = view[written:]
        self._dirty = True

    async def flush(self) -> None:
        """fsync what was written since the last flush (off the event loop)."""
        if self._fd is not None and self._dirty and self.config.fsync:  # type: ignore[attr-defined]
            self._dirty = False
            await asyncio.to_thread(os.fsync, self._fd)

    async def stop(self) -> None:
        """fsync and close."""
        await self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
