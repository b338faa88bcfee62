"""The pipeline's guarantees: flow, bad input, dedupe, backpressure, checkpoint order, restore, reorder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon.config import PipelineConfig
from daemon.deadletter import InvalidReporter
from daemon.delivery.dispatch import Dispatcher
from daemon.delivery.incidents import Incidents, IncidentsConfig
from daemon.delivery.sinks.base import Sink, SinkConfig
from daemon.metrics import Metrics
from daemon.pipeline import Pipeline
from daemon.sources.base import Source, SourceBatch
from daemon.state import CheckpointError, StateStore
from detectors.alert import Alert
from detectors.base import Detector
from detectors.engine import DetectionEngine
from detectors.event import Event


def record(name: str, t: str, event_id: str, **extra: Any) -> dict[str, Any]:
    return {"eventName": name, "eventTime": t, "eventID": event_id, "eventSource": "test.amazonaws.com",
            "recipientAccountId": "111122223333", "awsRegion": "eu-west-1", **extra}


class Boom(Detector):
    """Alerts on every eventName 'Boom'; remembers how many it saw (state to checkpoint)."""

    name = "boom"
    event_names = frozenset({"Boom"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(self.Config(), None)
        self.seen: list[str] = []

    def on_event(self, event: Event) -> list[Alert]:
        self.seen.append(event.event_id or "")
        return [Alert.from_event(event, detector="boom", title="boom", severity="high", summary="boom")]

    def snapshot(self) -> Any:
        return {"seen": list(self.seen)}

    def restore(self, state: Any) -> None:
        self.seen = list(state["seen"])


class ListSource(Source):
    """Yields prepared batches; records what was acknowledged and when."""

    kind = "list"

    def __init__(self, batches: list[list[Any]], journal: list[str], invalid: InvalidReporter,
                 finite: bool = True) -> None:
        super().__init__("list", invalid)
        self._batches = batches
        self.journal = journal
        self.yielded = 0
        self.acked: list[Any] = []
        self._finite = finite

    @property
    def finite(self) -> bool:
        return self._finite

    async def batches(self) -> AsyncIterator[SourceBatch]:
        for index, records in enumerate(self._batches):
            if self._stopping:
                return
            self.yielded += 1
            yield SourceBatch("list", records, f"mem://{index}", position=index)
        while not self._finite and not self._stopping:
            await asyncio.sleep(0.01)

    async def acknowledge(self, positions: list[Any]) -> None:
        self.journal.append(f"ack {positions}")
        self.acked.extend(positions)


class RecordingSink(Sink):
    kind = "recording"

    def __init__(self, journal: list[str], gate: asyncio.Event | None = None, fail_times: int = 0) -> None:
        super().__init__(SinkConfig(type="recording"))
        self.journal = journal
        self.alerts: list[Alert] = []
        self.gate = gate
        self.fail_times = fail_times

    async def send(self, alerts: list[Alert]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("receiver down")
        self.alerts.extend(alerts)
        self.journal.append(f"send {len(alerts)}")

    async def flush(self) -> None:
        self.journal.append("flush")


class JournalStore(StateStore):
    def __init__(self, directory: Path, journal: list[str]) -> None:
        super().__init__(directory)
        self.journal = journal

    def write_encoded(self, data: bytes) -> int:
        size = super().write_encoded(data)
        self.journal.append("snapshot")
        return size


def build(batches: list[list[Any]], tmp_path: Path, *, store: bool = False, finite: bool = True,
          sink: RecordingSink | None = None, reorder: bool = False, queue_size: int = 4,
          journal: list[str] | None = None) -> tuple[Pipeline, ListSource, RecordingSink, Metrics, Boom]:
    journal = journal if journal is not None else []
    metrics = Metrics()
    invalid = InvalidReporter(metrics, tmp_path / "dead.jsonl")
    source = ListSource(batches, journal, invalid, finite=finite)
    sink = sink or RecordingSink(journal)
    detector = Boom()
    pipeline = Pipeline(
        sources=[source], engine=DetectionEngine([detector], allowed_lateness=60),
        dispatcher=Dispatcher([sink], metrics), invalid=invalid, metrics=metrics,
        config=PipelineConfig(queue_size=queue_size, allowed_lateness=60),
        store=JournalStore(tmp_path / "state", journal) if store else None, checkpoint_interval=0,
        reorder=reorder, incidents=Incidents(IncidentsConfig(enabled=False)),  # one notification per alert
    )
    if store:
        pipeline.store.prepare()  # type: ignore[union-attr]
    return pipeline, source, sink, metrics, detector


async def run_to_end(pipeline: Pipeline) -> None:
    await pipeline.start()
    await asyncio.wait_for(pipeline.finished.wait(), 10)
    await pipeline.stop(5)


async def test_events_flow_to_sinks_and_are_counted(tmp_path: Path) -> None:
    batches = [[record("Boom", "2024-01-01T00:00:00Z", "a"), record("Quiet", "2024-01-01T00:00:01Z", "b")],
               [record("Boom", "2024-01-01T00:00:02Z", "c")]]
    pipeline, source, sink, metrics, _ = build(batches, tmp_path)
    await run_to_end(pipeline)
    assert [a.event_ids for a in sink.alerts] == [["a"], ["c"]]
    assert metrics.registry.get_sample_value("trailguard_events_processed_total") == 3
    assert metrics.registry.get_sample_value("trailguard_events_received_total", {"source": "list"}) == 3
    assert metrics.registry.get_sample_value("trailguard_alerts_total", {"detector": "boom", "severity": "high",
                                                                         "rule": "boom"}) == 2
    assert source.acked == [0, 1]


async def test_bad_records_are_counted_parked_and_skipped(tmp_path: Path) -> None:
    batches = [["not a dict", {"eventName": "Boom"}, {"eventName": 5, "eventTime": "2024-01-01T00:00:00Z"},
                record("Boom", "yesterday", "x"), record("Boom", "2024-01-01T00:00:00Z", "ok")]]
    pipeline, _, sink, metrics, _ = build(batches, tmp_path)
    await run_to_end(pipeline)
    assert [a.event_ids for a in sink.alerts] == [["ok"]]
    sample = metrics.registry.get_sample_value
    assert sample("trailguard_events_invalid_total", {"reason": "not_an_object"}) == 1
    assert sample("trailguard_events_invalid_total", {"reason": "missing_field"}) == 1
    assert sample("trailguard_events_invalid_total", {"reason": "wrong_type"}) == 1
    assert sample("trailguard_events_invalid_total", {"reason": "bad_event_time"}) == 1
    dead = (tmp_path / "dead.jsonl").read_text().splitlines()
    assert len(dead) == 4 and "yesterday" in dead[3]


async def test_duplicate_event_ids_count_once(tmp_path: Path) -> None:
    same = record("Boom", "2024-01-01T00:00:00Z", "dup")
    pipeline, _, sink, metrics, detector = build([[same, dict(same)], [dict(same)]], tmp_path)
    await run_to_end(pipeline)
    assert len(sink.alerts) == 1 and detector.seen == ["dup"]
    assert metrics.registry.get_sample_value("trailguard_events_duplicate_total") == 2


async def test_slow_sink_applies_backpressure_to_the_source(tmp_path: Path) -> None:
    gate = asyncio.Event()
    journal: list[str] = []
    sink = RecordingSink(journal, gate=gate)
    batches = [[record("Boom", f"2024-01-01T00:00:{i % 60:02d}Z", f"id{i}")] for i in range(200)]
    pipeline, source, _, _, _ = build(batches, tmp_path, sink=sink, queue_size=2, journal=journal)
    pipeline.alerts = asyncio.Queue(3)
    await pipeline.start()
    await asyncio.sleep(0.3)
    # ingest queue (2) + alert queue (3) + one batch in the processor + one in the dispatcher + one in the pump
    assert source.yielded <= 2 + 3 + 3, source.yielded
    gate.set()
    await asyncio.wait_for(pipeline.finished.wait(), 10)
    await pipeline.stop(5)
    assert len(sink.alerts) == 200


async def test_checkpoint_order_is_flush_then_snapshot_then_ack(tmp_path: Path) -> None:
    journal: list[str] = []
    batches = [[record("Boom", "2024-01-01T00:00:00Z", "a")], [record("Boom", "2024-01-01T00:00:05Z", "b")]]
    pipeline, _, _, _, _ = build(batches, tmp_path, store=True, journal=journal)
    await run_to_end(pipeline)
    first_ack = next(i for i, line in enumerate(journal) if line.startswith("ack"))
    assert journal[first_ack - 2:first_ack + 1] == ["flush", "snapshot", "ack [0, 1]"], journal
    assert journal.index("send 1") < journal.index("flush")


async def test_restart_restores_state_and_dedupe(tmp_path: Path) -> None:
    first = [[record("Boom", "2024-01-01T00:00:00Z", "a")]]
    pipeline, _, _, _, _ = build(first, tmp_path, store=True)
    await run_to_end(pipeline)
    again = [[record("Boom", "2024-01-01T00:00:00Z", "a"), record("Boom", "2024-01-01T00:00:09Z", "b")]]
    pipeline, _, sink, metrics, detector = build(again, tmp_path, store=True)
    await run_to_end(pipeline)
    assert detector.seen == ["a", "b"], "restored detector state plus the one new event"
    assert [a.event_ids for a in sink.alerts] == [["b"]]
    assert metrics.registry.get_sample_value("trailguard_events_duplicate_total") == 1


def test_newer_checkpoint_format_is_refused(tmp_path: Path) -> None:
    import msgpack

    store = StateStore(tmp_path)
    store.prepare()
    store.path.write_bytes(msgpack.packb({"format": "trailguard-checkpoint", "version": 99, "body": {}}))
    with pytest.raises(CheckpointError, match="newer trailguard"):
        store.load()
    store.path.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError):
        store.load()


async def test_replay_reorders_by_event_time(tmp_path: Path) -> None:
    batches = [[record("Boom", "2024-01-01T00:05:00Z", "late-file"),
                record("Boom", "2024-01-01T00:00:00Z", "early")],
               [record("Boom", "2024-01-01T00:02:00Z", "middle")]]
    pipeline, _, sink, _, detector = build(batches, tmp_path, reorder=True)
    await run_to_end(pipeline)
    assert detector.seen == ["early", "middle", "late-file"]
    assert len(sink.alerts) == 3


async def test_events_held_at_the_end_of_a_replay_leave_in_slices_with_their_alerts(tmp_path: Path) -> None:
    # 300 events within the allowed lateness: all are still held when the input ends
    batches = [[record("Boom", f"2024-01-01T00:00:{second:02d}Z", f"e{second}-{n}") for n in range(5)]
               for second in range(59, -1, -1)]
    journal: list[str] = []
    pipeline, _, sink, _, detector = build(batches, tmp_path, reorder=True, journal=journal, queue_size=64)
    await run_to_end(pipeline)
    assert detector.seen == [f"e{second}-{n}" for second in range(60) for n in range(5)]
    sends = [int(entry.split()[1]) for entry in journal if entry.startswith("send")]
    assert sum(sends) == 300 and len(sends) >= 3  # handed on slice by slice, not in one block at the end
    assert len(sink.alerts) == 300


async def test_transient_sink_failure_is_retried(tmp_path: Path) -> None:
    journal: list[str] = []
    sink = RecordingSink(journal, fail_times=2)
    pipeline, _, _, metrics, _ = build([[record("Boom", "2024-01-01T00:00:00Z", "a")]], tmp_path, sink=sink,
                                       journal=journal)
    pipeline.dispatcher.max_backoff = 0.05
    await run_to_end(pipeline)
    assert len(sink.alerts) == 1
    assert metrics.registry.get_sample_value("trailguard_sink_deliveries_total",
                                             {"sink": "recording", "outcome": "retry"}) == 2


async def test_stop_respects_deadline_with_a_stuck_sink(tmp_path: Path) -> None:
    gate = asyncio.Event()  # never set: the sink hangs
    pipeline, _, _, _, _ = build([[record("Boom", "2024-01-01T00:00:00Z", "a")]], tmp_path,
                                 sink=RecordingSink([], gate=gate), finite=False)
    await pipeline.start()
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await pipeline.stop(0.5)
    assert loop.time() - started < 2.0
