"""``trailguard relay``: drain SQS into a Kafka topic keyed by account, for detection to scale out.

One SQS consumer is the simple default, but its detector state lives in one process.  When one
instance is not enough, relays (any number of replicas, stateless) drain the queue — EventBridge
events or S3 notifications of CloudTrail files, decoded exactly as the ``sqs`` source decodes them
— and produce each CloudTrail record to a Kafka topic keyed by its account id; a ``kafka``
detection group then scales by partitions with state following them (docs/production.md).

Acknowledge after the produce is acknowledged: a batch's SQS message is deleted only once every
record of it is acknowledged by the brokers (``acks=all``), so a relay killed at any instant
leaves its messages to reappear after the visibility timeout, to be produced again (at least
once; detection de-duplicates by ``eventID``).  Invalid input goes to the dead-letter file as in
``run``.  ``/metrics`` and ``/readyz`` are served like the daemon's.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaProducer

from daemon import early_signals
from daemon.components import Built, build_sources
from daemon.config import Config
from daemon.deadletter import InvalidReporter
from daemon.http import OperatorServer
from daemon.metrics import Metrics
from daemon.sources.base import Source

__all__ = ["Relay", "account_key"]


def account_key(record: Any) -> bytes | None:
    """The partition key detection needs: the event's account (``recipientAccountId``, else the caller's)."""
    if not isinstance(record, dict):
        return None
    account = record.get("recipientAccountId")
    if not account:
        identity = record.get("userIdentity")
        account = identity.get("accountId") if isinstance(identity, dict) else None
    return str(account).encode() if account else None


class Relay:
    """Moves records from the configured SQS source(s) to ``topic`` on ``bootstrap_servers``."""

    def __init__(self, config: Config, built: Built, *, bootstrap_servers: str, topic: str,
                 metrics: Metrics | None = None, serve_http: bool = True) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self.log = structlog.get_logger("trailguard.relay")
        dead_letter = config.pipeline.dead_letter_path
        self.invalid = InvalidReporter(self.metrics, Path(config.resolve_path(dead_letter)) if dead_letter else None)
        self.sources: list[Source] = [s for s in build_sources(built, self.invalid) if s.kind == "sqs"]
        if not self.sources:
            raise ValueError("relay needs an 'sqs' source in 'sources'; fix: add one (queue_url, region)")
        self.topic = topic
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5,
                                         client_id="trailguard-relay")
        self.stop_requested = asyncio.Event()
        self.server = (OperatorServer(self.metrics, host=config.metrics.host, port=config.metrics.port,
                                      health=lambda: (True, "ok"), ready=self._ready)
                       if serve_http and config.metrics.enabled else None)

    def _ready(self) -> tuple[bool, str]:
        down = [s.name for s in self.sources if not s.ready]
        return (False, f"sources not connected: {', '.join(down)}") if down else (True, "ok")

    async def _pump(self, source: Source) -> None:
        received = self.metrics.events_received.labels(source=source.name)
        acknowledged = self.metrics.source_acknowledged.labels(source=source.name)
        async for batch in source.batches():
            received.inc(len(batch.records))
            futures = [await self.producer.send(self.topic, orjson.dumps(record), key=account_key(record))
                       for record in batch.records]
            await asyncio.gather(*futures)  # raises if any record was not acknowledged: no delete
            await source.acknowledge([batch.position])
            acknowledged.inc()
            self.metrics.events_processed.inc(len(batch.records))

    async def run(self) -> int:
        """Relay until SIGTERM/SIGINT; then stop reading, finish in-flight batches, close."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop_requested.set)
        if early_signals.pending() is not None:  # asked to stop while still starting
            self.stop_requested.set()
        if self.server is not None:
            await self.server.start()
        await self.producer.start()
        pumps = []
        try:
            for source in self.sources:
                await source.start()
                pumps.append(asyncio.create_task(self._pump(source), name=f"relay:{source.name}"))
            self.log.info("relay started", topic=self.topic, sources=[s.name for s in self.sources])
            stop = asyncio.create_task(self.stop_requested.wait())
            await asyncio.wait({stop, *pumps}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            for task in pumps:
                if task.done() and task.exception() is not None:
                    self.log.error("relay failed; unacknowledged messages return after their visibility timeout",
                                   error=type(task.exception()).__name__, detail=str(task.exception())[:300])
            for source in self.sources:
                await source.stop()
            await asyncio.gather(*pumps, return_exceptions=True)
            for source in self.sources:
                await source.wait_closed()
        finally:
            await self.producer.stop()
            self.invalid.close()
            if self.server is not None:
                await self.server.stop()
        self.log.info("relay stopped")
        return 0
