"""Alert latency under steady load: produce to Kafka → alert line in the file sink, per injected attack.

Why it exists: throughput says how much trailguard keeps up with; a SOC cares how soon an attack
shows up.  Background CloudTrail traffic (:func:`bench.events.generate` templates, re-stamped with
a fresh eventID and eventTime = now) is produced at a steady 2,000 events/s into a 4-partition tansu
topic while ``trailguard run`` (default configuration, kafka source, ``file`` sink) consumes it.
Once the daemon has caught up with what was produced during its start-up, a StopLogging record
(the Stratus Red Team sample, fresh eventID, eventTime = now, a principal of its own so that it
opens a new incident) is injected every 0.5 s and its produce time noted.  A thread tails the
alert file every 5 ms; an injected event's latency is the time its first alert line
(``event_ids`` holds its id) appeared minus its produce time — the whole path: producer
batching, broker, consumer poll, detectors, delivery, the write.

The same run is first made with a raw consumer in the daemon's place (:mod:`bench.scenarios.latency_raw`:
``getmany`` + ``orjson.loads``, a line per injection), because the instrument itself — a Python
producer, tansu and the tail thread on the daemon's two cores — has a floor of tens of milliseconds
at the median and hundreds at p99; the row reports trailguard's p50/p99/max in ms, the raw
consumer's, what trailguard adds to each, how many injected events raised no alert (``missed``), and in
the A/B columns the target and the achieved produce rate.  ``stages`` is the daemon's own account of
the run, read from its ``/metrics`` at the end: per stage of ``trailguard_stage_seconds`` (batch
waiting in the ingest queue, detection per slice, incident folding, alerts waiting for the
dispatcher, delivery), checkpoint pauses and garbage-collector pauses — count, mean and the bucket
bound under which 99 % fell — so a tail can be attributed without a profiler.

The producing process is part of the instrument: its own cyclic garbage collector is frozen and
off while it measures (a full pass over its heap took 130–450 ms every ~10 s, delaying sends
after their timestamps and the tail thread), and it asks the daemon's ``/metrics`` how far it
caught up at most every 0.25 s (every 5 ms cost the daemon ~10 % of its CPU while catching up).

Target p99 ≤ 100 ms.  One run, whatever ``--reps``: its 20 (quick) or 60 injections are the
distribution.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from bench.events import generate
from bench.scenarios.kafka import Daemon, account_key, create_topic, kafka_config
from bench.scenarios.latency_raw import RawConsumer

__all__ = ["AlertTail", "percentile", "run"]

ROOT: Final = Path(__file__).resolve().parents[2]
ATTACK: Final = next((ROOT / "samples" / "trail" / "4-stratus-red-team").glob("*cloudtrail-stop.json"))
RATE: Final = 2000.0
INJECT_EVERY: Final = 0.5
TICK: Final = 0.005
TAIL_INTERVAL: Final = 0.005
#: Background templates (re-stamped on every send, so a few thousand are plenty).
TEMPLATES: Final = 4000
#: After the last injection, how long alerts may still arrive.
GRACE: Final = 5.0
#: How often the producer asks the daemon whether it caught up with the start-up backlog.
CATCH_UP_POLL: Final = 0.25
#: Histograms the row reads from the daemon's ``/metrics`` (``stages``).
STAGE_METRICS: Final = ("trailguard_stage_seconds", "trailguard_checkpoint_pause_seconds",
                        "trailguard_gc_pause_seconds")


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a non-empty list (``fraction`` in 0..1)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class AlertTail:
    """Follows a JSON-lines alert file in a thread; notes when each watched event id first shows up."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.arrived: dict[str, float] = {}
        self.watched: set[str] = set()
        self.lines = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-tail", daemon=True)

    def __enter__(self) -> AlertTail:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        fd = None
        pending = b""
        try:
            while not self._stop.is_set():
                if fd is None:
                    try:
                        fd = os.open(self.path, os.O_RDONLY)
                    except FileNotFoundError:
                        time.sleep(TAIL_INTERVAL)
                        continue
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    time.sleep(TAIL_INTERVAL)
                    continue
                now = time.perf_counter()
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    self._line(line, now)
        finally:
            if fd is not None:
                os.close(fd)

    def _line(self, line: bytes, now: float) -> None:
        self.lines += 1
        for event_id in orjson.loads(line).get("event_ids") or ():
            if event_id in self.watched and event_id not in self.arrived:
                self.arrived[event_id] = now


def _iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _templates() -> list[tuple[dict[str, Any], bytes]]:
    events = [orjson.loads(raw) for raw in generate(TEMPLATES)]
    return [(event, account_key(event)) for event in events]


def _cycle(templates: list[tuple[dict[str, Any], bytes]]) -> Iterator[tuple[dict[str, Any], bytes]]:
    while True:
        yield from templates


async def _produce(bootstrap: str, topic: str, daemon: Daemon | RawConsumer, tail: AlertTail, seconds: float,
                   extra: dict[str, Any]) -> dict[str, float]:
    """Steady background load; injections once the daemon caught up.  Returns eventID → produce time."""
    from aiokafka import AIOKafkaProducer

    background = _cycle(_templates())
    attack = orjson.loads(ATTACK.read_bytes())[0]
    attack_key = account_key(attack)
    injected: dict[str, float] = {}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    await producer.start()
    try:
        started = time.perf_counter()
        sent = 0
        phase_start = phase_sent = 0.0
        next_injection = math.inf
        next_poll = 0.0
        pending: list[asyncio.Future[Any]] = []
        while True:
            now = time.perf_counter()
            if phase_start and now - phase_start >= seconds:
                break
            stamp = _iso_now()
            for _ in range(int((now - started) * RATE) - sent):
                template, key = next(background)
                event = {**template, "eventID": str(uuid.uuid4()), "eventTime": stamp}
                pending.append(await producer.send(topic, orjson.dumps(event), key=key))
                sent += 1
            if not phase_start and now - started > 1.0 and now >= next_poll:
                next_poll = now + CATCH_UP_POLL
                processed = await asyncio.to_thread(daemon.processed) or 0.0
                if processed >= sent - RATE * 0.25:  # caught up with the start-up backlog
                    phase_start, phase_sent, next_injection = now, sent, now
                    extra["startup_backlog"] = sent
                    if daemon.port is not None:
                        extra["metrics_at_start"] = await asyncio.to_thread(_metrics_text, daemon)
            if now >= next_injection:
                event_id = str(uuid.uuid4())
                tail.watched.add(event_id)
                # A distinct principal per injection: each opens its own incident, so every
                # injection measures a first notification (repeats would fold, by design).
                identity = {**attack["userIdentity"], "arn": f"{attack['userIdentity']['arn']}-{event_id[:8]}"}
                value = orjson.dumps({**attack, "eventID": event_id, "eventTime": stamp, "userIdentity": identity})
                injected[event_id] = time.perf_counter()
                pending.append(await producer.send(topic, value, key=attack_key))
                next_injection += INJECT_EVERY
            if len(pending) > 2000:
                await asyncio.gather(*pending)
                pending.clear()
            if now - started > 120 and not phase_start:
                raise RuntimeError(f"trailguard did not catch up within 120s: {daemon.stderr_tail()}")
            await asyncio.sleep(TICK)
        await asyncio.gather(*pending)
        extra["produce_rate"] = round((sent - phase_sent) / (time.perf_counter() - phase_start), 1)
    finally:
        await producer.stop()
    return injected


def _histograms(exposition: str) -> dict[str, dict[str, Any]]:
    """Per series of :data:`STAGE_METRICS` in a ``/metrics`` text: buckets, count and sum."""
    from prometheus_client.parser import text_string_to_metric_families

    series: dict[str, dict[str, Any]] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name not in STAGE_METRICS:
            continue
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "le"}
            name = family.name.removeprefix("trailguard_").removesuffix("_seconds")
            entry = series.setdefault(name + "".join(f"/{v}" for v in labels.values()),
                                      {"buckets": {}, "count": 0.0, "sum": 0.0})
            if sample.name.endswith("_bucket"):
                entry["buckets"][float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_count"):
                entry["count"] = sample.value
            elif sample.name.endswith("_sum"):
                entry["sum"] = sample.value
    return series


def stage_summary(end: str, start: str = "") -> dict[str, dict[str, float]]:
    """What :data:`STAGE_METRICS` observed between two ``/metrics`` texts: per series, the count,
    the mean in ms and the bucket bound (ms) at or under which 99 % fell."""
    before = _histograms(start) if start else {}
    out: dict[str, dict[str, float]] = {}
    for key, entry in _histograms(end).items():
        earlier = before.get(key, {"buckets": {}, "count": 0.0, "sum": 0.0})
        count = entry["count"] - earlier["count"]
        if count <= 0:
            continue
        buckets = sorted((bound, seen - earlier["buckets"].get(bound, 0.0)) for bound, seen in entry["buckets"].items())
        p99 = next(bound for bound, seen in buckets if seen >= 0.99 * count)
        out[key] = {"count": count, "mean_ms": round(1000 * (entry["sum"] - earlier["sum"]) / count, 2),
                    "p99_under_ms": p99 * 1000}
    return out


def _metrics_text(daemon: Daemon) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/metrics", timeout=5) as response:
        return response.read().decode()


def measure(bootstrap: str, seconds: float, workdir: Path, *, raw: bool = False) -> dict[str, Any]:
    """One latency run against a fresh topic and a fresh daemon (``raw``: the raw consumer instead)."""
    topic = asyncio.run(create_topic(bootstrap))
    workdir = workdir / ("raw" if raw else "trailguard")
    workdir.mkdir(parents=True, exist_ok=True)
    sink = workdir / "alerts.jsonl"
    extra: dict[str, Any] = {}
    config = kafka_config(bootstrap, topic, sink)
    daemon: Daemon | RawConsumer = RawConsumer(config, workdir) if raw else Daemon(config, workdir)
    collecting = gc.isenabled()
    try:
        with AlertTail(sink) as tail:
            gc.collect()
            gc.freeze()
            gc.disable()  # this process's pauses are measurement error, not the daemon's latency
            try:
                injected = asyncio.run(_produce(bootstrap, topic, daemon, tail, seconds, extra))
                deadline = time.perf_counter() + GRACE
                while len(tail.arrived) < len(injected) and time.perf_counter() < deadline:
                    time.sleep(0.05)
            finally:
                if collecting:
                    gc.enable()
                gc.unfreeze()
        if not raw:
            extra["stages"] = stage_summary(_metrics_text(daemon), extra.pop("metrics_at_start", ""))
    finally:
        daemon.stop()
    latencies = [(tail.arrived[event_id] - produced) * 1000 for event_id, produced in injected.items()
                 if event_id in tail.arrived]
    if not latencies:
        raise RuntimeError(f"no alert for any of {len(injected)} injected StopLogging events: {daemon.stderr_tail()}")
    return {"p50_ms": round(percentile(latencies, 0.5), 1), "p99_ms": round(percentile(latencies, 0.99), 1),
            "max_ms": round(max(latencies), 1), "injected": len(injected),
            "missed": len(injected) - len(latencies), "alert_lines": tail.lines, **extra}


def run(quick: bool, reps: int, size: int | None = None) -> list[dict[str, Any]]:
    """The latency scenario's row: A = the raw consumer's latency on the same instrument, B =
    trailguard's, one measured run each in turns (``size`` overrides the seconds, for smoke tests)."""
    from tests.brokers import Tansu

    seconds = float(size or (10 if quick else 30))
    with tempfile.TemporaryDirectory(prefix="tg-bench-latency-") as tmp:
        broker = Tansu(log_dir=Path(tmp)).start()
        try:
            floor = measure(broker.bootstrap, seconds, Path(tmp), raw=True)
            result = measure(broker.bootstrap, seconds, Path(tmp))
        finally:
            broker.stop()
    added_p50 = round(result["p50_ms"] - floor["p50_ms"], 1)
    added_p99 = round(result["p99_ms"] - floor["p99_ms"], 1)
    return [{"name": f"alert latency ({seconds:.0f}s at {RATE:,.0f}/s)", "a_eps": RATE,
             "b_eps": result["produce_rate"], "ratio": None, **result,
             "raw": {key: floor[key] for key in ("p50_ms", "p99_ms", "max_ms", "injected", "missed")},
             "added_p50_ms": added_p50, "added_p99_ms": added_p99,
             "note": (f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms "
                      f"(target p99 <= 100 ms); raw consumer on the same producer and broker: p50 "
                      f"{floor['p50_ms']} ms, p99 {floor['p99_ms']} ms, so trailguard adds {added_p50:+g} ms "
                      f"at p50 and {added_p99:+g} ms at p99; A: target rate, B: achieved produce rate; "
                      f"stages mean/p99 ms: {_stage_note(result.get('stages') or {})}")}]


def _stage_note(stages: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{key.removeprefix('stage/')} {value['mean_ms']:g}/{value['p99_under_ms']:g}"
                     for key, value in stages.items() if value["count"]) or "none"
