"""The dispatcher's delivery guarantees against a real HTTP receiver: spool, retries, dead letters, secrets."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from daemon.delivery.dispatch import DeliveryConfig, Dispatcher
from daemon.delivery.routing import RoutingConfig
from daemon.delivery.sinks.pagerduty import PagerDutySink, PagerDutySinkConfig
from daemon.delivery.sinks.slack import SlackSink, SlackSinkConfig
from daemon.delivery.sinks.webhook import WebhookSink, WebhookSinkConfig
from daemon.metrics import Metrics
from detectors.alert import Alert
from tests.http_receiver import Receiver, Reply

FAST = {"initial_backoff": 0.02, "max_backoff": 0.1}


def make_alert(n: int, severity: str = "high", detector: str = "boom") -> Alert:
    return Alert(detector=detector, title=f"alert {n}", severity=severity, time=1_700_000_000.0 + n,
                 summary="s", account_id="111122223333", event_ids=[f"ev-{n}"], entity=f"p{n}")


def webhook(receiver: Receiver, name: str = "hook", **extra: Any) -> WebhookSink:
    return WebhookSink(WebhookSinkConfig(type="webhook", name=name, url=receiver.url(), **extra))


def dispatcher(sinks: list, tmp_path: Path | None, metrics: Metrics | None = None, **delivery: Any) -> Dispatcher:
    config = DeliveryConfig.model_validate({**FAST, **({"spool_dir": str(tmp_path / "spool")} if tmp_path else {}),
                                            **delivery})
    return Dispatcher(sinks, metrics or Metrics(), delivery=config)


async def until(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


@pytest.fixture
async def receiver():
    server = await Receiver().start()
    yield server
    await server.stop()


async def test_flush_waits_for_the_spool_not_for_a_slow_receiver(receiver: Receiver, tmp_path: Path) -> None:
    receiver.default = Reply(200, delay=1.5)
    metrics = Metrics()
    d = dispatcher([webhook(receiver, timeout=5)], tmp_path, metrics)
    await d.start()
    started = time.monotonic()
    await d.deliver([make_alert(1)])
    await d.flush()
    assert time.monotonic() - started < 0.5, "the checkpoint must not wait for the remote"
    assert sample(metrics, "trailguard_sink_spool_depth", sink="hook") == 1
    await until(lambda: len(receiver.accepted) == 1)
    await until(lambda: sample(metrics, "trailguard_sink_spool_depth", sink="hook") == 0)
    await d.stop()
    assert sample(metrics, "trailguard_sink_deliveries_total", sink="hook", outcome="delivered") == 1
    assert sample(metrics, "trailguard_sink_latency_seconds_count", sink="hook") == 1


async def test_retry_after_is_honoured(receiver: Receiver, tmp_path: Path) -> None:
    receiver.script = [Reply(429, {"Retry-After": "1"})]
    d = dispatcher([webhook(receiver)], tmp_path)
    await d.start()
    await d.deliver([make_alert(1)])
    await until(lambda: len(receiver.accepted) == 1)
    await d.stop()
    first, second = receiver.requests
    assert second.at - first.at >= 0.95, "waited for Retry-After, not the 0.1 s backoff cap"


async def test_server_errors_are_retried_until_delivered(receiver: Receiver, tmp_path: Path) -> None:
    receiver.script = [Reply(500), Reply(502), Reply(503)]
    metrics = Metrics()
    d = dispatcher([webhook(receiver)], tmp_path, metrics)
    await d.start()
    with capture_logs() as logs:
        await d.deliver([make_alert(1)])
        await until(lambda: len(receiver.accepted) == 1)
    await d.stop()
    assert len(receiver.requests) == 4 and len(receiver.accepted) == 1
    assert sample(metrics, "trailguard_sink_deliveries_total", sink="hook", outcome="retry") == 3
    retries = [e for e in logs if e["event"] == "sink delivery failed; will retry"]
    assert [e["attempt"] for e in retries] == [1, 2, 3]
    assert all(0 <= e["retry_in"] <= 0.1 for e in retries), "capped full jitter"


async def test_permanent_rejection_is_dead_lettered_and_delivery_moves_on(receiver: Receiver, tmp_path: Path) -> None:
    receiver.script = [Reply(200), Reply(400, body="invalid payload")]
    metrics = Metrics()
    d = dispatcher([webhook(receiver)], tmp_path, metrics)
    await d.start()
    alerts = [make_alert(i) for i in range(4)]
    with capture_logs() as logs:
        await d.deliver(alerts)
        await until(lambda: len(receiver.accepted) == 3)
    await d.stop()
    assert receiver.accepted_ids() == [alerts[0].id, alerts[2].id, alerts[3].id]
    assert len(receiver.requests) == 4, "the rejected alert is not retried"
    (dead,) = [orjson.loads(line) for line in (tmp_path / "spool" / "hook.dead.jsonl").read_bytes().splitlines()]
    assert dead["alert"] == alerts[1].to_dict() and "HTTP 400" in dead["reason"]
    (error,) = [e for e in logs if e["log_level"] == "error"]
    assert error["alert_id"] == alerts[1].id
    assert sample(metrics, "trailguard_sink_deliveries_total", sink="hook", outcome="failed_permanent") == 1


async def test_full_spool_blocks_delivery_instead_of_dropping(tmp_path: Path) -> None:
    receiver = Receiver()  # down
    metrics = Metrics()
    d = dispatcher([webhook(receiver)], tmp_path, metrics, max_spool_bytes=1024)
    await d.start()
    first, second = make_alert(1), make_alert(2)
    first.summary = second.summary = "x" * 600  # one spooled alert takes more than half the 1 KiB
    with capture_logs() as logs:
        await d.deliver([first])
        blocked = asyncio.create_task(d.deliver([second]))
        await asyncio.sleep(0.3)
        assert not blocked.done(), "second alert does not fit: deliver() waits (backpressure)"
        assert [e for e in logs if e["log_level"] == "error" and e["event"].startswith("delivery spool full")]
        assert sample(metrics, "trailguard_sink_deliveries_total", sink="hook", outcome="blocked") == 1
        await receiver.start()
        await asyncio.wait_for(blocked, 5)
        await until(lambda: len(receiver.accepted) == 2)
    await d.stop()
    await receiver.stop()
    assert receiver.accepted_ids() == [make_alert(1).id, make_alert(2).id]


async def test_restart_delivers_the_spool_of_the_previous_run_and_dedups_replays(tmp_path: Path) -> None:
    receiver = Receiver()  # down during the first run
    metrics = Metrics()
    alerts = [make_alert(i) for i in range(20)]
    first = dispatcher([webhook(receiver)], tmp_path, metrics)
    await first.start()
    await first.deliver(alerts)
    await first.flush()
    await first.stop()
    assert sample(metrics, "trailguard_sink_spool_depth", sink="hook") == 20
    await receiver.start()
    metrics2 = Metrics()
    second = dispatcher([webhook(receiver)], tmp_path, metrics2)
    with capture_logs() as logs:
        await second.start()  # no checkpoint restored: the spool itself says what is pending
    assert [e for e in logs if e["event"] == "delivering alerts spooled by a previous run" and e["alerts"] == 20]
    await second.deliver(alerts)  # the unacknowledged input is replayed and re-detected
    await until(lambda: len(receiver.accepted) == 20)
    await asyncio.sleep(0.2)
    await second.stop()
    await receiver.stop()
    assert receiver.accepted_ids() == [a.id for a in alerts]
    assert sample(metrics2, "trailguard_alerts_suppressed_total", detector="boom", reason="duplicate") == 20


async def test_without_spool_dir_memory_spool_is_announced_and_losses_reported(tmp_path: Path) -> None:
    receiver = Receiver()  # never up
    metrics = Metrics()
    d = dispatcher([webhook(receiver)], None, metrics, drain_timeout=0.2)
    with capture_logs() as logs:
        await d.start()
        await d.deliver([make_alert(1), make_alert(2)])
        await d.flush()
        await d.stop()
    assert any(e["log_level"] == "warning" and e["event"].startswith("no delivery.spool_dir") for e in logs)
    (lost,) = [e for e in logs if e["event"].startswith("alerts lost")]
    assert lost["alert_ids"] == [make_alert(1).id, make_alert(2).id]
    assert sample(metrics, "trailguard_sink_deliveries_total", sink="hook", outcome="dropped") == 2


async def test_memory_spool_drains_at_stop_when_the_receiver_answers(receiver: Receiver) -> None:
    receiver.default = Reply(200, delay=0.2)
    d = dispatcher([webhook(receiver)], None)
    await d.start()
    await d.deliver([make_alert(i) for i in range(3)])
    await d.stop()
    assert len(receiver.accepted) == 3


async def test_routes_pick_the_sinks(tmp_path: Path) -> None:
    pager, chat = await Receiver().start(), await Receiver().start()
    routing = RoutingConfig.model_validate({"routes": [{"min_severity": "critical", "sinks": ["pager"],
                                                        "continue": True}], "default_sinks": ["chat"]})
    d = Dispatcher([webhook(pager, "pager"), webhook(chat, "chat")], Metrics(), routing=routing,
                   delivery=DeliveryConfig(spool_dir=str(tmp_path), **FAST))
    await d.start()
    await d.deliver([make_alert(1, "critical"), make_alert(2, "low")])
    await until(lambda: len(pager.accepted) == 1 and len(chat.accepted) == 1)
    await d.stop()
    await pager.stop()
    await chat.stop()
    assert pager.accepted_ids() == [make_alert(1, "critical").id]
    assert chat.accepted_ids() == [make_alert(2, "low").id], "continue: true, but no later route: default unused"


async def test_secrets_never_reach_logs_or_dead_letters(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret_path = "/services/T0SECRETX/B0SECRETY/SlackSecretToken42"
    hook_token, hmac_key, routing_key = "hookTokenSecret99", "hmacKeySecret77", "R0ut1ngKeySecret0123456789abcdef"
    receiver = Receiver()
    echo = f"bad hook {receiver.url(secret_path)} token={hook_token} key={routing_key}"
    sinks = [
        SlackSink(SlackSinkConfig(type="slack", url=receiver.url(secret_path))),
        WebhookSink(WebhookSinkConfig(type="webhook", url=receiver.url(f"/in?token={hook_token}"),
                                      hmac_secret=hmac_key, headers={"Authorization": f"Bearer {hook_token}"})),
        PagerDutySink(PagerDutySinkConfig(type="pagerduty", routing_key=routing_key, api_url=receiver.url("/pd"))),
    ]
    caplog.set_level(logging.DEBUG)
    with capture_logs() as logs:
        d = dispatcher(sinks, tmp_path)
        await d.start()
        await d.deliver([make_alert(1)])
        await asyncio.sleep(0.3)                              # connection refused, retried
        receiver.script = [Reply(500, body=echo)] * 3 + [Reply(404, body=echo)] * 3
        await receiver.start()
        await until(lambda: len(receiver.requests) >= 6)
        await asyncio.sleep(0.2)
        await d.stop()
        await receiver.stop()
    texts = [repr(logs), caplog.text, *(p.read_text() for p in (tmp_path / "spool").glob("*.dead.jsonl"))]
    assert len(list((tmp_path / "spool").glob("*.dead.jsonl"))) == 3, "each sink got its 404"
    assert any("HTTP 500" in str(e.get("detail")) for e in logs) and any("HTTP 404" in t for t in texts)
    for text in texts:
        for secret in ("SlackSecretToken42", "T0SECRETX", hook_token, hmac_key, routing_key):
            assert secret not in text, (secret, text[max(0, text.find(secret) - 300):text.find(secret) + 100])


async def test_spool_write_failure_is_retried_not_raised(receiver: Receiver, tmp_path: Path) -> None:
    d = dispatcher([webhook(receiver)], tmp_path)
    await d.start()
    spool = d.lanes["hook"].spool
    real_append = spool.append
    failures = [OSError(28, "No space left on device")]

    async def flaky_append(entries: list) -> None:
        if failures:
            raise failures.pop()
        await real_append(entries)

    spool.append = flaky_append  # type: ignore[method-assign]
    with capture_logs() as logs:
        await d.deliver([make_alert(1)])
    await until(lambda: len(receiver.accepted) == 1)
    await d.stop()
    assert [e for e in logs if e["event"].startswith("spool write failed") and e["log_level"] == "error"]


async def test_undecodable_spool_entry_is_dead_lettered(receiver: Receiver, tmp_path: Path) -> None:
    from daemon.delivery.spool import SqliteSpool, encode_alert

    spool = SqliteSpool(tmp_path / "spool" / "hook.spool.sqlite")
    await spool.open()
    good = make_alert(2)
    await spool.append([("broken", b"\x00not json"), (good.id, encode_alert(good))])
    await spool.close()
    d = dispatcher([webhook(receiver)], tmp_path)
    await d.start()
    await until(lambda: len(receiver.accepted) == 1)
    await d.stop()
    assert receiver.accepted_ids() == [good.id]
    dead = (tmp_path / "spool" / "hook.dead.jsonl").read_text()
    assert "undecodable spool entry" in dead and '"id":"broken"' in dead


async def test_one_sink_is_handed_its_alerts_without_a_task_and_several_share_one_gather(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.delivery import dispatch as dispatch_module
    from tests.pipeline_harness import Recording

    gathers: list[int] = []
    real_gather = asyncio.gather

    def counting_gather(*awaitables: Any, **options: Any) -> Any:
        gathers.append(len(awaitables))
        return real_gather(*awaitables, **options)

    monkeypatch.setattr(dispatch_module.asyncio, "gather", counting_gather)
    one = Recording()
    single = dispatcher([one], None)
    await single.start()
    gathers.clear()
    await single.deliver([make_alert(1), make_alert(2)])
    assert gathers == [], "one sink: delivered in the dispatcher's own turn of the loop"
    await single.stop()
    assert [a.id for a in one.alerts] == [make_alert(1).id, make_alert(2).id]

    first, second = Recording(), Recording()
    second.name = "recording-2"
    both = dispatcher([first, second], None)
    await both.start()
    gathers.clear()
    await both.deliver([make_alert(3)])
    assert gathers == [2]
    await both.stop()
    assert len(first.alerts) == len(second.alerts) == 1
