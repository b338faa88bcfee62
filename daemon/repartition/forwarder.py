"""Produces input events to the internal repartition topics and knows when the broker has them.

The input partitions' owner calls :meth:`Forwarder.forward` for each input batch before the batch
is processed: every record that is a valid event and that some route admits is produced once per
route, keyed by the event's value of that route's key (:mod:`daemon.repartition.keys`).  Events are
appended to one record batch per internal partition and each batch is sent whole
(``send_batch``), on the partition ``producer.send(key=...)`` would have chosen (the default
partitioner's murmur2 of the key, memoised per key): aiokafka's per-message ``send`` cost ~60 µs
of CPU per event here, a batch ~20 µs (docs/performance.md, Round 4 "Kafka").  Each batch is kept
(topic, partition, its keys and values) until the broker acknowledged it.
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
from aiokafka.partitioner import DefaultPartitioner

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
#: Largest record batch filled per internal partition (aiokafka's default, 16 KiB, is a dozen events:
#: a second batch for the same partition then waits for the first to leave the accumulator).
_BATCH_BYTES: Final = 256 << 10
#: Message keys whose partition is remembered (per internal topic) before the memo starts over.
_MAX_MEMO_KEYS: Final = 65_536


def _retrieve(future: asyncio.Future[Any]) -> None:
    """A mark that failed is replaced by the next one: only consume its outcome."""
    if not future.cancelled():
        future.exception()


class ForwardError(Exception):
    """Forwarded events were not acknowledged in time; the input stays uncommitted and is retried."""


class _Send:
    """One sent record batch: where it went and what it held (to send it again if it failed)."""

    __slots__ = ("future", "items", "partition", "seq", "topic")

    def __init__(self, seq: int, topic: str, partition: int, items: list[tuple[bytes, bytes]],
                 future: asyncio.Future[Any]) -> None:
        self.seq, self.topic, self.partition, self.items, self.future = seq, topic, partition, items, future


class _Open:
    """A record batch being filled for one internal partition during one :meth:`Forwarder.forward`."""

    __slots__ = ("builder", "items")

    def __init__(self, builder: Any) -> None:
        self.builder = builder
        self.items: list[tuple[bytes, bytes]] = []


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
        #: Internal topic → message key → its partition (what ``producer.send(key=...)`` would pick).
        self._placed: dict[str, dict[bytes, int]] = {}
        self._partitioner = DefaultPartitioner()
        #: Newest event time read from each input partition, and the last mark sent for it.
        self._times: dict[tuple[str, int], float] = {}
        self._marked: dict[tuple[str, int], tuple[float, bool]] = {}

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(**self.connection, acks="all", linger_ms=5,
                                        max_request_size=self.max_request_size,
                                        max_batch_size=min(_BATCH_BYTES, self.max_request_size))
            await asyncio.wait_for(producer.start(), self.timeout)
            self._producer = producer
        return self._producer

    @property
    def pending(self) -> int:
        """Forwarded events not yet known to be acknowledged."""
        return sum(len(send.items) for send in self._pending)

    def _partition_of(self, name: str, message: bytes, count: int) -> int:
        """The partition of internal topic ``name`` (``count`` partitions) that ``message`` keys go to."""
        placed = self._placed.get(name)
        if placed is None or len(placed) >= _MAX_MEMO_KEYS:
            placed = self._placed[name] = {}
        target = placed.get(message)
        if target is None:
            every = list(range(count))
            target = placed[message] = self._partitioner(message, every, every)
        return target

    async def _send(self, producer: AIOKafkaProducer, name: str, target: int, batch: _Open) -> None:
        future = await producer.send_batch(batch.builder, name, partition=target)
        self._seq += 1
        self._pending.append(_Send(self._seq, name, target, batch.items, future))

    async def forward(self, topic: str, partition: int, of: int, records: list[Any], origin: str) -> int:
        """Produce the events of ``records`` (read from input ``topic``/``partition`` of ``of``) to their
        routes, then a mark of the partition's progress; returns the events sent."""
        routes = self.routes
        producer = await self._started()
        sent = 0
        newest = self._times.get((topic, partition), _NEG_INF)
        counts = self.partitions
        open_batches: dict[tuple[str, int], _Open] = {}
        produced = dict.fromkeys(self._produced, 0)
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
                produced[key] += 1
                sent += 1
                count = counts.get(name)
                if count is None:  # partition count not known yet: the producer's own partitioning
                    future = await producer.send(name, value, key=message)
                    self._seq += 1
                    self._pending.append(_Send(self._seq, name, -1, [(message, value)], future))
                    continue
                target = self._partition_of(name, message, count)
                batch = open_batches.get((name, target))
                if batch is None:
                    batch = open_batches[(name, target)] = _Open(producer.create_batch())
                if batch.builder.append(key=message, value=value, timestamp=None) is None:  # full
                    await self._send(producer, name, target, batch)
                    batch = open_batches[(name, target)] = _Open(producer.create_batch())
                    batch.builder.append(key=message, value=value, timestamp=None)
                batch.items.append((message, value))
        for (name, target), batch in open_batches.items():
            await self._send(producer, name, target, batch)
        for key, number in produced.items():
            if number:
                self._produced[key].inc(number)
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
                item.future = await self._resend(await self._started(), item)
            waiting = failed
        done = {id(item) for item in batch}
        self._pending = [s for s in self._pending if id(s) not in done]

    async def _resend(self, producer: AIOKafkaProducer, item: _Send) -> asyncio.Future[Any]:
        """Send a failed batch's events again, to the same partition."""
        if item.partition < 0:
            key, value = item.items[0]
            return await producer.send(item.topic, value, key=key)
        builder = producer.create_batch()
        for key, value in item.items:
            builder.append(key=key, value=value, timestamp=None)
        return await producer.send_batch(builder, item.topic, partition=item.partition)

    async def stop(self) -> None:
        """Close the producer (what the last checkpoint acknowledged was settled by it)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
