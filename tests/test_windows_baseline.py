"""Timelines for BaselineRate: "2 RunInstances per 10 min for 100 min, then 10 in one bucket → spike"."""

from __future__ import annotations

import msgpack
import pytest

from detectors.windows import BaselineRate, SpikeReport

BUCKET = 600.0
KEY = ("111122223333", "us-east-1")


def make(**overrides: float) -> BaselineRate:
    params: dict = {"bucket": BUCKET, "alpha": 0.5, "threshold_factor": 3.0, "min_count": 5}
    params.update(overrides)
    return BaselineRate(**params)


def steady(per_bucket: int, buckets: range) -> list[float]:
    """``per_bucket`` events in each bucket of ``buckets``, spaced 10 s apart from its start."""
    return [b * BUCKET + 10 * k for b in buckets for k in range(per_bucket)]


def play(
    rate: BaselineRate, times: list[float], *, lateness: float = 900, key: object = KEY
) -> list[tuple[float, SpikeReport]]:
    """Add events in the given arrival order, advancing the watermark after each like the engine does."""
    fired = []
    max_seen = float("-inf")
    for t in times:
        report = rate.add(key, float(t), f"e{t:g}")
        if report is not None:
            fired.append((t, report))
        max_seen = max(max_seen, t)
        rate.advance(max_seen - lateness)
    return fired


def test_ten_in_a_bucket_after_two_per_bucket_is_a_spike_reported_as_soon_as_it_exceeds() -> None:
    rate = make()
    assert play(rate, steady(2, range(10))) == []
    fired = play(rate, steady(10, range(10, 11)))
    assert len(fired) == 1
    t, report = fired[0]
    assert t == 6000 + 60  # the 7th event: 7 > max(5, 3 × 2)
    assert (report.start, report.end, report.count, report.limit) == (6000.0, 6600.0, 7, 6.0)
    assert report.baseline == pytest.approx(2.0)
    assert report.event_ids[0] == "e6000" and len(report.event_ids) == 7


def test_a_bucket_at_the_limit_is_not_a_spike() -> None:
    rate = make()
    assert play(rate, steady(2, range(10)) + steady(6, range(10, 11))) == []


def test_a_new_key_is_held_to_min_count() -> None:
    assert play(make(), steady(5, range(1))) == []
    assert [r.count for _, r in play(make(), steady(6, range(1)))] == [6]


def test_warmup_buckets_are_required_before_reporting() -> None:
    assert play(make(warmup=3), steady(50, range(1))) == []
    rate = make(warmup=3)
    play(rate, steady(1, range(3)))
    assert len(play(rate, steady(50, range(4, 5)))) == 1


def test_a_spike_is_reported_once_per_bucket_and_again_in_the_next() -> None:
    rate = make(alpha=0.1)
    fired = play(rate, steady(2, range(10)) + steady(20, range(10, 12)))
    assert [r.start for _, r in fired] == [6000.0, 6600.0]


def test_empty_buckets_decay_the_baseline() -> None:
    rate = make()
    play(rate, steady(10, range(10)))
    assert rate.baseline(KEY) == pytest.approx(10.0)
    rate.advance(30 * BUCKET)
    assert rate.baseline(KEY) == pytest.approx(10.0 * 0.5**20)
    assert [r.count for _, r in play(rate, steady(6, range(31, 32)))] == [6]


def test_out_of_order_within_lateness_lands_in_its_own_bucket() -> None:
    rate = make()
    play(rate, steady(2, range(10)))
    # bucket 10 (6000–6600) has 6 events; then bucket 11 starts; then one more for bucket 10 arrives
    times = [*steady(6, range(10, 11)), 6650.0, 6590.0]
    fired = play(rate, times)
    assert [(t, r.start, r.count) for t, r in fired] == [(6590.0, 6000.0, 7)]


def test_late_event_whose_bucket_closed_is_counted_late_and_not_added() -> None:
    late: list[int] = []
    rate = make(on_late=late.append)
    play(rate, steady(2, range(10)) + steady(6, range(10, 11)))
    rate.advance(6600)  # bucket 10 closed
    before = rate.baseline(KEY)
    assert play(rate, [6590.0], lateness=10**9) == []
    assert late == [1]
    assert rate.baseline(KEY) == before


def test_late_event_whose_bucket_is_still_open_is_counted_with_evaluate_policy() -> None:
    late: list[int] = []
    rate = make(on_late=late.append)
    play(rate, steady(2, range(10)) + steady(6, range(10, 11)))
    rate.advance(6500)
    fired = play(rate, [6400.0], lateness=10**9)
    assert late == [1]
    assert [(r.start, r.count) for _, r in fired] == [(6000.0, 7)]


def test_late_event_with_drop_policy_is_not_counted() -> None:
    late: list[int] = []
    rate = make(on_late=late.append, late_policy="drop")
    play(rate, steady(2, range(10)) + steady(6, range(10, 11)))
    rate.advance(6500)
    assert play(rate, [6400.0], lateness=10**9) == []
    assert late == [1]


def test_duplicate_event_ids_count_once() -> None:
    assert play(make(), [1.0] * 10) == []  # ten copies of one event (same id) are one event, not 10 > 5


def test_duplicates_do_not_reach_the_limit() -> None:
    rate = make()
    assert all(rate.add(KEY, 100.0 + k % 5, f"id{k % 5}") is None for k in range(50))
    report = rate.add(KEY, 110.0, "id-six")
    assert report is not None and report.count == 6


def test_ttl_expiry_by_watermark() -> None:
    rate = make(ttl=10 * BUCKET)
    play(rate, [0.0], key="old")
    play(rate, [5 * BUCKET], key="recent")
    rate.advance(11 * BUCKET)
    assert len(rate) == 1
    rate.advance(16 * BUCKET)
    assert len(rate) == 0


def test_lru_eviction_under_a_spray_of_a_million_keys() -> None:
    evicted: list[int] = []
    rate = make(max_keys=10_000, on_evict=evicted.append)
    add = rate.add
    for i in range(1_000_000):
        add(i, 1000.0 + i * 0.001)
    assert len(rate) <= 10_000
    assert sum(evicted) == 1_000_000 - len(rate)


def test_throttle_carries_the_suppressed_count() -> None:
    rate = make(throttle=2 * BUCKET)
    fired = play(rate, steady(20, range(0, 4)))
    assert [(r.start, r.suppressed) for _, r in fired] == [(0.0, 0), (1200.0, 1)]


TIMELINE = [*steady(2, range(6)), 3900.0, 3700.0, *steady(9, range(7, 8)), 4850.0, 4300.0, *steady(12, range(9, 10))]


# KEY gets one event per steady bucket (baseline 1); buckets 7 and 9 exceed min_count 5.
EXPECTED: list = [(KEY, 4200.0, 6), (KEY, 5400.0, 6)]


def run(rate: BaselineRate, times: list[float], start: int = 0) -> list[SpikeReport]:
    out = []
    max_seen = max(times[:start], default=float("-inf"))
    for t in times[start:]:
        key = KEY if int(t) % 3 else "other"
        if (report := rate.add(key, t, f"{t:g}")) is not None:
            out.append(report)
        max_seen = max(max_seen, t)
        rate.advance(max_seen - 900)
    return out


@pytest.mark.parametrize("split", range(0, len(TIMELINE) + 1, 3))
def test_snapshot_restore_behaves_as_if_never_restarted(split: int) -> None:
    expected = run(make(), TIMELINE)
    first = make()
    before = run(first, TIMELINE[:split])
    saved = msgpack.unpackb(msgpack.packb(first.snapshot()))
    second = make()
    second.restore(saved)
    assert before + run(second, TIMELINE, split) == expected
    assert [(r.key, r.start, r.count) for r in expected] == EXPECTED


def test_restore_rejects_a_newer_version() -> None:
    rate = make()
    play(rate, [1.0])
    with pytest.raises(ValueError, match="newer"):
        make().restore({**rate.snapshot(), "version": 10})


def test_invalid_parameters_are_rejected() -> None:
    for bad in ({"bucket": 0}, {"alpha": 0}, {"alpha": 1.5}, {"threshold_factor": 0}, {"min_count": -1}, {"ttl": 10}):
        with pytest.raises(ValueError):
            make(**bad)
