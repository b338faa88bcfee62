"""Timelines for SequenceWindow: "failed login at 0s then success at 60s (within 300s) → alert at 60s"."""

from __future__ import annotations

import orjson
import pytest

from detectors.windows import SequenceReport, SequenceWindow


def feed(window: SequenceWindow, *events: tuple[float, str], key: str = "alice") -> list[tuple[float, SequenceReport]]:
    """Add ``(time, step)`` events in arrival order; return ``(arrival time, report)`` that fired."""
    fired = []
    for t, step in events:
        report = window.add(key, float(t), step, f"{step}{t:g}")
        if report is not None:
            fired.append((t, report))
    return fired


def login() -> SequenceWindow:
    return SequenceWindow(["failure", "success"], within=300)


def test_failure_at_0_then_success_at_60_fires_at_60() -> None:
    fired = feed(login(), (0, "failure"), (60, "success"))
    assert len(fired) == 1
    t, report = fired[0]
    assert (t, report.start, report.end) == (60, 0.0, 60.0)
    assert report.steps == ("failure", "success")
    assert report.times == (0.0, 60.0)
    assert report.event_ids == ("failure0", "success60")


def test_success_beyond_within_does_not_fire() -> None:
    assert feed(login(), (0, "failure"), (301, "success")) == []


def test_exactly_within_apart_fires() -> None:
    assert len(feed(login(), (0, "failure"), (300, "success"))) == 1


def test_wrong_order_in_event_time_does_not_fire() -> None:
    assert feed(login(), (0, "success"), (60, "failure")) == []


def test_same_second_counts_as_in_order() -> None:
    assert len(feed(login(), (5, "failure"), (5, "success"))) == 1


def test_the_tightest_match_is_reported() -> None:
    fired = feed(login(), (0, "failure"), (200, "failure"), (250, "success"))
    assert [(r.start, r.end, r.event_ids) for _, r in fired] == [(200.0, 250.0, ("failure200", "success250"))]


@pytest.mark.parametrize("arrival", [((60, "success"), (0, "failure")), ((0, "failure"), (60, "success"))])
def test_out_of_order_within_lateness_fires_when_the_match_completes(arrival: tuple) -> None:
    window = login()
    window.advance(-900)
    fired = feed(window, *arrival)
    assert [(t, r.start, r.end) for t, r in fired] == [(arrival[-1][0], 0.0, 60.0)]


def test_three_ordered_steps_in_any_arrival_order() -> None:
    window = SequenceWindow(["recon", "escalate", "exfil"], within=600)
    fired = feed(window, (500, "exfil"), (0, "recon"), (100, "escalate"))
    assert [(t, r.times) for t, r in fired] == [(100, (0.0, 100.0, 500.0))]
    window2 = SequenceWindow(["recon", "escalate", "exfil"], within=600)
    assert feed(window2, (500, "exfil"), (0, "recon"), (501, "escalate")) == []  # escalate after exfil


def test_three_ordered_steps_too_far_apart_do_not_fire() -> None:
    window = SequenceWindow(["recon", "escalate", "exfil"], within=600)
    assert feed(window, (0, "recon"), (100, "escalate"), (601, "exfil")) == []


def test_unordered_all_steps_within_window_fire_in_any_order() -> None:
    window = SequenceWindow(["a", "b", "c"], within=100, ordered=False)
    fired = feed(window, (50, "c"), (0, "b"), (90, "a"))
    assert [(t, r.start, r.end, r.times) for t, r in fired] == [(90, 0.0, 90.0, (90.0, 0.0, 50.0))]


def test_unordered_steps_spread_wider_than_within_do_not_fire() -> None:
    window = SequenceWindow(["a", "b", "c"], within=100, ordered=False)
    assert feed(window, (0, "b"), (50, "c"), (101, "a")) == []


def test_unordered_finds_a_span_not_starting_at_the_new_event() -> None:
    window = SequenceWindow(["a", "b"], within=100, ordered=False)
    assert feed(window, (0, "a"), (250, "a"), (150, "b"))[0][1].times == (250.0, 150.0)


def test_late_event_is_counted_and_evaluated_against_remaining_state() -> None:
    late: list[int] = []
    window = SequenceWindow(["failure", "success"], within=300, on_late=late.append)
    feed(window, (1000, "success"))
    window.advance(995)
    fired = feed(window, (900, "failure"))
    assert late == [1]
    assert [(r.start, r.end) for _, r in fired] == [(900.0, 1000.0)]


def test_late_event_with_drop_policy_is_not_added() -> None:
    late: list[int] = []
    window = SequenceWindow(["failure", "success"], within=300, on_late=late.append, late_policy="drop")
    feed(window, (1000, "success"))
    window.advance(995)
    assert feed(window, (900, "failure")) == []
    assert feed(window, (1001, "success")) == []
    assert late == [1]


def test_duplicate_event_ids_count_once() -> None:
    window = login()
    assert window.add("k", 0.0, "failure", "f1") is None
    assert window.add("k", 10.0, "success", "s1") is not None
    assert window.add("k", 10.0, "success", "s1") is None


def test_unknown_step_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown step"):
        login().add("k", 0.0, "logout")


def test_ttl_expiry_by_watermark() -> None:
    window = login()
    feed(window, (0, "failure"), key="old")
    feed(window, (900, "failure"), key="recent")
    window.advance(1000)
    assert len(window) == 1
    window.advance(1201)
    assert len(window) == 0


def test_expired_steps_do_not_match() -> None:
    window = login()
    feed(window, (0, "failure"))
    window.advance(1000)
    assert feed(window, (1000, "success")) == []


def test_lru_eviction_under_a_spray_of_a_million_keys() -> None:
    evicted: list[int] = []
    window = SequenceWindow(["failure", "success"], within=300, max_keys=10_000, on_evict=evicted.append)
    add = window.add
    for i in range(1_000_000):
        add(i, 1000.0 + i * 0.001, "failure")
    assert len(window) <= 10_000
    assert sum(evicted) == 1_000_000 - len(window)


def test_events_per_step_are_capped() -> None:
    window = SequenceWindow(["failure", "success"], within=10_000, max_per_step=3)
    feed(window, *((t, "failure") for t in range(10)))
    state = window.snapshot()["keys"][0][1]
    assert len(state[1]) <= 2 * 6


def test_throttle_carries_the_suppressed_count() -> None:
    window = SequenceWindow(["failure", "success"], within=300, throttle=300)
    fired = feed(
        window, (0, "failure"), (10, "success"), (20, "success"), (30, "success"), (400, "failure"), (410, "success")
    )
    assert [(t, r.suppressed) for t, r in fired] == [(10, 0), (410, 2)]


TIMELINE = [
    ("add", 0, "k1", "failure"),
    ("add", 10, "k2", "success"),
    ("adv", -900, "", ""),
    ("add", 60, "k1", "success"),
    ("add", 5, "k2", "failure"),
    ("add", 400, "k1", "failure"),
    ("adv", -500, "", ""),
    ("add", 390, "k1", "success"),
    ("add", 700, "k1", "success"),
    ("add", 2000, "k2", "failure"),
    ("adv", 1100, "", ""),
    ("add", 2100, "k2", "success"),
]


def run(window: SequenceWindow, steps: list) -> list[SequenceReport]:
    out = []
    for op, t, key, step in steps:
        if op == "adv":
            window.advance(t)
        elif (report := window.add(key, float(t), step, f"{key}{t}")) is not None:
            out.append(report)
    return out


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("split", range(len(TIMELINE) + 1))
def test_snapshot_restore_behaves_as_if_never_restarted(split: int, ordered: bool) -> None:
    def make() -> SequenceWindow:
        return SequenceWindow(["failure", "success"], within=300, ordered=ordered)

    expected = run(make(), TIMELINE)
    first = make()
    before = run(first, TIMELINE[:split])
    saved = orjson.loads(orjson.dumps(first.snapshot()))
    second = make()
    second.restore(saved)
    assert before + run(second, TIMELINE[split:]) == expected
    ends = [(r.key, r.end) for r in expected]
    if ordered:
        assert ends == [("k1", 60.0), ("k2", 10.0), ("k1", 700.0), ("k2", 2100.0)]
    else:
        assert ends == [("k1", 60.0), ("k2", 10.0), ("k1", 400.0), ("k1", 700.0), ("k2", 2100.0)]


def test_restore_rejects_a_newer_version_and_a_different_number_of_steps() -> None:
    window = login()
    feed(window, (1, "failure"))
    with pytest.raises(ValueError, match="newer"):
        login().restore({**window.snapshot(), "version": 7})
    with pytest.raises(ValueError, match="steps"):
        SequenceWindow(["a", "b", "c"], within=10).restore(window.snapshot())


def test_invalid_parameters_are_rejected() -> None:
    with pytest.raises(ValueError):
        SequenceWindow(["only"], within=10)
    with pytest.raises(ValueError):
        SequenceWindow(["a", "a"], within=10)
    with pytest.raises(ValueError):
        SequenceWindow(["a", "b"], within=0)
