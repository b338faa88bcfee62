"""The forwarder against tansu: internal topics created with the right partition counts, events
keyed by their state key, marks after the events they cover, and ``settle`` returning only once
the broker has every forwarded event (what lets the source commit input offsets)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from daemon.metrics import Metrics
from daemon.repartition.forwarder import Forwarder
from daemon.repartition.routes import plan_routes
from daemon.repartition.topics import RepartitionTopicError, ensure_internal_topics
from daemon.repartition.watermark import MARK_HEADER, decode_mark
from detectors.event import Event, format_time, parse_event_time
from detectors.registry import detector_class
from tests.brokers import Tansu
from tests.test_source_kafka import create_topic

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

T0 = parse_event_time("2024-06-01T00:00:00Z")


def _record(n: int, account: str, name: str = "ConsoleLogin") -> dict[str, Any]:
    return {"eventTime": format_time(T0 + n), "eventName": name, "eventSource": "signin.amazonaws.com",
            "eventID": f"e-{n}", "recipientAccountId": account, "sourceIPAddress": "203.0.113.9",
            "userIdentity": {"type": "IAMUser", "accountId": account, "userName": f"u{n % 3}",
                             "arn": f"arn:aws:iam::{account}:user/u{n % 3}"}}


async def _read_all(bootstrap: str, topic: str, partitions: int) -> dict[int, list[Any]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: dict[int, list[Any]] = defaultdict(list)
        while sum(len(v) for v in out.values()) < sum(ends.values()):
            for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                out[tp.partition].extend(messages)
        return out
    finally:
        await consumer.stop()


async def test_forwarded_events_are_keyed_acknowledged_and_followed_by_marks(kafka_broker: Tansu) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = await create_topic(bootstrap, partitions=4)
    logins, burst = (detector_class(n) for n in ("console_login_bruteforce", "access_denied_burst"))
    routes = plan_routes([logins(logins.Config()), burst(burst.Config())], group_id="fw", topics=[topic],
                         input_key="account", repartition=True)
    internal = routes.internal_topics()
    connection = {"bootstrap_servers": bootstrap}
    counts = await ensure_internal_topics(connection, internal, replication_factor=1, retention_ms=60_000,
                                          timeout=20)
    assert counts == {f"fw-{topic}-repartition-organisation": 1, f"fw-{topic}-repartition-principal": 4}
    assert await ensure_internal_topics(connection, internal, replication_factor=1, retention_ms=60_000,
                                        timeout=20) == counts  # idempotent

    metrics = Metrics()
    forwarder = Forwarder(connection, routes, timeout=20, metrics=metrics, max_request_size=1 << 20)
    forwarder.partitions = counts
    records = [_record(n, f"11111111111{n % 2}") for n in range(30)]
    records.append({"eventName": "not an event"})  # invalid: left to the input partition's engine
    try:
        sent = await forwarder.forward(topic, 2, 4, records, f"{topic}/2")
        assert sent == 60 and forwarder.pending == 60
        await forwarder.settle()  # returns only when the broker has all of them
        assert forwarder.pending == 0
        await forwarder.mark(topic, 2, 4, idle=True)
    finally:
        await forwarder.stop()

    organisation = await _read_all(bootstrap, f"fw-{topic}-repartition-organisation", 1)
    events = [m for m in organisation[0] if not m.headers]
    marks = [decode_mark(m.value) for m in organisation[0] if any(h == MARK_HEADER for h, _ in m.headers)]
    assert len(events) == 30 and {m.key for m in events} == {b"organisation"}
    assert marks == [(2, 4, T0 + 29, False), (2, 4, T0 + 29, True)]  # after the events they cover
    assert organisation[0][-2].headers and organisation[0][-1].headers

    principal = await _read_all(bootstrap, f"fw-{topic}-repartition-principal", 4)
    keys_by_partition = {p: {m.key for m in ms if not m.headers} for p, ms in principal.items()}
    seen = [key for keys in keys_by_partition.values() for key in keys]
    assert len(seen) == len(set(seen)) == 6  # 2 accounts × 3 users, each on one partition only
    expected = {Event(r, "t").principal.encode() for r in records[:30]}
    assert set(seen) == expected
    assert all(sum(1 for m in ms if m.headers) == 2 for ms in principal.values())  # marks reach every partition
    assert metrics.repartition_produced.labels(key="principal")._value.get() == 30


async def test_internal_topics_wait_for_their_input_topic(kafka_broker: Tansu) -> None:
    silence = detector_class("cloudtrail_silence")
    routes = plan_routes([silence(silence.Config())], group_id="fw", topics=["no-such-topic"], input_key="account",
                         repartition=True)
    with pytest.raises(RepartitionTopicError, match="no-such-topic"):
        await ensure_internal_topics({"bootstrap_servers": kafka_broker.bootstrap}, routes.internal_topics(),
                                     replication_factor=1, retention_ms=60_000, timeout=20)


async def test_events_are_sent_in_one_batch_per_partition_where_a_keyed_send_would_put_them(
        kafka_broker: Tansu) -> None:
    """The batched path keeps the internal topics' layout: each event lands on the partition
    aiokafka's own ``send(key=...)`` picks for its key, and no event goes through a per-message send."""
    bootstrap = kafka_broker.bootstrap
    topic = await create_topic(bootstrap, partitions=4)
    burst = detector_class("access_denied_burst")
    routes = plan_routes([burst(burst.Config())], group_id="fb", topics=[topic], input_key="account",
                         repartition=True)
    connection = {"bootstrap_servers": bootstrap}
    counts = await ensure_internal_topics(connection, routes.internal_topics(), replication_factor=1,
                                          retention_ms=60_000, timeout=20)
    internal = f"fb-{topic}-repartition-principal"
    forwarder = Forwarder(connection, routes, timeout=20, metrics=Metrics(), max_request_size=1 << 20)
    forwarder.partitions = counts
    producer = await forwarder._started()
    calls = {"send": 0, "send_batch": 0}
    send, send_batch = producer.send, producer.send_batch

    async def counted_send(*args: Any, **kwargs: Any) -> Any:
        calls["send"] += not kwargs.get("headers")  # marks are single messages by design
        return await send(*args, **kwargs)

    async def counted_send_batch(*args: Any, **kwargs: Any) -> Any:
        calls["send_batch"] += 1
        return await send_batch(*args, **kwargs)

    producer.send, producer.send_batch = counted_send, counted_send_batch  # type: ignore[method-assign]
    records = [_record(n, f"2222222222{n % 7:02d}", name="GetObject") for n in range(70)]
    try:
        assert await forwarder.forward(topic, 0, 4, records, f"{topic}/0") == 70
        assert calls["send"] == 0  # no event went through a per-message send ...
        assert 1 <= calls["send_batch"] <= 4 and forwarder.pending == 70  # ... one batch per partition
        await forwarder.settle()
        assert forwarder.pending == 0
    finally:
        await forwarder.stop()

    # Where aiokafka's keyed send puts the same keys, on a topic with as many partitions.
    reference = await create_topic(bootstrap, partitions=4)
    plain = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await plain.start()
    try:
        keys = {Event(r, "t").principal.encode() for r in records}
        expected = {key: (await (await plain.send(reference, b"x", key=key))).partition for key in keys}
    finally:
        await plain.stop()
    landed = await _read_all(bootstrap, internal, 4)
    placed = {m.key: partition for partition, ms in landed.items() for m in ms if not m.headers}
    assert len(placed) == 21 and placed == expected
    assert sum(1 for ms in landed.values() for m in ms if not m.headers) == 70
