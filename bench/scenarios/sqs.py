"""SQS throughput on moto_server, EventBridge-envelope messages.  A: receive, loads, delete.  B: trailguard.

Why it exists: the SQS source does more per message than reading it — tracking, visibility
heartbeats, deletion only after a checkpoint — and that overhead must stay small next to what any
SQS consumer pays.  moto_server is slow, so absolute figures say little about AWS; the ratio says
what trailguard adds on the same endpoint.

moto re-scans the whole queue on every call, so the queue is kept short by a :class:`Feeder`
(about 100 visible messages) instead of being filled up front, and moto runs with a cheap clock
(:data:`_FAST_CLOCK`).  It then serves 100-400 messages/s, so N is 3,000 (quick: 1,500) rather
than 20,000, which would take over seven minutes with ``--reps 3``.  Each repetition gets a fresh
queue fed the same N events, each one message as EventBridge delivers it (``detail`` is the
record), sent in ``SendMessageBatch`` calls of 10.  A fresh queue, not a refilled one, because
trailguard deletes at checkpoints and a message it had not deleted when stopped would otherwise be
counted again by the next repetition.

* **A** (raw): ``pollers`` (2, trailguard's default) aiobotocore loops of ``ReceiveMessage``
  (10 messages, 1 s wait) → ``orjson.loads`` each body → ``DeleteMessageBatch``, until N events;
  events/s from the first receive to the last.
* **B** (trailguard): ``trailguard run`` with the default configuration and only an ``sqs`` source
  on the queue, a ``file`` sink and metrics; measured as in the ``kafka`` scenario
  (:func:`bench.scenarios.kafka.measure_daemon`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from bench.events import generate
from bench.scenarios.kafka import file_sink_config, measure_daemon

if TYPE_CHECKING:
    from tests.brokers import MotoServer

__all__ = ["Feeder", "create_queue", "envelope", "raw_consume", "run", "start_moto"]

REGION: Final = "us-east-1"
POLLERS: Final = 2
ENTRIES_PER_CALL: Final = 10
#: Visible messages the feeder keeps in the queue, and how often it looks.
BACKLOG: Final = 100
FEED_INTERVAL: Final = 0.02
_queues = itertools.count()


def envelope(record: dict[str, Any]) -> bytes:
    """``record`` as an EventBridge "AWS API Call via CloudTrail" event."""
    source = str(record.get("eventSource", "aws.amazonaws.com")).split(".", 1)[0]
    return orjson.dumps({"version": "0", "id": f"env-{record.get('eventID')}",
                         "detail-type": "AWS API Call via CloudTrail", "source": f"aws.{source}",
                         "account": record.get("recipientAccountId", ""), "time": record.get("eventTime"),
                         "region": record.get("awsRegion", REGION), "resources": [], "detail": record})


#: Run in the moto_server process: moto's SQS model reads a datetime-based clock (~11 µs) twice per
#: queued message on every send and receive; ``time.time()`` is the same Unix time, 50x cheaper.
_FAST_CLOCK: Final = """
import sys, time
import moto.core.utils as utils
import moto.sqs.models as models
_slow_s, _slow_ms = utils.unix_time, utils.unix_time_millis
models.unix_time = lambda dt=None: time.time() if dt is None else _slow_s(dt)
models.unix_time_millis = lambda dt=None: time.time() * 1000.0 if dt is None else _slow_ms(dt)
from moto.server import main
main(sys.argv[1:])
"""


def start_moto(log_dir: Path) -> MotoServer:
    """A moto_server on a free port, its SQS clock made cheap (see :data:`_FAST_CLOCK`)."""
    from tests.brokers import AWS_TEST_ENV, MotoServer, wait_port

    server = MotoServer(log_dir=log_dir)
    log = server.log_path.open("ab")
    server.proc = subprocess.Popen([sys.executable, "-c", _FAST_CLOCK, "-H", "127.0.0.1", "-p", str(server.port)],
                                   stdout=log, stderr=log, env={**os.environ, **AWS_TEST_ENV})
    wait_port(server.port, proc=server.proc)
    return server


def _client(endpoint: str) -> Any:
    from aiobotocore.session import AioSession

    return AioSession().create_client("sqs", region_name=REGION, endpoint_url=endpoint)


async def create_queue(endpoint: str) -> str:
    """A new, empty standard queue; its URL."""
    async with _client(endpoint) as sqs:
        return (await sqs.create_queue(QueueName=f"bench-cloudtrail-{os.getpid()}-{next(_queues)}"))["QueueUrl"]


class Feeder:
    """Keeps ``url`` topped up to ``backlog`` visible messages until every body was sent (in a thread).

    moto re-scans the whole queue on every send and receive (O(messages) per call: filling 20k
    messages up front took longer than the whole suite may): the queue is kept short instead.  The
    feeder runs the same way for A and B, so it costs both sides the same share of moto's time.
    """

    def __init__(self, endpoint: str, url: str, bodies: list[str], backlog: int = BACKLOG) -> None:
        self.endpoint, self.url, self.bodies, self.backlog = endpoint, url, bodies, backlog
        self.primed = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sqs-feeder", daemon=True)

    def __enter__(self) -> Feeder:
        self._thread.start()
        if not self.primed.wait(60) and self._error is None:
            raise RuntimeError("sqs feeder could not fill the queue within 60s")
        self._raise()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"sqs feeder failed: {self._error!r}") from self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._feed())
        except BaseException as error:  # reported to the measuring thread by __exit__
            self._error = error
            self.primed.set()

    async def _feed(self) -> None:
        bodies, sent = self.bodies, 0
        async with _client(self.endpoint) as sqs:
            while sent < len(bodies) and not self._stop.is_set():
                response = await sqs.get_queue_attributes(QueueUrl=self.url,
                                                          AttributeNames=["ApproximateNumberOfMessages"])
                want = min(self.backlog - int(response["Attributes"]["ApproximateNumberOfMessages"]),
                           len(bodies) - sent)
                if want < ENTRIES_PER_CALL and sent + want < len(bodies):
                    self.primed.set()
                    await asyncio.sleep(FEED_INTERVAL)
                    continue
                calls = [bodies[i:min(i + ENTRIES_PER_CALL, sent + want)]
                         for i in range(sent, sent + want, ENTRIES_PER_CALL)]
                await asyncio.gather(*(self._send(sqs, chunk) for chunk in calls))
                sent += want
            self.primed.set()

    async def _send(self, sqs: Any, chunk: list[str]) -> None:
        response = await sqs.send_message_batch(
            QueueUrl=self.url, Entries=[{"Id": str(i), "MessageBody": body} for i, body in enumerate(chunk)])
        if response.get("Failed"):
            raise RuntimeError(f"SendMessageBatch refused: {response['Failed'][:1]}")


async def raw_consume(endpoint: str, url: str, count: int, timeout: float = 300.0) -> float:
    """Events/s of ``POLLERS`` bare receive → loads → delete loops sharing the queue."""
    loads = orjson.loads
    seen = 0
    first = 0.0
    done = asyncio.Event()

    async with _client(endpoint) as sqs:
        async def poll() -> None:
            nonlocal seen, first
            while not done.is_set():
                response = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=ENTRIES_PER_CALL,
                                                     WaitTimeSeconds=1)
                messages = response.get("Messages") or []
                if not messages:
                    continue
                first = first or time.perf_counter()
                for message in messages:
                    loads(message["Body"])
                await sqs.delete_message_batch(QueueUrl=url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])
                seen += len(messages)
                if seen >= count:
                    done.set()

        async with asyncio.timeout(timeout):
            await asyncio.gather(*(poll() for _ in range(POLLERS)))
    return seen / (time.perf_counter() - first)


def sqs_config(endpoint: str, url: str, sink_path: Path) -> dict[str, Any]:
    """The default configuration with only an sqs source on ``url``, a file sink and metrics."""
    return {"sources": [{"type": "sqs", "queue_url": url, "region": REGION, "endpoint_url": endpoint}],
            "sinks": [file_sink_config(sink_path)]}


def run(quick: bool, reps: int, size: int | None = None) -> list[dict[str, Any]]:
    """The sqs scenario's row (``size`` overrides the event count, for smoke tests)."""
    from bench.run import ab
    from tests.brokers import AWS_TEST_ENV

    count = size or (1_000 if quick else 2_000)
    bodies = [envelope(orjson.loads(raw)).decode() for raw in generate(count)]
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tg-bench-sqs-") as tmp:
        saved = {key: os.environ.get(key) for key in AWS_TEST_ENV}
        _set_env(AWS_TEST_ENV)
        server = start_moto(Path(tmp))
        try:

            def run_a() -> float:
                url = asyncio.run(create_queue(server.endpoint))
                with Feeder(server.endpoint, url, bodies):
                    return asyncio.run(raw_consume(server.endpoint, url, count))

            def run_b() -> float:
                url = asyncio.run(create_queue(server.endpoint))
                with Feeder(server.endpoint, url, bodies):
                    return measure_daemon(sqs_config(server.endpoint, url, Path(tmp) / "alerts.jsonl"), count,
                                          extra, env=AWS_TEST_ENV)

            result = ab(run_a, run_b, reps)
        finally:
            server.stop()
            _set_env(saved)
    return [{"name": f"sqs via moto ({count:,} events)", **result, **extra,
             "note": "B/A: trailguard's overhead on the same (slow) endpoint; B excludes start-up"}]


def _set_env(values: dict[str, str] | dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
