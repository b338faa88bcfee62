"""SigmaHQ's 57 AWS CloudTrail rules: all load, each fires on an event built from its own detection
and stays silent on a near miss, and a handful fire on real Stratus Red Team detonation records."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from sigma.conditions import (
    ConditionAND,
    ConditionIdentifier,
    ConditionNOT,
    ConditionOR,
    ConditionSelector,
)
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaDetections, SigmaRule
from sigma.types import (
    CompareOperators,
    SigmaBool,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaExpansion,
    SigmaFieldReference,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaString,
    SigmaType,
    SpecialChars,
)

from detectors.event import Event
from detectors.sigma import CompiledRule, RuleSet, load_rules
from detectors.sigma.compiler import condition_trees, detection_node, resolve_selector
from detectors.sigma.detector import SigmaConfig, SigmaDetector

DATA = Path(__file__).parent / "data" / "sigma"
SIGMAHQ = DATA / "sigmahq"
STRATUS = DATA / "stratus"
RULE_FILES = sorted(path.name for path in SIGMAHQ.glob("*.yml"))


@pytest.fixture(scope="module")
def ruleset() -> RuleSet:
    rules, errors = load_rules([SIGMAHQ])
    assert errors == []
    return rules


@pytest.fixture(scope="module")
def detector() -> SigmaDetector:
    return SigmaDetector(SigmaConfig(paths=[str(SIGMAHQ)]))


def by_file(ruleset: RuleSet, file_name: str) -> CompiledRule:
    (rule,) = [rule for rule in ruleset.rules if Path(rule.path).name == file_name]
    return rule


def test_all_sigmahq_cloudtrail_rules_load_without_errors(ruleset: RuleSet) -> None:
    assert len(RULE_FILES) == 57
    assert len(ruleset) == 57
    assert ruleset.errors == ()
    assert ruleset.skipped == ()
    assert len({rule.rule_id for rule in ruleset.rules}) == 57


# -- building events from a rule's own detection -----------------------------------------------


class EventBuilder:
    """Walks pySigma's parsed detection and writes a minimal record that makes it true (or false).

    Negated parts are made false by leaving their fields out (or, for ``null``, by setting them).
    ``required`` lists the fields set to satisfy a positive item, in order.
    """

    def __init__(self, rule: SigmaRule) -> None:
        self.rule = rule
        self.detections: SigmaDetections = rule.detection
        self.values: dict[str, Any] = {}
        self.absent: set[str] = set()
        self.required: list[str] = []

    def build(self) -> dict[str, Any]:
        self.node(condition_trees(self.rule)[0], want=True)
        raw: dict[str, Any] = {
            "eventVersion": "1.08",
            "eventTime": "2024-01-01T00:00:00Z",
            "eventName": "SigmaGeneratedEvent",
            "eventID": f"generated-{self.rule.id}",
        }
        for field, value in self.values.items():
            put(raw, field, value)
        return raw

    def node(self, node: Any, want: bool) -> None:
        node = detection_node(node)
        if isinstance(node, ConditionIdentifier):
            self.detection(self.detections[node.identifier], want)
        elif isinstance(node, ConditionSelector):
            names = resolve_selector(node, self.detections)
            conjunction = node.cond_class is ConditionAND
            self.combine([self.detections[name] for name in names], conjunction, want, self.detection)
        elif isinstance(node, ConditionNOT):
            self.node(node.args[0], not want)
        elif isinstance(node, (ConditionAND, ConditionOR)):
            self.combine(list(node.args), isinstance(node, ConditionAND), want, self.node)
        else:
            raise AssertionError(f"unexpected condition node {node!r}")

    @staticmethod
    def combine(children: list[Any], conjunction: bool, want: bool, visit: Any) -> None:
        if conjunction == want:  # true AND / false OR: every child gets the same truth
            for child in children:
                visit(child, want)
        else:  # true OR / false AND: one child decides
            visit(children[0], want)

    def detection(self, detection: SigmaDetection, want: bool) -> None:
        def visit(child: Any, truth: bool) -> None:
            if isinstance(child, SigmaDetectionItem):
                self.item(child, truth)
            else:
                self.detection(child, truth)

        self.combine(list(detection.detection_items), detection.item_linking is ConditionAND, want, visit)

    def item(self, item: SigmaDetectionItem, want: bool) -> None:
        if item.negated:
            want = not want
        field = item.field or "generatedKeywordCarrier"
        values = list(item.value) or [SigmaNull()]
        first = values[0]
        if not want:
            if isinstance(first, SigmaNull) or (isinstance(first, SigmaExists) and not first.exists):
                self.values.setdefault(field, "generated-non-null")
            elif field not in self.values:
                self.absent.add(field)
            return
        if isinstance(first, SigmaNull) or (isinstance(first, SigmaExists) and not first.exists):
            return  # left out
        if item.value_linking is ConditionAND and len(values) > 1:
            value: Any = " ".join(str(self.example(field, each)) for each in values)
        else:
            value = self.example(field, first)
        self.values[field] = value
        self.required.append(field)

    def example(self, field: str, value: SigmaType) -> Any:
        if isinstance(value, SigmaExpansion):
            return self.example(field, value.values[0])
        if isinstance(value, SigmaString):
            return "".join(
                part if isinstance(part, str) else ("x" if part is SpecialChars.WILDCARD_SINGLE else "")
                for part in value.s
            )
        if isinstance(value, SigmaNumber):
            return value.number
        if isinstance(value, SigmaBool):
            return bool(value.boolean)
        if isinstance(value, SigmaExists):
            return "exists"
        if isinstance(value, SigmaCIDRExpression):
            return str(next(iter(value.network.hosts())))
        if isinstance(value, SigmaCompareExpression):
            bound = value.number.number
            return bound + {CompareOperators.LT: -1, CompareOperators.GT: 1}.get(value.op, 0)
        if isinstance(value, SigmaFieldReference):
            self.values[value.field] = "referenced-value"
            return "referenced-value"
        if isinstance(value, SigmaRegularExpression):
            source = str(value.regexp)
            text = source.replace(".+", "x").replace(".*", "").lstrip("^").rstrip("$").replace("\\", "")
            assert re.search(source, text), f"cannot build an example for regex {source!r}"
            return text
        raise AssertionError(f"no example for {value!r}")


def put(raw: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = raw
    for step in parents:
        child = node.get(step)
        if not isinstance(child, dict):
            child = node[step] = {}
        node = child
    node[last] = value


def drop(raw: dict[str, Any], path: str) -> None:
    *parents, last = path.split(".")
    node = raw
    for step in parents:
        node = node[step]
    del node[last]


def near_miss(raw: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """The positive record with one required field broken: the eventName if the rule needs one."""
    missed = copy.deepcopy(raw)
    if "eventName" in required:
        missed["eventName"] = "NotTheEventNameTheRuleWants"
    else:
        drop(missed, required[0])
    return missed


def fired(detector: SigmaDetector, raw: dict[str, Any]) -> set[str]:
    return {alert.rule_id or "" for alert in detector.on_event(Event(raw)) or ()}


@pytest.mark.parametrize("file_name", RULE_FILES)
def test_each_rule_fires_on_its_own_example_and_not_on_a_near_miss(
    file_name: str, ruleset: RuleSet, detector: SigmaDetector
) -> None:
    rule = by_file(ruleset, file_name)
    assert rule.rule is not None
    builder = EventBuilder(rule.rule)
    positive = builder.build()
    assert rule.rule_id in fired(detector, positive), positive
    assert builder.required, "a rule that needs no field would match everything"
    negative = near_miss(positive, builder.required)
    assert not rule.matches(negative)
    assert rule.rule_id not in fired(detector, negative), negative


# -- real records ------------------------------------------------------------------------------

#: Stratus Red Team detonation file → the SigmaHQ rule files that must fire on its records, by eventName.
EXPECTED_ON_REAL_RECORDS: dict[str, set[tuple[str, str]]] = {
    "aws.defense-evasion.cloudtrail-stop.json": {("StopLogging", "aws_cloudtrail_disable_logging.yml")},
    "aws.defense-evasion.cloudtrail-delete.json": {("DeleteTrail", "aws_cloudtrail_disable_logging.yml")},
    "aws.defense-evasion.vpc-remove-flow-logs.json": {
        ("DeleteFlowLogs", "aws_cloudtrail_vpc_flow_logs_deleted.yml")
    },
    "aws.exfiltration.ec2-share-ebs-snapshot.json": {
        ("ModifySnapshotAttribute", "aws_snapshot_backup_exfiltration.yml")
    },
    "aws.exfiltration.ec2-security-group-open-port-22-ingress.json": {
        ("AuthorizeSecurityGroupIngress", "aws_cloudtrail_security_group_change_ingress_egress.yml")
    },
    "aws.privilege-escalation.iam-update-user-login-profile.json": {
        ("UpdateLoginProfile", "aws_update_login_profile.yml")
    },
    "aws.persistence.iam-backdoor-user.json": {("CreateAccessKey", "aws_iam_backdoor_users_keys.yml")},
    "aws.execution.ssm-send-command.json": {("SendCommand", "aws_cloudtrail_ssm_malicious_usage.yml")},
    "aws.persistence.lambda-layer-extension.json": {
        ("UpdateFunctionConfiguration20150331v2", "aws_new_lambda_layer_attached.yml")
    },
    "aws.initial-access.console-login-without-mfa.json": {
        ("ConsoleLogin", "aws_cloudtrail_console_login_success_without_mfa.yml")
    },
    # The real ModifyInstanceAttribute record carries requestParameters.userData, not
    # requestParameters.attribute = userData, so aws_ec2_startup_script_change.yml stays silent.
    "aws.execution.ec2-user-data.json": set(),
}


@pytest.mark.parametrize("file_name", sorted(EXPECTED_ON_REAL_RECORDS))
def test_sigmahq_rules_on_real_stratus_records(
    file_name: str, ruleset: RuleSet, detector: SigmaDetector
) -> None:
    files = {rule.rule_id: Path(rule.path).name for rule in ruleset.rules}
    records = orjson.loads((STRATUS / file_name).read_bytes())
    seen: set[tuple[str, str]] = set()
    for raw in records:
        for alert in detector.on_event(Event(raw)) or ():
            seen.add((raw["eventName"], files[alert.rule_id or ""]))
    assert seen == EXPECTED_ON_REAL_RECORDS[file_name]


def test_stop_logging_alert_carries_the_rule_metadata(detector: SigmaDetector) -> None:
    (raw,) = orjson.loads((STRATUS / "aws.defense-evasion.cloudtrail-stop.json").read_bytes())
    (alert,) = detector.on_event(Event(raw)) or ()
    assert alert.detector == "sigma"
    assert alert.rule_id == "4db60cc0-36fb-42b7-9b58-a5b53019fb74"
    assert alert.title == "AWS CloudTrail Important Change"
    assert alert.severity == "medium"
    assert alert.tags == ["attack.defense-impairment", "attack.t1685.002"]
    assert alert.event_ids == [raw["eventID"]]
    assert alert.evidence["event_name"] == "StopLogging"
    assert alert.evidence["rule_file"] == "aws_cloudtrail_disable_logging.yml"
    assert alert.evidence["falsepositives"] == ["Valid change in a Trail"]
    assert alert.evidence["references"] == [
        "https://docs.aws.amazon.com/awscloudtrail/latest/userguide/best-practices-security.html"
    ]
    assert alert.evidence["description"] == "Detects disabling, deleting and updating of a Trail"
    again = detector.on_event(Event(raw)) or ()
    assert [a.id for a in again] == [alert.id]  # deterministic alert id
