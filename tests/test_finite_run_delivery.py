"""A finite ``trailguard run`` (file source, no ``follow``) delivers its alerts to a remote sink
before it exits — through receiver errors — and, when the shutdown deadline comes first, says how
many alerts were left in the spool, which a restart with the same ``state.path`` delivers.

Real process, real HTTP receiver (tests/http_receiver.py) answering 500 before 200.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from tests.conftest import ROOT, TRAILGUARD
from tests.http_receiver import Receiver, Reply

SAMPLES = ROOT / "samples" / "trail" / "4-stratus-red-team"


def write_config(tmp_path: Path, url: str, *, deadline: str = "30s", state: bool = False) -> Path:
    config = {
        "sources": [{"type": "file", "paths": [str(SAMPLES)], "follow": False}],
        "sinks": [{"type": "webhook", "name": "soc", "url": url},
                  {"type": "file", "name": "local", "path": str(tmp_path / "alerts.jsonl")}],
        # drain_timeout (what a stop request gives in-memory spools) is shorter than the outage:
        # only waiting for the spools at the end of finite input delivers everything.
        "delivery": {"initial_backoff": "50ms", "max_backoff": "200ms", "drain_timeout": "1s"},
        "shutdown": {"deadline": deadline},
        "metrics": {"port": 0},
    }
    if state:
        config["state"] = {"path": str(tmp_path / "state")}
    path = tmp_path / "trailguard.yaml"
    path.write_bytes(orjson.dumps(config))
    return path


async def run(config: Path) -> tuple[int, list[dict]]:
    process = await asyncio.create_subprocess_exec(
        *TRAILGUARD, "run", "-c", str(config), cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(), timeout=180)
    logs = []
    for line in err.splitlines():
        try:
            logs.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            logs.append({"event": line.decode(errors="replace")})
    return process.returncode, logs


def local_ids(tmp_path: Path) -> set[str]:
    return {orjson.loads(line)["id"] for line in (tmp_path / "alerts.jsonl").read_bytes().splitlines()}


@pytest.mark.parametrize("state", [False, True], ids=["memory-spool", "durable-spool"])
async def test_every_alert_reaches_the_webhook_before_a_finite_run_exits(tmp_path: Path, state: bool) -> None:
    receiver = await Receiver().start()
    try:
        receiver.script = [Reply(status=500) for _ in range(15)]  # ~2.7 s of 500s with this backoff
        code, logs = await run(write_config(tmp_path, receiver.url(), state=state))
        expected = local_ids(tmp_path)
        assert code == 0, logs[-5:]
        assert len(expected) >= 10
        assert len(receiver.requests) >= 15 + 1  # the 500s were really answered
        assert set(receiver.accepted_ids()) == expected
        assert not [entry for entry in logs if entry.get("level") == "error"], logs
    finally:
        await receiver.stop()


async def test_a_deadline_before_delivery_says_what_is_left_and_a_restart_delivers_it(tmp_path: Path) -> None:
    receiver = await Receiver().start()
    try:
        receiver.default = Reply(status=500)  # down for the whole first run
        code, logs = await run(write_config(tmp_path, receiver.url(), deadline="2s", state=True))
        expected = local_ids(tmp_path)
        assert code == 0 and receiver.accepted == [] and len(expected) >= 10
        (left,) = [entry for entry in logs if entry.get("event", "").startswith("alerts left in the spool")]
        assert left["sink"] == "soc" and left["alerts"] == len(expected), left
        receiver.default = Reply(status=200)
        code, logs = await run(write_config(tmp_path, receiver.url(), deadline="30s", state=True))
        assert code == 0
        assert set(receiver.accepted_ids()) == expected
        assert not [entry for entry in logs if entry.get("event", "").startswith("alerts left")], logs
    finally:
        await receiver.stop()
