"""Timelines for RecentValues: "ListBuckets at 0 s, ListUsers at 30 s → seen since 10 s: ListUsers"."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from detectors.access_denied_burst import AccessDeniedBurst
from detectors.console_login_bruteforce import ConsoleLoginBruteforce
from detectors.windows.recent import LastSeen, RecentValues


def recent(cap: int = 4, horizon: float = 100.0, max_keys: int = 10) -> RecentValues[LastSeen]:
    return RecentValues(LastSeen, horizon=horizon, max_keys=max_keys, cap=cap)


def feed(values: RecentValues[Any], *events: tuple[float, str], key: str = "alice") -> LastSeen:
    """Note ``(time, value)`` events for ``key`` in arrival order; return its record."""
    record = None
    for t, value in events:
        record = values.see(key, value, float(t))
    assert record is not None
    return record


def test_values_at_0_30_95_since_10_are_the_two_later_ones_in_first_seen_order() -> None:
    record = feed(recent(), (0, "ListBuckets"), (30, "ListUsers"), (95, "GetSecretValue"))
    assert record.since(10) == ["ListUsers", "GetSecretValue"]
    assert record.since(0) == ["ListBuckets", "ListUsers", "GetSecretValue"]
    assert record.newest == 95.0


def test_a_value_seen_again_moves_its_last_time_not_its_place() -> None:
    record = feed(recent(), (0, "a"), (10, "b"), (50, "a"))
    assert record.since(20) == ["a"]
    assert record.since(0) == ["a", "b"]
    assert record.pairs == ["a", 50.0, "b", 10.0]


def test_out_of_order_arrival_keeps_the_latest_time_and_the_newest_event() -> None:
    record = feed(recent(), (90, "a"), (10, "a"), (40, "b"))
    assert record.pairs == ["a", 90.0, "b", 40.0]
    assert record.newest == 90.0
    assert record.since(50) == ["a"]


def test_past_the_cap_the_value_seen_least_recently_is_forgotten() -> None:
    record = feed(recent(cap=3), (0, "a"), (10, "b"), (20, "c"), (30, "a"), (40, "d"))
    assert record.since(0) == ["a", "c", "d"]  # b (last at 10 s) went, a (seen again at 30 s) stayed
    assert len(record.pairs) == 6


def test_keys_expire_a_horizon_after_their_newest_event() -> None:
    values = recent(horizon=100)
    feed(values, (0, "a"), key="old")
    feed(values, (150, "b"), key="new")
    values.advance(99)
    assert values.get("old") is not None
    values.advance(101)
    assert values.get("old") is None and values.get("new") is not None
    assert [key for key, _ in values.items()] == ["new"]
    assert values.see("old", "c", 150).since(0) == ["c"]  # a fresh record, not the expired one


def test_key_cap_evicts_the_least_recently_used() -> None:
    values = recent(max_keys=2)
    feed(values, (0, "a"), key="k1")
    feed(values, (1, "a"), key="k2")
    feed(values, (2, "b"), key="k1")  # k1 used again: k2 is now the least recently used
    feed(values, (3, "a"), key="k3")
    assert values.get("k2") is None and values.get("k1") is not None and len(values) == 2


def test_get_does_not_mark_a_key_used() -> None:
    values = recent(max_keys=2)
    feed(values, (0, "a"), key="k1")
    feed(values, (1, "a"), key="k2")
    assert values.get("k1") is not None
    feed(values, (2, "a"), key="k3")
    assert values.get("k1") is None and values.get("k2") is not None


class Tagged(LastSeen):
    __slots__ = ("tag",)

    def __init__(self, newest: float, pairs: list[Any] | None = None, tag: str = "") -> None:
        super().__init__(newest, pairs)
        self.tag = tag


def test_a_subclass_record_carries_its_own_figures_and_loads_back() -> None:
    values: RecentValues[Tagged] = RecentValues(Tagged, horizon=100, max_keys=10, cap=4)
    record = values.see("alice", "a", 5)
    assert isinstance(record, Tagged) and record.tag == ""
    record.tag = "burst"
    dumped = [[key, r.newest, r.tag, list(r.pairs)] for key, r in values.items()]
    wire = msgpack.unpackb(msgpack.packb(dumped), raw=False)
    copy: RecentValues[Tagged] = RecentValues(Tagged, horizon=100, max_keys=10, cap=4)
    copy.load([(key, Tagged(newest, pairs, tag)) for key, newest, tag, pairs in wire], watermark=0)
    loaded = copy.get("alice")
    assert loaded is not None and (loaded.tag, loaded.newest, loaded.since(0)) == ("burst", 5, ["a"])


def test_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="cap"):
        RecentValues(LastSeen, horizon=1, max_keys=1, cap=0)


# The detectors' version-1 snapshots, as checkpoints written before RecentValues hold them.
V1_ACCESS_DENIED: dict[str, Any] = {
    "version": 1, "kind": "access_denied_burst", "watermark": 40.0,
    "failures": {"version": 1, "kind": "count", "watermark": 40.0, "keys": [], "throttle": None},
    "apis": [["arn:aws:iam::1:user/a", 50.0, ["AccessDenied"],
              ["s3:ListBuckets", 10.0, "iam:ListUsers", 50.0]]],
    "throttle": {"version": 1, "kind": "throttle", "watermark": 40.0, "keys": []},
}
V1_CONSOLE: dict[str, Any] = {
    "version": 1, "kind": "console_login_bruteforce", "watermark": 40.0,
    "failures": {"version": 1, "kind": "count", "watermark": 40.0, "keys": [], "throttle": None},
    "sequence": {"version": 1, "kind": "sequence", "watermark": 40.0, "keys": [],
                 "throttle": {"version": 1, "kind": "throttle", "watermark": 40.0, "keys": []}},
    "throttle": {"version": 1, "kind": "throttle", "watermark": 40.0, "keys": []},
    "recent": [["ip:203.0.113.66", 50.0, 5, 45.0, ["alice", 30.0, "bob", 50.0]]],
}


@pytest.mark.parametrize(("cls", "state"), [(AccessDeniedBurst, V1_ACCESS_DENIED),
                                            (ConsoleLoginBruteforce, V1_CONSOLE)])
def test_detectors_restore_and_write_back_their_version_1_snapshots_unchanged(cls: Any, state: Any) -> None:
    detector = cls(cls.Config())
    detector.restore(state)
    expected = state
    if cls is AccessDeniedBurst:  # each principal's entry gained the denied resources (empty in v1 state)
        expected = {**state, "apis": [[*entry, []] for entry in state["apis"]]}
    assert detector.snapshot() == expected
