"""Which values a key showed recently: per key, each value with the last event time it was seen.

Why it exists: when a count fires, a detector has to say *which* distinct values the key showed
inside the window — the APIs a principal failed on, the user names an address tried, the addresses
a user was tried from.  A :class:`~detectors.windows.DistinctCountWindow` per key would keep every
event; this keeps one ``value, last time`` pair per value, at most ``cap`` values per key (past
that the value seen least recently is forgotten), so :meth:`LastSeen.since` answers "the values
seen at or after ``start``" exactly for events in time order and, out of order, for the values
seen up to the key's newest event.

:class:`LastSeen` is one key's record; a detector that reports more about a key subclasses it
(with ``__slots__``) to carry its own figures.  :class:`RecentValues` keeps the records in a
:class:`~detectors.windows.store.KeyedState` (event-time TTL, hard key cap).  The pairs are a flat
``[value, time, value, time, …]`` list in first-seen order, which is also their snapshot layout.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, TypeVar

from detectors.windows.store import KeyedState, bound

__all__ = ["LastSeen", "RecentValues"]


class LastSeen:
    """One key's record: its newest event time and each value's last time, in first-seen order."""

    __slots__ = ("newest", "pairs")

    def __init__(self, newest: float, pairs: list[Any] | None = None) -> None:
        #: The newest event time noted for the key (its expiry is measured from it).
        self.newest = newest
        #: ``[value, last time, value, last time, …]`` in first-seen order.
        self.pairs: list[Any] = [] if pairs is None else pairs

    def see(self, value: str, time: float, cap: int) -> None:
        """Note ``value`` at ``time``; keep at most ``cap`` values (the least recently seen goes)."""
        if time > self.newest:
            self.newest = time
        pairs = self.pairs
        for i in range(0, len(pairs), 2):
            if pairs[i] == value:
                if time > pairs[i + 1]:
                    pairs[i + 1] = time
                return
        pairs.append(value)
        pairs.append(time)
        if len(pairs) >> 1 > cap:
            stalest = min(range(0, len(pairs), 2), key=lambda i: pairs[i + 1])
            del pairs[stalest : stalest + 2]

    def since(self, start: float) -> list[str]:
        """The values last seen at or after ``start``, in first-seen order."""
        pairs = self.pairs
        return [pairs[i] for i in range(0, len(pairs), 2) if pairs[i + 1] >= start]


R = TypeVar("R", bound=LastSeen)


def _newest(record: LastSeen) -> float:
    return record.newest


class RecentValues(Generic[R]):
    """``key → record`` (a :class:`LastSeen` made by ``new(time)``), expired ``horizon`` seconds after
    the key's newest event and capped at ``max_keys`` keys (least recently used evicted first)."""

    __slots__ = ("_new", "_state", "cap")

    def __init__(self, new: Callable[[float], R], *, horizon: float, max_keys: int, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"cap must be >= 1, got {cap}")
        #: Values kept per key at most.
        self.cap = cap
        self._new = new
        self._state: KeyedState[R] = KeyedState(horizon=horizon, max_keys=max_keys, newest=_newest)

    def __len__(self) -> int:
        return len(self._state)

    def see(self, key: Hashable, value: str, time: float) -> R:
        """Note that ``key`` showed ``value`` at ``time`` (creating its record); return the record."""
        key = bound(key)
        value = bound(value)
        record = self._state.get(key)
        if record is None:
            record = self._new(time)
            self._state.insert(key, record)
        record.see(value, time, self.cap)
        return record

    def get(self, key: Hashable) -> R | None:
        """The live record of ``key``, or ``None`` (does not mark it used)."""
        key = bound(key)
        return self._state.get(key, touch=False)

    def advance(self, watermark: float) -> None:
        """Move the watermark forward and forget keys whose newest event left the horizon."""
        self._state.advance(watermark)

    def items(self) -> Iterator[tuple[Hashable, R]]:
        """Live ``(key, record)`` pairs, least recently used first (for snapshots)."""
        return self._state.items()

    def load(self, records: list[tuple[Hashable, R]], watermark: float) -> None:
        """Replace the contents with ``records`` (least recently used first), as of ``watermark``."""
        self._state.load(records, watermark)
