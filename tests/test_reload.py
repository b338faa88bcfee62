"""SIGHUP reloads the rules atomically in a running daemon; a broken file leaves the running set in place."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import orjson

from tests.conftest import DATA, ROOT, wait_for

PACK_RULE = ROOT / "config" / "rules" / "logging_tampering" / "cloudtrail_logging_stopped.yml"
STOP = DATA / "builtin" / "stratus" / "aws.defense-evasion.cloudtrail-stop.json"


def logs(daemon) -> list[dict]:
    return [orjson.loads(line) for line in daemon.stderr_path.read_text().splitlines() if line.startswith("{")]


def test_sighup_reloads_rules_and_rejects_a_broken_file(tmp_path: Path, start_daemon) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    trail = tmp_path / "trail"
    trail.mkdir()
    daemon = start_daemon(
        f"sources:\n  - type: file\n    paths: [{trail}]\n    follow: true\n    poll_interval: 0.2s\n"
        f"detectors:\n  sigma:\n    paths: [{rules}]\n"
        "metrics:\n  host: 127.0.0.1\n  port: {port}\nlogging:\n  format: json\n"
        "delivery:\n  incidents:\n    enabled: false\n"  # one line per alert: the test counts alerts
    )
    daemon.wait_ready()
    # no rule yet: StopLogging raises no sigma alert
    shutil.copy(STOP, trail / "1.json")
    wait_for(lambda: (daemon.metric("trailguard_events_processed_total") or 0) >= 1, 30, what="first file")
    assert not any(orjson.loads(line)["detector"] == "sigma" for line in daemon.stdout_lines())

    # add the pack's rule and reload: the next StopLogging alerts
    shutil.copy(PACK_RULE, rules / PACK_RULE.name)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(e.get("event") == "rules reloaded" for e in logs(daemon)), 30, what="reload log")
    record = orjson.loads(STOP.read_bytes())
    for item in record:
        item["eventID"] = item["eventID"] + "-again"
    (trail / "2.json").write_bytes(orjson.dumps(record))
    wait_for(lambda: any(orjson.loads(line)["detector"] == "sigma" for line in daemon.stdout_lines()), 30,
             what="alert from the reloaded rule")

    # a broken file is rejected with a clear log, and the running rule keeps alerting
    (rules / "broken.yml").write_text("title: broken\ndetection:\n  condition: nothing_defined\n")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(e.get("event") == "rule reload rejected; the running rule set stays" for e in logs(daemon)),
             30, what="rejection log")
    before = sum(orjson.loads(line)["detector"] == "sigma" for line in daemon.stdout_lines())
    for item in record:
        item["eventID"] = item["eventID"] + "-third"
    (trail / "3.json").write_bytes(orjson.dumps(record))
    wait_for(lambda: sum(orjson.loads(line)["detector"] == "sigma" for line in daemon.stdout_lines()) > before, 30,
             what="alert after the rejected reload")
    assert daemon.stop(signal.SIGTERM) == 0
