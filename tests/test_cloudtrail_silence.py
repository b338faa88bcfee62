"""Timeline tests for the ``cloudtrail_silence`` detector: events at t=…, watermark → alert at ….

Times are seconds after ``T0``; the watermark is handed in directly (as the engine would after
subtracting the allowed lateness), except in the engine and real-data tests.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pydantic
import pytest

from detectors.alert import Alert
from detectors.base import DetectorContext
from detectors.cloudtrail_silence import CloudTrailSilence
from detectors.engine import DetectionEngine
from detectors.event import Event, format_time, parse_event_time
from detectors.registry import detector_class

DATA = Path(__file__).parent / "data" / "deploy"
REAL_FILE = DATA / "218007301253_CloudTrail_us-east-1_20230710T1205Z_zs3JGxETHr59VpkX.json"
T0 = parse_event_time("2024-03-01T00:00:00Z")
A, B, C = "111111111111", "222222222222", "333333333333"


def event(t: float, account: str, region: str = "us-east-1", n: int = 0) -> Event:
    """A minimal CloudTrail record at ``T0 + t`` in ``account``/``region``."""
    return Event({
        "eventVersion": "1.08",
        "eventTime": format_time(T0 + t),
        "eventName": "DescribeInstances",
        "eventSource": "ec2.amazonaws.com",
        "awsRegion": region,
        "recipientAccountId": account,
        "eventID": f"{account}-{region}-{t}-{n}",
        "userIdentity": {"type": "AssumedRole", "accountId": account},
    })


def detector(**settings: Any) -> CloudTrailSilence:
    settings.setdefault("min_events", 3)
    return CloudTrailSilence(CloudTrailSilence.Config(**settings), DetectorContext())


def feed(d: CloudTrailSilence, *events: Event) -> None:
    for e in events:
        assert d.on_event(e) is None


def steady(account: str, start: float, stop: float, every: float = 60.0, region: str = "us-east-1") -> list[Event]:
    count = int((stop - start) // every) + 1
    return [event(start + i * every, account, region) for i in range(count)]


def silent_accounts(alerts: list[Alert] | None) -> list[str]:
    return sorted(a.account_id + (f"/{a.region}" if a.region else "") for a in alerts or [])


def test_registered_and_configurable_as_in_yaml() -> None:
    assert detector_class("cloudtrail_silence") is CloudTrailSilence
    config = CloudTrailSilence.Config.model_validate({"quiet_period": "30m", "forget_after": "2d"})
    assert (config.quiet_period, config.forget_after, config.min_events) == (1800.0, 172800.0, 100)
    with pytest.raises(pydantic.ValidationError, match="forget_after"):
        CloudTrailSilence.Config(quiet_period=3600, forget_after=600)
    with pytest.raises(pydantic.ValidationError):
        CloudTrailSilence.Config.model_validate({"quiet_perod": "1h"})


def test_account_going_quiet_while_others_flow_alerts_once_after_the_quiet_period() -> None:
    d = detector()
    # A and B both send every minute until t=600; then only B goes on.
    feed(d, *steady(A, 0, 600), *steady(B, 0, 600))
    assert d.on_watermark(T0 + 600) is None
    assert d.on_watermark(T0 + 600 + 3600) is None  # A is exactly one quiet period behind: not yet
    feed(d, *steady(B, 660, 4300))
    alerts = d.on_watermark(T0 + 4201)  # watermark - quiet_period = 601 > A's last event at 600
    assert silent_accounts(alerts) == [A]
    alert = alerts[0]
    assert (alert.detector, alert.severity, alert.time) == ("cloudtrail_silence", "high", T0 + 4201)
    assert alert.tags == ["attack.defense_evasion", "attack.t1562.008"]
    assert alert.event_ids == [f"{A}-us-east-1-600.0-0"]
    assert alert.evidence["last_event_time"] == "2024-03-01T00:10:00Z"
    assert alert.evidence["watermark"] == format_time(T0 + 4201)
    assert alert.evidence["silent_for_seconds"] == 3601
    assert alert.evidence["events_seen"] == 11
    assert A in alert.summary and "1h 0m 1s" not in alert.summary and "1h" in alert.summary
    assert alert.resources == [{"type": "aws_account", "id": A, "account_id": A, "detail": "silent 1h"}]
    # one alert per episode, however far the watermark moves
    feed(d, *steady(B, 4360, 9000))
    assert d.on_watermark(T0 + 8000) is None
    assert d.on_watermark(T0 + 9000) is None


def test_resumed_account_is_re_armed_and_a_new_episode_alerts_again_with_a_new_id() -> None:
    d = detector()
    feed(d, *steady(A, 0, 600), *steady(B, 0, 4300))
    first = d.on_watermark(T0 + 4300)
    assert silent_accounts(first) == [A]
    # A comes back at t=4380 (current again), then stops for good at t=4500
    feed(d, *steady(A, 4380, 4500), *steady(B, 4360, 8200))
    assert d.on_watermark(T0 + 8100) is None  # 8100 - 3600 = 4500: not yet silent
    second = d.on_watermark(T0 + 8101)
    assert silent_accounts(second) == [A]
    assert second[0].evidence["last_event_time"] == format_time(T0 + 4500)
    assert second[0].id != first[0].id


def test_a_late_event_from_inside_the_silence_does_not_re_arm() -> None:
    d = detector()
    feed(d, *steady(A, 0, 600), *steady(B, 0, 9000))
    assert silent_accounts(d.on_watermark(T0 + 9000)) == [A]
    feed(d, event(2000, A))  # delivered late; A is still 7000 s behind the watermark
    assert d.on_watermark(T0 + 9060) is None


def test_accounts_below_min_events_are_never_reported() -> None:
    d = detector(min_events=5)
    feed(d, *steady(A, 0, 240), *steady(C, 0, 180), *steady(B, 0, 5000))  # A: 5 events, C: 4
    assert silent_accounts(d.on_watermark(T0 + 5000)) == [A]


def test_ignored_accounts_are_not_reported() -> None:
    d = detector(ignore_accounts=[A])
    feed(d, *steady(A, 0, 600), *steady(C, 0, 600), *steady(B, 0, 5000))
    assert silent_accounts(d.on_watermark(T0 + 5000)) == [C]


def test_per_region_reports_one_region_going_quiet() -> None:
    d = detector(per_region=True)
    feed(d, *steady(A, 0, 600, region="eu-west-1"), *steady(A, 0, 5000, region="us-east-1"))
    alerts = d.on_watermark(T0 + 5000)
    assert silent_accounts(alerts) == [f"{A}/eu-west-1"]
    assert alerts[0].evidence["scope"] == "account_region" and "eu-west-1" in alerts[0].summary
    assert [(r["type"], r["id"], r.get("detail")) for r in alerts[0].resources] == [
        ("aws_account", A, "silent 1h 13m in eu-west-1"), ("aws_region", "eu-west-1", "silent region")]
    assert d.state_keys() == 2
    # by account only, the same events show a busy account
    by_account = detector()
    feed(by_account, *steady(A, 0, 600, region="eu-west-1"), *steady(A, 0, 5000, region="us-east-1"))
    assert by_account.on_watermark(T0 + 5000) is None


def test_quiet_organisation_raises_nothing_because_the_watermark_does_not_move() -> None:
    d = detector()
    feed(d, *steady(A, 0, 600), *steady(B, 0, 600))
    for _ in range(3):
        assert d.on_watermark(T0 + 600) is None


def test_keys_are_capped_and_forgotten_after_forget_after() -> None:
    evicted: list[tuple[str, int]] = []
    context = DetectorContext(on_evict=lambda name, n: evicted.append((name, n)))
    d = CloudTrailSilence(CloudTrailSilence.Config(max_keys=64, min_events=1, forget_after=7200), context)
    feed(d, *(event(i, f"{i:012d}") for i in range(100)))
    assert d.state_keys() <= 64
    assert sum(n for _, n in evicted) == 100 - d.state_keys()
    assert {name for name, _ in evicted} == {"cloudtrail_silence"}
    feed(d, event(10_000, B))
    d.on_watermark(T0 + 10_000)  # everything but B is older than watermark - forget_after
    assert d.state_keys() == 1


def test_snapshot_restore_resumes_the_timeline_through_msgpack() -> None:
    d = detector()
    feed(d, *steady(A, 0, 600), *steady(B, 0, 600), *steady(C, 0, 5000))
    assert silent_accounts(d.on_watermark(T0 + 4300)) == [A, B]
    feed(d, *steady(B, 4400, 4500))  # B resumes: re-armed
    blob = msgpack.packb(d.snapshot())

    restored = detector()
    restored.restore(msgpack.unpackb(blob))
    assert restored.state_keys() == 3
    assert restored.snapshot() == d.snapshot()
    assert restored.on_watermark(T0 + 4400) is None  # A was already reported before the checkpoint
    feed(restored, *steady(C, 5060, 8200))
    assert silent_accounts(restored.on_watermark(T0 + 8200)) == [B]
    with pytest.raises(ValueError, match="newer"):
        detector().restore({**d.snapshot(), "version": 99})


def test_restoring_with_per_region_changed_starts_over() -> None:
    d = detector()
    feed(d, *steady(A, 0, 600))
    regional = detector(per_region=True)
    regional.restore(d.snapshot())
    assert regional.state_keys() == 0


def test_through_the_engine_the_watermark_includes_the_allowed_lateness() -> None:
    d = detector()
    engine = DetectionEngine([d], allowed_lateness=900)
    assert engine.process_many(steady(A, 0, 600) + steady(B, 0, 600)) == []
    # watermark = max event time - 900; A (last 600) is silent once max time > 600 + 3600 + 900
    assert engine.process_many(steady(B, 660, 5100)) == []
    alerts = engine.process_many([event(5101, B)])
    assert silent_accounts(alerts) == [A]
    assert alerts[0].evidence["watermark"] == format_time(T0 + 5101 - 900)


def records_of(path: Path) -> list[dict[str, Any]]:
    return orjson.loads(path.read_bytes())["Records"]


def test_real_account_going_quiet_in_a_real_trail() -> None:
    """A real account's 196 events (Invictus IR capture), then only a second account keeps sending."""
    real = records_of(REAL_FILE)
    account = real[0]["recipientAccountId"]
    last = max(parse_event_time(r["eventTime"]) for r in real)
    other: list[dict[str, Any]] = []
    for i in range(0, 3 * 3600, 30):  # the real records, re-addressed to another account, for 3 h
        record = copy.deepcopy(real[i // 30 % len(real)])
        record["recipientAccountId"] = B
        record["eventID"] = f"other-{i}"
        record["eventTime"] = format_time(last + i)
        other.append(record)
    d = CloudTrailSilence(CloudTrailSilence.Config(), DetectorContext())  # defaults: 1 h, 100 events
    engine = DetectionEngine([d], allowed_lateness=900)
    assert engine.process_many([Event(r) for r in real]) == []
    alerts: list[Alert] = []
    for start in range(0, len(other), 50):
        alerts.extend(engine.process_many([Event(r) for r in other[start:start + 50]]))
    assert silent_accounts(alerts) == [account]
    assert alerts[0].evidence["last_event_time"] == format_time(last)
    assert alerts[0].evidence["events_seen"] == len(real)
    assert 3600 < alerts[0].evidence["silent_for_seconds"] < 3600 + 50 * 30
