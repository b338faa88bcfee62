"""Bounded per-key state shared by every window primitive.

Why it exists: an attacker controls the keys (principals, IPs, regions) that detectors group by, so
state must stay bounded whatever arrives.  :class:`KeyedState` is a plain ``dict`` kept in
least-recently-used order (a touched key is moved to the end), with two limits:

* **TTL by event time.**  A key whose newest data is older than ``watermark - horizon`` is
  expired.  :meth:`KeyedState.get` never returns an expired key (so results do not depend on when
  expiry physically happened), and :meth:`KeyedState.advance` removes expired keys by walking from
  the least recently used end and stopping at the first live key, so it costs O(expired keys), not
  O(keys).  A key touched out of event-time order can sit behind a live key a little longer than its
  horizon before being physically removed; it is still invisible to :meth:`get`.
* **A hard cap on keys.**  Inserting past ``max_keys`` evicts the least recently used keys in a
  small batch (``max(1, max_keys // 64)``), reported through ``on_evict(n)``.  Batching keeps
  eviction O(1) amortised on a plain ``dict`` (removing one key at a time from the front of a dict
  is quadratic in CPython), and a plain ``dict`` costs ~50 bytes per key less than ``OrderedDict``.

Keys and values are bounded by bytes too: every primitive passes what it is given through
:func:`bound` first, so a 300 KB group-by value (a userAgent, a request parameter) is held as a
short prefix plus a hash (:func:`detectors.event.bounded_key`), still distinct from any other value.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from itertools import islice
from typing import Any, Generic, TypeVar

from detectors.event import MAX_KEY_CHARS, bounded_key

__all__ = ["SNAPSHOT_VERSION", "KeyedState", "bound", "check_snapshot", "freeze", "thaw"]

S = TypeVar("S")

#: Version of the plain-data layout written by every ``snapshot()`` in this package.
SNAPSHOT_VERSION = 1

_NEG_INF = float("-inf")


def _ignore_count(_n: int) -> None:
    return None


def bound(value: Any) -> Any:
    """``value`` with every string longer than ``MAX_KEY_CHARS`` (also inside tuples) cut to a prefix + hash.

    Returns ``value`` itself (no copy) when nothing is long, which is the hot path.
    """
    kind = type(value)
    if kind is str:
        return value if len(value) <= MAX_KEY_CHARS else bounded_key(value)
    if kind is tuple:
        for item in value:
            if (type(item) is str and len(item) > MAX_KEY_CHARS) or type(item) is tuple:
                return tuple(bound(item) for item in value)
    return value


def freeze(value: Any) -> Any:
    """Turn a key or value into plain data: tuples become lists (recursively)."""
    if type(value) is tuple:
        return [freeze(item) for item in value]
    return value


def thaw(value: Any) -> Any:
    """Inverse of :func:`freeze`: lists become tuples again, so the result is hashable."""
    if type(value) is list:
        return tuple(thaw(item) for item in value)
    return value


def check_snapshot(data: Any, kind: str) -> dict[str, Any]:
    """Validate the envelope of a snapshot of ``kind``; raise ``ValueError`` on any mismatch."""
    if not isinstance(data, dict):
        raise ValueError(f"{kind} snapshot must be a mapping, not {type(data).__name__}")
    version = data.get("version")
    if not isinstance(version, int):
        raise ValueError(f"{kind} snapshot has no integer 'version'")
    if version > SNAPSHOT_VERSION:
        raise ValueError(
            f"{kind} snapshot has format version {version}, newer than the supported "
            f"{SNAPSHOT_VERSION}: it was written by a newer trailguard"
        )
    if version < 1:
        raise ValueError(f"{kind} snapshot has invalid format version {version}")
    if data.get("kind") != kind:
        raise ValueError(f"snapshot of kind {data.get('kind')!r} cannot be restored into {kind!r}")
    return data


class KeyedState(Generic[S]):
    """A ``key -> state`` map in LRU order with event-time TTL and a hard key cap.

    ``newest(state)`` returns the newest event time held in a state; a key expires once that is
    older than ``watermark - horizon``.  States are mutable objects updated in place by their owner
    after :meth:`get`.
    """

    __slots__ = ("_batch", "_data", "_newest", "horizon", "max_keys", "on_evict", "watermark")

    def __init__(
        self,
        *,
        horizon: float,
        max_keys: int,
        newest: Callable[[S], float],
        on_evict: Callable[[int], None] | None = None,
    ) -> None:
        if horizon < 0:
            raise ValueError(f"horizon must be >= 0, got {horizon}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self.horizon = float(horizon)
        self.max_keys = max_keys
        self.on_evict = on_evict if on_evict is not None else _ignore_count
        self.watermark = _NEG_INF
        self._newest = newest
        self._batch = max(1, max_keys // 64)
        self._data: dict[Hashable, S] = {}

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return self.get(key, touch=False) is not None

    def get(self, key: Hashable, *, touch: bool = True) -> S | None:
        """The live state of ``key`` (marked most recently used), or ``None``."""
        data = self._data
        state = data.pop(key, None) if touch else data.get(key)
        if state is None:
            return None
        if self._newest(state) < self.watermark - self.horizon:
            if not touch:
                del data[key]
            return None
        if touch:
            data[key] = state
        return state

    def touch(self, key: Hashable) -> S | None:
        """Like :meth:`get` but without the expiry check, for owners that check it themselves.

        Cheaper on the hot path; the owner must treat a state whose newest time is older than
        ``watermark - horizon`` exactly like a missing key (for example because pruning it to the
        window leaves it empty).
        """
        data = self._data
        state = data.pop(key, None)
        if state is not None:
            data[key] = state
        return state

    def insert(self, key: Hashable, state: S) -> None:
        """Add ``key`` (which :meth:`get` just reported absent) as most recently used."""
        data = self._data
        data[key] = state
        if len(data) > self.max_keys:
            victims = list(islice(data, min(self._batch, len(data) - 1)))
            for victim in victims:
                del data[victim]
            self.on_evict(len(victims))

    def discard(self, key: Hashable) -> None:
        """Forget ``key`` if present."""
        self._data.pop(key, None)

    def advance(self, watermark: float) -> int:
        """Move the watermark forward (never back) and remove expired keys; return how many."""
        if watermark > self.watermark:
            self.watermark = watermark
        cutoff = self.watermark - self.horizon
        newest = self._newest
        expired: list[Hashable] = []
        for key, state in self._data.items():
            if newest(state) >= cutoff:
                break
            expired.append(key)
        data = self._data
        for key in expired:
            del data[key]
        return len(expired)

    def items(self) -> Iterator[tuple[Hashable, S]]:
        """Live ``(key, state)`` pairs, least recently used first (does not touch)."""
        cutoff = self.watermark - self.horizon
        newest = self._newest
        for key, state in self._data.items():
            if newest(state) >= cutoff:
                yield key, state

    def clear(self) -> None:
        """Forget every key and reset the watermark."""
        self._data.clear()
        self.watermark = _NEG_INF

    def load(self, pairs: list[tuple[Hashable, S]], watermark: float) -> None:
        """Replace the contents with ``pairs`` (LRU order, oldest first), keeping the newest ``max_keys``."""
        self._data = dict(pairs[-self.max_keys :]) if pairs else {}
        self.watermark = watermark
