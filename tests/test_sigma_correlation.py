"""Sigma correlation rules as timelines: events at t=…, alert expected at t=…, through the engine.

Events are real CloudTrail records (``tests/data/sigma/correlation/templates.json``) with their
times, ids, IPs and principals changed.  Rules are the example pack in
``tests/data/sigma/correlation/rules/`` plus small correlations written per test.
"""

from __future__ import annotations

import copy
import gc
import shutil
import tracemalloc
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest
import yaml

from detectors.alert import Alert
from detectors.base import DetectorContext
from detectors.engine import DetectionEngine
from detectors.event import Event, format_time
from detectors.sigma.correlation_closing import ClosingWindows
from detectors.sigma.detector import SigmaConfig, SigmaDetector

DATA = Path(__file__).parent / "data" / "sigma" / "correlation"
TEMPLATES = {r["eventName"]: r for r in orjson.loads((DATA / "templates.json").read_bytes())}
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
LATENESS = 120.0


def rid(n: int) -> str:
    return f"7c1a3f0e-2f51-4a8e-9d7e-{n:012d}"


FAILED, SUCCESS, CREATE_USER, ATTACH_ADMIN, GET_SECRET = (rid(n) for n in range(1, 6))
BRUTE, SPRAY, NEW_ADMIN, BRUTE_THEN_SUCCESS, SECRETS = (rid(n) for n in range(101, 106))


# -- events ----------------------------------------------------------------------------------------


def event(name: str, t: float, eid: str, *, ip: str = "198.51.100.7", user: str = "alice", **fields: Any) -> Event:
    raw = copy.deepcopy(TEMPLATES[name])
    raw["eventTime"] = format_time(T0 + t)
    raw["eventID"] = eid
    raw["sourceIPAddress"] = ip
    identity = raw["userIdentity"]
    identity["userName"] = user
    identity["arn"] = f"arn:aws:iam::{identity['accountId']}:user/{user}"
    raw.update(fields)
    return Event(raw)


def failed(t: float, eid: str, **kw: Any) -> Event:
    return event("ConsoleLogin", t, eid, responseElements={"ConsoleLogin": "Failure"},
                 errorMessage="Failed authentication", **kw)


def success(t: float, eid: str, **kw: Any) -> Event:
    return event("ConsoleLogin", t, eid, responseElements={"ConsoleLogin": "Success"}, **kw)


def create_user(t: float, eid: str, target: str = "backdoor") -> Event:
    return event("CreateUser", t, eid, user="bert-jan", requestParameters={"userName": target})


def attach_admin(t: float, eid: str, target: str = "backdoor") -> Event:
    return event("AttachUserPolicy", t, eid, user="bert-jan", requestParameters={
        "userName": target, "policyArn": "arn:aws:iam::aws:policy/AdministratorAccess"})


def secret(t: float, eid: str, secret_id: str, **kw: Any) -> Event:
    return event("GetSecretValue", t, eid, requestParameters={"secretId": secret_id}, **kw)


# -- rules and harness -------------------------------------------------------------------------------


def correlation(n: int, kind: str, rules: list[str], *, group_by: list[str] | None = None, timespan: str = "5m",
                condition: dict[str, Any] | str | None = None, **extra: Any) -> str:
    body: dict[str, Any] = {"type": kind, "rules": rules, "timespan": timespan}
    if group_by is not None:
        body["group-by"] = group_by
    if condition is not None:
        body["condition"] = condition
    body.update(extra.pop("body", {}))
    document = {"title": f"correlation {n}", "id": rid(n), "name": f"corr_{n}", "correlation": body,
                "level": "high", **extra}
    return yaml.safe_dump(document, sort_keys=False)


class Harness:
    """A SigmaDetector in a DetectionEngine, with late/evict counters."""

    def __init__(self, rules_dir: Path, *, max_keys: int = 100_000, **config: Any) -> None:
        self.late = 0
        self.evicted = 0
        context = DetectorContext(allowed_lateness=LATENESS, max_keys=max_keys,
                                  on_late=self._on_late, on_evict=self._on_evict)
        self.detector = SigmaDetector(SigmaConfig(paths=[str(rules_dir)], **config), context)
        assert self.detector.load_errors == []
        self.engine = DetectionEngine([self.detector], allowed_lateness=LATENESS)

    def _on_late(self, name: str, n: int) -> None:
        assert name == "sigma"
        self.late += n

    def _on_evict(self, name: str, n: int) -> None:
        self.evicted += n

    def run_all(self, *batches: list[Event]) -> list[Alert]:
        """Every alert, continuations (matches inside a correlation's throttle) included."""
        out: list[Alert] = []
        for batch in batches:
            out.extend(self.engine.process_many(batch))
        return out

    def run(self, *batches: list[Event]) -> list[Alert]:
        """The alerts that report a correlation (not the continuations that only feed its incident)."""
        return [a for a in self.run_all(*batches) if not a.continues]


def rules_dir(tmp_path: Path, *correlations: str) -> Path:
    shutil.copy(DATA / "rules" / "base_rules.yml", tmp_path / "base_rules.yml")
    for index, text in enumerate(correlations):
        (tmp_path / f"correlation{index}.yml").write_text(text)
    return tmp_path


def only(alerts: list[Alert], rule_id: str) -> list[Alert]:
    return [alert for alert in alerts if alert.rule_id == rule_id]


BRUTE_FORCE = correlation(201, "event_count", ["ct_console_login_failed"], group_by=["sourceIPAddress"],
                          condition={"gte": 5})


# -- event_count -------------------------------------------------------------------------------------


def test_event_count_fires_at_the_fifth_failure_inside_the_timespan(tmp_path: Path) -> None:
    h = Harness(rules_dir(tmp_path, BRUTE_FORCE))
    assert h.run([failed(t, f"f{t}") for t in (0, 30, 60, 90)]) == []
    (alert,) = h.run([failed(120, "f120")])
    assert alert.detector == "sigma" and alert.rule_id == rid(201) and alert.severity == "high"
    assert alert.time == T0 + 120
    assert sorted(alert.event_ids) == ["f0", "f120", "f30", "f60", "f90"]
    assert alert.evidence["correlation_type"] == "event_count"
    assert alert.evidence["group_by"] == {"sourceIPAddress": "198.51.100.7"}
    assert alert.evidence["count"] == 5 and alert.evidence["timespan"] == "5m"
    assert alert.entity == f"{rid(201)}|sourceIPAddress=198.51.100.7"
    assert alert.source_ips == ["198.51.100.7"] and alert.account_id


def test_event_count_does_not_fire_when_spread_wider_than_the_timespan(tmp_path: Path) -> None:
    h = Harness(rules_dir(tmp_path, BRUTE_FORCE))
    assert h.run(*[[failed(t, f"f{t}")] for t in (0, 100, 200, 300, 400, 500)]) == []


def test_event_count_out_of_order_within_lateness_still_fires(tmp_path: Path) -> None:
    h = Harness(rules_dir(tmp_path, BRUTE_FORCE))
    alerts = h.run([failed(120, "f120")], [failed(0, "f0"), failed(90, "f90")], [failed(30, "f30")],
                   [failed(60, "f60")])
    (alert,) = alerts
    assert sorted(alert.event_ids) == ["f0", "f120", "f30", "f60", "f90"] and alert.time == T0 + 120
    assert h.late == 0


def test_event_count_late_events_beyond_lateness_are_counted(tmp_path: Path) -> None:
    h = Harness(rules_dir(tmp_path, BRUTE_FORCE))
    h.run([failed(1000, "now")])  # watermark = 1000 - 120
    assert h.run([failed(t, f"old{t}") for t in (0, 10)]) == []
    assert h.late == 2


def test_group_by_keeps_sources_apart_and_throttles_per_group(tmp_path: Path) -> None:
    h = Harness(rules_dir(tmp_path, BRUTE_FORCE))
    batch = [failed(t, f"a{t}", ip="198.51.100.7") for t in range(0, 40, 10)]
    batch += [failed(t, f"b{t}", ip="203.0.113.9") for t in range(0, 40, 10)]
    assert h.run(batch) == []  # four each: not five from one source
    alerts = h.run([failed(50, "a50", ip="198.51.100.7"), failed(55, "b55", ip="203.0.113.9")])
    assert [a.evidence["group_by"]["sourceIPAddress"] for a in alerts] == ["198.51.100.7", "203.0.113.9"]
    assert alerts[0].id != alerts[1].id
    # the attack goes on: one alert per group per timespan, the next one says how many it stood for
    going_on = h.run_all([failed(t, f"a{t}") for t in range(60, 300, 10)])
    assert [a for a in going_on if not a.continues] == []
    # … and each held-back match continues the alert, so that its incident counts every event
    assert alerts[0].event_total == 5
    assert [(a.entity, a.event_ids, a.event_total) for a in going_on] == [
        (alerts[0].entity, [f"a{t}"], 1) for t in range(60, 300, 10)]
    (later,) = h.run([failed(400, "a400")] + [failed(t, f"a{t}") for t in (410, 420, 430, 440)])
    assert later.evidence["suppressed"] == 24 and later.time == T0 + 400


def test_base_rules_of_a_correlation_do_not_alert_alone(tmp_path: Path) -> None:
    h = Harness(rules_dir(tmp_path, BRUTE_FORCE))
    assert h.detector.rules.get(FAILED).generate is False  # type: ignore[union-attr]
    assert h.run([failed(0, "f0")]) == []
    generating = correlation(202, "event_count", ["ct_console_login_failed"], group_by=["sourceIPAddress"],
                             condition={"gte": 5}, body={"generate": True})
    (tmp_path / "g").mkdir()
    h2 = Harness(rules_dir(tmp_path / "g", generating))
    assert [a.rule_id for a in h2.run([failed(0, "f0")])] == [FAILED]


# -- value_count -------------------------------------------------------------------------------------


def test_value_count_distinct_users_per_ip(tmp_path: Path) -> None:
    h = Harness(DATA / "rules")
    same_user = [failed(t, f"s{t}", user="alice") for t in range(0, 50, 10)]
    assert only(h.run(same_user), SPRAY) == []
    alerts = h.run([failed(60, "u1", user="bob")], [failed(70, "u2", user="carol")])
    (alert,) = only(alerts, SPRAY)
    assert alert.evidence["count"] == 3 and set(alert.evidence["values"]) == {"alice", "bob", "carol"}
    assert "u1" in alert.event_ids and "u2" in alert.event_ids and "s0" in alert.event_ids
    assert alert.tags == ["attack.credential-access", "attack.t1110.003"]
    assert alert.evidence["falsepositives"] == ["A shared office NAT during a password rotation"]
    # another IP with two users only: nothing
    assert only(h.run([failed(80, "x1", ip="192.0.2.1", user="a"), failed(81, "x2", ip="192.0.2.1", user="b")]),
                SPRAY) == []


def test_value_count_secrets_read_by_one_principal(tmp_path: Path) -> None:
    h = Harness(DATA / "rules")
    reads = [secret(t * 10, f"g{t}", f"prod/db-{t % 19}") for t in range(40)]  # 19 distinct only
    assert only(h.run(reads), SECRETS) == []
    (alert,) = only(h.run([secret(400, "g40", "prod/payments-key")]), SECRETS)
    assert alert.evidence["count"] == 20 and alert.principal.endswith(":user/alice")
    assert len(alert.event_ids) == 10  # bounded evidence


# -- temporal_ordered / temporal ----------------------------------------------------------------------


def test_temporal_ordered_new_user_then_admin_policy(tmp_path: Path) -> None:
    h = Harness(DATA / "rules")
    (alert,) = only(h.run([create_user(0, "c1"), attach_admin(240, "a1")]), NEW_ADMIN)
    assert alert.evidence["group_by"] == {"target_user": "backdoor"}
    assert [step["rule_id"] for step in alert.evidence["sequence"]] == [CREATE_USER, ATTACH_ADMIN]
    assert sorted(alert.event_ids) == ["a1", "c1"]


def test_temporal_ordered_wrong_order_or_other_user_does_not_fire(tmp_path: Path) -> None:
    h = Harness(DATA / "rules")
    assert only(h.run([attach_admin(0, "a1"), create_user(60, "c1")]), NEW_ADMIN) == []
    assert only(h.run([create_user(100, "c2", "svc-x"), attach_admin(160, "a2", "svc-y")]), NEW_ADMIN) == []
    assert only(h.run([create_user(1000, "c3", "late"), attach_admin(1700, "a3", "late")]), NEW_ADMIN) == []


def test_temporal_ordered_out_of_order_arrival_fires(tmp_path: Path) -> None:
    h = Harness(DATA / "rules")
    assert only(h.run([attach_admin(240, "a1")]), NEW_ADMIN) == []
    (alert,) = only(h.run([create_user(200, "c1")]), NEW_ADMIN)
    assert alert.time == T0 + 240


def test_temporal_any_order(tmp_path: Path) -> None:
    rule = correlation(210, "temporal", ["ct_iam_create_user", "ct_iam_attach_admin_user_policy"],
                       group_by=["userIdentity.arn"], timespan="10m")
    h = Harness(rules_dir(tmp_path, rule))
    (alert,) = h.run([attach_admin(0, "a1"), create_user(300, "c1")])
    assert alert.rule_id == rid(210) and alert.evidence["correlation_type"] == "temporal"
    assert h.run([create_user(2000, "c2"), attach_admin(2700, "a2")]) == []  # 11.7 minutes apart


def test_temporal_at_least_k_of_n_rules(tmp_path: Path) -> None:
    rule = correlation(211, "temporal", ["ct_iam_create_user", "ct_iam_attach_admin_user_policy",
                                         "ct_secretsmanager_get_secret_value"],
                       group_by=["sourceIPAddress"], timespan="10m", condition={"gte": 2})
    h = Harness(rules_dir(tmp_path, rule))
    assert h.run([create_user(0, "c1"), create_user(10, "c2")]) == []
    (alert,) = h.run([secret(20, "s1", "x")])
    assert alert.evidence["count"] == 2 and set(alert.evidence["values"]) == {CREATE_USER, GET_SECRET}


def test_chained_correlation_brute_force_then_success(tmp_path: Path) -> None:
    h = Harness(DATA / "rules")
    attack = [failed(t, f"f{t}", user=f"u{t}") for t in range(0, 50, 10)]
    alerts = h.run(attack)
    assert only(alerts, BRUTE) == []  # generate: false through the chaining rule: feeds, no alert
    (alert,) = only(h.run([success(300, "ok", user="u0")]), BRUTE_THEN_SUCCESS)
    assert alert.severity == "critical"
    steps = alert.evidence["sequence"]
    assert [s["rule_id"] for s in steps] == [BRUTE, SUCCESS] and steps[1]["event_id"] == "ok"
    assert steps[0]["time"] == format_time(T0 + 40)
    # success before the burst does not count
    h2 = Harness(DATA / "rules")
    assert only(h2.run([success(0, "ok", ip="192.0.2.50")], [failed(t, f"f{t}", ip="192.0.2.50")
                                                              for t in range(10, 60, 10)]), BRUTE_THEN_SUCCESS) == []


# -- conditions decided when the window closes ---------------------------------------------------------


def test_at_most_conditions_fire_only_when_the_window_closes(tmp_path: Path) -> None:
    rule = correlation(220, "event_count", ["ct_console_login_success"], group_by=["userIdentity.userName"],
                       timespan="1h", condition={"lt": 3})
    h = Harness(rules_dir(tmp_path, rule))
    # window [T0 - T0 % 3600, +1h): T0 is 22:13:20 → this window ends at 23:00:00
    end = 3600 - (T0 % 3600)
    assert h.run([success(0, "a1", user="rare"), success(10, "b1", user="busy"), success(20, "b2", user="busy"),
                  success(30, "b3", user="busy")]) == []
    assert h.run([success(end + LATENESS - 1, "tick", user="other")]) == []  # not closed yet
    (alert,) = h.run([success(end + LATENESS, "tick2", user="other")])
    assert alert.evidence["group_by"] == {"userIdentity.userName": "rare"} and alert.evidence["count"] == 1
    assert alert.event_ids == ["a1"] and alert.time == T0 + end
    assert alert.evidence["window_end"] == format_time(T0 + end)


def test_value_aggregates_on_closed_windows(tmp_path: Path) -> None:
    def reads(user: str, sizes: list[int], offset: int) -> list[Event]:
        return [event("GetSecretValue", offset + i, f"{user}{i}", user=user,
                      requestParameters={"secretId": "s"}, additionalEventData={"bytes": str(size)})
                for i, size in enumerate(sizes)]

    rules = [
        correlation(230, "value_sum", ["ct_secretsmanager_get_secret_value"], group_by=["userIdentity.userName"],
                    condition={"gte": 1000, "field": "additionalEventData.bytes"}),
        correlation(231, "value_avg", ["ct_secretsmanager_get_secret_value"], group_by=["userIdentity.userName"],
                    condition={"gt": 300, "field": "additionalEventData.bytes"}),
        correlation(232, "value_median", ["ct_secretsmanager_get_secret_value"], group_by=["userIdentity.userName"],
                    condition={"lte": 100, "field": "additionalEventData.bytes"}),
        correlation(233, "value_percentile", ["ct_secretsmanager_get_secret_value"],
                    group_by=["userIdentity.userName"],
                    condition={"gte": 700, "field": "additionalEventData.bytes", "percentile": 90}),
    ]
    h = Harness(rules_dir(tmp_path, *rules))
    start = -(T0 % 300)  # align with the 5-minute windows
    batch = reads("big", [400, 400, 400], int(start) + 1) + reads("small", [50, 60, 1000, 70], int(start) + 1)
    assert h.run(batch) == []
    alerts = h.run([secret(start + 300 + LATENESS, "tick", "s", user="ticker")])  # no bytes: not measured
    fired = sorted((a.rule_id[-3:], a.evidence["group_by"]["userIdentity.userName"]) for a in alerts)
    assert fired == [("230", "big"), ("230", "small"), ("231", "big"), ("232", "small"), ("233", "small")]
    by_rule = {(a.rule_id[-3:], a.evidence["group_by"]["userIdentity.userName"]): a for a in alerts}
    assert by_rule[("230", "big")].evidence["value"] == 1200.0
    assert by_rule[("232", "small")].evidence["value"] == 65.0


def test_closing_windows_count_a_redelivered_event_once_and_drop_judged_late_ones() -> None:
    late: list[int] = []
    windows = ClosingWindows(60, "count", on_late=late.append)
    windows.add("k", 10, "e1")
    windows.add("k", 11, "e1")
    (closed,) = windows.advance(60)
    assert closed.count == 1 and (closed.start, closed.end) == (0, 60)
    windows.add("k", 30, "e2")  # its window was judged already
    assert late == [1] and len(windows) == 0


# -- state: snapshot / restore / reload -------------------------------------------------------------------


def roundtrip(state: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(state, use_bin_type=True), raw=False, strict_map_key=False)


def test_snapshot_msgpack_restore_mid_window_completes_correlations(tmp_path: Path) -> None:
    closing = correlation(240, "value_count", ["ct_console_login_failed"], group_by=["sourceIPAddress"],
                          timespan="1h", condition={"eq": 2, "field": "userIdentity.userName"})
    rules = rules_dir(tmp_path, closing)
    for name in ("correlations.yml",):
        shutil.copy(DATA / "rules" / name, rules / name)
    first = Harness(rules)
    first.run([failed(t, f"f{t}", user=f"u{t % 2}") for t in (0, 10, 20)], [create_user(0, "c1")])
    state = roundtrip(first.engine.snapshot())
    assert first.detector.state_keys() > 0

    second = Harness(rules)
    second.engine.restore(state)
    assert second.detector.state_keys() == first.detector.state_keys()
    end = 3600 - (T0 % 3600)
    tail = [[failed(30, "f30", user="u1"), failed(40, "f40", user="u0"), attach_admin(100, "a1")],
            [success(end + LATENESS, "tick", ip="192.0.2.99")]]
    resumed = second.run(*tail)
    assert sorted(a.rule_id or "" for a in resumed) == [NEW_ADMIN, rid(240)]
    # identical to a run that never stopped
    straight = Harness(rules)
    straight.run([failed(t, f"f{t}", user=f"u{t % 2}") for t in (0, 10, 20)], [create_user(0, "c1")])
    assert [a.id for a in straight.run(*tail)] == [a.id for a in resumed]


def test_restore_rejects_newer_or_foreign_snapshots(tmp_path: Path) -> None:
    h = Harness(DATA / "rules")
    with pytest.raises(ValueError, match="newer"):
        h.detector.restore({"version": 99, "correlations": {}})
    with pytest.raises(ValueError):
        h.detector.restore(["not", "ours"])


def test_restore_drops_state_of_removed_or_changed_rules(tmp_path: Path) -> None:
    h = Harness(rules_dir(tmp_path, BRUTE_FORCE))
    h.run([failed(t, f"f{t}") for t in (0, 10, 20, 30)])
    state = roundtrip(h.detector.snapshot())
    state["correlations"]["gone-rule"] = state["correlations"][rid(201)]
    changed = copy.deepcopy(state)
    changed["correlations"][rid(201)]["fingerprint"] = "something-else"
    h2 = Harness(rules_dir(tmp_path, BRUTE_FORCE))
    assert h2.detector.correlations.restore(changed) == ["gone-rule", rid(201)]
    assert h2.detector.state_keys() == 0
    assert h2.detector.correlations.restore(state) == ["gone-rule"]
    assert h2.run([failed(40, "f40")])[0].rule_id == rid(201)


def test_reload_keeps_state_of_unchanged_rules_and_drops_changed_ones(tmp_path: Path) -> None:
    spray = correlation(250, "value_count", ["ct_console_login_failed"], group_by=["sourceIPAddress"],
                        timespan="10m", condition={"gte": 3, "field": "userIdentity.userName"})
    h = Harness(rules_dir(tmp_path, BRUTE_FORCE, spray))
    h.run([failed(t, f"f{t}", user=f"u{t // 20}") for t in (0, 10, 20, 30)])  # users u0, u0, u1, u1
    # retitle the brute force rule (state kept), lengthen the spray timespan (state dropped)
    (tmp_path / "correlation0.yml").write_text(BRUTE_FORCE.replace("correlation 201", "Brute force v2"))
    (tmp_path / "correlation1.yml").write_text(spray.replace("timespan: 10m", "timespan: 15m"))
    assert h.detector.reload() == []
    h.engine.reindex()
    alerts = h.run([failed(40, "f40", user="u2")])  # the kept spray state would make 3 users here
    assert [(a.rule_id, a.title) for a in alerts] == [(rid(201), "Brute force v2")]
    assert [a.rule_id for a in h.run([failed(50, "f50", user="u3"), failed(60, "f60", user="u4")])] == [rid(250)]
    # removing a rule drops its state from the snapshot
    (tmp_path / "correlation1.yml").unlink()
    assert h.detector.reload() == []
    assert set(h.detector.snapshot()["correlations"]) == {rid(201)}


def test_key_spray_is_bounded_and_evictions_counted(tmp_path: Path) -> None:
    h = Harness(rules_dir(tmp_path, BRUTE_FORCE), max_keys=64)
    h.run([failed(i * 0.01, f"f{i}", ip=f"10.0.{i // 250}.{i % 250}") for i in range(500)])
    assert h.detector.state_keys() <= 64 and h.evicted >= 500 - 64


def test_alert_ids_are_deterministic_across_runs(tmp_path: Path) -> None:
    events = [failed(t, f"f{t}", user=f"u{t % 3}") for t in range(0, 60, 10)] + [success(90, "ok")]
    ids = [[a.id for a in Harness(DATA / "rules").run(list(events))] for _ in range(2)]
    assert ids[0] == ids[1] and len(ids[0]) == 2


# -- what cannot run is reported per rule -------------------------------------------------------------


def test_unsupported_correlations_are_reported_per_rule(tmp_path: Path) -> None:
    rules = [
        correlation(260, "temporal", ["ct_iam_create_user", "ct_iam_attach_admin_user_policy"],
                    condition="ct_iam_create_user and not ct_iam_attach_admin_user_policy"),
        correlation(261, "temporal_ordered", ["ct_iam_create_user", "ct_iam_attach_admin_user_policy"],
                    condition={"gte": 1}),
        correlation(262, "event_count", ["ct_console_login_failed"], condition={"lt": 2}),
        correlation(263, "temporal", ["corr_262", "ct_console_login_success"]),
        correlation(264, "event_count", ["corr_265"], condition={"gte": 1}),
        correlation(265, "event_count", ["corr_264"], condition={"gte": 1}),
        correlation(266, "temporal", ["ct_iam_create_user", "ct_console_login_success"], condition={"gte": 3}),
        correlation(267, "event_count", ["ct_console_login_failed"], group_by=["user"], condition={"gte": 2},
                    body={"aliases": {"user": {"ct_console_login_success": "userIdentity.userName"}}}),
        correlation(268, "event_count", ["ct_secretsmanager_get_secret_value"], condition={"gte": 2}),
    ]
    directory = rules_dir(tmp_path, *rules)
    detector = SigmaDetector(SigmaConfig(paths=[str(directory)], disabled_rules=[GET_SECRET]))
    reasons = {issue.rule_id: issue.reason for issue in detector.load_errors}
    assert "extended" in reasons[rid(260)]
    assert "all referenced rules" in reasons[rid(261)]
    assert "cannot be chained" in reasons[rid(263)]
    assert "cycle" in reasons[rid(264)] and "cycle" in reasons[rid(265)]
    assert "never be met" in reasons[rid(266)]
    assert "alias 'user' gives no field" in reasons[rid(267)] and "not loaded" in reasons[rid(268)]
    assert rid(262) not in reasons and [plan.rule_id for plan in detector.correlations.plans] == [rid(262)]
    assert all(reason.startswith("unsupported: ") for reason in reasons.values())
    # a reload with an unsupported correlation is rejected like one with a broken detection rule
    running = SigmaDetector(SigmaConfig(paths=[str(DATA / "rules")]))
    assert running.reload([directory]) != [] and len(running.correlations) == 5


# -- bounded keys ------------------------------------------------------------------------------------


def test_300kb_group_by_and_value_count_values_are_bounded_and_counted_apart(tmp_path: Path) -> None:
    """2,000 secret reads grouped by a 300 KB userAgent, counting 300 KB secret ids."""
    rule = correlation(260, "value_count", ["ct_secretsmanager_get_secret_value"], group_by=["userAgent"],
                       condition={"gte": 100, "field": "requestParameters.secretId"})
    h = Harness(rules_dir(tmp_path, rule))
    big = "aws-cli/2.0 " + "A" * 300_000
    alerts: list[Alert] = []
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2_000):  # 20 agents differing only at the end, 100 secrets each
            alerts.extend(h.run([secret(i * 0.1, f"e{i}", big + f"secret{i // 20}", userAgent=big + f"ua{i % 20}")]))
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    fired = only(alerts, rid(260))
    print(f"\ncorrelation state, 2,000 events with 300 KB group-by/values: {used / 1024:.0f} KiB held")
    assert used < 8 * 1024 * 1024  # unbounded: 2 * 2,000 * 300 KB = 1.2 GB
    assert len(fired) == 20 and {a.evidence["count"] for a in fired} == {100}
    assert len({a.entity for a in fired}) == 20
    assert all(len(v) <= 256 for a in fired for v in a.evidence["values"])
