"""Timeline tests for ``credential_exfiltration``: compute credentials seen inside AWS, then outside.

Events are real flaws2.cloud records (``tests/data/stateful/travel/flaws2``): the Lambda role's
``CreateLogStream`` (used as a generic assumed-role call) and the ECS ``AssumeRole`` by
``ecs-tasks.amazonaws.com``, with times, addresses, session names and access keys rewritten.
"""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pydantic
import pytest

from detectors.alert import Alert
from detectors.base import GeoInfo
from detectors.credential_exfiltration import CredentialExfiltration, compute_reasons_of_name
from detectors.engine import DetectionEngine
from detectors.event import Event, classify_source_ip, parse_event_time
from detectors.registry import detector_class
from tests.stateful_helpers import Counters, from_template
from tests.stateful_helpers import run_detector as run

DATA = Path(__file__).parent / "data" / "stateful" / "travel" / "flaws2"
T0 = parse_event_time("2024-05-01T00:00:00Z")
ACCOUNT = "653711331788"
INSIDE, INSIDE_2, OUTSIDE, OUTSIDE_2, VPN = "34.234.236.212", "52.95.110.1", "104.102.221.250", "81.2.69.142", \
    "151.101.1.1"


class FakeEnricher:
    attribution = "IP Geolocation by DB-IP (https://db-ip.com)"

    def geo(self, ip: str) -> GeoInfo | None:
        return {OUTSIDE: GeoInfo(42.36, -71.09, "US", "Cambridge", asn=20940, as_org="Akamai")}.get(ip)

    def network_kind(self, ip: str | None) -> str:
        return "aws" if ip in (INSIDE, INSIDE_2) else classify_source_ip(ip)

    def is_allowlisted(self, ip: str | None) -> bool:
        return ip == VPN


@cache
def flaws2_records() -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for path in sorted(DATA.rglob("*.json.gz")):
        records.extend(orjson.loads(gzip.decompress(path.read_bytes()))["Records"])
    return records


def _template(event_name: str, identity_type: str) -> dict[str, Any]:
    return next(r for r in flaws2_records()
                if r["eventName"] == event_name and r["userIdentity"]["type"] == identity_type)


def use(t: float, ip: str, *, role: str = "app", session: str = "alice", key: str = "ASIAKEY1",
        path: str = "", ua: str = "aws-cli/2.13.5", name: str = "ListBuckets", readonly: bool | None = True,
        error: str | None = None, eid: str | None = None, **identity: Any) -> Event:
    """An assumed-role call of ``role``/``session`` with access key ``key`` from ``ip`` at ``T0 + t``."""
    raw = from_template(_template("CreateLogStream", "AssumedRole"), T0 + t, eid or f"{key}-{ip}-{t}-{name}")
    raw["eventName"] = name
    raw["sourceIPAddress"] = ip
    raw["userAgent"] = ua
    raw.pop("errorCode", None)
    raw.pop("errorMessage", None)
    if error:
        raw["errorCode"] = error
    if readonly is not None:
        raw["readOnly"] = readonly
    ui = raw["userIdentity"]
    ui["arn"] = f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{session}"
    ui["accessKeyId"] = key
    ui["sessionContext"]["sessionIssuer"]["arn"] = f"arn:aws:iam::{ACCOUNT}:role/{path}{role}"
    ui.update(identity)
    return Event(raw)


def issue(t: float, service: str, *, role: str, session: str, key: str) -> Event:
    """``service`` assumed ``role`` and got access key ``key`` (a real AssumeRole record rewritten)."""
    raw = from_template(_template("AssumeRole", "AWSService"), T0 + t, f"issue-{key}")
    raw["userIdentity"]["invokedBy"] = raw["sourceIPAddress"] = raw["userAgent"] = service
    raw["requestParameters"] = {"roleSessionName": session, "roleArn": f"arn:aws:iam::{ACCOUNT}:role/{role}"}
    raw["responseElements"]["credentials"]["accessKeyId"] = key
    return Event(raw)


def make(counters: Counters | None = None, **settings: Any) -> CredentialExfiltration:
    context = (counters or Counters()).context(FakeEnricher())
    return CredentialExfiltration(CredentialExfiltration.Config(**settings), context)


def findings(alerts: list[Alert]) -> list[tuple[str, str, float]]:
    return [(a.evidence["finding"], a.severity, a.time - T0) for a in alerts]


def test_registered_and_config_is_strict() -> None:
    assert detector_class("credential_exfiltration") is CredentialExfiltration
    config = CredentialExfiltration.Config.model_validate({"throttle": "1h", "session_ttl": "2d"})
    assert (config.throttle, config.session_ttl) == (3600.0, 172800.0)
    with pytest.raises(pydantic.ValidationError):
        CredentialExfiltration.Config.model_validate({"compute_role_pattern": ["x"]})


@pytest.mark.parametrize(
    ("name", "expected"),
    [("i-0123456789abcdef0", ["ec2_instance_session"]), ("i-01234567", ["ec2_instance_session"]),
     ("0123456789abcdef0123456789abcdef", ["ecs_task_session"]),
     ("d190d14a-2404-45d6-9113-4eda22d7f2c7", ["ecs_task_session"]),
     ("alice@example.com", []), ("i-xyz", []), ("botocore-session-1700000000", [])],
)
def test_session_name_heuristics(name: str, expected: list[str]) -> None:
    assert compute_reasons_of_name(name) == expected


def test_ecs_name_heuristic_can_be_turned_off() -> None:
    assert compute_reasons_of_name("0123456789abcdef0123456789abcdef", heuristics=False) == []
    assert compute_reasons_of_name("i-0123456789abcdef0", heuristics=False) == ["ec2_instance_session"]


def test_instance_credential_used_outside_alerts_at_once_with_evidence() -> None:
    alerts = run(make(), [use(0, INSIDE, session="i-0123456789abcdef0")],
                 [use(600, OUTSIDE, session="i-0123456789abcdef0")])
    assert findings(alerts) == [("compute_credential_outside_aws", "high", 600)]
    alert = alerts[0]
    ev = alert.evidence
    assert ev["compute_reasons"] == ["ec2_instance_session"]
    assert ev["session"] == alert.principal == f"arn:aws:sts::{ACCOUNT}:assumed-role/app/i-0123456789abcdef0"
    assert ev["role_arn"] == f"arn:aws:iam::{ACCOUNT}:role/app"
    assert ev["access_key_id"] == "ASIAKEY1"
    assert ev["outside_ip"] == OUTSIDE and alert.source_ips == [OUTSIDE]
    assert ev["geo"] == {"city": "Cambridge", "country": "US", "asn": 20940, "as_org": "Akamai"}
    assert ev["geoip_attribution"].startswith("IP Geolocation by DB-IP")
    assert ev["first_seen"]["where"] == INSIDE and ev["first_seen"]["network"] == "aws"
    assert alert.tags == ["attack.credential_access", "attack.t1552.005", "attack.exfiltration"]
    # it names the role, the session, its key and the outside address
    assert [(r["type"], r["id"], r["detail"]) for r in alert.resources] == [
        ("iam_role", f"arn:aws:iam::{ACCOUNT}:role/app", "role of the session"),
        ("role_session", alert.principal, "used outside AWS for ListBuckets"),
        ("access_key", "ASIAKEY1", "temporary credential"),
        ("source_ip", OUTSIDE, "outside AWS (Cambridge, US)"),
    ]
    assert f"role arn:aws:iam::{ACCOUNT}:role/app" in alert.summary
    assert len(alert.event_ids) == 2


def test_a_call_an_aws_service_makes_on_the_instances_behalf_is_no_sighting() -> None:
    """Panther's IMDS negative "AWS Service InvokedBy on behalf of instance": EKS calling with an
    instance credential from an outside address stays silent; the same credential then called
    directly from that address alerts."""
    session = "i-0123456789abcdef0"
    on_behalf = use(0, OUTSIDE, session=session, name="DescribeInstances", invokedBy="eks.amazonaws.com")
    assert run(make(), [on_behalf]) == []
    alerts = run(make(), [on_behalf], [use(60, OUTSIDE, session=session, name="DescribeInstances")])
    assert findings(alerts) == [("compute_credential_outside_aws", "high", 60)]
    assert alerts[0].evidence["outside_ip"] == OUTSIDE


def test_compute_credential_whose_first_use_is_outside_still_alerts() -> None:
    alerts = run(make(), [use(0, OUTSIDE, ua="Boto3/1.26 exec-env/AWS_ECS_FARGATE")])
    assert findings(alerts) == [("compute_credential_outside_aws", "high", 0)]
    assert alerts[0].evidence["compute_reasons"] == ["compute_user_agent"]


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"ec2RoleDelivery": "2.0"}, "ec2_role_delivery"),
        ({"path": "service-role/"}, "service_role_path"),
        ({"session": "0123456789abcdef0123456789abcdef"}, "ecs_task_session"),
        ({"ua": "awslambda-worker/1.0 rusoto/0.47.0"}, "compute_user_agent"),
    ],
)
def test_each_compute_heuristic(kwargs: dict[str, Any], reason: str) -> None:
    if "ec2RoleDelivery" in kwargs:
        e = use(0, INSIDE)
        e.raw["userIdentity"]["sessionContext"]["ec2RoleDelivery"] = kwargs["ec2RoleDelivery"]
        first = [e]
    else:
        first = [use(0, INSIDE, **kwargs)]
    later = use(60, OUTSIDE, **{k: v for k, v in kwargs.items() if k != "ec2RoleDelivery"})
    alerts = run(make(network_change=False), first, [later])
    assert [a.evidence["compute_reasons"] for a in alerts] == [[reason]]


def test_configured_compute_role_patterns() -> None:
    d = make(compute_role_patterns=("arn:aws:iam::*:role/batch-*",), network_change=False)
    assert findings(run(d, [use(0, OUTSIDE, role="batch-worker")])) == [
        ("compute_credential_outside_aws", "high", 0)]
    assert run(make(network_change=False), [use(0, OUTSIDE, role="batch-worker")]) == []


def test_role_learned_from_a_compute_service_assume_role() -> None:
    d = make(network_change=False)
    alerts = run(d, [issue(0, "lambda.amazonaws.com", role="fn", session="fn", key="ASIALAMBDA1")],
                 [use(7200, OUTSIDE, role="fn", session="fn", key="ASIALAMBDA2")])
    assert [a.evidence["compute_reasons"] for a in alerts] == [["role_assumed_by:lambda.amazonaws.com"]]
    # a non-compute service does not make the role compute
    d = make(network_change=False)
    assert run(d, [issue(0, "cloudformation.amazonaws.com", role="fn", session="fn", key="K1")],
               [use(60, OUTSIDE, role="fn", session="fn", key="K2")]) == []


def test_human_session_used_from_outside_is_silent() -> None:
    assert run(make(), [use(0, OUTSIDE), use(60, OUTSIDE_2), use(120, INSIDE), use(180, OUTSIDE)]) == []


def test_credential_moved_from_inside_aws_to_outside() -> None:
    alerts = run(make(), [use(0, INSIDE), use(30, "cloudformation.amazonaws.com")], [use(600, OUTSIDE)])
    assert findings(alerts) == [("credential_moved_outside_aws", "high", 600)]
    assert alerts[0].evidence["compute_reasons"] == []
    assert alerts[0].evidence["networks"] == ["aws", "public", "service"]
    assert run(make(network_change=False), [use(0, INSIDE)], [use(600, OUTSIDE)]) == []


def test_service_name_first_sighting_is_not_inside_for_human_credentials() -> None:
    assert run(make(), [use(0, "cloudformation.amazonaws.com")], [use(600, OUTSIDE)]) == []


def test_sso_style_sessions_are_told_apart_by_access_key() -> None:
    # same session ARN (the user's e-mail): CloudShell credential inside AWS, laptop credential outside
    sso = {"role": "AWSReservedSSO_Admin_0123", "session": "alice@example.com"}
    assert run(make(), [use(0, INSIDE, key="ASIACLOUDSHELL", **sso)], [use(60, OUTSIDE, key="ASIALAPTOP", **sso)]) == []


def test_allowlisted_egress_and_ignored_roles_are_silent() -> None:
    instance = {"session": "i-0123456789abcdef0"}
    assert run(make(), [use(0, INSIDE, **instance)], [use(60, VPN, **instance)]) == []
    d = make(ignore_role_patterns=("arn:aws:iam::*:role/app",))
    assert run(d, [use(0, INSIDE, **instance)], [use(60, OUTSIDE, **instance)]) == []


def test_successful_write_is_critical_and_escalates_once_within_the_throttle() -> None:
    instance = {"session": "i-0123456789abcdef0"}
    batch = [
        use(0, INSIDE, **instance),
        use(60, OUTSIDE, **instance),                                                   # high
        use(120, OUTSIDE, name="PutObject", readonly=False, error="AccessDenied", **instance),  # failed write
        use(180, OUTSIDE, name="PutObject", readonly=False, **instance),                # critical
        use(240, OUTSIDE, name="PutObject", readonly=False, **instance),                # suppressed
        use(300, OUTSIDE, **instance),                                                  # suppressed
        use(13 * 3600, OUTSIDE, **instance),                                            # after 12 h
    ]
    alerts = run(make(), batch)
    assert findings(alerts) == [
        ("compute_credential_outside_aws", "high", 60),
        ("compute_credential_outside_aws", "critical", 180),
        ("compute_credential_outside_aws", "high", 13 * 3600),
    ]
    assert [a.evidence["suppressed"] for a in alerts] == [0, 1, 2]
    assert alerts[1].evidence["successful_write"] is True


def test_out_of_order_inside_sighting_qualifies_an_earlier_arrived_outside_use() -> None:
    # the outside use (t=600) arrives before the inside use (t=0) it follows in event time
    alerts = run(make(), [use(600, OUTSIDE)], [use(0, INSIDE)], lateness=3600)
    assert findings(alerts) == [("credential_moved_outside_aws", "high", 600)]
    # an outside use *before* the first inside one never qualifies
    assert run(make(), [use(600, INSIDE)], [use(0, OUTSIDE)], lateness=3600) == []


def test_late_issue_event_makes_the_credential_compute() -> None:
    counters = Counters()
    d = make(counters, network_change=False, session_name_heuristics=False)
    task = {"role": "web", "session": "0123456789abcdef0123456789abcdef", "key": "ASIATASK"}
    # the AssumeRole by ecs-tasks at t=0 arrives last, beyond the lateness: counted, still judged
    alerts = run(d, [use(3600, OUTSIDE, **task)], [issue(0, "ecs-tasks.amazonaws.com", **task)])
    assert counters.late == 1
    assert [(a.evidence["compute_reasons"], a.time - T0) for a in alerts] == [
        (["issued_to:ecs-tasks.amazonaws.com"], 3600)]
    assert alerts[0].evidence["first_seen"]["network"] == "issued"


def test_key_spray_is_capped_and_evictions_counted() -> None:
    counters = Counters()
    d = make(counters, max_keys=64)
    run(d, [use(i, INSIDE, key=f"ASIA{i:08d}") for i in range(1000)])
    assert len(d.snapshot()["credentials"]) <= 64
    assert counters.evicted >= 1000 - 64


def test_sightings_per_credential_are_bounded_and_keep_the_first() -> None:
    d = make(max_networks=4)
    run(d, [use(0, INSIDE)] + [use(10 + i, f"45.0.0.{i + 1}", eid=f"e{i}") for i in range(10)])
    sightings = d.snapshot()["credentials"][0][6]
    assert len(sightings) <= 4
    assert sightings[0][0] == INSIDE


def test_credentials_expire_after_session_ttl() -> None:
    d = make(session_ttl=3600)
    run(d, [use(0, INSIDE)], [use(20_000, INSIDE_2, key="ASIAOTHER")])
    assert len(d.snapshot()["credentials"]) == 1


def test_snapshot_msgpack_restore_behaves_identically() -> None:
    before = [issue(0, "lambda.amazonaws.com", role="fn", session="fn", key="ASIAL1"),
              use(10, INSIDE, role="fn", session="fn", key="ASIAL1"),
              use(20, INSIDE), use(30, OUTSIDE, session="i-0123456789abcdef0", key="ASIAEC2")]
    after = [use(100, OUTSIDE, role="fn", session="fn", key="ASIAL1"),
             use(110, OUTSIDE),
             use(120, OUTSIDE, role="fn", session="fn", key="ASIAL2"),
             use(130, OUTSIDE, session="i-0123456789abcdef0", key="ASIAEC2", name="RunInstances", readonly=False)]
    original = make()
    engine = DetectionEngine([original], allowed_lateness=900)
    assert len(engine.process_many(before)) == 1
    wire = msgpack.packb(engine.snapshot(), use_bin_type=True)
    restored = make()
    engine2 = DetectionEngine([restored], allowed_lateness=900)
    engine2.restore(msgpack.unpackb(wire, raw=False, strict_map_key=False))
    assert restored.state_keys() == original.state_keys()
    a1 = [a.to_dict() | {"detected_at": None} for a in engine.process_many(after)]
    a2 = [a.to_dict() | {"detected_at": None} for a in engine2.process_many(after)]
    assert a1 == a2
    assert [(a["evidence"]["finding"], a["severity"]) for a in a1] == [
        ("compute_credential_outside_aws", "high"),    # ASIAL1: issued to Lambda before the snapshot
        ("credential_moved_outside_aws", "high"),      # ASIAKEY1: inside before the snapshot
        ("compute_credential_outside_aws", "high"),    # ASIAL2: role learned before the snapshot
        ("compute_credential_outside_aws", "critical"),  # ASIAEC2: escalation after the snapshot
    ]
    with pytest.raises(ValueError):
        restored.restore({"version": 99, "kind": "credential_exfiltration"})


class CountingEnricher(FakeEnricher):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def network_kind(self, ip: str | None) -> str:
        self.calls.append(ip or "")
        return super().network_kind(ip)


def test_a_session_is_enriched_once_per_address_and_a_later_compute_agent_still_counts() -> None:
    # 50 calls from inside by a human-looking session, then the same key from outside with a
    # Lambda runtime's user agent: the per-session memo must not hide the new agent or address.
    enricher = CountingEnricher()
    d = CredentialExfiltration(CredentialExfiltration.Config(network_change=False), Counters().context(enricher))
    inside = [use(i, INSIDE, name=f"Get{i}") for i in range(50)]
    assert run(d, inside) == []
    assert enricher.calls == [INSIDE]
    alerts = run(d, [use(60, OUTSIDE, ua="aws-sdk-go/1.44 exec-env/AWS_Lambda_go1.x")])
    assert enricher.calls == [INSIDE, OUTSIDE]
    assert findings(alerts) == [("compute_credential_outside_aws", "high", 60)]
    assert alerts[0].evidence["compute_reasons"] == ["compute_user_agent"]
