"""Incidents end to end, in real ``trailguard`` processes.

* ``replay`` of the real 29-failure ``GetPasswordData`` run (Invictus-IR) gives one incident with
  count 29: one notification at once, one update with the totals; the summary counts per rule.
* A 20-failure console brute force gives three notifications instead of 21.
* ``kill -9`` while an incident is open: after the restart the incident is not re-opened and its
  update (with every event from both runs) is not lost.
"""

from __future__ import annotations

import copy
import signal
from pathlib import Path
from typing import Any

import orjson

from detectors.event import format_time, parse_event_time
from tests.conftest import DATA, run_cli, wait_for

BURST = DATA / "stateful" / "burst"
T0 = parse_event_time("2024-06-01T00:00:00Z")
GPD = "Windows Passwords Of Several EC2 Instances Requested"
GPD_INPUT = "EC2 Windows Password Data Requested (Correlation Input)"


def summary_of(stderr: bytes) -> dict[str, Any]:
    line = [s for s in stderr.decode().splitlines() if s.startswith("trailguard replay summary: ")][-1]
    return orjson.loads(line.removeprefix("trailguard replay summary: "))


def lines(stdout: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stdout.splitlines() if line.strip()]


def test_the_get_password_data_run_is_one_incident_with_count_29() -> None:
    done = run_cli("replay", "-q", str(BURST / "invictus_get_password_data.json"))
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    every_id = {r["eventID"] for r in orjson.loads((BURST / "invictus_get_password_data.json").read_bytes())["Records"]}
    sent = lines(done.stdout)
    # both detections of the run: the bulk-read correlation and the burst of authorization failures
    assert sorted({(n["detector"], n["title"]) for n in sent}) == [
        ("access_denied_burst", "Burst of authorization failures"), ("sigma", GPD)]
    # each opens at the event that met its condition (3rd distinct instance, 20th failure)
    for detector, opened_count, first in (("sigma", 3, "2023-07-10T11:54:47Z"),
                                          ("access_denied_burst", 20, "2023-07-10T11:54:49Z")):
        mine = [n for n in sent if n["detector"] == detector]
        assert [(n["kind"], n["incident"]["count"]) for n in mine] == [("opened", opened_count), ("updated", 29)]
        opened, updated = mine
        assert updated["incident"]["id"] == opened["id"]
        assert updated["incident"]["event_ids_total"] == 29
        assert set(updated["incident"]["event_ids"]) == every_id, detector
        assert updated["incident"]["first_time"] == first
    rows = {r["detector"]: r for r in summary_of(done.stderr)["by_rule"]}
    assert (rows["sigma"]["title"], rows["sigma"]["alerts"], rows["sigma"]["incidents"], rows["sigma"]["updates"]) \
        == (GPD, 1, 1, 1)
    assert (rows["access_denied_burst"]["alerts"], rows["access_denied_burst"]["incidents"],
            rows["access_denied_burst"]["updates"]) == (1, 1, 1)


def brute_force(failures: int) -> dict[str, Any]:
    template = orjson.loads((BURST / "console_logins.json").read_bytes())["panther_failure"][0]
    records = []
    for i in range(failures):
        record = copy.deepcopy(template)
        record.update(eventID=f"bf-{i}", eventTime=format_time(T0 + 15 * i), sourceIPAddress="198.51.100.23")
        records.append(record)
    return {"Records": records}


def test_a_console_brute_force_is_three_notifications_not_one_per_failure(tmp_path: Path) -> None:
    trail = tmp_path / "bf.json"
    trail.write_bytes(orjson.dumps(brute_force(20)))
    done = run_cli("replay", "-q", str(trail))
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    summary = summary_of(done.stderr)
    assert summary["alerts"] == 21 and summary["notifications"] == 3
    sent = lines(done.stdout)
    assert sorted((n["detector"], n["kind"]) for n in sent) == [
        ("console_login_bruteforce", "opened"), ("sigma", "opened"), ("sigma", "updated")]
    failed = next(n for n in sent if n["kind"] == "updated")
    assert failed["incident"]["count"] == 20
    off = tmp_path / "per-event.yaml"
    off.write_text("delivery:\n  incidents:\n    enabled: false\n")
    per_event = run_cli("replay", "-q", "-c", str(off), str(trail))
    assert summary_of(per_event.stderr)["notifications"] == 21, "enabled: false restores per-event output"


def gpd_records(start: int, stop: int) -> list[dict[str, Any]]:
    template = orjson.loads((BURST / "invictus_get_password_data.json").read_bytes())
    template = (template["Records"] if isinstance(template, dict) else template)[0]
    out = []
    for i in range(start, stop):
        record = copy.deepcopy(template)
        record.update(eventID=f"gpd-{i}", eventTime=format_time(T0 + i))
        record["requestParameters"] = {"instanceId": f"i-{i:017x}"}  # one instance after another, as in the run
        out.append(record)
    return out


def later_event(seconds: float) -> dict[str, Any]:
    background = orjson.loads((BURST / "invictus_background.json").read_bytes())
    record = copy.deepcopy((background["Records"] if isinstance(background, dict) else background)[0])
    record.update(eventID=f"later-{seconds}", eventTime=format_time(T0 + seconds))
    return record


CONFIG = """
sources: [{type: file, paths: ["{tmp}/in"], follow: true, poll_interval: 0.1s}]
sinks: [{type: file, path: "{tmp}/alerts.jsonl"}]
state: {path: "{tmp}/state", checkpoint_interval: 0.1s}
metrics: {host: 127.0.0.1, port: {port}}
"""


def test_kill_9_with_an_open_incident_neither_reopens_it_nor_loses_its_update(tmp_path: Path, start_daemon) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    alerts = tmp_path / "alerts.jsonl"

    def sent() -> list[dict[str, Any]]:
        if not alerts.exists():
            return []
        return [n for n in (orjson.loads(x) for x in alerts.read_bytes().splitlines() if x.strip())
                if n["title"] == GPD]

    first = start_daemon(CONFIG)
    first.wait_ready()
    (inbox / "1.json").write_bytes(orjson.dumps({"Records": gpd_records(0, 10)}))
    wait_for(lambda: len(sent()) == 1, 60, what="the opened notification")
    acknowledged = first.metric("trailguard_source_acknowledged_total") or 0.0
    wait_for(lambda: (first.metric("trailguard_source_acknowledged_total") or 0.0) > acknowledged
             or (first.metric("trailguard_checkpoints_total", {"outcome": "written"}) or 0) >= 3,
             60, what="a checkpoint covering the first file")
    checkpoints = first.metric("trailguard_checkpoints_total", {"outcome": "written"}) or 0.0
    wait_for(lambda: (first.metric("trailguard_checkpoints_total", {"outcome": "written"}) or 0) > checkpoints + 1,
             60, what="two more checkpoints")
    first.stop(signal.SIGKILL)
    assert [n["kind"] for n in sent()] == ["opened"]

    second = start_daemon(CONFIG)
    second.wait_ready()
    (inbox / "2.json").write_bytes(orjson.dumps({"Records": [*gpd_records(10, 29), later_event(3 * 3600)]}))
    wait_for(lambda: any(n["kind"] == "updated" for n in sent()), 90, what="the incident's update")
    assert second.stop(signal.SIGTERM) == 0
    notifications = sent()
    assert [n["kind"] for n in notifications] == ["opened", "updated"], "not re-opened after the restart"
    update = notifications[1]
    assert update["incident"]["id"] == notifications[0]["id"]
    assert update["incident"]["count"] == 29, "events of both runs are in the update"
    assert update["incident"]["event_ids"] == [f"gpd-{i}" for i in range(29)]


def test_an_unknown_override_name_is_refused_by_check_config_and_run(tmp_path: Path) -> None:
    config = tmp_path / "trailguard.yaml"
    config.write_text("delivery:\n  incidents:\n    overrides:\n"
                      "      console_login_bruteforse: {window: 30m}\n"
                      f"      \"{GPD_INPUT}\": {{enabled: false}}\n")
    checked = run_cli("check-config", str(config))
    assert checked.returncode == 2
    refusal = checked.stderr.decode()
    assert "delivery.incidents.overrides.console_login_bruteforse" in refusal
    assert "did you mean 'console_login_bruteforce'?" in refusal
    assert GPD_INPUT not in refusal, "a rule title is a valid name"
    ran = run_cli("run", "--config", str(config), timeout=60)
    assert ran.returncode == 2 and b"console_login_bruteforse" in ran.stderr
    throttle = tmp_path / "old.yaml"
    throttle.write_text("delivery:\n  throttle: {window: 10m}\n")
    old = run_cli("check-config", str(throttle))
    assert old.returncode == 2 and b"replaced by delivery.incidents" in old.stderr
