"""Standby replicas (``standby_replicas``): warm copies of partitions another instance owns, so a
take-over reads only what was written since (tansu).

The placement is checked on its own; then an owner writes a partition while a second instance,
owning the neighbouring partition, tails it as a standby; the owner writes once more and "dies";
the second instance's restore starts from its warm copy, reads no more than the records written
after the copy caught up, and yields exactly the owner's last state — while a cold instance reads
the whole changelog partition.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from daemon.changelog.log import StateChangelog
from daemon.changelog.producer import changelog_topic
from daemon.changelog.standby import standby_placement
from daemon.metrics import Metrics
from tests.brokers import Tansu
from tests.test_source_kafka import create_topic

_groups = itertools.count()


def test_placement_keeps_the_next_partitions_warm_but_never_the_owned() -> None:
    counts = {"ct": 6}
    assert standby_placement({"ct/0", "ct/1"}, counts, 1) == {"ct/2"}
    assert standby_placement({"ct/5"}, counts, 2) == {"ct/0", "ct/1"}
    assert standby_placement({"ct/0", "ct/3"}, counts, 5) == {"ct/1", "ct/2", "ct/4", "ct/5"}
    assert standby_placement({"ct/0"}, {"ct": 1}, 3) == set(), "one partition: nothing to keep warm"
    assert standby_placement(set(), counts, 2) == set()


async def _end(bootstrap: str, name: str, partition: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(name, partition)
        return (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()


def _records_read(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("trailguard_state_restore_records_total") or 0.0


async def test_a_take_over_restores_from_the_warm_copy_reading_only_the_delta(kafka_broker: Tansu,
                                                                            tmp_path: Path) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = await create_topic(bootstrap, partitions=2)
    group = f"standby-{next(_groups)}"
    owned, standing = f"{topic}/1", f"{topic}/0"
    logs: list[StateChangelog] = []

    def instance(generation: int, standby: int) -> tuple[StateChangelog, Metrics]:
        metrics = Metrics()
        logs.append(StateChangelog({"bootstrap_servers": bootstrap}, group_id=group, replication_factor=1,
                                   chunk_bytes=4096, timeout=30, metrics=metrics, standby_replicas=standby,
                                   owner_generation=lambda: generation))
        return logs[-1], metrics

    def state(version: int) -> dict[str, object]:
        return {"dedupe": {"ids": [f"id-{version}-{n}" for n in range(3000)], "times": [1.0] * 3000},
                "engine": {"version": version}}

    try:
        owner, _ = instance(1, 0)
        await owner.ensure_topic(topic, 2)
        await owner.restore(owned, None)
        for version in range(1, 4):  # three generations of ~40 kB each: the changelog holds history
            await owner.write(owned, owner.encode(owned, state(version)))

        neighbour, metrics = instance(1, 1)
        await neighbour.ensure_topic(topic, 2)
        await neighbour.restore(standing, None)  # owns partition 0, so keeps partition 1 warm
        assert neighbour.standby is not None
        name = changelog_topic(group, topic)
        end = await _end(bootstrap, name, 1)
        async with asyncio.timeout(30):
            while (copy := neighbour.standby._copies.get(owned)) is None or copy.position < end:
                await asyncio.sleep(0.05)
        assert metrics.registry.get_sample_value("trailguard_state_standby_partitions") == 1

        await owner.write(owned, owner.encode(owned, state(4)))  # the owner's last write, then it dies
        delta = await _end(bootstrap, name, 1) - end
        before = _records_read(metrics)
        saved, origin, _ = await neighbour.restore(owned, None)
        assert origin == "standby" and saved == state(4)
        assert _records_read(metrics) - before <= delta, "only the records written after the copy caught up"

        cold, cold_metrics = instance(2, 0)
        saved, origin, _ = await cold.restore(owned, None)
        assert origin == "changelog" and saved == state(4)
        assert _records_read(cold_metrics) > 3 * delta, "without a standby the whole history is read"
    finally:
        for log in logs:
            await log.stop()
