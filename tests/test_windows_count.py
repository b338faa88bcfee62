"""Timelines for CountWindow: "events at t=0s, 30s, 95s → alert at 95s"."""

from __future__ import annotations

import orjson
import pytest

from detectors.windows import CountReport, CountWindow


def feed(window: CountWindow, *times: float, key: str = "alice") -> list[tuple[float, CountReport]]:
    """Add events (id ``e<t>``) in arrival order; return ``(arrival time, report)`` for those that fired."""
    fired = []
    for t in times:
        report = window.add(key, float(t), f"e{t:g}")
        if report is not None:
            fired.append((t, report))
    return fired


def test_events_at_0_30_95_fire_at_95() -> None:
    fired = feed(CountWindow(window=100, threshold=3), 0, 30, 95)
    assert [(t, r.end, r.start, r.count) for t, r in fired] == [(95, 95.0, -5.0, 3)]
    assert fired[0][1].event_ids == ("e0", "e30", "e95")
    assert fired[0][1].key == "alice"


def test_events_at_0_30_105_do_not_fire_window_slides_past_0() -> None:
    assert feed(CountWindow(window=100, threshold=3), 0, 30, 105) == []


def test_window_bounds_are_inclusive_events_exactly_window_apart_share_it() -> None:
    assert [t for t, _ in feed(CountWindow(window=100, threshold=2), 0, 100)] == [100]
    assert feed(CountWindow(window=100, threshold=2), 0, 100.001) == []


def test_sliding_fires_again_on_every_event_while_above_threshold() -> None:
    fired = feed(CountWindow(window=100, threshold=3), 0, 30, 95, 120, 250)
    assert [(t, r.count) for t, r in fired] == [(95, 3), (120, 3)]  # 120: 30, 95, 120


def test_keys_are_counted_separately() -> None:
    window = CountWindow(window=100, threshold=2)
    assert window.add("alice", 0.0) is None
    assert window.add("bob", 10.0) is None
    assert window.add(("alice",), 20.0) is None  # tuple keys are keys too
    assert window.add("alice", 20.0) is not None


@pytest.mark.parametrize("arrival", [(95, 0, 30), (30, 95, 0), (0, 95, 30)])
def test_out_of_order_within_lateness_fires_when_the_window_completes(arrival: tuple[int, ...]) -> None:
    window = CountWindow(window=100, threshold=3)
    window.advance(-900)  # watermark = max time − 900 s lateness
    fired = feed(window, *arrival)
    assert len(fired) == 1
    arrived_at, report = fired[0]
    assert arrived_at == arrival[-1]  # the moment the third event arrives
    assert (report.start, report.end, report.count) == (-5.0, 95.0, 3)
    assert report.event_ids == ("e0", "e30", "e95")


def test_out_of_order_reports_the_earliest_window_that_just_reached_threshold() -> None:
    # in event time: 10, 50, 60, 200; 50 arrives last and completes the window ending at 60
    fired = feed(CountWindow(window=100, threshold=3), 10, 60, 200, 50)
    assert [(t, r.end, r.count) for t, r in fired] == [(50, 60.0, 3)]


def test_out_of_order_does_not_report_windows_that_were_already_above_threshold() -> None:
    window = CountWindow(window=100, threshold=2)
    assert [t for t, _ in feed(window, 50, 60)] == [60]
    # 40 arrives late-ish: its own window [−60, 40] holds 1; window at 50 now 2 → crosses → reported
    fired = feed(window, 40)
    assert [(r.end, r.count) for _, r in fired] == [(50.0, 2)]


def test_late_event_is_counted_and_evaluated_against_remaining_state() -> None:
    late: list[int] = []
    window = CountWindow(window=100, threshold=3, on_late=late.append)
    feed(window, 1000, 1010)
    window.advance(1010 - 5)  # tiny lateness so that 990 is late
    fired = feed(window, 990)
    assert late == [1]
    assert [(r.start, r.end, r.count) for _, r in fired] == [(910.0, 1010.0, 3)]


def test_late_event_after_state_expired_counts_only_what_remains() -> None:
    late: list[int] = []
    window = CountWindow(window=100, threshold=3, on_late=late.append)
    feed(window, 0, 30)
    window.advance(500)  # key expired: newest 30 < 500 − 100
    assert len(window) == 0
    assert feed(window, 95) == []  # would have fired in time; 0 and 30 are gone
    assert late == [1]
    assert len(window) == 1


def test_late_event_with_drop_policy_is_counted_and_not_added() -> None:
    late: list[int] = []
    window = CountWindow(window=100, threshold=3, on_late=late.append, late_policy="drop")
    feed(window, 1000)
    window.advance(995)
    assert feed(window, 990) == []
    assert late == [1]
    assert feed(window, 1001) == []  # had 990 been added, this would be the third event
    assert [(t, r.count) for t, r in feed(window, 1002)] == [(1002, 3)]


def test_duplicate_event_ids_count_once() -> None:
    window = CountWindow(window=100, threshold=3)
    assert window.add("k", 0.0, "a") is None
    assert window.add("k", 30.0, "b") is None
    assert window.add("k", 30.0, "b") is None  # re-delivered
    assert window.add("k", 0.0, "a") is None
    report = window.add("k", 95.0, "c")
    assert report is not None and report.count == 3
    assert window.add("k", 95.0, "c") is None  # a duplicate never reports, even above threshold


def test_same_time_different_ids_and_missing_ids_both_count() -> None:
    window = CountWindow(window=100, threshold=3)
    assert window.add("k", 5.0, "a") is None
    assert window.add("k", 5.0, "b") is None
    report = window.add("k", 5.0)
    assert report is not None and report.count == 3 and report.event_ids == ("a", "b")


def test_ttl_expiry_by_watermark() -> None:
    window = CountWindow(window=100, threshold=3)
    feed(window, 0, key="old")
    feed(window, 450, key="recent")
    window.advance(500)  # cutoff 400
    assert len(window) == 1
    window.advance(549)
    assert len(window) == 1
    window.advance(551)
    assert len(window) == 0


def test_lru_eviction_under_a_spray_of_a_million_keys() -> None:
    evicted: list[int] = []
    window = CountWindow(window=600, threshold=5, max_keys=10_000, on_evict=evicted.append)
    add = window.add
    for i in range(1_000_000):
        add(i, 1000.0 + i * 0.001)
        if i % 10_000 == 0:
            assert len(window) <= 10_000
    assert len(window) <= 10_000
    assert sum(evicted) == 1_000_000 - len(window)
    # the most recent keys survived, the oldest did not
    assert window.add(999_999, 2000.0) is None and len(window) <= 10_000


def test_lru_keeps_recently_used_keys() -> None:
    window = CountWindow(window=100, threshold=3, max_keys=3)
    feed(window, 0, key="busy")
    for k in ("a", "b", "c", "d"):
        feed(window, 1, key="busy")
        feed(window, 1, key=k)
    assert [t for t, _ in feed(window, 2, key="busy")] == [2]  # still has its earlier events


def test_max_events_caps_a_single_key() -> None:
    window = CountWindow(window=10_000, threshold=3, max_events=5)
    for t in range(20):
        window.add("k", float(t), f"e{t}")
    report = window.add("k", 20.0, "e20")
    assert report is not None and report.count <= 6
    assert len(window.snapshot()["keys"][0][1]) <= 2 * 6


def test_throttle_reports_once_per_window_and_carries_the_suppressed_count() -> None:
    window = CountWindow(window=100, threshold=3, throttle=100)
    fired = feed(window, 0, 10, 20, 30, 40, 50, 130, 140)
    assert [(t, r.suppressed) for t, r in fired] == [(20, 0), (130, 3)]


def test_threshold_one_fires_on_first_event() -> None:
    assert [t for t, _ in feed(CountWindow(window=10, threshold=1), 7)] == [7]


def test_evidence_ids_are_bounded_first_and_last() -> None:
    window = CountWindow(window=1000, threshold=1, max_evidence=4)
    for t in range(10):
        report = window.add("k", float(t), f"e{t}")
    assert report is not None and report.event_ids == ("e0", "e1", "e8", "e9")


TIMELINE: list[tuple[str, float, str]] = [
    ("add", 0, "a"),
    ("add", 30, "a"),
    ("add", 40, "b"),
    ("adv", -860, ""),
    ("add", 95, "a"),
    ("add", 96, "b"),
    ("add", 200, "a"),
    ("adv", -700, ""),
    ("add", 120, "b"),
    ("add", 205, "a"),
    ("add", 210, "a"),
    ("add", 1500, "a"),
    ("adv", 600, ""),
    ("add", 1510, "a"),
    ("add", 1520, "a"),
    ("add", 1530, "b"),
    ("add", 1525, "a"),
    ("add", 1590, "a"),
    ("add", 700, "b"),
    ("add", 1591, "b"),
]


def run(window: CountWindow, steps: list[tuple[str, float, str]]) -> list[CountReport]:
    out = []
    for op, t, key in steps:
        if op == "adv":
            window.advance(t)
        elif (report := window.add(key, float(t), f"{key}{t:g}")) is not None:
            out.append(report)
    return out


@pytest.mark.parametrize("split", range(len(TIMELINE) + 1))
def test_snapshot_restore_behaves_as_if_never_restarted(split: int) -> None:
    def make() -> CountWindow:
        return CountWindow(window=100, threshold=3, throttle=50)

    expected = run(make(), TIMELINE)
    first = make()
    before = run(first, TIMELINE[:split])
    saved = orjson.loads(orjson.dumps(first.snapshot()))
    second = make()
    second.restore(saved)
    assert before + run(second, TIMELINE[split:]) == expected
    assert [(r.key, r.end, r.suppressed) for r in expected] == [
        ("a", 95.0, 0),
        ("b", 120.0, 0),
        ("a", 210.0, 0),
        ("a", 1520.0, 0),
        ("a", 1590.0, 1),
    ]


def test_restore_rejects_a_newer_version_and_another_kind() -> None:
    window = CountWindow(window=100, threshold=3)
    feed(window, 1)
    data = window.snapshot()
    with pytest.raises(ValueError, match="newer"):
        CountWindow(window=100, threshold=3).restore({**data, "version": 99})
    with pytest.raises(ValueError, match="kind"):
        CountWindow(window=100, threshold=3).restore({**data, "kind": "distinct"})


def test_invalid_parameters_are_rejected() -> None:
    with pytest.raises(ValueError):
        CountWindow(window=0, threshold=3)
    with pytest.raises(ValueError):
        CountWindow(window=10, threshold=0)
    with pytest.raises(ValueError):
        CountWindow(window=10, threshold=5, max_events=4)
    with pytest.raises(ValueError):
        CountWindow(window=10, threshold=5, late_policy="ignore")  # type: ignore[arg-type]
