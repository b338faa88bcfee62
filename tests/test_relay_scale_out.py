"""The way off a single SQS consumer, end to end: moto_server SQS → ``trailguard relay`` ×2 → tansu →
``trailguard run`` ×2 in one consumer group gives the notifications one ``trailguard run`` on the
queue gives.

The six-account trail of :mod:`tests.test_kafka_scale_out` (brute forces, ``AccessDenied`` bursts,
a GPU launch, an enumeration, background) is put on SQS both ways CloudTrail reaches a queue: as
EventBridge events ("AWS API Call via CloudTrail", one record per message) and as S3 notifications
of gzipped CloudTrail log files in a (moto) bucket.  The same messages go to two queues: one drained
by a single ``run`` with the ``sqs`` source, the other by two relays into a six-partition topic
keyed by account, consumed by two detection instances with their own ``state.path``.  Both paths
deliver the same notification ids (incidents on, the default: the same incidents opened and
updated), each once; the relays' queue ends empty and the topic holds every record exactly once.

SQS keeps no order and ``run`` does not reorder by event time (``replay`` does): a threshold
detector's alert is raised by whichever event crosses the threshold first *in arrival order*, so
its id follows arrival order.  As CloudTrail does, each account's activity here arrives in one log
file (in order on both paths), the background as EventBridge events in any order, and both paths
allow three hours of lateness; the events closing the incidents are sent once the rest is read.
"""

from __future__ import annotations

import asyncio
import gzip
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiobotocore.session import AioSession
from aiokafka import AIOKafkaConsumer

from detectors.event import format_time
from detectors.registry import DETECTORS
from tests.brokers import AWS_TEST_ENV, MotoServer, Tansu
from tests.conftest import ROOT, TRAILGUARD, DaemonProcess, wait_for
from tests.test_kafka_scale_out import ACCOUNTS, T0, Instance, _in_account, free_port, start_in_turn, trail, union
from tests.test_restart_kill9 import MINE
from tests.test_source_kafka import create_topic, envelope

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

BUCKET = "relay-trail"
#: Both paths allow this lateness: SQS keeps no order, and the background's EventBridge events may
#: be read hours (of event time) ahead of an account's log file.
LATENESS = "3h"


@pytest.fixture
async def sqs_s3(moto_endpoint: MotoServer) -> AsyncIterator[tuple[Any, Any]]:
    moto_endpoint.reset()
    session = AioSession()
    kw = {"region_name": "us-east-1", "endpoint_url": moto_endpoint.endpoint}
    async with session.create_client("sqs", **kw) as sqs, session.create_client("s3", **kw) as s3:
        yield sqs, s3


def _trail() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every attack and a tenth of the background (moto is slow to fill two queues with 1,900
    messages); and, for later, one event per account eight hours on (past every window, given the
    lateness), so both paths close their incidents and send the totals."""
    records = [r for r in trail() if not r["eventID"].startswith("tail-")
               and (not r["eventID"].startswith("bg-") or int(r["eventID"][3:]) % 10 == 0)]
    tail = []
    for n, account in enumerate(ACCOUNTS):
        record = _in_account(records[n], account)
        record["eventTime"] = format_time(T0 + 8 * 3600.0 + n)
        record["eventID"] = f"tail-{n}"
        tail.append(record)
    return records, tail


async def _messages(s3: Any, records: list[dict[str, Any]]) -> list[bytes]:
    """The trail as SQS bodies: each account's attack records as one CloudTrail log file in S3 (an
    S3 notification), the background as EventBridge events, one record each.

    CloudTrail writes an account's events to files in order; keeping each account's attack in one
    file keeps it in order on both paths, so both raise the same alerts at the same events.
    """
    await s3.create_bucket(Bucket=BUCKET)
    bodies: list[bytes] = []
    for account in ACCOUNTS:
        attack = [r for r in records if r["recipientAccountId"] == account and not r["eventID"].startswith("bg-")]
        if not attack:
            continue
        key = f"AWSLogs/o-relay/{account}/CloudTrail/us-east-1/2024/06/01/{account}_CloudTrail_us-east-1_0001.json.gz"
        await s3.put_object(Bucket=BUCKET, Key=key, Body=gzip.compress(orjson.dumps({"Records": attack})))
        bodies.append(orjson.dumps({"Records": [{
            "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": BUCKET, "arn": f"arn:aws:s3:::{BUCKET}"}, "object": {"key": key}}}]}))
    bodies.extend(orjson.dumps(envelope(r)) for r in records if r["eventID"].startswith("bg-"))
    return bodies


async def _queue(sqs: Any, name: str, bodies: list[bytes]) -> str:
    url = (await sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "60"}))["QueueUrl"]
    await _send(sqs, url, bodies)
    return url


async def _send(sqs: Any, url: str, bodies: list[bytes]) -> None:
    for start in range(0, len(bodies), 10):
        await sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(n), "MessageBody": body.decode()} for n, body in enumerate(bodies[start:start + 10])])


async def _left(sqs: Any, url: str) -> int:
    attributes = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]))["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


async def _until_empty(sqs: Any, url: str, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while await _left(sqs, url):
            await asyncio.sleep(0.5)


def _sqs_source(url: str, endpoint: str) -> dict[str, Any]:
    return {"type": "sqs", "queue_url": url, "region": "us-east-1", "endpoint_url": endpoint,
            "s3_endpoint_url": endpoint, "wait_time_seconds": 1, "max_backoff": 0.5}


def _direct_run(tmp_path: Path, url: str, endpoint: str) -> tuple[DaemonProcess, Path]:
    workdir = tmp_path / "direct"
    workdir.mkdir()
    detectors = {name: ({} if name in MINE else {"enabled": False}) for name in DETECTORS}
    port = free_port()
    config = workdir / "config.json"
    config.write_bytes(orjson.dumps({
        "sources": [_sqs_source(url, endpoint)], "detectors": detectors,
        "sinks": [{"type": "file", "path": str(workdir / "alerts.jsonl")}],
        "state": {"path": str(workdir / "state"), "checkpoint_interval": "0.5s"},
        "pipeline": {"allowed_lateness": LATENESS},
        "metrics": {"host": "127.0.0.1", "port": port}, "logging": {"level": "info", "format": "json"},
        "shutdown": {"deadline": "15s"}}))
    return DaemonProcess(config, workdir, port), workdir / "alerts.jsonl"


def _relay(tmp_path: Path, n: int, url: str, endpoint: str, bootstrap: str, topic: str) -> subprocess.Popen[bytes]:
    config = tmp_path / f"relay{n}.json"
    config.write_bytes(orjson.dumps({
        "sources": [_sqs_source(url, endpoint)], "metrics": {"host": "127.0.0.1", "port": free_port()},
        "logging": {"level": "info", "format": "json"}}))
    log = (tmp_path / f"relay{n}.log").open("wb")
    return subprocess.Popen([*TRAILGUARD, "relay", "--config", str(config), "--bootstrap-servers", bootstrap,
                             "--topic", topic], cwd=ROOT, stdout=log, stderr=log)


async def _topic_records(bootstrap: str, topic: str) -> list[tuple[bytes | None, str]]:
    """Every (key, eventID) in the topic, read to its end offsets."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: list[tuple[bytes | None, str]] = []
    try:
        async with asyncio.timeout(60):
            while not consumer.assignment():
                await asyncio.sleep(0.1)
            ends = await consumer.end_offsets(list(consumer.assignment()))
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    out.extend((m.key, orjson.loads(m.value)["eventID"]) for m in messages)
    finally:
        await consumer.stop()
    return out


def _notifications(path: Path) -> list[dict[str, Any]]:
    lines = path.read_bytes().splitlines() if path.exists() else []
    return [orjson.loads(line) for line in lines if line.strip()]


async def test_relays_and_a_detection_group_find_what_one_sqs_consumer_finds(
        moto_endpoint: MotoServer, kafka_broker: Tansu, sqs_s3: tuple[Any, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)  # the daemons and relays reach moto with test credentials
    sqs, s3 = sqs_s3
    records, tail = _trail()
    everything = [*records, *tail]
    bodies = await _messages(s3, records)
    closing = [orjson.dumps(envelope(r)) for r in tail]
    direct_url = await _queue(sqs, "direct-in", bodies)
    relay_url = await _queue(sqs, "relay-in", bodies)
    endpoint = moto_endpoint.endpoint

    # one `trailguard run` on the queue: the reference
    direct, direct_alerts = _direct_run(tmp_path, direct_url, endpoint)
    try:
        direct.wait_ready(90)
        await _until_empty(sqs, direct_url, 240)
        await _send(sqs, direct_url, closing)  # later events: every incident's window passes
        await _until_empty(sqs, direct_url, 60)
        wait_for(lambda: (direct.metric("trailguard_events_processed_total") or 0) >= len(everything), 60,
                 what="the direct run processed every record")
        time.sleep(1.0)
    finally:
        assert direct.stop() == 0
    reference = _notifications(direct_alerts)
    want = Counter(n["id"] for n in reference)
    assert len(want) >= 11 and max(want.values()) == 1, reference
    assert {n["kind"] for n in reference} == {"opened", "updated"}, "incidents opened and updated with their totals"

    # relays ×2 → Kafka → detection ×2
    topic = await create_topic(kafka_broker.bootstrap, partitions=6)
    instances = [Instance(tmp_path, f"detect{n}", kafka_broker.bootstrap, topic, "relay-detection")
                 for n in range(2)]
    for instance in instances:
        config = orjson.loads(instance.config.read_bytes())
        instance.config.write_bytes(orjson.dumps({**config, "pipeline": {"allowed_lateness": LATENESS}}))
    relays: list[subprocess.Popen[bytes]] = []
    try:
        start_in_turn(*instances)
        relays = [_relay(tmp_path, n, relay_url, endpoint, kafka_broker.bootstrap, topic) for n in range(2)]
        await _until_empty(sqs, relay_url, 240)
        await _send(sqs, relay_url, closing)
        await _until_empty(sqs, relay_url, 60)
        wait_for(lambda: set(union(instances)) >= set(want), 180, interval=0.5, what="every reference notification")
        wait_for(lambda: sum(i.metric("trailguard_events_processed_total") for i in instances) >= len(everything),
                 60, what="every record detected")
        time.sleep(1.0)
    finally:
        for process in relays:
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(30) for process in relays]
        for instance in instances:
            if instance.process is not None:
                assert instance.stop() == 0
    assert codes == [0, 0], (tmp_path / "relay0.log").read_text()[-2000:]
    logs = [(tmp_path / f"relay{n}.log").read_text() for n in range(2)]
    assert all('"relay started"' in text for text in logs)

    produced = await _topic_records(kafka_broker.bootstrap, topic)
    assert Counter(event_id for _, event_id in produced) == Counter(r["eventID"] for r in everything), \
        "every record on the topic exactly once (none lost, none twice)"
    by_id = {r["eventID"]: r["recipientAccountId"].encode() for r in everything}
    assert all(key == by_id[event_id] for key, event_id in produced), "keyed by account for detection"
    got = union(instances)
    assert set(got) == set(want), f"missing {sorted(set(want) - set(got))}, extra {sorted(set(got) - set(want))}"
    assert max(got.values()) == 1, f"delivered twice: {sorted(k for k, v in got.items() if v > 1)}"
