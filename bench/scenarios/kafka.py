"""Kafka throughput on a pre-loaded 4-partition topic.  A: aiokafka + ``orjson.loads``.  B: ``trailguard run``.

Why it exists: Kafka is the highest-volume way into trailguard, so what the daemon costs on top of
merely reading and parsing the same messages is the number to watch.  The topic (tansu, in-memory)
is loaded once per scenario — N events from :func:`bench.events.generate`, keyed by account id as
producers are told to — and both sides read it from the start with a fresh consumer group each
repetition.

* **A** (raw): one aiokafka consumer that ``getmany``s and ``orjson.loads`` every message until it
  has N; events/s from the first batch to the last message.
* **B** (trailguard): ``python -m daemon.cli run`` with the default configuration (every detector,
  the shipped rule pack, GeoIP on) plus only a ``kafka`` source, a ``file`` sink (so stdout costs
  nothing) and the metrics endpoint.  ``trailguard_events_processed_total`` is polled every 0.2 s
  until it moves, then at most once a second and more finely only as N comes near (see
  :func:`next_poll`: a scrape is a full Prometheus exposition, ~10 ms of the daemon's CPU, and five
  a second were ~5 % of what B was measured to cost); events/s from the first non-zero reading to
  N, so start-up (imports, rule compilation, the group join) is excluded and reported as
  ``startup_seconds`` / ``first_event_seconds``.  Stopped with SIGTERM.  Both sides poll up to 500
  messages at a time and use a 10 s session timeout (see :data:`SESSION_TIMEOUT_MS`).

The helpers that run and watch a daemon (:class:`Daemon`, :func:`measure_daemon`) are shared with
the ``sqs`` and ``latency`` scenarios.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Final

import orjson

from bench.events import generate

__all__ = ["Daemon", "account_key", "create_topic", "file_sink_config", "free_port", "load_topic", "measure_daemon",
           "next_poll", "raw_consume", "run"]

ROOT: Final = Path(__file__).resolve().parents[2]
PARTITIONS: Final = 4
POLL_INTERVAL: Final = 0.2
#: Once events flow, the processed counter is read at most this often (a Prometheus server scrapes
#: every 15–60 s; each read costs the measured daemon a full exposition) ...
MAX_POLL_INTERVAL: Final = 1.0
#: ... and at least this often near the end, which bounds how far past N the last reading lands.
MIN_POLL_INTERVAL: Final = 0.05
#: No progress on the processed counter for this long: the run is declared stuck.
STALL_TIMEOUT: Final = 60.0
#: Both sides poll at most this many messages at a time (trailguard's default ``max_records``).
MAX_RECORDS: Final = 500
#: tansu holds a JoinGroup for half the session timeout (a real broker waits
#: ``group.initial.rebalance.delay.ms``, 3 s): trailguard's 45 s default would add 23 s of idle
#: start-up per repetition, so both sides use aiokafka's default, 10 s.  Throughput is unaffected.
SESSION_TIMEOUT_MS: Final = 10_000
_PROCESSED: Final = b"trailguard_events_processed_total "
_CONSUMED: Final = b"trailguard_repartition_consumed_total{"
_PRODUCED: Final = b"trailguard_repartition_produced_total{"
_runs = itertools.count()


# -- the daemon under test ------------------------------------------------------------------------
def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Daemon:
    """A ``trailguard run`` subprocess on a config written to ``workdir``; output goes to files there."""

    def __init__(self, config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None,
                 *, count: int | None = None) -> None:
        #: With repartitioning, the input events of ``count`` (see :meth:`processed`).
        self.count = count
        self.workdir = workdir
        self.port = free_port()
        config = {**config, "metrics": {"host": "127.0.0.1", "port": self.port}}
        self.config_path = workdir / "trailguard.yaml"
        self.config_path.write_bytes(orjson.dumps(config))  # JSON is YAML
        self.stderr_path = workdir / "stderr.log"
        self._stdout = (workdir / "stdout.log").open("wb")
        self._stderr = self.stderr_path.open("wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--config", str(self.config_path)],
                                     cwd=ROOT, stdout=self._stdout, stderr=self._stderr,
                                     env={**os.environ, "PYTHONHASHSEED": "0", **(env or {})})

    def processed(self) -> float | None:
        """``trailguard_events_processed_total`` now; ``None`` while the endpoint is not up yet.

        With repartitioning (``count`` given) the counter also counts the internal topics' records:
        the input events processed are the counter less those, and ``count`` is reached only once
        every forwarded event was read back too (until then at most ``count - 1``).
        """
        if self.proc.poll() is not None:
            raise RuntimeError(f"trailguard exited with {self.proc.returncode}: {self.stderr_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as response:
                body = response.read()
        except OSError:
            return None
        start = body.find(b"\n" + _PROCESSED)
        if start < 0:
            return None
        start += 1 + len(_PROCESSED)
        value = float(body[start:body.find(b"\n", start)])
        if self.count is None:
            return value
        consumed = produced = 0.0
        for line in body.splitlines():
            if line.startswith(_CONSUMED):
                consumed += float(line.rsplit(b" ", 1)[1])
            elif line.startswith(_PRODUCED):
                produced += float(line.rsplit(b" ", 1)[1])
        value -= consumed
        return value if consumed >= produced else min(value, self.count - 1)

    def stderr_tail(self) -> str:
        """The last lines the daemon logged (for error messages)."""
        return self.stderr_path.read_bytes()[-3000:].decode(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; SIGKILL if the daemon outlives ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stdout.close()
        self._stderr.close()
        return self.proc.returncode


def next_poll(done: float, count: int, rate: float | None) -> float:
    """Seconds until the next reading of the processed counter, ``done`` of ``count`` so far.

    Before a rate is known, :data:`POLL_INTERVAL`; then half the time ``count`` is still away at
    ``rate``, within :data:`MIN_POLL_INTERVAL`..:data:`MAX_POLL_INTERVAL`: few scrapes while the
    daemon works, and the last reading at most ``MIN_POLL_INTERVAL`` after it reached ``count``.
    """
    if not rate or rate <= 0:
        return POLL_INTERVAL
    return min(MAX_POLL_INTERVAL, max(MIN_POLL_INTERVAL, (count - done) / rate / 2))


def measure_daemon(config: dict[str, Any], count: int, extra: dict[str, Any],
                   env: dict[str, str] | None = None, *, repartitions: bool = False) -> float:
    """Run trailguard on ``config`` until it processed ``count`` events; events/s after its first one.

    The rate is (final − first non-zero reading) / (time between them), readings paced by
    :func:`next_poll`.
    Appended to ``extra``: ``startup_seconds`` (spawn to the metrics endpoint answering: imports,
    rule compilation, GeoIP) and ``first_event_seconds`` (spawn to the first processed event, which
    adds connecting and, for Kafka, the consumer-group join).  ``repartitions``: count input events
    only, done when every forwarded one was read back (:meth:`Daemon.processed`).
    """
    with tempfile.TemporaryDirectory(prefix="tg-bench-daemon-") as tmp:
        daemon = Daemon(config, Path(tmp), env, count=count if repartitions else None)
        try:
            up_time = first_time = first_value = None
            value, last_value, last_change = 0.0, 0.0, time.perf_counter()
            rate: float | None = None
            while value < count:
                time.sleep(next_poll(value, count, rate))
                now = time.perf_counter()
                reading = daemon.processed()
                if reading is None:
                    if now - daemon.started > STALL_TIMEOUT:
                        raise RuntimeError(f"trailguard's metrics endpoint not up: {daemon.stderr_tail()}")
                    continue
                up_time = up_time or now
                value = reading
                if value and first_time is None:
                    first_time, first_value = now, value
                elif first_time is not None and first_value is not None and now > first_time:
                    rate = (value - first_value) / (now - first_time)
                if value != last_value:
                    last_value, last_change = value, now
                elif now - last_change > STALL_TIMEOUT:
                    raise RuntimeError(f"trailguard stuck at {value:.0f}/{count} events: {daemon.stderr_tail()}")
        finally:
            daemon.stop()
    if up_time is None or first_time is None or first_value is None or now <= first_time:
        raise RuntimeError(f"{count} events were processed within one {POLL_INTERVAL}s poll; use more events")
    extra.setdefault("startup_seconds", []).append(round(up_time - daemon.started, 2))
    extra.setdefault("first_event_seconds", []).append(round(first_time - daemon.started, 2))
    return (value - first_value) / (now - first_time)


def file_sink_config(path: Path) -> dict[str, Any]:
    """The alert sink every scenario uses: a JSON-lines file (stdout would cost the daemon)."""
    return {"type": "file", "path": str(path)}


# -- the topic ------------------------------------------------------------------------------------
def account_key(event: dict[str, Any]) -> bytes:
    """The partitioning key producers are asked to use: the event's account id."""
    account = event.get("recipientAccountId")
    if not account:
        identity = event.get("userIdentity")
        account = identity.get("accountId") if isinstance(identity, dict) else None
    return str(account or "").encode()


async def create_topic(bootstrap: str, partitions: int = PARTITIONS) -> str:
    """A new topic with ``partitions`` partitions; its (unique) name."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"bench-cloudtrail-{os.getpid()}-{next(_runs)}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    return topic


async def load_topic(bootstrap: str, topic: str, events: list[bytes]) -> None:
    """Produce ``events`` keyed by account id, batched (``linger_ms``), and wait for every ack."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        pending = []
        for value in events:
            pending.append(await producer.send(topic, value, key=account_key(orjson.loads(value))))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


# -- A: the raw baseline --------------------------------------------------------------------------
async def raw_consume(bootstrap: str, topic: str, count: int, timeout: float = 120.0) -> float:
    """Events/s of a bare aiokafka consumer (fresh group) doing ``getmany`` + ``orjson.loads``."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"bench-raw-{uuid.uuid4().hex}",
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                session_timeout_ms=SESSION_TIMEOUT_MS)
    await consumer.start()
    loads = orjson.loads
    try:
        seen = first_count = 0
        first = 0.0
        deadline = time.perf_counter() + timeout
        while seen < count:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"raw consumer got {seen}/{count} messages in {timeout}s")
            batches = await consumer.getmany(timeout_ms=1000, max_records=MAX_RECORDS)
            for records in batches.values():
                for message in records:
                    loads(message.value)
                seen += len(records)
            if not first_count and seen:
                first, first_count = time.perf_counter(), seen
        last = time.perf_counter()
    finally:
        await consumer.stop()
    if last <= first:
        raise RuntimeError(f"all {count} messages came in one batch; use more events")
    return (seen - first_count) / (last - first)


# -- B: trailguard --------------------------------------------------------------------------------
def kafka_config(bootstrap: str, topic: str, sink_path: Path, repartition: str = "off") -> dict[str, Any]:
    """The default configuration with only a kafka source (fresh group), a file sink and metrics.

    The non-default source keys are ``session_timeout_ms`` (see :data:`SESSION_TIMEOUT_MS`) and
    ``repartition: off``: with repartitioning, ``trailguard_events_processed_total`` also counts the
    internal topics' records, so this row keeps measuring the input path it always measured (the
    cost of repartitioning is measured apart, see docs/production.md "Scaling out on Kafka").
    ``repartition="auto"`` is the source's real default, measured in its own row (with the internal
    topics' replication factor 1: one broker).
    """
    source: dict[str, Any] = {"type": "kafka", "bootstrap_servers": bootstrap, "topics": [topic],
                              "group_id": f"bench-trailguard-{uuid.uuid4().hex}",
                              "session_timeout_ms": SESSION_TIMEOUT_MS, "repartition": repartition}
    if repartition != "off":
        source["changelog_replication_factor"] = 1
    return {"sources": [source], "sinks": [file_sink_config(sink_path)]}


def run(quick: bool, reps: int, size: int | None = None) -> list[dict[str, Any]]:
    """The kafka scenario's rows: ``repartition: off`` (the input path) and ``auto`` (the source's
    default; A is the same raw consumer) — ``size`` overrides the event count, for smoke tests."""
    from tests.brokers import Tansu

    count = size or (20_000 if quick else 150_000)
    events = list(generate(count))
    with tempfile.TemporaryDirectory(prefix="tg-bench-kafka-") as tmp:
        broker = Tansu(log_dir=Path(tmp)).start()
        try:
            topic = asyncio.run(_prepare(broker.bootstrap, events))
            del events
            return [_row(broker.bootstrap, topic, Path(tmp), count, reps, repartition)
                    for repartition in ("off", "auto")]
        finally:
            broker.stop()


def _row(bootstrap: str, topic: str, tmp: Path, count: int, reps: int, repartition: str) -> dict[str, Any]:
    from bench.run import ab

    extra: dict[str, Any] = {}
    # A fresh config (so a fresh consumer group, reading from the start) for every repetition.
    result = ab(lambda: asyncio.run(raw_consume(bootstrap, topic, count)),
                lambda: measure_daemon(kafka_config(bootstrap, topic, tmp / f"alerts-{repartition}.jsonl", repartition),
                                       count, extra, repartitions=repartition != "off"), reps)
    name = f"kafka ({count:,} events, {PARTITIONS} partitions)" + (
        "" if repartition == "off" else ", repartition auto (the default)")
    return {"name": name, **result, **extra,
            "note": "target B/A >= 0.5 (stretch 0.7); B excludes start-up (startup_seconds)"}


async def _prepare(bootstrap: str, events: list[bytes]) -> str:
    topic = await create_topic(bootstrap)
    await load_topic(bootstrap, topic, events)
    return topic
