"""Kafka sink against a real broker (tansu): key = alert id, value = wire JSON, acks=all, errors classified."""

from __future__ import annotations

import asyncio
import socket

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError
from structlog.testing import capture_logs

from daemon.delivery.sinks.errors import PermanentError, TransientError
from daemon.delivery.sinks.kafka import KafkaSink, KafkaSinkConfig
from detectors.alert import Alert
from tests.brokers import Tansu


def make_alert(n: int, **extra: object) -> Alert:
    return Alert(detector="boom", title="t", severity="high", time=1_700_000_000.0 + n, summary="s",
                 event_ids=[f"e{n}"], entity="x", **extra)


async def consume(bootstrap: str, topic: str, count: int) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: list = []
    try:
        async with asyncio.timeout(20):
            while len(out) < count:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    out.extend(records)
    finally:
        await consumer.stop()
    return out


async def test_alerts_are_produced_keyed_by_id(kafka_broker: Tansu) -> None:
    sink = KafkaSink(KafkaSinkConfig(type="kafka", bootstrap_servers=kafka_broker.bootstrap, topic="alerts-a"))
    await sink.start()
    alerts = [make_alert(i) for i in range(5)]
    with capture_logs() as logs:
        await sink.send(alerts[:3])
        await sink.send(alerts[3:])
    await sink.stop()
    records = await consume(kafka_broker.bootstrap, "alerts-a", 5)
    # Several partitions: order holds per key, so compare as a mapping key -> value.
    assert {r.key.decode(): orjson.loads(r.value) for r in records} == {a.id: a.to_dict() for a in alerts}
    assert len(records) == 5
    # tansu answers InitProducerId with UnknownError: the sink falls back to acks=all, and says so.
    assert sink.idempotent is False
    assert any(e["event"].startswith("broker does not support the idempotent producer") for e in logs)


async def test_idempotence_can_be_turned_off_without_warning(kafka_broker: Tansu) -> None:
    sink = KafkaSink(KafkaSinkConfig(type="kafka", bootstrap_servers=kafka_broker.bootstrap, topic="alerts-b",
                                     enable_idempotence=False))
    with capture_logs() as logs:
        await sink.send([make_alert(1)])
    await sink.stop()
    assert not [e for e in logs if e["log_level"] == "warning"]
    assert len(await consume(kafka_broker.bootstrap, "alerts-b", 1)) == 1


async def test_oversized_alert_is_permanent_with_progress(kafka_broker: Tansu) -> None:
    sink = KafkaSink(KafkaSinkConfig(type="kafka", bootstrap_servers=kafka_broker.bootstrap, topic="alerts-c",
                                     enable_idempotence=False))
    huge = make_alert(2)
    huge.summary = "x" * 2_000_000  # evidence is bounded when built (detectors/evidence.py); the summary is not
    with pytest.raises(PermanentError) as caught:
        await sink.send([make_alert(1), huge, make_alert(3)])
    await sink.stop()
    assert caught.value.delivered == 1
    assert "MessageSizeTooLarge" in str(caught.value)


async def test_unreachable_broker_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sink = KafkaSink(KafkaSinkConfig(type="kafka", bootstrap_servers=f"127.0.0.1:{port}", topic="t",
                                     request_timeout=2))
    await sink.start()  # lazy: a down broker does not refuse start-up
    with pytest.raises(TransientError):
        await sink.send([make_alert(1)])
    await sink.stop()


def test_security_options_are_validated() -> None:
    with pytest.raises(ValidationError, match="sasl_mechanism"):
        KafkaSinkConfig(type="kafka", bootstrap_servers="b:9092", topic="t", security_protocol="SASL_SSL")
    with pytest.raises(ValidationError, match="not SASL"):
        KafkaSinkConfig(type="kafka", bootstrap_servers="b:9092", topic="t", sasl_mechanism="PLAIN")
    config = KafkaSinkConfig(type="kafka", bootstrap_servers=["b:9092"], topic="t", security_protocol="SASL_PLAINTEXT",
                             sasl_mechanism="SCRAM-SHA-512", sasl_username="u", sasl_password="hunter2")
    assert "hunter2" not in repr(config)
    sink = KafkaSink(config)
    assert sink.secrets() == ["hunter2"]
    options = sink._options(True)
    assert options["acks"] == "all" and options["enable_idempotence"] is True
    assert options["sasl_plain_password"] == "hunter2"
