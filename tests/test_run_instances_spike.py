"""Timeline tests for ``run_instances_spike``: launches at t=…, alert expected at t=….

Launches are built from real records (``tests/data/stateful/burst``): a successful Invictus
``t3.micro`` launch (its response item repeated per instance) and the Stratus
``ec2-launch-unusual-instances`` refused ``p2.xlarge`` request, with times, ids, types, counts,
regions and principals changed; the real records are also replayed as they are.  Times are
seconds after ``T0`` (aligned to a 10-minute bucket); everything goes through
:class:`DetectionEngine` batches.
"""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path

import orjson
import pydantic
import pytest

from detectors.event import Event, format_time, parse_event_time
from detectors.registry import detector_class
from detectors.run_instances_spike import RunInstancesSpike, launched_instances
from tests.stateful_helpers import Counters, detector_engine, from_template, roundtrip, run_engine

DATA = Path(__file__).parent / "data" / "stateful" / "burst"
INVICTUS = orjson.loads((DATA / "invictus_run_instances.json").read_bytes())["Records"]
STRATUS = orjson.loads((DATA / "stratus_ec2_launch_unusual_instances.json").read_bytes())
LAUNCHED = next(r for r in INVICTUS if not r.get("errorCode"))
REFUSED = next(r for r in STRATUS if r["eventName"] == "RunInstances")
T0 = parse_event_time("2024-05-01T10:00:00Z")
ACCOUNT = "111122223333"
ROLE = "arn:aws:sts::111122223333:assumed-role/ci-deployer/session"


def launch(t: float, n: int, count: int, *, kind: str = "t3.micro", refused: bool = False,
           region: str = "us-east-1", principal: str = ROLE, event_id: str | None = None) -> Event:
    record = from_template(REFUSED if refused else LAUNCHED, T0 + t, event_id or f"run-{n}")
    record["awsRegion"] = region
    record["recipientAccountId"] = ACCOUNT
    record["userIdentity"]["arn"] = principal
    record["requestParameters"]["instanceType"] = kind
    if refused:
        record["requestParameters"]["instancesSet"]["items"][0]["maxCount"] = count
    else:
        item = record["responseElements"]["instancesSet"]["items"][0]
        record["responseElements"]["instancesSet"]["items"] = [{**item, "instanceType": kind}] * count
    return Event(record)


engine = partial(detector_engine, RunInstancesSpike)
run = partial(run_engine, batch=4)


def test_registered_and_configured_like_yaml() -> None:
    assert detector_class("run_instances_spike") is RunInstancesSpike
    config = RunInstancesSpike.Config.model_validate({"bucket": "15m", "weighted_types": {"x9.*": 3}})
    assert (config.bucket, config.min_instances, config.weighted_types) == (900.0, 20, {"x9.*": 3})
    with pytest.raises(pydantic.ValidationError, match="weight"):
        RunInstancesSpike.Config(weighted_types={"p2.*": 0})
    with pytest.raises(pydantic.ValidationError, match="history"):
        RunInstancesSpike.Config(bucket=3600, history=600)
    with pytest.raises(pydantic.ValidationError):
        RunInstancesSpike.Config.model_validate({"min_instance": 5})


def test_instances_are_counted_from_the_response_or_the_request() -> None:
    assert launched_instances(launch(0, 1, 3)) == [("t3.micro", 3)]
    assert launched_instances(launch(0, 1, 10, kind="p2.xlarge", refused=True)) == [("p2.xlarge", 10)]
    assert launched_instances(Event(REFUSED)) == [("p2.xlarge", 10)]
    detector = RunInstancesSpike(RunInstancesSpike.Config())
    types = ("t3.micro", "p2.xlarge", "g4dn.12xlarge", "m5.metal", "c7i.2xlarge")
    weights = {t: detector.weight(t) for t in types}
    assert weights == {"t3.micro": 1, "p2.xlarge": 5, "g4dn.12xlarge": 5, "m5.metal": 5, "c7i.2xlarge": 1}


def test_real_stratus_detonation_is_critical_and_reports_the_refused_request() -> None:
    alerts = run(engine(), [Event(r) for r in sorted(STRATUS, key=lambda r: r["eventTime"])])
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.severity == "critical" and alert.evidence["finding"] == "gpu_launch_spike"
    assert alert.evidence["scopes"] == ["account_region", "principal"]
    assert alert.evidence["instance_types"] == {"p2.xlarge": 10}
    assert (alert.evidence["instances"], alert.evidence["weighted_instances"]) == (10, 50)
    assert (alert.evidence["calls"], alert.evidence["failed_calls"]) == (1, 1)
    assert alert.evidence["error_codes"] == ["Client.UnauthorizedOperation"]
    assert alert.event_ids == [REFUSED["eventID"]]
    assert alert.tags == ["attack.impact", "attack.t1496"]
    # refused, so no instance ids: the type requested, the region and the image
    assert [(r["type"], r["id"], r.get("detail")) for r in alert.resources] == [
        ("ec2_instance_type", "p2.xlarge", "10 launched"), ("aws_region", "ca-south-3r", "launch region"),
        ("ami", "ami-aCBbfd13bdb1d1E4b", None)]


def test_real_invictus_launches_flag_the_two_gpu_requests_only() -> None:
    alerts = run(engine(), [Event(r) for r in sorted(INVICTUS, key=lambda r: r["eventTime"])])
    assert [a.evidence["instance_types"].get("p2.xlarge") for a in alerts] == [10, 10]
    assert all(a.severity == "critical" for a in alerts)
    assert all("ec2lui-role" in a.principal for a in alerts)


def test_absolute_floor_nineteen_quiet_twenty_high() -> None:
    nineteen = [launch(30 * i, i, 1) for i in range(19)]
    assert run(engine(), nineteen) == []
    alerts = run(engine(), [*nineteen, launch(590, 19, 1)])
    assert [(a.time - T0, a.severity, a.evidence["instances"]) for a in alerts] == [(590, "high", 20)]
    assert alerts[0].evidence["window_start"] == format_time(T0)
    assert alerts[0].evidence["window_end"] == format_time(T0 + 600)
    # the triggering launch's instance ids come first, then the types and regions of the bucket
    launched = [i["instanceId"] for i in LAUNCHED["responseElements"]["instancesSet"]["items"]]
    kinds = [(r["type"], r["id"]) for r in alerts[0].resources]
    assert kinds[: len(launched)] == [("ec2_instance", i) for i in launched]
    assert kinds[len(launched):len(launched) + 2] == [("ec2_instance_type", "t3.micro"), ("aws_region", "us-east-1")]
    assert f"Instances include {launched[0]}" in alerts[0].summary


def test_gpu_weighting_and_the_principal_scope_across_regions() -> None:
    assert run(engine(), [launch(i, i, 1, kind="g4dn.xlarge") for i in range(3)]) == []  # weighted 15
    gpu = run(engine(), [launch(i, i, 1, kind="g4dn.xlarge") for i in range(4)])  # weighted 20
    assert [(a.severity, a.evidence["weighted_instances"]) for a in gpu] == [("critical", 20)]
    regions = ["us-east-1", "eu-west-1", "ap-south-1"]
    spread = [launch(10 * i, i, 8, region=regions[i]) for i in range(3)]  # 8 per region, 24 in all
    alerts = run(engine(), spread)
    assert [a.evidence["scopes"] for a in alerts] == [["principal"]]
    assert alerts[0].evidence["regions"] == regions and alerts[0].severity == "high"


def test_baseline_learns_a_busy_account_and_still_catches_its_spike() -> None:
    steady = [launch(600 * b + 30 * i, 100 * b + i, 2) for b in range(12) for i in range(15)]  # 30 per bucket
    spike = [launch(600 * 12 + i, 5000 + i, 10) for i in range(10)]  # 100 in one bucket
    alerts = run(engine(warmup_buckets=2), [*steady, *spike], batch=15)
    assert len(alerts) == 1
    evidence = alerts[0].evidence
    assert alerts[0].time - T0 >= 600 * 12 and 25 < evidence["baseline"] < 31
    assert evidence["limit"] == pytest.approx(3 * evidence["baseline"])
    assert evidence["instances"] > evidence["limit"]


def test_repeated_event_counts_once_and_out_of_order_still_fires() -> None:
    same = launch(0, 1, 15)
    assert run(engine(), [same, launch(5, 1, 15), launch(9, 2, 4)]) == []  # the repeat is not 15 more
    events = [launch(20 * i, i, 3) for i in range(8)]
    random.Random(3).shuffle(events)
    hooks = Counters()
    alerts = run(engine(hooks, lateness=900), events, batch=8)
    assert len(alerts) == 1 and alerts[0].evidence["instances"] >= 20
    assert hooks.late == 0


def test_late_beyond_lateness_is_counted_and_closed_buckets_stay_closed() -> None:
    hooks = Counters()
    eng = engine(hooks, lateness=60)
    assert run(eng, [launch(0, 1, 15)]) == []
    other = launch(3000, 2, 1, principal="arn:aws:iam::111122223333:user/other", region="eu-west-1")
    assert run(eng, [other]) == []
    assert run(eng, [launch(10, 3, 15)]) == []  # its bucket closed long ago: not added to it
    assert hooks.late == 1


def test_principal_spray_respects_the_cap_and_counts_evictions() -> None:
    hooks = Counters()
    eng = engine(hooks, max_keys=100)
    events = [launch(i * 0.01, i, 1, principal=f"arn:aws:iam::1:user/u{i}") for i in range(1000)]
    alerts = run(eng, events, batch=100)
    assert [a.evidence["scopes"] for a in alerts] == [["account_region"]]  # 1,000 launches in one account
    assert eng.detectors[0].state_keys() <= 100
    assert hooks.evicted >= 850


def test_snapshot_msgpack_restore_behaves_identically() -> None:
    history = [launch(600 * b + i, 100 * b + i, 4) for b in range(5) for i in range(3)]  # 12 per bucket
    kinds = ["c5.large", "c5.large", "p3.2xlarge", "c5.large", "c5.large", "c5.large"]
    attack = [launch(3000 + 30 * i, 900 + i, 5, kind=kind) for i, kind in enumerate(kinds)]
    original = engine(lateness=120)
    assert run(original, [*history, *attack[:1]]) == []
    restored = engine(lateness=120)
    restored.restore(roundtrip(original.snapshot()))
    expected = [a.to_dict() for a in run(original, attack[1:])]
    got = [a.to_dict() for a in run(restored, attack[1:])]
    for alert in (*expected, *got):
        alert.pop("detected_at")
    assert expected == got and len(got) == 1
    assert got[0]["severity"] == "critical" and got[0]["evidence"]["instance_types"]["p3.2xlarge"] == 5
