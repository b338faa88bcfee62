"""The kafka, sqs and latency benchmark scenarios still run end to end (tiny sizes, real brokers).

A benchmark that silently broke — a renamed metric, a config key the daemon now rejects, a sink
that no longer writes — would only be noticed at the next release measurement.  Each scenario's
``run`` is called with a ``size`` small enough for a test and its row checked for real figures.
"""

from __future__ import annotations

import math
from typing import Any

from bench.run import SCENARIOS
from bench.scenarios import kafka, latency, sqs


def _positive(row: dict[str, Any], *keys: str) -> None:
    for key in keys:
        value = row[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, row)


def test_scenarios_are_registered() -> None:
    assert SCENARIOS["kafka"] == "bench.scenarios.kafka:run"
    assert SCENARIOS["sqs"] == "bench.scenarios.sqs:run"
    assert SCENARIOS["latency"] == "bench.scenarios.latency:run"


def test_kafka_scenario() -> None:
    rows = kafka.run(quick=True, reps=2, size=8000)
    assert [row["name"].endswith("repartition auto (the default)") for row in rows] == [False, True]
    for row in rows:  # two repetitions: each reads the topic from the start in a fresh group
        _positive(row, "a_eps", "b_eps", "ratio")
        assert len(row["startup_seconds"]) == 2 and min(row["startup_seconds"]) > 0
        assert all(first >= up for first, up in zip(row["first_event_seconds"], row["startup_seconds"], strict=True))


def test_kafka_counter_is_read_rarely_while_far_from_the_end_and_finely_near_it() -> None:
    assert kafka.next_poll(0, 20_000, None) == kafka.POLL_INTERVAL  # no rate yet
    assert kafka.next_poll(1_000, 150_000, 7_000.0) == kafka.MAX_POLL_INTERVAL  # 21 s to go
    assert kafka.next_poll(19_000, 20_000, 10_000.0) == 0.05  # 0.1 s to go: half of it
    assert kafka.next_poll(19_990, 20_000, 10_000.0) == kafka.MIN_POLL_INTERVAL


def test_sqs_scenario() -> None:
    [row] = sqs.run(quick=True, reps=1, size=600)
    _positive(row, "a_eps", "b_eps", "ratio")


def test_latency_scenario() -> None:
    [row] = latency.run(quick=True, reps=1, size=3)
    _positive(row, "b_eps", "p50_ms", "p99_ms", "max_ms", "injected")
    assert row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert row["missed"] == 0, row
    assert row["raw"]["injected"] > 0 and row["raw"]["missed"] == 0, "the raw consumer's floor is measured too"
    assert row["added_p50_ms"] == round(row["p50_ms"] - row["raw"]["p50_ms"], 1)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert latency.percentile(values, 0.5) == 50.0
    assert latency.percentile(values, 0.99) == 99.0
    assert latency.percentile([7.0], 0.99) == 7.0


def test_cost_budget_names_every_stage_and_every_default_detector() -> None:
    from bench import budget
    from daemon.cli import _load

    _, built = _load(None)
    result = budget.measure(600, 1)
    stages = result["us_per_event"]
    for stage in ("decode (orjson.loads)", "Event (validation, event time)", "dedupe", "reorder (replay only)",
                  "engine (all detectors)", "alerts (to_dict + orjson.dumps)", "metrics (per slice)"):
        assert stages[stage] > 0, stage
    assert {f"detector {cls.name}" for cls, _ in built.detectors} <= set(stages)
    assert result["events"] == 600 and result["alerts"] > 0


def test_jsonl_and_sigma_only_scenarios() -> None:
    from bench.scenarios import jsonl, sigma_only

    [row] = jsonl.run(quick=True, reps=1, size=600)
    _positive(row, "a_eps", "b_eps", "ratio", "alerts")
    assert row["events"] == 600 and row["startup_seconds"][0] > 0
    replayed, engine = sigma_only.run(quick=True, reps=1, size=600)
    _positive(replayed, "a_eps", "b_eps", "ratio")
    _positive(engine, "a_eps", "b_eps", "ratio")
    assert replayed["events"] == 600
    assert SCENARIOS["jsonl"] == "bench.scenarios.jsonl:run"
    assert SCENARIOS["sigma_only"] == "bench.scenarios.sigma_only:run"
