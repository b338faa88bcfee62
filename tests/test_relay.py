"""``trailguard relay`` against real brokers: two relay processes drain one SQS queue (moto_server)
into a Kafka topic (tansu) keyed by account; every record arrives, each under its account's key,
and the queue ends empty (messages deleted only after their records were produced)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import orjson
from aiobotocore.session import AioSession
from aiokafka import AIOKafkaConsumer

from daemon.relay import account_key
from tests.brokers import AWS_TEST_ENV, MotoServer, Tansu
from tests.conftest import ROOT, TRAILGUARD
from tests.test_kafka_scale_out import ACCOUNTS, _in_account, free_port
from tests.test_source_kafka import create_topic, envelope, invictus_records


def test_account_key_prefers_the_recipient_account() -> None:
    assert account_key({"recipientAccountId": "1", "userIdentity": {"accountId": "2"}}) == b"1"
    assert account_key({"userIdentity": {"accountId": "2"}}) == b"2"
    assert account_key({"userIdentity": "odd"}) is None and account_key([]) is None


async def _queue(endpoint: str, bodies: list[bytes]) -> tuple[str, Any]:
    session = AioSession()
    client = session.create_client("sqs", region_name="us-east-1", endpoint_url=endpoint)
    sqs = await client.__aenter__()
    url = (await sqs.create_queue(QueueName="relay-events", Attributes={"VisibilityTimeout": "30"}))["QueueUrl"]
    for start in range(0, len(bodies), 10):
        await sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(n), "MessageBody": body.decode()} for n, body in enumerate(bodies[start:start + 10])])
    return url, (client, sqs)


async def _left(sqs: Any, url: str) -> int:
    attributes = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]))["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


async def _read(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes | None, dict[str, Any]]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: list[tuple[bytes | None, dict[str, Any]]] = []
    try:
        async with asyncio.timeout(60):
            while len(out) < expected:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    out.extend((m.key, orjson.loads(m.value)) for m in messages)
    finally:
        await consumer.stop()
    return out


async def test_two_relays_drain_one_queue_into_kafka_keyed_by_account(moto_endpoint: MotoServer,
                                                                      kafka_broker: Tansu, tmp_path: Path) -> None:
    records = [_in_account(r, ACCOUNTS[n % len(ACCOUNTS)]) for n, r in enumerate(invictus_records()[:120])]
    url, (client, sqs) = await _queue(moto_endpoint.endpoint, [orjson.dumps(envelope(r)) for r in records])
    topic = await create_topic(kafka_broker.bootstrap, partitions=6)
    relays = []
    try:
        for n in range(2):
            config = tmp_path / f"relay{n}.json"
            config.write_bytes(orjson.dumps({
                "sources": [{"type": "sqs", "queue_url": url, "region": "us-east-1",
                             "endpoint_url": moto_endpoint.endpoint, "wait_time_seconds": 1, "max_backoff": 0.5}],
                "metrics": {"host": "127.0.0.1", "port": free_port()},
                "logging": {"level": "info", "format": "json"}}))
            log = (tmp_path / f"relay{n}.log").open("wb")
            relays.append(subprocess.Popen(
                [*TRAILGUARD, "relay", "--config", str(config), "--bootstrap-servers", kafka_broker.bootstrap,
                 "--topic", topic], cwd=ROOT, stdout=log, stderr=log, env={**os.environ, **AWS_TEST_ENV}))
        got = await _read(kafka_broker.bootstrap, topic, len(records))
        left = -1
        for _ in range(100):
            left = await _left(sqs, url)
            if left == 0:
                break
            await asyncio.sleep(0.2)
        assert left == 0, "every message deleted once its records were produced"
    finally:
        for process in relays:
            process.send_signal(signal.SIGTERM)
        for process in relays:
            assert process.wait(30) == 0, (tmp_path / "relay0.log").read_text()[-2000:]
        await client.__aexit__(None, None, None)
    assert {r["eventID"] for _, r in got} == {r["eventID"] for r in records}
    assert all(key == r["recipientAccountId"].encode() for key, r in got), "keyed by account for detection"
    logs = [(tmp_path / f"relay{n}.log").read_text() for n in range(2)]
    assert all('"relay started"' in text for text in logs)
