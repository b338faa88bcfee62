"""Sequences per key: "A then B (then C …) within W" and "all of A, B, C within W", in any arrival order.

Why it exists: many attacks are a shape, not a volume: failed console logins followed by a
success, ``CreateAccessKey`` then use of that key from a new IP, Sigma ``temporal_ordered`` and
``temporal`` correlations.  Steps are named; the owner decides which step an event is (an event
may be added under several steps) and can feed another primitive's reports in as a step (e.g. a
:class:`~detectors.windows.count.CountWindow` burst of failures as step ``"failures"``).

* ``ordered=True`` (Sigma ``temporal_ordered``): step times must not decrease (equal times count as
  in order, CloudTrail has one-second resolution) and the last minus the first is at most ``within``.
* ``ordered=False`` (Sigma ``temporal``): one event of every step, all within ``within`` seconds.

A report is made when an ``add`` completes a match that includes the added event, wherever the event
falls in the sequence, so arrivals B(10) then A(0) report the match A(0)→B(10) when A arrives.  For
the ordered variant the match reported is the tightest one through the new event (latest earlier
steps, earliest later steps).  Events of one step with the same id count once.  Each step keeps at
most ``max_per_step`` events per key (the oldest are dropped beyond that).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from detectors.windows import series
from detectors.windows.primitive import LatePolicy, WindowPrimitive
from detectors.windows.store import bound

__all__ = ["SequenceReport", "SequenceWindow"]


@dataclass(frozen=True, slots=True)
class SequenceReport:
    """A match for ``key``: one event per step, ``times``/``event_ids`` in the order of ``steps``."""

    key: Hashable
    start: float
    end: float
    steps: tuple[str, ...]
    times: tuple[float, ...]
    event_ids: tuple[str | None, ...]
    suppressed: int = 0


def _newest(state: list) -> float:
    return state[0]


class SequenceWindow(WindowPrimitive[list]):
    """Matches N named steps per key within ``within`` seconds, ordered or not.

    State per key: ``[newest, series_0, …, series_{N-1}]``, each series a flat time/id list or ``None``.
    """

    kind = "sequence"

    def __init__(
        self,
        steps: Sequence[str],
        within: float,
        *,
        ordered: bool = True,
        max_per_step: int = 256,
        max_keys: int = 100_000,
        late_policy: LatePolicy = "evaluate",
        on_late: Callable[[int], None] | None = None,
        on_evict: Callable[[int], None] | None = None,
        throttle: float | None = None,
        max_evidence: int = 10,
    ) -> None:
        names = tuple(steps)
        if len(names) < 2:
            raise ValueError("a sequence needs at least two steps")
        if len(set(names)) != len(names):
            raise ValueError(f"step names must be unique, got {names}")
        if within <= 0:
            raise ValueError(f"within must be > 0, got {within}")
        if max_per_step < 1:
            raise ValueError(f"max_per_step must be >= 1, got {max_per_step}")
        super().__init__(
            horizon=within,
            max_keys=max_keys,
            late_policy=late_policy,
            on_late=on_late,
            on_evict=on_evict,
            throttle=throttle,
            max_evidence=max_evidence,
        )
        self.steps = names
        self.within = float(within)
        self.ordered = ordered
        self.max_per_step = max_per_step
        self._index = {name: i for i, name in enumerate(names)}

    _newest = staticmethod(_newest)

    def add(self, key: Hashable, time: float, step: str, event_id: str | None = None) -> SequenceReport | None:
        """Record that ``key`` did ``step`` at ``time``; return a report if a match completes."""
        key = bound(key)
        k = self._index.get(step)
        if k is None:
            raise ValueError(f"unknown step {step!r}; steps are {self.steps}")
        if self._is_dropped_late(time):
            return None
        store = self._store
        state = store.get(key)
        if state is None:
            state = [time] + [None] * len(self.steps)
            state[1 + k] = [time, event_id]
            store.insert(key, state)
            return None
        events = state[1 + k]
        if events is None:
            state[1 + k] = [time, event_id]
        else:
            cutoff = store.watermark - self.within
            if events[0] < cutoff:
                series.prune(events, cutoff)
            if series.insert(events, time, event_id) < 0:
                return None
            if len(events) > 2 * self.max_per_step:
                series.trim(events, self.max_per_step)
        if time > state[0]:
            state[0] = time
        picks = self._match_ordered(state, k, time) if self.ordered else self._match_any(state, k, time)
        if picks is None:
            return None
        times = tuple(t for t, _ in picks)
        start, end = min(times), max(times)
        suppressed = self._release(key, end)
        if suppressed is None:
            return None
        return SequenceReport(
            key=key,
            start=start,
            end=end,
            steps=self.steps,
            times=times,
            event_ids=tuple(i for _, i in picks),
            suppressed=suppressed,
        )

    def _match_ordered(self, state: list, k: int, time: float) -> list[tuple[float, Any]] | None:
        nsteps = len(self.steps)
        picks: list[tuple[float, Any]] = [(time, None)] * nsteps
        picks[k] = (time, self._id_at(state[1 + k], time))
        cur = time
        for j in range(k - 1, -1, -1):  # earlier steps: the latest occurrence not after the next one
            events = state[1 + j]
            if events is None:
                return None
            n = len(events) >> 1
            i = bisect_right(events, cur, 0, n) - 1
            if i < 0:
                return None
            cur = events[i]
            picks[j] = (cur, events[n + i])
        first = cur
        cur = time
        for j in range(k + 1, nsteps):  # later steps: the earliest occurrence not before the previous
            events = state[1 + j]
            if events is None:
                return None
            n = len(events) >> 1
            i = bisect_left(events, cur, 0, n)
            if i == n:
                return None
            cur = events[i]
            picks[j] = (cur, events[n + i])
        return picks if cur - first <= self.within else None

    def _match_any(self, state: list, k: int, time: float) -> list[tuple[float, Any]] | None:
        within = self.within
        others = []
        for j, events in enumerate(state[1:]):
            if j == k:
                continue
            if events is None:
                return None
            others.append((j, events))
        # A match is a span [start, start + within] holding `time` and one event of every step.
        # It suffices to try starts at the times of candidate events in [time - within, time].
        starts = {time}
        for _, events in others:
            n = len(events) >> 1
            lo = bisect_left(events, time - within, 0, n)
            hi = bisect_right(events, time, lo, n)
            starts.update(events[lo:hi])
        for start in sorted(starts):
            picks: list[tuple[float, Any]] = [(time, None)] * len(self.steps)
            picks[k] = (time, self._id_at(state[1 + k], time))
            for j, events in others:
                n = len(events) >> 1
                i = bisect_left(events, start, 0, n)
                if i == n or events[i] > start + within:
                    break
                picks[j] = (events[i], events[n + i])
            else:
                return picks
        return None

    @staticmethod
    def _id_at(events: list, time: float) -> str | None:
        """The id of the newest event of this step at exactly ``time`` (the one just added)."""
        n = len(events) >> 1
        i = bisect_right(events, time, 0, n) - 1
        return events[n + i] if i >= 0 else None

    def _dump(self, state: list) -> Any:
        return [state[0], *(None if s is None else list(s) for s in state[1:])]

    def _load(self, data: Any) -> list:
        if len(data) != 1 + len(self.steps):
            raise ValueError(f"sequence snapshot has {len(data) - 1} steps, this window has {len(self.steps)}")
        return [
            float(data[0]),
            *(None if s is None else [float(t) for t in s[: len(s) >> 1]] + list(s[len(s) >> 1 :]) for s in data[1:]),
        ]
