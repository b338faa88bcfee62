"""Timelines for DistinctCountWindow: "calls to ListBuckets, GetCallerIdentity, ListUsers within 100 s"."""

from __future__ import annotations

import msgpack
import pytest

from detectors.windows import DistinctCountWindow, DistinctReport


def feed(
    window: DistinctCountWindow, *events: tuple[float, str], key: str = "alice"
) -> list[tuple[float, DistinctReport]]:
    """Add ``(time, value)`` events in arrival order; return ``(arrival time, report)`` that fired."""
    fired = []
    for t, value in events:
        report = window.add(key, float(t), value, f"e{t:g}")
        if report is not None:
            fired.append((t, report))
    return fired


def test_three_distinct_values_at_0_30_95_fire_at_95() -> None:
    fired = feed(DistinctCountWindow(window=100, threshold=3), (0, "a"), (30, "b"), (95, "c"))
    assert [(t, r.start, r.end, r.count, r.values) for t, r in fired] == [(95, -5.0, 95.0, 3, ("a", "b", "c"))]
    assert fired[0][1].event_ids == ("e95",)


def test_repeated_values_do_not_count() -> None:
    assert feed(DistinctCountWindow(window=100, threshold=3), (0, "a"), (30, "a"), (40, "b"), (95, "b")) == []


def test_value_outside_the_window_does_not_count() -> None:
    assert feed(DistinctCountWindow(window=100, threshold=3), (0, "a"), (30, "b"), (105, "c")) == []


def test_a_value_seen_again_inside_the_window_keeps_it_counted() -> None:
    fired = feed(DistinctCountWindow(window=100, threshold=3), (0, "a"), (75, "b"), (80, "a"), (170, "c"))
    assert [(t, r.start, r.values) for t, r in fired] == [(170, 70.0, ("a", "b", "c"))]


def test_stale_value_is_not_counted() -> None:
    assert feed(DistinctCountWindow(window=100, threshold=3), (0, "a"), (30, "b"), (80, "a"), (171, "c")) == []


@pytest.mark.parametrize(
    "arrival",
    [((95, "a"), (0, "b"), (30, "c")), ((30, "c"), (95, "a"), (0, "b")), ((0, "b"), (95, "a"), (30, "c"))],
)
def test_out_of_order_within_lateness_fires_when_the_window_completes(arrival: tuple) -> None:
    window = DistinctCountWindow(window=100, threshold=3)
    window.advance(-900)
    fired = feed(window, *arrival)
    assert len(fired) == 1
    arrived_at, report = fired[0]
    assert arrived_at == arrival[-1][0]
    assert (report.start, report.end, report.count) == (-5.0, 95.0, 3)
    assert sorted(report.values) == ["a", "b", "c"]


def test_out_of_order_event_fires_its_own_window() -> None:
    # 0 a, 30 b, then 200 d arrives, then 95 c: window [−5, 95] holds a, b, c
    fired = feed(DistinctCountWindow(window=100, threshold=3), (0, "a"), (30, "b"), (200, "d"), (95, "c"))
    assert [(t, r.end, r.values) for t, r in fired] == [(95, 95.0, ("a", "b", "c"))]


def test_out_of_order_repeat_of_a_value_already_in_the_newest_window_does_not_report() -> None:
    window = DistinctCountWindow(window=100, threshold=2)
    assert [t for t, _ in feed(window, (100, "a"), (150, "b"))] == [150]
    assert feed(window, (140, "a")) == []  # own window [40, 140]: only a; newest window unchanged


def test_late_event_is_counted_and_evaluated_against_remaining_state() -> None:
    late: list[int] = []
    window = DistinctCountWindow(window=100, threshold=3, on_late=late.append)
    feed(window, (1000, "a"), (1010, "b"))
    window.advance(1005)
    fired = feed(window, (990, "c"))
    assert late == [1]
    assert [(r.end, r.count) for _, r in fired] == [(1010.0, 3)]


def test_late_event_with_drop_policy_is_not_added() -> None:
    late: list[int] = []
    window = DistinctCountWindow(window=100, threshold=3, on_late=late.append, late_policy="drop")
    feed(window, (1000, "a"), (1010, "b"))
    window.advance(1005)
    assert feed(window, (990, "c")) == []
    assert late == [1]
    assert feed(window, (1011, "b")) == []


def test_duplicates_count_once_and_do_not_report_again() -> None:
    window = DistinctCountWindow(window=100, threshold=2)
    assert window.add("k", 0.0, "a", "id1") is None
    assert window.add("k", 0.0, "a", "id1") is None
    report = window.add("k", 5.0, "b", "id2")
    assert report is not None and report.count == 2
    assert window.add("k", 5.0, "b", "id2") is None


def test_occurrences_per_value_stay_few_whatever_the_rate() -> None:
    window = DistinctCountWindow(window=100, threshold=50)
    for t in range(0, 5000):
        window.advance(t - 900)
        window.add("k", float(t), "same")
    ((_, state),) = window.snapshot()["keys"]
    assert len(state[2][0]) <= 2 * (900 + 100) // 100 + 2


def test_ttl_expiry_by_watermark() -> None:
    window = DistinctCountWindow(window=100, threshold=3)
    feed(window, (0, "a"), key="old")
    feed(window, (450, "a"), key="recent")
    window.advance(500)
    assert len(window) == 1
    window.advance(551)
    assert len(window) == 0


def test_lru_eviction_under_a_spray_of_a_million_keys() -> None:
    evicted: list[int] = []
    window = DistinctCountWindow(window=600, threshold=5, max_keys=10_000, on_evict=evicted.append)
    add = window.add
    for i in range(1_000_000):
        add(i, 1000.0 + i * 0.001, "ListBuckets")
    assert len(window) <= 10_000
    assert sum(evicted) == 1_000_000 - len(window)


def test_values_per_key_are_capped() -> None:
    window = DistinctCountWindow(window=1000, threshold=3, max_values=4)
    fired = feed(window, *((t, f"v{t}") for t in range(10)))
    assert len(window.snapshot()["keys"][0][1][1]) <= 4
    assert fired[-1][1].count >= 3


def test_throttle_carries_the_suppressed_count() -> None:
    window = DistinctCountWindow(window=100, threshold=2, throttle=100)
    fired = feed(window, (0, "a"), (1, "b"), (2, "c"), (3, "d"), (150, "e"), (151, "f"))
    assert [(t, r.suppressed) for t, r in fired] == [(1, 0), (151, 2)]


TIMELINE = [
    ("add", 0, "k1", "a"),
    ("add", 30, "k1", "b"),
    ("add", 10, "k2", "a"),
    ("adv", -800, "", ""),
    ("add", 95, "k1", "c"),
    ("add", 96, "k1", "c"),
    ("add", 20, "k2", ("tuple", "value")),
    ("add", 100, "k1", "d"),
    ("add", 150, "k2", "c"),
    ("adv", -700, "", ""),
    ("add", 60, "k2", "d"),
    ("add", 1200, "k1", "a"),
    ("adv", 400, "", ""),
    ("add", 1210, "k1", "b"),
    ("add", 1220, "k1", "e"),
]


def run(window: DistinctCountWindow, steps: list) -> list[DistinctReport]:
    out = []
    for op, t, key, value in steps:
        if op == "adv":
            window.advance(t)
        elif (report := window.add(key, float(t), value, f"{key}{t}")) is not None:
            out.append(report)
    return out


@pytest.mark.parametrize("split", range(len(TIMELINE) + 1))
def test_snapshot_restore_behaves_as_if_never_restarted(split: int) -> None:
    def make() -> DistinctCountWindow:
        return DistinctCountWindow(window=100, threshold=3, throttle=50)

    expected = run(make(), TIMELINE)
    first = make()
    before = run(first, TIMELINE[:split])
    saved = msgpack.unpackb(msgpack.packb(first.snapshot()))
    second = make()
    second.restore(saved)
    assert before + run(second, TIMELINE[split:]) == expected
    assert [(r.key, r.end) for r in expected] == [("k1", 95.0), ("k2", 60.0), ("k1", 1220.0)]


def test_restore_rejects_a_newer_version() -> None:
    window = DistinctCountWindow(window=100, threshold=3)
    feed(window, (1, "a"))
    with pytest.raises(ValueError, match="newer"):
        DistinctCountWindow(window=100, threshold=3).restore({**window.snapshot(), "version": 2})


def test_a_late_event_older_than_the_window_still_counts_its_own_value() -> None:
    late: list[int] = []
    window = DistinctCountWindow(window=100, threshold=2, on_late=late.append)
    feed(window, (1000, "a"), (1500, "b"))
    window.advance(1400)  # cutoff for on-time events: 1300
    fired = feed(window, (1000, "c"))  # window [900, 1000]: a (if still held) and c itself
    assert late == [1]
    assert [(r.end, sorted(r.values)) for _, r in fired] == [(1000.0, ["a", "c"])]
