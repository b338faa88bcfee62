"""Derived ``trailguard.policy.*`` fields: policy documents judged the way IAM does, in Sigma rules.

Proves: Panther's labelled "resource made public" samples get the same verdict from a one-line
Sigma rule on ``trailguard.policy.public``; the two review evasions (own account next to a foreign
one in a trust policy; any Condition anywhere) no longer silence rules; restricting and
non-restricting conditions, Deny statements, NotPrincipal/NotAction and wildcards are judged as
IAM does; the policy is evaluated lazily, once per event, only for events that carry one.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

import detectors.sigma.derived as derived
from detectors.sigma import load_sources
from detectors.sigma.policy import evaluate_policy

SAMPLES = [orjson.loads(line) for line in
           (Path(__file__).parent / "data" / "policy" / "panther_policy_samples.ndjson").read_bytes().splitlines()]
OWN = "123456789012"
OTHER = "999988887777"


def rule(detection: dict[str, Any], n: int = 1) -> str:
    return yaml.safe_dump({"title": f"policy rule {n}", "id": f"00000000-0000-4000-8000-{n:012d}",
                           "logsource": {"product": "aws", "service": "cloudtrail"}, "detection": detection})


def compiled(detection: dict[str, Any]) -> Any:
    rules, errors = load_sources([("policy.yml", rule(detection))])
    assert errors == []
    return rules.rules[0]


PUBLIC_RULE = {"s": {"trailguard.policy.public": True}, "failed": {"errorCode|exists": True},
               "condition": "s and not failed"}


@pytest.mark.parametrize("sample", [s for s in SAMPLES if s["rule_id"] == "AWS.CloudTrail.ResourceMadePublic"],
                         ids=lambda s: s["test_name"])
def test_panther_resource_made_public_samples(sample: dict[str, Any]) -> None:
    assert compiled(PUBLIC_RULE).matches(sample["event"]) is sample["expected_alert"]


def trust_event(statements: list[dict[str, Any]], as_text: bool = True) -> dict[str, Any]:
    backdoor = next(s for s in SAMPLES if s["rule_id"] == "AWS.IAM.BackdoorRole" and s["expected_alert"])
    event = copy.deepcopy(backdoor["event"])
    event["recipientAccountId"] = OWN
    document = {"Version": "2012-10-17", "Statement": statements}
    event["requestParameters"]["policyDocument"] = orjson.dumps(document).decode() if as_text else document
    return event


def allow(principal: Any, action: Any = "sts:AssumeRole", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Principal": principal, "Action": action, **extra}


EXTERNAL_RULE = {"s": {"eventName": "UpdateAssumeRolePolicy", "trailguard.policy.external": True},
                 "condition": "s"}


def test_own_account_next_to_a_foreign_one_does_not_hide_it() -> None:
    external = compiled(EXTERNAL_RULE)
    own_and_other = trust_event([allow({"AWS": [f"arn:aws:iam::{OWN}:root", f"arn:aws:iam::{OTHER}:role/x"]})])
    assert external.matches(own_and_other)
    assert compiled({"s": {"trailguard.policy.external_accounts": OTHER}, "condition": "s"}).matches(own_and_other)
    assert not external.matches(trust_event([allow({"AWS": f"arn:aws:iam::{OWN}:role/ci"})]))
    assert not external.matches(trust_event([allow({"Service": "ec2.amazonaws.com"})]))
    assert external.matches(trust_event([allow({"AWS": OTHER})], as_text=False))  # bare account id, object form


def test_a_condition_elsewhere_does_not_silence_a_public_grant() -> None:
    deny_insecure = {"Effect": "Deny", "Principal": "*", "Action": "*",
                     "Condition": {"Bool": {"aws:SecureTransport": "false"}}}
    verdict = evaluate_policy({"Statement": [allow("*", "s3:GetObject"), deny_insecure]}, OWN)
    assert verdict.public and verdict.public_actions == ["s3:getobject"]
    # a condition that does not restrict who: still public, and the key is reported
    loose = evaluate_policy({"Statement": [allow({"AWS": "*"}, "s3:*", Condition={
        "Bool": {"aws:SecureTransport": "true"}})]}, OWN)
    assert loose.public and loose.conditions == ["aws:securetransport"]


@pytest.mark.parametrize(("condition", "public"), [
    ({"StringEquals": {"aws:SourceAccount": OWN}}, False),
    ({"ArnLike": {"aws:SourceArn": "arn:aws:s3:::logs"}}, False),
    ({"StringEquals": {"aws:PrincipalOrgID": "o-abc123"}}, False),
    ({"ForAnyValue:StringLike": {"aws:PrincipalOrgPaths": "o-a/r-b/*"}}, False),
    ({"StringEquals": {"aws:SourceVpce": "vpce-1"}}, False),
    ({"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}}, False),
    ({"StringEqualsIfExists": {"aws:SourceAccount": OWN}}, True),  # absent key passes
    ({"StringNotEquals": {"aws:SourceAccount": OWN}}, True),  # everyone else is allowed
    ({"StringLike": {"aws:PrincipalOrgID": "*"}}, True),  # a bare wildcard restricts nothing
    ({"StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"}}, True),
])
def test_which_conditions_restrict_a_public_grant(condition: dict[str, Any], public: bool) -> None:
    assert evaluate_policy({"Statement": [allow("*", "sqs:SendMessage", Condition=condition)]}, OWN).public is public


def test_deny_everyone_outside_the_organisation_takes_a_public_grant_back() -> None:
    outside = {"Effect": "Deny", "Principal": "*", "Action": "s3:*",
               "Condition": {"StringNotEquals": {"aws:PrincipalOrgID": "o-abc123"}}}
    assert not evaluate_policy({"Statement": [allow("*", "s3:GetObject"), outside]}, OWN).public
    # a deny that does not cover the granted action takes nothing back
    narrow = dict(outside, Action="s3:PutObject")
    assert evaluate_policy({"Statement": [allow("*", "s3:GetObject"), narrow]}, OWN).public


def test_not_principal_not_action_wildcards_and_admin() -> None:
    assert evaluate_policy({"Statement": [{"Effect": "Allow", "NotPrincipal": {"AWS": OTHER},
                                           "Action": "s3:GetObject"}]}, OWN).public
    verdict = evaluate_policy({"Statement": {"Effect": "Allow", "Action": ["iam:Get*", "S3:List*"],
                                             "Resource": "*"}}, OWN)
    assert verdict.grants_actions == ["iam:get*", "s3:list*"] and not verdict.admin and not verdict.public
    assert evaluate_policy({"Statement": [{"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}]}, OWN).admin
    assert evaluate_policy({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}, OWN).admin
    assert not evaluate_policy({"Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}]}, OWN).admin
    assert evaluate_policy("not json", OWN).error is not None
    assert evaluate_policy({"Version": "2012-10-17"}, OWN).error == "policy has no Statement"


def test_policy_fields_are_absent_without_a_policy_and_evaluated_once_per_event(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = derived.evaluate_policy

    def counting(document: Any, own: str) -> Any:
        calls.append(own)
        return real(document, own)

    monkeypatch.setattr(derived, "evaluate_policy", counting)
    rules, errors = load_sources([("a.yml", rule(PUBLIC_RULE, 1)),
                                  ("b.yml", rule({"s": {"trailguard.policy.present": True}, "condition": "s"}, 2)),
                                  ("c.yml", rule({"s": {"trailguard.policy.kind": None}, "condition": "s"}, 3))])
    assert errors == []
    public = next(s["event"] for s in SAMPLES if s["test_name"] == "S3 Made Publicly Accessible")
    fired = [r.rule_id[-1] for r in rules.rules if r.matches(public)]
    assert fired == ["1", "2"] and len(calls) == 1
    no_policy = copy.deepcopy(public)
    no_policy["eventName"] = "GetBucketPolicy"
    assert [r.rule_id[-1] for r in rules.rules if r.matches(no_policy)] == ["3"]
    assert len(calls) == 1  # no document, nothing evaluated


def test_an_unknown_derived_field_is_refused_with_the_known_ones() -> None:
    rules, errors = load_sources([("x.yml", rule({"s": {"trailguard.policy.pubic": True}, "condition": "s"}))])
    assert len(rules) == 0 and "trailguard.policy.public" in errors[0].reason
