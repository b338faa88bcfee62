"""Standby replicas (``standby_replicas``): warm copies of partitions another instance owns, so a
take-over reads only what was written since (tansu).

The placement is checked on its own; then an owner writes a partition while a second instance,
owning the neighbouring partition, tails it as a standby; the owner writes once more and "dies";
the second instance's restore starts from its warm copy, reads no more than the records written
after the copy caught up, and yields exactly the owner's last state — while a cold instance reads
the whole changelog partition.  Last, with real daemons: an owner killed with SIGKILL is taken over
from the survivor's warm copies.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from daemon.changelog.log import StateChangelog
from daemon.changelog.producer import changelog_topic
from daemon.changelog.standby import standby_placement
from daemon.metrics import Metrics
from tests.brokers import Tansu
from tests.conftest import wait_for
from tests.test_kafka_scale_out import expected, halves, owned, produce, setup, start_in_turn, union, wait_all
from tests.test_source_kafka import create_topic

__all__ = ["expected"]  # the module fixture (replay of the trail), shared with the scale-out tests

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

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
        await neighbour.settle({standing})
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


async def test_killed_owner_is_taken_over_from_warm_copies(kafka_broker: Tansu, tmp_path: Path,
                                                          expected: Any) -> None:
    """Real daemons: with ``standby_replicas: 5`` (every partition warm on both of two instances) a
    SIGKILLed owner's partitions are restored from the survivor's standby copies, not the changelog,
    and the alerts are still those of a single replay."""
    records, want = expected
    topic, (a, b) = await setup(kafka_broker.bootstrap, tmp_path, 2)
    for instance in (a, b):
        # input partitions only: standby copies are placed within a topic, and the assignor may give
        # one instance a whole internal topic (docs/production.md, standby replicas)
        instance.configure({"standby_replicas": 5, "repartition": "off"})
    first, second = halves(records)
    try:
        start_in_turn(a, b)
        await produce(kafka_broker.bootstrap, topic, first)
        wait_for(lambda: a.metric("trailguard_events_processed_total") + b.metric("trailguard_events_processed_total")
                 >= len(first) * 0.9, 60, what="the first half processed")
        wait_for(lambda: b.metric("trailguard_state_standby_partitions") >= 1, 30, what="b keeps a's partitions warm")
        cold_before = owned(b)
        time.sleep(1.0)  # the standby copies catch up with a's last checkpoints
        assert a.stop(signal.SIGKILL) == -signal.SIGKILL
        await produce(kafka_broker.bootstrap, topic, second)
        wait_for(lambda: b.metric("trailguard_state_restores_total", {"origin": "standby"}) >= 1, 90,
                 what="a's partitions restored from b's warm copies")
        wait_all([b], want - set(a.alerts()))
        time.sleep(1.0)
        cold_after = owned(b)
    finally:
        for instance in (a, b):
            if instance.process is not None:
                assert instance.stop() == 0
    assert cold_after == cold_before, "no take-over read the whole changelog"
    got = union([a, b])
    assert set(got) == want, f"missing {sorted(want - set(got))}, extra {sorted(set(got) - want)}"
