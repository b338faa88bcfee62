"""Precision of the shipped pack: baselines instead of per-call alerts, the creator spared, Invictus noise.

Proves, through the real pack in a real :class:`~detectors.engine.DetectionEngine` (timelines in
event time, negative first):

* the creator record sees its write events even though no pack rule matches ``CreateSecret`` /
  ``PutParameter`` / ``CreateBucket`` (the engine index used to keep them from the detector, so
  "the caller created it" was always false in the daemon);
* first-read rules: a new reader of an established secret fires once (low: a ticket, not a page),
  the same secret spelled by ARN and by name is one secret, the creator reading back never fires,
  and the state is checkpointed (a restart does not forget who is known, nor who created what);
* tearing down what one created folds into the destruction burst instead of one incident per call,
  while the same deletion by anyone else still alerts, and a trail deletion alerts whoever does it;
* Invictus-IR replay (``bench/invictus_precision.py``): at most three false-positive incidents, all
  30 Stratus sessions still surfaced.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from bench.invictus_precision import DATA, MAX_FALSE_POSITIVE_INCIDENTS, MIN_SESSIONS_SURFACED, measure
from daemon.components import DEFAULT_RULE_PATHS
from detectors.alert import Alert
from detectors.base import DetectorContext
from detectors.engine import DetectionEngine
from detectors.event import Event, format_time
from detectors.sigma.creators import CreatorRecord
from detectors.sigma.detector import SigmaConfig, SigmaDetector

PACK = Path(DEFAULT_RULE_PATHS[0])
DAY = 86_400.0
START = 1_704_067_200.0
ACCOUNT = "123837392027"
SECRET_FIRST_READ = "c2f4a1de-5b7e-4d0c-9a3e-6f1b2c8d7e01"
SSM_FIRST_READ = "8a7e3f20-6c1d-4b95-a0e8-2d4f9b7c6e03"
BEDROCK_FIRST = "7b3f9d08-2e6a-4c51-8f0d-5a9c1e7b3d08"
BUCKET_DELETED = "86380de5-c5f2-5c13-a281-f19d4d7d5075"
AMI_DEREGISTERED = "f8870ae9-fa18-54f7-94a0-da103efdf8ee"
TRAIL_DELETED = "7c48a9a6-c5e1-580c-990e-51914acc71e2"
DESTRUCTION_BURST = "5436f814-6b20-566b-8368-b35354488ea5"
SECRET_ARN = f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:prod/orders/db-AbC123"


@cache
def _pack() -> SigmaDetector:
    detector = SigmaDetector(SigmaConfig(paths=[str(PACK)]))
    assert detector.load_errors == []
    return detector


def engine() -> tuple[DetectionEngine, SigmaDetector]:
    detector = _pack().fork(context=DetectorContext())
    return DetectionEngine([detector]), detector


def role(name: str, session: str = "s1") -> dict[str, Any]:
    return {"type": "AssumedRole", "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/{name}/{session}",
            "accountId": ACCOUNT, "principalId": f"AROAEXAMPLE:{session}",
            "sessionContext": {"sessionIssuer": {"type": "Role", "arn": f"arn:aws:iam::{ACCOUNT}:role/{name}",
                                                 "accountId": ACCOUNT, "userName": name}}}


_n = [0]


def record(at: float, source: str, name: str, who: dict[str, Any], params: dict[str, Any] | None = None,
           response: dict[str, Any] | None = None, **extra: Any) -> Event:
    _n[0] += 1
    return Event({"eventVersion": "1.08", "eventTime": format_time(START + at), "eventSource": source,
                  "eventName": name, "eventID": f"precision-{_n[0]}", "awsRegion": "us-east-1",
                  "recipientAccountId": ACCOUNT, "sourceIPAddress": "203.0.113.10", "userAgent": "aws-cli/2.15",
                  "userIdentity": who, "requestParameters": params, "responseElements": response, **extra})


def feed(eng: DetectionEngine, events: list[Event]) -> list[Alert]:
    alerts = eng.process_many(events)
    eng.max_event_time = START + 400 * DAY  # every window judged, as the rule-test runner does
    eng.advance(alerts)
    return alerts


def fired(alerts: list[Alert], rule_id: str) -> list[Alert]:
    return [a for a in alerts if a.rule_id == rule_id and not a.continues]


def secret_read(at: float, who: dict[str, Any], secret: str = SECRET_ARN) -> Event:
    return record(at, "secretsmanager.amazonaws.com", "GetSecretValue", who, {"secretId": secret})


def create_secret(at: float, who: dict[str, Any]) -> Event:
    return record(at, "secretsmanager.amazonaws.com", "CreateSecret", who, {"name": "prod/orders/db"},
                  {"aRN": SECRET_ARN, "name": "prod/orders/db"})


# -- the creator record is fed through the index ---------------------------------------------------
def test_the_creator_record_sees_writes_that_no_rule_matches() -> None:
    eng, detector = engine()
    assert "createsecret" not in {n.lower() for n in detector.rules.index_names() or ()}  # no rule for it
    eng.process_many([create_secret(0, role("terraform-ci", "run-1"))])
    eng.process_many([
        record(1, "s3.amazonaws.com", "CreateBucket", role("terraform-ci", "run-1"), {"bucketName": "b1"}),
        record(2, "ec2.amazonaws.com", "RegisterImage", role("terraform-ci", "run-1"), {"name": "x"},
               {"imageId": "ami-0aa1d83d0b0985c86"})])
    assert len(detector.creators) == 3
    read_back = secret_read(3, role("terraform-ci", "run-2")).raw
    assert detector.creators.caller_wrote(read_back, detector.creators.writers_of_read(read_back) or [])


# -- first reads -----------------------------------------------------------------------------------
def test_a_new_reader_of_an_established_secret_fires_once_and_low() -> None:
    app, intruder = role("orders-api"), role("intern-sandbox")
    known = [create_secret(0, role("terraform-ci")), secret_read(60, app), secret_read(8 * DAY, app)]
    assert fired(feed(engine()[0], [*known, secret_read(8 * DAY + 60, app)]), SECRET_FIRST_READ) == []
    alerts = fired(feed(engine()[0], [*known, secret_read(8 * DAY + 60, intruder),
                                      secret_read(8 * DAY + 120, intruder)]), SECRET_FIRST_READ)
    assert len(alerts) == 1 and alerts[0].severity == "low"
    assert alerts[0].evidence["terms"] == {"principal_role": f"arn:aws:iam::{ACCOUNT}:role/intern-sandbox"}
    assert alerts[0].evidence["group_by"]["trailguard.resource.name"] == "prod/orders/db"


def test_the_same_secret_by_arn_and_by_name_is_one_secret() -> None:
    app = role("orders-api")
    alerts = feed(engine()[0], [secret_read(0, app), secret_read(8 * DAY, app, secret="prod/orders/db")])
    assert fired(alerts, SECRET_FIRST_READ) == []
    alerts = feed(engine()[0], [secret_read(0, app), secret_read(8 * DAY, role("other"), secret="prod/orders/db")])
    assert len(fired(alerts, SECRET_FIRST_READ)) == 1


def test_the_creator_reading_back_never_fires_even_from_a_new_session() -> None:
    app = role("orders-api")
    base = [create_secret(0, role("terraform-ci", "run-1")), secret_read(60, app)]
    assert fired(feed(engine()[0], [*base, secret_read(8 * DAY, role("terraform-ci", "run-2"))]),
                 SECRET_FIRST_READ) == []
    put = record(0, "ssm.amazonaws.com", "PutParameter", role("terraform-ci"),
                 {"name": "/prod/db", "type": "SecureString"})
    reads = [record(60, "ssm.amazonaws.com", "GetParameter", app, {"name": "/prod/db", "withDecryption": True})]
    by_creator = record(8 * DAY, "ssm.amazonaws.com", "GetParameters", role("terraform-ci", "run-9"),
                        {"names": ["prod/db"], "withDecryption": True})
    by_other = record(8 * DAY, "ssm.amazonaws.com", "GetParameters", role("intern-sandbox"),
                      {"names": ["prod/db"], "withDecryption": True})
    assert fired(feed(engine()[0], [put, *reads, by_creator]), SSM_FIRST_READ) == []
    assert len(fired(feed(engine()[0], [put, *reads, by_other]), SSM_FIRST_READ)) == 1


def test_known_readers_and_creators_survive_a_restart() -> None:
    eng, detector = engine()
    app = role("orders-api")
    eng.process_many([create_secret(0, role("terraform-ci")), secret_read(60, app), secret_read(8 * DAY, app)])
    saved = orjson.loads(orjson.dumps(detector.snapshot()))
    eng2, restored = engine()
    restored.restore(saved)
    alerts = feed(eng2, [secret_read(8 * DAY + 10, app), secret_read(8 * DAY + 20, role("terraform-ci", "x")),
                         secret_read(8 * DAY + 30, role("intern-sandbox"))])
    assert [a.evidence["terms"]["principal_role"] for a in fired(alerts, SECRET_FIRST_READ)] == [
        f"arn:aws:iam::{ACCOUNT}:role/intern-sandbox"]


def test_first_read_state_is_bounded_by_max_keys_and_evictions_are_counted() -> None:
    evicted: list[int] = []
    detector = _pack().fork(context=DetectorContext(max_keys=10, on_evict=lambda _d, n: evicted.append(n)))
    eng = DetectionEngine([detector])
    eng.process_many([secret_read(i, role("orders-api"), secret=f"app/secret-{i}") for i in range(50)])
    assert 0 < detector.new_terms.state_keys() <= 10  # one group per secret, at most max_keys of them
    assert sum(evicted) == 40


def test_bedrock_invocation_by_a_principal_never_seen_invoking() -> None:
    def invoke(at: float, who: dict[str, Any]) -> Event:
        return record(at, "bedrock.amazonaws.com", "InvokeModel", who,
                      {"modelId": "anthropic.claude-3-sonnet-20240229-v1:0"})
    learned = [invoke(0, role("chatbot", "a")), invoke(8 * DAY, role("chatbot", "b"))]
    assert fired(feed(engine()[0], learned), BEDROCK_FIRST) == []
    alerts = fired(feed(engine()[0], [*learned, invoke(8 * DAY + 5, role("stolen-ci"))]), BEDROCK_FIRST)
    assert len(alerts) == 1 and alerts[0].severity == "medium"


# -- teardown of what one created ------------------------------------------------------------------
def test_deleting_what_one_created_is_not_an_incident_of_its_own_but_a_trail_always_is() -> None:
    tf, other = role("terraform-ci"), role("intern-sandbox")
    created = [record(0, "s3.amazonaws.com", "CreateBucket", tf, {"bucketName": "logs-b1"}),
               record(1, "ec2.amazonaws.com", "RegisterImage", tf, {"name": "golden"}, {"imageId": "ami-1"})]

    def teardown(who: dict[str, Any]) -> list[Event]:
        return [record(100, "s3.amazonaws.com", "DeleteBucket", who, {"bucketName": "logs-b1"}),
                record(101, "ec2.amazonaws.com", "DeregisterImage", who, {"imageId": "ami-1"}),
                record(102, "cloudtrail.amazonaws.com", "DeleteTrail", who, {"name": "org-trail"})]
    mine = feed(engine()[0], [*created, *teardown(tf)])
    assert fired(mine, BUCKET_DELETED) == fired(mine, AMI_DEREGISTERED) == []
    assert len(fired(mine, TRAIL_DELETED)) == 1
    theirs = feed(engine()[0], [*created, *teardown(other)])
    assert len(fired(theirs, BUCKET_DELETED)) == len(fired(theirs, AMI_DEREGISTERED)) == 1


def test_a_creator_destroying_in_bulk_is_still_one_destruction_burst() -> None:
    tf = role("terraform-ci")
    events = [record(i, "s3.amazonaws.com", "CreateBucket", tf, {"bucketName": f"b{i}"}) for i in range(12)]
    events += [record(300 + i, "s3.amazonaws.com", "DeleteBucket", tf, {"bucketName": f"b{i}"}) for i in range(12)]
    alerts = feed(engine()[0], events)
    assert fired(alerts, BUCKET_DELETED) == [] and len(fired(alerts, DESTRUCTION_BURST)) == 1


def test_creator_record_snapshot_keeps_teardown_kinds() -> None:
    record_ = CreatorRecord()
    create = record(0, "rds.amazonaws.com", "CreateDBSnapshot", role("terraform-ci"),
                    {"dBSnapshotIdentifier": "exfiltration", "dBInstanceIdentifier": "db1"}).raw
    record_.observe(create)
    restored = CreatorRecord()
    restored.restore(copy.deepcopy(record_.snapshot()))
    delete = record(5, "rds.amazonaws.com", "DeleteDBSnapshot", role("terraform-ci", "other-run"),
                    {"dBSnapshotIdentifier": "exfiltration"}).raw
    assert restored.caller_wrote(delete, restored.writers_of_read(delete) or [])


# -- Invictus-IR ----------------------------------------------------------------------------------
def test_invictus_replay_has_a_handful_of_false_positives_and_every_detonation() -> None:
    report = measure([DATA])
    assert report.records == 2900
    assert report.false_positive_incidents <= MAX_FALSE_POSITIVE_INCIDENTS, report.false_positives
    assert report.sessions_surfaced >= MIN_SESSIONS_SURFACED
    # what is left is worth telling even when Terraform does it: the burst, the log group, the trail
    assert {fp.title for fp in report.false_positives} <= {
        "Data Destruction Burst By One Principal", "Security Log Group Or Stream Deleted",
        "CloudTrail Logging Stopped Or Trail Deleted"}
    assert (report.alerts, report.incidents) == (45, 30)


# -- rules that judge a policy document: the review's evasions, negative then positive -------------
TRUST_ANYONE = "9921bf5f-cd2f-562d-881f-8ce27fd12b7e"
TRUST_EXTERNAL = "e3336547-6515-5ea4-bd56-5a0363af275f"
RESOURCE_PUBLIC = "e382a8db-eeb4-58ba-8ae9-fea124bf34a5"
BUCKET_EXTERNAL = "8fa41695-6267-59ec-8890-a8e5e69b1138"
INLINE_ADMIN = "c5f6930a-d5aa-5186-86c8-0610981233cc"
LAMBDA_PUBLIC = "cd058e6e-fb93-59c9-9b86-c63ccb7af7d9"
FOREIGN = "999988887777"
ADMIN = role("platform-admin")


def rules_fired(*events: Event) -> set[str]:
    return {alert.rule_id for alert in feed(engine()[0], list(events)) if alert.rule_id}


def statement(principal: Any = None, effect: str = "Allow", action: Any = "sts:AssumeRole", **extra: Any) -> dict:
    found = {"Effect": effect, "Action": action, **extra}
    if principal is not None:
        found["Principal"] = principal
    return found


def trust(*statements: dict, create: bool = False) -> Event:
    document = orjson.dumps({"Version": "2012-10-17", "Statement": list(statements)}).decode()
    if create:
        return record(0, "iam.amazonaws.com", "CreateRole", ADMIN,
                      {"roleName": "ops", "assumeRolePolicyDocument": document})
    return record(0, "iam.amazonaws.com", "UpdateAssumeRolePolicy", ADMIN,
                  {"roleName": "ops", "policyDocument": document})


def bucket_policy(*statements: dict) -> Event:
    return record(0, "s3.amazonaws.com", "PutBucketPolicy", ADMIN,
                  {"bucketName": "data", "bucketPolicy": {"Version": "2012-10-17", "Statement": list(statements)}})


def test_own_account_next_to_a_foreign_one_in_a_trust_policy_still_fires() -> None:
    own = statement({"AWS": f"arn:aws:iam::{ACCOUNT}:root"})
    assert TRUST_EXTERNAL not in rules_fired(trust(own))
    assert TRUST_EXTERNAL in rules_fired(trust(statement({"AWS": [f"arn:aws:iam::{ACCOUNT}:root",
                                                                  f"arn:aws:iam::{FOREIGN}:role/x"]})))
    assert TRUST_EXTERNAL in rules_fired(trust(own, statement({"AWS": FOREIGN}), create=True))


def test_trust_policy_open_to_anyone_in_every_form_of_principal() -> None:
    restricted = statement("*", Condition={"StringEquals": {"aws:PrincipalOrgID": "o-abc123"}})
    assert TRUST_ANYONE not in rules_fired(trust(restricted))
    assert TRUST_ANYONE not in rules_fired(trust(statement({"AWS": f"arn:aws:iam::{ACCOUNT}:root"})))
    for principal in ("*", {"AWS": "*"}, {"AWS": [f"arn:aws:iam::{ACCOUNT}:root", "*"]}):
        assert TRUST_ANYONE in rules_fired(trust(statement(principal))), principal
        assert TRUST_ANYONE in rules_fired(trust(statement(principal), create=True)), principal
    # NotPrincipal in an Allow grants everyone but the named principal
    assert TRUST_ANYONE in rules_fired(trust(statement(NotPrincipal={"AWS": f"arn:aws:iam::{ACCOUNT}:root"})))
    # sts:ExternalId restricts nothing: anyone who learns the id can assume the role
    external_id = statement("*", Condition={"StringEquals": {"sts:ExternalId": "abc"}})
    assert TRUST_ANYONE in rules_fired(trust(external_id))


def test_a_condition_elsewhere_does_not_silence_the_public_resource_rule() -> None:
    read = statement("*", action="s3:GetObject", Resource="arn:aws:s3:::data/*")
    org_only = statement("*", action="s3:GetObject", Resource="arn:aws:s3:::data/*",
                         Condition={"StringEquals": {"aws:PrincipalOrgID": "o-abc123"}})
    deny_http = statement("*", effect="Deny", action="s3:*", Resource="arn:aws:s3:::data/*",
                          Condition={"Bool": {"aws:SecureTransport": "false"}})
    assert RESOURCE_PUBLIC not in rules_fired(bucket_policy(org_only, deny_http))
    assert RESOURCE_PUBLIC in rules_fired(bucket_policy(read, deny_http))
    assert RESOURCE_PUBLIC in rules_fired(bucket_policy(deny_http, read))


def test_bucket_policy_granting_another_account_in_any_spelling() -> None:
    own = statement({"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, action="s3:GetObject", Resource="arn:aws:s3:::data/*")
    assert BUCKET_EXTERNAL not in rules_fired(bucket_policy(own))
    for principal in ({"AWS": FOREIGN}, {"AWS": [f"arn:aws:iam::{ACCOUNT}:root", f"arn:aws:iam::{FOREIGN}:root"]},
                      {"AWS": f"arn:aws:iam::{FOREIGN}:user/backup"}):
        granted = statement(principal, action=["s3:GetObject", "s3:ListBucket"], Resource="arn:aws:s3:::data/*")
        assert BUCKET_EXTERNAL in rules_fired(bucket_policy(own, granted)), principal
    # a Deny naming another account grants nothing
    deny = statement({"AWS": FOREIGN}, effect="Deny", action="s3:*", Resource="arn:aws:s3:::data/*")
    assert BUCKET_EXTERNAL not in rules_fired(bucket_policy(own, deny))


def test_inline_admin_policy_with_not_action_or_reordered_keys() -> None:
    def put(*statements: dict) -> Event:
        document = orjson.dumps({"Version": "2012-10-17", "Statement": list(statements)}).decode()
        return record(0, "iam.amazonaws.com", "PutUserPolicy", ADMIN,
                      {"userName": "bob", "policyName": "p", "policyDocument": document})
    assert INLINE_ADMIN not in rules_fired(put(statement(action="s3:GetObject", Resource="*")))
    assert INLINE_ADMIN not in rules_fired(put(statement(effect="Deny", action="*", Resource="*")))
    assert INLINE_ADMIN in rules_fired(put({"Resource": "*", "Action": ["*"], "Effect": "Allow"}))
    assert INLINE_ADMIN in rules_fired(put({"Effect": "Allow", "NotAction": "s3:DeleteBucket", "Resource": "*"}))
    assert INLINE_ADMIN in rules_fired(put(statement(action="iam:*", Resource="*")))
    assert INLINE_ADMIN not in rules_fired(put(statement(action="iam:GetUser", Resource="*")))


def test_lambda_permission_for_anyone_unless_restricted_to_a_source() -> None:
    def add(**params: Any) -> Event:
        return record(0, "lambda.amazonaws.com", "AddPermission20150331v2", ADMIN,
                      {"functionName": "f", "statementId": "s", "action": "lambda:InvokeFunction", **params})
    assert LAMBDA_PUBLIC not in rules_fired(add(principal="*", sourceArn="arn:aws:s3:::uploads",
                                                sourceAccount=ACCOUNT))
    assert LAMBDA_PUBLIC not in rules_fired(add(principal="s3.amazonaws.com", sourceArn="arn:aws:s3:::uploads"))
    assert LAMBDA_PUBLIC in rules_fired(add(principal="*"))
