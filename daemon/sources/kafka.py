"""The ``kafka`` source: CloudTrail from Kafka topics, shared by replicas through a consumer group.

Organisations that already ship CloudTrail into Kafka (a Firehose/Lambda/EventBridge bridge, a
log shipper) point trailguard at the topic; several replicas in one consumer group split its
partitions.  A message may hold one CloudTrail record, an EventBridge envelope, a ``{"Records":
[...]}`` batch or any of these gzipped: :mod:`daemon.decode` detects the shape.  A message that is
not CloudTrail is reported to the dead-letter file and its offset counts as processed (Kafka cannot
usefully redeliver it).

**At-least-once.**  Auto-commit is off.  Each ``getmany`` result becomes one batch per partition
(position: topic, partition, first and last offset, assignment epoch).  Offsets are committed —
``last + 1`` of the contiguous acknowledged prefix, see :mod:`daemon.sources.kafka_offsets` — only
in :meth:`KafkaSource.acknowledge`, which the pipeline calls after a checkpoint covered the batch
and its alerts reached the sinks.  So after a crash, a rebalance or a broker outage the records
after the last commit are read again: never lost, sometimes processed twice.  Within one process
the pipeline's ``eventID`` de-duplication hides repeats; after a partition moves to another
replica, that replica may raise an alert the first one already raised (alert sinks should be
idempotent on the alert id, which is deterministic).  On revocation the rebalance listener only
commits what is already acknowledged; acknowledgements of a revoked assignment are ignored.

**Partitioning and detector state.**  Producers should key messages by the event's account id
(``recipientAccountId``, else ``userIdentity.accountId``; ``trailguard relay`` does), so every
event of an account reaches one partition.  Each partition's state follows it: the pipeline
restores it on assignment from the changelog topic ``<group_id>-<topic>-changelog``
(:mod:`daemon.changelog`, created here on first assignment) while the partition is paused, and
checkpoints it (changelog write, then offset commit) on revocation, before the listener lets the
partition go.  Assignment is ``sticky`` first (aiokafka has no cooperative protocol);
``group_instance_id`` gives static membership.

**Repartitioning.**  ``input_key`` says how the producer keys messages (``account``, ``principal`` or
``none`` for round-robin).  Each detector declares the key its state needs; with ``repartition:
auto`` a detector whose key differs runs on an internal topic ``<group_id>-<topic>-repartition-<key>``
(created before subscribing; :mod:`daemon.repartition`): the input partitions' owner forwards each
event such a detector could use there, keyed by that key, before the batch is processed, and the
same group consumes the internal topics (their partitions' state is changelogged like the input's).
:meth:`KafkaSource.acknowledge` commits input offsets only after the forwarder settled every send
issued so far, so no event is acknowledged before its internal copy is on the broker.

Broker outages: aiokafka reconnects by itself; a periodic probe (end offsets of the assignment)
drives :attr:`ready` and the ``trailguard_kafka_lag{topic,partition}`` gauge (high watermark minus
committed offset).  Commits that fail are kept and retried; nothing acknowledged is forgotten.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.helpers import create_ssl_context
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from daemon.changelog.log import StateChangelog
from daemon.changelog.producer import ChangelogError
from daemon.deadletter import InvalidReporter
from daemon.decode import decode_bytes
from daemon.repartition.forwarder import Forwarder, ForwardError
from daemon.repartition.routes import InputKey, Routes, plan_routes
from daemon.repartition.topics import RepartitionTopicError, ensure_internal_topics
from daemon.repartition.watermark import MARK_HEADER, decode_mark
from daemon.retry import Backoff, wait_or_stop
from daemon.sources.base import Source, SourceBatch
from daemon.sources.kafka_offsets import PartitionOffsets
from detectors.base import Detector
from detectors.durations import Duration
from detectors.event import MAX_RECORD_BYTES

__all__ = ["AssignmentChange", "KafkaPosition", "KafkaSource", "KafkaSourceConfig"]

#: Polls with more message bytes than this are decoded in a worker thread; smaller ones (a poll of
#: 500 ordinary events is ~0.7 MB, ~10 ms to decode) inline: with the GIL a thread overlaps nothing
#: and its hand-off costs more than it keeps the loop free for.
_THREAD_DECODE_BYTES: Final = 4 << 20
_ERRORS: Final = (KafkaError, OSError, TimeoutError)
_ASSIGNORS: Final = {"sticky": StickyPartitionAssignor, "roundrobin": RoundRobinPartitionAssignor,
                     "range": RangePartitionAssignor}


class KafkaSourceConfig(BaseModel):
    """Settings of one ``kafka`` source; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["kafka"] = "kafka"
    name: str | None = None
    #: ``"host1:9092,host2:9092"`` or a list.
    bootstrap_servers: str | list[str]
    #: Topics to consume; or ``topic_pattern`` (a regular expression), not both.
    topics: list[str] = Field(default_factory=list)
    topic_pattern: str | None = None
    group_id: str = Field("trailguard", min_length=1)
    #: Static membership (KIP-345): a stable name per instance, e.g. ``"${POD_NAME}"`` in a
    #: StatefulSet, so a restart within ``session_timeout_ms`` moves no partition.
    group_instance_id: str | None = Field(None, min_length=1)
    #: Offered assignors, preferred first; ``sticky`` keeps partitions where they are on rebalances
    #: (aiokafka has no cooperative protocol).  Keep ``roundrobin`` listed while older replicas run.
    partition_assignment_strategy: list[Literal["sticky", "roundrobin", "range"]] = Field(
        default_factory=lambda: ["sticky", "roundrobin"], min_length=1)
    #: Log each partition's detector and dedupe state to ``<group_id>-<topic>-changelog`` (compacted,
    #: created when missing) so whichever instance owns a partition next restores it; with it off,
    #: state lives only in ``state.path`` (which then must be shared by every replica).
    state_changelog: bool = True
    #: Replication factor of the internal topics this group creates (changelog and repartition).
    changelog_replication_factor: int = Field(3, ge=1)
    #: How producers key the input's messages: ``account`` (``trailguard relay`` does; each event's
    #: ``recipientAccountId``, else ``userIdentity.accountId``), ``principal``, or ``none``
    #: (round-robin, or any key trailguard does not know).
    input_key: InputKey = "account"
    #: ``auto``: detectors whose state key differs from ``input_key`` run on internal topics
    #: ``<group_id>-<topic>-repartition-<key>`` fed by this group; ``off``: every detector runs on the
    #: input partitions (those keyed otherwise then see only their partitions' share, logged at start).
    repartition: Literal["auto", "off"] = "auto"
    #: An input partition read to its end that got no new message for this long is *idle*: it no
    #: longer holds back the event time of internal partitions (:mod:`daemon.repartition.watermark`).
    repartition_idle_after: Duration = Field(10.0, gt=0)
    #: Retention of the internal repartition topics (their records are read once by this group).
    repartition_retention: Duration = Field(7 * 86400.0, gt=0)
    #: Largest changelog message (a partition's state is split into chunks of this size).
    changelog_chunk_bytes: int = Field(512 << 10, ge=1024, le=16 << 20)
    #: Kafka Streams' ``num.standby.replicas``: keep warm copies of the next N partitions after each
    #: owned one (tailing their changelog), so a take-over restores only what was written since.
    standby_replicas: int = Field(0, ge=0)
    #: How long a changelog write or a restore may stall before the checkpoint / restore fails.
    changelog_timeout: Duration = Field(60.0, gt=0)
    client_id: str = "trailguard"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    #: Most messages one poll returns (over all partitions).
    max_records: int = Field(500, ge=1)
    poll_timeout_ms: int = Field(1000, ge=1)
    #: How long the broker may hold a fetch waiting for data (aiokafka's default 500 ms adds latency).
    fetch_max_wait_ms: int = Field(100, ge=0)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_keyfile_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    session_timeout_ms: int = Field(45_000, ge=1000)
    heartbeat_interval_ms: int = Field(3_000, ge=100)
    max_poll_interval_ms: int = Field(300_000, ge=1000)
    request_timeout_ms: int = Field(40_000, ge=1000)
    metadata_max_age_ms: int = Field(300_000, ge=1000)
    #: How often connectivity and lag are probed, and how long a probe or a commit may take.
    health_interval: Duration = Field(10.0, gt=0)
    health_timeout: Duration = Field(5.0, gt=0)
    max_backoff: Duration = Field(30.0, gt=0)
    #: After stop, how long handed-out batches wait for their acknowledgement before the consumer closes.
    close_timeout: Duration = Field(10.0, ge=0)
    max_record_bytes: int = Field(MAX_RECORD_BYTES, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSourceConfig:
        if bool(self.topics) == bool(self.topic_pattern):
            raise ValueError("set exactly one of 'topics' (a list) or 'topic_pattern'")
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and (self.sasl_mechanism is None or not self.sasl_username or self.sasl_password is None):
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism, sasl_username "
                             "and sasl_password")
        if not sasl and (self.sasl_mechanism or self.sasl_username or self.sasl_password):
            raise ValueError("sasl_* settings need security_protocol SASL_PLAINTEXT or SASL_SSL")
        tls_files = (self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile)
        if any(tls_files) and not self.security_protocol.endswith("SSL"):
            raise ValueError("ssl_* files need security_protocol SSL or SASL_SSL")
        return self


class KafkaPosition(NamedTuple):
    """One partition's share of one poll: offsets ``first_offset..last_offset`` (inclusive)."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    epoch: int


@dataclass(frozen=True, slots=True)
class AssignmentChange:
    """Partitions this consumer gained or lost in a rebalance, as ``(topic, partition)`` pairs."""

    assigned: frozenset[tuple[str, int]]
    revoked: frozenset[tuple[str, int]]


AssignmentCallback = Callable[[AssignmentChange], Awaitable[None] | None]


class _Listener(ConsumerRebalanceListener):
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self.source._revoked(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self.source._assigned(assigned)


class KafkaSource(Source):
    """Consumes CloudTrail from Kafka in a consumer group (see the module doc)."""

    kind = "kafka"
    Config = KafkaSourceConfig

    def __init__(self, config: KafkaSourceConfig, invalid: InvalidReporter, name: str | None = None) -> None:
        super().__init__(name or config.name or config.type, invalid)
        self.config = config
        self.log = structlog.get_logger("trailguard.source.kafka").bind(source=self.name)
        self._consumer: AIOKafkaConsumer | None = None
        self._starting: AIOKafkaConsumer | None = None
        self._partitions: dict[TopicPartition, PartitionOffsets] = {}
        self._epoch = 0
        self._callbacks: list[AssignmentCallback] = []
        self._commit_lock = asyncio.Lock()
        self._stop_event = asyncio.Event()
        self._drained = asyncio.Event()
        self._polling = False
        self._connected = False
        self._outage = False
        self._probe_task: asyncio.Task[None] | None = None
        metrics = invalid.metrics
        self._lag = metrics.kafka_lag
        self._m_errors = metrics.source_errors.labels(source=self.name)
        self._m_up = metrics.source_up.labels(source=self.name)
        #: How old a batch's oldest record is when fetched (its producer timestamp → now): the part
        #: of an alert's latency spent before trailguard — producer batching, the broker, the fetch.
        self._fetch_age = metrics.stage_seconds.labels(stage="fetch_age")
        #: Where each detector runs (set by :meth:`plan_routes`), and the producer feeding internal topics.
        self.routes: Routes | None = None
        self._forwarder: Forwarder | None = None
        self._unsettled: list[Any] = []
        #: Per input partition, the offset after the last message forwarded (marks say "idle" from there).
        self._forwarded_end: dict[TopicPartition, int] = {}
        #: Per input partition, its end offset at the last probe and since when (monotonic) it is that.
        self._ends_since: dict[TopicPartition, tuple[int, float]] = {}
        self.changelog = (
            StateChangelog(self._connection_args(), group_id=config.group_id,
                           replication_factor=config.changelog_replication_factor,
                           chunk_bytes=config.changelog_chunk_bytes, timeout=config.changelog_timeout,
                           metrics=metrics, owner_generation=self._group_generation,
                           standby_replicas=config.standby_replicas)
            if config.state_changelog else None)

    def _group_generation(self) -> int:
        """This consumer's group generation (fences changelog writes of a stalled owner); -1 if unknown."""
        consumer = self._consumer or self._starting
        generation = getattr(getattr(consumer, "_coordinator", None), "generation", -1)
        return generation if isinstance(generation, int) else -1

    # -- public hooks ----------------------------------------------------------------------------
    def state_log(self) -> StateChangelog | None:
        """The changelog partition state follows (``None`` with ``state_changelog: false``)."""
        return self.changelog

    def plan_routes(self, detectors: Sequence[Detector]) -> Routes:
        """Decide where each detector runs (input or internal partitions); called once before start."""
        c = self.config
        routes = plan_routes(detectors, group_id=c.group_id, topics=c.topics, input_key=c.input_key,
                             repartition=c.repartition == "auto")
        self.routes = routes
        for key in routes.remote:
            self.invalid.metrics.repartition_produced.labels(key=key)
            self.invalid.metrics.repartition_consumed.labels(key=key)
        if routes.unrouted:
            why = ("repartition: off" if c.repartition == "off"
                   else "a topic_pattern source cannot be repartitioned (list its topics to repartition)")
            self.log.warning("detectors whose key (or organisation clock) needs repartitioning run on input "
                             "partitions only; with several partitions they see part of their key", reason=why,
                             input_key=c.input_key, detectors=dict(sorted(routes.unrouted.items())))
        if routes.repartitions:
            self._forwarder = Forwarder(self._connection_args(), routes, timeout=c.changelog_timeout,
                                        metrics=self.invalid.metrics,
                                        max_request_size=max(1 << 20, c.max_record_bytes + (64 << 10)))
            self.log.info("repartitioning", input_key=c.input_key,
                          topics=sorted(routes.internal_topics()),
                          detectors={key: sorted(names) for key, names in routes.remote.items()})
        return routes

    def partition_detectors(self, partition: str) -> frozenset[str] | None:
        """Names of the detectors whose state lives on ``topic/partition`` (``None``: every detector)."""
        if self.routes is None:
            return None
        return self.routes.detectors_for(partition.rpartition("/")[0])

    def merged_watermark(self, partition: str) -> bool:
        """True for a partition of an internal topic: its engine's watermark is merged from marks."""
        return self.routes is not None and self.routes.topic_key(partition.rpartition("/")[0]) is not None

    @property
    def partitioned(self) -> bool:
        """Work is split by partitions: an instance owning none has nothing to do."""
        return True

    def assigned_partitions(self) -> frozenset[tuple[str, int]]:
        """The ``(topic, partition)`` pairs this consumer owns right now."""
        return frozenset((tp.topic, tp.partition) for tp in self._partitions)

    def on_assignment(self, callback: AssignmentCallback) -> None:
        """Call ``callback`` (sync or async, and quick) on every rebalance.

        Revocations are reported after acknowledged offsets were committed and before another
        consumer may take the partitions; assignments before fetching starts.
        """
        self._callbacks.append(callback)

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """True while the last connectivity probe (or poll) succeeded."""
        return self._connected and not self._stopping

    async def start(self) -> None:
        """Reset the stop flags; the consumer connects (and reconnects) inside :meth:`batches`."""
        await super().start()
        self._stop_event.clear()
        self._drained.clear()

    async def stop(self) -> None:
        """Stop polling; the consumer leaves the group once handed-out batches are acknowledged."""
        if self._stopping:
            return
        await super().stop()
        self._stop_event.set()
        self._check_drained()
        # wait_closed() then waits until the consumer has committed what it can and left the group.
        self._close_when_drained(self._drained, self.config.close_timeout, self._undrained, self._close)

    def _undrained(self) -> None:
        outstanding = sum(p.outstanding for p in self._partitions.values())
        self.log.warning("kafka batches not acknowledged before close; they will be read again",
                         batches=outstanding)

    async def _close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.gather(self._probe_task, return_exceptions=True)
            self._probe_task = None
        await self._commit()
        if self._forwarder is not None:
            try:
                await self._forwarder.stop()
            except _ERRORS as error:
                self.log.warning("repartition producer did not close cleanly", error=type(error).__name__)
        consumer, self._consumer = self._consumer, None
        self._connected = False
        for tp in list(self._partitions):
            self._forget_lag(tp)
        self._partitions.clear()
        if consumer is not None:
            try:
                await consumer.stop()
            except _ERRORS as error:
                self.log.warning("kafka consumer did not close cleanly", error=type(error).__name__)
        if self.changelog is not None:
            try:
                await self.changelog.stop()
            except _ERRORS as error:
                self.log.warning("changelog clients did not close cleanly", error=type(error).__name__)

    def _check_drained(self) -> None:
        if self._stopping and not self._polling and all(not p.outstanding for p in self._partitions.values()):
            self._drained.set()

    # -- connecting ------------------------------------------------------------------------------
    def _consumer_args(self) -> dict[str, Any]:
        c = self.config
        args = self._connection_args()
        args.update({
            "group_id": c.group_id, "group_instance_id": c.group_instance_id,
            "partition_assignment_strategy": tuple(_ASSIGNORS[name] for name in c.partition_assignment_strategy),
            "enable_auto_commit": False, "auto_offset_reset": c.auto_offset_reset,
            "session_timeout_ms": c.session_timeout_ms, "heartbeat_interval_ms": c.heartbeat_interval_ms,
            "max_poll_interval_ms": c.max_poll_interval_ms, "fetch_max_wait_ms": c.fetch_max_wait_ms,
        })
        return args

    def _connection_args(self) -> dict[str, Any]:
        """Broker address, client id, timeouts, TLS and SASL: shared by the consumer and the changelog."""
        c = self.config
        servers = c.bootstrap_servers if isinstance(c.bootstrap_servers, str) else ",".join(c.bootstrap_servers)
        args: dict[str, Any] = {
            "bootstrap_servers": servers, "client_id": c.client_id,
            "request_timeout_ms": c.request_timeout_ms,
            "metadata_max_age_ms": c.metadata_max_age_ms, "security_protocol": c.security_protocol,
        }
        if c.security_protocol.endswith("SSL"):
            context = create_ssl_context(
                cafile=c.ssl_cafile, certfile=c.ssl_certfile, keyfile=c.ssl_keyfile,
                password=c.ssl_keyfile_password.get_secret_value() if c.ssl_keyfile_password else None)
            context.check_hostname = c.ssl_check_hostname
            args["ssl_context"] = context
        if c.security_protocol.startswith("SASL_"):
            assert c.sasl_password is not None
            args.update(sasl_mechanism=c.sasl_mechanism, sasl_plain_username=c.sasl_username,
                        sasl_plain_password=c.sasl_password.get_secret_value())
        return args

    async def _connect(self) -> bool:
        internal = await self._internal_topics()
        if internal is None:
            return False
        consumer = AIOKafkaConsumer(**self._consumer_args())
        listener = _Listener(self)
        if self.config.topic_pattern:
            consumer.subscribe(pattern=self.config.topic_pattern, listener=listener)
        else:
            consumer.subscribe(topics=[*self.config.topics, *internal], listener=listener)
        # The first assignment may arrive while start() runs: the rebalance callbacks use this one.
        self._starting = consumer
        try:
            await consumer.start()
        except _ERRORS as error:
            try:
                await consumer.stop()
            except _ERRORS:
                pass
            self._down(error)
            return False
        self._consumer = consumer
        self._up()
        self._probe_task = asyncio.create_task(self._probe(), name=f"kafka-probe:{self.name}")
        return True

    async def _internal_topics(self) -> list[str] | None:
        """The repartition topics to subscribe to, created first (``None``: not yet, retry)."""
        routes = self.routes
        if routes is None or not routes.repartitions:
            return []
        internal = routes.internal_topics()
        try:
            counts = await ensure_internal_topics(self._connection_args(), internal,
                                         replication_factor=self.config.changelog_replication_factor,
                                         retention_ms=int(self.config.repartition_retention * 1000),
                                         timeout=self.config.health_timeout * 2)
        except (RepartitionTopicError, *_ERRORS) as error:
            self._down(error)
            return None
        if self._forwarder is not None:
            self._forwarder.partitions = counts
        return sorted(internal)

    def _internal_batch(self, tp: TopicPartition, messages: list[Any], epoch: int) -> SourceBatch:
        """A batch of an internal topic: its forwarded events, and its marks apart (never decoded)."""
        records: list[Any] = []
        offsets: list[int] = []
        marks: list[Any] = []
        base = f"{tp.topic}/{tp.partition}@"
        for message in messages:
            if any(name == MARK_HEADER for name, _ in message.headers or ()):
                mark = decode_mark(message.value)
                if mark is not None:
                    marks.append(mark)
                continue
            if not message.value:
                continue
            found, _ = decode_bytes(message.value, f"{base}{message.offset}", self.invalid,
                                    max_record_bytes=self.config.max_record_bytes)
            records.extend(found)
            offsets.extend([message.offset] * len(found))
        position = KafkaPosition(tp.topic, tp.partition, messages[0].offset, messages[-1].offset, epoch)
        key = f"{tp.topic}/{tp.partition}"
        return SourceBatch(self.name, records, key, offsets, position, partition=key, watermarks=marks or None)

    async def _send_marks(self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> None:
        """Each owned input partition's progress to every internal partition.

        *Idle*: read to its end, and no new message for ``repartition_idle_after`` (a partition that
        is merely caught up while its producer is still writing a backlog is not idle).
        """
        routes, forwarder = self.routes, self._forwarder
        if routes is None or forwarder is None:
            return
        now = asyncio.get_running_loop().time()
        for tp, end in ends.items():
            state = self._partitions.get(tp)
            if state is None or routes.topic_key(tp.topic) is not None:
                continue
            last_end, since = self._ends_since.get(tp, (-1, now))
            if end != last_end:
                self._ends_since[tp] = (end, now)
                since = now
            read = self._forwarded_end.get(tp, state.committed or 0)
            idle = read >= end and now - since >= self.config.repartition_idle_after
            count = len(consumer.partitions_for_topic(tp.topic) or ())
            await forwarder.mark(tp.topic, tp.partition, count, idle=idle)

    async def _forward(self, consumer: AIOKafkaConsumer, tp: TopicPartition, messages: list[Any],
                       batch: SourceBatch) -> bool:
        """Forward an input batch to its routes, or count a batch read from an internal topic.

        False when forwarding failed: the partition is rewound to the batch, which is read again.
        """
        routes, forwarder = self.routes, self._forwarder
        if routes is None or forwarder is None:
            return True
        key = routes.topic_key(tp.topic)
        if key is not None:
            self.invalid.metrics.repartition_consumed.labels(key=key).inc(len(batch.records))
            return True
        try:
            count = len(consumer.partitions_for_topic(tp.topic) or ())
            await forwarder.forward(tp.topic, tp.partition, count, batch.records, batch.origin)
            self._forwarded_end[tp] = messages[-1].offset + 1
        except _ERRORS as error:
            self._down(error)
            if self._partitions.get(tp) is not None:
                consumer.seek(tp, messages[0].offset)
            return False
        return True

    def _rewind(self, fetched: list[tuple[TopicPartition, list[Any]]]) -> None:
        """Seek fetched-but-not-handed-out partitions back to their first message (read again)."""
        consumer = self._consumer
        for tp, messages in fetched:
            if messages and consumer is not None and tp in self._partitions:
                consumer.seek(tp, messages[0].offset)

    def _up(self) -> None:
        if self._outage:
            self.log.info("kafka broker reachable again")
            self._outage = False
        self._connected = True
        self._m_up.set(1)

    def _down(self, error: BaseException) -> None:
        self._m_errors.inc()
        self._m_up.set(0)
        self._connected = False
        if not self._outage:
            self._outage = True
            self.log.warning("kafka broker unreachable; retrying", error=type(error).__name__,
                             detail=str(error)[:300])

    async def _pause(self, failures: int) -> None:
        await wait_or_stop(Backoff(maximum=self.config.max_backoff).delay(failures + 1), self._stop_event)

    # -- batches ---------------------------------------------------------------------------------
    async def batches(self) -> AsyncIterator[SourceBatch]:
        """One batch per partition per poll, until :meth:`stop`."""
        self._polling = True
        failures = 0
        try:
            while not self._stopping:
                if self._consumer is None:
                    if not await self._connect():
                        failures += 1
                        await self._pause(failures)
                    continue
                try:
                    data = await self._consumer.getmany(timeout_ms=self.config.poll_timeout_ms,
                                                        max_records=self.config.max_records)
                except _ERRORS as error:
                    failures += 1
                    self._down(error)
                    await self._pause(failures)
                    continue
                failures = 0
                unsent = list(data.items())
                for tp, messages in data.items():
                    unsent.pop(0)
                    if not messages:
                        continue
                    state = self._partitions.get(tp)
                    if state is None:
                        continue  # revoked while these were fetched: the new owner reads them
                    if self.routes is not None and self.routes.topic_key(tp.topic) is not None:
                        batch = self._internal_batch(tp, messages, state.epoch)
                    else:
                        batch = await self._batch(tp, messages, state.epoch)
                    if not await self._forward(self._consumer, tp, messages, batch):
                        self._rewind(unsent)
                        failures += 1
                        await self._pause(failures)
                        break
                    if self._partitions.get(tp) is not state:
                        continue
                    state.emitted(messages[0].offset, messages[-1].offset)
                    yield batch
        finally:
            self._polling = False
            self._check_drained()

    async def _batch(self, tp: TopicPartition, messages: list[Any], epoch: int) -> SourceBatch:
        first = messages[0]
        if first.timestamp_type == 0 and first.timestamp > 0:  # CreateTime, set by the producer
            self._fetch_age.observe(max(0.0, time.time() - first.timestamp / 1000))
        size = sum(len(m.value) for m in messages if m.value)
        if size > _THREAD_DECODE_BYTES:
            records, locations = await asyncio.to_thread(self._decode, tp, messages)
        else:
            records, locations = self._decode(tp, messages)
        position = KafkaPosition(tp.topic, tp.partition, messages[0].offset, messages[-1].offset, epoch)
        key = f"{tp.topic}/{tp.partition}"
        return SourceBatch(self.name, records, key, locations, position, partition=key)

    def _decode(self, tp: TopicPartition, messages: list[Any]) -> tuple[list[Any], list[int]]:
        """Records of every message and, per record, its message's offset (the dead-letter location)."""
        records: list[Any] = []
        offsets: list[int] = []
        base = f"{tp.topic}/{tp.partition}@"
        invalid, limit = self.invalid, self.config.max_record_bytes
        for message in messages:
            value = message.value
            if not value:
                continue  # tombstone or empty message
            found, _ = decode_bytes(value, f"{base}{message.offset}", invalid, max_record_bytes=limit)
            if len(found) == 1:
                records.append(found[0])
                offsets.append(message.offset)
            elif found:
                records.extend(found)
                offsets.extend([message.offset] * len(found))
        return records, offsets

    # -- acknowledgement and commits -------------------------------------------------------------
    async def acknowledge(self, positions: list[Any]) -> None:
        """Advance each partition's acknowledged prefix and commit it (``offset + 1``).

        With repartitioning, only once every forwarded event is acknowledged by the broker: until
        then the positions wait (in order) for the next call.
        """
        if self._forwarder is not None:
            self._unsettled.extend(positions)
            try:
                await self._forwarder.settle()
            except ForwardError as error:
                self._m_errors.inc()
                self.log.warning("forwarded events not yet acknowledged; input offsets wait",
                                 detail=str(error)[:300], positions=len(self._unsettled))
                return
            positions, self._unsettled = self._unsettled, []
        for position in positions:
            state = self._partitions.get(TopicPartition(position.topic, position.partition))
            if state is None or state.epoch != position.epoch:
                continue  # revoked since: the partition's new owner reads these records again
            state.acknowledged(position.first_offset, position.last_offset)
        await self._commit()
        self._check_drained()

    async def _commit(self, only: Sequence[TopicPartition] | None = None) -> None:
        """Commit acknowledged offsets (within ``health_timeout``); a failed commit is retried later."""
        consumer = self._consumer
        if consumer is None:
            return
        async with self._commit_lock:
            offsets: dict[TopicPartition, int] = {}
            for tp in only if only is not None else list(self._partitions):
                state = self._partitions.get(tp)
                target = state.to_commit() if state is not None else None
                if target is not None:
                    offsets[tp] = target
            if not offsets:
                return
            try:
                await asyncio.wait_for(consumer.commit(offsets), self.config.health_timeout)
            except CommitFailedError:
                self.log.warning("kafka commit refused after a rebalance; those records will be read again",
                                 partitions=len(offsets))
                return
            except _ERRORS as error:
                self._m_errors.inc()
                self.log.warning("kafka commit failed; will retry", error=type(error).__name__,
                                 detail=str(error)[:300], partitions=len(offsets))
                return
            for tp, offset in offsets.items():
                state = self._partitions.get(tp)
                if state is not None:
                    state.committed = offset

    # -- rebalances ------------------------------------------------------------------------------
    async def _revoked(self, revoked: Sequence[TopicPartition]) -> None:
        owned = [tp for tp in revoked if tp in self._partitions]
        if owned:
            # First the pipeline checkpoints (state to the changelog, offsets committed while the
            # partitions are still ours) and drops their state, then what is left is committed.
            await self._notify(AssignmentChange(frozenset(), frozenset((tp.topic, tp.partition) for tp in owned)))
        await self._commit(owned)
        for tp in owned:
            del self._partitions[tp]
            self._forget_lag(tp)
            self._forwarded_end.pop(tp, None)
            self._ends_since.pop(tp, None)
            if self._forwarder is not None:
                self._forwarder.forget(tp.topic, tp.partition)
        if owned:
            self.log.info("kafka partitions revoked", partitions=len(owned))
        self._check_drained()

    async def _assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self._epoch += 1
        new = [tp for tp in assigned if tp not in self._partitions]
        for tp in assigned:
            self._partitions[tp] = PartitionOffsets(self._epoch)
        self.log.info("kafka partitions assigned", partitions=len(assigned))
        consumer = self._consumer or self._starting
        if new and consumer is not None:
            # Nothing of a new partition is fetched until its state is restored (the callbacks).
            consumer.pause(*new)
        try:
            await self._prepare_and_notify(new)
            await self._settle_standby(assigned)
        finally:
            if new and consumer is not None and consumer in (self._consumer, self._starting):
                consumer.resume(*[tp for tp in new if tp in self._partitions])

    async def _prepare_and_notify(self, new: list[TopicPartition]) -> None:
        consumer = self._consumer or self._starting
        if new and self.changelog is not None and consumer is not None:
            for topic in sorted({tp.topic for tp in new}):
                count = len(consumer.partitions_for_topic(topic) or ())
                try:
                    await self.changelog.ensure_topic(topic, count)
                except ChangelogError as error:
                    self.log.error("changelog topic unusable; partition state cannot be restored",
                                   detail=str(error))
                except _ERRORS as error:
                    self.log.error("changelog topic could not be created; restores will retry",
                                   error=type(error).__name__, detail=str(error)[:300])
        if new:
            await self._notify(AssignmentChange(frozenset((tp.topic, tp.partition) for tp in new), frozenset()))

    async def _settle_standby(self, assigned: Sequence[TopicPartition]) -> None:
        """Restores are over: let the changelog place its standby copies for this assignment."""
        if self.changelog is not None:
            await self.changelog.settle({f"{tp.topic}/{tp.partition}" for tp in assigned})

    def on_partitions(self, callback: Any) -> None:
        """Rebalances as ``callback(assigned, revoked)`` with ``topic/partition`` keys (pipeline state)."""

        def adapt(change: AssignmentChange) -> Any:
            return callback({f"{t}/{p}" for t, p in change.assigned}, {f"{t}/{p}" for t, p in change.revoked})

        self.on_assignment(adapt)

    async def _notify(self, change: AssignmentChange) -> None:
        for callback in self._callbacks:
            try:
                result = callback(change)
                if inspect.isawaitable(result):
                    await result
            except Exception as error:
                self.log.error("kafka assignment callback failed", error=type(error).__name__,
                               detail=str(error)[:300], exc_info=True)

    # -- health and lag --------------------------------------------------------------------------
    async def _probe(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval)
            consumer = self._consumer
            if consumer is None:
                return
            timeout = self.config.health_timeout
            try:
                partitions = list(self._partitions)
                if partitions:
                    ends = await asyncio.wait_for(consumer.end_offsets(partitions), timeout)
                    await self._export_lag(consumer, ends, timeout)
                    await self._send_marks(consumer, ends)
                else:
                    await asyncio.wait_for(consumer.topics(), timeout)
            except asyncio.CancelledError:
                raise
            except _ERRORS as error:
                self._down(error)
                continue
            self._up()
            await self._commit()  # retries a commit that failed during an outage

    async def _export_lag(self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int], timeout: float) -> None:
        for tp, end in ends.items():
            state = self._partitions.get(tp)
            if state is None:
                continue
            if state.committed is None:
                committed = await asyncio.wait_for(consumer.committed(tp), timeout)
                if committed is None:
                    committed = (await asyncio.wait_for(consumer.beginning_offsets([tp]), timeout)).get(tp, 0)
                if self._partitions.get(tp) is state and state.committed is None:
                    state.committed = committed
            self._lag.labels(topic=tp.topic, partition=str(tp.partition)).set(max(0, end - (state.committed or 0)))

    def _forget_lag(self, tp: TopicPartition) -> None:
        try:
            self._lag.remove(tp.topic, str(tp.partition))
        except KeyError:
            pass
