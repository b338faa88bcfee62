"""Tumbling event-time windows that are judged when they close: Sigma's "at most" and value aggregates.

Why it exists: ``event_count lt 3``, ``value_count eq 1`` or ``value_avg gte 500`` cannot be decided
while a window is still filling — a later event can make the condition false again.  The sliding
primitives in :mod:`detectors.windows` fire on the event that crosses a threshold; this one keeps
one aggregate per (window, key) and hands out every window the watermark has passed.

Windows are aligned to multiples of the span (``[k·span, (k+1)·span)``), so the window an event
belongs to depends only on its own time: arrival order, replays and restores give the same
windows and the same results.  A window closes when the watermark reaches its end.  An event older
than the watermark is late (``on_late(1)``); it still counts if its window is open, and is dropped
if its window was already judged.

Per (window, key) the state is ``[count, total, ids, values]``: ``ids`` the event ids seen (used to
count a re-delivered event once; at most ``max_ids`` are remembered), ``values`` the distinct values
(at most ``max_values``, enough to compare with the condition) or the numbers to take a percentile
of (at most ``max_values``; later ones are not kept).  At most ``max_keys`` (window, key) pairs are
held; beyond that the oldest window's first keys are evicted (``on_evict(n)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Final

from detectors.windows.store import SNAPSHOT_VERSION, check_snapshot, freeze, thaw

__all__ = ["ClosedWindow", "ClosingWindows"]

_NEG_INF: Final = float("-inf")
AGGREGATES: Final = ("count", "distinct", "sum", "avg", "percentile")


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A complete window for ``key``: ``value`` is the aggregate the condition is compared with."""

    key: Hashable
    start: float
    end: float
    count: int
    value: float
    #: Distinct values (``distinct`` aggregate), at most ``max_evidence``.
    values: tuple[Hashable, ...]
    #: Ids of the window's first events, at most ``max_evidence``.
    event_ids: tuple[str, ...]


def _ignore(_n: int) -> None:
    return None


def _percentile(values: list[float], percentile: float) -> float:
    """Linear-interpolated percentile (the definition numpy and most SIEMs default to)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * percentile / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class ClosingWindows:
    """Per-key aggregates over aligned tumbling windows of ``span`` seconds, judged at close."""

    kind = "closing"

    def __init__(
        self,
        span: float,
        aggregate: str,
        *,
        percentile: float = 50.0,
        max_keys: int = 100_000,
        max_values: int = 10_000,
        max_ids: int = 10_000,
        max_evidence: int = 10,
        on_late: Callable[[int], None] | None = None,
        on_evict: Callable[[int], None] | None = None,
    ) -> None:
        if span <= 0:
            raise ValueError(f"span must be > 0, got {span}")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
        if max_keys < 1 or max_values < 1 or max_ids < 0 or max_evidence < 0:
            raise ValueError("max_keys and max_values must be >= 1, max_ids and max_evidence >= 0")
        self.span = float(span)
        self.aggregate = aggregate
        self.percentile = percentile
        self.max_keys = max_keys
        self.max_values = max_values
        self.max_ids = max_ids
        self.max_evidence = max_evidence
        self._on_late = on_late or _ignore
        self._on_evict = on_evict or _ignore
        self.watermark = _NEG_INF
        #: window index → key → state, windows in insertion order.
        self._windows: dict[int, dict[Hashable, list]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, key: Hashable, time: float, event_id: str | None = None, value: Any = None) -> None:
        """Count one event (with its measured ``value`` for value aggregates) in its window."""
        index = math.floor(time / self.span)
        if time < self.watermark:
            self._on_late(1)
            if (index + 1) * self.span <= self.watermark:
                return  # its window was already judged
        window = self._windows.get(index)
        if window is None:
            window = self._windows[index] = {}
        state = window.get(key)
        if state is None:
            state = window[key] = [0, 0.0, {}, {} if self.aggregate == "distinct" else []]
            self._size += 1
            if self._size > self.max_keys:
                self._evict()
        ids: dict[str, None] = state[2]
        if event_id is not None:
            if event_id in ids:
                return
            if len(ids) < self.max_ids:
                ids[event_id] = None
        state[0] += 1
        if self.aggregate == "count":
            return
        if self.aggregate == "distinct":
            values: dict[Hashable, None] = state[3]
            if len(values) < self.max_values:
                values[value] = None
            return
        state[1] += value
        if self.aggregate == "percentile" and len(state[3]) < self.max_values:
            state[3].append(value)

    def _evict(self) -> None:
        oldest = min(self._windows)
        window = self._windows[oldest]
        victims = list(window)[: max(1, self.max_keys // 64)]
        for victim in victims:
            del window[victim]
        if not window:
            del self._windows[oldest]
        self._size -= len(victims)
        self._on_evict(len(victims))

    def advance(self, watermark: float) -> list[ClosedWindow]:
        """Move the watermark forward; return the windows it closed (oldest first, keys in arrival order)."""
        if watermark <= self.watermark:
            return []
        self.watermark = watermark
        closed: list[ClosedWindow] = []
        for index in sorted(i for i in self._windows if (i + 1) * self.span <= watermark):
            window = self._windows.pop(index)
            self._size -= len(window)
            start = index * self.span
            closed.extend(self._close(key, state, start) for key, state in window.items())
        return closed

    def _close(self, key: Hashable, state: list, start: float) -> ClosedWindow:
        count, total, ids, values = state
        aggregate = self.aggregate
        distinct: tuple[Hashable, ...] = ()
        if aggregate == "count":
            value = float(count)
        elif aggregate == "distinct":
            value = float(len(values))
            distinct = tuple(values)[: self.max_evidence]
        elif aggregate == "sum":
            value = total
        elif aggregate == "avg":
            value = total / count
        else:
            value = _percentile(values, self.percentile)
        return ClosedWindow(
            key=key,
            start=start,
            end=start + self.span,
            count=count,
            value=value,
            values=distinct,
            event_ids=tuple(ids)[: self.max_evidence],
        )

    def snapshot(self) -> dict[str, Any]:
        """All open windows as plain data (``version``-stamped)."""
        return {
            "version": SNAPSHOT_VERSION,
            "kind": self.kind,
            "watermark": None if self.watermark == _NEG_INF else self.watermark,
            "windows": [
                [index, [[freeze(key), [s[0], s[1], list(s[2]), [freeze(v) for v in s[3]]]] for key, s in w.items()]]
                for index, w in self._windows.items()
            ],
        }

    def restore(self, data: Any) -> None:
        """Replace all state with a :meth:`snapshot`; ``ValueError`` if it is foreign or newer."""
        data = check_snapshot(data, self.kind)
        wm = data.get("watermark")
        self.watermark = _NEG_INF if wm is None else float(wm)
        distinct = self.aggregate == "distinct"
        self._windows = {}
        self._size = 0
        for index, keys in data["windows"]:
            window = self._windows[int(index)] = {}
            for key, (count, total, ids, values) in keys:
                loaded = dict.fromkeys(thaw(v) for v in values) if distinct else [float(v) for v in values]
                window[thaw(key)] = [int(count), float(total), dict.fromkeys(ids), loaded]
                self._size += 1
