"""A restart after ``kill -9`` loses no detection.

The input is ~20,000 ordinary events (real Invictus records as templates, new ids and times) in
20 CloudTrail delivery files, with attacks embedded at several points: console brute forces (eight
failures and a success over four minutes), the real 29-failure ``GetPasswordData`` burst, an
enumeration across six APIs, and the Stratus GPU launch.  ``trailguard replay --state DIR`` is
killed with SIGKILL once it has written checkpoints and printed three alerts, then run again with
the same state directory to the end.  The alert ids of both runs together must be exactly those
of an uninterrupted run (at-least-once: repeats are allowed, nothing may be missing), and the
second run must have resumed (processed fewer events than the input holds).
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

from detectors.event import format_time, parse_event_time
from detectors.registry import DETECTORS
from tests.conftest import ROOT, TRAILGUARD

DATA = Path(__file__).parent / "data" / "stateful" / "burst"
MINE = ("console_login_bruteforce", "access_denied_burst", "run_instances_spike")
T0 = parse_event_time("2024-06-01T00:00:00Z")
BACKGROUND = 20_000
FILES = 20


def _records(name: str) -> Any:
    return orjson.loads((DATA / name).read_bytes())


def _retimed(record: dict[str, Any], t: float, event_id: str) -> dict[str, Any]:
    copied = copy.deepcopy(record)
    copied["eventTime"] = format_time(T0 + t)
    copied["eventID"] = event_id
    return copied


def _brute_force(start: float, tag: str, ip: str, user: str) -> list[dict[str, Any]]:
    logins = _records("console_logins.json")
    failure, success = logins["panther_failure"][0], logins["invictus_success"][1]
    out = []
    for i in range(9):
        record = _retimed(success if i == 8 else failure, start + 30 * i, f"{tag}-login-{i}")
        record["sourceIPAddress"] = ip
        record["recipientAccountId"] = "123837392027"
        record["userIdentity"] = {"type": "IAMUser", "accountId": "123837392027", "userName": user,
                                  "arn": f"arn:aws:iam::123837392027:user/{user}"}
        out.append(record)
    return out


#: The listing calls of a recon sweep, one per service (eventSource, eventName).
RECON_APIS = [("ec2.amazonaws.com", "DescribeInstances"), ("s3.amazonaws.com", "ListBuckets"),
              ("iam.amazonaws.com", "ListUsers"), ("secretsmanager.amazonaws.com", "ListSecrets"),
              ("lambda.amazonaws.com", "ListFunctions20150331"), ("ssm.amazonaws.com", "DescribeParameters")]


def _enumeration(start: float) -> list[dict[str, Any]]:
    template = _records("invictus_get_password_data.json")["Records"][0]
    apis = RECON_APIS
    out = []
    for i in range(12):
        record = _retimed(template, start + 5 * i, f"enum-{i}")
        record["eventSource"], record["eventName"] = apis[i % len(apis)]
        record["errorCode"] = "AccessDenied"
        record["userIdentity"]["arn"] = "arn:aws:sts::123837392027:assumed-role/leaked/session"
        out.append(record)
    return out


def _attacks() -> list[dict[str, Any]]:
    denied = _records("invictus_get_password_data.json")["Records"]
    launch = next(r for r in _records("stratus_ec2_launch_unusual_instances.json") if r["eventName"] == "RunInstances")
    return [
        *_brute_force(600, "a", "203.0.113.10", "alice"),
        *[_retimed(r, 1800 + i * 0.1, f"denied-{i}") for i, r in enumerate(denied)],
        _retimed(launch, 3000, "gpu-launch"),
        *_brute_force(4200, "b", "198.51.100.20", "bob"),
        *_enumeration(5400),
        *_brute_force(6600, "c", "192.0.2.30", "carol"),
    ]


def write_trail(directory: Path) -> int:
    """Background plus attacks, in time order, cut into ``FILES`` delivery files; returns the event count."""
    templates = _records("invictus_background.json")["Records"]
    span = 7200.0
    records = [
        _retimed(templates[k % len(templates)], k * span / BACKGROUND, f"bg-{k:06d}")
        for k in range(BACKGROUND)
    ]
    records.extend(_attacks())
    records.sort(key=lambda r: r["eventTime"])
    directory.mkdir(parents=True)
    per_file = -(-len(records) // FILES)
    for n in range(FILES):
        chunk = records[n * per_file:(n + 1) * per_file]
        name = f"123837392027_CloudTrail_us-east-1_20240601T{n:04d}Z_restart.json"
        (directory / name).write_bytes(orjson.dumps({"Records": chunk}))
    return len(records)


def write_config(path: Path) -> None:
    detectors = {name: ({} if name in MINE else {"enabled": False}) for name in DETECTORS}
    config = {
        "detectors": detectors,
        "state": {"checkpoint_interval": "0.05s"},
        "logging": {"level": "error", "format": "json"},
    }
    path.write_bytes(orjson.dumps(config))


def alert_ids(stdout: bytes) -> list[str]:
    return [orjson.loads(line)["id"] for line in stdout.splitlines() if line.strip()]


def summary(stderr: bytes) -> dict[str, Any]:
    for line in stderr.decode().splitlines():
        if line.startswith("trailguard replay summary: "):
            return orjson.loads(line.split(": ", 1)[1])
    raise AssertionError(f"no replay summary in stderr: {stderr.decode()[-2000:]}")


def replay(config: Path, trail: Path, state: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    args = [*TRAILGUARD, "replay", "--quiet", "--config", str(config)]
    if state is not None:
        args += ["--state", str(state)]
    return subprocess.run([*args, str(trail)], cwd=ROOT, capture_output=True, timeout=240)


def test_restart_after_sigkill_loses_no_detection(tmp_path: Path) -> None:
    trail, config, state = tmp_path / "trail", tmp_path / "config.yaml", tmp_path / "state"
    total = write_trail(trail)
    write_config(config)

    uninterrupted = replay(config, trail)
    assert uninterrupted.returncode == 0, uninterrupted.stderr.decode()[-2000:]
    expected = alert_ids(uninterrupted.stdout)
    by_detector = summary(uninterrupted.stderr)["alerts_by_detector"]
    assert by_detector == {"access_denied_burst": 2, "console_login_bruteforce": 6, "run_instances_spike": 1}
    # every alert opens an incident; both access_denied_burst incidents close with an update that
    # counts the failures after the alert (continuations), so nothing the burst held back is lost
    kinds = [orjson.loads(line)["kind"] for line in uninterrupted.stdout.splitlines() if line.strip()]
    assert (kinds.count("opened"), kinds.count("updated")) == (9, 2)
    assert len(set(expected)) == len(expected) == 11

    # Run 1: killed with SIGKILL once checkpoints are being written and three alerts are out; with a
    # checkpoint every 50 ms the last one falls among the attacks, with detector state mid-window.
    out_path = tmp_path / "run1.out"
    with out_path.open("wb") as out:
        process = subprocess.Popen(
            [*TRAILGUARD, "replay", "--quiet", "--config", str(config), "--state", str(state), str(trail)],
            cwd=ROOT, stdout=out, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline and process.poll() is None:
                if (state / "checkpoint.msgpack").exists() and out_path.read_bytes().count(b"\n") >= 3:
                    break
                time.sleep(0.005)
            os.kill(process.pid, signal.SIGKILL)
        finally:
            process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "replay finished before it could be killed"
    first = alert_ids(out_path.read_bytes())
    assert first and len(first) < len(expected), "the kill did not land mid-way"

    # Run 2: the same command, the same state directory, to the end.
    resumed = replay(config, trail, state)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    second = alert_ids(resumed.stdout)
    resumed_events = summary(resumed.stderr)["events"]
    print(f"\nkilled after {len(first)} of {len(expected)} alerts; resumed with {resumed_events:,} of "
          f"{total:,} events and {len(second)} alerts")
    assert resumed_events < total, "the second run started over instead of resuming"
    assert summary(resumed.stderr)["received"] < total, "files the checkpoint covered were read again"

    missing = set(expected) - set(first) - set(second)
    assert not missing, f"detections lost across the restart: {sorted(missing)}"
    assert set(first) | set(second) == set(expected)


def test_trail_layout_is_what_the_restart_test_relies_on(tmp_path: Path) -> None:
    total = write_trail(tmp_path / "trail")
    files = sorted((tmp_path / "trail").iterdir())
    assert len(files) == FILES and total == BACKGROUND + len(_attacks())
    times = [r["eventTime"] for f in files for r in orjson.loads(f.read_bytes())["Records"]]
    assert times == sorted(times)
