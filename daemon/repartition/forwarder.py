"""Produces input events to the internal repartition topics and knows when the broker has them.

The input partitions' owner calls :meth:`Forwarder.forward` for each input batch before the batch
is processed: every record that is a valid event and that some route admits is produced once per
route, keyed by the event's value of that route's key (:mod:`daemon.repartition.keys`).  Sends are
asynchronous; each is kept (topic, key, value) until the broker acknowledged it.
:meth:`Forwarder.settle` waits for every send issued so far — re-sending the ones that failed —
and the Kafka source calls it before committing input offsets, so an input offset is never
committed ahead of its events in the internal topics (at-least-once, in the pipeline's one
checkpoint order).  A repeated send (a re-sent failure, input read again after a crash) repeats
an ``eventID`` on the same internal partition, where the partition's dedupe drops it.

After each batch, and at every probe of the source, the forwarder also sends each internal
partition a *mark* of the input partition's event-time progress
(:mod:`daemon.repartition.watermark`), in order with the events it forwarded.

Records that are not valid events are not forwarded: the input partition's engine reports them
(once) to the dead-letter file.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import orjson
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from daemon.metrics import Metrics
from daemon.repartition.keys import message_key
from daemon.repartition.routes import Routes, repartition_topic
from daemon.repartition.watermark import MARK_HEADER, encode_mark
from detectors.event import Event, InvalidEvent

__all__ = ["ForwardError", "Forwarder"]

_ERRORS: Final = (KafkaError, OSError)
#: Settled sends are pruned from the pending list once it holds this many.
_PRUNE_AT: Final = 4096
_NEG_INF: Final = float("-inf")
_MARK: Final = [(MARK_HEADER, b"1")]


def _retrieve(future: asyncio.Future[Any]) -> None:
    """A mark that failed is replaced by the next one: only consume its outcome."""
    if not future.cancelled():
        future.exception()


class ForwardError(Exception):
    """Forwarded events were not acknowledged in time; the input stays uncommitted and is retried."""


class _Send:
    __slots__ = ("future", "key", "seq", "topic", "value")

    def __init__(self, seq: int, topic: str, key: bytes, value: bytes, future: asyncio.Future[Any]) -> None:
        self.seq, self.topic, self.key, self.value, self.future = seq, topic, key, value, future


class Forwarder:
    """One producer per source for every internal topic (see the module docstring)."""

    def __init__(self, connection: dict[str, Any], routes: Routes, *, timeout: float, metrics: Metrics,
                 max_request_size: int) -> None:
        self.connection = connection
        self.routes = routes
        self.timeout = timeout
        self.max_request_size = max_request_size
        self.log = structlog.get_logger("trailguard.repartition")
        self._producer: AIOKafkaProducer | None = None
        self._pending: list[_Send] = []
        self._seq = 0
        self._produced = {key: metrics.repartition_produced.labels(key=key) for key in routes.remote}
        self._topics = {(topic, key): repartition_topic(routes.group_id, topic, key)
                        for topic in routes.inputs for key in routes.remote}
        #: Partition count of every internal topic (set once they are created).
        self.partitions: dict[str, int] = {}
        #: Newest event time read from each input partition, and the last mark sent for it.
        self._times: dict[tuple[str, int], float] = {}
        self._marked: dict[tuple[str, int], tuple[float, bool]] = {}

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(**self.connection, acks="all", linger_ms=5,
                                        max_request_size=self.max_request_size)
            await asyncio.wait_for(producer.start(), self.timeout)
            self._producer = producer
        return self._producer

    @property
    def pending(self) -> int:
        """Sends not yet known to be acknowledged."""
        return len(self._pending)

    async def forward(self, topic: str, partition: int, of: int, records: list[Any], origin: str) -> int:
        """Produce the events of ``records`` (read from input ``topic``/``partition`` of ``of``) to their
        routes, then a mark of the partition's progress; returns the events sent."""
        routes = self.routes
        producer = await self._started()
        sent = 0
        newest = self._times.get((topic, partition), _NEG_INF)
        for record in records:
            try:
                event = Event(record, origin)
            except InvalidEvent:
                continue
            if event.time > newest:
                newest = event.time
            keys = routes.targets(event)
            if not keys:
                continue
            value = orjson.dumps(record)
            for key in keys:
                name = self._topics[(topic, key)]
                message = message_key(key, event)
                future = await producer.send(name, value, key=message)
                self._seq += 1
                self._pending.append(_Send(self._seq, name, message, value, future))
                self._produced[key].inc()
                sent += 1
        if len(self._pending) >= _PRUNE_AT:
            self._pending = [s for s in self._pending
                             if not s.future.done() or s.future.cancelled() or s.future.exception() is not None]
        self._times[(topic, partition)] = newest
        await self.mark(topic, partition, of, idle=False, only_if_changed=True)
        return sent

    async def mark(self, topic: str, partition: int, of: int, *, idle: bool, only_if_changed: bool = False) -> None:
        """Send every internal partition of ``topic``'s routes the progress of input ``partition``."""
        time = self._times.get((topic, partition), _NEG_INF)
        if only_if_changed and self._marked.get((topic, partition)) == (time, idle):
            return
        producer = await self._started()
        value = encode_mark(partition, of, time, idle)
        for key in self.routes.remote:
            name = self._topics[(topic, key)]
            for target in range(self.partitions.get(name, 1)):
                future = await producer.send(name, value, partition=target, headers=_MARK)
                future.add_done_callback(_retrieve)
        self._marked[(topic, partition)] = (time, idle)

    def forget(self, topic: str, partition: int) -> None:
        """Input ``partition`` was revoked: its next owner reports its progress."""
        self._times.pop((topic, partition), None)
        self._marked.pop((topic, partition), None)

    async def settle(self) -> None:
        """Wait until every send issued so far is acknowledged, re-sending failed ones (``timeout``)."""
        upto = self._seq
        batch = [s for s in self._pending if s.seq <= upto]
        if not batch:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        failures = 0
        waiting = batch
        while waiting:
            failed: list[_Send] = []
            for item in waiting:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise ForwardError(f"{len(waiting)} forwarded event(s) not acknowledged within "
                                       f"{self.timeout:.0f}s; input offsets stay uncommitted")
                try:
                    await asyncio.wait_for(asyncio.shield(item.future), remaining)
                except TimeoutError:
                    raise ForwardError(f"forwarded events not acknowledged within {self.timeout:.0f}s; "
                                       "input offsets stay uncommitted") from None
                except _ERRORS as error:
                    failures += 1
                    if failures == 1:
                        self.log.warning("repartition produce failed; re-sending", error=type(error).__name__,
                                         detail=str(error)[:300])
                    failed.append(item)
            for item in failed:
                await asyncio.sleep(min(1.0, 0.05 * failures))
                producer = await self._started()
                item.future = await producer.send(item.topic, item.value, key=item.key)
            waiting = failed
        done = {id(item) for item in batch}
        self._pending = [s for s in self._pending if id(s) not in done]

    async def stop(self) -> None:
        """Close the producer (what the last checkpoint acknowledged was settled by it)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
