"""Nothing handed over is lost, nothing stalls delivery: poison alerts, a closed stdout, a dead
dispatcher, and spools durable by default.

* An alert whose wire form cannot be built (an event time outside the datetime range, evidence
  nested deeper than JSON encoders go) goes to ``undeliverable.dead.jsonl`` with its reason and the
  alerts around it reach every sink (real webhook receiver and a real file).
* A closed stdout is a permanent failure: the alerts are dead-lettered, delivery does not retry forever.
* A dispatcher that dies makes ``/healthz`` fail, is logged at ERROR, and no checkpoint
  acknowledges input after it.
* With ``state.path`` and no ``delivery.spool_dir``, spools live under ``state.path``; a
  zero-length spool file is an empty spool, said in a WARNING.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from daemon.app import Daemon
from daemon.components import check
from daemon.config import load_config
from daemon.delivery.dispatch import DeliveryConfig, Dispatcher
from daemon.delivery.sinks.file import FileSink, FileSinkConfig
from daemon.delivery.sinks.stdout import StdoutSink, StdoutSinkConfig
from daemon.delivery.sinks.webhook import WebhookSink, WebhookSinkConfig
from daemon.delivery.spool import SqliteSpool
from daemon.metrics import Metrics
from detectors.alert import Alert
from tests.conftest import DATA, free_port, http_get
from tests.http_receiver import Receiver

FAST = {"initial_backoff": 0.01, "max_backoff": 0.05}


def make_alert(n: int, **extra: Any) -> Alert:
    fields: dict[str, Any] = dict(detector="boom", title=f"alert {n}", severity="high", time=1_700_000_000.0 + n,
                                  summary="s", account_id="111122223333", event_ids=[f"ev-{n}"], entity=f"p{n}")
    fields.update(extra)
    return Alert(**fields)


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.fixture
async def receiver():
    server = await Receiver().start()
    yield server
    await server.stop()


def dead_letters(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


async def test_a_poison_alert_is_dead_lettered_with_its_reason_and_the_rest_flow_on(
        receiver: Receiver, tmp_path: Path) -> None:
    metrics = Metrics()
    hook = WebhookSink(WebhookSinkConfig(type="webhook", url=receiver.url()))
    file = FileSink(FileSinkConfig(type="file", path=str(tmp_path / "alerts.jsonl")))
    dispatcher = Dispatcher([hook, file], metrics, delivery=DeliveryConfig.model_validate(
        {**FAST, "spool_dir": str(tmp_path / "spool")}))
    await dispatcher.start()
    year_zero = make_alert(1, time=-62135596800.0 - 3600)          # year 1 minus an hour: no RFC 3339 form
    # evidence 400 levels deep is bounded when the alert is built (detectors/evidence.py), so it flows
    too_deep = make_alert(2, evidence=nested(400))
    good = [make_alert(0), too_deep, make_alert(3)]
    with capture_logs() as logs:
        await dispatcher.deliver([good[0], year_zero, too_deep, good[2]])
        await dispatcher.flush()
        async with asyncio.timeout(10):
            while len(receiver.requests) < 3:
                await asyncio.sleep(0.02)
    await dispatcher.stop()
    assert [r.json()["id"] for r in receiver.requests] == [a.id for a in good]
    written = [orjson.loads(x)["id"] for x in (tmp_path / "alerts.jsonl").read_bytes().splitlines()]
    assert written == [a.id for a in good]
    kept = dead_letters(tmp_path / "spool" / "undeliverable.dead.jsonl")
    assert [k["alert"]["id"] for k in kept] == [year_zero.id]
    assert "year 0 is out of range" in kept[0]["reason"]
    assert metrics.registry.get_sample_value("trailguard_alerts_suppressed_total",
                                             {"detector": "boom", "reason": "unencodable"}) == 1
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [e["alert_id"] for e in errors] == [year_zero.id]
    assert "…" in orjson.dumps(receiver.requests[1].json()["evidence"]).decode()  # cut, with a marker


async def test_a_closed_stdout_is_not_retried_forever(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    closed = os.fdopen(write_end, "w")
    monkeypatch.setattr(sys, "stdout", closed)
    metrics = Metrics()
    delivery = DeliveryConfig.model_validate({**FAST, "dead_letter_dir": str(tmp_path / "dead")})
    dispatcher = Dispatcher([StdoutSink(StdoutSinkConfig(type="stdout"))], metrics, delivery=delivery)
    await dispatcher.start()
    alerts = [make_alert(i) for i in range(3)]
    with capture_logs():
        async with asyncio.timeout(10):
            await dispatcher.deliver(alerts)
    await dispatcher.stop()
    monkeypatch.undo()
    try:
        closed.close()
    except OSError:
        pass
    kept = dead_letters(tmp_path / "dead" / "stdout.dead.jsonl")
    assert [k["alert"]["id"] for k in kept] == [a.id for a in alerts]
    assert metrics.registry.get_sample_value("trailguard_sink_deliveries_total",
                                             {"sink": "stdout", "outcome": "failed_permanent"}) == 3


def gpd_file(path: Path, count: int) -> None:
    records = orjson.loads((DATA / "stateful" / "burst" / "invictus_get_password_data.json").read_bytes())
    records = records["Records"] if isinstance(records, dict) else records
    path.write_bytes(orjson.dumps({"Records": records[:count]}))


def daemon_for(tmp_path: Path, text: str) -> Daemon:
    config_path = tmp_path / "trailguard.yaml"
    config_path.write_text(text)
    config = load_config(config_path)
    return Daemon(config, check(config, str(config_path)))


def status_of(url: str) -> int:
    """The HTTP status, or 0 while nothing listens yet (the daemon is still starting)."""
    try:
        return http_get(url)[0]
    except OSError:
        return 0


async def test_a_dead_dispatcher_fails_healthz_is_logged_and_stops_acknowledging(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "in").mkdir()
    daemon = daemon_for(tmp_path, f"""
sources: [{{type: file, paths: ["{tmp_path}/in"], follow: true, poll_interval: 0.05s}}]
sinks: [{{type: file, path: "{tmp_path}/alerts.jsonl"}}]
state: {{path: "{tmp_path}/state", checkpoint_interval: 0.05s}}
metrics: {{host: 127.0.0.1, port: {port}}}
""")

    async def broken(alerts: list[Alert]) -> None:
        raise RuntimeError("a bug in delivery")

    daemon.pipeline.dispatcher.deliver = broken  # type: ignore[method-assign]
    with capture_logs() as logs:
        running = asyncio.create_task(daemon.run())
        async with asyncio.timeout(30):
            while (await asyncio.to_thread(status_of, f"http://127.0.0.1:{port}/readyz")) != 200:
                await asyncio.sleep(0.05)  # not listening yet, or not ready
        assert (await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/healthz"))[0] == 200
        gpd_file(tmp_path / "in" / "gpd.json", 3)
        async with asyncio.timeout(30):
            while True:
                status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/healthz")
                if status != 200:
                    break
                await asyncio.sleep(0.05)
        assert "dispatcher" in body
        failed_before = daemon.metrics.registry.get_sample_value("trailguard_checkpoints_total",
                                                                 {"outcome": "failed"}) or 0
        async with asyncio.timeout(30):
            while (daemon.metrics.registry.get_sample_value("trailguard_checkpoints_total",
                                                            {"outcome": "failed"}) or 0) <= failed_before:
                await asyncio.sleep(0.05)
        daemon.request_stop()
        assert await running == 0
    assert daemon.metrics.registry.get_sample_value("trailguard_source_acknowledged_total",
                                                    {"source": "file"}) in (None, 0.0)
    failure = [e for e in logs if e["event"].startswith("dispatcher failed")]
    assert failure and failure[0]["log_level"] == "error" and failure[0]["error"] == "RuntimeError"


async def test_spools_live_under_state_path_by_default(tmp_path: Path, receiver: Receiver) -> None:
    (tmp_path / "none.json").write_bytes(b'{"Records": []}')
    daemon = daemon_for(tmp_path, f"""
sources: [{{type: file, paths: ["{tmp_path}/none.json"]}}]
sinks: [{{type: webhook, url: "{receiver.url()}"}}]
state: {{path: "{tmp_path}/state"}}
metrics: {{enabled: false}}
""")
    assert daemon.pipeline.dispatcher.delivery.spool_dir == str(tmp_path / "state" / "spool")
    await daemon.pipeline.dispatcher.start()
    await daemon.pipeline.dispatcher.stop()
    assert (tmp_path / "state" / "spool" / "webhook.spool.sqlite").exists()


async def test_a_zero_length_spool_file_is_an_empty_spool_said_in_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "hook.spool.sqlite"
    path.write_bytes(b"")
    spool = SqliteSpool(path)
    with capture_logs() as logs:
        assert await spool.open() == []
    await spool.append([("a", b"{}")])
    assert spool.depth == 1
    await spool.close()
    [said] = [e for e in logs if "zero length" in e["event"]]
    assert said["log_level"] == "warning" and said["path"] == str(path)
    assert not [e for e in logs if e["log_level"] == "error"]
