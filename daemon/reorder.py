"""Event-time reordering for ``replay``: hold events until the watermark passes them.

Archives are read file by file, so events arrive a little out of order.  ``replay`` promises
event-time order within the allowed lateness: events wait in a heap until the newest event time
seen minus the lateness has passed them, then leave in time order.  Held events are part of the
checkpoint, so a restart neither loses nor reorders them.
"""

from __future__ import annotations

import heapq
from typing import Any

from detectors.event import Event

__all__ = ["ReorderBuffer"]


class ReorderBuffer:
    """A min-heap on (event time, arrival sequence)."""

    __slots__ = ("_heap", "_seq", "lateness", "newest")

    def __init__(self, lateness: float) -> None:
        self.lateness = lateness
        self._heap: list[tuple[float, int, Event]] = []
        self._seq = 0
        self.newest = float("-inf")

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, event: Event) -> None:
        """Hold ``event`` until the watermark passes it."""
        self._seq += 1
        heapq.heappush(self._heap, (event.time, self._seq, event))
        if event.time > self.newest:
            self.newest = event.time

    def release(self, out: list[Event]) -> None:
        """Append to ``out`` the events the watermark has passed, oldest first."""
        cutoff = self.newest - self.lateness
        heap = self._heap
        while heap and heap[0][0] <= cutoff:
            out.append(heapq.heappop(heap)[2])

    def drain(self, out: list[Event], limit: int | None = None) -> None:
        """Append every held event (at most ``limit``), oldest first (end of input)."""
        heap = self._heap
        left = len(heap) if limit is None else limit
        while heap and left > 0:
            out.append(heapq.heappop(heap)[2])
            left -= 1

    def snapshot(self) -> list[Any]:
        """The held records (raw dicts) with their origins, in heap order."""
        return [[event.raw, event.origin] for _, _, event in sorted(self._heap)]

    def restore(self, state: list[Any]) -> None:
        """Re-hold the records of a :meth:`snapshot`."""
        for raw, origin in state:
            self.push(Event(raw, origin))
