"""Rule tests for the ``cloudtrail_tampering`` detector, the part of CloudTrail tampering Sigma cannot say.

StopLogging/DeleteTrail/DeleteEventDataStore/StopEventDataStoreIngestion and the former
``root_activity``/``console_login_without_mfa`` detectors are rules of the Sigma pack now
(``config/rules``, tested by ``tests/test_rule_pack.py``); what stays in Python is judging whether
UpdateTrail, PutEventSelectors, UpdateEventDataStore or PutInsightSelectors *reduce* logging.

Samples come from ``tests/data/builtin`` (see ``tests/data/README-builtin.md``): Stratus Red Team
detonations, the Invictus IR attack-simulation account, Panther's and StreamAlert's labelled rule
tests.  Variants that no public capture contains (UpdateTrail flags, advanced selectors, CloudTrail
Lake calls) are built from a real record used as a template, one changed field at a time.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest

from detectors.alert import Alert
from detectors.base import Detector
from detectors.cloudtrail_tampering import CloudTrailTampering
from detectors.engine import DetectionEngine
from detectors.event import Event
from detectors.registry import DETECTORS, detector_class

DATA = Path(__file__).parent / "data" / "builtin"
Signature = tuple[str, str, tuple[str, ...]]


# -- loading -------------------------------------------------------------------------------------
_PANTHER_TIME = re.compile(r"^(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d)")


def cloudtrail_time(raw: dict[str, Any]) -> dict[str, Any]:
    """Give a labelled test record a CloudTrail ``eventTime`` (returns a copy).

    Panther stores times as ``2024-11-25 17:51:21.000000000`` and StreamAlert redacts some to
    ``...``; real CloudTrail always writes ``2024-11-25T17:51:21Z``.  Only the time is rewritten.
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


def make(**config: Any) -> CloudTrailTampering:
    return CloudTrailTampering(CloudTrailTampering.Config(**config))


def run(detectors: Iterable[Detector], evs: Iterable[Event]) -> list[Alert]:
    evs = list(evs)
    return [alert for detector in detectors for event in evs for alert in (detector.on_event(event) or ())]


def signature(alerts: Iterable[Alert]) -> set[Signature]:
    return {(a.detector, a.severity, tuple(a.event_ids)) for a in alerts}


# -- Stratus Red Team detonations ----------------------------------------------------------------
STRATUS = {
    # the blunt forms are Sigma rules now: the detector stays silent on them
    "aws.defense-evasion.cloudtrail-stop.json": set(),
    "aws.defense-evasion.cloudtrail-delete.json": set(),
    "aws.defense-evasion.cloudtrail-event-selectors.json": {
        ("cloudtrail_tampering", "high", ("c2a89408-340a-42f0-8ace-75d9f5769393",)),
    },
    "aws.initial-access.console-login-without-mfa.json": set(),
}


@pytest.mark.parametrize("file_name", sorted(STRATUS))
def test_stratus_detonation_yields_exactly_the_expected_alerts(file_name: str) -> None:
    alerts = run([make()], events(records(DATA / "stratus" / file_name)))
    assert signature(alerts) == STRATUS[file_name]


def test_stratus_event_selectors_evidence_lists_what_was_reduced() -> None:
    (alert,) = run([make()], events(records(DATA / "stratus" / "aws.defense-evasion.cloudtrail-event-selectors.json")))
    assert alert.evidence["finding"] == "event_selectors_reduced"
    assert alert.evidence["reduced"] == ["includeManagementEvents=false"]
    assert alert.evidence["target"] == "stratus-red-team-ctes-trail-khlvciwdor"
    assert alert.evidence["attempt_failed"] is False
    assert "christophe" in alert.summary and "958312252124" in alert.summary
    assert "cn-northsouth-2r" in alert.summary
    # it names the trail and what was reduced on it
    assert alert.resources == [{"type": "cloudtrail_trail", "id": "stratus-red-team-ctes-trail-khlvciwdor",
                                "account_id": "958312252124", "detail": "includeManagementEvents=false"}]


# -- Invictus IR: a real account during a Stratus run, with Terraform and console background -----
def invictus_events() -> list[Event]:
    return events(raw for path in sorted((DATA / "invictus").glob("*.json")) for raw in records(path))


def test_invictus_account_yields_exactly_the_expected_alerts() -> None:
    """Only the PutEventSelectors that turns management events off; the PutEventSelectors that
    restores full logging, CreateTrail, StartLogging, the StopLogging/DeleteTrail calls (Sigma rules
    now) and ~130 unrelated calls stay silent."""
    evs = invictus_events()
    assert len(evs) > 150
    assert signature(run([make()], evs)) == {
        ("cloudtrail_tampering", "high", ("076e96d5-2983-473f-920a-2fc2d7e02777",)),
    }


def test_invictus_negatives_are_present_and_silent() -> None:
    evs = {e.event_id: e for e in invictus_events()}
    detector = make()
    silent = {
        "3d6df238-f83c-4a34-bea8-45cf80a2050b": "PutEventSelectors restoring All + management events",
        "ad384a22-c03e-4f3c-8520-86a31e79378d": "CreateTrail",
        "98cf02da-a187-453b-87fe-884d93a06a4c": "StartLogging",
        "c7dacac3-3977-4e60-97db-a41233dc562b": "DescribeTrails",
        "0a848416-a168-4b62-ac9f-fa8ade684ec3": "LookupEvents",
        "c289d324-db2c-45c2-97a5-93840c84fed2": "GetEventSelectors",
        "f50c0906-d905-4f34-a4fe-ce9b1f115fbf": "GetTrailStatus",
        "9790ee84-ed2b-4866-83d1-f32af0dd4cd2": "StopLogging (a Sigma rule now)",
        "c0057a42-1625-4b1d-9db5-352f931f790a": "DeleteTrail (a Sigma rule now)",
    }
    for event_id, what in silent.items():
        assert run([detector], [evs[event_id]]) == [], what


# -- Panther's labelled rule tests -----------------------------------------------------------------
def panther_cases() -> list[Any]:
    cases = []
    for line in (DATA / "panther_cases.ndjson").read_bytes().splitlines():
        case = orjson.loads(line)
        if case["rule_id"] == "AWS.CloudTrail.EventSelectorsDisabled":
            cases.append(pytest.param(case, id=case["test_name"]))
    return cases


@pytest.mark.parametrize("case", panther_cases())
def test_panther_event_selectors_case(case: dict[str, Any]) -> None:
    alerts = make().on_event(Event(cloudtrail_time(case["event"]), "panther")) or []
    flagged = any(a.evidence["finding"] == "event_selectors_reduced" for a in alerts)
    assert flagged is case["expected_alert"]


# -- StreamAlert's labelled samples ---------------------------------------------------------------
def streamalert_events() -> list[tuple[str, Event]]:
    cases = orjson.loads((DATA / "streamalert_cases.json").read_bytes())
    return [(case["description"], Event(cloudtrail_time(case["record"]), "streamalert")) for case in cases]


def test_streamalert_update_trail_removing_encryption() -> None:
    by_description = dict(streamalert_events())
    (update,) = make().on_event(
        by_description["Updating an AWS CloudTrail trail (UpdateTrail) will create an alert."]) or []
    assert (update.severity, update.evidence["reduced"]) == (
        "high", ["kmsKeyId removed (logs no longer KMS-encrypted)"])
    assert not make().on_event(by_description[
        "Suspending the recording of AWS API calls and log file delivery for a trail will create an alert."
    ])


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
    ("DeleteEventDataStore", {"eventDataStore": "arn:aws:cloudtrail:us-east-1:1:eventdatastore/x"}, None, []),
    ("StopEventDataStoreIngestion", {"eventDataStore": "x"}, None, []),
    ("StopLogging", {"name": "t"}, None, []),
    ("DeleteTrail", {"name": "t"}, None, []),
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
    alerts = make().on_event(event) or []
    if severity is None:
        assert alerts == []
        return
    (alert,) = alerts
    assert alert.severity == severity
    assert alert.evidence.get("reduced", []) == reduced
    assert alert.evidence["requestParameters"] == params


def test_failed_reduction_is_one_level_lower_and_failed_no_op_stays_silent() -> None:
    detector = make()
    (alert,) = detector.on_event(
        cloudtrail_call("UpdateTrail", {"name": "t", "isMultiRegionTrail": False}, "AccessDenied")) or []
    assert (alert.severity, alert.evidence["attempt_failed"]) == ("medium", True)
    assert not detector.on_event(cloudtrail_call("UpdateTrail", {"name": "t", "isMultiRegionTrail": True}, "x"))


def test_tampering_tuning_knobs() -> None:
    ignoring = make(ignore_trails=["data-events-*", "arn:aws:cloudtrail:*:trail/lab"])
    assert not ignoring.on_event(cloudtrail_call("UpdateTrail", {"name": "data-events-s3",
                                                                 "isMultiRegionTrail": False}))
    assert not ignoring.on_event(cloudtrail_call("PutEventSelectors", {
        "trailName": "arn:aws:cloudtrail:us-east-1:1:trail/lab", "eventSelectors": []}))
    assert ignoring.on_event(cloudtrail_call("UpdateTrail", {"name": "org-trail", "isMultiRegionTrail": False}))
    buckets = make(allowed_s3_buckets=["corp-audit-*"])
    assert not buckets.on_event(cloudtrail_call("UpdateTrail", {"name": "t", "s3BucketName": "corp-audit-2"}))
    assert buckets.on_event(cloudtrail_call("UpdateTrail", {"name": "t", "s3BucketName": "elsewhere"}))
    retention = make(min_retention_days=30)
    assert not retention.on_event(cloudtrail_call("UpdateEventDataStore", {"eventDataStore": "x",
                                                                           "retentionPeriod": 90}))
    lowered = make(severity="medium")
    (alert,) = lowered.on_event(cloudtrail_call("UpdateTrail", {"name": "t", "isMultiRegionTrail": False})) or []
    assert alert.severity == "low"


def test_tampering_ignores_same_names_from_other_services() -> None:
    raw = copy.deepcopy(TEMPLATE)
    raw.update(eventSource="example.amazonaws.com", requestParameters={"trailName": "t", "eventSelectors": []})
    assert not make().on_event(Event(raw))


# -- alert identity, wire form, registry, config -----------------------------------------------------
def all_fixture_alerts() -> list[Alert]:
    evs = invictus_events()
    evs += [e for _, e in streamalert_events()]
    evs += [cloudtrail_call(name, params) for name, params, _, _ in TAMPERING_VARIANTS]
    return run([make()], evs)


def test_alerts_round_trip_through_to_dict_and_are_deterministic() -> None:
    alerts = all_fixture_alerts()
    assert len(alerts) > 10
    assert [a.id for a in alerts] == [a.id for a in all_fixture_alerts()]
    for alert in alerts:
        wire = alert.to_dict()
        assert orjson.loads(orjson.dumps(wire)) == wire
        assert re.fullmatch(r"[0-9a-f]{32}", wire["id"]) and wire["event_ids"] == alert.event_ids
        assert wire["tags"] and all(t.startswith("attack.") for t in wire["tags"])
        assert wire["runbook"] and wire["summary"].endswith(".")
        assert wire["evidence"]["finding"] and wire["evidence"]["reduced"]
        assert isinstance(wire["evidence"]["attempt_failed"], bool)


def test_migrated_detectors_are_gone_from_the_registry() -> None:
    """root_activity and console_login_without_mfa are Sigma rules of the pack now."""
    assert "root_activity" not in DETECTORS and "console_login_without_mfa" not in DETECTORS
    assert "cloudtrail_tampering" in DETECTORS and "sigma" in DETECTORS


def test_registry_metadata_and_strict_config() -> None:
    cls = detector_class("cloudtrail_tampering")
    assert cls is CloudTrailTampering and cls.name == "cloudtrail_tampering"
    module_doc = __import__(cls.__module__, fromlist=["_"]).__doc__ or ""
    assert "Known false positives" in module_doc and "Parameters" in module_doc
    assert cls.runbook and any(t.startswith("attack.t") for t in cls.tags)
    assert cls.event_names == frozenset({"UpdateTrail", "PutEventSelectors", "UpdateEventDataStore",
                                         "PutInsightSelectors"})
    with pytest.raises(pydantic.ValidationError):
        cls.Config(no_such_knob=True)
    with pytest.raises(pydantic.ValidationError):
        cls.Config(severity="hgih")
    config = cls.Config()
    with pytest.raises(pydantic.ValidationError):
        config.enabled = False  # type: ignore[misc]


# -- the engine offers the detector only its indexed events ----------------------------------------
class Recording(CloudTrailTampering):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[Event] = []

    def on_event(self, event: Event) -> Any:
        self.seen.append(event)
        return super().on_event(event)


def test_engine_offers_the_detector_only_its_indexed_events() -> None:
    detector = Recording(CloudTrailTampering.Config())
    errors: list[tuple[str, BaseException]] = []
    engine = DetectionEngine([detector], on_error=lambda name, _e, err: errors.append((name, err)))
    evs = invictus_events() + [e for _, e in streamalert_events()]
    alerts = engine.process_many(evs)
    assert errors == []
    assert signature(alerts) == signature(run([make()], evs))
    assert detector.seen and all(
        e.event_source == "cloudtrail.amazonaws.com" and e.event_name in CloudTrailTampering.event_names
        for e in detector.seen
    )
    assert {e.event_name for e in detector.seen} == {"PutEventSelectors", "UpdateTrail"}
