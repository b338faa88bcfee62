"""The alert path's own timing: ``trailguard_stage_seconds`` per stage, checkpoint and GC pauses.

The latency benchmark attributes a tail from the daemon's ``/metrics`` instead of a profiler, so
these tests pin that every stage of a first notification's path is observed by a real pipeline run
(file source → detectors → incidents → dispatcher → sink), and that the benchmark reads the
difference between two scrapes correctly.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import orjson

from bench.scenarios.latency import stage_summary
from daemon.deadletter import InvalidReporter
from daemon.gc_pauses import GcPauses
from daemon.metrics import Metrics
from daemon.sources.file import FileSource, FileSourceConfig
from tests.pipeline_harness import pipeline_for
from tests.test_pipeline import record

STAGES = ("ingest_wait", "detect", "fold", "alert_wait", "deliver")


def count(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(f"{name}_count", labels) or 0.0


async def test_every_stage_of_an_alerts_path_and_the_checkpoint_pause_are_observed(tmp_path: Path) -> None:
    trail = tmp_path / "trail.jsonl"
    trail.write_bytes(b"\n".join(orjson.dumps(record("Seen", f"2024-01-01T00:00:{i:02d}Z", f"e-{i}"))
                                 for i in range(5)))
    metrics = Metrics()
    pipeline, sink = pipeline_for(FileSource(FileSourceConfig(paths=[str(trail)]), InvalidReporter(metrics)), metrics)
    await pipeline.start()
    async with asyncio.timeout(30):
        await pipeline.finished.wait()
    await pipeline.stop(10)
    assert len(sink.alerts) == 5
    for stage in STAGES:
        assert count(metrics, "trailguard_stage_seconds", stage=stage) > 0, stage
    assert count(metrics, "trailguard_checkpoint_pause_seconds") >= 1, "the final checkpoint"


def test_collections_are_timed_only_while_observed_and_exported_when_published() -> None:
    metrics = Metrics()
    pauses = GcPauses(metrics)
    stop = pauses.observe()
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        stop()
    gc.collect(2)
    assert count(metrics, "trailguard_gc_pause_seconds", generation="2") == 0, "nothing until published"
    pauses.publish()
    assert count(metrics, "trailguard_gc_pause_seconds", generation="0") >= 1
    assert count(metrics, "trailguard_gc_pause_seconds", generation="2") == 1, "the pass after stop() is not timed"


def test_the_benchmark_reads_only_what_happened_between_two_scrapes() -> None:
    def exposition(n: int, total: float, fast: int) -> str:
        return (f'trailguard_stage_seconds_bucket{{stage="detect",le="0.001"}} {fast}\n'
                f'trailguard_stage_seconds_bucket{{stage="detect",le="0.1"}} {n}\n'
                f'trailguard_stage_seconds_bucket{{stage="detect",le="+Inf"}} {n}\n'
                f'trailguard_stage_seconds_count{{stage="detect"}} {n}\n'
                f'trailguard_stage_seconds_sum{{stage="detect"}} {total}\n'
                "# TYPE trailguard_stage_seconds histogram\n")

    start = "# TYPE trailguard_stage_seconds histogram\n" + exposition(100, 0.05, 100)
    end = "# TYPE trailguard_stage_seconds histogram\n" + exposition(110, 0.55, 100)
    assert stage_summary(end, start) == {"stage/detect": {"count": 10.0, "mean_ms": 50.0, "p99_under_ms": 100.0}}
    assert stage_summary(end)["stage/detect"]["p99_under_ms"] == 100.0
