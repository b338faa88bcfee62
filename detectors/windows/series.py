"""A compact, time-sorted list of (event time, event id) pairs, stored flat in one ``list``.

Why it exists: the count and sequence windows keep every event still inside a window, and most
keys hold only one or two.  Storing them as ``[t0, t1, …, tn-1, id0, id1, …, idn-1]`` costs one list
per key (no tuple per event, no second list), and ``bisect`` runs directly on the first half.
The functions here are the only code that knows this layout.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

__all__ = ["insert", "newest", "prune", "sample_ids", "trim"]


def newest(series: list) -> float:
    """The latest event time in ``series`` (which is never empty)."""
    return series[(len(series) >> 1) - 1]


def insert(series: list, time: float, event_id: str | None) -> int:
    """Insert after any equal times; return its index, or -1 if ``event_id`` is already there.

    Duplicates are found cheaply: a re-delivered event has the same time, so only the ids of
    events at exactly that time are compared.
    """
    n = len(series) >> 1
    at = bisect_right(series, time, 0, n)
    if event_id is not None:
        j = at - 1
        while j >= 0 and series[j] == time:
            if series[n + j] == event_id:
                return -1
            j -= 1
    series.insert(at, time)
    series.insert(n + 1 + at, event_id)
    return at


def prune(series: list, cutoff: float) -> None:
    """Drop the events older than ``cutoff``."""
    n = len(series) >> 1
    k = bisect_left(series, cutoff, 0, n)
    if k:
        del series[n : n + k]
        del series[:k]


def trim(series: list, cap: int) -> None:
    """Keep only the newest ``cap`` events."""
    n = len(series) >> 1
    k = n - cap
    if k > 0:
        del series[n : n + k]
        del series[:k]


def sample_ids(series: list, start: int, stop: int, limit: int) -> tuple[str, ...]:
    """Event ids of positions ``start:stop``, at most ``limit``: the first and the last ones."""
    n = len(series) >> 1
    ids = [i for i in series[n + start : n + stop] if i is not None]
    if len(ids) <= limit:
        return tuple(ids)
    head = (limit + 1) >> 1
    return tuple(ids[:head] + ids[len(ids) - (limit - head) :])
