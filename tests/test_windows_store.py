"""KeyedState (LRU + TTL by watermark), Throttle and the snapshot envelope shared by all primitives."""

from __future__ import annotations

import time

import pytest

from detectors.windows import (
    SNAPSHOT_VERSION,
    BaselineRate,
    CountWindow,
    DistinctCountWindow,
    FirstSeen,
    KeyedState,
    SequenceWindow,
    Throttle,
)
from detectors.windows.store import check_snapshot, freeze, thaw


def store(max_keys: int = 100, horizon: float = 100.0, evicted: list[int] | None = None) -> KeyedState[list]:
    return KeyedState(
        horizon=horizon,
        max_keys=max_keys,
        newest=lambda s: s[0],
        on_evict=evicted.append if evicted is not None else None,
    )


def test_get_touches_and_eviction_takes_the_least_recently_used() -> None:
    evicted: list[int] = []
    keys = store(max_keys=3, evicted=evicted)
    for k in "abc":
        keys.insert(k, [0.0])
    assert keys.get("a") is not None  # a is now the most recently used
    keys.insert("d", [0.0])
    assert evicted == [1]
    assert [k for k, _ in keys.items()] == ["c", "a", "d"]
    assert keys.get("b") is None


def test_eviction_is_batched_and_never_exceeds_the_cap() -> None:
    evicted: list[int] = []
    keys = store(max_keys=640, evicted=evicted)
    for i in range(10_000):
        keys.insert(i, [0.0])
        assert len(keys) <= 640
    assert set(evicted) == {10}  # 640 // 64
    assert sum(evicted) == 10_000 - len(keys)


def test_get_never_returns_an_expired_key_even_before_advance_removes_it() -> None:
    keys = store(horizon=100)
    keys.insert("k", [0.0])
    keys.watermark = 150.0  # as if advanced without removing (e.g. restored)
    assert keys.get("k", touch=False) is None
    assert "k" not in keys


def test_advance_expires_from_the_lru_end_and_stops_at_the_first_live_key() -> None:
    keys = store(horizon=100)
    keys.insert("a", [0.0])
    keys.insert("b", [10.0])
    keys.insert("c", [500.0])
    keys.insert("d", [20.0])  # touched out of event-time order: sits behind live c
    assert keys.advance(300) == 2
    assert len(keys) == 2
    assert "d" not in keys  # invisible already
    assert keys.advance(200) == 0 and keys.watermark == 300  # the watermark never goes back


def test_advance_cost_does_not_grow_with_live_keys() -> None:
    keys = store(max_keys=200_000, horizon=1e9)
    for i in range(100_000):
        keys.insert(i, [float(i)])
    started = time.perf_counter()
    for wm in range(20_000):
        keys.advance(float(wm))
    assert time.perf_counter() - started < 0.5  # a scan of all keys would take minutes
    assert len(keys) == 100_000


def test_freeze_and_thaw_round_trip_tuple_keys() -> None:
    key = ("111122223333", ("us-east-1", 3))
    assert freeze(key) == ["111122223333", ["us-east-1", 3]]
    assert thaw(freeze(key)) == key
    assert freeze("plain") == "plain" and thaw(7) == 7


@pytest.mark.parametrize(
    "bad", [None, [], {"kind": "count"}, {"version": "1", "kind": "count"}, {"version": 0, "kind": "count"}]
)
def test_malformed_snapshots_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError):
        check_snapshot(bad, "count")


def test_throttle_lets_one_through_per_period_and_counts_the_rest() -> None:
    throttle = Throttle(100)
    assert throttle.allow("k", 0.0) == 0
    assert throttle.allow("k", 50.0) is None
    assert throttle.allow("k", -20.0) is None  # out of order, still within the period
    assert throttle.allow("other", 50.0) == 0
    assert throttle.allow("k", 100.0) == 2
    assert throttle.allow("k", 150.0) is None


def test_throttle_forgets_quiet_keys_and_their_count() -> None:
    throttle = Throttle(100)
    throttle.allow("k", 0.0)
    throttle.allow("k", 10.0)
    throttle.advance(111)
    assert len(throttle) == 0
    assert throttle.allow("k", 300.0) == 0


def test_throttle_snapshot_restore() -> None:
    throttle = Throttle(100)
    throttle.allow(("a", "b"), 0.0)
    throttle.allow(("a", "b"), 10.0)
    throttle.advance(5.0)
    again = Throttle(100)
    again.restore(throttle.snapshot())
    assert again.allow(("a", "b"), 20.0) is None
    assert again.allow(("a", "b"), 100.0) == 2
    with pytest.raises(ValueError, match="newer"):
        again.restore({**throttle.snapshot(), "version": SNAPSHOT_VERSION + 1})


PRIMITIVES = [
    lambda: CountWindow(100, 3),
    lambda: DistinctCountWindow(100, 3),
    lambda: SequenceWindow(["a", "b"], 100),
    lambda: FirstSeen(100),
    lambda: BaselineRate(60, 0.2, 3.0, 5),
]


@pytest.mark.parametrize("make", PRIMITIVES)
def test_every_snapshot_is_plain_versioned_data(make) -> None:  # type: ignore[no-untyped-def]
    primitive = make()
    primitive.advance(-10.0)
    args = {"count": (), "distinct": ("v",), "sequence": ("a",), "first_seen": ("v",), "baseline": ()}
    primitive.add(("acct", "region"), 5.0, *args[primitive.kind], event_id="id")
    data = primitive.snapshot()
    assert data["version"] == SNAPSHOT_VERSION and data["kind"] == primitive.kind

    def plain(value: object) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (str, int, float, bool))

    assert plain(data)
    with pytest.raises(ValueError, match="newer"):
        make().restore({**data, "version": SNAPSHOT_VERSION + 1})
    other = "count" if primitive.kind != "count" else "distinct"
    with pytest.raises(ValueError, match="cannot be restored"):
        make().restore({**data, "kind": other})
