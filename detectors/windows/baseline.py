"""Rate per key per time bucket against the key's own EWMA baseline (RunInstances spikes and the like).

Why it exists: a fixed threshold cannot fit both an account that launches two instances a day and
one that launches hundreds an hour.  Each key (say account + region) is compared with itself:
events are counted in buckets of ``bucket`` seconds aligned to the epoch, and a bucket whose count
exceeds ``max(min_count, threshold_factor × baseline)`` is reported once, as soon as it does.

The baseline is an exponentially weighted moving average of closed buckets
(``baseline = alpha × count + (1 − alpha) × baseline``; the first closed bucket seeds it; buckets
without events count as zero).  A bucket closes when the watermark reaches its end, so events
late by less than the allowed lateness still land in their own bucket.  Closing is applied lazily,
per key, before each use, which gives the same result as closing every bucket the moment the
watermark passes it, without a scan over keys.  ``warmup`` buckets of history (closed buckets since
the key's first) are required before a key can report.

Late policy: an event late enough that its bucket has already closed cannot be counted any more
(the bucket is folded into the baseline); it is reported to ``on_late`` and ``add`` returns
``None``.  A late event whose bucket is still open is counted normally.  Duplicate event ids in a
bucket count once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from detectors.windows.primitive import LatePolicy, WindowPrimitive
from detectors.windows.store import bound

__all__ = ["BaselineRate", "SpikeReport"]

_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class SpikeReport:
    """Bucket ``[start, end)`` of ``key`` holds ``count`` events, above ``limit`` (from ``baseline``)."""

    key: Hashable
    start: float
    end: float
    count: int
    baseline: float
    limit: float
    #: The first ids of the bucket's events, at most ``max_evidence``.
    event_ids: tuple[str, ...]
    suppressed: int = 0


class _Bucket:
    __slots__ = ("count", "ids", "index", "reported", "sample")

    def __init__(self, index: int) -> None:
        self.index = index
        self.count = 0
        self.reported = False
        self.ids: set[str] | None = None
        self.sample: list[str] = []


class _Rate:
    """Per-key state: newest time, EWMA baseline, last closed bucket, buckets of history, open buckets."""

    __slots__ = ("baseline", "closed", "history", "newest", "open")

    def __init__(self, newest: float) -> None:
        self.newest = newest
        self.baseline = 0.0
        self.closed: int | None = None  # index of the last bucket folded into the baseline
        self.history = 0  # buckets folded so far (including empty ones)
        self.open: list[_Bucket] = []  # sorted by index


def _newest(state: _Rate) -> float:
    return state.newest


class BaselineRate(WindowPrimitive[_Rate]):
    """Reports a key's bucket whose count exceeds ``max(min_count, threshold_factor × baseline)``."""

    kind = "baseline"

    def __init__(
        self,
        bucket: float,
        alpha: float,
        threshold_factor: float,
        min_count: int,
        *,
        warmup: int = 0,
        ttl: float = 7 * _DAY,
        max_keys: int = 100_000,
        late_policy: LatePolicy = "evaluate",
        on_late: Callable[[int], None] | None = None,
        on_evict: Callable[[int], None] | None = None,
        throttle: float | None = None,
        max_evidence: int = 10,
    ) -> None:
        if bucket <= 0:
            raise ValueError(f"bucket must be > 0, got {bucket}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if threshold_factor <= 0:
            raise ValueError(f"threshold_factor must be > 0, got {threshold_factor}")
        if min_count < 0 or warmup < 0:
            raise ValueError("min_count and warmup must be >= 0")
        if ttl < bucket:
            raise ValueError(f"ttl ({ttl}) must be >= bucket ({bucket})")
        super().__init__(
            horizon=ttl,
            max_keys=max_keys,
            late_policy=late_policy,
            on_late=on_late,
            on_evict=on_evict,
            throttle=throttle,
            max_evidence=max_evidence,
        )
        self.bucket = float(bucket)
        self.alpha = float(alpha)
        self.threshold_factor = float(threshold_factor)
        self.min_count = min_count
        self.warmup = warmup

    _newest = staticmethod(_newest)

    def baseline(self, key: Hashable) -> float | None:
        """The key's current baseline (closed buckets only), or ``None`` for an unknown key."""
        key = bound(key)
        state = self._store.get(key, touch=False)
        if state is None:
            return None
        self._close(state)
        return state.baseline

    def add(self, key: Hashable, time: float, event_id: str | None = None) -> SpikeReport | None:
        """Count one event in its bucket; return a report when that bucket first exceeds its limit."""
        key = bound(key)
        late = time < self._store.watermark
        if self._is_dropped_late(time):
            return None
        index = math.floor(time / self.bucket)
        if late and index <= self._last_closed_index():
            return None  # its bucket is closed and folded into the baseline
        store = self._store
        state = store.get(key)
        if state is None:
            state = _Rate(time)
            store.insert(key, state)
        else:
            self._close(state)
            if time > state.newest:
                state.newest = time
        bucket = self._open_bucket(state, index)
        if event_id is not None:
            if bucket.ids is None:
                bucket.ids = {event_id}
            elif event_id in bucket.ids:
                return None
            else:
                bucket.ids.add(event_id)
            if len(bucket.sample) < self.max_evidence:
                bucket.sample.append(event_id)
        bucket.count += 1
        if bucket.reported or state.history < self.warmup:
            return None
        limit = max(float(self.min_count), self.threshold_factor * state.baseline)
        if bucket.count <= limit:
            return None
        bucket.reported = True
        start = index * self.bucket
        suppressed = self._release(key, start + self.bucket)
        if suppressed is None:
            return None
        return SpikeReport(
            key=key,
            start=start,
            end=start + self.bucket,
            count=bucket.count,
            baseline=state.baseline,
            limit=limit,
            event_ids=tuple(bucket.sample),
            suppressed=suppressed,
        )

    def _last_closed_index(self) -> int | float:
        """Index of the newest bucket the watermark has closed (``-inf`` before any watermark)."""
        wm = self._store.watermark
        return math.floor(wm / self.bucket) - 1 if wm != float("-inf") else wm

    @staticmethod
    def _open_bucket(state: _Rate, index: int) -> _Bucket:
        buckets = state.open
        for position, bucket in enumerate(buckets):
            if bucket.index == index:
                return bucket
            if bucket.index > index:
                bucket = _Bucket(index)
                buckets.insert(position, bucket)
                return bucket
        bucket = _Bucket(index)
        buckets.append(bucket)
        return bucket

    def _close(self, state: _Rate) -> None:
        """Fold every bucket the watermark has closed into the baseline, empty ones included."""
        upto = self._last_closed_index()
        if upto == float("-inf"):
            return
        keep = 1.0 - self.alpha
        buckets = state.open
        while buckets and buckets[0].index <= upto:
            bucket = buckets.pop(0)
            if state.closed is None:
                state.baseline = float(bucket.count)
                state.history = 1
            else:
                gap = bucket.index - state.closed - 1
                state.baseline = self.alpha * bucket.count + keep * state.baseline * keep**gap
                state.history += gap + 1
            state.closed = bucket.index
        if state.closed is not None and state.closed < upto:
            gap = int(upto) - state.closed
            state.baseline *= keep**gap
            state.history += gap
            state.closed = int(upto)

    def _dump(self, state: _Rate) -> Any:
        return [
            state.newest,
            state.baseline,
            state.closed,
            state.history,
            [
                [b.index, b.count, b.reported, None if b.ids is None else sorted(b.ids), list(b.sample)]
                for b in state.open
            ],
        ]

    def _load(self, data: Any) -> _Rate:
        newest, baseline, closed, history, buckets = data
        state = _Rate(float(newest))
        state.baseline = float(baseline)
        state.closed = None if closed is None else int(closed)
        state.history = int(history)
        for index, count, reported, ids, sample in buckets:
            bucket = _Bucket(int(index))
            bucket.count = int(count)
            bucket.reported = bool(reported)
            bucket.ids = None if ids is None else set(ids)
            bucket.sample = list(sample)
            state.open.append(bucket)
        return state
