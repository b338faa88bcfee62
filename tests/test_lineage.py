"""Identity lineage over real records: the Invictus account's Stratus run, where IAM user bert-jan
assumes the technique roles and the sessions then act — the alerts on those sessions name bert-jan
as their origin.  Also role chaining, SAML/web identity, sourceIdentity, bounds, and checkpoints."""

from __future__ import annotations

import copy
from pathlib import Path

import orjson

from daemon.components import DEFAULT_RULE_PATHS
from detectors.engine import DetectionEngine
from detectors.event import Event
from detectors.lineage import MAX_HOPS, IdentityLineage
from detectors.sigma.detector import SigmaConfig, SigmaDetector

DATA = Path(__file__).parent / "data" / "alerts" / "invictus_role_sessions.json"
BERT = "arn:aws:iam::123837392027:user/bert-jan"
PASSWORD_SESSION = ("arn:aws:sts::123837392027:assumed-role/stratus-red-team-ec2-get-password-data-role/"
                    "aws-go-sdk-1688990082523310002")


def records() -> list[dict]:
    return orjson.loads(DATA.read_bytes())["Records"]


#: One alert per session call (the shipped pack alerts on bulk reads only, issue 12).
SESSION_RULES = Path(__file__).parent / "data" / "alerts" / "rules"


def engine() -> DetectionEngine:
    return DetectionEngine([SigmaDetector(SigmaConfig(paths=[*DEFAULT_RULE_PATHS, str(SESSION_RULES)]))])


def test_alerts_on_role_sessions_name_the_user_who_assumed_the_role() -> None:
    alerts = engine().process_many(Event(r) for r in records())
    on_sessions = [a for a in alerts if ":assumed-role/" in a.principal]
    assert len(on_sessions) >= 29, "GetPasswordData, user-data reads, LeaveOrganization"
    for alert in on_sessions:
        assert alert.origin_principal == BERT, alert.principal
        assert [hop["principal"] for hop in alert.identity_chain] == [BERT, alert.principal]
        assert alert.identity_chain[1]["via"] == "AssumeRole"
        assert alert.identity_chain[1]["event_id"]
    password = next(a for a in on_sessions if a.principal == PASSWORD_SESSION)
    assert password.identity_chain[1]["time"] == "2023-07-10T11:54:47Z"
    wire = password.to_dict()
    assert wire["origin_principal"] == BERT and wire["identity_chain"] == password.identity_chain
    # alerts on the user itself have no chain to show
    assert all(not a.identity_chain for a in alerts if a.principal == BERT)


def assume(caller: dict, session: str, *, name: str = "AssumeRole", event_id: str = "x",
           time: str = "2023-07-10T12:00:00Z", **response: object) -> Event:
    template = next(r for r in records() if r["eventName"] == "AssumeRole")
    record = copy.deepcopy(template)
    record.update(eventName=name, eventID=event_id, eventTime=time, userIdentity=caller)
    record["responseElements"] = {"assumedRoleUser": {"arn": session}, **response}
    return Event(record)


def session_identity(arn: str) -> dict:
    return {"type": "AssumedRole", "arn": arn, "accountId": "123837392027",
            "sessionContext": {"sessionIssuer": {"type": "Role", "arn": arn.replace(":sts:", ":iam:")}}}


def test_role_chaining_saml_web_identity_and_source_identity() -> None:
    lineage = IdentityLineage()
    first = "arn:aws:sts::1:assumed-role/Deploy/ci"
    second = "arn:aws:sts::1:assumed-role/Admin/hop"
    lineage.observe(assume({"type": "IAMUser", "arn": BERT}, first, event_id="e1", sourceIdentity="bert@corp"))
    lineage.observe(assume(session_identity(first), second, event_id="e2", time="2023-07-10T12:05:00Z"))
    chain = lineage.chain(second)
    assert [h["principal"] for h in chain] == [BERT, first, second]
    assert chain[1] == {"principal": first, "via": "AssumeRole", "event_id": "e1",
                        "time": "2023-07-10T12:00:00Z", "source_identity": "bert@corp"}
    saml = "arn:aws:sts::1:assumed-role/SSO/alice@corp"
    lineage.observe(assume({"type": "SAMLUser", "principalId": "p"}, saml, name="AssumeRoleWithSAML",
                           subject="alice@corp", issuer="https://idp.example/"))
    assert lineage.chain(saml)[0] == {"principal": "saml:https://idp.example/:alice@corp"}
    web = "arn:aws:sts::1:assumed-role/GitHub/run-42"
    lineage.observe(assume({"type": "WebIdentityUser"}, web, name="AssumeRoleWithWebIdentity",
                           subjectFromWebIdentityToken="repo:org/app:ref:refs/heads/main",
                           provider="token.actions.githubusercontent.com"))
    assert lineage.chain(web)[0]["principal"] == \
        "web-identity:token.actions.githubusercontent.com:repo:org/app:ref:refs/heads/main"
    assert lineage.chain("arn:aws:sts::1:assumed-role/Unknown/x") == []


def test_failed_calls_cycles_and_long_chains_are_bounded() -> None:
    lineage = IdentityLineage(max_keys=50)
    failed = assume({"type": "IAMUser", "arn": BERT}, "arn:aws:sts::1:assumed-role/R/s")
    failed.raw["errorCode"] = "AccessDenied"
    lineage.observe(failed)
    assert len(lineage) == 0
    a, b = "arn:aws:sts::1:assumed-role/A/s", "arn:aws:sts::1:assumed-role/B/s"
    lineage.observe(assume(session_identity(b), a))
    lineage.observe(assume(session_identity(a), b))
    assert len(lineage.chain(a)) <= 3, "a cycle stops the walk"
    previous = BERT
    for n in range(30):
        session = f"arn:aws:sts::1:assumed-role/R{n}/s"
        lineage.observe(assume({"type": "AssumedRole", "arn": previous} if n else {"type": "IAMUser", "arn": BERT},
                               session))
        previous = session
    assert len(lineage.chain(previous)) == MAX_HOPS + 1
    for n in range(200):
        lineage.observe(assume({"type": "IAMUser", "arn": BERT}, f"arn:aws:sts::1:assumed-role/X/{n}"))
    assert len(lineage) <= 50
    huge = "arn:aws:sts::1:assumed-role/R/" + "s" * 100_000
    lineage.observe(assume({"type": "IAMUser", "arn": "u" * 100_000}, huge))
    assert all(len(row[0]) <= 512 and len(row[1]) <= 512 for row in lineage.snapshot()["sessions"])


def test_lineage_survives_a_checkpoint_and_expires_by_event_time() -> None:
    first = engine()
    items = records()
    first.process_many(Event(r) for r in items[:12])  # the first AssumeRole calls, not yet the sessions' acts
    state = orjson.loads(orjson.dumps(first.snapshot()))
    second = engine()
    second.restore(state)
    alerts = second.process_many(Event(r) for r in items[12:])
    assert any(a.origin_principal == BERT for a in alerts)
    # 36 h of event time later, the sessions are forgotten
    late = copy.deepcopy(next(r for r in items if r["eventName"] == "GetPasswordData"))
    late.update(eventTime="2023-07-12T12:00:00Z", eventID="late")
    third = engine()
    third.restore(state)
    late_alerts = third.process_many([Event(late)])
    assert late_alerts and all(a.principal == PASSWORD_SESSION and not a.identity_chain for a in late_alerts)
    assert len(third.lineage) == 0


def test_a_corrupt_lineage_snapshot_starts_empty_and_is_reported() -> None:
    errors: list[str] = []
    fresh = DetectionEngine([], on_error=lambda name, _e, error: errors.append(f"{name}: {error}"))
    fresh.restore({"lineage": {"version": 99, "kind": "identity_lineage"}})
    assert errors and errors[0].startswith("identity_lineage: ")
    assert len(fresh.lineage) == 0
