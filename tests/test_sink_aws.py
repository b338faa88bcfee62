"""SNS and SQS sinks against moto_server: message body, filterable attributes, errors classified."""

from __future__ import annotations

import socket

import orjson
import pytest
from aiobotocore.session import get_session
from pydantic import ValidationError

from daemon.delivery.sinks.errors import PermanentError, TransientError
from daemon.delivery.sinks.sns import SnsSink, SnsSinkConfig
from daemon.delivery.sinks.sqs import SqsSink, SqsSinkConfig
from detectors.alert import Alert
from tests.brokers import MotoServer


def make_alert(n: int, severity: str = "high") -> Alert:
    return Alert(detector="root_activity", title=f"title {n}", severity=severity, time=1_700_000_000.0 + n,
                 summary="s", event_ids=[f"e{n}"], entity="root")


@pytest.fixture
async def aws(moto_endpoint: MotoServer):
    moto_endpoint.reset()
    async with get_session().create_client("sqs", region_name="us-east-1",
                                           endpoint_url=moto_endpoint.endpoint) as sqs, \
            get_session().create_client("sns", region_name="us-east-1", endpoint_url=moto_endpoint.endpoint) as sns:
        yield sqs, sns


async def receive_all(sqs, queue_url: str, count: int) -> list[dict]:
    out: list[dict] = []
    for _ in range(20):
        response = await sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                             MessageAttributeNames=["All"])
        out.extend(response.get("Messages", []))
        if len(out) >= count:
            break
    return out


async def test_sqs_sink_sends_alert_json_with_attributes(aws, moto_endpoint: MotoServer) -> None:
    sqs, _ = aws
    queue_url = (await sqs.create_queue(QueueName="alerts"))["QueueUrl"]
    sink = SqsSink(SqsSinkConfig(type="sqs", queue_url=queue_url, endpoint_url=moto_endpoint.endpoint))
    await sink.start()
    alerts = [make_alert(i, "critical" if i == 3 else "medium") for i in range(12)]  # two batch calls
    await sink.send(alerts)
    await sink.stop()
    messages = await receive_all(sqs, queue_url, 12)
    bodies = {orjson.loads(m["Body"])["id"]: m for m in messages}
    assert set(bodies) == {a.id for a in alerts}
    one = bodies[alerts[3].id]
    assert orjson.loads(one["Body"]) == alerts[3].to_dict()
    assert one["MessageAttributes"]["severity"] == {"DataType": "String", "StringValue": "critical"}
    assert one["MessageAttributes"]["detector"] == {"DataType": "String", "StringValue": "root_activity"}


async def test_sns_sink_publishes_to_subscribed_queue(aws, moto_endpoint: MotoServer) -> None:
    sqs, sns = aws
    topic_arn = (await sns.create_topic(Name="alerts"))["TopicArn"]
    queue_url = (await sqs.create_queue(QueueName="from-sns"))["QueueUrl"]
    attributes = await sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    queue_arn = attributes["Attributes"]["QueueArn"]
    await sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    sink = SnsSink(SnsSinkConfig(type="sns", topic_arn=topic_arn, endpoint_url=moto_endpoint.endpoint))
    await sink.start()
    alerts = [make_alert(i) for i in range(3)]
    await sink.send(alerts)
    await sink.stop()
    messages = await receive_all(sqs, queue_url, 3)
    envelopes = [orjson.loads(m["Body"]) for m in messages]
    assert {orjson.loads(e["Message"])["id"] for e in envelopes} == {a.id for a in alerts}
    first = envelopes[0]
    assert first["TopicArn"] == topic_arn
    assert first["MessageAttributes"]["severity"] == {"Type": "String", "Value": "high"}
    assert first["MessageAttributes"]["detector"] == {"Type": "String", "Value": "root_activity"}
    assert first["Subject"].startswith("[HIGH] title")


async def test_missing_queue_is_permanent(aws, moto_endpoint: MotoServer) -> None:
    url = f"{moto_endpoint.endpoint}/123456789012/does-not-exist"
    sink = SqsSink(SqsSinkConfig(type="sqs", queue_url=url, endpoint_url=moto_endpoint.endpoint, region="us-east-1"))
    await sink.start()
    with pytest.raises(PermanentError, match="HTTP 400"):
        await sink.send([make_alert(1)])
    await sink.stop()


async def test_unreachable_endpoint_is_transient(moto_endpoint: MotoServer) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sink = SnsSink(SnsSinkConfig(type="sns", topic_arn="arn:aws:sns:us-east-1:123456789012:alerts",
                                 endpoint_url=f"http://127.0.0.1:{port}", timeout=1))
    await sink.start()
    with pytest.raises(TransientError, match="EndpointConnectionError"):
        await sink.send([make_alert(1)])
    await sink.stop()


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="ARN"):
        SnsSinkConfig(type="sns", topic_arn="alerts")
    with pytest.raises(ValidationError, match="queue URL"):
        SqsSinkConfig(type="sqs", queue_url="alerts")
    regional = SqsSink(SqsSinkConfig(type="sqs", queue_url="https://sqs.eu-west-1.amazonaws.com/1/q"))
    assert regional._region() == "eu-west-1"
    assert SnsSink(SnsSinkConfig(type="sns", topic_arn="arn:aws:sns:ap-south-1:1:t"))._region() == "ap-south-1"
