"""``trailguard.resource.created_by_caller``: the creator of a secret or parameter reading it back is spared.

Proves, as a timeline through the real Sigma detector: a CI role that created a secret (session
A) reading it (session B) does not alert, anyone else does; a read of a never-seen resource
alerts; ARNs and names agree (Secrets Manager suffix, SSM slashes); a batch read is spared only
when the caller wrote every parameter; failed writes record nothing; the record survives a
snapshot/restore and stays bounded.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from detectors.event import Event
from detectors.sigma.creators import CreatorRecord
from detectors.sigma.detector import SigmaConfig, SigmaDetector

ACCOUNT = "111122223333"
CI_ROLE = f"arn:aws:iam::{ACCOUNT}:role/ci-deploy"
RULE_ID = "00000000-0000-4000-8000-000000000042"


def identity(session: str, role: str = CI_ROLE) -> dict[str, Any]:
    name = role.rsplit("/", 1)[1]
    return {"type": "AssumedRole", "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/{name}/{session}",
            "accountId": ACCOUNT,
            "sessionContext": {"sessionIssuer": {"type": "Role", "arn": role}}}


def event(name: str, params: dict[str, Any], who: dict[str, Any], n: int, **extra: Any) -> Event:
    source = "ssm.amazonaws.com" if "Parameter" in name else "secretsmanager.amazonaws.com"
    raw = {"eventVersion": "1.08", "eventTime": f"2024-03-01T10:{n:02d}:00Z", "eventName": name,
           "eventSource": source, "eventID": f"e{n}", "awsRegion": "eu-west-1", "recipientAccountId": ACCOUNT,
           "sourceIPAddress": "203.0.113.9", "userAgent": "Terraform/1.7", "userIdentity": copy.deepcopy(who),
           "requestParameters": params, **extra}
    return Event(raw)


def detector(tmp_path: Path, **config: Any) -> SigmaDetector:
    (tmp_path / "read.yml").write_text(yaml.safe_dump({
        "title": "Secret or parameter read by someone who did not write it", "id": RULE_ID,
        "logsource": {"product": "aws", "service": "cloudtrail"},
        "detection": {"read": {"eventName": ["GetSecretValue", "GetParameter", "GetParameters"]},
                      "creator": {"trailguard.resource.created_by_caller": True},
                      "condition": "read and not creator"}}))
    return SigmaDetector(SigmaConfig(paths=[str(tmp_path)], **config))


def fired(sigma: SigmaDetector, ev: Event) -> bool:
    return any(alert.rule_id == RULE_ID for alert in sigma.on_event(ev) or ())


def test_the_creating_role_reading_its_secret_back_is_not_an_alert(tmp_path: Path) -> None:
    sigma = detector(tmp_path)
    arn = f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:prod/db-Ab12Cd"
    assert not fired(sigma, event("CreateSecret", {"name": "prod/db"}, identity("run-1"), 0))
    assert not fired(sigma, event("GetSecretValue", {"secretId": "prod/db"}, identity("run-2"), 1))
    assert not fired(sigma, event("GetSecretValue", {"secretId": arn}, identity("run-3"), 2))
    intruder = identity("x", role=f"arn:aws:iam::{ACCOUNT}:role/web-app")
    assert fired(sigma, event("GetSecretValue", {"secretId": arn}, intruder, 3))
    assert fired(sigma, event("GetSecretValue", {"secretId": "never-seen"}, identity("run-4"), 4))
    # another region is another secret
    other_region = event("GetSecretValue", {"secretId": "prod/db"}, identity("run-5"), 5)
    other_region.raw["awsRegion"] = "us-east-1"
    assert fired(sigma, other_region)


def test_parameters_batch_reads_and_failed_writes(tmp_path: Path) -> None:
    sigma = detector(tmp_path)
    sigma.on_event(event("PutParameter", {"name": "/app/token"}, identity("a"), 0))
    sigma.on_event(event("PutParameter", {"name": "app/other"}, identity("a"), 1, errorCode="AccessDenied"))
    assert not fired(sigma, event("GetParameter", {"name": "app/token"}, identity("b"), 2))
    assert not fired(sigma, event("GetParameter", {"name": f"arn:aws:ssm:eu-west-1:{ACCOUNT}:parameter/app/token"},
                                  identity("b"), 3))
    assert fired(sigma, event("GetParameters", {"names": ["/app/token", "/app/other"]}, identity("c"), 4))
    sigma.on_event(event("PutParameter", {"name": "/app/other"}, identity("d"), 5))
    assert not fired(sigma, event("GetParameters", {"names": ["/app/token", "/app/other"]}, identity("e"), 6))


def test_the_record_is_checkpointed_and_bounded(tmp_path: Path) -> None:
    sigma = detector(tmp_path)
    sigma.on_event(event("CreateSecret", {"name": "prod/db"}, identity("run-1"), 0))
    saved = sigma.snapshot()
    restarted = detector(tmp_path)
    restarted.restore(saved)
    assert not fired(restarted, event("GetSecretValue", {"secretId": "prod/db"}, identity("run-2"), 1))
    fresh = detector(tmp_path)
    assert fired(fresh, event("GetSecretValue", {"secretId": "prod/db"}, identity("run-2"), 1))

    record = CreatorRecord(max_resources=3)
    for n in range(10):
        record.observe(event("CreateSecret", {"name": f"s{n}"}, identity("r"), n).raw)
    assert len(record) == 3
    assert record.writers_of_read(event("GetSecretValue", {"secretId": "s9"}, identity("r"), 11).raw) == [CI_ROLE]
    assert record.writers_of_read(event("GetSecretValue", {"secretId": "s0"}, identity("r"), 11).raw) is None
