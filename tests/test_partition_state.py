"""Partition-local state: each Kafka partition has its own detector state, checkpointed in its own file,
saved and dropped when the partition is revoked, and restored by whichever replica is assigned it next.
State exists only for owned partitions: a batch of a partition that is not (or no longer) owned is
dropped unprocessed — no "zombie" state is created by batches queued before a revocation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from daemon.config import PipelineConfig
from daemon.deadletter import InvalidReporter
from daemon.delivery.dispatch import Dispatcher
from daemon.metrics import Metrics
from daemon.pipeline import Pipeline
from daemon.sources.base import Source, SourceBatch
from daemon.state import StateStore
from detectors.base import Detector
from detectors.engine import DetectionEngine
from detectors.event import Event
from tests.test_pipeline import Boom, RecordingSink, record


class Counting(Detector):
    """Counts events per instance; its state is the count (so partition separation is visible)."""

    name = "counting"

    def __init__(self, *_: Any) -> None:
        super().__init__(self.Config(), None)
        self.count = 0

    def on_event(self, event: Event) -> None:
        self.count += 1

    def snapshot(self) -> Any:
        return {"count": self.count}

    def restore(self, state: Any) -> None:
        self.count = state["count"]

    def state_keys(self) -> int:
        return 1


class PartitionedSource(Source):
    """Yields batches tagged with partition keys and lets the test trigger rebalances."""

    kind = "partitioned"

    def __init__(self, batches: list[tuple[str, list[dict[str, Any]]]], invalid: InvalidReporter) -> None:
        super().__init__("partitioned", invalid)
        self._batches = batches
        self.callbacks: list[Any] = []
        self.acked: list[Any] = []

    async def acknowledge(self, positions: list[Any]) -> None:
        self.acked.extend(positions)

    @property
    def finite(self) -> bool:
        return False

    def on_partitions(self, callback: Any) -> None:
        self.callbacks.append(callback)

    async def rebalance(self, assigned: set[str], revoked: set[str]) -> None:
        for callback in self.callbacks:
            await callback(assigned, revoked)

    async def batches(self) -> AsyncIterator[SourceBatch]:
        for index, (partition, records) in enumerate(self._batches):
            yield SourceBatch("partitioned", records, partition, position=index, partition=partition)
        while not self._stopping:
            await asyncio.sleep(0.01)


def build(tmp_path: Path, batches: list[tuple[str, list[dict[str, Any]]]],
          sink: RecordingSink | None = None) -> tuple[Pipeline, PartitionedSource]:
    metrics = Metrics()
    invalid = InvalidReporter(metrics)
    source = PartitionedSource(batches, invalid)
    store = StateStore(tmp_path / "state")
    store.prepare()
    pipeline = Pipeline(sources=[source], engine=DetectionEngine([Counting(), Boom()], allowed_lateness=0),
                        dispatcher=Dispatcher([sink or RecordingSink([])], metrics), invalid=invalid,
                        metrics=metrics, config=PipelineConfig(), store=store, checkpoint_interval=0)
    return pipeline, source


def counts(pipeline: Pipeline) -> dict[str, int]:
    return {key: state.part("engine").detectors[0].count for key, state in pipeline.partitions.items()}


async def wait_processed(pipeline: Pipeline, n: int) -> None:
    async with asyncio.timeout(10):
        while pipeline.counts["processed"] < n:
            await asyncio.sleep(0.01)


async def test_partitions_keep_separate_state_and_files(tmp_path: Path) -> None:
    batches = [("ct/0", [record("A", "2024-01-01T00:00:00Z", "a1"), record("A", "2024-01-01T00:00:01Z", "a2")]),
               ("ct/1", [record("B", "2024-01-01T00:00:00Z", "b1")]),
               ("ct/0", [record("A", "2024-01-01T00:00:02Z", "a3")])]
    pipeline, source = build(tmp_path, batches)
    await source.rebalance({"ct/0", "ct/1"}, set())
    await pipeline.start()
    await wait_processed(pipeline, 4)
    assert counts(pipeline) == {"ct/0": 3, "ct/1": 1}
    assert pipeline.engine.detectors[0].count == 0, "the default partition saw nothing"
    await pipeline.stop(5)
    files = sorted(p.parent.name for p in (tmp_path / "state" / "partitions").glob("*/checkpoint.msgpack"))
    assert files == ["ct_0", "ct_1"]


async def test_revoked_partition_state_moves_to_the_next_owner(tmp_path: Path) -> None:
    first = [("ct/0", [record("A", "2024-01-01T00:00:00Z", "a1"), record("A", "2024-01-01T00:00:01Z", "a2")]),
             ("ct/1", [record("B", "2024-01-01T00:00:00Z", "b1")])]
    pipeline, source = build(tmp_path, first)
    await source.rebalance({"ct/0", "ct/1"}, set())
    await pipeline.start()
    await wait_processed(pipeline, 3)
    await source.rebalance(set(), {"ct/0"})  # this replica loses partition 0
    assert counts(pipeline) == {"ct/1": 1}
    await pipeline.stop(5)

    # another replica (same shared state directory) is assigned partition 0 and continues its state
    again = [("ct/0", [record("A", "2024-01-01T00:00:05Z", "a3"), record("A", "2024-01-01T00:00:01Z", "a2")])]
    other, other_source = build(tmp_path, again)
    await other_source.rebalance({"ct/0"}, set())
    await other.start()
    await wait_processed(other, 1)
    assert counts(other)["ct/0"] == 3, "restored count 2 + one new event; the redelivered a2 is a duplicate"
    assert other.metrics.registry.get_sample_value("trailguard_events_duplicate_total") == 1
    await other.stop(5)


async def test_batches_of_a_partition_not_owned_are_dropped_not_processed(tmp_path: Path) -> None:
    batches = [("ct/0", [record("A", "2024-01-01T00:00:00Z", "a1")]),
               ("ct/1", [record("B", "2024-01-01T00:00:00Z", "b1")]),  # queued, but ct/1 was revoked
               ("ct/0", [record("A", "2024-01-01T00:00:02Z", "a2")])]
    pipeline, source = build(tmp_path, batches)
    await source.rebalance({"ct/0"}, set())
    await pipeline.start()
    await wait_processed(pipeline, 2)
    async with asyncio.timeout(10):
        while pipeline.metrics.registry.get_sample_value("trailguard_partition_batches_dropped_total") != 1:
            await asyncio.sleep(0.01)
    assert counts(pipeline) == {"ct/0": 2}, "no engine was created for ct/1"
    await pipeline.checkpoint()
    assert sorted(source.acked) == [0, 2], "the dropped batch is never acknowledged"
    await pipeline.stop(5)
    assert not (tmp_path / "state" / "partitions" / "ct_1").exists()


async def test_readiness_waits_for_restores_and_an_assignment(tmp_path: Path) -> None:
    pipeline, source = build(tmp_path, [])
    source.partitioned = True  # type: ignore[attr-defined]
    owned: set[tuple[str, int]] = set()
    source.assigned_partitions = lambda: frozenset(owned)  # type: ignore[method-assign]
    await pipeline.start()
    assert pipeline.not_ready_reason() == "source partitioned owns no partition (waiting for an assignment)"
    pipeline.restoring.add("ct/0")
    assert pipeline.not_ready_reason() == "restoring state of 1 partition(s)"
    pipeline.restoring.clear()
    owned.add(("ct", 0))  # assigned by the broker, the pipeline not told yet
    assert pipeline.not_ready_reason() == "restoring state of 1 partition(s)"
    await source.rebalance({"ct/0"}, set())
    assert pipeline.not_ready_reason() is None
    await pipeline.stop(5)


async def test_incident_state_follows_its_partition(tmp_path: Path) -> None:
    """An incident opened on one owner is continued, not re-opened, by the next owner of its
    partition, and closed there by that partition's own watermark with one update of the totals."""
    first = [("ct/0", [record("Boom", "2024-01-01T00:00:00Z", "b1"), record("Boom", "2024-01-01T00:10:00Z", "b2")]),
             ("ct/1", [record("Boom", "2024-01-01T00:00:00Z", "c1", recipientAccountId="444455556666")])]
    sink = RecordingSink([])
    pipeline, source = build(tmp_path, first, sink)
    await source.rebalance({"ct/0", "ct/1"}, set())
    await pipeline.start()
    await wait_processed(pipeline, 3)
    await source.rebalance(set(), {"ct/0"})
    assert [(a.kind, a.event_ids) for a in sink.alerts if a.account_id == "111122223333"] == [("opened", ["b1"])]
    opened = sink.alerts[0].id
    assert len(pipeline.partitions["ct/1"].part("incidents")) == 1, "ct/1's incident stays with ct/1"
    await pipeline.stop(5)

    later = [("ct/0", [record("Boom", "2024-01-01T00:20:00Z", "b3"), record("Boom", "2024-01-01T02:00:00Z", "b4")])]
    other_sink = RecordingSink([])
    other, other_source = build(tmp_path, later, other_sink)
    await other_source.rebalance({"ct/0"}, set())
    assert len(other.partitions["ct/0"].part("incidents")) == 1, "the open incident was restored"
    await other.start()
    await wait_processed(other, 2)
    async with asyncio.timeout(10):
        while len(other_sink.alerts) < 2:
            await asyncio.sleep(0.01)
    update, reopened = other_sink.alerts[:2]
    assert (update.kind, update.incident["id"], update.incident["count"]) == ("updated", opened, 3)
    assert update.incident["event_ids"] == ["b1", "b2", "b3"], "no match lost across the hand-over"
    assert (reopened.kind, reopened.event_ids) == ("opened", ["b4"]), "b4 is past the window: a new incident"
    await other.stop(5)
    assert len(other_sink.alerts) == 2, "a stop with state kept closes nothing early"


async def test_each_changed_partition_is_snapshotted_in_a_pause_of_its_own(tmp_path: Path) -> None:
    """A checkpoint pauses detection once for the unpartitioned state and once per changed partition
    (so no pause grows with the partitions owned): each partition's snapshot is taken after the
    pauses before it were over, and the checkpoint still covers all of them."""
    batches = [("ct/0", [record("A", "2024-01-01T00:00:00Z", "a1")]),
               ("ct/1", [record("B", "2024-01-01T00:00:00Z", "b1")]),
               ("ct/2", [record("C", "2024-01-01T00:00:00Z", "c1")])]
    pipeline, source = build(tmp_path, batches)
    await source.rebalance({"ct/0", "ct/1", "ct/2"}, set())
    await pipeline.start()
    await wait_processed(pipeline, 3)
    pauses_seen: dict[str, float] = {}

    def pauses() -> float:
        return pipeline.metrics.registry.get_sample_value("trailguard_checkpoint_pause_seconds_count") or 0.0

    def watched(key: str, counting: Counting) -> Any:
        def snapshot() -> Any:
            pauses_seen[key] = pauses()  # how many pauses were over when this one began
            return {"count": counting.count}
        return snapshot

    for key, state in pipeline.partitions.items():
        counting = state.part("engine").detectors[0]
        counting.snapshot = watched(key, counting)  # type: ignore[method-assign]
    before = pauses()
    await pipeline.checkpoint()
    assert pauses() - before == 4, "one pause for the sources' state, one per changed partition"
    assert sorted(pauses_seen.values()) == [before + 1, before + 2, before + 3]
    assert len(source.acked) == 3, "every batch the checkpoint covers is acknowledged"
    await pipeline.stop(5)
