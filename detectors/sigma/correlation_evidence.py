"""The event ids behind a distinct-count correlation, so its alert names the events in the firing window.

Why it exists: :class:`~detectors.windows.DistinctCountWindow` keeps values and times, not event
ids (it does not need them to count).  A ``value_count`` alert must still point at the events that
made it, and its deterministic id is derived from them.  :class:`EvidenceLog` keeps, per key, the
(time, id) of recent events in the flat layout of :mod:`detectors.windows.series`, bounded by the
window (expiry by watermark), ``max_events`` per key and ``max_keys`` keys.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Hashable
from typing import Any, Final

from detectors.windows import series
from detectors.windows.store import SNAPSHOT_VERSION, KeyedState, check_snapshot, freeze, thaw

__all__ = ["EvidenceLog"]

_NEG_INF: Final = float("-inf")


class EvidenceLog:
    """Per key, the ids of the events of the last ``window`` seconds (at most ``max_events``)."""

    kind = "evidence"

    def __init__(
        self,
        window: float,
        *,
        max_events: int = 256,
        max_keys: int = 100_000,
        on_evict: Callable[[int], None] | None = None,
    ) -> None:
        self.window = float(window)
        self.max_events = max_events
        self._store: KeyedState[list] = KeyedState(
            horizon=self.window, max_keys=max_keys, newest=series.newest, on_evict=on_evict
        )

    def __len__(self) -> int:
        return len(self._store)

    def add(self, key: Hashable, time: float, event_id: str | None) -> None:
        """Remember one event of ``key`` (events without an id are not evidence)."""
        if event_id is None:
            return
        store = self._store
        events = store.get(key)
        if events is None:
            store.insert(key, [time, event_id])
            return
        cutoff = store.watermark - self.window
        if events[0] < cutoff:
            series.prune(events, cutoff)
        series.insert(events, time, event_id)
        if len(events) > 2 * self.max_events:
            series.trim(events, self.max_events)

    def ids(self, key: Hashable, start: float, end: float, limit: int) -> tuple[str, ...]:
        """Ids of ``key``'s events in ``[start, end]``, at most ``limit`` (first and last ones)."""
        events = self._store.get(key, touch=False)
        if events is None:
            return ()
        n = len(events) >> 1
        lo = bisect_left(events, start, 0, n)
        hi = bisect_right(events, end, lo, n)
        return series.sample_ids(events, lo, hi, limit)

    def advance(self, watermark: float) -> None:
        """Expire keys with no event in the window before ``watermark``."""
        self._store.advance(watermark)

    def snapshot(self) -> dict[str, Any]:
        """Plain-data state."""
        wm = self._store.watermark
        return {
            "version": SNAPSHOT_VERSION,
            "kind": self.kind,
            "watermark": None if wm == _NEG_INF else wm,
            "keys": [[freeze(key), list(events)] for key, events in self._store.items()],
        }

    def restore(self, data: Any) -> None:
        """Load a :meth:`snapshot`; ``ValueError`` if it is foreign or newer."""
        data = check_snapshot(data, self.kind)
        wm = data.get("watermark")
        pairs = []
        for key, events in data["keys"]:
            n = len(events) >> 1
            pairs.append((thaw(key), [float(t) for t in events[:n]] + list(events[n:])))
        self._store.load(pairs, _NEG_INF if wm is None else float(wm))
