"""``new_terms`` correlations: first time a principal reads a secret in N days, as timelines.

Proves: learning is silent and per group (event time, from the group's first event); after it a
new term fires once and repeats do not; a term unused for ``history`` is new again; state survives
snapshot/restore (and is dropped when the rule's shape changes); referenced rules stop alerting
alone (``generate: false`` default); malformed rules are refused naming the key; and
``trailguard rules test`` runs a sidecar timeline for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from daemon.rules_cli import run_correlation_tests
from detectors.engine import DetectionEngine
from detectors.event import Event, format_time
from detectors.sigma import load_sources
from detectors.sigma.detector import SigmaConfig, SigmaDetector

DAY = 86_400.0
START = 1_704_067_200.0
READ_ID = "00000000-0000-4000-8000-000000000101"
NEW_ID = "00000000-0000-4000-8000-000000000102"

READ = {"title": "Secret value read", "id": READ_ID, "name": "secret_read",
        "logsource": {"product": "aws", "service": "cloudtrail"}, "level": "informational",
        "detection": {"s": {"eventSource": "secretsmanager.amazonaws.com", "eventName": "GetSecretValue"},
                      "condition": "s"}}


def new_terms(**changes: Any) -> dict[str, Any]:
    correlation = {"type": "new_terms", "rules": ["secret_read"], "group-by": ["principal"],
                   "terms": ["requestParameters.secretId"], "history": "30d", "learning": "7d", **changes}
    return {"title": "Secret read for the first time in 30 days", "id": NEW_ID, "level": "medium",
            "tags": ["attack.credential_access", "attack.t1555"], "correlation": correlation}


def write_rules(directory: Path, correlation: dict[str, Any]) -> Path:
    path = directory / "secret_first_read.yml"
    path.write_text(yaml.safe_dump_all([READ, correlation], sort_keys=False))
    return path


def read(at: float, secret: str, user: str = "alice", n: int = 0) -> Event:
    return Event({
        "eventVersion": "1.08", "eventTime": format_time(START + at), "eventName": "GetSecretValue",
        "eventSource": "secretsmanager.amazonaws.com", "eventID": f"{user}-{secret}-{at}-{n}",
        "awsRegion": "eu-west-1", "recipientAccountId": "111122223333", "sourceIPAddress": "203.0.113.5",
        "userIdentity": {"type": "IAMUser", "arn": f"arn:aws:iam::111122223333:user/{user}",
                         "accountId": "111122223333"},
        "requestParameters": {"secretId": secret},
    })


def run(engine: DetectionEngine, events: list[Event]) -> list[str]:
    fired = []
    for event in events:
        fired.extend(f"{alert.rule_id}:{alert.evidence.get('terms', {}).get('requestParameters.secretId')}"
                     for alert in engine.process_many([event]))
    return fired


def test_learning_then_new_terms_fire_once_per_group(tmp_path: Path) -> None:
    write_rules(tmp_path, new_terms())
    detector = SigmaDetector(SigmaConfig(paths=[str(tmp_path)]))
    assert detector.load_errors == [] and len(detector.new_terms) == 1
    engine = DetectionEngine([detector])
    fired = run(engine, [
        read(0, "prod/db"), read(1 * DAY, "prod/api"),        # learning: silent, and the read rule is generate: false
        read(8 * DAY, "prod/db"),                               # known term
        read(8 * DAY + 60, "prod/payments"),                    # new after learning: fires
        read(8 * DAY + 120, "prod/payments", n=1),              # repeat: quiet
        read(8 * DAY + 180, "prod/payments", user="bob"),       # bob's learning has just started
        read(9 * DAY, "prod/hr", user="bob"),
    ])
    assert fired == [f"{NEW_ID}:prod/payments"]
    # a term unused for more than 30 days (of watermark) is new again while the group is remembered
    assert run(engine, [read(30 * DAY, "prod/db"), read(39 * DAY, "prod/hr", user="bob")]) == []
    alerts = engine.process_many([read(40 * DAY, "prod/api")])  # alice's last prod/api read: day 1
    assert [alert.rule_id for alert in alerts] == [NEW_ID]
    assert alerts[0].evidence["correlation_type"] == "new_terms"
    assert alerts[0].evidence["group_by"] == {"principal": "arn:aws:iam::111122223333:user/alice"}


def test_state_is_checkpointed_and_dropped_when_the_rule_changes(tmp_path: Path) -> None:
    write_rules(tmp_path, new_terms())
    first = SigmaDetector(SigmaConfig(paths=[str(tmp_path)]))
    run(DetectionEngine([first]), [read(0, "a"), read(8 * DAY, "b")])
    saved = first.snapshot()
    again = SigmaDetector(SigmaConfig(paths=[str(tmp_path)]))
    again.restore(saved)
    engine = DetectionEngine([again])
    assert run(engine, [read(8 * DAY + 10, "b"), read(8 * DAY + 20, "c")]) == [f"{NEW_ID}:c"]
    write_rules(tmp_path, new_terms(learning="1d"))
    changed = SigmaDetector(SigmaConfig(paths=[str(tmp_path)]))
    changed.restore(saved)
    assert changed.new_terms.state_keys() == 0


def test_malformed_new_terms_rules_are_refused_naming_the_key() -> None:
    cases = {"history": new_terms(history="forever"), "terms": new_terms(terms=[]),
             "unknown correlation key": new_terms(timespan="5m"),
             "not loaded": new_terms(rules=["no_such_rule"])}
    for fragment, document in cases.items():
        rules, errors = load_sources([("r.yml", yaml.safe_dump_all([READ, document]))])
        assert len(rules.new_terms) == 0
        assert any(fragment in error.reason for error in errors), (fragment, errors)
        assert len(rules) == 1  # the detection rule still loads


def test_rules_test_runs_a_new_terms_timeline(tmp_path: Path) -> None:
    path = write_rules(tmp_path, new_terms())
    event = read(0, "x").raw

    def at(seconds: float, secret: str) -> dict[str, Any]:
        return {"at": seconds, "event": {**event, "requestParameters": {"secretId": secret},
                                          "eventID": f"{secret}-{seconds}"}}

    sidecar = [
        {"rule_id": READ_ID, "positive": [event], "negative": [{**event, "eventName": "ListSecrets"}]},
        {"rule_id": NEW_ID, "timelines": [
            {"name": "new secret after learning", "expect": True, "events": [at(0, "a"), at(8 * DAY, "b")]},
            {"name": "only known secrets", "expect": False, "events": [at(0, "a"), at(8 * DAY, "a")]},
            {"name": "new secret during learning", "expect": False, "events": [at(0, "a"), at(DAY, "b")]},
        ]},
    ]
    path.with_name(path.stem + ".tests.json").write_text(json.dumps(sidecar))
    detector = SigmaDetector(SigmaConfig(paths=[str(tmp_path)]))
    results = run_correlation_tests(detector)
    assert [(result.rule.rule_id, result.problem, result.passed) for result in results] == [(NEW_ID, None, True)]
    assert len(results[0].cases) == 3
