"""Rule tests for the three built-in stateless detectors, on real CloudTrail records.

Every sample comes from ``tests/data/builtin`` (see ``tests/data/README-builtin.md``): Stratus Red
Team detonations, the Invictus IR attack-simulation account, Panther's and StreamAlert's labelled
rule tests.  Variants that no public capture contains (UpdateTrail flags, advanced selectors,
CloudTrail Lake calls) are built from a real record used as a template, one changed field at a
time.  Each test asserts the exact set of (detector, severity, event ids) a sample produces.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest

from detectors.alert import Alert
from detectors.base import Detector
from detectors.cloudtrail_tampering import CloudTrailTampering
from detectors.console_login_without_mfa import ConsoleLoginWithoutMfa
from detectors.engine import DetectionEngine
from detectors.event import Event
from detectors.registry import detector_class
from detectors.root_activity import RootActivity

DATA = Path(__file__).parent / "data" / "builtin"
NAMES = ("root_activity", "cloudtrail_tampering", "console_login_without_mfa")
Signature = tuple[str, str, tuple[str, ...]]


# -- loading -------------------------------------------------------------------------------------
_PANTHER_TIME = re.compile(r"^(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d)")


def cloudtrail_time(raw: dict[str, Any]) -> dict[str, Any]:
    """Give a labelled test record a CloudTrail ``eventTime`` (returns a copy).

    Panther stores times as ``2024-11-25 17:51:21.000000000`` (or only in ``p_event_time``) and
    StreamAlert/Panther redact some to ``...``/``redacted``; real CloudTrail always writes
    ``2024-11-25T17:51:21Z``.  Only the time is rewritten; nothing a detector reads changes.
    """
    raw = dict(raw)
    for candidate in (raw.get("eventTime"), raw.get("p_event_time")):
        match = _PANTHER_TIME.match(candidate) if isinstance(candidate, str) else None
        if match:
            raw["eventTime"] = f"{match[1]}T{match[2]}Z"
            return raw
    raw["eventTime"] = "2019-01-01T00:00:00Z"
    return raw


def records(path: Path) -> list[dict[str, Any]]:
    """CloudTrail records of an S3 delivery file (``{"Records": [...]}``) or a JSON array."""
    data = orjson.loads(path.read_bytes())
    return data["Records"] if isinstance(data, dict) else data


def events(raws: Iterable[dict[str, Any]]) -> list[Event]:
    return [Event(raw, "test") for raw in raws]


def make(name: str, **config: Any) -> Detector:
    cls = detector_class(name)
    return cls(cls.Config(**config))


def run(detectors: Iterable[Detector], evs: Iterable[Event]) -> list[Alert]:
    evs = list(evs)
    return [alert for detector in detectors for event in evs for alert in (detector.on_event(event) or ())]


def signature(alerts: Iterable[Alert]) -> set[Signature]:
    return {(a.detector, a.severity, tuple(a.event_ids)) for a in alerts}


def all_detectors() -> list[Detector]:
    return [make(name) for name in NAMES]


# -- Stratus Red Team detonations ----------------------------------------------------------------
STRATUS = {
    "aws.defense-evasion.cloudtrail-stop.json": {
        ("cloudtrail_tampering", "critical", ("10163ed2-2253-469d-a5ee-cbc6651f8934",)),
    },
    "aws.defense-evasion.cloudtrail-delete.json": {
        ("cloudtrail_tampering", "critical", ("ee73c230-44bc-4492-8542-cfb189eae287",)),
    },
    "aws.defense-evasion.cloudtrail-event-selectors.json": {
        ("cloudtrail_tampering", "high", ("c2a89408-340a-42f0-8ace-75d9f5769393",)),
    },
    "aws.initial-access.console-login-without-mfa.json": {
        ("console_login_without_mfa", "high", ("865d9377-9c6b-4fd7-8aad-725e95f6a140",)),
    },
}


@pytest.mark.parametrize("file_name", sorted(STRATUS))
def test_stratus_detonation_yields_exactly_the_expected_alerts(file_name: str) -> None:
    alerts = run(all_detectors(), events(records(DATA / "stratus" / file_name)))
    assert signature(alerts) == STRATUS[file_name]


def test_stratus_event_selectors_evidence_lists_what_was_reduced() -> None:
    (alert,) = run([make("cloudtrail_tampering")],
                   events(records(DATA / "stratus" / "aws.defense-evasion.cloudtrail-event-selectors.json")))
    assert alert.evidence["finding"] == "event_selectors_reduced"
    assert alert.evidence["reduced"] == ["includeManagementEvents=false"]
    assert alert.evidence["target"] == "stratus-red-team-ctes-trail-khlvciwdor"
    assert alert.evidence["attempt_failed"] is False
    assert "christophe" in alert.summary and "958312252124" in alert.summary
    assert "cn-northsouth-2r" in alert.summary


# -- Invictus IR: a real account during a Stratus run, with Terraform and console background -----
INVICTUS_EXPECTED: set[Signature] = {
    # PutEventSelectors management events off (stratus-red-team user agent)
    ("cloudtrail_tampering", "high", ("076e96d5-2983-473f-920a-2fc2d7e02777",)),
    # StopLogging / DeleteTrail against a trail already gone: attempts, one level down
    ("cloudtrail_tampering", "high", ("9790ee84-ed2b-4866-83d1-f32af0dd4cd2",)),
    ("cloudtrail_tampering", "high", ("b4610d54-efe9-40b0-b9f9-71156081d520",)),
    ("cloudtrail_tampering", "high", ("f6e10706-705c-47f2-94d4-112a9527ab8b",)),
    ("cloudtrail_tampering", "high", ("b7e19efd-92be-4182-bbbc-b6468296710b",)),
    # terraform destroy of the two Stratus trails: real deletions, the documented IaC false positive
    ("cloudtrail_tampering", "critical", ("c0057a42-1625-4b1d-9db5-352f931f790a",)),
    ("cloudtrail_tampering", "critical", ("fcec2e46-3cc3-4ac2-8144-3674f06990e4",)),
    # console-login-without-mfa detonation
    ("console_login_without_mfa", "high", ("70e5932e-9022-4b38-837e-ca10dad94eb7",)),
}


def invictus_events() -> list[Event]:
    return events(raw for path in sorted((DATA / "invictus").glob("*.json")) for raw in records(path))


def test_invictus_account_yields_exactly_the_expected_alerts() -> None:
    """Background included: CreateTrail, StartLogging, DescribeTrails, GetEventSelectors,
    LookupEvents, ListTags, the PutEventSelectors that restores full logging, a ConsoleLogin with
    MFA (after CheckMfa) and ~130 unrelated calls must all stay silent."""
    evs = invictus_events()
    assert len(evs) > 150
    assert signature(run(all_detectors(), evs)) == INVICTUS_EXPECTED


def test_invictus_negatives_are_present_and_silent() -> None:
    evs = {e.event_id: e for e in invictus_events()}
    detectors = all_detectors()
    silent = {
        "3d6df238-f83c-4a34-bea8-45cf80a2050b": "PutEventSelectors restoring All + management events",
        "8feee4c2-5e27-4857-8475-bfa7e7b6d791": "ConsoleLogin with MFA",
        "74b4a7d6-764d-4ec8-bbd4-91e7a84e6780": "CheckMfa",
        "ad384a22-c03e-4f3c-8520-86a31e79378d": "CreateTrail",
        "98cf02da-a187-453b-87fe-884d93a06a4c": "StartLogging",
        "c7dacac3-3977-4e60-97db-a41233dc562b": "DescribeTrails",
        "0a848416-a168-4b62-ac9f-fa8ade684ec3": "LookupEvents",
        "c289d324-db2c-45c2-97a5-93840c84fed2": "GetEventSelectors",
        "f50c0906-d905-4f34-a4fe-ce9b1f115fbf": "GetTrailStatus",
    }
    for event_id, what in silent.items():
        assert run(detectors, [evs[event_id]]) == [], what


def test_failed_stop_logging_is_reported_as_an_attempt() -> None:
    evs = {e.event_id: e for e in invictus_events()}
    (alert,) = run([make("cloudtrail_tampering")], [evs["9790ee84-ed2b-4866-83d1-f32af0dd4cd2"]])
    assert alert.severity == "high"
    assert alert.evidence["attempt_failed"] is True
    assert alert.evidence["errorCode"] == "TrailNotFoundException"
    assert alert.title.startswith("Attempt:")
    assert "stratus-red-team_" in alert.evidence["userAgent"]


# -- Panther's labelled rule tests -----------------------------------------------------------------
@dataclass(frozen=True)
class PantherRule:
    """How one Panther rule maps onto trailguard: which detector, which findings, which config.

    Panther splits what one trailguard detector reports into several rules (root login, failed
    root login, root activity); the ``findings``/``failed`` filter selects the part that the
    Panther rule covers, so "Panther says alert" ⇔ "trailguard emits a matching alert".
    """

    detector: str
    findings: frozenset[str] | None = None  # None: any finding
    failed: bool = False
    config: dict[str, Any] = field(default_factory=dict)

    def matches(self, alert: Alert) -> bool:
        return (
            alert.detector == self.detector
            and (self.findings is None or alert.evidence["finding"] in self.findings)
            and alert.evidence["attempt_failed"] is self.failed
        )


PANTHER_RULES = {
    "AWS.CloudTrail.Stopped": PantherRule("cloudtrail_tampering", frozenset({"logging_stopped"})),
    "AWS.CloudTrail.EventSelectorsDisabled": PantherRule(
        "cloudtrail_tampering", frozenset({"event_selectors_reduced"})
    ),
    "AWS.CloudTrail.SecurityConfigurationChange": PantherRule("cloudtrail_tampering"),
    # Panther's rule drops CreateServiceLinkedRole and read-only calls; trailguard reports both by
    # default (a root key enumerating the account is how a thief starts) and offers the same tuning.
    "AWS.Root.Activity": PantherRule(
        "root_activity",
        config={"ignore_event_names": ["CreateServiceLinkedRole"], "ignore_read_only": True},
    ),
    "AWS.Console.RootLogin": PantherRule("root_activity", frozenset({"root_console_login"})),
    "AWS.Console.RootLoginFailed": PantherRule("root_activity", frozenset({"root_sign_in_failed"}), failed=True),
    "AWS.Console.LoginWithoutMFA": PantherRule("console_login_without_mfa"),
    "AWS.CloudTrail.RootAccessKeyCreated": PantherRule("root_activity", frozenset({"root_activity"})),
    "AWS.CloudTrail.RootPasswordChanged": PantherRule("root_activity", frozenset({"root_activity"})),
}

#: Panther negatives trailguard deliberately flags, with the reason.  Nothing else differs.
PANTHER_DIVERGENCES = {
    ("AWS.Console.LoginWithoutMFA", "No MFA Login - New User"): (
        "The record is identical to the 'No MFA Login - IAM User' positive; Panther suppresses it "
        "through a mocked lookup ('user created minutes ago, about to enrol MFA').  A stateless "
        "detector cannot know that; known onboarding accounts go in allowed_principals."
    ),
    ("AWS.CloudTrail.RootAccessKeyCreated", "Root Created Access Key For User"): (
        "Panther's rule only wants root creating a key for *itself*; root creating a key for an IAM "
        "user is still root activity (Panther's own AWS.Root.Activity would fire on it)."
    ),
}


def panther_cases() -> list[Any]:
    cases = []
    for line in (DATA / "panther_cases.ndjson").read_bytes().splitlines():
        case = orjson.loads(line)
        key = (case["rule_id"], case["test_name"])
        cases.append(pytest.param(case, id=f"{key[0]}:{key[1]}"))
    return cases


@pytest.mark.parametrize("case", panther_cases())
def test_panther_rule_case(case: dict[str, Any]) -> None:
    rule = PANTHER_RULES[case["rule_id"]]
    detector = make(rule.detector, **rule.config)
    alerts = run([detector], [Event(cloudtrail_time(case["event"]), "panther")])
    flagged = any(rule.matches(a) for a in alerts)
    expected = case["expected_alert"]
    if (case["rule_id"], case["test_name"]) in PANTHER_DIVERGENCES:
        expected = not expected
    assert flagged is expected


def test_panther_hit_rate() -> None:
    """Every Panther positive of the mapped rules is flagged; every negative is silent except the
    two documented divergences."""
    positives = hits = negatives = silent = 0
    for param in panther_cases():
        case = param.values[0]
        rule = PANTHER_RULES[case["rule_id"]]
        alerts = run([make(rule.detector, **rule.config)], [Event(cloudtrail_time(case["event"]), "p")])
        flagged = any(rule.matches(a) for a in alerts)
        if case["expected_alert"]:
            positives += 1
            hits += flagged
        else:
            negatives += 1
            silent += not flagged
    assert (hits, positives) == (12, 12)
    assert (silent, negatives) == (23, 25)


def panther_event(rule_id: str, test_name: str) -> Event:
    for param in panther_cases():
        case = param.values[0]
        if (case["rule_id"], case["test_name"]) == (rule_id, test_name):
            return Event(cloudtrail_time(case["event"]), "panther")
    raise LookupError(test_name)


def test_panther_failed_tampering_negatives_are_reported_as_attempts() -> None:
    """Panther ignores failed StopLogging/DeleteTrail; trailguard reports them one level down."""
    detector = make("cloudtrail_tampering")
    for rule_id, test_name, code in (
        ("AWS.CloudTrail.Stopped", "Error Stopping CloudTrail", "InvalidTrailNameException"),
        ("AWS.CloudTrail.SecurityConfigurationChange", "Security Configuration Not Changed - Error",
         "ConflictException"),
    ):
        (alert,) = detector.on_event(panther_event(rule_id, test_name)) or []
        assert (alert.severity, alert.evidence["attempt_failed"], alert.evidence["errorCode"]) == (
            "high", True, code)


def test_root_activity_default_config_reports_what_panther_tunes_away() -> None:
    detector = make("root_activity")
    for test_name in ("Root Activity - CreateServiceLinkedRole", "Root Read-Only Enumeration"):
        (alert,) = detector.on_event(panther_event("AWS.Root.Activity", test_name)) or []
        assert (alert.severity, alert.evidence["finding"]) == ("high", "root_activity")


def test_root_console_login_alerts_and_failed_login_is_medium() -> None:
    detector = make("root_activity")
    (ok,) = detector.on_event(panther_event("AWS.Console.RootLogin", "Successful Root Login")) or []
    assert (ok.severity, ok.evidence["finding"], ok.evidence["MFAUsed"]) == ("high", "root_console_login", "No")
    assert "123456789012" in ok.summary and "111.111.111.111" in ok.summary
    (bad,) = detector.on_event(panther_event("AWS.Console.RootLoginFailed", "Failed Root Login")) or []
    assert (bad.severity, bad.evidence["finding"], bad.evidence["attempt_failed"]) == (
        "medium", "root_sign_in_failed", True)


def test_root_failed_authentication_message_is_a_failed_login() -> None:
    raw = copy.deepcopy(panther_event("AWS.Console.RootLogin", "Successful Root Login").raw)
    raw["responseElements"] = {"ConsoleLogin": "Failure"}
    raw["errorMessage"] = "Failed authentication"
    (alert,) = make("root_activity").on_event(Event(raw)) or []
    assert (alert.severity, alert.evidence["errorMessage"]) == ("medium", "Failed authentication")


def test_root_console_login_without_mfa_is_critical_in_the_mfa_detector() -> None:
    event = panther_event("AWS.Console.LoginWithoutMFA", "No MFA Login - Root User")
    (alert,) = make("console_login_without_mfa").on_event(event) or []
    assert (alert.severity, alert.evidence["finding"]) == ("critical", "root_without_mfa")
    assert alert.title == "Root console sign-in without MFA"


# -- StreamAlert's labelled samples ---------------------------------------------------------------
def streamalert_events() -> list[tuple[str, Event]]:
    cases = orjson.loads((DATA / "streamalert_cases.json").read_bytes())
    return [(case["description"], Event(cloudtrail_time(case["record"]), "streamalert")) for case in cases]


def test_streamalert_samples() -> None:
    by_description = dict(streamalert_events())
    root = make("root_activity")
    tampering = make("cloudtrail_tampering")
    (login,) = root.on_event(by_description["Use of the AWS 'Root' account will create an alert."]) or []
    assert login.evidence["finding"] == "root_console_login"
    service = by_description[
        "AWS 'Root' account activity initiated automatically by an AWS service on your behalf will not create "
        "an alert."
    ]
    assert not root.on_event(service)
    (update,) = tampering.on_event(
        by_description["Updating an AWS CloudTrail trail (UpdateTrail) will create an alert."]) or []
    assert (update.severity, update.evidence["reduced"]) == (
        "high", ["kmsKeyId removed (logs no longer KMS-encrypted)"])
    (stop,) = tampering.on_event(by_description[
        "Suspending the recording of AWS API calls and log file delivery for a trail will create an alert."
    ]) or []
    assert stop.severity == "critical"


# -- CloudTrail variants built from the real Stratus PutEventSelectors record ------------------------
TEMPLATE = records(DATA / "stratus" / "aws.defense-evasion.cloudtrail-event-selectors.json")[0]
ACCOUNT = TEMPLATE["recipientAccountId"]


def cloudtrail_call(name: str, params: dict[str, Any] | None, error: str | None = None) -> Event:
    raw = copy.deepcopy(TEMPLATE)
    raw["eventName"] = name
    raw["requestParameters"] = params
    raw["responseElements"] = None
    raw["eventID"] = f"variant-{name}-{orjson.dumps(params).hex()[:24]}"
    if error:
        raw["errorCode"] = error
        raw["errorMessage"] = "User is not authorized to perform this operation"
    return Event(raw, "variant")


TAMPERING_VARIANTS: list[tuple[str, dict[str, Any] | None, str | None, list[str]]] = [
    ("UpdateTrail", {"name": "t", "isMultiRegionTrail": False}, "high", ["isMultiRegionTrail=false"]),
    ("UpdateTrail", {"name": "t", "includeGlobalServiceEvents": False}, "high",
     ["includeGlobalServiceEvents=false"]),
    ("UpdateTrail", {"name": "t", "enableLogFileValidation": False}, "high", ["enableLogFileValidation=false"]),
    ("UpdateTrail", {"name": "t", "isOrganizationTrail": False}, "high", ["isOrganizationTrail=false"]),
    ("UpdateTrail", {"name": "t", "s3BucketName": "attacker-bucket"}, "high",
     ["s3BucketName changed to attacker-bucket"]),
    ("UpdateTrail", {"name": "t", "cloudWatchLogsLogGroupArn": "", "cloudWatchLogsRoleArn": ""}, "high",
     ["cloudWatchLogsLogGroupArn removed"]),
    ("UpdateTrail", {"name": "t", "kmsKeyId": "arn:aws:kms:us-east-1:999999999999:key/abcd"}, "high",
     ["kmsKeyId changed to a key in account 999999999999"]),
    ("UpdateTrail", {"name": "t", "isMultiRegionTrail": True, "enableLogFileValidation": True,
                     "includeGlobalServiceEvents": True}, None, []),
    ("UpdateTrail", {"name": "t", "kmsKeyId": f"arn:aws:kms:us-east-1:{ACCOUNT}:key/abcd"}, None, []),
    ("UpdateTrail", {"name": "t", "kmsKeyId": "alias/trail-logs", "s3KeyPrefix": "new"}, None, []),
    ("PutEventSelectors", {"trailName": "t", "eventSelectors": [
        {"readWriteType": "WriteOnly", "includeManagementEvents": True}]}, "high", ["readWriteType=WriteOnly"]),
    ("PutEventSelectors", {"trailName": "t", "eventSelectors": [
        {"readWriteType": "All", "includeManagementEvents": True,
         "excludeManagementEventSources": ["kms.amazonaws.com"]}]}, "high",
     ["excludeManagementEventSources=['kms.amazonaws.com']"]),
    ("PutEventSelectors", {"trailName": "t", "eventSelectors": []}, "high", ["eventSelectors=[] (no events logged)"]),
    ("PutEventSelectors", {"trailName": "t", "eventSelectors": [
        {"readWriteType": "All", "includeManagementEvents": True, "dataResources": []},
        {"readWriteType": "ReadOnly", "includeManagementEvents": False,
         "dataResources": [{"type": "AWS::S3::Object", "values": ["arn:aws:s3"]}]}]}, None, []),
    ("PutEventSelectors", {"trailName": "t", "advancedEventSelectors": [
        {"name": "mgmt", "fieldSelectors": [{"field": "eventCategory", "equals": ["Management"]}]}]}, None, []),
    ("PutEventSelectors", {"trailName": "t", "advancedEventSelectors": [
        {"name": "mgmt", "fieldSelectors": [{"field": "eventCategory", "equals": ["Management"]},
                                            {"field": "readOnly", "equals": ["true"]}]}]}, "high",
     ["management events: readOnly=true"]),
    ("PutEventSelectors", {"trailName": "t", "advancedEventSelectors": [
        {"name": "mgmt", "fieldSelectors": [
            {"field": "eventCategory", "equals": ["Management"]},
            {"field": "eventSource", "notEquals": ["kms.amazonaws.com", "iam.amazonaws.com"]}]}]}, "high",
     ["management events: eventSource notEquals ['iam.amazonaws.com', 'kms.amazonaws.com']"]),
    ("PutEventSelectors", {"trailName": "t", "advancedEventSelectors": [
        {"name": "mgmt", "fieldSelectors": [{"field": "eventCategory", "equals": ["Management"]}]},
        {"name": "s3", "fieldSelectors": [
            {"field": "eventCategory", "equals": ["Data"]},
            {"field": "resources.type", "equals": ["AWS::S3::Object"]},
            {"field": "eventName", "notStartsWith": ["Get"]}]}]}, "high",
     ["eventName notStartsWith ['Get']"]),
    ("PutEventSelectors", {"trailName": "t", "advancedEventSelectors": [
        {"name": "s3", "fieldSelectors": [{"field": "eventCategory", "equals": ["Data"]},
                                          {"field": "resources.type", "equals": ["AWS::S3::Object"]}]}]},
     "high", ["no management-event selector (management events not logged)"]),
    ("PutInsightSelectors", {"trailName": "t", "insightSelectors": []}, "medium",
     ["insightSelectors=[] (Insights disabled)"]),
    ("PutInsightSelectors", {"trailName": "t", "insightSelectors": [{"insightType": "ApiCallRateInsight"}]},
     None, []),
    ("DeleteEventDataStore", {"eventDataStore": "arn:aws:cloudtrail:us-east-1:1:eventdatastore/x"}, "critical",
     []),
    ("StopEventDataStoreIngestion", {"eventDataStore": "x"}, "critical", []),
    ("UpdateEventDataStore", {"eventDataStore": "x", "terminationProtectionEnabled": False}, "high",
     ["terminationProtectionEnabled=false"]),
    ("UpdateEventDataStore", {"eventDataStore": "x", "retentionPeriod": 7}, "high",
     ["retentionPeriod=7 days (< 365)"]),
    ("UpdateEventDataStore", {"eventDataStore": "x", "retentionPeriod": 2557, "multiRegionEnabled": True},
     None, []),
    ("PutEventSelectors", None, None, []),
    ("PutEventSelectors", {"trailName": "t"}, None, []),
    ("StartLogging", {"name": "t"}, None, []),
    ("CreateTrail", {"name": "t", "s3BucketName": "b", "isMultiRegionTrail": False}, None, []),
    ("DescribeTrails", {"trailNameList": []}, None, []),
    ("LookupEvents", {"maxResults": 50}, None, []),
]


@pytest.mark.parametrize(("name", "params", "severity", "reduced"), TAMPERING_VARIANTS,
                         ids=[f"{v[0]}-{i}" for i, v in enumerate(TAMPERING_VARIANTS)])
def test_cloudtrail_tampering_variant(
    name: str, params: dict[str, Any] | None, severity: str | None, reduced: list[str]
) -> None:
    event = cloudtrail_call(name, params)
    alerts = make("cloudtrail_tampering").on_event(event) or []
    if severity is None:
        assert alerts == []
        return
    (alert,) = alerts
    assert alert.severity == severity
    assert alert.evidence.get("reduced", []) == reduced
    assert alert.evidence["requestParameters"] == params


def test_failed_reduction_is_one_level_lower_and_failed_no_op_stays_silent() -> None:
    detector = make("cloudtrail_tampering")
    (alert,) = detector.on_event(
        cloudtrail_call("UpdateTrail", {"name": "t", "isMultiRegionTrail": False}, "AccessDenied")) or []
    assert (alert.severity, alert.evidence["attempt_failed"]) == ("medium", True)
    assert not detector.on_event(cloudtrail_call("UpdateTrail", {"name": "t", "isMultiRegionTrail": True}, "x"))


def test_tampering_tuning_knobs() -> None:
    ignoring = make("cloudtrail_tampering", ignore_trails=["data-events-*", "arn:aws:cloudtrail:*:trail/lab"])
    assert not ignoring.on_event(cloudtrail_call("StopLogging", {"name": "data-events-s3"}))
    assert not ignoring.on_event(cloudtrail_call("DeleteTrail", {"name": "arn:aws:cloudtrail:us-east-1:1:trail/lab"}))
    assert ignoring.on_event(cloudtrail_call("StopLogging", {"name": "org-trail"}))
    buckets = make("cloudtrail_tampering", allowed_s3_buckets=["corp-audit-*"])
    assert not buckets.on_event(cloudtrail_call("UpdateTrail", {"name": "t", "s3BucketName": "corp-audit-2"}))
    assert buckets.on_event(cloudtrail_call("UpdateTrail", {"name": "t", "s3BucketName": "elsewhere"}))
    retention = make("cloudtrail_tampering", min_retention_days=30)
    assert not retention.on_event(cloudtrail_call("UpdateEventDataStore", {"eventDataStore": "x",
                                                                           "retentionPeriod": 90}))
    lowered = make("cloudtrail_tampering", severity="high")
    (alert,) = lowered.on_event(cloudtrail_call("StopLogging", {"name": "t"})) or []
    assert alert.severity == "high"


def test_tampering_ignores_same_names_from_other_services() -> None:
    raw = copy.deepcopy(TEMPLATE)
    raw.update(eventName="StopLogging", eventSource="example.amazonaws.com", requestParameters={"name": "t"})
    assert not make("cloudtrail_tampering").on_event(Event(raw))


# -- root activity variants from real root records -------------------------------------------------
def root_call(**changes: Any) -> Event:
    raw = copy.deepcopy(panther_event("AWS.Root.Activity", "Root Activity").raw)
    identity_changes = changes.pop("userIdentity", {})
    raw.update(changes)
    raw["userIdentity"].update(identity_changes)
    return Event(raw, "variant")


def test_root_calls_made_by_services_are_silent() -> None:
    detector = make("root_activity")
    assert not detector.on_event(root_call(userIdentity={"invokedBy": "cloudformation.amazonaws.com"}))
    assert not detector.on_event(root_call(sourceIPAddress="AWS Internal"))
    assert not detector.on_event(root_call(sourceIPAddress="s3.amazonaws.com"))
    assert not detector.on_event(root_call(eventType="AwsServiceEvent"))


def test_root_console_actions_via_signin_are_reported() -> None:
    """``invokedBy: signin.amazonaws.com`` with a real address is root clicking in the console."""
    event = panther_event("AWS.CloudTrail.RootAccessKeyCreated", "Root Access Key Created")
    (alert,) = make("root_activity").on_event(event) or []
    assert (alert.severity, alert.evidence["eventName"]) == ("high", "CreateAccessKey")
    assert "called CreateAccessKey" in alert.summary


def test_root_refused_call_and_tuning() -> None:
    (refused,) = make("root_activity").on_event(root_call(errorCode="AccessDenied")) or []
    assert (refused.severity, refused.evidence["attempt_failed"], refused.evidence["errorCode"]) == (
        "medium", True, "AccessDenied")
    assert not make("root_activity", ignore_event_names=["PutBucketVersioning"]).on_event(root_call())
    (critical,) = make("root_activity", severity="critical").on_event(root_call(errorCode="AccessDenied")) or []
    assert critical.severity == "high"


# -- console login without MFA variants --------------------------------------------------------------
def test_console_login_allowed_principals_and_exclusions() -> None:
    positive = panther_event("AWS.Console.LoginWithoutMFA", "No MFA Login - IAM User")
    assert make("console_login_without_mfa", allowed_principals=["arn:aws:iam::*:user/test*"]).on_event(
        positive) is None
    assert make("console_login_without_mfa", allowed_principals=["arn:aws:iam::*:user/TESTER"]).on_event(
        positive)
    (alert,) = make("console_login_without_mfa", severity="medium").on_event(positive) or []
    assert alert.severity == "medium"
    (root,) = make("console_login_without_mfa", severity="medium").on_event(
        panther_event("AWS.Console.LoginWithoutMFA", "No MFA Login - Root User")) or []
    assert root.severity == "high"
    assert "tester" in alert.summary and "123456789012" in alert.summary and "us-east-1" in alert.summary
    failed = copy.deepcopy(positive.raw)
    failed["responseElements"] = {"ConsoleLogin": "Failure"}
    failed["errorMessage"] = "Failed authentication"
    assert not make("console_login_without_mfa").on_event(Event(failed))


# -- every userIdentity.type in the shared data ---------------------------------------------------
def test_every_identity_type_is_handled() -> None:
    """One record per ``userIdentity.type`` found in /work/shared/data (incl. none, missing and
    placeholder types): no detector raises, and only root records reach root_activity."""
    samples = orjson.loads((DATA / "identity_types.json").read_bytes())
    assert {s["identity"] for s in samples} >= {
        "type:IAMUser", "type:AssumedRole", "type:Root", "type:AWSService", "type:AWSAccount",
        "type:FederatedUser", "type:Unknown", "type:User", "type:None", "userIdentity:None",
    }
    detectors = all_detectors()
    for sample in samples:
        alerts = run(detectors, [Event(cloudtrail_time(sample["record"]), sample["source"])])
        expected = {"root_activity"} if sample["identity"] == "type:Root" else set()
        assert {a.detector for a in alerts} == expected, sample["identity"]


# -- alert identity, wire form, registry, config -----------------------------------------------------
def test_alert_ids_are_deterministic_and_distinct_per_detector() -> None:
    raw = panther_event("AWS.Console.LoginWithoutMFA", "No MFA Login - Root User").raw
    first = run(all_detectors(), [Event(copy.deepcopy(raw))])
    second = run(all_detectors(), [Event(copy.deepcopy(raw))])
    assert [a.id for a in first] == [a.id for a in second]
    assert {a.detector for a in first} == {"root_activity", "console_login_without_mfa"}
    assert len({a.id for a in first}) == 2
    assert all(re.fullmatch(r"[0-9a-f]{32}", a.id) for a in first)


def all_fixture_alerts() -> list[Alert]:
    evs = invictus_events()
    evs += [e for _, e in streamalert_events()]
    evs += events(cloudtrail_time(p.values[0]["event"]) for p in panther_cases())
    return run(all_detectors(), evs)


def test_alerts_round_trip_through_to_dict() -> None:
    alerts = all_fixture_alerts()
    assert {a.detector for a in alerts} == set(NAMES)
    for alert in alerts:
        wire = alert.to_dict()
        assert orjson.loads(orjson.dumps(wire)) == wire
        assert wire["id"] == alert.id and wire["event_ids"] == alert.event_ids
        assert wire["tags"] and all(t.startswith("attack.") for t in wire["tags"])
        assert wire["runbook"] and wire["summary"].endswith(".")
        assert wire["evidence"]["finding"] and isinstance(wire["evidence"]["attempt_failed"], bool)
        assert wire["evidence"]["eventName"]


@pytest.mark.parametrize("name", NAMES)
def test_registry_metadata_and_strict_config(name: str) -> None:
    cls = detector_class(name)
    assert cls.name == name
    assert {RootActivity: "root_activity", CloudTrailTampering: "cloudtrail_tampering",
            ConsoleLoginWithoutMfa: "console_login_without_mfa"}[cls] == name
    module_doc = __import__(cls.__module__, fromlist=["_"]).__doc__ or ""
    assert "Known false positives" in module_doc and "Parameters" in module_doc
    assert cls.runbook and any(t.startswith("attack.t") for t in cls.tags)
    with pytest.raises(pydantic.ValidationError):
        cls.Config(no_such_knob=True)
    with pytest.raises(pydantic.ValidationError):
        cls.Config(severity="hgih")
    config = cls.Config()
    with pytest.raises(pydantic.ValidationError):
        config.enabled = False  # type: ignore[misc]


# -- the engine offers each detector only its indexed events ---------------------------------------
def recording(cls: type[Detector]) -> type[Detector]:
    class Recording(cls):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.seen: list[Event] = []

        def on_event(self, event: Event) -> Any:
            self.seen.append(event)
            return super().on_event(event)

    return Recording


def test_engine_offers_each_detector_only_its_indexed_events() -> None:
    detectors = [recording(detector_class(name))(detector_class(name).Config()) for name in NAMES]
    root, tampering, console = detectors
    errors: list[tuple[str, BaseException]] = []
    engine = DetectionEngine(detectors, on_error=lambda name, _e, err: errors.append((name, err)))
    evs = invictus_events() + [e for _, e in streamalert_events()]
    evs += events(cloudtrail_time(p.values[0]["event"]) for p in panther_cases())
    alerts = engine.process_many(evs)
    assert errors == []
    assert signature(alerts) == signature(run(all_detectors(), evs))
    assert len(root.seen) == len(evs)  # root activity can come from any API: no index possible
    assert tampering.seen and all(
        e.event_source == "cloudtrail.amazonaws.com" and e.event_name in CloudTrailTampering.event_names
        for e in tampering.seen
    )
    assert {e.event_name for e in tampering.seen} >= {"StopLogging", "DeleteTrail", "PutEventSelectors"}
    assert console.seen and all(
        (e.event_source, e.event_name) == ("signin.amazonaws.com", "ConsoleLogin") for e in console.seen
    )
    expected_console = sum(
        (e.event_source, e.event_name) == ("signin.amazonaws.com", "ConsoleLogin") for e in evs
    )
    assert len(console.seen) == expected_console
