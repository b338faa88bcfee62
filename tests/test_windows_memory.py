"""Per-key memory of the window state, measured with tracemalloc over 100,000 keys.

Run with ``-s`` to see the numbers.  The bounds guard against a regression to a dict-and-lists-per-key
layout (which costs 300+ bytes per key before any event data).
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

from detectors.windows import CountWindow, DistinctCountWindow
from detectors.windows.recent import LastSeen, RecentValues

N = 100_000


def bytes_per_key(fill: Callable[[], object]) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = fill()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(kept) == N  # type: ignore[arg-type]
    return (after - before) / N


def test_count_window_state_is_compact() -> None:
    keys = [f"arn:aws:iam::123456789012:user/u{i}" for i in range(N)]
    ids = [f"{i:08x}-1111-2222-3333-444455556666" for i in range(N)]
    times = [1.7e9 + i * 0.01 for i in range(N)]

    def fill() -> CountWindow:
        window = CountWindow(window=600, threshold=5, max_keys=N)
        for key, t, event_id in zip(keys, times, ids, strict=True):
            window.add(key, t, event_id)
        return window

    measured = bytes_per_key(fill)
    print(f"\nCountWindow: {measured:.1f} bytes/key (key, id and time objects owned by the caller)")
    assert measured < 160


def test_distinct_count_window_state_is_compact() -> None:
    keys = [f"arn:aws:iam::123456789012:user/u{i}" for i in range(N)]
    times = [1.7e9 + i * 0.01 for i in range(N)]

    def fill() -> DistinctCountWindow:
        window = DistinctCountWindow(window=600, threshold=5, max_keys=N)
        for key, t in zip(keys, times, strict=True):
            window.add(key, t, "ListBuckets")
        return window

    measured = bytes_per_key(fill)
    print(f"\nDistinctCountWindow: {measured:.1f} bytes/key (key, value and time objects owned by the caller)")
    assert measured < 160


def test_a_key_with_many_events_keeps_one_list_and_no_per_event_objects() -> None:
    times = [1.7e9 + i for i in range(1000)]
    ids = [f"id{i}" for i in range(1000)]

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    window = CountWindow(window=10_000, threshold=5_000, max_events=5_000)
    for t, event_id in zip(times, ids, strict=True):
        window.add("busy", t, event_id)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    print(f"\nCountWindow, one key with 1000 events: {used / 1000:.1f} bytes/event")
    assert used / 1000 < 24  # two pointers per event plus list slack


def test_300kb_group_by_values_are_held_as_prefix_and_hash_and_still_counted_apart() -> None:
    """2,000 events whose group-by key and measured value are 300 KB each (a hostile userAgent)."""
    big = "Mozilla/5.0 " + "A" * 300_000
    window = DistinctCountWindow(window=600, threshold=200, max_keys=100)
    reports = []
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2_000):
            # ten keys and 200 values per key that differ only in their last characters
            key = (big + f"key{i % 10}", "123456789012")
            report = window.add(key, 1.7e9 + i * 0.1, big + f"value{i // 10}", f"e{i}")
            if report is not None:
                reports.append(report)
            del key
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    print(f"\nDistinctCountWindow, 2,000 events with 300 KB keys/values: {used / 1024:.0f} KiB held")
    assert used < 2 * 1024 * 1024  # unbounded: 2,000 * 300 KB = 600 MB
    assert len(reports) == 10 and {r.count for r in reports} == {200}
    assert len({r.key for r in reports}) == 10
    assert all(len(r.key[0]) <= 256 and r.key[1] == "123456789012" for r in reports)
    assert all(len(v) <= 256 for r in reports for v in r.values)


def test_recent_values_bound_300kb_keys_and_values_and_find_them_again() -> None:
    big = "Mozilla/5.0 " + "B" * 300_000
    recent = RecentValues(LastSeen, horizon=600, max_keys=10, cap=50)
    for i in range(40):  # two keys, twenty values each, all differing only at the end
        recent.see(big + f"key{i % 2}", big + f"value{i // 2}", 1.7e9 + i)
    record = recent.get(big + "key0")
    assert record is not None and recent.get(big + "key2") is None
    values = record.since(0)
    assert len(values) == 20 and len(set(values)) == 20 and all(len(v) <= 256 for v in values)
    assert all(len(key) <= 256 for key, _ in recent.items())
