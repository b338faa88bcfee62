"""Timeline tests for ``access_denied_burst``: failures at t=…, alert expected at t=….

Events are built from a real Invictus ``GetPasswordData`` failure (``tests/data/stateful/burst``)
with times, ids, principals and API names changed; the real 29-failure burst is replayed as is.
Times are seconds after ``T0``; everything goes through :class:`DetectionEngine` batches.
"""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest

from detectors.access_denied_burst import AccessDeniedBurst
from detectors.alert import Alert
from detectors.event import Event, format_time, parse_event_time
from detectors.registry import detector_class
from tests.stateful_helpers import Counters, detector_engine, from_template, roundtrip, run_engine

DATA = Path(__file__).parent / "data" / "stateful" / "burst"
REAL = orjson.loads((DATA / "invictus_get_password_data.json").read_bytes())["Records"]
TEMPLATE = REAL[0]
T0 = parse_event_time("2024-05-01T10:00:00Z")
ROLE = "arn:aws:sts::123837392027:assumed-role/stolen-role/session"
APIS = [("ec2.amazonaws.com", "DescribeInstances"), ("s3.amazonaws.com", "ListBuckets"),
        ("iam.amazonaws.com", "ListUsers"), ("secretsmanager.amazonaws.com", "ListSecrets"),
        ("lambda.amazonaws.com", "ListFunctions20150331"), ("ssm.amazonaws.com", "DescribeParameters")]


def failure(t: float, n: int, *, api: tuple[str, str] = ("ec2.amazonaws.com", "GetPasswordData"),
            principal: str = ROLE, code: str | None = "Client.UnauthorizedOperation",
            identity_type: str = "AssumedRole") -> Event:
    record = from_template(TEMPLATE, T0 + t, f"{principal}-{n}")
    record["eventSource"], record["eventName"] = api
    record["userIdentity"]["arn"] = principal
    record["userIdentity"]["type"] = identity_type
    if code is None:
        record.pop("errorCode", None)
    else:
        record["errorCode"] = code
    return Event(record)


engine = partial(detector_engine, AccessDeniedBurst)
def run_all(engine: Any, events: list[Event], batch: int = 7) -> list[Alert]:
    """Every alert, continuations included."""
    return run_engine(engine, events, batch=batch)


def run(engine: Any, events: list[Event], batch: int = 7) -> list[Alert]:
    """The alerts that report a burst (without the continuations that only feed its incident)."""
    return [a for a in run_all(engine, events, batch) if not a.continues]


def test_registered_and_configured_like_yaml() -> None:
    assert detector_class("access_denied_burst") is AccessDeniedBurst
    config = AccessDeniedBurst.Config.model_validate({"window": "5m", "volume_threshold": 30})
    assert (config.window, config.volume_threshold, config.min_failures) == (300.0, 30, 10)
    assert "AccessDenied" in config.error_codes and "Client.UnauthorizedOperation" in config.error_codes
    with pytest.raises(pydantic.ValidationError):
        AccessDeniedBurst.Config.model_validate({"windw": "5m"})


def test_real_invictus_get_password_data_burst_is_flagged_once() -> None:
    events = [Event(r) for r in REAL]
    alerts = run(engine(), events)
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.severity == "medium" and alert.evidence["finding"] == "volume"
    assert alert.principal.endswith("ec2-get-password-data-role/aws-go-sdk-1688990082523310002")
    assert alert.evidence["failures"] == 20
    assert alert.evidence["apis"] == ["ec2.amazonaws.com:GetPasswordData"]
    assert alert.evidence["error_codes"] == ["Client.UnauthorizedOperation"]
    # every failure it counts is listed, so that its incident holds them all
    counted = [r["eventID"] for r in sorted(REAL, key=lambda r: r["eventTime"])][:20]
    assert alert.event_total == 20 and sorted(alert.event_ids) == sorted(counted)
    assert alert.tags == ["attack.discovery", "attack.t1580", "attack.t1526"]
    assert alert.to_dict()["time"] == format_time(alert.time)
    # it names what was denied: the API, then the instances of the first ten failures (max_evidence)
    first_ten = [r["requestParameters"]["instanceId"] for r in sorted(REAL, key=lambda r: r["eventTime"])][:10]
    assert alert.resources[0] == {"type": "aws_api", "id": "ec2.amazonaws.com:GetPasswordData",
                                  "account_id": "123837392027", "detail": "denied"}
    assert [(r["type"], r["id"]) for r in alert.resources[1:]] == [("ec2_instance", i) for i in first_ten]
    assert all(r["detail"] == "denied ec2.amazonaws.com:GetPasswordData" for r in alert.resources[1:])
    assert "Denied: ec2.amazonaws.com:GetPasswordData (on i-" in alert.summary
    assert first_ten[0] in alert.summary


def test_failures_after_the_alert_continue_it_for_its_incident() -> None:
    alerts = run_all(engine(), [Event(r) for r in REAL])
    opened, rest = alerts[0], alerts[1:]
    assert not opened.continues and len(rest) == 9 and all(a.continues for a in rest)
    assert all(a.event_total == 1 and len(a.event_ids) == 1 and a.entity == opened.entity for a in rest)
    assert all(a.account_id == opened.account_id and a.title == opened.title for a in rest)
    assert all(a.resources[0]["type"] == "ec2_instance" for a in rest)
    # the alert and its continuations account for every one of the 29 failures, once
    ids = [i for a in alerts for i in a.event_ids]
    assert len(ids) == 29 and set(ids) == {r["eventID"] for r in REAL}
    assert opened.event_total + sum(a.event_total for a in rest) == 29


def test_denied_resources_are_bounded_and_survive_a_snapshot_even_an_old_one() -> None:
    def on_instance(t: float, n: int) -> Event:
        event = failure(t, n)
        event.raw["requestParameters"] = {"instanceId": f"i-{n:04d}"}
        return Event(event.raw)

    events = [on_instance(5 * i, i) for i in range(25)]
    original = engine(lateness=900, max_evidence=3)
    assert run(original, events[:6]) == []
    saved = roundtrip(original.snapshot())
    restored = engine(lateness=900, max_evidence=3)
    restored.restore(saved)
    alerts = run(restored, events[6:])
    assert len(alerts) == 1
    assert [(r["type"], r["id"]) for r in alerts[0].resources] == [
        ("aws_api", "ec2.amazonaws.com:GetPasswordData"),
        ("ec2_instance", "i-0000"), ("ec2_instance", "i-0001"), ("ec2_instance", "i-0002"),
    ]
    old = roundtrip(original.snapshot())
    for entry in old["detectors"]["access_denied_burst"]["apis"]:
        del entry[4]  # written before denied resources were kept
    legacy = engine(lateness=900, max_evidence=3)
    legacy.restore(old)
    alerts = run(legacy, events[6:])
    assert [(r["type"], r["id"]) for r in alerts[0].resources] == [
        ("aws_api", "ec2.amazonaws.com:GetPasswordData"),
        ("ec2_instance", "i-0006"), ("ec2_instance", "i-0007"), ("ec2_instance", "i-0008"),
    ]


def test_breadth_fires_at_the_tenth_failure_across_five_apis() -> None:
    # t = 0, 20, …, 180: ten failures across five APIs → high at t=180.
    events = [failure(20 * i, i, api=APIS[i % 5]) for i in range(10)]
    alerts = run(engine(), events)
    assert [(a.time - T0, a.severity, a.evidence["finding"]) for a in alerts] == [(180, "high", "breadth")]
    assert alerts[0].evidence["distinct_apis"] == 5
    assert sorted(alerts[0].evidence["apis"]) == sorted(f"{s}:{n}" for s, n in APIS[:5])


def test_nine_failures_across_many_apis_and_nineteen_of_one_api_are_quiet() -> None:
    assert run(engine(), [failure(10 * i, i, api=APIS[i % 6]) for i in range(9)]) == []
    nineteen = [failure(5 * i, i) for i in range(19)]
    assert run(engine(), nineteen) == []
    alerts = run(engine(), [*nineteen, failure(95, 19)])
    found = [(a.time - T0, a.evidence["finding"], a.evidence["failures"]) for a in alerts]
    assert found == [(95, "volume", 20)]


def test_failures_spread_wider_than_the_window_and_other_errors_are_not_counted() -> None:
    slow = [failure(40 * i, i, api=APIS[i % 6]) for i in range(40)]  # 6 APIs, but 16 per 10 min at most
    alerts = run(engine(min_failures=17, volume_threshold=100), slow)
    assert alerts == []  # at most 16 failures ever fall in one 600 s window
    throttled = [failure(i, i, code="ThrottlingException") for i in range(50)]
    succeeded = [failure(i, 100 + i, code=None) for i in range(50)]
    service = [failure(i, 200 + i, identity_type="AWSService", principal="ec2.amazonaws.com")
               for i in range(50)]
    assert run(engine(), [*throttled, *succeeded, *service]) == []
    scanner = [failure(i, i, principal="arn:aws:sts::1:assumed-role/prowler/x") for i in range(50)]
    assert run(engine(ignore_principals=("arn:aws:sts::*:assumed-role/prowler/*",)), scanner) == []


def test_one_alert_per_window_and_the_next_one_counts_what_was_held_back() -> None:
    # A failure every 3 s for 15 minutes: one alert at the 20th (t=57), the next a window later (t=657)
    # carrying the 199 reports held back in between; then a new burst after a quiet hour starts afresh.
    ongoing = [failure(i * 3, i) for i in range(300)]
    later = [failure(5000 + i, 1000 + i) for i in range(25)]
    alerts = run(engine(), [*ongoing, *later])
    assert [a.time - T0 for a in alerts] == [57, 657, 5019]
    assert [a.evidence["suppressed"] for a in alerts] == [0, 199, 0]
    assert len({a.id for a in alerts}) == 3


def test_out_of_order_within_lateness_still_fires_once() -> None:
    events = [failure(20 * i, i, api=APIS[i % 5]) for i in range(12)]
    random.Random(7).shuffle(events)
    hooks = Counters()
    alerts = run(engine(hooks, lateness=900), events, batch=12)
    assert len(alerts) == 1 and alerts[0].evidence["finding"] == "breadth"
    assert hooks.late == 0


def test_late_beyond_lateness_is_counted_and_cannot_complete_an_expired_window() -> None:
    hooks = Counters()
    eng = engine(hooks, lateness=60)
    early = [failure(i, i, api=APIS[i % 5]) for i in range(9)]
    assert run(eng, early) == []
    assert run(eng, [failure(2000, 50, principal="arn:aws:iam::1:user/other")]) == []  # watermark → 1940
    assert run(eng, [failure(9.5, 9, api=APIS[4])]) == []  # would have been the tenth
    assert hooks.late == 1


def test_key_spray_respects_the_cap_and_counts_evictions() -> None:
    hooks = Counters()
    eng = engine(hooks, max_keys=100)
    events = [failure(i * 0.01, i, principal=f"arn:aws:iam::1:user/u{i}") for i in range(1000)]
    assert run(eng, events, batch=100) == []
    detector = eng.detectors[0]
    assert detector.state_keys() <= 100
    assert hooks.evicted >= 900


def test_snapshot_msgpack_restore_behaves_identically() -> None:
    events = [failure(10 * i, i, api=APIS[i % 6]) for i in range(30)]
    head, tail = events[:8], events[8:]
    original = engine(lateness=900)
    assert run(original, head) == []
    saved = roundtrip(original.snapshot())
    restored = engine(lateness=900)
    restored.restore(saved)
    assert restored.detectors[0].state_keys() == original.detectors[0].state_keys() == 1
    expected = [a.to_dict() for a in run(original, tail)]
    got = [a.to_dict() for a in run(restored, tail)]
    for alert in (*expected, *got):
        alert.pop("detected_at")
    assert expected == got and len(expected) == 1
    assert got[0]["evidence"]["finding"] == "breadth"
    with pytest.raises(ValueError):
        restored.detectors[0].restore({"version": 1, "kind": "something_else"})
