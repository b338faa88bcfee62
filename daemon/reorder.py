"""Event-time reordering for ``replay``: hold events until the watermark passes them.

Archives are read file by file, so events arrive a little out of order.  ``replay`` promises
event-time order within the allowed lateness: events wait until the newest event time seen minus
the lateness has passed them, then leave in (event time, arrival) order.  Held events are part of
the checkpoint, so a restart neither loses nor reorders them.

Most input is already in order (one delivery file, a sorted export), so :class:`SortedRunBuffer`
(replay's) keeps the in-order run in a deque — an append and a ``popleft`` per event instead of a
heap push and a heap pop — and only events older than the run's newest go to the heap; leaving,
the two merge on (event time, arrival), the order one heap of everything gives.
:class:`ReorderBuffer` is the plain heap, which :mod:`daemon.repartition.watermark` extends.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Any

from detectors.event import Event

__all__ = ["ReorderBuffer", "SortedRunBuffer"]

_Held = tuple[float, int, Event]


class ReorderBuffer:
    """A min-heap on (event time, arrival sequence)."""

    __slots__ = ("_heap", "_seq", "lateness", "newest")

    def __init__(self, lateness: float) -> None:
        self.lateness = lateness
        self._heap: list[_Held] = []
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

    def held(self) -> list[_Held]:
        """Every held entry, unordered."""
        return self._heap

    def snapshot(self) -> list[Any]:
        """The held records (raw dicts) with their origins, in release order."""
        return [[event.raw, event.origin] for _, _, event in sorted(self.held())]

    def restore(self, state: list[Any]) -> None:
        """Re-hold the records of a :meth:`snapshot`."""
        for raw, origin in state:
            self.push(Event(raw, origin))


class SortedRunBuffer(ReorderBuffer):
    """The in-order run in a deque, the events older than it in the heap (see the module docstring)."""

    __slots__ = ("_run",)

    def __init__(self, lateness: float) -> None:
        super().__init__(lateness)
        #: Entries in arrival order whose event times never decrease.
        self._run: deque[_Held] = deque()

    def __len__(self) -> int:
        return len(self._run) + len(self._heap)

    def push(self, event: Event) -> None:
        """Hold ``event``: appended to the run when not older than its newest, else into the heap."""
        self._seq += 1
        time = event.time
        run = self._run
        if not run or time >= run[-1][0]:
            run.append((time, self._seq, event))
        else:
            heapq.heappush(self._heap, (time, self._seq, event))
        if time > self.newest:
            self.newest = time

    def release(self, out: list[Event]) -> None:
        """Append to ``out`` the events the watermark has passed, oldest first."""
        self._take(out, self.newest - self.lateness, -1)

    def drain(self, out: list[Event], limit: int | None = None) -> None:
        """Append every held event (at most ``limit``), oldest first (end of input)."""
        self._take(out, float("inf"), -1 if limit is None else limit)

    def _take(self, out: list[Event], cutoff: float, left: int) -> None:
        """Move entries up to ``cutoff`` to ``out`` in (time, arrival) order, at most ``left`` (-1: all)."""
        run, heap = self._run, self._heap
        append = out.append
        while left:
            if heap:
                # the smaller head of the two; arrival numbers are unique, so events are never compared
                if run and run[0] < heap[0]:
                    if run[0][0] > cutoff:
                        return
                    append(run.popleft()[2])
                else:
                    if heap[0][0] > cutoff:
                        return
                    append(heapq.heappop(heap)[2])
            elif run and run[0][0] <= cutoff:
                append(run.popleft()[2])
            else:
                return
            left -= 1

    def held(self) -> list[_Held]:
        """Every held entry, unordered."""
        return [*self._heap, *self._run]
