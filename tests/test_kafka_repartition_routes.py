"""Key declarations and the routing decision of :mod:`daemon.repartition` (no broker).

Every built-in detector declares the key its state needs; the routing decision puts a detector on
the input partitions when its key is the producer's key (or it is stateless) and on the internal
topic of its key otherwise; events are forwarded only to the routes whose detectors could use
them, keyed so one key always lands on one partition.
"""

from __future__ import annotations

from typing import Any

import pytest

from daemon.repartition.keys import message_key
from daemon.repartition.routes import plan_routes, repartition_topic
from detectors.base import STATE_KEYS, Detector
from detectors.event import Event
from detectors.registry import DETECTORS, detector_class

DECLARED = {
    "cloudtrail_tampering": None,
    "cloudtrail_silence": "account",
    "console_login_bruteforce": "organisation",
    "access_denied_burst": "principal",
    "impossible_travel": "principal",
    "credential_exfiltration": "account",
    "new_region": "account",
    "run_instances_spike": "account",
}


def _detectors(*names: str) -> list[Detector]:
    out = []
    for name in names:
        cls = detector_class(name)
        out.append(cls(cls.Config()))
    return out


def _event(**fields: Any) -> Event:
    record = {"eventTime": "2024-06-01T00:00:00Z", "eventName": "ConsoleLogin",
              "eventSource": "signin.amazonaws.com", "eventID": "e1", "recipientAccountId": "111111111111",
              "sourceIPAddress": "203.0.113.7",
              "userIdentity": {"type": "IAMUser", "accountId": "111111111111", "userName": "alice",
                               "arn": "arn:aws:iam::111111111111:user/alice"}}
    record.update(fields)
    return Event(record, "test")


def test_every_builtin_declares_a_known_key() -> None:
    for name in DETECTORS:
        if name == "sigma":
            continue
        declared = detector_class(name).state_key
        assert declared is None or declared in STATE_KEYS, name
        assert declared == DECLARED[name], f"{name} declares {declared!r}"


def test_input_keyed_by_account_repartitions_the_other_keys() -> None:
    routes = plan_routes(_detectors(*DECLARED), group_id="g", topics=["ct"], input_key="account", repartition=True)
    assert routes.local == {"cloudtrail_tampering", "credential_exfiltration", "new_region", "run_instances_spike"}
    # cloudtrail_silence is account-keyed but needs the organisation's clock: an internal partition's
    assert routes.remote == {"principal": {"access_denied_burst", "impossible_travel"},
                             "organisation": {"console_login_bruteforce"}, "account": {"cloudtrail_silence"}}
    assert routes.internal_topics() == {"g-ct-repartition-principal": ("ct", "principal"),
                                        "g-ct-repartition-organisation": ("ct", "organisation"),
                                        "g-ct-repartition-account": ("ct", "account")}
    assert routes.detectors_for("ct") == routes.local
    assert routes.detectors_for("g-ct-repartition-principal") == {"access_denied_burst", "impossible_travel"}
    assert routes.topic_key("ct") is None and routes.topic_key("g-ct-repartition-organisation") == "organisation"


def test_round_robin_input_keeps_only_stateless_detectors_on_input_partitions() -> None:
    routes = plan_routes(_detectors(*DECLARED), group_id="g", topics=["a", "b"], input_key="none", repartition=True)
    assert routes.local == {"cloudtrail_tampering"}
    assert set(routes.remote) == {"account", "principal", "organisation"}
    assert len(routes.internal_topics()) == 6
    assert repartition_topic("g", "b", "account") in routes.internal_topics()


def test_input_keyed_by_principal_runs_principal_detectors_in_place() -> None:
    routes = plan_routes(_detectors(*DECLARED), group_id="g", topics=["ct"], input_key="principal", repartition=True)
    assert {"access_denied_burst", "impossible_travel", "cloudtrail_tampering"} <= routes.local
    assert routes.remote["account"] == {"credential_exfiltration", "new_region", "run_instances_spike",
                                        "cloudtrail_silence"}


def test_repartition_off_runs_everything_on_input_and_names_what_is_partial() -> None:
    routes = plan_routes(_detectors(*DECLARED), group_id="g", topics=["ct"], input_key="account", repartition=False)
    assert routes.local == set(DECLARED) and not routes.remote and not routes.repartitions
    assert routes.unrouted == {"access_denied_burst": "principal", "impossible_travel": "principal",
                               "cloudtrail_silence": "account", "console_login_bruteforce": "organisation"}


def test_a_topic_pattern_source_cannot_repartition() -> None:
    routes = plan_routes(_detectors("cloudtrail_silence"), group_id="g", topics=[], input_key="account",
                         repartition=True)
    assert not routes.repartitions and routes.unrouted == {"cloudtrail_silence": "account"}


def test_an_unknown_declared_key_is_refused() -> None:
    class Odd(Detector):
        name = "odd"
        state_key = "tenant"  # type: ignore[assignment]

    with pytest.raises(ValueError, match="odd declares state key 'tenant'"):
        plan_routes([Odd(Odd.Config())], group_id="g", topics=["ct"], input_key="account", repartition=True)


def test_events_go_only_to_routes_whose_detectors_could_use_them() -> None:
    routes = plan_routes(_detectors("console_login_bruteforce", "run_instances_spike", "access_denied_burst"),
                         group_id="g", topics=["ct"], input_key="none", repartition=True)
    login = _event()
    launch = _event(eventName="RunInstances", eventSource="ec2.amazonaws.com")
    assert "organisation" in routes.targets(login) and "account" not in routes.targets(login)
    assert "account" in routes.targets(launch) and "organisation" not in routes.targets(launch)
    assert "principal" in routes.targets(launch)  # access_denied_burst reads every event


def test_message_keys_put_one_key_on_one_partition() -> None:
    alice = _event()
    assert message_key("account", alice) == b"111111111111"
    assert message_key("principal", alice) == b"arn:aws:iam::111111111111:user/alice"
    assert message_key("source_ip", alice) == b"203.0.113.7"
    assert message_key("organisation", alice) == message_key("organisation", _event(recipientAccountId="2" * 12))
    # a missing value is one fixed key, never None (which Kafka would spread round-robin)
    assert message_key("source_ip", _event(sourceIPAddress=None)) == b"-"


def test_sigma_correlations_declare_their_key_from_group_by() -> None:
    from detectors.sigma.state_key import group_by_key, rule_set_key

    assert group_by_key(["userIdentity.arn", "eventName"]) == "principal"
    assert group_by_key(["sourceIPAddress"]) == "source_ip"
    assert group_by_key([]) == "organisation"
    assert group_by_key(["requestParameters.bucketName"]) == "account"
    assert rule_set_key([], tracks_creators=False) is None  # single-event rules only: judged on input
    assert rule_set_key([["userIdentity.arn"], ["userIdentity.principalId"]], tracks_creators=False) == "principal"
    assert rule_set_key([["userIdentity.arn"]], tracks_creators=True) == "account"  # mixed → account
    assert rule_set_key([[]], tracks_creators=False) == "organisation"


def test_the_shipped_sigma_pack_runs_on_the_account_key(tmp_path: Any) -> None:
    from pathlib import Path

    cls = detector_class("sigma")
    pack = Path(__file__).resolve().parents[1] / "config" / "rules"
    sigma = cls(cls.Config(paths=[str(pack)]))  # type: ignore[call-arg]
    assert sigma.required_key() == "account"
    correlation = tmp_path / "spray.yml"
    correlation.write_text(
        "title: Failed logins\nid: 5a0c4a4e-0000-4000-8000-000000000001\nname: failed_login\n"
        "logsource: {product: aws, service: cloudtrail}\n"
        "detection: {selection: {eventName: ConsoleLogin, errorMessage: Failed authentication}, "
        "condition: selection}\n---\n"
        "title: Many failed logins from one address\nid: 5a0c4a4e-0000-4000-8000-000000000002\n"
        "correlation: {type: event_count, rules: [failed_login], group-by: [sourceIPAddress], timespan: 10m, "
        "condition: {gte: 5}}\nlevel: high\n")
    by_ip = cls(cls.Config(paths=[str(correlation)]))  # type: ignore[call-arg]
    assert not by_ip.load_errors, by_ip.load_errors
    assert by_ip.required_key() == "source_ip"
    routes = plan_routes([by_ip], group_id="g", topics=["ct"], input_key="account", repartition=True)
    assert routes.remote == {"source_ip": {"sigma"}}
