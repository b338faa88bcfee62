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
       and source positions, and let the processor go on;
    2. wait until every alert the snapshot's batches produced is handed to the sinks, and flush
       the sinks (fsync, spool commit);
    3. write the snapshot atomically;
    4. acknowledge the input the snapshot covers (delete SQS messages, commit Kafka offsets).

So restored state is never ahead of acknowledged input, and acknowledged input never has alerts
that were not handed to a sink: a batch of alerts the dispatcher failed on is not counted as
handed over, and a dead dispatcher fails the checkpoint (and ``/healthz``) instead of letting it
acknowledge.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any

import structlog

from daemon.accounts import AccountMap
from daemon.config import PipelineConfig
from daemon.deadletter import InvalidReporter
from daemon.dedupe import Deduplicator
from daemon.delivery.dispatch import Dispatcher
from daemon.delivery.incidents import Incidents
from daemon.metrics import Metrics
from daemon.reorder import ReorderBuffer
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
    ) -> None:
        self.sources = list(sources)
        self.engine = engine
        self.dispatcher = dispatcher
        self.invalid = invalid
        self.metrics = metrics
        self.config = config
        self.store = store
        self.checkpoint_interval = checkpoint_interval
        #: Stamps account name/environment/owner/tags on alerts before they are routed.
        self.accounts = accounts if accounts else None
        self.dedupe = Deduplicator(config.dedupe_horizon, config.dedupe_max_ids)
        #: Folds alerts into incidents; checkpointed with the detector state (on by default).
        self.incidents = incidents if incidents is not None else Incidents()
        self.reorder = ReorderBuffer(config.allowed_lateness) if reorder else None
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
        #: Partition-local state (Kafka): one engine and dedupe record per ``topic/partition``.
        self.partitions: dict[str, tuple[DetectionEngine, Deduplicator]] = {}
        for source in self.sources:
            source.on_partitions(self._on_partitions)
        self.finished = asyncio.Event()
        self.restored = False
        self.started = False
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

    async def _watch_pumps(self) -> None:
        if self._pumps:
            await asyncio.gather(*self._pumps, return_exceptions=True)
        if all(s.finite for s in self.sources):
            await self.ingest.put(_INPUT_DONE)

    async def stop(self, deadline: float) -> None:
        """Stop sources, drain the queues, flush sinks, checkpoint — all within ``deadline`` s."""
        started = time.monotonic()
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
        except TimeoutError:
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
                async with self._lock:
                    out: list[Alert] = []
                    if self.reorder is not None:
                        held: list[Event] = []
                        self.reorder.drain(held)
                        for event in held:
                            before = len(out)
                            self.engine.process(event, out)
                            if len(out) != before:
                                self._stamp(out, before, event)
                    self.engine.advance(out)
                    await self._emit(out, final=final)
                self.finished.set()
                return
            source, batch = item
            total = len(batch.records)
            # Large batches are detected in slices, each slice's alerts handed on at once: an alert
            # does not wait for the rest of a 1,000-record file.  The batch is acknowledged (its
            # position recorded) only with its last slice; a checkpoint between slices snapshots the
            # partial state, and a crash then redelivers the batch, whose done part dedupe drops.
            for start in range(0, max(total, 1), _SLICE):
                end = min(start + _SLICE, total)
                async with self._lock:
                    alerts = self._handle(batch, start, end)
                    if end >= total:
                        self._pending[id(source)].append(batch.position)
                    await self._emit(alerts)
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

    async def _emit(self, alerts: list[Alert], final: bool = False) -> None:
        now = time.time()
        accounts = self.accounts
        for alert in alerts:
            if not alert.detected_at:
                alert.detected_at = now
            if accounts is not None:
                accounts.annotate(alert)
            self.metrics.alerts.labels(detector=alert.detector, severity=alert.severity,
                                       rule=alert.rule_id or alert.detector).inc()
            self.alerts_by_detector[alert.detector] += 1
            self._count_rule(alert, 0)
        self.counts["alerts"] += len(alerts)
        notifications = self.incidents.fold(alerts, self.watermark())
        if final:
            self.incidents.close_all(notifications)
        if not notifications:
            return
        for alert in notifications:
            self.metrics.incidents.labels(detector=alert.detector, rule=alert.rule_id or alert.detector,
                                          kind=alert.kind).inc()
            self._count_rule(alert, 1 if alert.kind == "opened" else 2)
        self.counts["notifications"] = self.counts.get("notifications", 0) + len(notifications)
        await self.alerts.put(notifications)
        self._emitted += 1
        self.metrics.queue_depth.labels(stage="alerts").set(self.alerts.qsize())

    def _handle(self, batch: SourceBatch, start: int = 0, end: int | None = None) -> list[Alert]:
        """Validate, dedupe and detect ``batch.records[start:end]`` (synchronous: the CPU part)."""
        out: list[Alert] = []
        origin = batch.origin
        engine, dedupe = self._state_for(batch.partition)
        reorder = self.reorder if batch.partition is None else None
        locations = batch.locations
        lags: list[float] = []
        accounts = self._account_times
        processed = duplicates = invalid = 0
        ready: list[Event] = []
        records = batch.records
        # Future-dated events would move the watermark (and blind every window) if accepted.
        horizon = time.time() + self.config.max_future_skew
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
            if event.time > horizon:
                invalid += 1
                self.invalid.report("future_time", origin=origin,
                                    location=locations[index] if locations else batch.first_index + index,
                                    detail=f"eventTime {event.time_iso} is more than "
                                           f"{self.config.max_future_skew:.0f}s ahead of the wall clock",
                                    payload=record)
                continue
            if dedupe.seen(event.event_id, event.time):
                duplicates += 1
                continue
            account = event.account_id
            if (account and accounts.get(account, 0.0) < event.time
                    and (account in accounts or len(accounts) < _MAX_ACCOUNTS)):
                accounts[account] = event.time
            lags.append(event.time)
            processed += 1
            if reorder is not None:
                reorder.push(event)
                continue
            before = len(out)
            engine.process(event, out)
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
        return [self.engine, *(engine for engine, _ in self.partitions.values())]

    def watermark(self) -> float:
        """The lowest watermark among engines that have seen events (the conservative one)."""
        marks = [e.watermark for e in self.engines() if e.max_event_time != float("-inf")]
        return min(marks) if marks else float("-inf")

    def _state_for(self, partition: str | None) -> tuple[DetectionEngine, Deduplicator]:
        if partition is None:
            return self.engine, self.dedupe
        found = self.partitions.get(partition)
        if found is None:
            found = self._new_partition(partition)
        return found

    def _new_partition(self, partition: str) -> tuple[DetectionEngine, Deduplicator]:
        engine = DetectionEngine([d.fork() for d in self.engine.detectors],
                                 allowed_lateness=self.engine.allowed_lateness, on_error=self.engine.on_error)
        dedupe = Deduplicator(self.config.dedupe_horizon, self.config.dedupe_max_ids)
        store = self._partition_store(partition)
        body = store.load() if store is not None else None
        if body:
            engine.restore(body.get("engine") or {})
            dedupe.restore(body.get("dedupe") or {})
            self.log.info("partition state restored", partition=partition, dedupe_ids=len(dedupe))
        self.partitions[partition] = (engine, dedupe)
        return engine, dedupe

    def _partition_store(self, partition: str) -> StateStore | None:
        if self.store is None:
            return None
        store = StateStore(self.store.directory / "partitions" / _safe_name(partition))
        store.prepare()
        return store

    def _partition_bodies(self) -> list[tuple[StateStore, bytes]]:
        out = []
        for partition, (engine, dedupe) in self.partitions.items():
            store = self._partition_store(partition)
            if store is not None:
                out.append((store, store.encode({"engine": engine.snapshot(), "dedupe": dedupe.snapshot()})))
        return out

    async def _on_partitions(self, assigned: set[str], revoked: set[str]) -> None:
        """Kafka rebalance: save and drop revoked partitions' state; load assigned ones' (between batches)."""
        async with self._checkpoint_lock, self._lock:
            for partition in revoked:
                found = self.partitions.pop(partition, None)
                store = self._partition_store(partition)
                if found is not None and store is not None:
                    engine, dedupe = found
                    data = store.encode({"engine": engine.snapshot(), "dedupe": dedupe.snapshot()})
                    await asyncio.to_thread(store.write_encoded, data)
            for partition in assigned:
                if partition not in self.partitions:
                    self._new_partition(partition)
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
            try:
                await self.dispatcher.deliver(alerts)
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

    async def checkpoint(self) -> None:
        """Flush sinks → snapshot state → acknowledge input (see the module docstring).

        The processor is paused only while the snapshot is taken and encoded: waiting for the
        sinks (delivery of every alert the snapshot's batches produced, then fsync) and writing the
        file happen after it resumes, so a checkpoint does not stall detection for an fsync.  The
        snapshot file is still written only after that flush, and input acknowledged only after the
        file is durable; checkpoints never overlap.
        """
        started = time.perf_counter()
        async with self._checkpoint_lock:
            async with self._lock:
                pending, self._pending = self._pending, defaultdict(list)
                for source in self.sources:
                    if source.local_acknowledge and pending.get(id(source)):
                        await source.acknowledge(pending.pop(id(source)))
                self.publish_state_metrics()
                covered = self._emitted
                data: bytes | None = None
                partition_data: list[tuple[StateStore, bytes]] = []
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
                    partition_data = self._partition_bodies()
            await self._delivered_through(covered)
            await self.dispatcher.flush()
            if self.store is not None and data is not None:
                await asyncio.to_thread(self.store.write_encoded, data)
                for store, encoded in partition_data:
                    await asyncio.to_thread(store.write_encoded, encoded)
            for source in self.sources:
                positions = pending.get(id(source))
                if positions:
                    await source.acknowledge(positions)
                    self.metrics.source_acknowledged.labels(source=source.name).inc(len(positions))
        self.metrics.checkpoints.labels(outcome="written" if self.store else "memory").inc()
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)
        self.metrics.last_checkpoint.set(time.time())
