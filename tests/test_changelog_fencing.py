"""A stalled old owner cannot roll partition state back (real daemons, tansu).

Two ``trailguard run`` instances share the six-account trail of :mod:`tests.test_kafka_scale_out`.
One is frozen with SIGSTOP mid-stream, past the session timeout: the group gives its partitions to
the other, which restores them from the changelog and claims them.  Resumed with SIGCONT, the old
owner still holds the state it had and tries to checkpoint it (its timer, then its rebalance
listener): the changelog write is refused (``trailguard_changelog_fenced_total``), so the changelog
holds no manifest of an older generation after a claim, and the alerts are still those of a
single replay (repeats only as exact copies: the frozen owner's unacknowledged batches are read
again by the new owner, as after SIGKILL).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from daemon.changelog.codec import fenced_manifest, owner_generation
from daemon.changelog.producer import changelog_topic
from tests.brokers import Tansu
from tests.conftest import wait_for
from tests.test_kafka_scale_out import Instance, _delivered, expected, owned, produce, start_in_turn
from tests.test_source_kafka import create_topic

__all__ = ["expected"]  # the module fixture (replay of the trail), shared with the scale-out tests

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


async def _changelog(bootstrap: str, name: str, partitions: int) -> dict[int, list[tuple[bytes, bytes | None]]]:
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await reader.start()
    out: dict[int, list[tuple[bytes, bytes | None]]] = defaultdict(list)
    try:
        tps = [TopicPartition(name, p) for p in range(partitions)]
        reader.assign(tps)
        ends = await reader.end_offsets(tps)
        async with asyncio.timeout(60):
            for tp in tps:
                while await reader.position(tp) < ends[tp]:
                    for message in (await reader.getmany(tp, timeout_ms=500)).get(tp, []):
                        out[tp.partition].append((message.key, message.value))
    finally:
        await reader.stop()
    return out


async def test_a_frozen_owner_resumed_after_a_take_over_is_fenced(kafka_broker: Tansu, tmp_path: Path,
                                                                   expected: Any) -> None:
    records, want = expected
    bootstrap = kafka_broker.bootstrap
    topic = await create_topic(bootstrap, partitions=6)
    group = "fencing-0"
    a, b = (Instance(tmp_path, name, bootstrap, topic, group) for name in ("a", "b"))
    for instance in (a, b):  # input partitions only: the hand-over of their state is what is fenced
        instance.configure({"repartition": "off"})
    try:
        start_in_turn(a, b)
        await produce(bootstrap, topic, records)
        wait_for(lambda: a.metric("trailguard_events_processed_total") >= 300, 60, what="a under way")
        assert a.process is not None
        taken_before = owned(b)
        os.kill(a.process.proc.pid, signal.SIGSTOP)  # frozen mid-stream, holding dirty partition state
        try:
            wait_for(lambda: owned(b) > taken_before, 90, interval=0.3, what="b takes a's partitions over")
            time.sleep(2.0)  # b processes (and writes) the partitions it took
        finally:
            os.kill(a.process.proc.pid, signal.SIGCONT)
        wait_for(lambda: a.metric("trailguard_changelog_fenced_total") >= 1, 60, interval=0.3,
                 what="the resumed owner's stale write refused")
        wait_for(lambda: set(_delivered([a, b])) >= want, 120, interval=0.5, what="every expected alert")
        time.sleep(1.0)
    finally:
        for instance in (a, b):
            if instance.process is not None:
                assert instance.stop() == 0
    delivered = _delivered([a, b])
    assert set(delivered) == want, f"missing {sorted(want - set(delivered))}, extra {sorted(set(delivered) - want)}"
    for alert_id, copies in delivered.items():
        shapes = {tuple(sorted((k, repr(v)) for k, v in alert.items() if k != "detected_at")) for alert in copies}
        assert len(shapes) == 1, f"{alert_id} delivered {len(copies)} times with different content"
    log = await _changelog(bootstrap, changelog_topic(group, topic), 6)
    for partition, entries in log.items():
        claimed = -1
        for key, value in entries:
            if key.endswith(b"/claim"):
                claimed = max(claimed, owner_generation(value))
            elif key.endswith(b"/manifest"):
                assert not fenced_manifest(value, claimed), f"partition {partition}: a stale owner's state was written"
