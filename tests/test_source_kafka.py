"""The Kafka source against a real broker (tansu): shapes, commit-after-acknowledge, groups, outages.

Every test uses its own topic and consumer group on one module-scoped broker.  Offsets are read
back with a separate consumer's ``committed()``, so "committed only after acknowledge, as
offset + 1" is checked on the broker, not in the source's memory.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import ValidationError

from daemon.deadletter import InvalidReporter
from daemon.metrics import Metrics
from daemon.sources.base import SourceBatch
from daemon.sources.kafka import AssignmentChange, KafkaPosition, KafkaSource, KafkaSourceConfig
from daemon.sources.kafka_offsets import PartitionOffsets
from tests.brokers import Tansu
from tests.pipeline_harness import pipeline_for

DATA = Path(__file__).parent / "data" / "sources"
_names = itertools.count()


# -- real records ---------------------------------------------------------------------------------
def flaws2_files() -> list[bytes]:
    """The eight gzip S3 delivery files of flaws2.cloud, as stored."""
    return [path.read_bytes() for path in sorted((DATA / "flaws2").glob("*.json.gz"))]


def invictus_records() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted((DATA / "invictus").glob("*.json")):
        out.extend(orjson.loads(path.read_bytes())["Records"])
    return out


def envelope(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as EventBridge delivers it ("AWS API Call via CloudTrail")."""
    return {"version": "0", "id": f"env-{record['eventID']}", "detail-type": "AWS API Call via CloudTrail",
            "source": "aws." + record["eventSource"].split(".")[0], "account": record["recipientAccountId"],
            "time": record["eventTime"], "region": record["awsRegion"], "resources": [], "detail": record}


def account_key(record: dict[str, Any]) -> bytes:
    return (record.get("recipientAccountId") or record.get("userIdentity", {}).get("accountId", "")).encode()


# -- broker helpers -------------------------------------------------------------------------------
async def create_topic(bootstrap: str, partitions: int = 3) -> str:
    topic = f"cloudtrail-{next(_names)}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    return topic


async def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]],
                  partition: int | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await producer.stop()


async def committed(bootstrap: str, group: str, topic: str, partitions: int = 3) -> dict[int, int | None]:
    """The group's committed offsets as the broker has them."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        return {p: await reader.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await reader.stop()


def kafka_source(bootstrap: str, topic: str, group: str, metrics: Metrics | None = None,
                 invalid: InvalidReporter | None = None, **extra: Any) -> KafkaSource:
    settings: dict[str, Any] = {"poll_timeout_ms": 200, "session_timeout_ms": 3000, "heartbeat_interval_ms": 300,
                                "health_interval": 0.3, "health_timeout": 2.0, "max_backoff": 0.5,
                                "close_timeout": 5.0, **extra}
    config = KafkaSourceConfig(bootstrap_servers=bootstrap, topics=[topic], group_id=group, **settings)
    return KafkaSource(config, invalid or InvalidReporter(metrics or Metrics()))


class Reader:
    """Drives ``batches()`` in a task; batches are kept, acknowledgement is up to the test."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source
        self.batches: list[SourceBatch] = []
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Reader:
        await self.source.start()
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        async for batch in self.source.batches():
            self.batches.append(batch)

    def event_ids(self) -> list[str]:
        return [r["eventID"] for b in self.batches for r in b.records]

    async def wait(self, predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                if self.task is not None and self.task.done():
                    self.task.result()
                await asyncio.sleep(0.05)

    async def acknowledge_all(self) -> None:
        await self.source.acknowledge([b.position for b in self.batches])

    async def __aexit__(self, *exc: object) -> None:
        await self.source.stop()
        if self.task is not None:
            await asyncio.wait_for(self.task, 5)
        await asyncio.wait_for(self.source.wait_closed(), 10)


@pytest.fixture
async def bootstrap(kafka_broker: Tansu) -> AsyncIterator[str]:
    yield kafka_broker.bootstrap


# -- tests ----------------------------------------------------------------------------------------
def test_config_is_strict_and_consistent() -> None:
    base = {"type": "kafka", "bootstrap_servers": "broker-1:9092,broker-2:9092", "group_id": "trailguard"}
    config = KafkaSourceConfig.model_validate({**base, "topics": ["cloudtrail"]})
    assert config.auto_offset_reset == "earliest" and config.security_protocol == "PLAINTEXT"
    for bad in ({**base}, {**base, "topics": ["a"], "topic_pattern": "a.*"}, {**base, "topics": ["a"], "tpoics": []},
                {**base, "topics": ["a"], "security_protocol": "SASL_SSL"},
                {**base, "topics": ["a"], "sasl_username": "u"},
                {**base, "topics": ["a"], "ssl_cafile": "/ca.pem"}):
        with pytest.raises(ValidationError):
            KafkaSourceConfig.model_validate(bad)
    sasl = KafkaSourceConfig.model_validate({**base, "topic_pattern": "cloudtrail-.*", "security_protocol": "SASL_SSL",
                                             "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "tg",
                                             "sasl_password": "secret"})
    assert "secret" not in repr(sasl)


def test_only_the_contiguous_acknowledged_prefix_is_committable() -> None:
    offsets = PartitionOffsets(epoch=1)
    offsets.emitted(0, 9)
    offsets.emitted(10, 14)
    offsets.emitted(17, 20)  # a gap (transaction markers, compaction) is fine
    offsets.acknowledged(10, 14)
    assert offsets.to_commit() is None, "batch 0..9 is not acknowledged yet"
    offsets.acknowledged(0, 9)
    assert offsets.to_commit() == 15 and offsets.outstanding == 1
    offsets.committed = 15
    assert offsets.to_commit() is None
    offsets.acknowledged(17, 20)
    assert offsets.to_commit() == 21 and offsets.outstanding == 0


async def test_every_shape_flows_through_a_pipeline_and_commits_after_the_checkpoint(bootstrap: str,
                                                                                      tmp_path: Path) -> None:
    topic = await create_topic(bootstrap)
    singles = invictus_records()
    files = flaws2_files()
    expected = {r["eventID"] for r in singles}
    expected |= {r["eventID"] for data in files for r in orjson.loads(gzip.decompress(data))["Records"]}
    messages: list[tuple[bytes | None, bytes]] = []
    for index, record in enumerate(singles):  # single events and EventBridge envelopes, keyed by account
        messages.append((account_key(record), orjson.dumps(record if index % 2 else envelope(record))))
    messages += [(b"653711331788", data) for data in files[:4]]  # gzip Records files as they are
    messages += [(b"653711331788", gzip.decompress(data)) for data in files[4:]]  # plain Records batches
    messages.append((b"653711331788", b'{"not": "cloudtrail"'))  # poison: dead-lettered, offset still done
    await produce(bootstrap, topic, messages)

    metrics = Metrics()
    invalid = InvalidReporter(metrics, tmp_path / "dead.jsonl")
    source = kafka_source(bootstrap, topic, "flow", metrics, invalid)
    pipeline, sink = pipeline_for(source, metrics)
    await pipeline.start()
    try:
        async with asyncio.timeout(20):
            while pipeline.counts["processed"] < len(expected) or len(sink.event_ids()) < len(expected):
                await asyncio.sleep(0.05)
        assert sink.event_ids() == expected
        assert set(source.assigned_partitions()) == {(topic, 0), (topic, 1), (topic, 2)}
        assert await committed(bootstrap, "flow", topic) == {0: None, 1: None, 2: None}, "nothing before a checkpoint"
        await pipeline.checkpoint()
        ends = {tp.partition: end for tp, end in (await source._consumer.end_offsets(  # type: ignore[union-attr]
            [TopicPartition(topic, p) for p in range(3)])).items()}
        assert await committed(bootstrap, "flow", topic) == {p: end or None for p, end in ends.items()}
        assert sum(ends.values()) == len(messages), "offset + 1 of the last message of each partition"
        assert source.ready
        async with asyncio.timeout(5):
            while metrics.registry.get_sample_value("trailguard_kafka_lag", {"topic": topic, "partition": "0"}) != 0:
                await asyncio.sleep(0.05)
    finally:
        await pipeline.stop(10)
        await source.wait_closed()
    assert metrics.registry.get_sample_value("trailguard_events_invalid_total", {"reason": "invalid_json"}) == 1
    dead = orjson.loads((tmp_path / "dead.jsonl").read_bytes().splitlines()[0])
    assert dead["origin"].startswith(f"{topic}/") and "@" in dead["origin"]


async def test_commits_are_offset_plus_one_and_only_after_acknowledge(bootstrap: str) -> None:
    topic = await create_topic(bootstrap, partitions=1)
    records = invictus_records()
    await produce(bootstrap, topic, [(None, orjson.dumps(r)) for r in records[:4]], partition=0)
    async with Reader(kafka_source(bootstrap, topic, "ack")) as reader:
        await reader.wait(lambda: len(reader.event_ids()) == 4)
        await asyncio.sleep(0.5)
        assert (await committed(bootstrap, "ack", topic, 1))[0] is None
        first = reader.batches[0].position
        assert isinstance(first, KafkaPosition) and (first.first_offset, first.last_offset) == (0, 3)
        await reader.acknowledge_all()
        assert (await committed(bootstrap, "ack", topic, 1))[0] == 4


async def test_unacknowledged_records_are_read_again_after_a_crash(bootstrap: str) -> None:
    topic = await create_topic(bootstrap, partitions=1)
    records = invictus_records()
    await produce(bootstrap, topic, [(None, orjson.dumps(r)) for r in records[:5]], partition=0)
    async with Reader(kafka_source(bootstrap, topic, "crash", close_timeout=0.2)) as first:
        await first.wait(lambda: len(first.event_ids()) == 5)
        await first.acknowledge_all()  # 0..4 committed
        await produce(bootstrap, topic, [(None, orjson.dumps(r)) for r in records[5:]], partition=0)
        await first.wait(lambda: len(first.event_ids()) == len(records))
        # processed, never acknowledged: the "crash" (stop without acknowledging)
    assert (await committed(bootstrap, "crash", topic, 1))[0] == 5
    async with Reader(kafka_source(bootstrap, topic, "crash")) as second:
        await second.wait(lambda: len(second.event_ids()) == len(records) - 5)
        await asyncio.sleep(0.5)
        assert second.event_ids() == [r["eventID"] for r in records[5:]], "resumes exactly at the commit"
        await second.acknowledge_all()
    assert (await committed(bootstrap, "crash", topic, 1))[0] == len(records)


async def test_two_consumers_split_partitions_and_one_takes_over(bootstrap: str) -> None:
    topic = await create_topic(bootstrap)
    changes: list[AssignmentChange] = []
    one, two = kafka_source(bootstrap, topic, "split"), kafka_source(bootstrap, topic, "split")
    one.on_assignment(changes.append)
    async with Reader(one) as a:
        await a.wait(lambda: len(one.assigned_partitions()) == 3)
        async with Reader(two) as b:
            await b.wait(lambda: one.assigned_partitions() and two.assigned_partitions()
                         and len(one.assigned_partitions() | two.assigned_partitions()) == 3, timeout=30)
            assert not one.assigned_partitions() & two.assigned_partitions()
            records = invictus_records()
            await produce(bootstrap, topic, [(None, orjson.dumps(r)) for r in records], partition=None)
            await b.wait(lambda: len(a.event_ids()) + len(b.event_ids()) == len(records))
            assert sorted(a.event_ids() + b.event_ids()) == sorted(r["eventID"] for r in records)
            await a.acknowledge_all()
            await b.acknowledge_all()
        await a.wait(lambda: len(one.assigned_partitions()) == 3, timeout=30)
    assert any(change.revoked for change in changes) and changes[-1].assigned
    assert set((await committed(bootstrap, "split", topic)).values()) != {None}


async def test_a_revoked_partitions_late_acknowledgement_is_not_committed(bootstrap: str) -> None:
    topic = await create_topic(bootstrap, partitions=1)
    await produce(bootstrap, topic, [(None, orjson.dumps(r)) for r in invictus_records()[:3]], partition=0)
    source = kafka_source(bootstrap, topic, "stale")
    async with Reader(source) as reader:
        await reader.wait(lambda: len(reader.event_ids()) == 3)
        stale = reader.batches[0].position
        await source._revoked([TopicPartition(topic, 0)])
        await source._assigned([TopicPartition(topic, 0)])
        await source.acknowledge([stale])
        assert (await committed(bootstrap, "stale", topic, 1))[0] is None


async def test_broker_outage_flips_readiness_and_consumption_resumes(tmp_path: Path) -> None:
    broker = Tansu(log_dir=tmp_path).start()
    try:
        topic = await create_topic(broker.bootstrap, partitions=1)
        records = invictus_records()
        await produce(broker.bootstrap, topic, [(None, orjson.dumps(records[0]))], partition=0)
        metrics = Metrics()
        source = kafka_source(broker.bootstrap, topic, "outage", metrics)
        async with Reader(source) as reader:
            await reader.wait(lambda: len(reader.event_ids()) == 1 and source.ready)
            await reader.acknowledge_all()
            broker.stop()
            await reader.wait(lambda: not source.ready, timeout=15, what="not ready")
            assert metrics.registry.get_sample_value("trailguard_source_up", {"source": "kafka"}) == 0
            broker.start()  # in-memory storage: the topic and the group's offsets are gone
            await create_topic_named(broker.bootstrap, topic)
            await produce(broker.bootstrap, topic, [(None, orjson.dumps(r)) for r in records[1:4]], partition=0)
            await reader.wait(lambda: source.ready, timeout=30, what="ready again")
            await reader.wait(lambda: set(reader.event_ids()) >= {r["eventID"] for r in records[:4]}, timeout=40)
            await reader.acknowledge_all()
        assert metrics.registry.get_sample_value("trailguard_source_errors_total", {"source": "kafka"}) >= 1
    finally:
        broker.stop()


async def create_topic_named(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()


async def test_a_batchs_fetch_age_is_its_oldest_records_producer_timestamp_to_now(bootstrap: str) -> None:
    """``trailguard_stage_seconds{stage="fetch_age"}``: the part of an alert's latency spent before
    trailguard (producer, broker, fetch), from the record's CreateTime — here two minutes."""
    topic = await create_topic(bootstrap, partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, orjson.dumps(invictus_records()[0]), partition=0,
                                     timestamp_ms=int((time.time() - 120) * 1000))
    finally:
        await producer.stop()
    metrics = Metrics()
    async with Reader(kafka_source(bootstrap, topic, "fetch-age", metrics)) as reader:
        await reader.wait(lambda: len(reader.event_ids()) == 1)
    labels = {"stage": "fetch_age"}
    assert metrics.registry.get_sample_value("trailguard_stage_seconds_count", labels) == 1
    assert 120 <= metrics.registry.get_sample_value("trailguard_stage_seconds_sum", labels) < 180
