"""The replay progress bar: bytes of input done out of the total known up front, events, alerts,
ETA — on stderr, only on a terminal, and cleared (transient) before the summary is printed.

Progress is observed, not computed by the pipeline: the file source's batches are wrapped, and a
file counts as done when its last batch has been handed on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["ReplayProgress"]


class ReplayProgress:
    """A transient rich progress bar over a replay's input files."""

    def __init__(self, console: Console, sizes: dict[str, int], counts: dict[str, int]) -> None:
        self._sizes = sizes
        self._counts = counts
        self._progress = Progress(
            TextColumn("[bold]replay"), BarColumn(), DownloadColumn(), TextColumn("{task.fields[files]}"),
            TextColumn("{task.fields[events]} events, {task.fields[alerts]} alerts"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=True, refresh_per_second=4,
        )
        self._task = self._progress.add_task("replay", total=sum(sizes.values()) or None,
                                             files=self._files(0), events="0", alerts="0")
        self._files_done = 0
        self._ticker: asyncio.Task[None] | None = None

    def _files(self, done: int) -> str:
        return f"{done}/{len(self._sizes)} files"

    def watch(self, source: Any) -> None:
        """Wrap ``source.batches`` so each finished file advances the bar."""
        original = source.batches

        async def observed() -> AsyncIterator[Any]:
            async for batch in original():
                yield batch
                position = batch.position
                if position is not None and getattr(position, "last", False):
                    self._files_done += 1
                    self._progress.update(self._task, advance=self._sizes.get(position.path, 0),
                                          files=self._files(self._files_done))

        source.batches = observed

    async def _tick(self) -> None:
        while True:
            self._progress.update(self._task, events=f"{self._counts['processed']:,}",
                                  alerts=f"{self._counts['alerts']:,}")
            await asyncio.sleep(0.25)

    def __enter__(self) -> ReplayProgress:
        self._progress.start()
        self._ticker = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        self._progress.stop()
