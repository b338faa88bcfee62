"""The real ``trailguard`` CLI, end to end: replay output and summary, and ``run`` as a daemon."""

from __future__ import annotations

import gzip
import shutil
import signal
import time
from pathlib import Path

import jsonschema
import orjson
import pytest

from tests.conftest import DATA, ROOT, free_port, http_get, run_cli, wait_for

STRATUS = DATA / "builtin" / "stratus"
SCHEMA = orjson.loads((ROOT / "config" / "alert.schema.json").read_bytes())


def alerts_of(stdout: bytes) -> list[dict]:
    return [orjson.loads(line) for line in stdout.splitlines() if line.strip()]


def summary_of(stderr: bytes) -> dict:
    for line in stderr.decode().splitlines():
        if line.startswith("trailguard replay summary: "):
            return orjson.loads(line.split(": ", 1)[1])
    raise AssertionError(f"no summary on stderr: {stderr.decode()[-2000:]}")


def event_ids(path: Path, name: str) -> set[str]:
    return {r["eventID"] for r in orjson.loads(path.read_bytes()) if r.get("eventName") == name}


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.decode().startswith("trailguard ")


def test_replay_flags_the_stratus_attacks_with_their_event_ids() -> None:
    result = run_cli("replay", str(STRATUS))
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    alerts = alerts_of(result.stdout)
    by_event: dict[str, set[str]] = {}
    for alert in alerts:
        for eid in alert["event_ids"]:
            by_event.setdefault(eid, set()).add(alert["detector"])
    expected = {
        "StopLogging": (STRATUS / "aws.defense-evasion.cloudtrail-stop.json", "sigma"),
        "DeleteTrail": (STRATUS / "aws.defense-evasion.cloudtrail-delete.json", "sigma"),
        "PutEventSelectors": (STRATUS / "aws.defense-evasion.cloudtrail-event-selectors.json", "cloudtrail_tampering"),
        "ConsoleLogin": (STRATUS / "aws.initial-access.console-login-without-mfa.json", "sigma"),
    }
    for name, (path, detector) in expected.items():
        ids = event_ids(path, name)
        assert ids, f"sample has no {name}"
        for eid in ids:
            assert eid in by_event, f"{name} {eid} not alerted"
            assert detector in by_event[eid], (name, by_event[eid])
    for alert in alerts:
        jsonschema.validate(alert, SCHEMA)
    summary = summary_of(result.stderr)
    assert summary["alerts"] == len(alerts)
    assert summary["events"] > 0 and summary["events_per_second"] > 0
    assert summary["alerts_by_detector"]["sigma"] >= 3
    titles = {a["title"] for a in alerts}
    assert {"CloudTrail Logging Stopped Or Trail Deleted", "Console Sign-In Without MFA By An IAM User"} <= titles


def test_replay_is_deterministic() -> None:
    first = {a["id"] for a in alerts_of(run_cli("replay", str(STRATUS)).stdout)}
    second = {a["id"] for a in alerts_of(run_cli("replay", str(STRATUS)).stdout)}
    assert first and first == second


def test_replay_survives_bad_input_and_reports_it(tmp_path: Path) -> None:
    trail = tmp_path / "trail"
    trail.mkdir()
    shutil.copy(STRATUS / "aws.defense-evasion.cloudtrail-stop.json", trail / "good.json")
    (trail / "broken.json").write_bytes(b'{"Records": [{"eventName": ')
    whole = gzip.compress(orjson.dumps({"Records": orjson.loads((STRATUS / "aws.defense-evasion.cloudtrail-stop.json")
                                                                .read_bytes())}))
    (trail / "truncated.json.gz").write_bytes(whole[: len(whole) // 2])
    (trail / "other.json").write_bytes(b'{"hello": "world"}')
    (trail / "nofields.jsonl").write_bytes(b'{"eventName": "X"}\n{"eventTime": 5, "eventName": "Y"}\n')
    dead = tmp_path / "dead.jsonl"
    config = tmp_path / "c.yaml"
    config.write_text(f"pipeline:\n  dead_letter_path: {dead}\n")
    result = run_cli("replay", "--config", str(config), str(trail))
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    summary = summary_of(result.stderr)
    assert summary["invalid"] == sum(summary["invalid_by_reason"].values()) >= 5
    stop_ids = event_ids(STRATUS / "aws.defense-evasion.cloudtrail-stop.json", "StopLogging")
    assert stop_ids <= {eid for a in alerts_of(result.stdout) for eid in a["event_ids"]}
    reasons = {orjson.loads(line)["reason"] for line in dead.read_text().splitlines()}
    assert {"invalid_json", "truncated_gzip", "unknown_shape", "missing_field", "wrong_type"} <= reasons


def test_replay_from_stdin() -> None:
    records = orjson.loads((STRATUS / "aws.defense-evasion.cloudtrail-stop.json").read_bytes())
    lines = b"\n".join(orjson.dumps(r) for r in records) + b"\n"
    result = run_cli("replay", "-", input=lines)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    stop_ids = event_ids(STRATUS / "aws.defense-evasion.cloudtrail-stop.json", "StopLogging")
    assert stop_ids <= {eid for a in alerts_of(result.stdout) for eid in a["event_ids"]}


def test_run_refuses_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("sinks:\n  - type: stdout\n    colour: red\n")
    result = run_cli("run", "--config", str(config), timeout=60)
    assert result.returncode == 2
    assert b"sinks[0].colour: unknown key" in result.stderr


def test_run_refuses_a_taken_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        trail = tmp_path / "trail"
        trail.mkdir()
        config = tmp_path / "c.yaml"
        config.write_text(f"sources:\n  - type: file\n    paths: [{trail}]\n    follow: true\n"
                          f"metrics:\n  host: 127.0.0.1\n  port: {port}\n")
        result = run_cli("run", "--config", str(config), timeout=60)
    assert result.returncode == 2
    assert b"metrics" in result.stderr and b"port" in result.stderr


@pytest.mark.timeout(120)
def test_run_serves_probes_alerts_live_and_stops_cleanly(tmp_path: Path, start_daemon) -> None:
    trail = tmp_path / "trail"
    trail.mkdir()
    daemon = start_daemon(
        f"sources:\n  - type: file\n    paths: [{trail}]\n    follow: true\n    poll_interval: 0.2s\n"
        "metrics:\n  host: 127.0.0.1\n  port: {port}\n"
        "state:\n  path: {tmp}/state\n  checkpoint_interval: 1s\n"
        "logging:\n  format: json\n"
    )
    daemon.wait_ready()
    assert http_get(daemon.url("/healthz"))[0] == 200
    status, body = http_get(daemon.url("/metrics"))
    assert status == 200
    for name in ("trailguard_events_processed_total", "trailguard_event_lag_seconds",
                 "trailguard_watermark_timestamp_seconds", "trailguard_queue_depth"):
        assert name in body, name
    # a file arriving in the watched directory is detected while the daemon runs
    shutil.copy(STRATUS / "aws.defense-evasion.cloudtrail-stop.json", trail / "new.json")
    wait_for(lambda: any('"StopLogging"' in line for line in daemon.stdout_lines()), 30, what="live alert")
    assert (daemon.metric("trailguard_events_processed_total") or 0) > 0
    wait_for(lambda: (tmp_path / "state" / "checkpoint.msgpack").exists(), 10, what="checkpoint file")
    started = time.monotonic()
    code = daemon.stop(signal.SIGTERM)
    assert code == 0, daemon.stderr_path.read_text()[-3000:]
    assert time.monotonic() - started < 20
    logs = [orjson.loads(line) for line in daemon.stderr_path.read_text().splitlines() if line.startswith("{")]
    assert any(entry.get("event") == "pipeline stopped" for entry in logs)
    assert all("level" in entry and "timestamp" in entry for entry in logs)


def test_default_run_uses_the_sample_trail(tmp_path: Path, start_daemon) -> None:
    """The README's embedded default: bundled sample trail, alerts on stdout, metrics served."""
    port = free_port()
    daemon = start_daemon("metrics:\n  host: 127.0.0.1\n  port: {port}\n", port=port)
    # the config above only moves the port; sources/sinks are the defaults
    daemon.wait_ready()
    def detectors() -> set[str]:
        return {orjson.loads(line)["detector"] for line in daemon.stdout_lines()}

    wait_for(lambda: {"sigma", "cloudtrail_tampering", "credential_exfiltration"} <= detectors(), 60,
             what="alerts from the sample trail")
    assert daemon.stop(signal.SIGINT) == 0


def test_sigint_twice_at_once_still_drains(tmp_path: Path, start_daemon) -> None:
    """One Ctrl-C delivered twice (process + process group) is not a second keypress."""
    trail = tmp_path / "trail"
    trail.mkdir()
    daemon = start_daemon(f"sources:\n  - type: file\n    paths: [{trail}]\n    follow: true\n"
                          "metrics:\n  host: 127.0.0.1\n  port: {port}\nlogging:\n  format: json\n")
    daemon.wait_ready()
    daemon.proc.send_signal(signal.SIGINT)
    daemon.proc.send_signal(signal.SIGINT)
    assert daemon.proc.wait(30) == 0
    logs = [orjson.loads(line) for line in daemon.stderr_path.read_text().splitlines() if line.startswith("{")]
    assert any(entry.get("event") == "pipeline stopped" for entry in logs)


def test_a_second_sigint_later_forces_exit(tmp_path: Path, start_daemon) -> None:
    """While shutdown waits on a hung webhook, a second Ctrl-C exits at once (130)."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    trail = tmp_path / "trail"
    trail.mkdir()
    shutil.copy(STRATUS / "aws.defense-evasion.cloudtrail-stop.json", trail / "stop.json")
    daemon = start_daemon(
        f"sources:\n  - type: file\n    paths: [{trail}]\n    follow: true\n"
        f"sinks:\n  - type: webhook\n    url: http://127.0.0.1:{listener.getsockname()[1]}/hook\n    timeout: 60s\n"
        "metrics:\n  host: 127.0.0.1\n  port: {port}\nshutdown:\n  deadline: 25s\nlogging:\n  format: json\n")
    daemon.wait_ready()
    wait_for(lambda: held, 30, what="the webhook request to hang")
    daemon.proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert daemon.proc.poll() is None, "the first interrupt must drain, not exit"
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGINT)
    assert daemon.proc.wait(10) == 130
    assert time.monotonic() - started < 5
    listener.close()
