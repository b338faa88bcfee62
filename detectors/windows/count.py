"""Sliding count per key: "at least N events within W seconds" (brute force, AccessDenied bursts).

Why it exists: threshold rules (Panther ``Threshold``, Sigma ``event_count``) all reduce to "how many
events for this key fall in the window ending at this event".  The window slides with every event,
it is not tumbling: events at t=0, 30, 95 with ``window=100, threshold=3`` fire at 95; events at
t=0, 30, 105 never do.  A window ending at ``e`` holds the events with ``e - window <= t <= e``.

Out-of-order events (within the lateness) are put in their place: arrivals 95, 0, 30 fire when 30
arrives, reporting the window ending at 95.  An event inserted into the past can complete a window
that ends at a later event; the earliest such window is reported.

State per key is one flat list of event times and ids (see :mod:`detectors.windows.series`),
holding at most ``max_events`` events (the oldest are dropped beyond that, so counts saturate
there; keep ``max_events >= threshold``).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from detectors.windows import series
from detectors.windows.primitive import LatePolicy, WindowPrimitive
from detectors.windows.store import bound

__all__ = ["CountReport", "CountWindow"]


@dataclass(frozen=True, slots=True)
class CountReport:
    """``count`` events for ``key`` between ``start`` and ``end`` (inclusive) reached the threshold."""

    key: Hashable
    start: float
    end: float
    count: int
    #: Ids of events in the window, at most ``max_evidence``: the first ones and the last ones.
    event_ids: tuple[str, ...]
    #: Reports held back by the throttle since the previous report for this key.
    suppressed: int = 0


class CountWindow(WindowPrimitive[list]):
    """Counts events per key over a sliding event-time window; reports when count >= threshold."""

    kind = "count"

    def __init__(
        self,
        window: float,
        threshold: int,
        *,
        max_events: int = 1000,
        max_keys: int = 100_000,
        late_policy: LatePolicy = "evaluate",
        on_late: Callable[[int], None] | None = None,
        on_evict: Callable[[int], None] | None = None,
        throttle: float | None = None,
        max_evidence: int = 10,
    ) -> None:
        if window <= 0:
            raise ValueError(f"window must be > 0, got {window}")
        if threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {threshold}")
        if max_events < threshold:
            raise ValueError(f"max_events ({max_events}) must be >= threshold ({threshold})")
        super().__init__(
            horizon=window,
            max_keys=max_keys,
            late_policy=late_policy,
            on_late=on_late,
            on_evict=on_evict,
            throttle=throttle,
            max_evidence=max_evidence,
        )
        self.window = float(window)
        self.threshold = threshold
        self.max_events = max_events

    _newest = staticmethod(series.newest)

    def add(self, key: Hashable, time: float, event_id: str | None = None) -> CountReport | None:
        """Count one event; return a report if it completes a window of ``threshold`` events."""
        key = bound(key)
        store = self._store
        if time < store.watermark and self._is_dropped_late(time):
            return None
        events = store.touch(key)  # an expired key's events are all pruned below: same as absent
        if events is None:
            events = [time, event_id]
            store.insert(key, events)
            return self._report(key, events, 0, 1, time) if self.threshold == 1 else None
        window = self.window
        cutoff = store.watermark - window
        if events[0] < cutoff:
            series.prune(events, cutoff)
        at = series.insert(events, time, event_id)
        if at < 0:
            return None  # the same event again
        report = self._evaluate(key, events, at, time)
        if len(events) > 2 * self.max_events:
            series.trim(events, self.max_events)
        return report

    def _evaluate(self, key: Hashable, events: list, at: int, time: float) -> CountReport | None:
        window, threshold = self.window, self.threshold
        n = len(events) >> 1
        stop = bisect_right(events, time, at, n)
        lo = bisect_left(events, time - window, 0, at + 1)
        if stop - lo >= threshold:
            return self._report(key, events, lo, stop, time)
        # Inserted into the past: a later window that now holds exactly `threshold` just crossed.
        limit = time + window
        j = stop
        while j < n and events[j] <= limit:
            end = events[j]
            j_stop = bisect_right(events, end, j, n)
            lo = bisect_left(events, end - window, lo, j)
            if j_stop - lo == threshold:
                return self._report(key, events, lo, j_stop, end)
            j = j_stop
        return None

    def _report(self, key: Hashable, events: list, lo: int, stop: int, end: float) -> CountReport | None:
        suppressed = self._release(key, end)
        if suppressed is None:
            return None
        return CountReport(
            key=key,
            start=end - self.window,
            end=end,
            count=stop - lo,
            event_ids=series.sample_ids(events, lo, stop, self.max_evidence),
            suppressed=suppressed,
        )

    def _dump(self, state: list) -> Any:
        return list(state)

    def _load(self, data: Any) -> list:
        n = len(data) >> 1
        return [float(t) for t in data[:n]] + list(data[n:])
