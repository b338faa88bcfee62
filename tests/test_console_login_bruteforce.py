"""Timeline tests for ``console_login_bruteforce``: sign-ins at t=…, alerts expected at t=….

Failed sign-ins are built from Panther's ``Standard.BruteForceByIP`` test event and successes from
a real Invictus ``ConsoleLogin`` (``tests/data/stateful/burst/console_logins.json``), with times,
ids, addresses and user names changed.  Times are seconds after ``T0``; everything goes through
:class:`DetectionEngine` batches.
"""

from __future__ import annotations

import ipaddress
from functools import partial
from pathlib import Path

import orjson
import pydantic
import pytest

from detectors.alert import Alert
from detectors.console_login_bruteforce import ConsoleLoginBruteforce, user_of
from detectors.event import Event, parse_event_time
from detectors.registry import detector_class
from tests.stateful_helpers import Counters, detector_engine, from_template, roundtrip, run_engine

DATA = orjson.loads((Path(__file__).parent / "data" / "stateful" / "burst" / "console_logins.json")
                    .read_bytes())
FAILURE = DATA["panther_failure"][0]
SUCCESS = DATA["invictus_success"][1]
ACCOUNT = "123837392027"
T0 = parse_event_time("2024-05-01T10:00:00Z")
ATTACKER = "203.0.113.66"


def login(t: float, n: int, *, ok: bool = False, user: str = "bert-jan", ip: str = ATTACKER,
          kind: str = "IAMUser") -> Event:
    record = from_template(SUCCESS if ok else FAILURE, T0 + t, f"login-{n}")
    record["sourceIPAddress"] = ip
    record["recipientAccountId"] = ACCOUNT
    record["userIdentity"] = {"type": kind, "accountId": ACCOUNT, "userName": user,
                              "arn": f"arn:aws:iam::{ACCOUNT}:user/{user}" if kind == "IAMUser" else None}
    if kind == "Root":
        record["userIdentity"]["arn"] = f"arn:aws:iam::{ACCOUNT}:root"
    return Event(record)


engine = partial(detector_engine, ConsoleLoginBruteforce)
run = partial(run_engine, batch=3)


def timeline(alerts: list[Alert]) -> list[tuple[float, str, str]]:
    return [(a.time - T0, a.severity, a.evidence["finding"]) for a in alerts]


def test_registered_and_configured_like_yaml() -> None:
    assert detector_class("console_login_bruteforce") is ConsoleLoginBruteforce
    config = ConsoleLoginBruteforce.Config.model_validate({"window": "15m",
                                                           "ignore_networks": ["10.0.0.0/8"]})
    assert (config.window, config.threshold, config.success_within) == (900.0, 5, None)
    with pytest.raises(pydantic.ValidationError, match="CIDR"):
        ConsoleLoginBruteforce.Config(ignore_networks=("not-a-network",))
    with pytest.raises(pydantic.ValidationError):
        ConsoleLoginBruteforce.Config.model_validate({"treshold": 3})


def test_user_name_comes_from_the_identity_and_hidden_names_are_labelled() -> None:
    assert user_of(login(0, 1, user="alice")) == "alice"
    assert user_of(login(0, 1, user="HIDDEN_DUE_TO_SECURITY_REASONS")) == "<hidden>"
    assert user_of(login(0, 1, kind="Root", user="")) == "root"
    root_failure = next(e for e in DATA["panther_failure"] if e["userIdentity"]["type"] == "Root")
    assert user_of(Event(root_failure)) == "root"  # Panther's real-shaped root failure


def test_five_failures_are_one_alert_naming_address_and_user_and_four_are_quiet() -> None:
    four = [login(50 * i, i) for i in range(4)]
    assert run(engine(), four) == []
    alerts = run(engine(), [*four, login(200, 4), login(230, 5)])
    assert timeline(alerts) == [(200, "medium", "burst")]
    alert = alerts[0]
    assert alert.evidence["keys"] == [f"ip:{ATTACKER}", f"user:{ACCOUNT}/bert-jan"]
    assert alert.evidence["failures"] == 5 and alert.evidence["users_tried"] == ["bert-jan"]
    assert alert.source_ips == [ATTACKER] and alert.principal == f"arn:aws:iam::{ACCOUNT}:user/bert-jan"
    assert alert.event_ids == [f"login-{i}" for i in range(5)]
    assert alert.tags == ["attack.credential_access", "attack.t1110"]


def test_success_after_eight_failures_over_four_minutes_is_critical() -> None:
    attack = [login(30 * i, i) for i in range(8)] + [login(240, 99, ok=True)]
    alerts = run(engine(), attack)
    assert timeline(alerts) == [(120, "medium", "burst"), (240, "critical", "success_after_failures")]
    success = alerts[1]
    assert success.evidence["success_event_id"] == "login-99"
    assert success.evidence["failures"] == 8
    assert success.principal == f"arn:aws:iam::{ACCOUNT}:user/bert-jan"
    assert "login-99" in success.event_ids


def test_success_for_the_same_user_from_another_address_is_critical_too() -> None:
    attack = [login(30 * i, i, ip=f"198.51.100.{i}") for i in range(5)]
    attack.append(login(200, 99, ok=True, ip="192.0.2.1"))
    alerts = run(engine(), attack)
    assert timeline(alerts) == [(120, "medium", "burst"), (200, "critical", "success_after_failures")]
    assert alerts[0].evidence["keys"] == [f"user:{ACCOUNT}/bert-jan"]
    assert sorted(alerts[0].evidence["source_ips"]) == sorted(f"198.51.100.{i}" for i in range(5))


def test_no_critical_without_a_burst_or_long_after_it() -> None:
    few = [login(10 * i, i) for i in range(4)] + [login(60, 99, ok=True)]
    assert run(engine(), few) == []
    late_success = [login(10 * i, i) for i in range(5)] + [login(40 + 601, 99, ok=True)]
    assert timeline(run(engine(), late_success)) == [(40, "medium", "burst")]
    before = [login(0, 99, ok=True)] + [login(10 + i, i) for i in range(5)]  # the success came first
    assert timeline(run(engine(), before)) == [(14, "medium", "burst")]


def test_spraying_many_users_from_one_address() -> None:
    users = ["alice", "bob", "carol", "dave", "erin", "frank"]
    alerts = run(engine(), [login(20 * i, i, user=u) for i, u in enumerate(users)])
    assert timeline(alerts) == [(80, "high", "spraying")]
    assert alerts[0].evidence["keys"] == [f"ip:{ATTACKER}"]
    assert alerts[0].evidence["distinct_users"] == 5 and alerts[0].evidence["users_tried"] == users[:5]
    assert "attack.t1110.003" in alerts[0].tags
    assert alerts[0].principal == ""
    assert [(r["type"], r["id"]) for r in alerts[0].resources] == [("iam_user", u) for u in users[:5]], \
        "the alert names the users whose passwords were tried"


def test_hidden_user_names_count_for_the_address_only() -> None:
    hidden = [login(i, i, user="HIDDEN_DUE_TO_SECURITY_REASONS") for i in range(5)]
    alerts = run(engine(), hidden)
    assert [a.evidence["keys"] for a in alerts] == [[f"ip:{ATTACKER}"]]
    assert alerts[0].evidence["users_tried"] == ["<hidden>"]


def test_failures_within_the_same_second_and_ignored_networks() -> None:
    burst = [login(7, i) for i in range(12)]  # scripted: all in one second
    assert timeline(run(engine(), burst)) == [(7, "medium", "burst")]
    corporate = [login(i, i, ip="10.1.2.3", user=f"u{i}") for i in range(10)]
    assert run(engine(ignore_networks=("10.0.0.0/8",)), corporate) == []


def test_out_of_order_within_lateness_still_matches_the_success() -> None:
    arrivals = [login(240, 99, ok=True), *[login(30 * i, i) for i in range(7, -1, -1)]]
    hooks = Counters()
    alerts = run(engine(hooks, lateness=900), arrivals, batch=9)
    findings = sorted(a.evidence["finding"] for a in alerts)
    assert findings == ["burst", "success_after_failures"]
    success = next(a for a in alerts if a.evidence["finding"] == "success_after_failures")
    assert success.severity == "critical" and success.evidence["success_event_id"] == "login-99"
    assert hooks.late == 0


def test_late_beyond_lateness_is_counted() -> None:
    hooks = Counters()
    eng = engine(hooks, lateness=60)
    assert run(eng, [login(i, i) for i in range(3)]) == []
    assert run(eng, [login(3000, 50, ip="192.0.2.200", user="other")]) == []
    assert run(eng, [login(3, 3), login(4, 4)]) == []  # would have completed the burst
    assert hooks.late == 2


def test_address_spray_respects_the_cap_and_counts_evictions() -> None:
    hooks = Counters()
    eng = engine(hooks, max_keys=100)
    base = int(ipaddress.ip_address("100.64.0.0"))
    events = [login(i * 0.01, i, ip=str(ipaddress.ip_address(base + i)), user=f"u{i}") for i in range(1000)]
    assert run(eng, events, batch=100) == []
    assert eng.detectors[0].state_keys() <= 100
    assert hooks.evicted >= 1800  # address and user keys alike


def test_snapshot_msgpack_restore_behaves_identically() -> None:
    attack = [login(30 * i, i) for i in range(8)] + [login(240, 99, ok=True)]
    original = engine(lateness=900)
    head = run(original, attack[:6])
    assert timeline(head) == [(120, "medium", "burst")]
    restored = engine(lateness=900)
    restored.restore(roundtrip(original.snapshot()))
    expected = [a.to_dict() for a in run(original, attack[6:])]
    got = [a.to_dict() for a in run(restored, attack[6:])]
    for alert in (*expected, *got):
        alert.pop("detected_at")
    assert expected == got
    assert [a["severity"] for a in got] == ["critical"] and got[0]["evidence"]["failures"] == 8
