"""Source → decode → dedupe → detectors → alerts → sinks, joined by bounded queues.

Three kinds of task, one asyncio loop:

* a *pump* per source moves :class:`SourceBatch` es into the ingest queue (bounded: a full queue
  suspends the source, which is the backpressure);
* the *processor* validates records into :class:`Event` s, drops duplicates, runs the detection
  engine, folds the alerts into incidents (:mod:`daemon.delivery.incidents`: only openings and
  updates go on) and puts the notifications into the alert queue (bounded too);
* the *dispatcher* task hands alerts to the sinks.

The checkpoint order is written down once, here, and nowhere else:

    1. pause the processor between two batches, snapshot detector state, incidents, dedupe record
       and source positions, and let the processor go on (each changed Kafka partition's state is
       then snapshotted in a pause of its own, between two slices: see :meth:`Pipeline.checkpoint`);
    2. wait until every alert the snapshot's batches produced is handed to the sinks, and flush
       the sinks (fsync, spool commit);
    3. write the snapshot atomically (the state file, and each changed Kafka partition's state to
       its changelog topic, waiting for the broker's acknowledgement);
    4. acknowledge the input the snapshot covers (delete SQS messages, commit Kafka offsets).

So restored state is never ahead of acknowledged input, and acknowledged input never has alerts
that were not handed to a sink: a batch of alerts the dispatcher failed on is not counted as
handed over, and a dead dispatcher fails the checkpoint (and ``/healthz``) instead of letting it
acknowledge.

**Partitions.**  A Kafka partition's state (its named parts, :mod:`daemon.changelog.parts`: detector
engine, dedupe record and incidents — a partition's alerts fold into its own incidents, closed by
its own watermark) exists only while this instance owns the partition: it is restored on
assignment, before any of the partition's batches is processed (``/readyz`` is false meanwhile),
and on revocation the pipeline runs the checkpoint above for everything, then drops the revoked
state.  A batch of a partition this instance does not own (queued before a revocation) is dropped
unprocessed and unacknowledged: its new owner reads it again.  State is never created by a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgpack
import structlog

from daemon.accounts import AccountMap
from daemon.changelog.log import ChangelogFenced
from daemon.changelog.parts import PartitionState, PartRegistry
from daemon.changelog.recovery import CachedState
from daemon.config import PipelineConfig
from daemon.deadletter import InvalidReporter
from daemon.dedupe import Deduplicator
from daemon.delivery.dispatch import Dispatcher
from daemon.delivery.incidents import Incidents
from daemon.gc_pauses import GcPauses
from daemon.metrics import Metrics
from daemon.reorder import SortedRunBuffer
from daemon.repartition.watermark import MergedWatermarkEngine
from daemon.sources.base import Source, SourceBatch
from daemon.state import StateStore
from detectors.alert import Alert
from detectors.engine import DetectionEngine
from detectors.event import Event, InvalidEvent

__all__ = ["Pipeline"]

_END = object()
#: Put by the pump watcher when every source is finite and exhausted (``_END`` is a stop request).
_INPUT_DONE = object()
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _safe_name(partition: str) -> str:
    """A file-system-safe directory name for a partition key (``topic/3`` → ``topic_3``)."""
    return _UNSAFE.sub("_", partition)
_MAX_ACCOUNTS = 10_000
#: Records detected between two hand-offs of alerts (bounds alert latency inside a big batch).
_SLICE = 128


class Pipeline:
    """Owns the queues, the tasks and the checkpoint; :meth:`stop` drains under a deadline."""

    def __init__(
        self,
        *,
        sources: Sequence[Source],
        engine: DetectionEngine,
        dispatcher: Dispatcher,
        invalid: InvalidReporter,
        metrics: Metrics,
        config: PipelineConfig,
        store: StateStore | None = None,
        checkpoint_interval: float = 10.0,
        reorder: bool = False,
        accounts: AccountMap | None = None,
        incidents: Incidents | None = None,
        gc_pauses: GcPauses | None = None,
    ) -> None:
        self.sources = list(sources)
        self.engine = engine
        self.dispatcher = dispatcher
        self.invalid = invalid
        self.metrics = metrics
        self.config = config
        self.store = store
        self.checkpoint_interval = checkpoint_interval
        #: Collector pauses timed meanwhile, exported after each checkpoint (``None``: not timed).
        self.gc_pauses = gc_pauses
        #: ``trailguard_stage_seconds`` by stage: the path of an alert through the pipeline.
        self._stage = {stage: metrics.stage_seconds.labels(stage=stage)
                       for stage in ("ingest_wait", "detect", "fold", "alert_wait", "deliver")}
        #: When each alert batch still in the alert queue was put there (the queue is FIFO).
        self._alert_put_times: deque[float] = deque()
        #: Stamps account name/environment/owner/tags on alerts before they are routed.
        self.accounts = accounts if accounts else None
        self.dedupe = Deduplicator(config.dedupe_horizon, config.dedupe_max_ids)
        #: Folds alerts into incidents; checkpointed with the detector state (on by default).
        self.incidents = incidents if incidents is not None else Incidents()
        self.reorder = SortedRunBuffer(config.allowed_lateness) if reorder else None
        self.ingest: asyncio.Queue[Any] = asyncio.Queue(config.queue_size)
        self.alerts: asyncio.Queue[Any] = asyncio.Queue(config.alert_queue_size)
        self.log = structlog.get_logger("trailguard.pipeline")
        self._lock = asyncio.Lock()
        #: Serialises checkpoints (and partition hand-overs), which finish outside ``_lock``.
        self._checkpoint_lock = asyncio.Lock()
        #: Alert batches put in the alert queue / handed to the sinks (checkpoint bookkeeping).
        self._emitted = 0
        self._delivered = 0
        self._delivery_progress = asyncio.Event()
        self._pending: dict[int, list[Any]] = defaultdict(list)  # id(source) -> positions
        self._sources_by_name = {s.name: s for s in self.sources}
        self._pumps: list[asyncio.Task[None]] = []
        self._processor: asyncio.Task[None] | None = None
        self._dispatch_task: asyncio.Task[None] | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._account_times: dict[str, float] = {}
        #: Partition-local state (Kafka): the named parts of every owned ``topic/partition``.
        self.partitions: dict[str, PartitionState] = {}
        #: What every partition's state is made of; register a part here to make it follow partitions.
        self.state_parts = PartRegistry()
        self.state_parts.register("engine", self._fork_engine)
        self.state_parts.register("dedupe", lambda: Deduplicator(config.dedupe_horizon, config.dedupe_max_ids))
        # A partition's alerts fold into its own incidents, so incident state follows the partition.
        self.state_parts.register("incidents", lambda: self.incidents.fork())
        #: Partitions being restored now, and partitions whose restore failed (reason).
        self.restoring: set[str] = set()
        self.restore_failures: dict[str, str] = {}
        self._partition_logs: dict[str, Any] = {}
        for source in self.sources:
            source.on_partitions(functools.partial(self._on_partitions, source))
            plan_routes = getattr(source, "plan_routes", None)
            if plan_routes is not None:  # Kafka: which detectors run on which topics' partitions
                plan_routes(engine.detectors)
        self.finished = asyncio.Event()
        self.restored = False
        self.started = False
        #: ``time.monotonic()`` when :meth:`start` began (``None`` before): replay's clock for its rate.
        self.started_at: float | None = None
        self.last_progress = time.monotonic()
        self.counts = {"received": 0, "processed": 0, "invalid": 0, "duplicate": 0, "alerts": 0}
        self.alerts_by_detector: dict[str, int] = defaultdict(int)
        #: Per (detector, rule): alerts raised, incidents opened, updates (for the replay summary).
        self.by_rule: dict[tuple[str, str], list[int]] = {}
        self.rule_titles: dict[tuple[str, str], str] = {}
        #: Sources whose pump died (source name → reason): ``/healthz`` and ``/readyz`` fail.
        self.failed_sources: dict[str, str] = {}
        #: Why the last checkpoint failed (``None`` once one succeeds): ``/healthz`` fails meanwhile.
        self.checkpoint_error: str | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def restore(self) -> None:
        """Load the last checkpoint (if any) into detectors, dedupe, reorder buffer and sources."""
        if self.store is not None:
            body = self.store.load()
            if body:
                self.engine.restore(body.get("engine") or {})
                self.dedupe.restore(body.get("dedupe") or {})
                self.dispatcher.restore(body.get("dispatch") or {})
                self.incidents.restore(body.get("incidents") or {})
                if self.reorder is not None and body.get("reorder"):
                    self.reorder.restore(body["reorder"])
                positions = body.get("positions") or {}
                for name, source in self._sources_by_name.items():
                    if name in positions:
                        source.restore_positions(positions[name])
                self.log.info("state restored from checkpoint", path=str(self.store.path),
                              dedupe_ids=len(self.dedupe), detectors=len(self.engine.detectors))
        self.restored = True

    async def start(self) -> None:
        """Restore, start sinks then sources, and launch the tasks."""
        self.started_at = time.monotonic()
        self.restore()
        await self.dispatcher.start()
        self._processor = asyncio.create_task(self._process(), name="processor")
        self._dispatch_task = asyncio.create_task(self._dispatch(), name="dispatcher")
        for task in (self._processor, self._dispatch_task):
            task.add_done_callback(self._task_ended)
        for source in self.sources:
            await source.start()
            self.metrics.source_up.labels(source=source.name).set(1)
            self._pumps.append(asyncio.create_task(self._pump(source), name=f"pump:{source.name}"))
        if self.checkpoint_interval > 0:
            self._checkpoint_task = asyncio.create_task(self._checkpoint_loop(), name="checkpointer")
        self._watch_task = asyncio.create_task(self._watch_pumps(), name="pump-watch")
        self.started = True

    @property
    def ready(self) -> bool:
        """True once state is restored and every source is started and connected."""
        return self.started and self.restored and all(s.ready for s in self.sources)

    def healthy(self, stall_after: float) -> tuple[bool, str]:
        """Alive and making progress: tasks running, and not stuck with input waiting."""
        for task in (self._processor, self._dispatch_task):
            if task is not None and task.done() and not self.finished.is_set():
                return False, f"task {task.get_name()} stopped"
        if self.failed_sources:
            return False, "; ".join(f"source {name} failed: {why}" for name, why in self.failed_sources.items())
        if self.checkpoint_error is not None:
            return False, f"checkpoint failed: {self.checkpoint_error}"
        if self.restore_failures:
            partition, reason = next(iter(self.restore_failures.items()))
            return False, f"state of partition {partition} could not be restored: {reason}"
        if self.ingest.qsize() and time.monotonic() - self.last_progress > stall_after:
            return False, f"no batch processed for {time.monotonic() - self.last_progress:.0f}s with input waiting"
        return True, "ok"

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """A processor or dispatcher that ends by an exception is logged at ERROR, never silently."""
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.log.error("pipeline task died; /healthz fails and unacknowledged input will be redelivered",
                           task=task.get_name(), error=type(error).__name__, detail=str(error)[:300],
                           exc_info=error)
    def not_ready_reason(self) -> str | None:
        """Why ``/readyz`` must say no on the partition side: restoring, or owning nothing."""
        if self.restoring:
            return f"restoring state of {len(self.restoring)} partition(s)"
        for source in self.sources:
            if not getattr(source, "partitioned", False):
                continue
            assigned = {f"{topic}/{number}" for topic, number in source.assigned_partitions()}  # type: ignore[attr-defined]
            if not assigned:
                return f"source {source.name} owns no partition (waiting for an assignment)"
            waiting = assigned - self.partitions.keys() - self.restore_failures.keys()
            if waiting:  # assigned, and the restore has not started yet
                return f"restoring state of {len(waiting)} partition(s)"
        return None

    async def _watch_pumps(self) -> None:
        if self._pumps:
            await asyncio.gather(*self._pumps, return_exceptions=True)
        if all(s.finite for s in self.sources):
            await self.ingest.put(_INPUT_DONE)

    async def stop(self, deadline: float) -> None:
        """Stop sources, drain the queues, flush sinks, checkpoint — all within ``deadline`` s."""
        started = time.monotonic()
        input_over = self.finished.is_set()  # finite input ended by itself (not a stop request)
        draining = False
        try:
            async with asyncio.timeout(deadline):
                for source in self.sources:
                    await source.stop()
                if self._pumps:
                    await asyncio.gather(*self._pumps, return_exceptions=True)
                if self._processor is not None and not self._processor.done():
                    await self.ingest.put(_END)
                    await self._processor
                await self.checkpoint()
                for source in self.sources:
                    await source.wait_closed()
                if input_over:
                    # Finite input is over: deliver what is spooled before exiting (a stop request
                    # keeps durable spools for the next start instead).
                    draining = True
                    await self.dispatcher.drain()
        except TimeoutError:
            if draining:  # input acknowledged, alerts spooled: the dispatcher reports what is left
                self.log.warning("shutdown deadline passed while delivering spooled alerts", deadline=deadline,
                                 undelivered=self.dispatcher.pending())
            else:
                self.log.error("shutdown deadline passed; input not acknowledged will be redelivered",
                               deadline=deadline, queued_batches=self.ingest.qsize(),
                               queued_alert_batches=self.alerts.qsize())
        except RuntimeError as error:
            self.log.error("final checkpoint not written; input not acknowledged will be redelivered",
                           detail=str(error)[:300])
        finally:
            for task in (*self._pumps, self._processor, self._dispatch_task, self._checkpoint_task,
                         self._watch_task):
                if task is not None and not task.done():
                    task.cancel()
            await self.dispatcher.stop()
            for source in self.sources:
                self.metrics.source_up.labels(source=source.name).set(0)
            self.log.info("pipeline stopped", seconds=round(time.monotonic() - started, 3), **self.counts)

    # -- tasks -----------------------------------------------------------------------------
    async def _pump(self, source: Source) -> None:
        received = self.metrics.events_received.labels(source=source.name)
        try:
            async for batch in source.batches():
                received.inc(len(batch.records))
                self.counts["received"] += len(batch.records)
                batch.received_at = time.perf_counter()
                await self.ingest.put((source, batch))
                self.metrics.queue_depth.labels(stage="ingest").set(self.ingest.qsize())
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self.metrics.source_errors.labels(source=source.name).inc()
            self.metrics.source_up.labels(source=source.name).set(0)
            self.failed_sources[source.name] = f"{type(error).__name__}: {str(error)[:200]}"
            self.log.error("source failed", source=source.name, error=type(error).__name__,
                           detail=str(error)[:300], exc_info=True)
            return
        if not source.finite and not source.stopping:
            # An endless source whose batches ended by themselves reads nothing any more.
            self.metrics.source_up.labels(source=source.name).set(0)
            self.failed_sources[source.name] = "stopped producing batches"
            self.log.error("source failed", source=source.name, error="ended",
                           detail="the source stopped producing batches without being stopped")

    async def _process(self) -> None:
        while True:
            item = await self.ingest.get()
            self.metrics.queue_depth.labels(stage="ingest").set(self.ingest.qsize())
            if item is _END or item is _INPUT_DONE:
                # Open incidents close (updates delivered) when the input is over, or at a stop
                # with no checkpoint to keep them; otherwise they are checkpointed and go on.
                final = item is _INPUT_DONE or self.store is None
                # Held events leave a slice at a time, each slice's alerts handed on: the rest stay
                # in the buffer (and so in a checkpoint taken between two slices).
                while self.reorder is not None and len(self.reorder):
                    async with self._lock:
                        held: list[Event] = []
                        self.reorder.drain(held, _SLICE)
                        alerts: list[Alert] = []
                        for event in held:
                            before = len(alerts)
                            self.engine.process(event, alerts)
                            if len(alerts) != before:
                                self._stamp(alerts, before, event)
                        # As after any slice: the watermark moves on (held events are later than
                        # it) and the alerts get their identity lineage.
                        self.engine.advance(alerts)
                        await self._emit(alerts)
                    await asyncio.sleep(0)
                async with self._lock:
                    out: list[Alert] = []
                    self.engine.advance(out)
                    await self._emit(out, final=final)
                    for key in list(self.partitions):
                        # Kept by the changelog (or the partition's file) for its next owner unless
                        # the input is over or nothing keeps it.
                        kept = self._partition_logs.get(key) is not None or self.store is not None
                        if item is _INPUT_DONE or not kept:
                            await self._emit([], final=True, partition=key)
                self.finished.set()
                return
            source, batch = item
            while batch.partition in self.restoring:  # fetched while its state is being restored
                await asyncio.sleep(0.01)
            stage = self._stage
            if batch.received_at:
                stage["ingest_wait"].observe(time.perf_counter() - batch.received_at)
            total = len(batch.records)
            # Large batches are detected in slices, each slice's alerts handed on at once: an alert
            # does not wait for the rest of a 1,000-record file.  The batch is acknowledged (its
            # position recorded) only with its last slice; a checkpoint between slices snapshots the
            # partial state, and a crash then redelivers the batch, whose done part dedupe drops.
            for start in range(0, max(total, 1), _SLICE):
                end = min(start + _SLICE, total)
                async with self._lock:
                    if batch.partition is not None and batch.partition not in self.partitions:
                        # Revoked (or never restored) here: the owner reads it; never acknowledged.
                        self.metrics.partition_batches_dropped.inc()
                        break
                    began = time.perf_counter()
                    alerts = self._handle(batch, start, end)
                    detected = time.perf_counter()
                    stage["detect"].observe(detected - began)
                    if end >= total:
                        self._pending[id(source)].append(batch.position)
                    await self._emit(alerts, partition=batch.partition)
                    stage["fold"].observe(time.perf_counter() - detected)
                self.last_progress = time.monotonic()
                # get() and put() do not yield when they need not wait: let the dispatcher, the
                # checkpointer and the operator endpoint run between slices even under full input.
                await asyncio.sleep(0)

    def _stamp(self, out: list[Alert], start: int, event: Event) -> None:
        """Give the alerts ``event`` just raised what their incident needs from the event."""
        stamp = self.incidents.stamp
        for index in range(start, len(out)):
            stamp(out[index], event)

    def _count_rule(self, alert: Alert, slot: int) -> None:
        key = (alert.detector, alert.rule_id or alert.detector)
        counts = self.by_rule.get(key)
        if counts is None:
            counts = self.by_rule[key] = [0, 0, 0]
            self.rule_titles[key] = alert.title if alert.rule_id else alert.detector
        counts[slot] += 1

    def _count_alerts(self, alerts: list[Alert]) -> None:
        """Stamp ``alerts`` (detection time, account facts) and count them: metrics once per label set."""
        now = time.time()
        accounts = self.accounts
        raised: dict[tuple[str, str, str], int] = defaultdict(int)
        for alert in alerts:
            if not alert.detected_at:
                alert.detected_at = now
            if accounts is not None:
                accounts.annotate(alert)
            if alert.continues:  # an already-reported match, only for its incident's totals
                continue
            raised[alert.detector, alert.severity, alert.rule_id or alert.detector] += 1
            self._count_rule(alert, 0)
        alerts_total = self.metrics.alerts
        by_detector = self.alerts_by_detector
        for (detector, severity, rule), count in raised.items():
            alerts_total.labels(detector=detector, severity=severity, rule=rule).inc(count)
            by_detector[detector] += count
            self.counts["alerts"] += count

    async def _emit(self, alerts: list[Alert], final: bool = False, partition: str | None = None) -> None:
        """Count ``alerts``, fold them into the incidents of ``partition`` (``None``: the process's)
        and queue the notifications."""
        if alerts:
            self._count_alerts(alerts)
        if partition is None:
            incidents, watermark = self.incidents, self.watermark()
        else:  # the partition's own incidents, closed by its own event time
            state = self.partitions[partition]
            incidents, watermark = state.part("incidents"), state.part("engine").watermark
        notifications = incidents.fold(alerts, watermark)
        if final:
            incidents.close_all(notifications)
        if not notifications:
            return
        kinds: dict[tuple[str, str, str], int] = defaultdict(int)
        for alert in notifications:
            kinds[alert.detector, alert.rule_id or alert.detector, alert.kind] += 1
            self._count_rule(alert, 1 if alert.kind == "opened" else 2)
        incidents_total = self.metrics.incidents
        for (detector, rule, kind), count in kinds.items():
            incidents_total.labels(detector=detector, rule=rule, kind=kind).inc(count)
        self.counts["notifications"] = self.counts.get("notifications", 0) + len(notifications)
        self._alert_put_times.append(time.perf_counter())
        try:
            await self.alerts.put(notifications)
        except BaseException:
            self._alert_put_times.pop()
            raise
        self._emitted += 1
        self.metrics.queue_depth.labels(stage="alerts").set(self.alerts.qsize())

    def _handle(self, batch: SourceBatch, start: int = 0, end: int | None = None) -> list[Alert]:
        """Validate, dedupe and detect ``batch.records[start:end]`` (synchronous: the CPU part)."""
        out: list[Alert] = []
        origin = batch.origin
        engine, dedupe = self._state_for(batch.partition)
        if batch.watermarks:  # an internal topic's event-time marks (daemon.repartition.watermark)
            engine.observe_marks(batch.watermarks)  # type: ignore[attr-defined]
        # internal Kafka partitions hold events until every origin passed them (daemon.repartition)
        reorder = self.reorder if batch.partition is None else getattr(engine, "held", None)
        locations = batch.locations
        lags: list[float] = []
        accounts = self._account_times
        processed = duplicates = invalid = 0
        ready: list[Event] = []
        records = batch.records
        # Future-dated events would move the watermark (and blind every window) if accepted.
        horizon = time.time() + self.config.max_future_skew
        # Bound once per slice, not looked up per event.
        seen, process, lag = dedupe.seen, engine.process, lags.append
        hold = reorder.push if reorder is not None else None
        for index in range(start, len(records) if end is None else end):
            record = records[index]
            try:
                event = Event(record, origin)
            except InvalidEvent as error:
                invalid += 1
                self.invalid.report(error.reason, origin=origin,
                                    location=locations[index] if locations else batch.first_index + index,
                                    detail=error.detail, payload=record)
                continue
            event_time = event.time
            if event_time > horizon:
                invalid += 1
                self.invalid.report("future_time", origin=origin,
                                    location=locations[index] if locations else batch.first_index + index,
                                    detail=f"eventTime {event.time_iso} is more than "
                                           f"{self.config.max_future_skew:.0f}s ahead of the wall clock",
                                    payload=record)
                continue
            if seen(event.event_id, event_time):
                duplicates += 1
                continue
            account = event.account_id
            if (account and accounts.get(account, 0.0) < event_time
                    and (account in accounts or len(accounts) < _MAX_ACCOUNTS)):
                accounts[account] = event_time
            lag(event_time)
            processed += 1
            if hold is not None:
                hold(event)
                continue
            before = len(out)
            process(event, out)
            if len(out) != before:
                self._stamp(out, before, event)
        if reorder is not None:
            reorder.release(ready)
            for event in ready:
                before = len(out)
                engine.process(event, out)
                if len(out) != before:
                    self._stamp(out, before, event)
        engine.advance(out)
        dedupe.expire()
        self._record_batch_metrics(processed, duplicates, invalid, lags, engine)
        return out

    def _record_batch_metrics(self, processed: int, duplicates: int, invalid: int, times: list[float],
                              engine: DetectionEngine) -> None:
        metrics = self.metrics
        if processed:
            metrics.events_processed.inc(processed)
            now = time.time()
            metrics.event_lag.observe_many([now - event_time for event_time in times])
        if duplicates:
            metrics.events_duplicate.inc(duplicates)
        self.counts["processed"] += processed
        self.counts["duplicate"] += duplicates
        self.counts["invalid"] += invalid
        watermark = self.watermark()
        if watermark != float("-inf"):
            metrics.watermark.set(watermark)
        for detector, seconds in engine.take_timings().items():
            if seconds:
                metrics.detector_seconds.labels(detector=detector).inc(seconds)

    def engines(self) -> list[DetectionEngine]:
        """The default engine and every partition's engine."""
        return [self.engine, *(state.part("engine") for state in self.partitions.values())]

    def watermark(self) -> float:
        """The lowest watermark among engines that have seen events (the conservative one)."""
        marks = [e.watermark for e in self.engines() if e.max_event_time != float("-inf")]
        return min(marks) if marks else float("-inf")

    def _state_for(self, partition: str | None) -> tuple[DetectionEngine, Deduplicator]:
        if partition is None:
            return self.engine, self.dedupe
        state = self.partitions[partition]
        state.dirty = True
        return state.part("engine"), state.part("dedupe")

    def _fork_engine(self, names: frozenset[str] | None = None,
                     kind: type[DetectionEngine] = DetectionEngine) -> DetectionEngine:
        return kind([d.fork() for d in self.engine.detectors if names is None or d.name in names],
                               allowed_lateness=self.engine.allowed_lateness, on_error=self.engine.on_error)

    def _partition_store(self, partition: str) -> StateStore | None:
        if self.store is None:
            return None
        store = StateStore(self.store.directory / "partitions" / _safe_name(partition))
        store.prepare()
        return store

    async def _restore_partition(self, source: Source, key: str) -> None:
        """Build partition ``key``'s parts and load them: from the changelog (the local file a verified
        cache), or from the local file alone when the source has no changelog."""
        started = time.perf_counter()
        state = self.state_parts.build(key)
        detectors = getattr(source, "partition_detectors", None)
        names = detectors(key) if detectors is not None else None
        if names is not None:  # only the detectors whose state lives on this partition's topic
            merged = getattr(source, "merged_watermark", None)
            internal = merged is not None and merged(key)
            state.parts["engine"] = self._fork_engine(names, MergedWatermarkEngine if internal else DetectionEngine)
        store = self._partition_store(key)
        body = await asyncio.to_thread(store.load) if store is not None else None
        log = source.state_log()
        origin = "empty"
        if log is not None:
            cache = CachedState.from_dict(body) if body else None
            saved, origin, fresh = await log.restore(key, cache)
            if saved:
                state.restore(saved)
            if fresh is not None and store is not None:
                try:
                    await asyncio.to_thread(store.write, fresh.to_dict())
                except OSError as error:
                    self.log.warning("partition state cache not written; the changelog has the state",
                                     partition=key, error=type(error).__name__, detail=str(error)[:300])
        elif body:
            cached = CachedState.from_dict(body)
            if cached is not None:
                state.restore(msgpack.unpackb(cached.body, raw=False, strict_map_key=False))
            else:  # written by an older trailguard: the parts themselves
                state.restore(body)
            origin = "cache"
        self.partitions[key] = state
        self._partition_logs[key] = log
        self.metrics.state_restores.labels(origin=origin).inc()
        self.metrics.state_restore_seconds.observe(time.perf_counter() - started)
        self.log.info("partition state restored", partition=key, origin=origin,
                      dedupe_ids=len(state.part("dedupe")), seconds=round(time.perf_counter() - started, 3))

    def _encode_partitions(self, keys: Sequence[str] | None = None) -> list[tuple[str, Any, Any]]:
        """Under the lock: each changed partition's state (of ``keys``, or all), encoded (log
        encoding or file body)."""
        out: list[tuple[str, Any, Any]] = []
        for key in self.partitions if keys is None else keys:
            state = self.partitions.get(key)
            if state is None or not state.dirty:
                continue
            log = self._partition_logs.get(key)
            if log is not None:
                out.append((key, log, log.pack(key, state.snapshot())))
            elif self.store is not None:
                body = msgpack.packb(state.snapshot(), use_bin_type=True)
                out.append((key, None, CachedState(None, 0, body, frozenset())))
            state.dirty = False
        return out

    async def _write_partitions(self, encoded: list[tuple[str, Any, Any]]) -> None:
        """Changelog first (the state of record), then the local cache file.

        A partition whose changelog another instance wrote meanwhile (this one was fenced: paused
        past its session timeout and replaced) is not written and its state is dropped here; the
        checkpoint then fails, so nothing it covers is acknowledged.
        """
        fenced: list[str] = []
        for index, (key, log, item) in enumerate(encoded):
            try:
                cached = await log.write(key, item) if log is not None else item
            except ChangelogFenced as error:
                fenced.append(key)
                if self.partitions.pop(key, None) is not None:
                    self._partition_logs.pop(key, None)
                    log.forget(key)
                self.log.warning("partition state not written: another instance owns the partition now",
                                 partition=key, detail=str(error)[:300])
                continue
            except BaseException:
                for unwritten, _, _ in encoded[index:]:
                    state = self.partitions.get(unwritten)
                    if state is not None:
                        state.dirty = True  # written again by the next checkpoint
                raise
            store = self._partition_store(key)
            if store is None:
                continue
            try:
                await asyncio.to_thread(store.write, cached.to_dict())
            except OSError as error:
                if log is None:
                    raise
                self.log.warning("partition state cache not written; the changelog has the state",
                                 partition=key, error=type(error).__name__, detail=str(error)[:300])
        if fenced:
            raise ChangelogFenced(f"state of {', '.join(sorted(fenced))} belongs to another instance now")

    async def _on_partitions(self, source: Source, assigned: set[str], revoked: set[str]) -> None:
        """Kafka rebalance: checkpoint and drop revoked partitions; restore assigned ones first."""
        self.restoring.update(key for key in assigned if key not in self.partitions)
        if revoked:
            try:
                await self.checkpoint(drop=revoked)
            except ChangelogFenced as error:  # a stalled owner's late hand-over: its state is not ours
                self.log.warning("revoked partitions were already taken over; their state here is dropped",
                                 detail=str(error)[:300])
        for key in sorted(assigned):
            if key in self.partitions:
                continue
            self.metrics.state_restoring.set(len(self.restoring))
            try:
                async with self._checkpoint_lock:
                    await self._restore_partition(source, key)
                self.restore_failures.pop(key, None)
            except Exception as error:
                self.restore_failures[key] = f"{type(error).__name__}: {str(error)[:200]}"
                self.log.error("partition state not restored; its batches are not processed",
                               partition=key, error=type(error).__name__, detail=str(error)[:300])
            finally:
                self.restoring.discard(key)
                self.metrics.state_restoring.set(len(self.restoring))
        if assigned or revoked:
            self.log.info("partition state rebalanced", assigned=len(assigned), revoked=len(revoked),
                          owned=len(self.partitions))

    def publish_state_metrics(self) -> None:
        """Export per-detector key counts and per-account last-seen times (called periodically)."""
        keys: dict[str, int] = defaultdict(int)
        for engine in self.engines():
            for detector in engine.detectors:
                keys[detector.name] += detector.state_keys()
        for name, count in keys.items():
            self.metrics.state_keys.labels(detector=name).set(count)
        for account, event_time in self._account_times.items():
            self.metrics.account_last_event.labels(account=account).set(event_time)

    async def _dispatch(self) -> None:
        while True:
            alerts = await self.alerts.get()
            taken = time.perf_counter()
            if self._alert_put_times:
                self._stage["alert_wait"].observe(taken - self._alert_put_times.popleft())
            try:
                await self.dispatcher.deliver(alerts)
                self._stage["deliver"].observe(time.perf_counter() - taken)
            except asyncio.CancelledError:
                raise
            except BaseException as error:
                # Never silently: /healthz fails (the task is done) and checkpoints stop acknowledging.
                self.log.error("dispatcher failed; alerts are no longer handed to the sinks and input "
                               "is no longer acknowledged", error=type(error).__name__,
                               detail=str(error)[:300], alerts=len(alerts),
                               alert_ids=[a.id for a in alerts[:20]], exc_info=True)
                self._delivery_progress.set()
                raise
            finally:
                self.alerts.task_done()
                self.metrics.queue_depth.labels(stage="alerts").set(self.alerts.qsize())
            self._delivered += 1
            self._delivery_progress.set()

    async def _delivered_through(self, covered: int) -> None:
        """Wait until the first ``covered`` alert batches have been handed to the sinks."""
        while self._delivered < covered:
            if self._dispatch_task is None or self._dispatch_task.done():
                raise RuntimeError(f"dispatcher is not running; {covered - self._delivered} alert batch(es) "
                                   "were not handed to the sinks, so their input is not acknowledged")
            self._delivery_progress.clear()
            await self._delivery_progress.wait()

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """Hold the processor between two batches (rule reloads swap detector state here)."""
        async with self._lock:
            yield

    # -- checkpoint ------------------------------------------------------------------------
    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.checkpoint_interval)
            try:
                await self.checkpoint()
                self.checkpoint_error = None
            except Exception as error:
                self.metrics.checkpoints.labels(outcome="failed").inc()
                self.checkpoint_error = f"{type(error).__name__}: {str(error)[:200]}"
                self.log.error("checkpoint failed; input stays unacknowledged and will be redelivered",
                               error=type(error).__name__, detail=str(error)[:300])

    async def checkpoint(self, drop: set[str] | None = None) -> None:
        """Flush sinks → snapshot state → acknowledge input (see the module docstring).

        ``drop``: partitions being revoked; their state is snapshotted with the rest and then
        removed (under the same pause), so no later batch of theirs is processed here.

        The processor is paused only while the snapshot is taken and encoded (the sources' and the
        unpartitioned state in one pause, then each changed partition in a pause of its own, so
        detection runs between them): waiting for the sinks (delivery of every alert the snapshot's
        batches produced, then fsync) and writing the file happen after it resumes, so a checkpoint
        does not stall detection for an fsync.  The snapshot file is still written only after that
        flush, and input acknowledged only after the file is durable; checkpoints never overlap.
        """
        started = time.perf_counter()
        async with self._checkpoint_lock:
            async with self._lock:
                paused = time.perf_counter()
                pending, self._pending = self._pending, defaultdict(list)
                for source in self.sources:
                    if source.local_acknowledge and pending.get(id(source)):
                        await source.acknowledge(pending.pop(id(source)))
                self.publish_state_metrics()
                covered = self._emitted
                data: bytes | None = None
                if self.store is not None:
                    body = {
                        "engine": self.engine.snapshot(),
                        "dedupe": self.dedupe.snapshot(),
                        "dispatch": self.dispatcher.snapshot(),
                        "incidents": self.incidents.snapshot(),
                        "reorder": self.reorder.snapshot() if self.reorder is not None else [],
                        "positions": {s.name: s.checkpoint_positions() for s in self.sources},
                    }
                    data = self.store.encode(body)
                if drop:  # a hand-over: the revoked partitions leave under this one pause
                    partition_data = self._encode_partitions()
                    dirty: list[str] = []
                else:
                    partition_data = []
                    dirty = [key for key, state in self.partitions.items() if state.dirty]
                dropped = [(key, self._partition_logs.pop(key, None)) for key in drop or ()
                           if self.partitions.pop(key, None) is not None]
                self.metrics.checkpoint_pause_seconds.observe(time.perf_counter() - paused)
            try:
                for key in dirty:
                    # One pause per partition, so a slice runs between them and no pause grows with
                    # the number of partitions owned.  A partition snapshotted later holds events
                    # newer than the positions acknowledged below: a redelivery of those is dropped
                    # by the dedupe record in the same snapshot, and their alerts are covered
                    # because ``covered`` is read after the last pause.
                    async with self._lock:
                        paused = time.perf_counter()
                        partition_data.extend(self._encode_partitions((key,)))
                        covered = self._emitted
                        self.metrics.checkpoint_pause_seconds.observe(time.perf_counter() - paused)
                await self._delivered_through(covered)
                await self.dispatcher.flush()
                if self.store is not None and data is not None:
                    await asyncio.to_thread(self.store.write_encoded, data)
                await self._write_partitions(partition_data)
            except BaseException:
                # Not acknowledged now: the next checkpoint acknowledges these positions (in order).
                for key, positions in pending.items():
                    self._pending[key][:0] = positions
                for key, _, _ in partition_data:  # written again next time (a rewrite is harmless)
                    state = self.partitions.get(key)
                    if state is not None and key not in (drop or ()):
                        state.dirty = True
                raise
            finally:
                for key, log in dropped:
                    if log is not None:
                        log.forget(key)
            for source in self.sources:
                positions = pending.get(id(source))
                if positions:
                    await source.acknowledge(positions)
                    self.metrics.source_acknowledged.labels(source=source.name).inc(len(positions))
        self.metrics.checkpoints.labels(outcome="written" if self.store else "memory").inc()
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)
        self.metrics.last_checkpoint.set(time.time())
        if self.gc_pauses is not None:
            self.gc_pauses.publish()
