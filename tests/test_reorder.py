"""Replay's reorder buffer: the sorted-run fast path releases exactly what the plain heap releases.

:class:`~daemon.reorder.SortedRunBuffer` keeps in-order events in a deque and only the older ones
in a heap; these tests feed it and the plain :class:`~daemon.reorder.ReorderBuffer` the same
pushes, releases and drains and compare every event that leaves, ties included, plus their
snapshots.  One test pins that sorted input never reaches the heap.
"""

from __future__ import annotations

import random
from typing import Any

from daemon.reorder import ReorderBuffer, SortedRunBuffer
from detectors.event import Event, format_time, parse_event_time

T0 = parse_event_time("2024-06-01T00:00:00Z")


def _event(t: float, event_id: str) -> Event:
    record: dict[str, Any] = {"eventTime": format_time(T0 + t), "eventName": "ListBuckets",
                              "eventSource": "s3.amazonaws.com", "eventID": event_id,
                              "recipientAccountId": "111111111111"}
    return Event(record, "file")


def _ids(events: list[Event]) -> list[str]:
    return [event.event_id or "" for event in events]


def _run_both(times: list[float], lateness: float, seed: int) -> tuple[list[str], list[str]]:
    """Push ``times`` into both buffers, releasing or draining a few at random points; what left, in order."""
    rng = random.Random(seed)
    heap, runs = ReorderBuffer(lateness), SortedRunBuffer(lateness)
    left_heap: list[Event] = []
    left_runs: list[Event] = []
    for index, t in enumerate(times):
        event = _event(t, f"e{index}")
        heap.push(event)
        runs.push(event)
        roll = rng.random()
        if roll < 0.3:
            heap.release(left_heap)
            runs.release(left_runs)
        elif roll < 0.35:
            limit = rng.randint(1, 5)
            heap.drain(left_heap, limit)
            runs.drain(left_runs, limit)
        assert len(heap) == len(runs)
        assert heap.snapshot() == runs.snapshot()
    heap.drain(left_heap)
    runs.drain(left_runs)
    assert len(heap) == len(runs) == 0
    return _ids(left_heap), _ids(left_runs)


def test_out_of_order_input_leaves_in_the_same_order_as_from_the_heap() -> None:
    for seed in range(40):
        rng = random.Random(seed)
        # mostly in order, with ties and stragglers up to 30 s late (whole seconds: many ties)
        times = [float(i // 3 - (rng.randint(0, 30) if rng.random() < 0.2 else 0)) for i in range(300)]
        expected, got = _run_both(times, lateness=20.0, seed=seed)
        assert got == expected


def test_reversed_and_equal_times_leave_by_arrival_among_equals() -> None:
    times = [5.0, 5.0, 4.0, 5.0, 3.0, 3.0, 6.0, 4.0, 6.0, 5.0]
    expected, got = _run_both(times, lateness=1.0, seed=1)
    assert got == expected
    buffer = SortedRunBuffer(100.0)
    for index, t in enumerate(times):
        buffer.push(_event(t, f"e{index}"))
    out: list[Event] = []
    buffer.drain(out)
    assert _ids(out) == ["e4", "e5", "e2", "e7", "e0", "e1", "e3", "e9", "e6", "e8"]


def test_sorted_input_never_touches_the_heap() -> None:
    buffer = SortedRunBuffer(10.0)
    out: list[Event] = []
    for index in range(100):
        buffer.push(_event(index / 2, f"e{index}"))
        buffer.release(out)
    assert buffer._heap == []  # every push was an append to the run
    assert _ids(out) == [f"e{i}" for i in range(len(out))] and len(out) == 80  # up to 49.5 s - 10 s


def test_a_snapshot_restores_into_the_same_order() -> None:
    buffer = SortedRunBuffer(100.0)
    for index, t in enumerate([1.0, 2.0, 0.5, 3.0, 0.5]):
        buffer.push(_event(t, f"e{index}"))
    restored = SortedRunBuffer(100.0)
    restored.restore(buffer.snapshot())
    out: list[Event] = []
    restored.drain(out)
    assert _ids(out) == ["e2", "e4", "e0", "e1", "e3"]
