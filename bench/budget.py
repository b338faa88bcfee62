"""The per-event cost budget: what each stage of the path costs, in µs per event, in one process.

Throughput ratios (``bench.run``) say *whether* trailguard keeps up; this says *where* its time goes,
so a change can be aimed at the biggest line and measured on it.  Every stage runs over the same
benchmark events (``bench/events.py``, the default configuration's detectors and rule pack, GeoIP
and AWS ranges on) and is timed on its own:

* ``decode`` — ``orjson.loads`` of each line (the raw baseline itself);
* ``Event`` — validation and event-time parsing;
* ``normalise`` — the shared per-event fields (principal, account, region, address kind) that
  every detector reads, computed once per event;
* ``dedupe``, ``reorder`` — the pipeline's eventID record and replay's event-time buffer (its
  sorted-run deque, and the plain heap it replaced for comparison);
* each detector — ``on_event`` for the events the engine's index gives it, ``on_watermark`` every
  128 events (as the pipeline's slices do);
* ``engine`` — all detectors together through :class:`DetectionEngine` (index lookup, isolation,
  sampled timing), the figure the detector lines should add up to;
* ``alerts`` — ``Alert.to_dict`` + ``orjson.dumps`` of every alert raised, spread over all events;
* ``metrics`` — the per-slice counter/histogram updates.

Run it::

    .venv/bin/python -m bench.budget                 # 50,000 events, the table
    .venv/bin/python -m bench.budget --profile 20    # plus cProfile's top 20 of one engine pass

Times are CPU time of this process (``time.process_time``: time spent waiting for a core taken by
other load does not count), best of ``--reps`` passes with fresh detector state each pass, so a
busy shared machine inflates them far less than wall-clock throughput.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
import structlog

from bench.events import generate

SLICE = 128


def _best(reps: int, function: Callable[[], Any]) -> float:
    """Fastest of ``reps`` runs of ``function``, in seconds."""
    best = float("inf")
    for _ in range(reps):
        started = time.process_time()
        function()
        best = min(best, time.process_time() - started)
    return best


def _build_detectors() -> list[Any]:
    """The default configuration's detectors, with the daemon's real enrichment."""
    from daemon.app import build_enricher
    from daemon.cli import _load
    from daemon.components import build_detectors
    from detectors.base import DetectorContext

    config, built = _load(None)
    context = DetectorContext(enricher=build_enricher(config), allowed_lateness=config.pipeline.allowed_lateness)
    return build_detectors(built, context)


def _events(records: list[dict[str, Any]]) -> list[Any]:
    from detectors.event import Event

    events = [Event(record) for record in records]
    for event in events:
        _ = event.principal, event.account_id, event.region, event.source_ip_kind
    return events


def measure(count: int, reps: int, only: list[str] | None = None) -> dict[str, Any]:
    """Every stage's µs/event over ``count`` benchmark events, plus alert and start-up figures."""
    from daemon.dedupe import Deduplicator
    from daemon.metrics import Metrics
    from daemon.reorder import ReorderBuffer, SortedRunBuffer
    from detectors.engine import DetectionEngine
    from detectors.event import Event

    lines = list(generate(count))
    records = [orjson.loads(line) for line in lines]
    rows: dict[str, float] = {}
    per = 1e6 / count

    rows["decode (orjson.loads)"] = _best(reps, lambda: [orjson.loads(line) for line in lines]) * per
    rows["Event (validation, event time)"] = _best(reps, lambda: [Event(r) for r in records]) * per

    def normalise() -> None:
        for event in [Event(r) for r in records]:
            _ = event.principal, event.account_id, event.region, event.source_ip_kind

    rows["normalised fields (shared)"] = max(
        0.0, _best(reps, normalise) * per - rows["Event (validation, event time)"])
    events = _events(records)

    def dedupe() -> None:
        record = Deduplicator(3600.0, 1_000_000)
        for event in events:
            record.seen(event.event_id, event.time)
        record.expire()

    rows["dedupe"] = _best(reps, dedupe) * per

    def reorder(kind: type[ReorderBuffer]) -> None:
        buffer = kind(900.0)
        out: list[Any] = []
        for start in range(0, count, SLICE):
            for event in events[start:start + SLICE]:
                buffer.push(event)
            buffer.release(out)
        buffer.drain(out)

    rows["reorder (replay only)"] = _best(reps, lambda: reorder(SortedRunBuffer)) * per
    rows["reorder, heap only (before the sorted run)"] = _best(reps, lambda: reorder(ReorderBuffer)) * per

    started = time.process_time()
    detectors = _build_detectors()
    build_seconds = time.process_time() - started
    names = [d.name for d in detectors]
    raised: dict[str, int] = {}

    for index, name in enumerate(names):
        if only and name not in only:
            continue

        def one(index: int = index, name: str = name) -> None:
            detector = _build_detectors()[index]
            engine = DetectionEngine([detector])
            alerts = 0
            t0 = time.process_time()
            for start in range(0, count, SLICE):
                for event in events[start:start + SLICE]:
                    if event.time > engine.max_event_time:
                        engine.max_event_time = event.time
                    for candidate in engine.candidates(event):
                        produced = candidate.on_event(event)
                        if produced:
                            alerts += len(produced)
                produced = detector.on_watermark(engine.watermark)
                if produced:
                    alerts += len(produced)
            one.seconds = min(getattr(one, "seconds", float("inf")), time.process_time() - t0)  # type: ignore[attr-defined]
            raised[name] = alerts

        for _ in range(reps):
            one()
        rows[f"detector {name}"] = one.seconds * per  # type: ignore[attr-defined]

    alerts: list[Any] = []

    def engine_pass() -> None:
        engine = DetectionEngine(_build_detectors())
        alerts.clear()
        fresh = _events(records)
        t0 = time.process_time()
        for start in range(0, count, SLICE):
            alerts.extend(engine.process_many(fresh[start:start + SLICE]))
        engine_pass.seconds = min(getattr(engine_pass, "seconds", float("inf")),  # type: ignore[attr-defined]
                                  time.process_time() - t0)

    for _ in range(reps):
        engine_pass()
    rows["engine (all detectors)"] = engine_pass.seconds * per  # type: ignore[attr-defined]

    now = time.time()
    for alert in alerts:
        alert.detected_at = now
    rows["alerts (to_dict + orjson.dumps)"] = _best(
        reps, lambda: [orjson.dumps(a.to_dict()) for a in alerts]) * per

    metrics = Metrics()

    def record_metrics() -> None:
        for start in range(0, count, SLICE):
            chunk = events[start:start + SLICE]
            metrics.events_processed.inc(len(chunk))
            metrics.event_lag.observe_many([now - e.time for e in chunk])
            metrics.watermark.set(chunk[-1].time)

    rows["metrics (per slice)"] = _best(reps, record_metrics) * per
    return {"events": count, "alerts": len(alerts), "alerts_by_detector": raised,
            "detector_build_seconds": round(build_seconds, 3),
            "us_per_event": {k: round(v, 2) for k, v in rows.items()}}


def profile(count: int, top: int) -> None:
    """cProfile of one engine pass (all detectors), top ``top`` functions by own time."""
    from detectors.engine import DetectionEngine

    records = [orjson.loads(line) for line in generate(count)]
    engine = DetectionEngine(_build_detectors())
    events = _events(records)
    profiler = cProfile.Profile()
    profiler.enable()
    for start in range(0, count, SLICE):
        engine.process_many(events[start:start + SLICE])
    profiler.disable()
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    """Print the budget table (and optionally a profile)."""
    parser = argparse.ArgumentParser(prog="bench.budget")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--profile", type=int, metavar="TOP", default=0, help="also print cProfile's top TOP")
    parser.add_argument("--detector", action="append", help="time only these detectors on their own")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    result = measure(args.events, args.reps, args.detector)
    print(f"{'stage':<44} {'µs/event':>9}")
    for stage, value in result["us_per_event"].items():
        print(f"{stage:<44} {value:>9.2f}")
    print(f"alerts raised: {result['alerts']} over {result['events']:,} events; "
          f"detectors built in {result['detector_build_seconds']} s")
    print(orjson.dumps(result).decode(), file=sys.stderr)
    if args.profile:
        profile(args.events, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
