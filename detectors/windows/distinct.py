"""Sliding distinct count per key: "at least N different values within W seconds".

Why it exists: reconnaissance and credential abuse show up as breadth, not volume: many distinct
API calls by one principal, many distinct source IPs for one access key, many distinct regions in
an hour.  A window ending at ``e`` holds the values seen with ``e - window <= t <= e``.

Each add evaluates the window ending at the event itself and, when the event arrived out of order,
the window ending at the key's newest event (where an in-order stream would have fired): arrivals
95(a), 0(b), 30(c) with ``window=100, threshold=3`` fire when 30 arrives, reporting the window
ending at 95.

Duplicates count once by construction: a value seen again at the same time changes nothing and
reports nothing, so no event ids need to be kept.  Per value only the occurrence times that can
still decide a window are kept: of three occurrences spanning at most ``window``, the middle one
is redundant (every window holding it holds one of the others), so each value keeps a handful of
times whatever its rate.

State per key is one flat list ``[newest, v0 … vn-1, occ0 … occn-1]`` where ``occ`` is a float (one
occurrence) or a sorted tuple of floats.  At most ``max_values`` values are kept per key (the one
seen least recently is dropped beyond that; the default,
``max(64, 4 * threshold)``, never hides a window that reaches the threshold at the newest event).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from detectors.windows.primitive import LatePolicy, WindowPrimitive
from detectors.windows.store import bound, freeze, thaw

__all__ = ["DistinctCountWindow", "DistinctReport"]


@dataclass(frozen=True, slots=True)
class DistinctReport:
    """``count`` distinct values for ``key`` between ``start`` and ``end`` reached the threshold."""

    key: Hashable
    start: float
    end: float
    count: int
    #: Values in the window in first-seen order, at most ``max_evidence``.
    values: tuple[Hashable, ...]
    #: The id of the event that completed the window (when it had one).
    event_ids: tuple[str, ...]
    suppressed: int = 0


def _occurs(occ: float | tuple[float, ...], start: float, end: float) -> bool:
    """Whether an occurrence falls in ``[start, end]``."""
    if type(occ) is not tuple:
        return start <= occ <= end
    i = bisect_right(occ, end)
    return i > 0 and occ[i - 1] >= start


def _last(occ: float | tuple[float, ...]) -> float:
    return occ if type(occ) is not tuple else occ[-1]


def _add_occurrence(occ: float | tuple[float, ...], time: float, window: float) -> float | tuple[float, ...] | None:
    """``occ`` with ``time`` added and redundant middles removed; ``None`` if already there."""
    if type(occ) is not tuple:
        if occ == time:
            return None
        return (occ, time) if occ < time else (time, occ)
    i = bisect_left(occ, time)
    if i < len(occ) and occ[i] == time:
        return None
    times = [*occ[:i], time, *occ[i:]]
    j = 1
    while j < len(times) - 1:
        if times[j + 1] - times[j - 1] <= window:
            del times[j]
        else:
            j += 1
    return tuple(times)


def _prune_occurrence(occ: float | tuple[float, ...], cutoff: float) -> float | tuple[float, ...] | None:
    """``occ`` without times before ``cutoff``; ``None`` when nothing is left."""
    if type(occ) is not tuple:
        return occ if occ >= cutoff else None
    if occ[0] >= cutoff:
        return occ
    kept = occ[bisect_left(occ, cutoff) :]
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else kept


class DistinctCountWindow(WindowPrimitive[list]):
    """Counts distinct values per key over a sliding window; reports when distinct >= threshold."""

    kind = "distinct"

    def __init__(
        self,
        window: float,
        threshold: int,
        *,
        max_values: int | None = None,
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
        if max_values is None:
            max_values = max(64, 4 * threshold)
        if max_values < threshold:
            raise ValueError(f"max_values ({max_values}) must be >= threshold ({threshold})")
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
        self.max_values = max_values

    @staticmethod
    def _newest(state: list) -> float:
        return state[0]

    def add(self, key: Hashable, time: float, value: Hashable, event_id: str | None = None) -> DistinctReport | None:
        """Record ``value`` for ``key``; return a report if the window now holds ``threshold`` values."""
        key = bound(key)
        value = bound(value)
        if self._is_dropped_late(time):
            return None
        store = self._store
        state = store.touch(key)
        if state is None or state[0] < store.watermark - self.window:  # absent or expired
            if state is not None:
                store.discard(key)
            state = [time, value, time]
            store.insert(key, state)
            return self._report(key, state, time, event_id) if self.threshold == 1 else None
        n = (len(state) - 1) >> 1
        newest = state[0]
        try:
            i = state.index(value, 1, 1 + n)
        except ValueError:
            state.insert(1 + n, value)
            state.append(time)
            n += 1
            old = None
        else:
            old = state[i + n]
            occ = _add_occurrence(old, time, self.window)
            if occ is None:
                return None  # seen at this very time already: nothing changes
            kept = _prune_occurrence(occ, min(store.watermark - self.window, time))
            state[i + n] = time if kept is None else kept
        if time > newest:
            state[0] = time
        if n < self.threshold:
            return None
        if n > self.max_values:
            self._drop_stalest(state, n)
        return self._evaluate(key, state, time, newest, old, event_id)

    def _evaluate(
        self,
        key: Hashable,
        state: list,
        time: float,
        newest: float,
        old: float | tuple[float, ...] | None,
        event_id: str | None,
    ) -> DistinctReport | None:
        window, threshold = self.window, self.threshold
        self._prune(state, min(self._store.watermark - window, time))  # a late event keeps itself
        if self._count(state, time - window, time) >= threshold:
            return self._report(key, state, time, event_id)
        if time < newest and newest - window <= time:
            # Out of order: did this complete the window ending at the newest event?
            if old is not None and _occurs(old, newest - window, newest):
                return None
            if self._count(state, newest - window, newest) == threshold:
                return self._report(key, state, newest, event_id)
        return None

    @staticmethod
    def _count(state: list, start: float, end: float) -> int:
        n = (len(state) - 1) >> 1
        return sum(1 for occ in state[1 + n :] if _occurs(occ, start, end))

    @staticmethod
    def _prune(state: list, cutoff: float) -> None:
        """Drop occurrences (and values) older than ``cutoff``; keeps at least the newest value."""
        n = (len(state) - 1) >> 1
        for i in range(n - 1, -1, -1):
            occ = state[1 + n + i]
            kept = _prune_occurrence(occ, cutoff)
            if kept is None:
                if len(state) <= 3:
                    return
                del state[1 + n + i]
                del state[1 + i]
                n -= 1
            elif kept is not occ:
                state[1 + n + i] = kept

    @staticmethod
    def _drop_stalest(state: list, n: int) -> None:
        occs = state[1 + n :]
        i = min(range(n), key=lambda k: _last(occs[k]))
        del state[1 + n + i]
        del state[1 + i]

    def _report(self, key: Hashable, state: list, end: float, event_id: str | None) -> DistinctReport | None:
        suppressed = self._release(key, end)
        if suppressed is None:
            return None
        start = end - self.window
        n = (len(state) - 1) >> 1
        values = [state[1 + i] for i in range(n) if _occurs(state[1 + n + i], start, end)]
        return DistinctReport(
            key=key,
            start=start,
            end=end,
            count=len(values),
            values=tuple(values[: self.max_evidence]),
            event_ids=(event_id,) if event_id is not None and self.max_evidence else (),
            suppressed=suppressed,
        )

    def _dump(self, state: list) -> Any:
        n = (len(state) - 1) >> 1
        return [
            state[0],
            [freeze(v) for v in state[1 : 1 + n]],
            [occ if type(occ) is not tuple else list(occ) for occ in state[1 + n :]],
        ]

    def _load(self, data: Any) -> list:
        newest, values, occs = data
        return [
            float(newest),
            *(thaw(v) for v in values),
            *(tuple(float(t) for t in o) if isinstance(o, list) else float(o) for o in occs),
        ]
