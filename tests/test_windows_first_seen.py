"""Timelines for FirstSeen: "account learns us-east-1 for a day; eu-west-3 on day 2 → alert"."""

from __future__ import annotations

import orjson
import pytest

from detectors.windows import FirstSeen, FirstSeenReport

DAY = 86_400.0


def feed(seen: FirstSeen, *events: tuple[float, str], key: str = "111122223333") -> list[tuple[float, FirstSeenReport]]:
    """Add ``(time, value)`` events in arrival order; return ``(arrival time, report)`` that fired."""
    fired = []
    for t, value in events:
        report = seen.add(key, float(t), value, f"e{t:g}")
        if report is not None:
            fired.append((t, report))
    return fired


def regions() -> FirstSeen:
    return FirstSeen(learning_period=DAY)


def test_new_region_after_learning_fires() -> None:
    fired = feed(regions(), (0, "us-east-1"), (3600, "eu-west-1"), (2 * DAY, "ap-east-1"))
    assert len(fired) == 1
    t, report = fired[0]
    assert (t, report.value, report.time, report.learning_started, report.known) == (
        2 * DAY,
        "ap-east-1",
        2 * DAY,
        0.0,
        2,
    )
    assert report.event_ids == (f"e{2 * DAY:g}",)


def test_new_value_during_learning_is_recorded_silently() -> None:
    assert feed(regions(), (0, "us-east-1"), (DAY - 1, "eu-west-1")) == []


def test_learning_ends_exactly_after_the_learning_period() -> None:
    assert len(feed(regions(), (0, "us-east-1"), (DAY, "eu-west-1"))) == 1


def test_known_value_after_learning_does_not_fire() -> None:
    assert feed(regions(), (0, "us-east-1"), (2 * DAY, "us-east-1"), (3 * DAY, "us-east-1")) == []


def test_each_new_value_fires_once() -> None:
    fired = feed(regions(), (0, "us-east-1"), (2 * DAY, "sa-east-1"), (2 * DAY + 5, "sa-east-1"))
    assert [t for t, _ in fired] == [2 * DAY]


def test_learning_is_per_key() -> None:
    seen = regions()
    feed(seen, (0, "us-east-1"), key="old-account")
    assert feed(seen, (2 * DAY, "eu-west-1"), key="new-account") == []  # its learning just started
    assert len(feed(seen, (2 * DAY, "eu-west-1"), key="old-account")) == 1


def test_zero_learning_period_reports_every_new_value_including_the_first() -> None:
    assert [r.value for _, r in feed(FirstSeen(learning_period=0), (0, "a"), (1, "a"), (2, "b"))] == ["a", "b"]


def test_out_of_order_within_lateness_learning_starts_at_the_earliest_event() -> None:
    seen = regions()
    seen.advance(DAY - 900)
    # the key's first event (t=0) arrives after a later one; learning is measured from t=0
    feed(seen, (DAY - 10, "us-east-1"), (0, "us-east-1"))
    fired = feed(seen, (DAY + 5, "eu-west-1"))
    assert [(r.learning_started, r.value) for _, r in fired] == [(0.0, "eu-west-1")]


def test_out_of_order_copy_of_a_known_value_does_not_fire() -> None:
    seen = regions()
    fired = feed(seen, (0, "us-east-1"), (2 * DAY, "eu-west-1"), (2 * DAY - 60, "eu-west-1"))
    assert [t for t, _ in fired] == [2 * DAY]


def test_late_event_is_counted_and_evaluated() -> None:
    late: list[int] = []
    seen = FirstSeen(learning_period=DAY, on_late=late.append)
    feed(seen, (0, "us-east-1"), (3 * DAY, "us-east-1"))
    seen.advance(3 * DAY - 900)
    fired = feed(seen, (2 * DAY, "me-south-1"))
    assert late == [1]
    assert [r.value for _, r in fired] == ["me-south-1"]


def test_late_event_with_drop_policy_is_not_recorded() -> None:
    late: list[int] = []
    seen = FirstSeen(learning_period=DAY, on_late=late.append, late_policy="drop")
    feed(seen, (0, "us-east-1"), (3 * DAY, "us-east-1"))
    seen.advance(3 * DAY - 900)
    assert feed(seen, (2 * DAY, "me-south-1")) == []
    assert late == [1]
    assert len(feed(seen, (3 * DAY, "me-south-1"))) == 1  # still new: the late one was not recorded


def test_duplicate_events_fire_once() -> None:
    seen = regions()
    feed(seen, (0, "us-east-1"))
    assert seen.add("111122223333", 2 * DAY, "eu-west-1", "dup") is not None
    assert seen.add("111122223333", 2 * DAY, "eu-west-1", "dup") is None


def test_values_are_forgotten_after_ttl() -> None:
    seen = FirstSeen(learning_period=DAY, ttl=30 * DAY)
    feed(seen, (0, "us-east-1"), (DAY, "eu-west-1"))
    for day in range(2, 40):
        seen.advance(day * DAY)
        feed(seen, (day * DAY, "us-east-1"))
    seen.advance(40 * DAY)
    fired = feed(seen, (40 * DAY, "eu-west-1"))  # last seen on day 1, 39 days ago
    assert [r.value for _, r in fired] == ["eu-west-1"]
    assert feed(seen, (40 * DAY + 1, "us-east-1")) == []


def test_stale_values_are_swept_from_state() -> None:
    seen = FirstSeen(learning_period=0, ttl=8 * DAY)
    for i in range(100):
        feed(seen, (i, f"v{i}"))
    for day in range(1, 20):
        seen.advance(day * DAY)
        feed(seen, (day * DAY, f"day{day}"))
    values = seen.snapshot()["keys"][0][1][3]
    assert len(values) <= 10


def test_key_ttl_expiry_by_watermark_restarts_learning() -> None:
    seen = FirstSeen(learning_period=DAY, ttl=10 * DAY)
    feed(seen, (0, "us-east-1"), key="a")
    feed(seen, (5 * DAY, "us-east-1"), key="b")
    seen.advance(11 * DAY)
    assert len(seen) == 1
    assert feed(seen, (11 * DAY, "eu-west-1"), key="a") == []  # relearning


def test_values_per_key_are_capped() -> None:
    seen = FirstSeen(learning_period=0, max_values=32)
    for i in range(1000):
        seen.add("k", float(i), f"v{i}")
    assert len(seen.snapshot()["keys"][0][1][3]) <= 32


def test_lru_eviction_under_a_spray_of_a_million_keys() -> None:
    evicted: list[int] = []
    seen = FirstSeen(learning_period=DAY, max_keys=10_000, on_evict=evicted.append)
    add = seen.add
    for i in range(1_000_000):
        add(i, 1000.0 + i * 0.001, "us-east-1")
    assert len(seen) <= 10_000
    assert sum(evicted) == 1_000_000 - len(seen)


TIMELINE = [
    ("add", 0, "acct1", "us-east-1"),
    ("add", 100, ("acct2", "role"), "us-east-1"),
    ("adv", -900, "", ""),
    ("add", 50, "acct1", "eu-west-1"),
    ("add", DAY + 10, "acct1", "eu-west-1"),
    ("add", DAY + 20, "acct1", "ap-south-1"),
    ("adv", DAY, "", ""),
    ("add", DAY + 30, ("acct2", "role"), "ap-south-1"),
    ("add", DAY + 40, "acct1", ("a", "tuple")),
    ("add", 3 * DAY, "acct1", "ap-south-1"),
    ("add", 3 * DAY, "acct1", "me-south-1"),
]


def run(seen: FirstSeen, steps: list) -> list[FirstSeenReport]:
    out = []
    for op, t, key, value in steps:
        if op == "adv":
            seen.advance(t)
        elif (report := seen.add(key, float(t), value, f"{t}")) is not None:
            out.append(report)
    return out


@pytest.mark.parametrize("split", range(len(TIMELINE) + 1))
def test_snapshot_restore_behaves_as_if_never_restarted(split: int) -> None:
    expected = run(regions(), TIMELINE)
    first = regions()
    before = run(first, TIMELINE[:split])
    saved = orjson.loads(orjson.dumps(first.snapshot()))
    second = regions()
    second.restore(saved)
    assert before + run(second, TIMELINE[split:]) == expected
    assert [(r.key, r.value) for r in expected] == [
        ("acct1", "ap-south-1"),
        ("acct1", ("a", "tuple")),
        ("acct1", "me-south-1"),
    ]  # acct2 is still learning at DAY + 30 (its first event was at t=100)


def test_restore_rejects_a_newer_version_and_another_kind() -> None:
    seen = regions()
    feed(seen, (1, "x"))
    with pytest.raises(ValueError, match="newer"):
        regions().restore({**seen.snapshot(), "version": 3})
    with pytest.raises(ValueError, match="kind"):
        regions().restore({**seen.snapshot(), "kind": "count"})
