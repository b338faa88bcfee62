"""What an alert tells the analyst: the resources touched, console links, the rule's summary template,
``fields:`` and runbook, and evidence bounded so that any alert can always be encoded."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import orjson
import pytest

from daemon.components import DEFAULT_RULE_PATHS
from daemon.delivery.sinks.file import FileSink, FileSinkConfig
from daemon.delivery.sinks.pagerduty import build_event
from daemon.delivery.sinks.slack import build_message
from daemon.delivery.spool import decode_alert, encode_alert
from daemon.rules_cli import RuleTestCase, load_tests, sidecar_path
from detectors.alert import Alert
from detectors.event import Event
from detectors.evidence import CUT_KEY, MAX_DEPTH, bound
from detectors.links import event_link, links_for, partition_of, principal_link
from detectors.resources import MAX_RESOURCES, resources_of
from detectors.sigma import load_rules
from detectors.sigma.alert_content import content_problems
from detectors.sigma.detector import SigmaConfig, SigmaDetector
from detectors.sigma.ruleset import CompiledRule
from detectors.summary_template import render_summary, template_problems

PACK = Path(DEFAULT_RULE_PATHS[0])

BASE = {
    "eventVersion": "1.08", "eventTime": "2023-07-10T12:00:00Z", "eventID": "e-1", "awsRegion": "eu-west-1",
    "recipientAccountId": "111122223333", "sourceIPAddress": "203.0.113.9", "userAgent": "aws-cli/2",
    "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::111122223333:user/mallory", "userName": "mallory",
                     "accountId": "111122223333"},
}


def event(name: str, source: str, params: object = None, **extra: object) -> Event:
    record = {**copy.deepcopy(BASE), "eventName": name, "eventSource": source, "requestParameters": params,
              **extra}
    return Event(record)


def kinds(resources: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(r["type"], r["id"]) for r in resources]


# -- resources: the pack -------------------------------------------------------------------------
@cache
def pack_detector() -> SigmaDetector:
    return SigmaDetector(SigmaConfig(paths=[str(PACK)]))


def pack_positives() -> list[tuple[CompiledRule, str, dict]]:
    rules, errors = load_rules([PACK])
    assert errors == []
    out = []
    for rule in rules.rules:
        tests = load_tests(sidecar_path(rule.path))
        for case in tests.get(rule.rule_id) or tests.get(None) or []:
            if isinstance(case, RuleTestCase) and case.expected:
                out.append((rule, f"{Path(rule.path).stem}:{case.name}", case.event))
    return out


def test_every_alert_of_the_pack_tests_names_a_resource_and_encodes() -> None:
    positives = pack_positives()
    assert len(positives) >= 150
    account_only = []
    for rule, label, record in positives:
        # the alert the rule makes (also for rules that only feed a correlation: generate: false)
        for alert in [pack_detector()._alert(rule, Event(record))]:
            assert alert.resources, f"{label}: no resource"
            assert all(r["type"] and r["id"] for r in alert.resources), label
            if all(r["type"] == "aws_account" for r in alert.resources):
                account_only.append(record["eventName"])
            wire = orjson.loads(orjson.dumps(alert.to_dict()))
            assert wire["resources"] == alert.resources
    # only calls that change an account-wide setting (or name nothing else) fall back to the account
    assert set(account_only) <= {
        "DisableEbsEncryptionByDefault", "EnableSerialConsoleAccess", "CreateSAMLProvider", "UpdateSAMLProvider",
        "DeleteSAMLProvider", "UpdateAssumeRolePolicy", "DeleteModelInvocationLoggingConfiguration",
        "UpdateMacieSession", "DisableSecurityHub", "BatchUpdateFindings", "LeaveOrganization",
        "DeleteOrganization", "RemoveAccountFromOrganization",
        # calls without request parameters (discovery, caller identity, sign-in token, model-access
        # use case): the account, beside the acting identity, is what they touch
        "ListUsers", "GetAccountAuthorizationDetails", "GetAccountSendingEnabled", "GetSendQuota",
        "GetCallerIdentity", "PutUseCaseForModelAccess", "GetSigninToken", "GetSessionToken",
        # the service event that reports a new member account: the account is the resource
        "CreateAccountResult",
        # the filter's id exists only in the response (trafficMirrorFilter.trafficMirrorFilterId)
        "CreateTrafficMirrorFilter"}, account_only


def test_security_group_rule_names_group_port_and_cidr() -> None:
    nested = {"groupId": "sg-0d921df5d84f7270a", "ipPermissions": {"items": [
        {"fromPort": 22, "toPort": 22, "ipProtocol": "tcp", "groups": {},
         "ipRanges": {"items": [{"cidrIp": "0.0.0.0/0"}]}, "ipv6Ranges": {"items": [{"cidrIpv6": "::/0"}]}},
        {"ipProtocol": "-1", "ipRanges": {"items": [{"cidrIp": "10.0.0.0/8"}]}}]}}
    found = resources_of(event("AuthorizeSecurityGroupIngress", "ec2.amazonaws.com", nested))
    assert found == [{"type": "security_group", "id": "sg-0d921df5d84f7270a",
                      "detail": "tcp 22 from 0.0.0.0/0, ::/0; all all ports from 10.0.0.0/8"}]
    flat = {"groupId": "sg-1", "ipPermissions": {}, "ipProtocol": "tcp", "fromPort": 3389, "toPort": 3390,
            "cidrIp": "0.0.0.0/0"}
    assert resources_of(event("AuthorizeSecurityGroupIngress", "ec2.amazonaws.com", flat))[0]["detail"] == \
        "tcp 3389-3390 from 0.0.0.0/0"


def test_snapshot_shared_with_an_account_names_both() -> None:
    params = {"snapshotId": "snap-041993b54a9b3af6f", "attributeType": "CREATE_VOLUME_PERMISSION",
              "createVolumePermission": {"add": {"items": [{"userId": "098797384747"}]}}}
    found = resources_of(event("ModifySnapshotAttribute", "ec2.amazonaws.com", params))
    assert found == [
        {"type": "ebs_snapshot", "id": "snap-041993b54a9b3af6f", "detail": "shared with 098797384747"},
        {"type": "aws_account", "id": "098797384747", "account_id": "098797384747",
         "detail": "given access to snapshot snap-041993b54a9b3af6f"}]
    public = {"imageId": "ami-1", "launchPermission": {"add": {"items": [{"group": "all"}]}}}
    assert resources_of(event("ModifyImageAttribute", "ec2.amazonaws.com", public))[0]["detail"] == \
        "shared with everyone (public)"


@pytest.mark.parametrize(("name", "source", "params", "response", "expected"), [
    ("CreateAccessKey", "iam.amazonaws.com", {"userName": "backdoor"},
     {"accessKey": {"accessKeyId": "AKIAEXAMPLE", "userName": "backdoor"}},
     [("iam_user", "backdoor"), ("access_key", "AKIAEXAMPLE")]),
    ("CreateAccessKey", "iam.amazonaws.com", None, {"accessKey": {"accessKeyId": "AKIASELF"}},
     [("iam_user", "mallory"), ("access_key", "AKIASELF")]),
    ("GetSecretValue", "secretsmanager.amazonaws.com", {"secretId": "prod/db"}, None, [("secret", "prod/db")]),
    ("StopLogging", "cloudtrail.amazonaws.com", {"name": "org-trail"}, None, [("cloudtrail_trail", "org-trail")]),
    ("GetParameters", "ssm.amazonaws.com", {"names": ["/a", "/b"], "withDecryption": True}, None,
     [("ssm_parameter", "/a"), ("ssm_parameter", "/b")]),
    ("DeleteObject", "s3.amazonaws.com", {"bucketName": "logs", "key": "2023/x.gz"}, None,
     [("s3_bucket", "logs"), ("s3_object", "logs/2023/x.gz")]),
    ("ScheduleKeyDeletion", "kms.amazonaws.com", {"keyId": "1234abcd"}, None, [("kms_key", "1234abcd")]),
    ("UpdateFunctionCode20150331v2", "lambda.amazonaws.com", {"functionName": "api"}, None,
     [("lambda_function", "api")]),
    ("AttachGroupPolicy", "iam.amazonaws.com", {"groupName": "ops", "policyArn": "arn:aws:iam::aws:policy/Admin"},
     None, [("iam_group", "ops"), ("iam_policy", "arn:aws:iam::aws:policy/Admin")]),
    ("DeleteFlowLogs", "ec2.amazonaws.com", {"DeleteFlowLogsRequest": {"FlowLogId": {"content": "fl-1", "tag": 1}}},
     None, [("ec2_flow_log", "fl-1")]),
    # an API no per-API reader knows: the generic reader still names what it acted on
    ("DeleteWidget", "widgets.amazonaws.com", {"widgetName": "w-1", "dryRun": False}, None,
     [("widgets_widget", "w-1")]),
    ("CreateSAMLProvider", "iam.amazonaws.com", None,
     {"sAMLProviderArn": "arn:aws:iam::111122223333:saml-provider/evil"},
     [("saml_provider", "arn:aws:iam::111122223333:saml-provider/evil")]),
])
def test_request_parameters_name_the_resource(name: str, source: str, params: object, response: object,
                                              expected: list[tuple[str, str]]) -> None:
    found = resources_of(event(name, source, params, responseElements=response))
    assert kinds(found) == expected


def test_cloudtrail_resources_merge_with_the_request_and_keep_arns() -> None:
    found = resources_of(event("GetParameter", "ssm.amazonaws.com", {"name": "/prod/db", "withDecryption": True},
                               resources=[{"ARN": "arn:aws:ssm:eu-west-1:111122223333:parameter/prod/db",
                                           "accountId": "111122223333", "type": "AWS::SSM::Parameter"}]))
    assert found == [{"type": "ssm_parameter", "id": "/prod/db", "detail": "read (decrypted)",
                      "arn": "arn:aws:ssm:eu-west-1:111122223333:parameter/prod/db", "account_id": "111122223333"}]
    only_ct = resources_of(event("PutBucketAcl", "s3.amazonaws.com", None, resources=[
        {"ARN": "arn:aws:s3:::public-bucket", "accountId": "111122223333", "type": "AWS::S3::Bucket"}]))
    assert kinds(only_ct) == [("s3_bucket", "public-bucket")]


def test_account_wide_settings_and_sign_ins_name_account_and_identity() -> None:
    assert resources_of(event("DisableEbsEncryptionByDefault", "ec2.amazonaws.com")) == [
        {"type": "aws_account", "id": "111122223333", "account_id": "111122223333",
         "detail": "account-wide: ec2.amazonaws.com DisableEbsEncryptionByDefault"}]
    login = resources_of(event("ConsoleLogin", "signin.amazonaws.com"))
    assert kinds(login) == [("iam_user", "mallory")]


def test_odd_shapes_never_raise_and_many_resources_are_capped() -> None:
    for params in (["not", "a", "mapping"], "text", {"instanceIds": [None, {}, 3]}, {"groupId": {"x": 1}},
                   {"ipPermissions": "garbage", "groupId": "sg-1"}):
        resources_of(event("AuthorizeSecurityGroupIngress", "ec2.amazonaws.com", params))
        resources_of(event("SendCommand", "ssm.amazonaws.com", params, resources="not-a-list"))
    many = resources_of(event("SendCommand", "ssm.amazonaws.com",
                              {"instanceIds": [f"i-{n:05d}" for n in range(200)],
                               "documentName": "AWS-RunShellScript"}))
    assert len(many) == MAX_RESOURCES + 1
    assert many[-1] == {"type": "omitted", "id": f"{200 + 1 - MAX_RESOURCES} more resources"}
    long = resources_of(event("GetSecretValue", "secretsmanager.amazonaws.com", {"secretId": "s" * 5000}))
    assert len(long[0]["id"]) == 512 and long[0]["id"].endswith("…")


# -- links ---------------------------------------------------------------------------------------
def test_event_links_are_regional_and_per_partition() -> None:
    assert event_link("a7d4-1", "eu-west-1") == \
        "https://eu-west-1.console.aws.amazon.com/cloudtrail/home?region=eu-west-1#/events/a7d4-1"
    assert event_link("x", "us-gov-west-1", "aws-us-gov") == \
        "https://console.amazonaws-us-gov.com/cloudtrail/home?region=us-gov-west-1#/events/x"
    assert event_link("x", "cn-north-1", partition_of(region="cn-north-1")) == \
        "https://console.amazonaws.cn/cloudtrail/home?region=cn-north-1#/events/x"
    assert event_link("x", "") is None and event_link("", "eu-west-1") is None
    assert event_link("x", "eu-west-1/../../evil") is None, "a forged region never builds a link"
    assert event_link("a/b#c?d", "eu-west-1").endswith("#/events/a%2Fb%23c%3Fd")


def test_principal_links_point_at_the_user_or_role() -> None:
    assert principal_link("arn:aws:iam::111122223333:user/ops/alice") == \
        "https://console.aws.amazon.com/iam/home#/users/details/alice"
    assert principal_link("arn:aws:sts::111122223333:assumed-role/Deploy/i-0abc") == \
        "https://console.aws.amazon.com/iam/home#/roles/details/Deploy"
    assert principal_link("arn:aws-us-gov:iam::111122223333:role/R") == \
        "https://console.amazonaws-us-gov.com/iam/home#/roles/details/R"
    assert principal_link("arn:aws:iam::111122223333:root") == "https://console.aws.amazon.com/iam/home#/home"
    assert principal_link("service:ec2.amazonaws.com") is None
    assert principal_link("arn:aws:iam::1:user/a b<c>|d") is None, "not a name IAM allows: no link"
    assert principal_link("arn:aws:iam::1:user/svc+ci=x,y.z@corp-1") == \
        "https://console.aws.amazon.com/iam/home#/users/details/svc%2Bci%3Dx%2Cy.z%40corp-1"
    links = links_for("e-9", "us-gov-east-1", "arn:aws-us-gov:iam::1:user/bob")
    assert links["event"].startswith("https://console.amazonaws-us-gov.com/cloudtrail/")


def test_single_event_alerts_carry_links() -> None:
    alerts = pack_detector().fork().on_event(event(
        "StopLogging", "cloudtrail.amazonaws.com", {"name": "org-trail"})) or []
    assert alerts and alerts[0].links == {
        "event": "https://eu-west-1.console.aws.amazon.com/cloudtrail/home?region=eu-west-1#/events/e-1",
        "principal": "https://console.aws.amazon.com/iam/home#/users/details/mallory"}


# -- summary templates, fields, runbooks ---------------------------------------------------------
RULE = """
title: Admin Port Opened To The World
id: 0b6d8f2e-1c3a-4b7e-9d10-5f0e1a2b3c4d
status: test
description: test rule
logsource: {product: aws, service: cloudtrail}
detection:
  selection: {eventName: AuthorizeSecurityGroupIngress}
  condition: selection
fields: [requestParameters.groupId, requestParameters.cidrIp, requestParameters.missing]
level: high
runbook: |
  1. Find who opened it.
  2. Revoke the rule.
alert_summary: >-
  {requestParameters.groupId} opened {requestParameters.fromPort} to {requestParameters.cidrIp}
  by {principal} ({requestParameters.description}) {{literal}}
"""


def test_rule_template_fields_and_runbook_reach_the_alert(tmp_path: Path) -> None:
    (tmp_path / "rule.yml").write_text(RULE)
    detector = SigmaDetector(SigmaConfig(paths=[str(tmp_path)]))
    assert detector.load_errors == []
    alert = (detector.on_event(event("AuthorizeSecurityGroupIngress", "ec2.amazonaws.com", {
        "groupId": "sg-1", "fromPort": 22, "toPort": 22, "cidrIp": "0.0.0.0/0", "ipProtocol": "tcp"})) or [])[0]
    assert alert.summary == ("sg-1 opened 22 to 0.0.0.0/0 by arn:aws:iam::111122223333:user/mallory "
                             "((no description)) {literal}")
    assert alert.fields == {"requestParameters.groupId": "sg-1", "requestParameters.cidrIp": "0.0.0.0/0",
                            "requestParameters.missing": None}
    assert alert.runbook == "1. Find who opened it.\n2. Revoke the rule."
    assert alert.to_dict()["fields"] == alert.fields


def test_default_sigma_summary_names_the_resource() -> None:
    # s3_bucket_deleted has no alert_summary template: the default sentence names the resource
    alert = (pack_detector().fork().on_event(event("DeleteBucket", "s3.amazonaws.com",
                                                   {"bucketName": "audit-logs"})) or [])[0]
    assert "s3_bucket audit-logs" in alert.summary
    assert alert.summary.endswith("by arn:aws:iam::111122223333:user/mallory from 203.0.113.9")
    # a rule with a template (cloudtrail_logging_stopped) renders it with the event's values
    templated = (pack_detector().fork().on_event(event("StopLogging", "cloudtrail.amazonaws.com",
                                                       {"name": "org-trail"})) or [])[0]
    assert templated.summary == ("CloudTrail StopLogging on org-trail by arn:aws:iam::111122223333:user/mallory "
                                 "from 203.0.113.9")


def test_templates_never_raise_and_bad_ones_are_reported() -> None:
    sample = event("X", "x.amazonaws.com", {"list": [1, 2, 3, 4, 5, 6, 7], "obj": {"b": 1, "a": [True]},
                                            "big": "y" * 1000})
    assert render_summary("{requestParameters.list}", sample) == "1, 2, 3, 4, 5 (+2 more)"
    assert render_summary("{requestParameters.obj}", sample) == '{"a":[true],"b":1}'
    assert len(render_summary("{requestParameters.big}", sample)) == 200
    assert render_summary("{ not a placeholder } {x.y.z} {resource}", sample) == \
        "{ not a placeholder } (no z) (no resource)"
    assert render_summary("{resource} / {resources}", sample, resources_of(sample)) == \
        "111122223333 (account-wide: x.amazonaws.com X) / 111122223333 (account-wide: x.amazonaws.com X)"
    assert render_summary("{region}/{account_id}/{source_ip}/{event_name}/{user_agent}", sample) == \
        "eu-west-1/111122223333/203.0.113.9/X/aws-cli/2"
    assert template_problems("{a} {b") and template_problems(3) and template_problems("  ")
    assert template_problems("{a} {{b}}") == []


def test_pack_rules_extension_attributes_are_valid() -> None:
    rules, _ = load_rules([PACK])
    problems = {rule.rule_id: content_problems(rule.rule) for rule in rules.rules if rule.rule is not None}
    assert {k: v for k, v in problems.items() if v} == {}


# -- evidence bounding ---------------------------------------------------------------------------
def nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth):
        value = {"n": value}
    return value


async def test_deep_and_huge_evidence_is_bounded_with_markers_and_always_encodes(tmp_path: Path) -> None:
    alert = Alert(detector="d", title="t", severity="high", time=1.7e9, summary="s", account_id="1",
                  event_ids=["e"], evidence={"deep": nested(600), "huge": "x" * 5_000_000,
                                             "wide": list(range(10_000)), "keys": {str(k): k for k in range(5000)},
                                             "odd": {1: b"bytes", "set": {1, 2}}})
    body = orjson.dumps(alert.to_dict())
    assert len(body) < 200_000
    wire = orjson.loads(body)["evidence"]
    node, depth = wire["deep"], 1
    while isinstance(node, dict):
        node, depth = node["n"], depth + 1
    assert depth == MAX_DEPTH - 1 and "nested deeper than" in node
    assert wire["huge"].endswith("chars]") and "…[+" in wire["huge"]
    assert wire["wide"][-1].endswith("more items cut]")
    assert CUT_KEY in wire["keys"]
    assert wire["odd"] == {"1": "b'bytes'", "set": "{1, 2}"}
    # every encoder the alert meets: spool, file sink, Slack, PagerDuty
    assert decode_alert(encode_alert(alert)).evidence == alert.evidence
    orjson.dumps(build_message(alert))
    orjson.dumps(build_event(alert, "key"))
    sink = FileSink(FileSinkConfig(type="file", path=str(tmp_path / "alerts.jsonl")))
    await sink.start()
    await sink.send([alert])
    await sink.stop()
    assert orjson.loads((tmp_path / "alerts.jsonl").read_bytes())["id"] == alert.id


def test_bound_returns_small_values_unchanged() -> None:
    small = {"a": [1, 2, {"b": "c"}], "d": None}
    assert bound(small) is small
    assert bound({"k": "v" * 10}, max_string=4) == {"k": "vvvv…[+6 chars]"}


def test_new_wire_fields_survive_the_spool() -> None:
    alert = (pack_detector().fork().on_event(event("StopLogging", "cloudtrail.amazonaws.com",
                                                   {"name": "org-trail"})) or [])[0]
    alert.account_name, alert.account = "prod", {"name": "prod", "environment": "prod", "owner": "", "tags": []}
    alert.identity_chain, alert.origin_principal = [{"principal": "a"}, {"principal": "b", "via": "AssumeRole"}], "a"
    back = decode_alert(encode_alert(alert))
    assert back.to_dict() == alert.to_dict()
