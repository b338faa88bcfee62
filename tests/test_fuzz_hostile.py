"""Seeded fuzz: hostile records mixed with good ones through file, stdin, SQS (moto_server) and Kafka
(tansu) at once, into one real pipeline.

Asserts the four promises of issue 13: every good event is processed (its alert reaches the sink),
every bad piece is counted (the ``trailguard_events_invalid_total`` sum per reason is exactly what
was injected; SQS bodies that are not JSON go to the queue's DLQ), the daemon stays healthy (no
source died, ``/healthz`` logic green), and nothing acknowledged lacks its alerts (after the final
checkpoint the SQS queue is empty, Kafka's committed offsets are at the end, and every good id was
delivered).  The seed is fixed so a failure replays exactly; the size keeps it to seconds.
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import itertools
import os
import random
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from aiobotocore.session import AioSession
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from daemon.config import PipelineConfig
from daemon.deadletter import REASONS, InvalidReporter
from daemon.delivery.dispatch import Dispatcher
from daemon.delivery.incidents import Incidents, IncidentsConfig
from daemon.metrics import Metrics
from daemon.pipeline import Pipeline
from daemon.sources.file import FileSource, FileSourceConfig
from daemon.sources.kafka import KafkaSource, KafkaSourceConfig
from daemon.sources.sqs import SqsSource, SqsSourceConfig
from detectors.engine import DetectionEngine
from tests.brokers import MotoServer, Tansu
from tests.pipeline_harness import LATENESS, Every, Recording

SEED = 13
DATA = Path(__file__).parent / "data" / "sources" / "invictus"
GOOD_PER_SOURCE = 120
HOSTILE_PER_SOURCE = 40


def templates() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(DATA.glob("*.json")):
        out.extend(orjson.loads(path.read_bytes())["Records"])
    return out


class Plan:
    """What one source is fed: lines (bytes), the good event ids among them, the expected rejects."""

    def __init__(self, name: str, rng: random.Random, *, big: bool = False, messages: bool = False,
                 unicode_only: bool = False) -> None:
        self.name = name
        self.lines: list[bytes] = []
        self.good: set[str] = set()
        self.rejects: Counter[str] = Counter()
        #: SQS: bodies that are no message at all, by reason (poison: reported per receive, then DLQ).
        self.garbage: Counter[str] = Counter()
        self.unicode_only = unicode_only
        #: One record per message (Kafka): a stray byte is repaired in place, the record kept.
        self.messages = messages
        self._last_good = b""
        base = templates()
        ids = itertools.count()
        hostile = [self._invalid_json, self._year_one, self._year_9999, self._future, self._missing_name,
                   self._wrong_type, self._scalar, self._huge_principal, self._duplicate, self._blank_run]
        if not unicode_only:  # an SQS body is Unicode text: it cannot carry these bytes at all
            hostile += [self._invalid_utf8, self._nul]
        if big:
            hostile.append(self._too_large)
        kinds = [None] * GOOD_PER_SOURCE + [rng.choice(hostile) for _ in range(HOSTILE_PER_SOURCE)]
        rng.shuffle(kinds)
        for kind in kinds:
            record = copy.deepcopy(rng.choice(base))
            record["eventID"] = f"fz-{name}-{next(ids)}"
            if kind is None:
                self._add_good(record)
            else:
                kind(record)

    def _add_good(self, record: dict[str, Any]) -> None:
        self._last_good = orjson.dumps(record)
        self.lines.append(self._last_good)
        self.good.add(record["eventID"])

    def _stray_byte(self, record: dict[str, Any], byte: bytes) -> None:
        line = orjson.dumps(record)
        self.lines.append(line[:30] + byte + line[30:])
        if self.messages:  # a whole message: repaired (U+FFFD / escaped), its record processed
            self.rejects["repaired_json"] += 1
            self.good.add(record["eventID"])
        else:  # one line among others: that line is rejected, the others kept
            self.rejects["invalid_json"] += 1

    def _invalid_json(self, record: dict[str, Any]) -> None:
        line = orjson.dumps(record)
        self.lines.append(line[: len(line) // 2])
        (self.garbage if self.unicode_only else self.rejects)["invalid_json"] += 1

    def _invalid_utf8(self, record: dict[str, Any]) -> None:
        self._stray_byte(record, b"\xff\xfe")

    def _nul(self, record: dict[str, Any]) -> None:
        self._stray_byte(record, b"\x00")

    def _year_one(self, record: dict[str, Any]) -> None:
        self.lines.append(orjson.dumps(dict(record, eventTime="0001-01-01T00:10:00+01:00")))
        self.rejects["bad_event_time"] += 1

    def _year_9999(self, record: dict[str, Any]) -> None:
        self.lines.append(orjson.dumps(dict(record, eventTime="9999-12-31T23:50:00-01:00")))
        self.rejects["bad_event_time"] += 1

    def _future(self, record: dict[str, Any]) -> None:
        self.lines.append(orjson.dumps(dict(record, eventTime="2031-06-01T00:00:00Z")))
        self.rejects["future_time"] += 1

    def _missing_name(self, record: dict[str, Any]) -> None:
        record.pop("eventName", None)
        self.lines.append(orjson.dumps(record))
        self.rejects["missing_field"] += 1

    def _wrong_type(self, record: dict[str, Any]) -> None:
        self.lines.append(orjson.dumps(dict(record, eventName=["DeleteTrail"])))
        self.rejects["wrong_type"] += 1

    def _scalar(self, _record: dict[str, Any]) -> None:
        self.lines.append(b"[1, 2, 3]")
        (self.garbage if self.unicode_only else self.rejects)["unknown_shape"] += 1

    def _huge_principal(self, record: dict[str, Any]) -> None:
        # valid, only hostile in size: processed, with its state key bounded
        record["userIdentity"] = {"type": "IAMUser", "principalId": "P" * 60_000,
                                  "arn": "arn:aws:iam::123456789012:user/" + "u" * 60_000}
        self._add_good(record)

    def _duplicate(self, record: dict[str, Any]) -> None:
        if self._last_good:
            self.lines.append(self._last_good)  # the same eventID again: counted once
        self._add_good(record)

    def _blank_run(self, record: dict[str, Any]) -> None:
        self.lines.append(b"\n" * 5000 + b"   \t")
        self._add_good(record)

    def _too_large(self, record: dict[str, Any]) -> None:
        self.lines.append(orjson.dumps(dict(record, requestParameters={"pad": "x" * (1_200_000)})))
        self.rejects["too_large"] += 1

    def body(self) -> bytes:
        return b"\n".join(self.lines) + b"\n"


async def make_queues(endpoint: str) -> tuple[str, str]:
    session = AioSession()
    async with session.create_client("sqs", region_name="us-east-1", endpoint_url=endpoint) as sqs:
        dlq = (await sqs.create_queue(QueueName="fuzz-dlq"))["QueueUrl"]
        arn = (await sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
        queue = (await sqs.create_queue(QueueName="fuzz", Attributes={
            "VisibilityTimeout": "4",
            "RedrivePolicy": orjson.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": 2}).decode()}))["QueueUrl"]
        return queue, dlq


async def queue_counts(endpoint: str, url: str) -> int:
    session = AioSession()
    async with session.create_client("sqs", region_name="us-east-1", endpoint_url=endpoint) as sqs:
        attributes = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]))["Attributes"]
        return sum(int(v) for v in attributes.values())


async def send_all(endpoint: str, url: str, bodies: list[bytes]) -> None:
    session = AioSession()
    async with session.create_client("sqs", region_name="us-east-1", endpoint_url=endpoint) as sqs:
        for body in bodies:
            await sqs.send_message(QueueUrl=url, MessageBody=body.decode("utf-8"))


async def test_hostile_records_across_file_stdin_sqs_and_kafka(tmp_path: Path, kafka_broker: Tansu,
                                                                moto_endpoint: MotoServer) -> None:
    moto_endpoint.reset()
    rng = random.Random(SEED)
    plans = {"file": Plan("file", rng, big=True), "stdin": Plan("stdin", rng, big=True),
             "sqs": Plan("sqs", rng, unicode_only=True), "kafka": Plan("kafka", rng, messages=True)}
    metrics = Metrics()
    invalid = InvalidReporter(metrics, tmp_path / "dead.jsonl")

    # file: the plan's lines in two files, plus a gzip bomb and a pretty document behind junk lines
    trail = tmp_path / "trail"
    trail.mkdir()
    lines = plans["file"].lines
    (trail / "a.jsonl").write_bytes(b"\n".join(lines[: len(lines) // 2]) + b"\n")
    (trail / "b.jsonl.gz").write_bytes(gzip.compress(b"\n".join(lines[len(lines) // 2:]) + b"\n"))
    (trail / "c.json.gz").write_bytes(gzip.compress(b"\0" * (80 << 20)))
    plans["file"].rejects["too_large"] += 1
    extra = [dict(templates()[0], eventID="fz-file-pretty-1"), dict(templates()[1], eventID="fz-file-pretty-2")]
    (trail / "d.json").write_bytes(b"<html>junk</html>\n" + orjson.dumps({"Records": extra},
                                                                         option=orjson.OPT_INDENT_2) + b"\n%%EOF")
    plans["file"].good |= {"fz-file-pretty-1", "fz-file-pretty-2"}
    plans["file"].rejects["repaired_json"] += 1
    file_source = FileSource(FileSourceConfig(paths=[str(trail)], batch_size=50), invalid, name="file")

    # stdin: a pipe written by a thread, in small pieces (as `tail -f | trailguard run` delivers)
    read_fd, write_fd = os.pipe()
    stdin_source = FileSource(FileSourceConfig(paths=["-"], batch_size=50), invalid, name="stdin",
                              stdin_fd=read_fd)
    stdin_body = plans["stdin"].body()

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as pipe:
            for start in range(0, len(stdin_body), 4096):
                pipe.write(stdin_body[start:start + 4096])

    # SQS: one line per message; the ones that are not JSON at all are poison for the DLQ
    queue, dlq = await make_queues(moto_endpoint.endpoint)
    sqs_bodies = [line for line in plans["sqs"].lines if line.strip()]
    await send_all(moto_endpoint.endpoint, queue, sqs_bodies)
    sqs_source = SqsSource(SqsSourceConfig(queue_url=queue, region="us-east-1", endpoint_url=moto_endpoint.endpoint,
                                           s3_endpoint_url=moto_endpoint.endpoint, wait_time_seconds=1,
                                           backlog_interval=0.5, max_backoff=0.3, close_timeout=2.0,
                                           visibility_timeout=4), invalid, name="sqs")
    garbage = sum(plans["sqs"].garbage.values())

    # Kafka: one line per message over three partitions
    topic = f"fuzz-{rng.randrange(1 << 30)}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    await producer.start()
    kafka_lines = [line for line in plans["kafka"].lines if line.strip()]
    try:
        for index, line in enumerate(kafka_lines):
            await producer.send_and_wait(topic, line, partition=index % 3)
    finally:
        await producer.stop()
    kafka_source = KafkaSource(KafkaSourceConfig(
        bootstrap_servers=kafka_broker.bootstrap, topics=[topic], group_id=f"{topic}-g", poll_timeout_ms=200,
        session_timeout_ms=3000, heartbeat_interval_ms=300, health_interval=0.3, health_timeout=2.0,
        max_backoff=0.5, close_timeout=5.0), invalid, name="kafka")

    sink = Recording()
    sources = [file_source, stdin_source, sqs_source, kafka_source]
    pipeline = Pipeline(sources=sources, engine=DetectionEngine([Every()], allowed_lateness=LATENESS),
                        dispatcher=Dispatcher([sink], metrics), invalid=invalid, metrics=metrics,
                        config=PipelineConfig(allowed_lateness=LATENESS, queue_size=8), checkpoint_interval=0.5,
                        incidents=Incidents(IncidentsConfig(enabled=False)))  # one notification per alert
    writer = threading.Thread(target=feed)
    good = set().union(*(plan.good for plan in plans.values()))
    await pipeline.start()
    writer.start()
    try:
        try:
            async with asyncio.timeout(60):
                while not good <= sink.event_ids() or await queue_counts(moto_endpoint.endpoint, dlq) < garbage:
                    assert pipeline.healthy(stall_after=120)[0], pipeline.healthy(stall_after=120)
                    await asyncio.sleep(0.1)
        except TimeoutError:
            missing = good - sink.event_ids()
            by_source = Counter(event_id.split("-")[1] for event_id in missing)
            dead = await queue_counts(moto_endpoint.endpoint, dlq)
            raise AssertionError(f"missing {dict(by_source)}; DLQ holds {dead} of {garbage}") from None
        await pipeline.checkpoint()
        assert pipeline.healthy(stall_after=120) == (True, "ok") and not pipeline.failed_sources
        async with asyncio.timeout(30):  # acknowledged = deleted: only after the alerts were delivered
            while await queue_counts(moto_endpoint.endpoint, queue):
                await pipeline.checkpoint()
                await asyncio.sleep(0.2)
    finally:
        writer.join(30)
        await pipeline.stop(20)
        for source in sources:
            await source.wait_closed()

    # every good event processed, nothing else alerted
    assert sink.event_ids() == good
    # every bad piece counted, exactly (SQS garbage bodies: once per receive, and all in the DLQ)
    expected: Counter[str] = Counter()
    for plan in plans.values():
        expected.update(plan.rejects)
    counted = {reason: metrics.registry.get_sample_value("trailguard_events_invalid_total", {"reason": reason})
               or 0.0 for reason in REASONS}
    for reason, bodies in plans["sqs"].garbage.items():
        reports = counted[reason] - expected[reason]
        assert bodies <= reports <= 3 * bodies, (reason, counted, expected)  # once per receive
        counted[reason] = expected[reason]
    assert {k: v for k, v in counted.items() if v} == {k: float(v) for k, v in expected.items() if v}
    assert await queue_counts(moto_endpoint.endpoint, dlq) == garbage
    # Kafka: everything committed after the final checkpoint (nothing re-read after a restart)
    reader = AIOKafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, group_id=f"{topic}-g",
                              enable_auto_commit=False)
    await reader.start()
    try:
        commits = [await reader.committed(TopicPartition(topic, p)) for p in range(3)]
    finally:
        await reader.stop()
    assert sum(commits) == len(kafka_lines), commits
