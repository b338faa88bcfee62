"""SQS throughput on moto_server: EventBridge-envelope messages.  A: receive + loads + delete.  B: ``trailguard run``.

Why it exists: the SQS source does more per message than reading it — tracking, visibility
heartbeats, deletion only after a checkpoint — and that overhead must stay small next to what any
SQS consumer pays.  moto_server is slow (a few hundred requests a second), so absolute figures say
little about AWS; the ratio says what trailguard adds on the same endpoint.

Each repetition gets a fresh queue filled with the same N events, each one message as EventBridge
delivers it (``detail`` is the record), sent in ``SendMessageBatch`` calls of 10.  A fresh queue,
not a refilled one, because trailguard deletes at checkpoints and a message it had not deleted when
stopped would otherwise be counted again by the next repetition.

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
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import orjson

from bench.events import generate
from bench.scenarios.kafka import file_sink_config, measure_daemon

__all__ = ["envelope", "fill_queue", "raw_consume", "run"]

REGION: Final = "us-east-1"
POLLERS: Final = 2
ENTRIES_PER_CALL: Final = 10
#: Concurrent ``SendMessageBatch`` calls while filling a queue.
SEND_CONCURRENCY: Final = 8
_queues = itertools.count()


def envelope(record: dict[str, Any]) -> bytes:
    """``record`` as an EventBridge "AWS API Call via CloudTrail" event."""
    source = str(record.get("eventSource", "aws.amazonaws.com")).split(".", 1)[0]
    return orjson.dumps({"version": "0", "id": f"env-{record.get('eventID')}",
                         "detail-type": "AWS API Call via CloudTrail", "source": f"aws.{source}",
                         "account": record.get("recipientAccountId", ""), "time": record.get("eventTime"),
                         "region": record.get("awsRegion", REGION), "resources": [], "detail": record})


def _client(endpoint: str) -> Any:
    from aiobotocore.session import AioSession

    return AioSession().create_client("sqs", region_name=REGION, endpoint_url=endpoint)


async def fill_queue(endpoint: str, bodies: list[str]) -> str:
    """A new queue holding ``bodies`` (sent 10 per call, a few calls at a time); its URL."""
    async with _client(endpoint) as sqs:
        url = (await sqs.create_queue(QueueName=f"bench-cloudtrail-{next(_queues)}"))["QueueUrl"]
        limit = asyncio.Semaphore(SEND_CONCURRENCY)

        async def send(start: int) -> None:
            entries = [{"Id": str(i), "MessageBody": body}
                       for i, body in enumerate(bodies[start:start + ENTRIES_PER_CALL])]
            async with limit:
                response = await sqs.send_message_batch(QueueUrl=url, Entries=entries)
            if response.get("Failed"):
                raise RuntimeError(f"SendMessageBatch refused: {response['Failed'][:1]}")

        await asyncio.gather(*(send(start) for start in range(0, len(bodies), ENTRIES_PER_CALL)))
    return url


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
    from tests.brokers import AWS_TEST_ENV, MotoServer

    count = size or (5_000 if quick else 20_000)
    bodies = [envelope(orjson.loads(raw)).decode() for raw in generate(count)]
    extra: dict[str, Any] = {"fill_seconds": []}
    with tempfile.TemporaryDirectory(prefix="tg-bench-sqs-") as tmp:
        server = MotoServer(log_dir=Path(tmp))
        saved = {key: os.environ.get(key) for key in AWS_TEST_ENV}
        try:
            _set_env(AWS_TEST_ENV)
            server.start()

            def filled() -> str:
                started = time.perf_counter()
                url = asyncio.run(fill_queue(server.endpoint, bodies))
                extra["fill_seconds"].append(round(time.perf_counter() - started, 1))
                return url

            def run_a() -> float:
                return asyncio.run(raw_consume(server.endpoint, filled(), count))

            def run_b() -> float:
                config = sqs_config(server.endpoint, filled(), Path(tmp) / "alerts.jsonl")
                return measure_daemon(config, count, extra, env=AWS_TEST_ENV)

            result = ab(run_a, run_b, reps)
        finally:
            server.stop()
            _set_env(saved)
    return [{"name": f"sqs consume ({count:,} events, moto)", **result, **extra,
             "note": "B/A: trailguard's overhead on the same (slow) endpoint; B excludes start-up"}]


def _set_env(values: dict[str, str] | dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
