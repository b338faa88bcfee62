"""Timeline tests for ``new_region``: learning for 7 days from an account's first event, then alerts.

Events are a real Invictus IAMUser record (``tests/data/stateful/travel/invictus``) with the time,
region, account, event source and eventID rewritten.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pydantic
import pytest

from detectors.alert import Alert
from detectors.engine import DetectionEngine
from detectors.event import Event, format_time, parse_event_time
from detectors.new_region import NewRegion
from detectors.registry import detector_class
from tests.stateful_helpers import Counters, from_template, invictus_iam_user_record
from tests.stateful_helpers import run_detector as run

T0 = parse_event_time("2024-05-01T00:00:00Z")
DAY = 86400.0
ACCOUNT = "218007301253"


def event(t: float, region: str, *, account: str = ACCOUNT, source: str = "ec2.amazonaws.com",
          error: str | None = None, user: str = "alice", identity: dict[str, Any] | None = None,
          **extra: Any) -> Event:
    raw = from_template(invictus_iam_user_record(), T0 + t, f"{account}-{region}-{source}-{t}-{user}")
    raw["awsRegion"] = region
    raw["recipientAccountId"] = account
    raw["eventSource"] = source
    raw["userIdentity"]["arn"] = f"arn:aws:iam::{account}:user/{user}"
    raw.pop("errorCode", None)
    if error:
        raw["errorCode"] = error
    if identity is not None:
        raw["userIdentity"] = identity
    raw.update(extra)
    return Event(raw)


def learned(account: str = ACCOUNT, regions: tuple[str, ...] = ("us-east-1", "eu-west-1")) -> list[Event]:
    """A week of ordinary activity in ``regions`` (one event per region every 12 h)."""
    return [event(h * 12 * 3600, r, account=account) for h in range(15) for r in regions]


def make(counters: Counters | None = None, **settings: Any) -> NewRegion:
    return NewRegion(NewRegion.Config(**settings), (counters or Counters()).context())


def brief(alerts: list[Alert]) -> list[tuple[str, str, str, float]]:
    return [(a.evidence["finding"], a.region, a.severity, round((a.time - T0) / DAY, 2)) for a in alerts]


def test_registered_and_config_is_strict() -> None:
    assert detector_class("new_region") is NewRegion
    config = NewRegion.Config.model_validate({"learning_period": "3d", "approved_regions": ["eu-west-1"]})
    assert config.learning_period == 3 * DAY and config.approved_regions == frozenset({"eu-west-1"})
    assert config.principal_new_service is False
    with pytest.raises(pydantic.ValidationError):
        NewRegion.Config.model_validate({"aproved_regions": ["eu-west-1"]})


def test_new_region_after_learning_alerts_once_with_evidence() -> None:
    alerts = run(make(), learned(), [event(7.5 * DAY, "ap-east-1"), event(7.6 * DAY, "ap-east-1"),
                                     event(7.7 * DAY, "us-east-1")])
    assert brief(alerts) == [("new_region", "ap-east-1", "medium", 7.5)]
    ev = alerts[0].evidence
    assert ev["known_regions"] == ["eu-west-1", "us-east-1"]
    assert ev["learning_started"] == format_time(T0)
    assert ev["account_id"] == ACCOUNT and ev["region"] == "ap-east-1"
    assert alerts[0].tags == ["attack.defense_evasion", "attack.t1535"]
    assert alerts[0].rule_id == "new_region"
    assert alerts[0].resources[0] == {"type": "aws_region", "id": "ap-east-1", "account_id": ACCOUNT,
                                      "detail": f"new region in account {ACCOUNT}"}


def test_regions_seen_during_learning_are_known_and_accounts_learn_separately() -> None:
    batch = [*learned(), event(2 * DAY, "sa-east-1")]
    other = "999999999999"
    later = [event(7.5 * DAY, "sa-east-1"), event(7.5 * DAY, "sa-east-1", account=other)]
    # the other account's first event is at 7.5 d: it starts learning then
    assert run(make(), batch, later) == []


def test_approved_regions_alert_at_once_high_and_throttled_per_region() -> None:
    d = make(approved_regions=["us-east-1", "eu-west-1"])
    batch = [event(0, "us-east-1"), event(60, "ap-east-1"), event(120, "ap-east-1"), event(180, "me-south-1"),
             event(DAY + 300, "ap-east-1")]
    alerts = run(d, batch)
    assert brief(alerts) == [("unapproved_region", "ap-east-1", "high", 0.0),
                             ("unapproved_region", "me-south-1", "high", 0.0),
                             ("unapproved_region", "ap-east-1", "high", 1.0)]
    assert [a.evidence["suppressed"] for a in alerts] == [0, 0, 1]
    assert alerts[0].evidence["approved_regions"] == ["eu-west-1", "us-east-1"]


def test_global_services_are_skipped_and_sts_only_in_us_east_1() -> None:
    batch = learned(regions=("eu-west-1",))
    later = [event(7.5 * DAY, "us-east-1", source="iam.amazonaws.com"),
             event(7.5 * DAY, "us-east-1", source="sts.amazonaws.com"),
             event(7.6 * DAY, "ap-south-1", source="sts.amazonaws.com")]
    assert brief(run(make(), batch, later)) == [("new_region", "ap-south-1", "medium", 7.6)]
    d = make(global_services=())
    assert [a.region for a in run(d, batch, later)] == ["us-east-1", "ap-south-1"]


def test_aws_services_and_ignored_principals_are_skipped() -> None:
    service = {"type": "AWSService", "invokedBy": "config.amazonaws.com"}
    linked = {"type": "AssumedRole", "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/AWSServiceRoleForConfig/x",
              "sessionContext": {"sessionIssuer": {
                  "arn": f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/config.amazonaws.com/AWSServiceRoleForConfig"}}}
    later = [event(7.5 * DAY, "ap-east-1", identity=service), event(7.5 * DAY, "ap-east-1", identity=linked),
             event(7.5 * DAY, "ap-east-1", eventType="AwsServiceEvent"),
             event(7.5 * DAY, "ap-east-1", user="scanner")]
    assert run(make(ignore_principal_patterns=("*:user/scanner",)), learned(), later) == []
    assert len(run(make(ignore_aws_services=False), learned(), later)) == 1  # the first one of the region


def test_disabled_region_probe_is_low_and_does_not_make_the_region_known() -> None:
    later = [event(7.5 * DAY, "me-south-1", error="OptInRequired"),
             event(7.6 * DAY, "me-south-1", error="UnrecognizedClientException"),
             event(8 * DAY, "me-south-1")]
    assert brief(run(make(), learned(), later)) == [
        ("disabled_region_probe", "me-south-1", "low", 7.5),
        ("new_region", "me-south-1", "medium", 8.0),
    ]


def test_probes_during_learning_are_learned_and_probes_of_active_regions_ignored() -> None:
    batch = [*learned(), event(DAY, "me-south-1", error="OptInRequired")]
    later = [event(7.5 * DAY, "me-south-1", error="OptInRequired"),
             event(7.5 * DAY, "us-east-1", error="AuthFailure")]
    assert run(make(), batch, later) == []


def test_access_denied_in_a_new_region_is_activity() -> None:
    assert brief(run(make(), learned(), [event(7.5 * DAY, "ap-east-1", error="AccessDenied")])) == [
        ("new_region", "ap-east-1", "medium", 7.5)]


def test_principal_new_service_is_off_by_default_and_throttled_when_on() -> None:
    later = [event(7.5 * DAY, "us-east-1", source="s3.amazonaws.com"),
             event(7.5 * DAY + 60, "us-east-1", source="kms.amazonaws.com"),
             event(7.6 * DAY, "us-east-1", source="lambda.amazonaws.com")]
    assert run(make(), learned(), later) == []
    alerts = run(make(principal_new_service=True), learned(), later)
    assert [(a.evidence["finding"], a.evidence["event_source"], a.severity, a.evidence["suppressed"])
            for a in alerts] == [("new_service", "s3.amazonaws.com", "low", 0),
                                 ("new_service", "lambda.amazonaws.com", "low", 1)]
    assert [(r["type"], r["id"]) for r in alerts[0].resources][:1] == [("aws_service", "s3.amazonaws.com")]


def test_out_of_order_first_event_moves_the_learning_start_back() -> None:
    # t=3 d arrives first; the account's real first event (t=0) arrives later within lateness
    d = make()
    alerts = run(d, [event(3 * DAY, "us-east-1")], [event(0, "us-east-1")], [event(7.5 * DAY, "ap-east-1")],
                 lateness=4 * DAY)
    assert brief(alerts) == [("new_region", "ap-east-1", "medium", 7.5)]
    assert alerts[0].evidence["learning_started"] == format_time(T0)


def test_late_events_are_counted_and_dropped_with_drop_policy() -> None:
    counters = Counters()
    d = make(counters, late_policy="drop", approved_regions=["us-east-1"])
    assert run(d, [event(DAY, "us-east-1")], [event(0, "ap-east-1")]) == []
    assert counters.late == 1
    counters = Counters()
    d = make(counters, approved_regions=["us-east-1"])
    assert len(run(d, [event(DAY, "us-east-1")], [event(0, "ap-east-1")])) == 1
    assert counters.late == 1


def test_account_spray_is_capped_and_evictions_counted() -> None:
    counters = Counters()
    d = make(counters, max_keys=64)
    run(d, [event(i, "us-east-1", account=f"{i:012d}") for i in range(1000)])
    assert len(d.snapshot()["known"]) <= 64
    assert counters.evicted >= 1000 - 64


def test_snapshot_msgpack_restore_behaves_identically() -> None:
    later = [event(7.5 * DAY, "ap-east-1"), event(7.5 * DAY, "me-south-1", error="OptInRequired"),
             event(7.6 * DAY, "eu-west-1"), event(7.7 * DAY, "ap-south-1", source="s3.amazonaws.com")]
    original = make(principal_new_service=True)
    engine = DetectionEngine([original], allowed_lateness=900)
    assert engine.process_many(learned()) == []
    wire = msgpack.packb(engine.snapshot(), use_bin_type=True)
    restored = make(principal_new_service=True)
    engine2 = DetectionEngine([restored], allowed_lateness=900)
    engine2.restore(msgpack.unpackb(wire, raw=False, strict_map_key=False))
    assert restored.state_keys() == original.state_keys() > 0
    a1 = [a.to_dict() | {"detected_at": None} for a in engine.process_many(later)]
    a2 = [a.to_dict() | {"detected_at": None} for a in engine2.process_many(later)]
    assert a1 == a2
    assert [(a["rule_id"], a["region"]) for a in a1] == [
        ("new_region", "ap-east-1"), ("disabled_region_probe", "me-south-1"),
        ("new_region", "ap-south-1"), ("new_service", "ap-south-1")]
    assert a1[0]["evidence"]["known_regions"] == ["eu-west-1", "us-east-1"]
    with pytest.raises(ValueError):
        restored.restore({"version": 1, "kind": "impossible_travel"})


def test_a_burst_in_one_second_is_recorded_once_and_judged_like_one_call() -> None:
    # 200 calls of the account in us-east-1 in the same second after learning, then a new region in
    # that same second: the burst changes nothing, the new region still alerts exactly once.
    d = make()
    burst = [event(7.5 * DAY, "us-east-1", user=f"u{i}") for i in range(200)]
    alerts = run(d, learned(), [*burst, event(7.5 * DAY, "ap-east-1"), event(7.5 * DAY, "ap-east-1", user="b")])
    assert brief(alerts) == [("new_region", "ap-east-1", "medium", 7.5)]
    assert alerts[0].evidence["known_regions"] == ["eu-west-1", "us-east-1"]


def test_an_account_evicted_within_its_second_is_recorded_again() -> None:
    # max_keys=1: account B evicts A; A's next call in the same second must re-create its state.
    counters = Counters()
    d = make(counters, max_keys=1)
    other = "111122223333"
    run(d, [event(0, "us-east-1"), event(0, "us-east-1", account=other), event(0, "us-east-1", user="bob")])
    assert counters.evicted >= 1
    assert [account for account, _ in d._known.items()] == [ACCOUNT]
