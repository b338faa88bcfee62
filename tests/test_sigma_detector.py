"""The Sigma detector around the engine: loading and its reports, log sources, the rule index,
exceptions, severities, reload, and the seam for correlation rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from detectors.engine import DetectionEngine
from detectors.event import Event
from detectors.sigma import CORRELATION_NOTICE, Logsource, RuleSet, load_rules, load_sources
from detectors.sigma.detector import SigmaConfig, SigmaDetector

CLOUDTRAIL = {"product": "aws", "service": "cloudtrail"}


def rule_yaml(
    rule_id: str,
    detection: dict[str, Any],
    *,
    title: str | None = None,
    level: str = "medium",
    logsource: dict[str, str] | None = None,
    **extra: Any,
) -> str:
    document = {
        "title": title or f"rule {rule_id}",
        "id": rule_id,
        "logsource": logsource or CLOUDTRAIL,
        "detection": detection,
        "level": level,
        **extra,
    }
    return yaml.safe_dump(document, sort_keys=False)


def uid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def simple(n: int, event_name: str, **extra: Any) -> str:
    return rule_yaml(uid(n), {"selection": {"eventName": event_name}, "condition": "selection"}, **extra)


def record(event_name: str = "StopLogging", **fields: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "eventVersion": "1.08",
        "eventTime": "2024-03-01T10:00:00Z",
        "eventName": event_name,
        "eventSource": "cloudtrail.amazonaws.com",
        "eventID": f"id-{event_name}-{sorted(fields.items())!r}",
        "awsRegion": "us-east-1",
        "recipientAccountId": "111122223333",
        "sourceIPAddress": "203.0.113.7",
        "userAgent": "aws-cli/2.15.0",
        "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::111122223333:user/alice",
                         "accountId": "111122223333"},
    }
    raw.update(fields)
    return raw


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def detector_for(tmp_path: Path, *texts: str, **config: Any) -> SigmaDetector:
    for index, text in enumerate(texts):
        write(tmp_path, f"rule{index}.yml", text)
    return SigmaDetector(SigmaConfig(paths=[str(tmp_path)], **config))


def rule_ids(detector: SigmaDetector, raw: dict[str, Any]) -> list[str]:
    return [alert.rule_id or "" for alert in detector.on_event(Event(raw)) or ()]


# -- unsupported features and bad files ----------------------------------------------------------

BROKEN: dict[str, tuple[dict[str, Any], str]] = {
    "unknown modifier": ({"sel": {"eventName|sounds_like": "x"}, "condition": "sel"}, "sounds_like"),
    "aggregation": ({"sel": {"eventName": "x"}, "condition": "sel | count() by sourceIPAddress > 5"},
                    "correlation"),
    "legacy timeframe": ({"sel": {"eventName": "x"}, "timeframe": "5m", "condition": "sel"}, "timeframe"),
    "placeholder": ({"sel": {"userName|expand": "%admins%"}, "condition": "sel"}, "placeholder"),
    "undefined detection": ({"sel": {"eventName": "x"}, "condition": "sel and other"}, "other"),
    "selector without match": ({"sel": {"eventName": "x"}, "condition": "1 of filter_*"}, "filter_*"),
    "bad regex": ({"sel": {"eventName|re": "(unclosed"}, "condition": "sel"}, "(unclosed"),
    "wildcard in base64": ({"sel": {"f|base64": "a*b"}, "condition": "sel"}, "wildcards"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_an_unusable_rule_is_reported_and_the_others_still_load(case: str) -> None:
    detection, fragment = BROKEN[case]
    sources = [("good.yml", simple(1, "StopLogging")), ("bad.yml", rule_yaml(uid(2), detection, title="Bad"))]
    rules, errors = load_sources(sources)
    assert [rule.rule_id for rule in rules.rules] == [uid(1)]
    (error,) = errors
    assert (error.path, error.rule_id, error.title) == ("bad.yml", uid(2), "Bad")
    assert fragment in error.reason
    assert rules.errors == (error,)
    assert "bad.yml" in str(error) and uid(2) in str(error)


def test_missing_and_duplicate_ids_and_invalid_yaml_are_errors(tmp_path: Path) -> None:
    write(tmp_path, "a.yml", simple(1, "StopLogging"))
    write(tmp_path, "b.yml", simple(1, "DeleteTrail"))
    no_id = yaml.safe_load(simple(3, "X"))
    del no_id["id"]
    write(tmp_path, "c.yaml", yaml.safe_dump(no_id))
    write(tmp_path, "d.yml", "title: [unclosed\n")
    write(tmp_path, "notes.txt", "not a rule")
    rules, errors = load_rules([tmp_path, tmp_path / "missing.yml"])
    assert [rule.rule_id for rule in rules.rules] == [uid(1)]
    reasons = {Path(error.path).name: error.reason for error in errors}
    assert "duplicate rule id" in reasons["b.yml"]
    assert "no id" in reasons["c.yaml"]
    assert "not a valid Sigma YAML" in reasons["d.yml"]
    assert reasons["missing.yml"] == "no such file or directory"
    assert "notes.txt" not in reasons


# -- log sources ---------------------------------------------------------------------------------


def test_only_cloudtrail_rules_run_by_default() -> None:
    sources = [
        ("ct.yml", simple(1, "StopLogging")),
        ("win.yml", simple(2, "x", logsource={"product": "windows", "category": "process_creation"})),
        ("gcp.yml", simple(3, "x", logsource={"product": "gcp", "service": "gcp.audit"})),
        ("aws-other.yml", simple(4, "x", logsource={"product": "aws", "service": "guardduty"})),
    ]
    rules, errors = load_sources(sources)
    assert errors == []
    assert [rule.rule_id for rule in rules.rules] == [uid(1)]
    assert {issue.path for issue in rules.skipped} == {"win.yml", "gcp.yml", "aws-other.yml"}
    assert all("is not read by trailguard" in issue.reason for issue in rules.skipped)


def test_accepted_logsources_are_configurable() -> None:
    sources = [
        ("ct.yml", simple(1, "A")),
        ("aws-any.yml", simple(2, "B", logsource={"product": "AWS"})),
        ("cat.yml", simple(3, "C", logsource={"product": "aws", "category": "cloud_audit"})),
        ("win.yml", simple(4, "D", logsource={"product": "windows"})),
    ]
    rules, _ = load_sources(sources, logsources=[Logsource(product="aws")])
    assert [rule.rule_id for rule in rules.rules] == [uid(1), uid(2), uid(3)]
    rules, _ = load_sources(sources, logsources=[Logsource(product="aws", category="cloud_audit")])
    assert [rule.rule_id for rule in rules.rules] == [uid(3)]


def test_detector_logsources_config(tmp_path: Path) -> None:
    detector = detector_for(
        tmp_path, simple(1, "A", logsource={"product": "aws", "service": "cloudtrail_custom"}),
        logsources=[{"product": "aws", "service": "cloudtrail_custom"}],
    )
    assert rule_ids(detector, record("A")) == [uid(1)]


# -- the index -----------------------------------------------------------------------------------

SERVICES = [f"svc{n}.amazonaws.com" for n in range(10)]


def generated_rules() -> list[tuple[str, str]]:
    """1,000 eventName rules, 20 eventSource-only rules, 5 rules that need every event."""
    sources = []
    for n in range(1000):
        detection = {
            "selection": {"eventSource": SERVICES[n % 10], "eventName": [f"Action{n:04d}", f"Other{n:04d}"]},
            "filter": {"userAgent|contains": "terraform"},
            "condition": "selection and not filter",
        }
        sources.append((f"name{n}.yml", rule_yaml(uid(n), detection)))
    for n in range(20):
        detection = {"selection": {"eventSource": SERVICES[n % 10], "errorCode": "AccessDenied"},
                     "condition": "selection"}
        sources.append((f"source{n}.yml", rule_yaml(uid(2000 + n), detection)))
    for n in range(5):
        detection = {"selection": {"awsRegion": f"region-{n}", "readOnly": False}, "condition": "selection"}
        sources.append((f"always{n}.yml", rule_yaml(uid(3000 + n), detection)))
    return sources


def test_rules_requiring_an_identity_type_are_only_evaluated_for_it() -> None:
    """Root rules cannot be indexed by eventName; they are indexed by ``userIdentity.type``."""
    root = rule_yaml(uid(1), {"s": {"userIdentity.type": "Root", "readOnly": False}, "condition": "s"})
    rules, errors = load_sources([("root.yml", root)])
    assert errors == [] and rules.always_checked == ()
    counts = count_evaluations(rules)
    user = record("Action0001")
    assert rules.match(user, "Action0001", SERVICES[0]) == [] and counts == {}
    root_event = {**record("Action0001"), "userIdentity": {"type": "Root"}, "readOnly": False}
    assert [r.rule_id for r in rules.match(root_event, "Action0001", SERVICES[0])] == [uid(1)]
    assert counts == {uid(1): 1}


def count_evaluations(rules: RuleSet) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rule in rules.rules:
        original = rule.predicate

        def counting(raw: dict[str, Any], _original: Any = original, _id: str = rule.rule_id) -> bool:
            counts[_id] = counts.get(_id, 0) + 1
            return bool(_original(raw))

        rule.predicate = counting
    return counts


def test_an_event_is_evaluated_only_against_its_candidate_rules() -> None:
    rules, errors = load_sources(generated_rules())
    assert errors == []
    assert len(rules) == 1025
    counts = count_evaluations(rules)

    raw = record("Action0042", eventSource=SERVICES[2])
    matched = rules.match(raw, raw["eventName"], raw["eventSource"])
    assert [rule.rule_id for rule in matched] == [uid(42)]
    # 1 named rule + the 2 rules on svc2's source + the 5 always-checked rules
    assert sum(counts.values()) == 8
    assert set(counts) == {uid(42), uid(2002), uid(2012), *(uid(3000 + n) for n in range(5))}
    assert rules.evaluations == 8

    counts.clear()
    other = record("Other0042", eventSource=SERVICES[2], userAgent="Terraform/1.6")
    assert rules.match(other, other["eventName"], other["eventSource"]) == []  # filtered out
    assert sum(counts.values()) == 8

    counts.clear()
    wrong_source = record("Action0042", eventSource=SERVICES[3])  # the rule requires svc2
    assert rules.match(wrong_source, wrong_source["eventName"], wrong_source["eventSource"]) == []
    assert counts.get(uid(42)) is None
    assert sum(counts.values()) == 7  # svc3's 2 source rules + 5 always

    counts.clear()
    unknown = record("DescribeInstances", eventSource="ec2.amazonaws.com", userIdentity={"type": "Root"},
                     awsRegion="region-3", readOnly=False)
    assert [rule.rule_id for rule in rules.match(unknown, "DescribeInstances", "ec2.amazonaws.com")] == [uid(3003)]
    assert sum(counts.values()) == 5


def test_index_lookup_is_case_insensitive_like_sigma() -> None:
    rules, _ = load_sources([("a.yml", simple(1, "stoplogging"))])
    raw = record("StopLogging")
    assert [rule.rule_id for rule in rules.match(raw, "StopLogging", raw["eventSource"])] == [uid(1)]


def test_requirements_are_derived_conservatively() -> None:
    def requirement(detection: dict[str, Any]) -> tuple[Any, Any]:
        rules, errors = load_sources([("r.yml", rule_yaml(uid(1), detection))])
        assert errors == []
        return rules.rules[0].required_names, rules.rules[0].required_sources

    assert requirement({"a": {"eventName": ["A", "B"]}, "condition": "a"}) == (frozenset({"a", "b"}), None)
    # OR of two constrained branches: the union; with an unconstrained branch: unknown
    assert requirement({"a": {"eventName": "A"}, "b": {"eventName": "B"}, "condition": "a or b"})[0] == {"a", "b"}
    assert requirement({"a": {"eventName": "A"}, "b": {"userAgent": "x"}, "condition": "a or b"})[0] is None
    # AND intersects; NOT says nothing
    assert requirement({"a": {"eventName": ["A", "B"]}, "b": {"eventName": ["B", "C"]},
                        "condition": "a and b"})[0] == {"b"}
    assert requirement({"a": {"eventName": "A"}, "condition": "not a"})[0] is None
    # wildcards, modifiers and negated items give no requirement
    assert requirement({"a": {"eventName|startswith": "Get"}, "condition": "a"})[0] is None
    assert requirement({"a": {"eventName": "Get*"}, "condition": "a"})[0] is None
    assert requirement({"a": {"eventName|neq": "A"}, "condition": "a"})[0] is None
    assert requirement({"a": [{"eventName": "A"}, {"eventName": "B", "x": "1"}], "condition": "a"})[0] == {"a", "b"}
    assert requirement({"a": {"eventSource": "s3.amazonaws.com"}, "b": {"eventName": "X"},
                        "condition": "1 of them"}) == (None, None)
    assert requirement({"a": {"eventSource": "S3.amazonaws.com"}, "b": {"eventName": "X"},
                        "condition": "all of them"}) == ({"x"}, {"s3.amazonaws.com"})


def test_index_names_for_the_engine(tmp_path: Path) -> None:
    named = detector_for(tmp_path, simple(1, "StopLogging"), simple(2, ["DeleteTrail", "UpdateTrail"]))
    assert named.index_names() == {"stoplogging", "deletetrail", "updatetrail"}
    assert named.index_case_insensitive  # the engine looks these up by the lowercased eventName
    for path in tmp_path.iterdir():
        path.unlink()
    mis_cased = detector_for(tmp_path, simple(1, "StopLogging"), simple(2, "deletetrail"))
    assert mis_cased.index_names() == {"stoplogging", "deletetrail"}
    for path in tmp_path.iterdir():
        path.unlink()
    always = rule_yaml(uid(3), {"s": {"userIdentity.type": "Root"}, "condition": "s"})
    assert detector_for(tmp_path, simple(1, "StopLogging"), always).index_names() is None


def test_engine_delivers_only_indexed_events(tmp_path: Path) -> None:
    detector = detector_for(tmp_path, simple(1, "StopLogging"))
    engine = DetectionEngine([detector])
    alerts = engine.process_many([Event(record("StopLogging")), Event(record("ListBuckets"))])
    assert [alert.rule_id for alert in alerts] == [uid(1)]
    assert detector.rules.evaluations == 1


# -- exceptions and severity ---------------------------------------------------------------------


def test_exceptions_suppress_matching_events_only(tmp_path: Path) -> None:
    detector = detector_for(
        tmp_path, simple(1, "StopLogging"), simple(2, "StopLogging"),
        exceptions=[
            {"principals": ["arn:aws:iam::*:role/terraform-*"]},  # global
            {"rule_ids": [uid(1)], "regions": ["eu-west-1"], "user_agents": ["aws-cli/*"]},
            {"rule_ids": [uid(2)], "cidrs": ["10.0.0.0/8", "2001:db8::/32"]},
            {"rule_ids": [uid(2)], "account_ids": ["999988887777"]},
        ],
    )
    assert rule_ids(detector, record()) == [uid(1), uid(2)]
    assumed = {"type": "AssumedRole", "arn": "arn:aws:sts::111122223333:assumed-role/terraform-ci/run-1",
               "sessionContext": {"sessionIssuer": {"arn": "arn:aws:iam::111122223333:role/terraform-ci"}}}
    assert rule_ids(detector, record(userIdentity=assumed)) == []
    # region AND user agent must both hold
    assert rule_ids(detector, record(awsRegion="eu-west-1")) == [uid(2)]
    assert rule_ids(detector, record(awsRegion="eu-west-1", userAgent="Boto3/1.0")) == [uid(1), uid(2)]
    assert rule_ids(detector, record(sourceIPAddress="10.1.2.3")) == [uid(1)]
    assert rule_ids(detector, record(sourceIPAddress="2001:db8::5")) == [uid(1)]
    assert rule_ids(detector, record(sourceIPAddress="AWS Internal")) == [uid(1), uid(2)]
    assert rule_ids(detector, record(recipientAccountId="999988887777")) == [uid(1)]


def test_exception_config_is_strict() -> None:
    with pytest.raises(ValidationError):
        SigmaConfig(exceptions=[{"rule_ids": [uid(1)]}])  # no criterion
    with pytest.raises(ValidationError):
        SigmaConfig(exceptions=[{"cidrs": ["10.0.0.300/8"]}])
    with pytest.raises(ValidationError):
        SigmaConfig(exceptions=[{"principal": ["x"]}])  # typo
    with pytest.raises(ValidationError):
        SigmaConfig(severity_overrides={uid(1): "severe"})


def test_severity_from_level_and_overrides(tmp_path: Path) -> None:
    texts = [simple(1, "StopLogging", level="informational"), simple(2, "StopLogging", level="critical"),
             simple(3, "StopLogging", level="low")]
    detector = detector_for(tmp_path, *texts, severity_overrides={uid(3): "high"})
    severities = {a.rule_id: a.severity for a in detector.on_event(Event(record())) or ()}
    assert severities == {uid(1): "info", uid(2): "critical", uid(3): "high"}
    everything_low = SigmaDetector(SigmaConfig(paths=[str(tmp_path)], severity="low",
                                               severity_overrides={uid(3): "high"}))
    severities = {a.rule_id: a.severity for a in everything_low.on_event(Event(record())) or ()}
    assert severities == {uid(1): "low", uid(2): "low", uid(3): "high"}


def test_disabled_rules_are_not_loaded(tmp_path: Path) -> None:
    detector = detector_for(tmp_path, simple(1, "StopLogging"), simple(2, "StopLogging"), disabled_rules=[uid(2)])
    assert rule_ids(detector, record()) == [uid(1)]
    assert [issue.reason for issue in detector.rules.skipped] == ["disabled by configuration"]
    assert detector.load_errors == []


# -- reload --------------------------------------------------------------------------------------


def test_reload_swaps_only_a_clean_rule_set(tmp_path: Path) -> None:
    write(tmp_path, "a.yml", simple(1, "StopLogging"))
    detector = SigmaDetector(SigmaConfig(paths=[str(tmp_path)]))
    assert rule_ids(detector, record()) == [uid(1)]

    write(tmp_path, "b.yml", simple(2, "StopLogging"))
    write(tmp_path, "broken.yml", rule_yaml(uid(3), {"sel": {"x|nope": "1"}, "condition": "sel"}))
    errors = detector.reload()
    assert [Path(error.path).name for error in errors] == ["broken.yml"]
    assert rule_ids(detector, record()) == [uid(1)]  # the old set is still active

    (tmp_path / "broken.yml").unlink()
    assert detector.reload() == []
    assert rule_ids(detector, record()) == [uid(1), uid(2)]

    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    write(elsewhere, "c.yml", simple(4, "DeleteTrail"))
    assert detector.reload([elsewhere]) == []
    assert rule_ids(detector, record()) == []
    assert rule_ids(detector, record("DeleteTrail")) == [uid(4)]
    assert detector.index_names() == {"deletetrail"}


def test_load_errors_are_exposed_for_check_config(tmp_path: Path) -> None:
    detector = detector_for(tmp_path, simple(1, "StopLogging"),
                            rule_yaml(uid(2), {"sel": {"x": "1"}, "condition": "sel | count() > 3"}))
    assert [error.rule_id for error in detector.load_errors] == [uid(2)]
    assert rule_ids(detector, record()) == [uid(1)]


# -- the correlation seam ------------------------------------------------------------------------


def correlation_yaml(*, generate: bool | None, rules: list[str]) -> str:
    correlation: dict[str, Any] = {
        "type": "event_count",
        "rules": rules,
        "group-by": ["sourceIPAddress"],
        "timespan": "5m",
        "condition": {"gte": 3},
    }
    if generate is not None:
        correlation["generate"] = generate
    document = {"title": "Many failed logins", "id": uid(900), "correlation": correlation, "level": "high"}
    return yaml.safe_dump(document, sort_keys=False)


def failed_login_yaml() -> str:
    detection = {"selection": {"eventName": "ConsoleLogin", "errorMessage": "Failed authentication"},
                 "condition": "selection"}
    return rule_yaml(uid(10), detection, name="failed_console_login")


@pytest.mark.parametrize("generate", [None, False])
def test_correlation_inputs_notify_listeners_but_do_not_alert(tmp_path: Path, generate: bool | None) -> None:
    write(tmp_path, "base.yml", failed_login_yaml())
    write(tmp_path, "corr.yml", correlation_yaml(generate=generate, rules=["failed_console_login"]))
    write(tmp_path, "other.yml", simple(11, "ConsoleLogin"))
    detector = SigmaDetector(SigmaConfig(paths=[str(tmp_path)]))
    assert detector.load_errors == []
    (correlation,) = detector.correlation_rules
    assert correlation.title == "Many failed logins"
    assert [issue.reason for issue in detector.rules.skipped] == [CORRELATION_NOTICE]
    seen: list[tuple[str, str | None]] = []
    detector.on_match.append(lambda rule_id, event: seen.append((rule_id, event.event_id)))
    raw = record("ConsoleLogin", errorMessage="Failed authentication")
    assert rule_ids(detector, raw) == [uid(11)]  # the referenced rule does not alert by itself
    assert seen == [(uid(10), raw["eventID"]), (uid(11), raw["eventID"])]
    assert detector.rules.get(uid(10)) is not None and detector.rules.get(uid(10)).generate is False


def test_correlation_with_generate_true_keeps_the_rule_alerting(tmp_path: Path) -> None:
    write(tmp_path, "base.yml", failed_login_yaml())
    write(tmp_path, "corr.yml", correlation_yaml(generate=True, rules=["failed_console_login"]))
    detector = SigmaDetector(SigmaConfig(paths=[str(tmp_path)]))
    assert rule_ids(detector, record("ConsoleLogin", errorMessage="Failed authentication")) == [uid(10)]


def test_correlation_with_an_unknown_rule_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "corr.yml", correlation_yaml(generate=None, rules=["no_such_rule"]))
    rules, errors = load_rules([tmp_path])
    assert rules.correlation_rules == ()
    (error,) = errors
    assert error.rule_id == uid(900) and "no_such_rule" in error.reason


def test_sigma_filters_apply_to_rules_in_other_files(tmp_path: Path) -> None:
    write(tmp_path, "rule.yml", simple(1, "StopLogging"))
    sigma_filter = {
        "title": "Terraform is expected",
        "id": uid(99),
        "logsource": CLOUDTRAIL,
        "filter": {"rules": [uid(1)], "selection": {"userAgent|contains": "terraform"},
                   "condition": "not selection"},
    }
    write(tmp_path, "filters.yml", yaml.safe_dump(sigma_filter))
    detector = SigmaDetector(SigmaConfig(paths=[str(tmp_path)]))
    assert detector.load_errors == []
    assert rule_ids(detector, record()) == [uid(1)]
    assert rule_ids(detector, record(userAgent="Terraform/1.6 (+https://www.terraform.io)")) == []
    assert detector.index_names() == {"stoplogging"}
