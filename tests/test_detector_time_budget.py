"""Per-event time budget: one pathological rule or detector is disabled, the rest run on.

Proves: a Sigma rule whose keyword search over a huge (hostile) record takes far longer than the
budget is disabled after 3 over-budget events and reported once through the engine's hook, while
a cheap rule on the same events keeps alerting; a reload brings the rule back; a built-in-style
detector that is slow on every event is disabled whole by the engine; the Sigma detector itself
never is.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import yaml

from detectors.alert import Alert
from detectors.base import Detector, DetectorConfig
from detectors.engine import TIMING_SAMPLE, DetectionEngine
from detectors.event import Event
from detectors.sigma.detector import SigmaConfig, SigmaDetector

SLOW = "00000000-0000-4000-8000-000000000201"
FAST = "00000000-0000-4000-8000-000000000202"


def rule(rule_id: str, detection: dict[str, Any]) -> str:
    return yaml.safe_dump({"title": f"rule {rule_id}", "id": rule_id, "level": "high",
                           "logsource": {"product": "aws", "service": "cloudtrail"}, "detection": detection})


def hostile(n: int) -> Event:
    """A StopLogging record carrying 300,000 strings (what a fuzzer or a hostile writer sends)."""
    return Event({"eventTime": "2024-03-01T10:00:00Z", "eventName": "StopLogging",
                  "eventSource": "cloudtrail.amazonaws.com", "eventID": f"h{n}",
                  "requestParameters": {"junk": [f"value-{i}" for i in range(300_000)]}})


def test_a_slow_rule_is_disabled_and_the_others_run_on(tmp_path: Path) -> None:
    (tmp_path / "slow.yml").write_text(rule(SLOW, {"k": ["needle-that-is-never-there"], "condition": "k"}))
    (tmp_path / "fast.yml").write_text(rule(FAST, {"s": {"eventName": "StopLogging"}, "condition": "s"}))
    detector = SigmaDetector(SigmaConfig(paths=[str(tmp_path)], rule_budget_ms=5))
    disabled: list[tuple[str, str | None]] = []
    engine = DetectionEngine([detector], on_disabled=lambda d, r, _s: disabled.append((d, r)))
    for n in range(8):
        alerts = engine.process_many([hostile(n)])
        assert [alert.rule_id for alert in alerts] == [FAST]  # the cheap rule never stops
    assert disabled == [("sigma", SLOW)]
    assert SLOW in detector.rules.disabled and "sigma" not in engine.disabled
    # the slow rule is no longer a candidate for any event
    assert [r.rule_id for r in detector.rules.candidates("StopLogging", "cloudtrail.amazonaws.com", "")] == [FAST]
    assert detector.reload() == []
    assert detector.rules.disabled == {}


class _Slow(Detector):
    name: ClassVar[str] = "slowpoke"
    Config: ClassVar[type[DetectorConfig]] = DetectorConfig

    def on_event(self, event: Event) -> list[Alert] | None:
        deadline = time.perf_counter() + 0.01
        while time.perf_counter() < deadline:
            pass
        return None


def test_a_detector_slow_on_every_event_is_disabled_by_the_engine(tmp_path: Path) -> None:
    (tmp_path / "fast.yml").write_text(rule(FAST, {"s": {"eventName": "StopLogging"}, "condition": "s"}))
    sigma = SigmaDetector(SigmaConfig(paths=[str(tmp_path)]))
    slow = _Slow(DetectorConfig())
    disabled: list[tuple[str, str | None]] = []
    engine = DetectionEngine([slow, sigma], detector_budget=0.002,
                             on_disabled=lambda d, r, _s: disabled.append((d, r)))
    events = [Event({"eventTime": "2024-03-01T10:00:00Z", "eventName": "StopLogging", "eventID": f"e{n}"})
              for n in range(TIMING_SAMPLE * 4)]
    fired = [alert.rule_id for event in events for alert in engine.process_many([event])]
    assert fired == [FAST] * len(events)
    assert disabled == [("slowpoke", None)] and engine.disabled == {"slowpoke"}
    assert engine.candidates(events[0]) == (sigma,)


def test_the_daemon_exports_the_metric_from_start_up_and_counts_a_disable() -> None:
    from daemon.app import Daemon
    from daemon.components import check
    from daemon.config import load_config
    from daemon.metrics import Metrics

    config = load_config(None)
    metrics = Metrics()
    daemon = Daemon(config, check(config), metrics=metrics, sources=[], sinks=[], serve_http=False)
    value = metrics.registry.get_sample_value
    labels = {"detector": "sigma", "rule": "yes"}
    assert value("trailguard_detectors_disabled_total", labels) == 0.0
    daemon.engine.on_disabled("sigma", SLOW, 0.2)
    assert value("trailguard_detectors_disabled_total", labels) == 1.0
