"""SIGHUP re-reads the config file's Sigma tuning together with the rules, atomically: a new
``disabled_rules`` entry takes effect; a tuning typo is refused with the reason and the running
rules and tuning stay."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import orjson

from tests.conftest import DATA, ROOT, wait_for

PACK_RULE = ROOT / "config" / "rules" / "logging_tampering" / "cloudtrail_logging_stopped.yml"
STOP = DATA / "builtin" / "stratus" / "aws.defense-evasion.cloudtrail-stop.json"
TITLE = "CloudTrail Logging Stopped Or Trail Deleted"


def logs(daemon) -> list[dict]:
    return [orjson.loads(line) for line in daemon.stderr_path.read_text().splitlines() if line.startswith("{")]


def sigma_alerts(daemon) -> int:
    return sum(orjson.loads(line)["detector"] == "sigma" for line in daemon.stdout_lines())


def test_sighup_applies_new_tuning_and_refuses_a_typo(tmp_path: Path, start_daemon) -> None:
    rules, trail = tmp_path / "rules", tmp_path / "trail"
    rules.mkdir()
    trail.mkdir()
    shutil.copy(PACK_RULE, rules / PACK_RULE.name)
    template = (f"sources:\n  - type: file\n    paths: [{trail}]\n    follow: true\n    poll_interval: 0.2s\n"
                f"detectors:\n  sigma:\n    paths: [{rules}]\n    disabled_rules: DISABLED\n"
                "metrics:\n  host: 127.0.0.1\n  port: {port}\nlogging:\n  format: json\n")
    daemon = start_daemon(template.replace("DISABLED", "[]"))
    config = tmp_path / "trailguard-0.yaml"
    daemon.wait_ready()
    record = orjson.loads(STOP.read_bytes())

    def drop(name: str) -> int:
        for item in record:
            item["eventID"] = item["eventID"].split("#")[0] + "#" + name
        (trail / f"{name}.json").write_bytes(orjson.dumps(record))
        return len(record)

    sent = drop("1")
    wait_for(lambda: sigma_alerts(daemon) == 1, 30, what="alert before tuning")

    config.write_text(config.read_text().replace("disabled_rules: []", f"disabled_rules: [{TITLE!r}]"))
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(e.get("event") == "rules reloaded" for e in logs(daemon)), 30, what="reload log")
    sent += drop("2")
    wait_for(lambda: (daemon.metric("trailguard_events_processed_total") or 0) >= sent, 30, what="second file")
    assert sigma_alerts(daemon) == 1, "the rule disabled by title no longer alerts"

    config.write_text(config.read_text().replace(repr(TITLE), repr(TITLE[:-3])))
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(e.get("event") == "rule reload rejected; the running rule set stays"
                         and "did you mean" in str(e.get("problem")) for e in logs(daemon)), 30, what="rejection")
    sent += drop("3")
    wait_for(lambda: (daemon.metric("trailguard_events_processed_total") or 0) >= sent, 30, what="third file")
    assert sigma_alerts(daemon) == 1, "the running tuning (rule disabled) stays after a refused reload"
    assert daemon.stop(signal.SIGTERM) == 0
