"""First-seen values per key after a learning period: new region for an account, new API for a role.

Why it exists: "this account has never been used in ap-east-1" is one of the strongest signals in
CloudTrail, but only once the account's normal set has been learned.  The learning period is
measured in event time from the first event of each key (so replaying a month of logs learns the
same way as living through it).  During learning values are recorded silently; afterwards a value
not seen for ``ttl`` seconds (or never) is reported once.

State stays bounded: a value is forgotten ``ttl`` seconds (default 90 days) of watermark after it
was last seen, a key is forgotten when none of its values is remembered any more (its learning then
starts over), each key holds at most ``max_values`` values (the ones seen least recently are dropped
beyond that, in small batches), and keys are capped like every primitive.  Duplicate events are harmless: the value
is known by the time the copy arrives.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from itertools import islice
from typing import Any

from detectors.windows.primitive import LatePolicy, WindowPrimitive
from detectors.windows.store import bound, freeze, thaw

__all__ = ["FirstSeen", "FirstSeenReport"]

_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class FirstSeenReport:
    """``value`` was seen for ``key`` at ``time`` for the first time since learning ended."""

    key: Hashable
    value: Hashable
    time: float
    #: Event time of the first event of this key (learning ran from here for ``learning_period``).
    learning_started: float
    #: How many other values are remembered for this key.
    known: int
    event_ids: tuple[str, ...]
    suppressed: int = 0


class _Seen:
    """Per-key state: learning start, newest time, ``value -> last seen``, watermark of last sweep."""

    __slots__ = ("first", "newest", "swept", "values")

    def __init__(self, first: float, newest: float, values: dict[Hashable, float], swept: float) -> None:
        self.first = first
        self.newest = newest
        self.values = values
        self.swept = swept


def _newest(state: _Seen) -> float:
    return state.newest


class FirstSeen(WindowPrimitive[_Seen]):
    """Reports values never (or not for ``ttl``) seen for a key, once its learning period is over."""

    kind = "first_seen"

    def __init__(
        self,
        learning_period: float,
        *,
        ttl: float = 90 * _DAY,
        max_values: int = 4096,
        max_keys: int = 100_000,
        late_policy: LatePolicy = "evaluate",
        on_late: Callable[[int], None] | None = None,
        on_evict: Callable[[int], None] | None = None,
        throttle: float | None = None,
        max_evidence: int = 10,
    ) -> None:
        if learning_period < 0:
            raise ValueError(f"learning_period must be >= 0, got {learning_period}")
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0, got {ttl}")
        if max_values < 1:
            raise ValueError(f"max_values must be >= 1, got {max_values}")
        super().__init__(
            horizon=ttl,
            max_keys=max_keys,
            late_policy=late_policy,
            on_late=on_late,
            on_evict=on_evict,
            throttle=throttle,
            max_evidence=max_evidence,
        )
        self.learning_period = float(learning_period)
        self.ttl = float(ttl)
        self.max_values = max_values

    _newest = staticmethod(_newest)

    def add(self, key: Hashable, time: float, value: Hashable, event_id: str | None = None) -> FirstSeenReport | None:
        """Record ``value`` for ``key``; return a report if it is new after the learning period."""
        key = bound(key)
        value = bound(value)
        if self._is_dropped_late(time):
            return None
        store = self._store
        state = store.get(key)
        if state is None:
            state = _Seen(time, time, {value: time}, store.watermark)
            store.insert(key, state)
            return self._report(key, state, value, time, event_id) if self.learning_period == 0 else None
        if time > state.newest:
            state.newest = time
        if time < state.first:
            state.first = time
        values = state.values
        cutoff = store.watermark - self.ttl
        last = values.get(value)
        if last is not None and last >= cutoff:
            if time > last:  # keep the dict in least-recently-seen order
                del values[value]
                values[value] = time
            return None
        if last is not None:
            del values[value]
        values[value] = time
        if store.watermark - state.swept >= self.ttl / 8:
            self._sweep(state, cutoff)
            state.swept = store.watermark
        if len(values) > self.max_values:
            for stale in list(islice(values, max(1, self.max_values // 16))):
                del values[stale]
        if time < state.first + self.learning_period:
            return None
        return self._report(key, state, value, time, event_id)

    @staticmethod
    def _sweep(state: _Seen, cutoff: float) -> None:
        """Forget the values not seen since ``cutoff`` (done every ``ttl / 8`` of watermark per key)."""
        stale = [v for v, last in state.values.items() if last < cutoff]
        for v in stale:
            del state.values[v]

    def _report(
        self, key: Hashable, state: _Seen, value: Hashable, time: float, event_id: str | None
    ) -> FirstSeenReport | None:
        suppressed = self._release(key, time)
        if suppressed is None:
            return None
        cutoff = self._store.watermark - self.ttl
        known = sum(1 for v, last in state.values.items() if last >= cutoff and v != value)
        return FirstSeenReport(
            key=key,
            value=value,
            time=time,
            learning_started=state.first,
            known=known,
            event_ids=(event_id,) if event_id is not None and self.max_evidence else (),
            suppressed=suppressed,
        )

    def _dump(self, state: _Seen) -> Any:
        swept = None if state.swept == float("-inf") else state.swept
        return [state.first, state.newest, swept, [[freeze(v), t] for v, t in state.values.items()]]

    def _load(self, data: Any) -> _Seen:
        first, newest, swept, values = data
        return _Seen(
            float(first),
            float(newest),
            {thaw(v): float(t) for v, t in values},
            float("-inf") if swept is None else float(swept),
        )
