"""Throttling timelines and the per-sink delivered-id record (dedup), including across a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from daemon.delivery.delivered import DeliveredRecord
from daemon.delivery.dispatch import DeliveryConfig, Dispatcher
from daemon.delivery.routing import RoutingConfig
from daemon.delivery.sinks.base import Sink, SinkConfig
from daemon.delivery.throttle import Throttle, ThrottleConfig
from daemon.metrics import Metrics
from detectors.alert import Alert


def alert(t: float, detector: str = "brute", entity: str = "alice", n: int | None = None) -> Alert:
    return Alert(detector=detector, title="t", severity="high", time=t, summary="",
                 event_ids=[f"{detector}-{entity}-{t if n is None else n}"], entity=entity)


def run(throttle: Throttle, timeline: list[Alert]) -> list[tuple[float, str, int | None]]:
    """(time, entity, suppressed_count) for each delivered alert."""
    out = []
    for item in timeline:
        if throttle.admit(item):
            out.append((item.time, item.entity, item.evidence.get("suppressed_count")))
    return out


def test_throttle_timeline_one_per_window_with_count() -> None:
    throttle = Throttle(ThrottleConfig(window=600))
    # alice at 0s, 30s, 95s, 599s (held back), 600s (window over: delivered with count 3), 700s (held back)
    timeline = [alert(t) for t in (0, 30, 95, 599, 600, 700)]
    assert run(throttle, timeline) == [(0, "alice", None), (600, "alice", 3)]


def test_throttle_groups_by_detector_and_entity() -> None:
    throttle = Throttle(ThrottleConfig(window=60))
    timeline = [alert(0), alert(1, entity="bob"), alert(2, detector="other"), alert(3), alert(61)]
    assert run(throttle, timeline) == [(0, "alice", None), (1, "bob", None), (2, "alice", None),
                                       (61, "alice", 1)]


def test_throttle_overrides_per_detector() -> None:
    config = ThrottleConfig.model_validate({"window": "10m", "overrides": {
        "root": {"window": 0}, "burst": {"window": "1m", "per": ["detector"]}}})
    throttle = Throttle(config)
    assert run(throttle, [alert(0, "root"), alert(1, "root")]) == [(0, "alice", None), (1, "alice", None)]
    assert run(throttle, [alert(0, "burst", "a"), alert(5, "burst", "b"), alert(70, "burst", "c")]) == \
        [(0, "a", None), (70, "c", 1)]


def test_throttle_off_by_default_and_config_is_strict() -> None:
    throttle = Throttle(ThrottleConfig())
    assert not throttle.enabled
    assert len(run(throttle, [alert(0), alert(0, n=1), alert(0, n=2)])) == 3
    with pytest.raises(ValidationError):
        ThrottleConfig.model_validate({"window": "10m", "per": ["ip"]})
    with pytest.raises(ValidationError):
        ThrottleConfig.model_validate({"windw": "10m"})


def test_throttle_state_survives_snapshot_and_is_bounded() -> None:
    throttle = Throttle(ThrottleConfig(window=600, max_groups=3))
    run(throttle, [alert(0), alert(10)])
    again = Throttle(ThrottleConfig(window=600, max_groups=3))
    again.restore(throttle.snapshot())
    assert run(again, [alert(20), alert(700)]) == [(700, "alice", 2)]
    for index in range(10):
        again.admit(alert(800, entity=f"e{index}"))
    assert len(again) == 3


def test_delivered_record_horizon_cap_and_snapshot() -> None:
    now = [1000.0]
    record = DeliveredRecord(horizon=100, max_ids=3, clock=lambda: now[0])
    record.add("slack", ["a", "b"])
    assert record.has("slack", "a") and not record.has("pagerduty", "a")
    now[0] = 1050.0
    record.add("slack", ["c", "d"])
    assert not record.has("slack", "a"), "over max_ids: oldest forgotten"
    now[0] = 1120.0
    assert not record.has("slack", "b") and record.has("slack", "c")
    assert record.expire() == 1 and len(record) == 2
    restored = DeliveredRecord(horizon=100, max_ids=3, clock=lambda: now[0])
    restored.restore(record.snapshot())
    assert restored.has("slack", "d") and len(restored) == 2


class Recording(Sink):
    """A local sink that keeps what it was sent."""

    kind = "recording"

    def __init__(self, name: str) -> None:
        super().__init__(SinkConfig(type="recording", name=name))
        self.got: list[Alert] = []

    async def send(self, alerts: list[Alert]) -> None:
        self.got.extend(alerts)


async def test_dispatcher_dedups_per_sink_across_restart(tmp_path: Path) -> None:
    metrics = Metrics()
    a, b = Recording("a"), Recording("b")
    first = Dispatcher([a, b], metrics, routing=RoutingConfig.model_validate(
        {"routes": [{"detectors": ["only-a"], "sinks": ["a"]}]}))
    await first.start()
    x = alert(0, "only-a")
    await first.deliver([x, alert(0, "only-a")])              # same id twice in one batch
    state = first.snapshot()
    await first.stop()
    second_a, second_b = Recording("a"), Recording("b")
    second = Dispatcher([second_a, second_b], metrics)         # no routes now: both sinks
    second.restore(state)
    await second.start()
    await second.deliver([alert(0, "only-a")])                # replay after restart
    await second.stop()
    assert [al.id for al in a.got] == [x.id] and b.got == []
    assert second_a.got == [], "already delivered to a before the restart"
    assert [al.id for al in second_b.got] == [x.id], "b never had it"
    assert metrics.registry.get_sample_value("trailguard_alerts_suppressed_total",
                                             {"detector": "only-a", "reason": "duplicate"}) == 1


async def test_dispatcher_throttles_and_counts(tmp_path: Path) -> None:
    metrics = Metrics()
    sink = Recording("r")
    dispatcher = Dispatcher([sink], metrics, delivery=DeliveryConfig.model_validate({"throttle": {"window": "10m"}}))
    await dispatcher.start()
    await dispatcher.deliver([alert(t) for t in (0, 30, 95)])
    await dispatcher.deliver([alert(700)])
    await dispatcher.stop()
    assert [(al.time, al.evidence.get("suppressed_count")) for al in sink.got] == [(0, None), (700, 2)]
    assert metrics.registry.get_sample_value("trailguard_alerts_suppressed_total",
                                             {"detector": "brute", "reason": "throttled"}) == 2


async def test_unrouted_alerts_are_counted() -> None:
    metrics = Metrics()
    sink = Recording("r")
    dispatcher = Dispatcher([sink], metrics, routing=RoutingConfig(default_sinks=()))
    await dispatcher.start()
    await dispatcher.deliver([alert(0)])
    await dispatcher.stop()
    assert sink.got == []
    assert metrics.registry.get_sample_value("trailguard_alerts_suppressed_total",
                                             {"detector": "brute", "reason": "unrouted"}) == 1
