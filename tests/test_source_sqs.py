"""The SQS source against moto_server: every notification shape, delete-after-acknowledge, poison → DLQ.

Queues, buckets, SNS topics and EventBridge rules are real moto resources, wired the way AWS wires
them (S3 → SQS notification, SNS → SQS subscription without raw delivery, EventBridge rule → SQS
target), so the message bodies are the ones those services produce.  Each test starts from an
empty moto (``reset``).
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiobotocore.session import AioSession
from pydantic import ValidationError

from daemon.deadletter import InvalidReporter
from daemon.metrics import Metrics
from daemon.sources.base import SourceBatch
from daemon.sources.sqs import SqsSource, SqsSourceConfig
from daemon.sources.sqs_messages import BadMessage, ObjectRef, parse_message
from tests.brokers import MotoServer, _free_port
from tests.pipeline_harness import pipeline_for

DATA = Path(__file__).parent / "data" / "sources"
PREFIX = "AWSLogs/o-abc123/111122223333/CloudTrail/us-east-1/2024/01/01/"


def flaws2_files() -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((DATA / "flaws2").glob("*.json.gz"))}


def ids_of(data: bytes) -> set[str]:
    return {r["eventID"] for r in orjson.loads(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)["Records"]}


def invictus_records() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted((DATA / "invictus").glob("*.json")):
        out.extend(orjson.loads(path.read_bytes())["Records"])
    return out


# -- AWS resources --------------------------------------------------------------------------------
@dataclass
class Aws:
    endpoint: str
    sqs: Any
    s3: Any
    sns: Any
    events: Any
    queue: str = ""
    queue_arn: str = ""
    dlq: str = ""

    async def count(self, url: str, attribute: str = "ApproximateNumberOfMessages") -> int:
        response = await self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[attribute])
        return int(response["Attributes"][attribute])

    async def in_queue(self, url: str) -> int:
        return await self.count(url) + await self.count(url, "ApproximateNumberOfMessagesNotVisible")

    async def send(self, body: bytes | str) -> None:
        await self.sqs.send_message(QueueUrl=self.queue, MessageBody=body if isinstance(body, str) else body.decode())

    def source(self, metrics: Metrics | None = None, tmp_path: Path | None = None, **extra: Any) -> SqsSource:
        settings: dict[str, Any] = {"wait_time_seconds": 1, "backlog_interval": 0.5, "max_backoff": 0.3,
                                    "close_timeout": 2.0, **extra}
        config = SqsSourceConfig(queue_url=self.queue, region="us-east-1", endpoint_url=self.endpoint,
                                 s3_endpoint_url=self.endpoint, **settings)
        dead = tmp_path / "dead.jsonl" if tmp_path is not None else None
        return SqsSource(config, InvalidReporter(metrics or Metrics(), dead))


@pytest.fixture
async def aws(moto_endpoint: MotoServer) -> AsyncIterator[Aws]:
    moto_endpoint.reset()
    session = AioSession()
    kw = {"region_name": "us-east-1", "endpoint_url": moto_endpoint.endpoint}
    async with session.create_client("sqs", **kw) as sqs, session.create_client("s3", **kw) as s3, \
            session.create_client("sns", **kw) as sns, session.create_client("events", **kw) as events:
        yield Aws(moto_endpoint.endpoint, sqs, s3, sns, events)


async def make_queue(aws: Aws, visibility: int = 30, max_receive: int = 2) -> None:
    aws.dlq = (await aws.sqs.create_queue(QueueName="cloudtrail-dlq"))["QueueUrl"]
    dlq_arn = (await aws.sqs.get_queue_attributes(QueueUrl=aws.dlq, AttributeNames=["QueueArn"]))["Attributes"]
    policy = orjson.dumps({"deadLetterTargetArn": dlq_arn["QueueArn"], "maxReceiveCount": max_receive}).decode()
    aws.queue = (await aws.sqs.create_queue(QueueName="cloudtrail-events", Attributes={
        "VisibilityTimeout": str(visibility), "RedrivePolicy": policy}))["QueueUrl"]
    attributes = await aws.sqs.get_queue_attributes(QueueUrl=aws.queue, AttributeNames=["QueueArn"])
    aws.queue_arn = attributes["Attributes"]["QueueArn"]


async def make_bucket(aws: Aws, notify: bool = True) -> None:
    await aws.s3.create_bucket(Bucket="org-trail")
    if notify:
        await aws.s3.put_bucket_notification_configuration(Bucket="org-trail", NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": aws.queue_arn, "Events": ["s3:ObjectCreated:*"]}]})


async def until(predicate: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.1)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


# -- message shapes (no broker) -------------------------------------------------------------------
def test_message_shapes_are_detected_from_the_body() -> None:
    record = invictus_records()[0]
    s3_note = {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                            "s3": {"bucket": {"name": "b"}, "object": {"key": "AWSLogs/a+b%2Bc.json.gz", "size": 9}}}]}
    assert parse_message(orjson.dumps(s3_note)).objects == [ObjectRef("b", "AWSLogs/a b+c.json.gz", 9)]
    sns = {"Type": "Notification", "Message": orjson.dumps(s3_note).decode()}
    assert parse_message(orjson.dumps(sns)).objects[0].key == "AWSLogs/a b+c.json.gz"
    trail = {"Type": "Notification", "Message": '{"s3Bucket":"b","s3ObjectKey":["AWSLogs/x y.json.gz"]}'}
    assert parse_message(orjson.dumps(trail)).objects == [ObjectRef("b", "AWSLogs/x y.json.gz")]
    assert parse_message(b'{"Service":"Amazon S3","Event":"s3:TestEvent"}').ignored == "s3:TestEvent"
    bridge = {"detail-type": "AWS API Call via CloudTrail", "source": "aws.iam", "detail": record}
    assert parse_message(orjson.dumps(bridge)).records == [record]
    assert parse_message(orjson.dumps({"Records": [record]})).records == [record]
    removed = {"Records": [{**s3_note["Records"][0], "eventName": "ObjectRemoved:Delete"}]}
    assert parse_message(orjson.dumps(removed)).ignored
    for bad, reason in ((b"{oops", "invalid_json"), (b'{"hello": 1}', "unknown_shape"),
                        (orjson.dumps({"Type": "Notification", "Message": "{oops"}), "invalid_json")):
        with pytest.raises(BadMessage) as caught:
            parse_message(bad)
        assert caught.value.reason == reason


def test_config_is_strict() -> None:
    config = SqsSourceConfig.model_validate({"type": "sqs", "queue_url":
                                             "https://sqs.eu-west-1.amazonaws.com/123456789012/cloudtrail-events"})
    assert config.wait_time_seconds == 20 and config.pollers == 2
    source = SqsSource(config, InvalidReporter(Metrics()))
    assert source._region == "eu-west-1" and not source.ready
    for bad in ({"queue_url": "q", "wait_time_seconds": 30}, {"queue_url": "q", "max_messages": 11},
                {"queue_url": "q", "object_key_pattern": "("}, {"queue_url": "q", "visiblity_timeout": 5}):
        with pytest.raises(ValidationError):
            SqsSourceConfig.model_validate(bad)


# -- against moto ---------------------------------------------------------------------------------
async def test_org_trail_s3_notifications_flow_and_are_deleted_only_after_the_checkpoint(aws: Aws) -> None:
    await make_queue(aws)
    await make_bucket(aws)  # moto sends s3:TestEvent, as S3 does: acknowledged and ignored
    files = flaws2_files()
    expected: set[str] = set()
    for index, (name, data) in enumerate(files.items()):
        key = PREFIX + (name.replace("_CloudTrail_", "_CloudTrail _") if index == 0 else name)  # a space
        if index == 1:
            key = PREFIX + "a+b/" + name  # a literal '+' (URL-encoded as %2B in the notification)
        await aws.s3.put_object(Bucket="org-trail", Key=key, Body=data)
        expected |= ids_of(data)
    await aws.s3.put_object(Bucket="org-trail", Key="AWSLogs/o-abc123/111122223333/CloudTrail-Digest/us-east-1/"
                            "2024/01/01/111122223333_CloudTrail-Digest_us-east-1_x.json.gz", Body=b"{}")
    await aws.s3.put_object(Bucket="org-trail", Key="AWSLogs/o-abc123/111122223333/Config/x.json.gz", Body=b"{}")
    metrics = Metrics()
    source = aws.source(metrics, batch_size=5)
    pipeline, sink = pipeline_for(source, metrics)
    await pipeline.start()
    try:
        async with asyncio.timeout(20):
            while sink.event_ids() != expected:
                await asyncio.sleep(0.05)
        assert source.ready
        assert await aws.in_queue(aws.queue) == len(files), "CloudTrail messages wait for the checkpoint"
        async with asyncio.timeout(5):  # the backlog probe (every 0.5 s here) sees the waiting messages
            while sample(metrics, "trailguard_sqs_backlog", source="sqs") < 1:
                await asyncio.sleep(0.05)
        assert await aws.in_queue(aws.queue) == len(files), "still waiting for the checkpoint"
        await pipeline.checkpoint()
        await until(lambda: _equals(aws.in_queue(aws.queue), 0), 5)
        async with asyncio.timeout(5):  # the backlog probe (every 0.5 s here) sees the empty queue
            while sample(metrics, "trailguard_sqs_backlog", source="sqs") != 0:
                await asyncio.sleep(0.05)
    finally:
        await pipeline.stop(10)
        await source.wait_closed()
    assert sample(metrics, "trailguard_source_poison_total", source="sqs") == 0
    assert await aws.count(aws.dlq) == 0


async def _equals(awaitable: Any, value: int) -> bool:
    return await awaitable == value


async def test_eventbridge_sns_and_cloudtrail_sns_notifications(aws: Aws) -> None:
    await make_queue(aws)
    await make_bucket(aws, notify=False)
    records = invictus_records()
    await aws.events.put_rule(Name="cloudtrail", EventPattern=orjson.dumps({"source": [{"prefix": "aws."}]}).decode())
    await aws.events.put_targets(Rule="cloudtrail", Targets=[{"Id": "queue", "Arn": aws.queue_arn}])
    for record in records[:4]:
        await aws.events.put_events(Entries=[{
            "Source": "aws." + record["eventSource"].split(".")[0], "DetailType": "AWS API Call via CloudTrail",
            "Detail": orjson.dumps(record).decode()}])
    topic = (await aws.sns.create_topic(Name="cloudtrail-files"))["TopicArn"]
    await aws.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=aws.queue_arn)  # raw delivery off
    files = list(flaws2_files().values())
    await aws.s3.put_object(Bucket="org-trail", Key=PREFIX + "one.json.gz", Body=files[0])
    await aws.s3.put_object(Bucket="org-trail", Key=PREFIX + "two three.json.gz", Body=files[1])
    await aws.sns.publish(TopicArn=topic, Message=orjson.dumps(  # CloudTrail's own SNS notification
        {"s3Bucket": "org-trail", "s3ObjectKey": [PREFIX + "one.json.gz"]}).decode())
    await aws.sns.publish(TopicArn=topic, Message=orjson.dumps({"Records": [{  # S3 → SNS → SQS
        "eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {
            "bucket": {"name": "org-trail"}, "object": {"key": PREFIX + "two+three.json.gz"}}}]}).decode())
    expected = {r["eventID"] for r in records[:4]} | ids_of(files[0]) | ids_of(files[1])
    metrics = Metrics()
    source = aws.source(metrics)
    pipeline, sink = pipeline_for(source, metrics)
    await pipeline.start()
    try:
        async with asyncio.timeout(20):
            while sink.event_ids() != expected:
                await asyncio.sleep(0.05)
        await pipeline.checkpoint()
        await until(lambda: _equals(aws.in_queue(aws.queue), 0), 5)
    finally:
        await pipeline.stop(10)
        await source.wait_closed()
    assert sample(metrics, "trailguard_source_acknowledged_total", source="sqs") >= 6


async def test_poison_messages_are_not_deleted_and_reach_the_dlq(aws: Aws, tmp_path: Path) -> None:
    await make_queue(aws, visibility=1, max_receive=2)
    await make_bucket(aws, notify=False)
    data = next(iter(flaws2_files().values()))
    await aws.s3.put_object(Bucket="org-trail", Key=PREFIX + "truncated.json.gz", Body=data[: len(data) // 2])
    bomb = gzip.compress(b" " * (4 << 20))  # 4 MiB of spaces in a few KiB
    await aws.s3.put_object(Bucket="org-trail", Key=PREFIX + "bomb.json.gz", Body=bomb)

    def notification(key: str) -> bytes:
        return orjson.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                                          "s3": {"bucket": {"name": "org-trail"}, "object": {"key": key}}}]})

    await aws.send(b'{"Records": [oops')
    await aws.send(notification(PREFIX + "missing.json.gz"))
    await aws.send(notification(PREFIX + "truncated.json.gz"))
    await aws.send(notification(PREFIX + "bomb.json.gz"))
    metrics = Metrics()
    source = aws.source(metrics, tmp_path, max_decompressed_bytes=1 << 20)
    pipeline, sink = pipeline_for(source, metrics)
    await pipeline.start()
    try:
        await until(lambda: _equals(aws.count(aws.dlq), 4), 25)
        await pipeline.checkpoint()
    finally:
        await pipeline.stop(10)
        await source.wait_closed()
    assert not sink.alerts
    assert sample(metrics, "trailguard_source_poison_total", source="sqs") >= 8, "4 messages × 2 receives"
    assert sample(metrics, "trailguard_source_retried_total", source="sqs") >= 8
    for reason in ("invalid_json", "unreadable", "truncated_gzip", "too_large"):
        assert sample(metrics, "trailguard_events_invalid_total", reason=reason) >= 2, reason
    assert await aws.in_queue(aws.queue) == 0
    assert "gzip expands to more than 1048576 bytes" in (tmp_path / "dead.jsonl").read_text()


async def test_visibility_is_extended_while_a_message_is_in_flight(aws: Aws) -> None:
    await make_queue(aws, visibility=2)
    record = invictus_records()[0]
    await aws.send(orjson.dumps(record))
    source = aws.source()
    await source.start()
    batches: list[SourceBatch] = []

    async def read() -> None:
        async for batch in source.batches():
            batches.append(batch)

    reader = asyncio.create_task(read())
    try:
        async with asyncio.timeout(10):
            while not batches:
                await asyncio.sleep(0.05)
        await asyncio.sleep(5)  # 2.5 × the visibility timeout, unacknowledged
        other = await aws.sqs.receive_message(QueueUrl=aws.queue, WaitTimeSeconds=0)
        assert not other.get("Messages"), "redelivered to a second receiver while in flight"
        assert await aws.count(aws.queue, "ApproximateNumberOfMessagesNotVisible") == 1
        await source.acknowledge([batches[0].position])
        assert await aws.in_queue(aws.queue) == 0
    finally:
        await source.stop()
        await reader
        await source.wait_closed()
    assert [r["eventID"] for r in batches[0].records] == [record["eventID"]]


async def test_a_crash_before_acknowledge_loses_nothing(aws: Aws) -> None:
    await make_queue(aws, visibility=2)
    records = invictus_records()
    for record in records:
        await aws.send(orjson.dumps(record))
    first = aws.source(close_timeout=0.2)
    pipeline, sink = pipeline_for(first, Metrics())
    await pipeline.start()
    async with asyncio.timeout(20):
        while len(sink.event_ids()) < 3:
            await asyncio.sleep(0.05)
    # crash: stop the source and drop the pipeline without a checkpoint (nothing acknowledged)
    await first.stop()
    await first.wait_closed()
    for task in (*pipeline._pumps, pipeline._processor, pipeline._dispatch_task, pipeline._watch_task):
        if task is not None:
            task.cancel()
    assert await aws.in_queue(aws.queue) == len(records), "nothing deleted"
    second = aws.source()
    pipeline, sink = pipeline_for(second, Metrics())
    await pipeline.start()
    try:
        async with asyncio.timeout(20):
            while sink.event_ids() != {r["eventID"] for r in records}:
                await asyncio.sleep(0.05)
        await pipeline.checkpoint()
        await until(lambda: _equals(aws.in_queue(aws.queue), 0), 5)
    finally:
        await pipeline.stop(10)
        await second.wait_closed()


async def test_unreachable_endpoint_is_not_ready_until_it_returns(moto_endpoint: MotoServer, tmp_path: Path) -> None:
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    metrics = Metrics()
    config = SqsSourceConfig(queue_url=f"{endpoint}/123456789012/cloudtrail-events", region="us-east-1",
                             endpoint_url=endpoint, s3_endpoint_url=endpoint, wait_time_seconds=1, max_backoff=0.3,
                             close_timeout=1.0)
    source = SqsSource(config, InvalidReporter(metrics))
    await source.start()
    batches: list[SourceBatch] = []

    async def read() -> None:
        async for batch in source.batches():
            batches.append(batch)

    reader = asyncio.create_task(read())
    server: MotoServer | None = None
    try:
        async with asyncio.timeout(10):
            while sample(metrics, "trailguard_source_errors_total", source="sqs") < 2:
                await asyncio.sleep(0.05)
        assert not source.ready
        server = MotoServer(port=port, log_dir=tmp_path).start()
        session = AioSession()
        async with session.create_client("sqs", region_name="us-east-1", endpoint_url=endpoint) as sqs:
            url = (await sqs.create_queue(QueueName="cloudtrail-events"))["QueueUrl"]
            await sqs.send_message(QueueUrl=url, MessageBody=orjson.dumps(invictus_records()[0]).decode())
        async with asyncio.timeout(15):  # a poll between server start and create_queue may still fail
            while not (batches and source.ready):
                await asyncio.sleep(0.05)
        await source.acknowledge([batches[0].position])
    finally:
        await source.stop()
        await reader
        await source.wait_closed()
        if server is not None:
            server.stop()


async def test_pollers_stop_receiving_while_their_batches_wait(aws: Aws) -> None:
    await make_queue(aws)
    record = invictus_records()[0]
    for index in range(30):
        await aws.send(orjson.dumps({**record, "eventID": f"bp-{index}"}))
    source = aws.source(pollers=2)
    await source.start()
    batches = source.batches()
    try:
        first = await asyncio.wait_for(anext(batches), 10)
        await asyncio.sleep(1.5)  # the pipeline is "stuck": nothing more is taken
        # each poller holds at most one receive (10 messages); nothing else is received meanwhile
        assert await aws.count(aws.queue) >= 10
        assert await aws.count(aws.queue, "ApproximateNumberOfMessagesNotVisible") <= 20
        await source.acknowledge([first.position])
    finally:
        await source.stop()
        await batches.aclose()
        await source.wait_closed()
