"""Partition state follows its partition through the changelog topic (tansu), with no shared disk.

The codec tests check the record layout on its own (chunks, generations, checksums, a crash between
chunks).  The broker tests run real pipelines with separate state directories: what one instance
checkpointed is restored by another that never saw its files, the local file is used only when it
matches the changelog's end offset, and a partition's state larger than a message is chunked and
its old chunks tombstoned.  A stalled previous owner (paused past its session timeout, then
resumed) cannot roll a partition back: its write is refused, and one that slips past the check is
ignored on restore.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from daemon.changelog import log as changelog_log
from daemon.changelog.codec import (
    ChangelogCorrupt,
    assemble,
    chunked,
    claim_record,
    encode,
    fenced_manifest,
    manifest_key,
    pack,
)
from daemon.changelog.log import ChangelogFenced, StateChangelog
from daemon.changelog.producer import changelog_topic
from daemon.config import PipelineConfig
from daemon.deadletter import InvalidReporter
from daemon.delivery.dispatch import Dispatcher
from daemon.metrics import Metrics
from daemon.pipeline import Pipeline
from daemon.state import StateStore
from detectors.engine import DetectionEngine
from tests.brokers import Tansu
from tests.pipeline_harness import LATENESS, Recording
from tests.test_partition_state import Counting
from tests.test_pipeline import record
from tests.test_source_kafka import create_topic, kafka_source, produce

_groups = itertools.count()


# -- codec ----------------------------------------------------------------------------------------
def latest(records: list[tuple[bytes, bytes | None]]) -> dict[bytes, bytes | None]:
    out: dict[bytes, bytes | None] = {}
    for key, value in records:
        out[key] = value
    return out


def test_state_round_trips_through_chunks_under_the_message_limit() -> None:
    parts = {"engine": {"ids": [f"id-{n}" for n in range(2000)]}, "dedupe": {"ids": ["a"], "times": [1.0]}}
    written = encode("ct/3", 7, parts, chunk_bytes=1024)
    assert len(written.records) > 10 and all(len(v) <= 1024 for _, v in written.records[:-1])
    assert written.records[-1][0] == manifest_key("ct/3"), "the manifest is written last"
    restored = assemble("ct/3", latest(written.records))
    assert restored is not None and restored.parts == parts and restored.generation == 7
    assert restored.live_keys == set(written.chunk_keys)
    assert assemble("ct/4", latest(written.records)) is None, "another partition's records are not ours"


def test_a_packed_body_cut_later_holds_the_state_at_packing_time() -> None:
    live = {"engine": {"ids": [f"id-{n}" for n in range(2000)]}, "dedupe": {"ids": ["a"], "times": [1.0]}}
    packed = pack(7, live, owner=3)                 # what the checkpoint does while detection waits
    live["engine"]["ids"].append("processed after the pause")
    written = chunked("ct/3", packed, chunk_bytes=1024)
    reference = encode("ct/3", 7, {**live, "engine": {"ids": live["engine"]["ids"][:-1]}}, 1024, owner=3)
    assert written.records[:-1] == reference.records[:-1], "same chunks as encoding in one step"
    restored = assemble("ct/3", latest(written.records))
    assert restored is not None and restored.generation == 7 and len(restored.parts["engine"]["ids"]) == 2000


def test_restores_and_standby_copies_read_with_one_consumer_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.changelog import reader

    built: list[dict[str, Any]] = []
    # the reader imports aiokafka when it builds one, so the class is replaced where it is looked up
    monkeypatch.setattr("aiokafka.AIOKafkaConsumer", lambda **options: built.append(options))
    reader.changelog_reader({"bootstrap_servers": "kafka:9092"}, fetch_max_wait_ms=20)
    reader.changelog_reader({"bootstrap_servers": "kafka:9092"}, fetch_max_wait_ms=100, group_id="a-group")
    assert built[0] == {"bootstrap_servers": "kafka:9092", "group_id": None, "enable_auto_commit": False,
                        "auto_offset_reset": "earliest", "max_partition_fetch_bytes": 16 << 20,
                        "fetch_max_wait_ms": 20}
    assert built[1]["fetch_max_wait_ms"] == 100 and built[1]["group_id"] == "a-group", "overrides win"
    source = (Path(__file__).parents[1] / "daemon" / "changelog")
    for module in ("recovery.py", "standby.py"):
        text = (source / module).read_text()
        assert "changelog_reader(" in text and "AIOKafkaConsumer(" not in text, module


def test_a_crash_between_chunks_keeps_the_previous_generation() -> None:
    old = encode("ct/0", 1, {"engine": "old"}, chunk_bytes=1024)
    new = encode("ct/0", 2, {"engine": "new" * 2000}, chunk_bytes=1024)
    torn = [*old.records, *new.records[:3]]  # chunks of generation 2 written, its manifest not
    restored = assemble("ct/0", latest(torn))
    assert restored is not None and restored.parts == {"engine": "old"} and restored.generation == 1


def test_missing_chunks_and_bad_checksums_are_refused_with_the_partition_named() -> None:
    written = encode("ct/0", 1, {"engine": "x" * 5000}, chunk_bytes=1024)
    records = latest(written.records)
    missing = {k: v for k, v in records.items() if k != written.records[1][0]}
    with pytest.raises(ChangelogCorrupt, match=r"ct/0: generation 1 misses chunk 1"):
        assemble("ct/0", missing)
    flipped = dict(records)
    flipped[written.records[0][0]] = b"y" * len(written.records[0][1])
    with pytest.raises(ChangelogCorrupt, match="fails its checksum"):
        assemble("ct/0", flipped)
    tombstoned = dict(records)
    tombstoned[written.records[0][0]] = None
    with pytest.raises(ChangelogCorrupt, match="misses chunk 0"):
        assemble("ct/0", tombstoned)


def test_a_manifest_older_than_the_claim_before_it_is_fenced() -> None:
    manifest = encode("ct/0", 5, {"engine": "x"}, chunk_bytes=1024, owner=3).records[-1][1]
    assert fenced_manifest(manifest, claimed=4) and not fenced_manifest(manifest, claimed=3)
    unknown = encode("ct/0", 5, {"engine": "x"}, chunk_bytes=1024).records[-1][1]
    assert not fenced_manifest(unknown, claimed=4), "a writer that did not know its generation is not fenced"
    key, _ = claim_record("ct/0", 4)
    assert assemble("ct/0", {key: claim_record("ct/0", 4)[1]}) is None, "a claim alone is no state"


# -- against the broker ---------------------------------------------------------------------------
@pytest.fixture
async def bootstrap(kafka_broker: Tansu) -> AsyncIterator[str]:
    yield kafka_broker.bootstrap


class Big(Counting):
    """Counting, with a state big enough to need several changelog chunks."""

    name = "counting"

    def snapshot(self) -> Any:
        return {"count": self.count, "padding": "p" * 6000}


def instance(bootstrap: str, topic: str, group: str, state: Path, **extra: Any) -> tuple[Pipeline, Metrics]:
    metrics = Metrics()
    invalid = InvalidReporter(metrics)
    source = kafka_source(bootstrap, topic, group, metrics, invalid, changelog_replication_factor=1, **extra)
    store = StateStore(state)
    store.prepare()
    detector = Big() if extra.get("changelog_chunk_bytes") else Counting()
    pipeline = Pipeline(sources=[source], engine=DetectionEngine([detector], allowed_lateness=LATENESS),
                        dispatcher=Dispatcher([Recording()], metrics), invalid=invalid, metrics=metrics,
                        config=PipelineConfig(allowed_lateness=LATENESS), store=store, checkpoint_interval=0)
    return pipeline, metrics


def counts(pipeline: Pipeline) -> dict[str, int]:
    return {key: state.part("engine").detectors[0].count for key, state in pipeline.partitions.items()}


async def run_until(pipeline: Pipeline, processed: int, duplicates: int = 0) -> None:
    await pipeline.start()
    async with asyncio.timeout(60):
        while (pipeline.counts["processed"] < processed or pipeline.counts["duplicate"] < duplicates
               or pipeline.not_ready_reason()):
            await asyncio.sleep(0.05)


def restores(metrics: Metrics, origin: str) -> float:
    return metrics.registry.get_sample_value("trailguard_state_restores_total", {"origin": origin}) or 0.0


def events(tag: str, n: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    return [(b"acct", orjson.dumps(record(f"{tag}", f"2024-01-01T00:00:{start + i:02d}Z", f"{tag}-{start + i}")))
            for i in range(n)]


async def test_another_instance_restores_from_the_changelog_without_the_files(bootstrap: str, tmp_path: Path) -> None:
    topic = await create_topic(bootstrap, partitions=2)
    group = f"changelog-{next(_groups)}"
    await produce(bootstrap, topic, events("a", 5), partition=0)
    await produce(bootstrap, topic, events("b", 3), partition=1)

    first, _ = instance(bootstrap, topic, group, tmp_path / "first")
    await run_until(first, 8)
    await first.stop(10)
    await first.sources[0].wait_closed()

    # A second instance with an empty state directory, and a redelivery of a-0 plus new events.
    await produce(bootstrap, topic, [*events("a", 1), *events("a", 2, start=5)], partition=0)
    second, metrics = instance(bootstrap, topic, group, tmp_path / "second")
    await run_until(second, 2, duplicates=1)
    assert restores(metrics, "changelog") == 2 and restores(metrics, "cache") == 0
    assert counts(second) == {f"{topic}/0": 7, f"{topic}/1": 3}, "restored counts 5 and 3, plus two new events"
    assert metrics.registry.get_sample_value("trailguard_events_duplicate_total") == 1, "dedupe state came along"
    await second.stop(10)
    await second.sources[0].wait_closed()

    # The first instance's file of partition 0 is stale now (the second wrote it since): the
    # changelog wins; partition 1 was not written again, so its file still matches and is used.
    again, metrics = instance(bootstrap, topic, group, tmp_path / "first")
    await run_until(again, 0)
    assert counts(again) == {f"{topic}/0": 7, f"{topic}/1": 3}
    assert restores(metrics, "changelog") == 1 and restores(metrics, "cache") == 1
    await again.stop(10)
    await again.sources[0].wait_closed()

    # Restarted in place with nothing written since: the verified local file is used.
    cached, metrics = instance(bootstrap, topic, group, tmp_path / "first")
    await run_until(cached, 0)
    assert counts(cached) == {f"{topic}/0": 7, f"{topic}/1": 3}
    assert restores(metrics, "cache") == 2
    await cached.stop(10)
    await cached.sources[0].wait_closed()


async def test_large_state_is_chunked_and_old_chunks_are_tombstoned(bootstrap: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cut_in: list[threading.Thread] = []
    real_chunked = changelog_log.chunked
    monkeypatch.setattr(changelog_log, "chunked",
                        lambda *args: cut_in.append(threading.current_thread()) or real_chunked(*args))
    topic = await create_topic(bootstrap, partitions=1)
    group = f"changelog-{next(_groups)}"
    await produce(bootstrap, topic, events("a", 2), partition=0)
    pipeline, _ = instance(bootstrap, topic, group, tmp_path / "one", changelog_chunk_bytes=1024)
    await run_until(pipeline, 2)
    await pipeline.checkpoint()
    await produce(bootstrap, topic, events("a", 1, start=2), partition=0)
    async with asyncio.timeout(30):
        while pipeline.counts["processed"] < 3:
            await asyncio.sleep(0.05)
    await pipeline.stop(10)
    await pipeline.sources[0].wait_closed()

    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await reader.start()
    try:
        tp = TopicPartition(changelog_topic(group, topic), 0)
        reader.assign([tp])
        end = (await reader.end_offsets([tp]))[tp]
        messages = []
        async with asyncio.timeout(30):
            while len(messages) < end:
                messages += (await reader.getmany(tp, timeout_ms=500)).get(tp, [])
    finally:
        await reader.stop()
    values = latest([(m.key, m.value) for m in messages])
    generation_1 = [k for k in values if k.startswith(f"{topic}/0/1/".encode())]
    assert len(generation_1) >= 6, "6 kB of state in 1 kB chunks"
    assert all(values[k] is None for k in generation_1), "generation 1 tombstoned after generation 2"
    restored = assemble(f"{topic}/0", values)
    assert restored is not None and restored.generation == 2
    assert restored.parts["engine"]["detectors"]["counting"]["count"] == 3
    assert cut_in and threading.main_thread() not in cut_in, "chunks are cut and hashed off the event loop"


def test_the_restore_bench_scenario_runs_and_measures_a_real_restore() -> None:
    from bench.scenarios.restore import run

    (row,) = run(quick=True, reps=1, keys=2000)
    assert row["keys"] == 2000 and row["restore_seconds"] > 0 and row["raw_read_seconds"] > 0
    assert row["warm_restore_seconds"] > 0, "the standby path ran (it asserts its origin is the warm copy)"


async def test_static_membership_restart_keeps_the_assignment(bootstrap: str, tmp_path: Path) -> None:
    """A restart with the same ``group_instance_id`` within the session timeout gets its partitions
    back, and the other member is not rebalanced (tansu and aiokafka both support KIP-345)."""
    topic = await create_topic(bootstrap, partitions=4)
    group = f"static-{next(_groups)}"
    first, _ = instance(bootstrap, topic, group, tmp_path / "a", group_instance_id="pod-a", session_timeout_ms=10000)
    await run_until(first, 0)
    other, other_metrics = instance(bootstrap, topic, group, tmp_path / "b", group_instance_id="pod-b",
                                    session_timeout_ms=10000)
    await run_until(other, 0)
    async with asyncio.timeout(60):
        while len(first.partitions) + len(other.partitions) != 4 or not other.partitions or not first.partitions:
            await asyncio.sleep(0.05)
    before = set(first.partitions)
    kept = set(other.partitions)
    await first.stop(10)
    await first.sources[0].wait_closed()
    again, _ = instance(bootstrap, topic, group, tmp_path / "a", group_instance_id="pod-a", session_timeout_ms=10000)
    await run_until(again, 0)
    assert set(again.partitions) == before
    assert set(other.partitions) == kept
    assert restores(other_metrics, "empty") + restores(other_metrics, "changelog") + restores(
        other_metrics, "cache") == len(kept), "the other member restored nothing again: no rebalance reached it"
    for pipeline in (again, other):
        await pipeline.stop(10)
        await pipeline.sources[0].wait_closed()


async def test_a_stalled_old_owner_cannot_roll_the_partition_back(bootstrap: str, tmp_path: Path) -> None:
    topic = await create_topic(bootstrap, partitions=1)
    group = f"changelog-{next(_groups)}"
    key = f"{topic}/0"
    logs: list[StateChangelog] = []

    def owner(generation: int) -> tuple[StateChangelog, Metrics]:
        metrics = Metrics()
        logs.append(StateChangelog({"bootstrap_servers": bootstrap}, group_id=group, replication_factor=1,
                                   chunk_bytes=1024, timeout=30, metrics=metrics,
                                   owner_generation=lambda: generation))
        return logs[-1], metrics

    try:
        old, old_metrics = owner(1)
        await old.ensure_topic(topic, 1)
        assert (await old.restore(key, None))[0] is None
        await old.write(key, old.encode(key, {"engine": "v1"}))
        # the old owner stalls; generation 2 takes the partition over and restores what it wrote
        new, _ = owner(2)
        saved, origin, _ = await new.restore(key, None)
        assert (saved, origin) == ({"engine": "v1"}, "changelog")
        # the old owner resumes and checkpoints what it still holds: refused, nothing written
        with pytest.raises(ChangelogFenced, match="written by another instance"):
            await old.write(key, old.encode(key, {"engine": "stale"}))
        assert old_metrics.registry.get_sample_value("trailguard_changelog_fenced_total") == 1
        await new.write(key, new.encode(key, {"engine": "v2"}))
        # a stale write that raced the check (written past it) names generation 1 after the claim of 2
        await old.producer.write(key, encode(key, 99, {"engine": "stale"}, 1024, owner=1), set())
        reader, metrics = owner(3)
        saved, origin, _ = await reader.restore(key, None)
        assert (saved, origin) == ({"engine": "v2"}, "changelog"), "the rightful owner's state, not the stale one"
        assert metrics.registry.get_sample_value("trailguard_changelog_fenced_total") == 1
    finally:
        for log in logs:
            await log.stop()
