"""Incident timelines: open at once, fold, one update at close, escalation, overrides, state.

Each test reads as a timeline of alerts (event time in seconds) and watermarks, and asserts the
notifications handed on: ``(kind, severity, count)``.
"""

from __future__ import annotations

from pathlib import Path

import msgpack
import orjson
import pytest
from pydantic import ValidationError

from daemon.delivery.dispatch import DeliveryConfig
from daemon.delivery.incidents import (
    IncidentOverride,
    Incidents,
    IncidentsConfig,
    incident_problems,
    known_detections,
    rule_incident_specs,
)
from detectors.alert import Alert
from detectors.base import DetectorContext
from detectors.event import Event
from detectors.sigma.detector import SigmaDetector

HOUR = 3600.0


def alert(t: float, *, severity: str = "high", rule: str | None = "rule-a", detector: str = "sigma",
          principal: str = "arn:aws:iam::111122223333:user/mallory", ip: str = "198.51.100.7",
          event_id: str | None = None, title: str = "Secret Read") -> Alert:
    return Alert(detector=detector, title=title, severity=severity, time=t, summary=f"{title} by {principal}",
                 account_id="111122223333", region="us-east-1", principal=principal, source_ips=[ip],
                 event_ids=[event_id or f"ev-{t}-{severity}"], rule_id=rule, entity=principal)


def seen(notifications: list[Alert]) -> list[tuple[str, str, int]]:
    return [(n.kind, n.severity, n.incident["count"] if n.incident else 0) for n in notifications]


def test_first_alert_is_handed_on_at_once_and_repeats_fold_into_one_update_at_close() -> None:
    incidents = Incidents()
    opened = incidents.fold([alert(0)], watermark=-1)
    assert seen(opened) == [("opened", "high", 1)]
    assert opened[0].incident["kind"] == "open"
    assert incidents.fold([alert(30, ip="203.0.113.9"), alert(95)], watermark=0) == []
    assert incidents.fold([], watermark=HOUR - 1) == []          # window [0, 3600) still open
    [update] = incidents.fold([], watermark=HOUR)
    assert seen([update]) == [("updated", "high", 3)]
    body = update.to_dict()
    assert body["kind"] == "updated"
    assert body["incident"]["id"] == opened[0].id                # the incident id is the opening alert's id
    assert body["incident"]["kind"] == "closed"
    assert body["incident"]["first_time"] == "1970-01-01T00:00:00Z"
    assert body["incident"]["last_time"] == "1970-01-01T00:01:35Z"
    assert body["incident"]["event_ids"] == ["ev-0-high", "ev-30-high", "ev-95-high"]
    assert body["incident"]["event_ids_total"] == 3
    assert body["incident"]["source_ips"] == ["198.51.100.7", "203.0.113.9"]
    assert update.id != opened[0].id
    assert len(incidents) == 0
    assert incidents.fold([], watermark=10 * HOUR) == []          # exactly one update


def test_an_incident_that_did_not_grow_closes_without_an_update() -> None:
    incidents = Incidents()
    assert seen(incidents.fold([alert(0)], watermark=-1)) == [("opened", "high", 1)]
    assert incidents.fold([], watermark=2 * HOUR) == []
    assert len(incidents) == 0


def test_a_higher_severity_in_the_same_group_is_handed_on_at_once() -> None:
    incidents = Incidents()
    assert seen(incidents.fold([alert(0, severity="medium")], -1)) == [("opened", "medium", 1)]
    assert seen(incidents.fold([alert(10, severity="critical")], 0)) == [("updated", "critical", 2)]
    assert incidents.fold([alert(20, severity="low"), alert(30, severity="critical")], 0) == []
    [update] = incidents.fold([], HOUR)
    assert seen([update]) == [("updated", "critical", 4)]        # never downgraded by the later low


def test_two_rules_for_the_same_principal_are_two_incidents() -> None:
    # The old throttle grouped every Sigma rule under detector=sigma: a high "Root User Signed In"
    # suppressed the critical "Root Console Sign-In Without MFA".  Rule id is part of the key.
    incidents = Incidents()
    out = incidents.fold([alert(0, rule="root-signin", severity="high"),
                          alert(1, rule="root-no-mfa", severity="critical")], -1)
    assert seen(out) == [("opened", "high", 1), ("opened", "critical", 1)]


def test_groups_are_kept_apart_and_a_match_after_the_window_opens_a_new_incident() -> None:
    incidents = Incidents()
    out = incidents.fold([alert(0, principal="alice"), alert(5, principal="bob"), alert(10, principal="alice")], -1)
    assert [(n.kind, n.principal) for n in out] == [("opened", "alice"), ("opened", "bob")]
    # alice again after her window ended, before the watermark closed it: old one closes with its
    # update, a new incident opens — in that order.
    out = incidents.fold([alert(HOUR + 5, principal="alice")], watermark=100)
    assert [(n.kind, n.principal, n.incident["count"]) for n in out] == [("updated", "alice", 2),
                                                                         ("opened", "alice", 1)]
    assert out[0].incident["id"] != out[1].incident["id"]


def test_window_and_grouping_overrides_by_rule_title_detector_and_rule_metadata() -> None:
    config = IncidentsConfig(window=HOUR, overrides={
        "Secret Read": IncidentOverride(window=60),                       # by title
        "console_login_bruteforce": IncidentOverride(group_by=("source_ip",)),  # by detector name
    })
    detections = {"Secret Read": ("sigma", "rule-a"), "rule-a": ("sigma", "rule-a"),
                  "rule-b": ("sigma", "rule-b"), "console_login_bruteforce": ("console_login_bruteforce", None),
                  "sigma": ("sigma", None)}
    incidents = Incidents(config, detections=detections,
                          rule_specs={"rule-b": IncidentOverride(window=600)})
    assert incidents.policy("sigma", "rule-a").window == 60
    assert incidents.policy("sigma", "rule-b").window == 600
    assert incidents.policy("sigma", "rule-c").window == HOUR
    brute = [alert(t, detector="console_login_bruteforce", rule=None, principal=f"user{t}") for t in (0, 1, 2)]
    assert seen(incidents.fold(brute, -1)) == [("opened", "high", 1)]   # one source IP, many users
    out = incidents.fold([alert(0), alert(30), alert(61)], -1)
    assert seen(out) == [("opened", "high", 1), ("updated", "high", 2), ("opened", "high", 1)]


def test_enabled_false_gives_one_notification_per_alert() -> None:
    per_rule = Incidents(IncidentsConfig(overrides={"rule-a": IncidentOverride(enabled=False)}))
    assert seen(per_rule.fold([alert(0), alert(1)], -1)) == [("opened", "high", 0), ("opened", "high", 0)]
    assert seen(per_rule.fold([alert(0, rule="rule-b"), alert(1, rule="rule-b")], -1)) == [("opened", "high", 1)]
    everywhere = Incidents(IncidentsConfig(enabled=False))
    out = everywhere.fold([alert(0), alert(1)], -1)
    assert [n.incident for n in out] == [None, None]
    assert [n.to_dict()["kind"] for n in out] == ["opened", "opened"]


def test_unknown_override_names_are_refused_naming_the_closest_match() -> None:
    detections = {"Secrets Manager Secret Value Retrieved": ("sigma", "x"), "console_login_bruteforce": ("c", None)}
    config = IncidentsConfig(overrides={"console_login_bruteforse": IncidentOverride(window=60),
                                        "Nothing Like It": IncidentOverride(window=60)})
    with pytest.raises(ValueError) as refused:
        Incidents(config, detections=detections)
    text = str(refused.value)
    assert "delivery.incidents.overrides.console_login_bruteforse" in text
    assert "did you mean 'console_login_bruteforce'?" in text
    assert "delivery.incidents.overrides.Nothing Like It" in text


def test_the_old_throttle_key_is_refused_with_a_migration_note() -> None:
    with pytest.raises(ValidationError) as refused:
        DeliveryConfig.model_validate({"throttle": {"window": "10m"}})
    assert "replaced by delivery.incidents" in str(refused.value)


def test_snapshot_and_restore_neither_reopen_nor_lose_an_update() -> None:
    before = Incidents()
    opened = before.fold([alert(0), alert(10)], -1)
    state = msgpack.unpackb(msgpack.packb(before.snapshot(), use_bin_type=True),  # what a checkpoint holds
                            raw=False, strict_map_key=False)
    after = Incidents()
    after.restore(state)
    assert after.fold([alert(20)], 0) == []                          # folds, does not re-open
    [update] = after.fold([], HOUR)
    assert seen([update]) == [("updated", "high", 3)]
    assert update.incident["id"] == opened[0].id
    assert update.incident["event_ids"] == ["ev-0-high", "ev-10-high", "ev-20-high"]


def test_a_template_is_encoded_once_however_many_checkpoints_snapshot_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.delivery import spool

    encoded: list[str] = []
    real = spool.encode_alert
    monkeypatch.setattr(spool, "encode_alert", lambda a: encoded.append(a.id) or real(a))
    incidents = Incidents()
    incidents.fold([alert(0), alert(10, principal="bob")], -1)
    first = incidents.snapshot()
    incidents.fold([alert(20)], -1)                                   # folds into the open incident
    assert incidents.snapshot()["incidents"][0]["count"] == 2
    assert len(encoded) == 2                                          # one per incident, not per checkpoint
    restored = Incidents()
    restored.restore(first)
    restored.snapshot()
    assert len(encoded) == 2                                          # a restored incident keeps its form


def test_a_version_1_snapshot_with_the_template_as_a_mapping_still_restores() -> None:
    before = Incidents()
    opened = before.fold([alert(0), alert(10)], -1)
    state = before.snapshot()
    for saved in state["incidents"]:
        saved["alert"] = orjson.loads(saved.pop("alert_wire"))      # how version 1 kept it
    state["version"] = 1
    after = Incidents()
    after.restore(state)
    assert after.snapshot()["incidents"][0]["alert_wire"] == before.snapshot()["incidents"][0]["alert_wire"]
    [update] = after.fold([], HOUR)
    assert seen([update]) == [("updated", "high", 2)]
    assert update.incident["id"] == opened[0].id


def test_ids_are_deterministic_across_runs() -> None:
    def run() -> list[str]:
        incidents = Incidents(clock=lambda: 0.0)
        out = incidents.fold([alert(0), alert(5), alert(7, principal="bob")], -1)
        incidents.close_all(out)
        return [n.id for n in out]

    assert run() == run()
    assert len(set(run())) == 3


def test_state_is_bounded_and_an_evicted_incident_still_delivers_its_update() -> None:
    incidents = Incidents(IncidentsConfig(max_open=2, max_event_ids=2, max_values=1))
    out = incidents.fold([alert(0, principal="a"), alert(1, principal="a", ip="192.0.2.1"),
                          alert(2, principal="a"), alert(3, principal="b")], -1)
    assert len(incidents) == 2
    out += incidents.fold([alert(4, principal="c")], -1)             # a, closing soonest, is closed early
    assert len(incidents) == 2
    update = [n for n in out if n.kind == "updated"]
    assert [(n.principal, n.incident["count"]) for n in update] == [("a", 3)]
    assert update[0].incident["event_ids"] == ["ev-0-high", "ev-1-high"]
    assert update[0].incident["event_ids_total"] == 3
    assert update[0].incident["source_ips"] == ["198.51.100.7"]


def record(event_id: str, bucket: str, agent: str) -> Event:
    return Event({"eventVersion": "1.08", "eventTime": "2024-01-01T00:00:00Z", "eventID": event_id,
                  "eventName": "DeleteBucket", "eventSource": "s3.amazonaws.com", "awsRegion": "us-east-1",
                  "recipientAccountId": "111122223333", "userAgent": agent,
                  "requestParameters": {"bucketName": bucket},
                  "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::111122223333:user/ci"}})


RULE = """title: Bucket Deleted (test)
id: 5f0b8a3e-2d7c-4a59-9c1e-0d6a5c1f2b11
status: test
level: high
logsource: {product: aws, service: cloudtrail}
detection:
  selection: {eventSource: s3.amazonaws.com, eventName: DeleteBucket}
  condition: selection
incident:
  group_by: [requestParameters.bucketName]
  window: 10m
"""


def test_a_sigma_rule_declares_its_grouping_and_window(tmp_path: Path) -> None:
    (tmp_path / "bucket.yml").write_text(RULE)
    detector = SigmaDetector(SigmaDetector.Config(paths=[str(tmp_path)]), DetectorContext())
    specs, problems = rule_incident_specs([detector])
    assert problems == []
    incidents = Incidents(detections=known_detections([detector]), rule_specs=specs)
    policy = incidents.policy("sigma", "5f0b8a3e-2d7c-4a59-9c1e-0d6a5c1f2b11")
    assert policy.window == 600 and policy.group_by == ("requestParameters.bucketName",)
    alerts = []
    for event_id, bucket, agent in [("1", "logs", "terraform/1.5"), ("2", "logs", "aws-cli/2"), ("3", "prod", "x")]:
        event = record(event_id, bucket, agent)
        [raised] = detector.on_event(event) or []
        incidents.stamp(raised, event)
        alerts.append(raised)
    out = incidents.fold(alerts, -1)
    assert [n.kind for n in out] == ["opened", "opened"]             # one incident per bucket
    incidents.close_all(out)
    assert [n.incident["user_agents"] for n in out if n.kind == "updated"] == [["terraform/1.5", "aws-cli/2"]]


def test_a_bad_rule_incident_attribute_names_the_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "bad.yml").write_text(RULE.replace("window: 10m", "window: soon"))
    detector = SigmaDetector(SigmaDetector.Config(paths=[str(tmp_path)]), DetectorContext())
    problems = incident_problems(IncidentsConfig(), [detector])
    assert len(problems) == 1 and "bad.yml" in problems[0] and "incident.window" in problems[0]


def test_a_poison_alert_does_not_stop_the_snapshot_of_the_other_incidents() -> None:
    incidents = Incidents()
    incidents.fold([alert(0), alert(-62135596800.0 - 3600, principal="year-zero")], -1)
    state = incidents.snapshot()
    assert [i["key"][2] for i in state["incidents"]] == ["arn:aws:iam::111122223333:user/mallory"]


def test_a_threshold_alert_counts_its_events_and_continuations_only_fold() -> None:
    # t=0: a burst alert standing for 20 failures (ids of all 20); t=10, 20: two more failures
    # held back by the detector's throttle, handed on as continuations
    burst = alert(0)
    burst.event_ids, burst.event_total = [f"f{i}" for i in range(20)], 20
    more = [alert(t, event_id=f"f{19 + t // 10}") for t in (10, 20)]
    for continuation in more:
        continuation.event_total, continuation.continues = 1, True
    incidents = Incidents()
    opened = incidents.fold([burst], watermark=-1)
    assert seen(opened) == [("opened", "high", 20)]
    assert incidents.fold(more, watermark=0) == []
    [update] = incidents.fold([], watermark=HOUR)
    assert seen([update]) == [("updated", "high", 22)]
    assert update.incident["event_ids_total"] == 22 and update.incident["event_ids"] == [f"f{i}" for i in range(22)]
    # a burst that nothing continued closes silently: its opening said it all
    lone = alert(0)
    lone.event_ids, lone.event_total = [f"g{i}" for i in range(20)], 20
    alone = Incidents()
    assert seen(alone.fold([lone], watermark=-1)) == [("opened", "high", 20)]
    assert alone.fold([], watermark=HOUR) == []
    # per-event output keeps the detector's throttle: continuations are not notifications
    off = Incidents(IncidentsConfig(enabled=False))
    assert [n.id for n in off.fold([burst, *more], watermark=0)] == [burst.id]
