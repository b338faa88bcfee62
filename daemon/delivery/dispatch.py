"""Routes alerts to sinks and gets them there: dedup, spooling, retries, dead letters.

The pipeline hands over *notifications* — alerts already folded into incidents
(:mod:`daemon.delivery.incidents`, which runs inside the processor so its state is checkpointed
with the detectors').  For each batch, every alert is

1. **checked encodable**: an alert whose wire form cannot be built (a time outside the datetime
   range, evidence too deep for JSON) is a *poison alert*: it goes to
   ``<dead_letter_dir>/undeliverable.dead.jsonl`` with its reason (ERROR log,
   ``trailguard_alerts_suppressed_total{reason="unencodable"}``) and the rest flow on;
2. **routed** (:mod:`daemon.delivery.routing`) to one or more sinks — none: counted ``unrouted``;
3. **deduplicated** per sink: an id that sink already has (:mod:`daemon.delivery.delivered`, checkpointed)
   is dropped and counted ``duplicate``;
4. **handed over**.  Remote sinks (``spooled = True`` on the class: webhook, Slack, PagerDuty,
   Kafka, SNS, SQS) get the alert appended to their spool (:mod:`daemon.delivery.spool`) and a per-sink
   task drains it in order, removing entries only once the sink confirmed them.  Local sinks
   (stdout, file) are sent to directly — their own ``flush`` is their durability.

Delivery guarantees:

* :meth:`Dispatcher.flush` (the pipeline checkpoint) waits only for spool fsyncs and local-sink
  flushes, never for a remote to answer — a slow receiver cannot stall ingestion while its spool
  has room.
* **Backpressure, not drops**: a spool holding ``max_spool_bytes`` makes :meth:`deliver` wait
  until the sink catches up (logged once at ERROR, counted as ``outcome="blocked"``), which in turn
  pauses the sources.  Nothing is dropped to make room.
* Transient failures (timeouts, refused connections, 408/429/5xx; for local sinks an ``OSError``
  such as a full disk) are retried with exponential backoff and full jitter, capped at
  ``max_backoff``; a ``Retry-After`` is honoured (up to ``max_retry_after``).  Permanent failures
  (other 4xx, refused message, a closed stdout, any other error of a local sink) are not retried:
  the alert goes to ``<dead_letter_dir>/<sink>.dead.jsonl`` (``outcome="failed_permanent"``, ERROR
  log).  A batch failing that way is retried one alert at a time so only the bad one is kept aside.
* Spools are durable by default: ``spool_dir`` unset with ``state.path`` set puts them in
  ``<state.path>/spool`` (:mod:`daemon.app`), and a crash loses nothing handed over: the next start
  delivers the spool first.  With neither, spools live in memory (logged at start); at stop they get
  ``drain_timeout`` to empty and whatever is left is logged at ERROR with its ids
  (``outcome="dropped"``).

Metrics: ``trailguard_sink_deliveries_total{sink,outcome}`` (delivered, retry, failed_permanent,
dropped, blocked), ``trailguard_sink_spool_depth{sink}``, ``trailguard_sink_latency_seconds{sink}``,
``trailguard_alerts_suppressed_total{detector,reason}`` (duplicate, unrouted, unencodable).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from daemon.config import Duration
from daemon.delivery.delivered import DeliveredRecord
from daemon.delivery.incidents import IncidentsConfig
from daemon.delivery.routing import Router, RoutingConfig
from daemon.delivery.sinks.base import Sink
from daemon.delivery.sinks.errors import DeliveryError
from daemon.delivery.sinks.http_common import Redactor
from daemon.delivery.spool import (
    DeadLetterFile,
    MemorySpool,
    Spool,
    SpoolEntry,
    SqliteSpool,
    decode_alert,
    encode_alert,
)
from daemon.metrics import Metrics
from daemon.retry import Backoff
from detectors.alert import Alert

__all__ = ["DeliveryConfig", "Dispatcher"]

_DEFAULT_BATCH = 100


class DeliveryConfig(BaseModel):
    """The ``delivery:`` section: spool, retries, dedup horizon, incidents."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spool_dir: str | None = None
    """Directory for the per-sink spools (SQLite).  Unset: in-memory spools, lost on a crash."""
    max_spool_bytes: int = Field(default=64 << 20, ge=1024)
    """Per sink; beyond it :meth:`Dispatcher.deliver` waits (backpressure), nothing is dropped."""
    dead_letter_dir: str | None = None
    """Where ``<sink>.dead.jsonl`` files go (default: ``spool_dir``; neither: logged at ERROR only)."""
    initial_backoff: Duration = Field(default=0.5, gt=0)
    max_backoff: Duration = Field(default=30.0, gt=0)
    max_retry_after: Duration = Field(default=600.0, ge=0)
    """Cap on a receiver's ``Retry-After``."""
    dedup_horizon: Duration = 86_400.0
    """An alert id a sink already has is not sent to it again within this long (wall clock)."""
    dedup_max_ids: int = Field(default=100_000, ge=0)
    """Per sink (oldest forgotten first); 0 disables dedup."""
    drain_timeout: Duration = 5.0
    """At stop, how long in-memory spools get to drain (durable spools are kept for the next start)."""
    incidents: IncidentsConfig = IncidentsConfig()
    """How alerts fold into incidents (:mod:`daemon.delivery.incidents`)."""

    @model_validator(mode="before")
    @classmethod
    def _no_throttle(cls, data: Any) -> Any:
        if isinstance(data, dict) and "throttle" in data:
            raise ValueError("delivery.throttle was replaced by delivery.incidents (on by default: repeats "
                             "fold into one incident and an update carries the totals); fix: remove "
                             "'throttle' and, if needed, set delivery.incidents.window / group_by / "
                             "overrides (see README, 'Incidents')")
        return data


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


class _Lane:
    """One sink with its spool (None: sent to directly), drain task and wake-up events."""

    def __init__(self, sink: Sink, spooled: bool) -> None:
        self.sink = sink
        self.name = sink.name
        self.spooled = spooled
        self.spool: Spool | None = None
        self.dead: DeadLetterFile = DeadLetterFile(None)
        self.max_batch = max(1, int(getattr(sink, "max_batch", _DEFAULT_BATCH)))
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.space = asyncio.Event()
        self.full = False
        self.redact: Callable[[str], str] = str


class Dispatcher:
    """Routes, dedups and delivers alerts; see the module docstring for the guarantees."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        metrics: Metrics,
        *,
        max_backoff: float | None = None,
        routing: RoutingConfig | None = None,
        delivery: DeliveryConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sinks = list(sinks)
        self.metrics = metrics
        self.delivery = delivery or DeliveryConfig()
        self.max_backoff = self.delivery.max_backoff if max_backoff is None else max_backoff
        self.stopping = False
        self.log = structlog.get_logger("trailguard.dispatch")
        self.lanes = {s.name: _Lane(s, bool(getattr(s, "spooled", False))) for s in self.sinks}
        # Every sink's secrets are scrubbed from every text logged or dead-lettered, whichever sink
        # produced it (a receiver may echo anything).
        redact = Redactor(secret for s in self.sinks for secret in getattr(s, "secrets", list)())
        for lane in self.lanes.values():
            lane.redact = redact
        self.router = Router(routing or RoutingConfig(), [s.name for s in self.sinks])
        self.delivered = DeliveredRecord(self.delivery.dedup_horizon, self.delivery.dedup_max_ids, clock)
        self.undeliverable = DeadLetterFile(None)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Open spools (recovering a previous run's backlog), start sinks, launch the drain tasks."""
        config = self.delivery
        spool_dir = Path(config.spool_dir) if config.spool_dir else None
        dead_dir = Path(config.dead_letter_dir) if config.dead_letter_dir else spool_dir
        if spool_dir is None and any(lane.spooled for lane in self.lanes.values()):
            self.log.warning("no delivery.spool_dir: alerts waiting for remote sinks are kept in memory "
                             "and lost if the daemon crashes",
                             sinks=[n for n, lane in self.lanes.items() if lane.spooled])
        if dead_dir is not None:
            self.undeliverable = DeadLetterFile(dead_dir / "undeliverable.dead.jsonl")
        for lane in self.lanes.values():
            if dead_dir is not None:
                lane.dead = DeadLetterFile(dead_dir / f"{_file_name(lane.name)}.dead.jsonl")
            if lane.spooled:
                lane.spool = (SqliteSpool(spool_dir / f"{_file_name(lane.name)}.spool.sqlite")
                              if spool_dir is not None else MemorySpool())
                recovered = await lane.spool.open()
                if recovered:
                    self.delivered.add(lane.name, recovered)
                    self.log.info("delivering alerts spooled by a previous run", sink=lane.name,
                                  alerts=len(recovered))
                self._set_depth(lane)
            await lane.sink.start()
        for lane in self.lanes.values():
            if lane.spool is not None:
                lane.task = asyncio.create_task(self._drain(lane), name=f"deliver:{lane.name}")
                if lane.spool.depth:
                    lane.wake.set()

    async def flush(self) -> None:
        """Make everything handed over durable: fsync spools, flush local sinks (the checkpoint waits)."""
        for lane in self.lanes.values():
            try:
                if lane.spool is not None:
                    await lane.spool.flush()
                else:
                    await lane.sink.flush()
            except Exception as error:
                self.log.error("sink flush failed", sink=lane.name, error=type(error).__name__,
                               detail=lane.redact(str(error))[:200])
                raise

    def pending(self) -> dict[str, int]:
        """Alerts still waiting in each sink's spool (sinks with none are left out)."""
        return {name: lane.spool.depth for name, lane in self.lanes.items()
                if lane.spool is not None and lane.spool.depth}

    async def drain(self) -> None:
        """Wait until every spool is empty: a finite run delivers everything before it exits.

        The caller bounds it (the shutdown deadline); whatever is left is reported by :meth:`stop`.
        """
        for lane in self.lanes.values():
            while lane.spool is not None and lane.spool.depth and lane.task is not None and not lane.task.done():
                lane.space.clear()
                await lane.space.wait()

    async def stop(self) -> None:
        """Let in-memory spools drain briefly, stop drain tasks, close spools, stop sinks (reverse order)."""
        self.stopping = True
        volatile = [lane for lane in self.lanes.values()
                    if isinstance(lane.spool, MemorySpool) and lane.spool.depth and lane.task is not None]
        if volatile:
            try:
                async with asyncio.timeout(self.delivery.drain_timeout):
                    for lane in volatile:
                        while lane.spool is not None and lane.spool.depth:
                            lane.space.clear()
                            await lane.space.wait()
            except TimeoutError:
                pass
        tasks = [lane.task for lane in self.lanes.values() if lane.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for lane in self.lanes.values():
            if isinstance(lane.spool, MemorySpool) and lane.spool.depth:
                lost = lane.spool.pending_ids()
                self.metrics.sink_deliveries.labels(sink=lane.name, outcome="dropped").inc(len(lost))
                self.log.error("alerts lost: undelivered at shutdown and no spool_dir to keep them",
                               sink=lane.name, alerts=len(lost), alert_ids=lost[:100])
            elif lane.spool is not None and lane.spool.depth:
                self.log.warning("alerts left in the spool at shutdown; they are delivered at the next start",
                                 sink=lane.name, alerts=lane.spool.depth,
                                 spool=str(getattr(lane.spool, "path", "")))
            if lane.spool is not None:
                try:
                    await lane.spool.close()
                except Exception as error:
                    self.log.error("spool did not close cleanly", sink=lane.name, error=type(error).__name__,
                                   detail=str(error)[:200])
        for sink in reversed(self.sinks):
            try:
                await sink.stop()
            except Exception as error:
                self.log.error("sink did not stop cleanly", sink=sink.name, error=type(error).__name__,
                               detail=self.lanes[sink.name].redact(str(error))[:200])

    # -- checkpointed state ------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Plain data for the pipeline checkpoint: delivered ids per sink."""
        self.delivered.expire()
        return {"delivered": self.delivered.snapshot()}

    def restore(self, state: dict[str, Any]) -> None:
        """Load a :meth:`snapshot` (call before :meth:`start`)."""
        self.delivered.restore(state.get("delivered") or {})

    # -- hand-over ---------------------------------------------------------------------------
    async def deliver(self, alerts: list[Alert]) -> None:
        """Check, route and dedup ``alerts``, then spool (remote) or send (local) them."""
        if not alerts:
            return
        per_lane: dict[str, list[Alert]] = {}
        suppressed = self.metrics.alerts_suppressed
        delivered = self.delivered
        in_batch: set[tuple[str, str]] = set()
        encoded: dict[int, bytes] = {}
        for alert in alerts:
            try:
                encoded[id(alert)] = encode_alert(alert)
            except Exception as error:
                suppressed.labels(detector=alert.detector, reason="unencodable").inc()
                await self._keep_undeliverable(alert, error)
                continue
            names = self.router.route(alert)
            if not names:
                suppressed.labels(detector=alert.detector, reason="unrouted").inc()
                continue
            fresh = [n for n in names if (n, alert.id) not in in_batch and not delivered.has(n, alert.id)]
            if not fresh:
                suppressed.labels(detector=alert.detector, reason="duplicate").inc()
                continue
            for name in fresh:
                per_lane.setdefault(name, []).append(alert)
                in_batch.add((name, alert.id))
        if not per_lane:
            return
        if len(per_lane) == 1:  # one sink (the common case): no task to wait for, no loop turn
            [(name, batch)] = per_lane.items()
            await self._hand_over(self.lanes[name], batch, encoded)
            return
        await asyncio.gather(*(self._hand_over(self.lanes[name], batch, encoded)
                               for name, batch in per_lane.items()))

    async def _keep_undeliverable(self, alert: Alert, error: Exception) -> None:
        """A poison alert: keep what can be kept of it, with the reason, and let the rest flow on."""
        record: dict[str, Any] = {
            "id": alert.id, "detector": alert.detector, "rule_id": alert.rule_id, "title": str(alert.title)[:500],
            "severity": alert.severity, "time_epoch": alert.time if alert.time == alert.time else None,
            "account_id": alert.account_id, "principal": str(alert.principal)[:500],
            "event_ids": [str(e)[:200] for e in alert.event_ids[:100]],
        }
        reason = f"alert cannot be encoded: {type(error).__name__}: {str(error)[:300]}"
        try:
            orjson.dumps(record)
        except Exception:
            record = {"id": alert.id, "detector": alert.detector}
        try:
            kept = await self.undeliverable.keep("delivery", record, reason)
        except OSError as write_error:
            kept = False
            self.log.error("dead-letter file not writable", path=str(self.undeliverable.path),
                           error=type(write_error).__name__)
        if kept:
            self.log.error("alert cannot be encoded for any sink; kept in the dead-letter file",
                           alert_id=alert.id, detector=alert.detector, rule_id=alert.rule_id,
                           reason=reason, path=str(self.undeliverable.path))
        else:
            self.log.error("alert cannot be encoded for any sink; no dead-letter directory, alert only "
                           "logged here", alert_id=alert.id, detector=alert.detector, reason=reason,
                           alert=record)

    async def _hand_over(self, lane: _Lane, alerts: list[Alert], encoded: dict[int, bytes]) -> None:
        if lane.spool is None:
            if await self._deliver_batch(lane, alerts, None):
                self.delivered.add(lane.name, [a.id for a in alerts])
            return
        entries = [(alert.id, encoded[id(alert)]) for alert in alerts]
        await self._wait_for_room(lane, sum(len(p) for _, p in entries), len(entries))
        attempt = 0
        while True:
            try:
                await lane.spool.append(entries)
                break
            except (sqlite3.Error, OSError) as error:
                attempt += 1
                delay = self._backoff(attempt, None)
                self.log.error("spool write failed; ingestion waits and retries", sink=lane.name,
                               attempt=attempt, retry_in=round(delay, 2), error=type(error).__name__,
                               detail=str(error)[:200])
                await asyncio.sleep(delay)
        self.delivered.add(lane.name, [a.id for a in alerts])
        self._set_depth(lane)
        lane.wake.set()

    async def _wait_for_room(self, lane: _Lane, size: int, count: int) -> None:
        spool = lane.spool
        assert spool is not None
        limit = self.delivery.max_spool_bytes
        if not (spool.depth and spool.size + size > limit):
            return
        if not lane.full:
            lane.full = True
            self.log.error("delivery spool full; ingestion waits until the sink catches up",
                           sink=lane.name, spooled_alerts=spool.depth, spooled_bytes=spool.size,
                           max_spool_bytes=limit)
        self.metrics.sink_deliveries.labels(sink=lane.name, outcome="blocked").inc(count)
        while spool.depth and spool.size + size > limit:
            lane.space.clear()
            await lane.space.wait()
        lane.full = False
        self.log.info("delivery spool has room again; ingestion resumes", sink=lane.name,
                      spooled_alerts=spool.depth)

    # -- delivery ----------------------------------------------------------------------------
    async def _drain(self, lane: _Lane) -> None:
        """Per remote sink: deliver the spool head, in order, forever."""
        spool = lane.spool
        assert spool is not None
        while True:
            if not spool.depth:
                lane.wake.clear()
                await lane.wake.wait()
                continue
            entries = await spool.peek(lane.max_batch)
            if not entries:
                continue
            alerts, entries = await self._decode(lane, entries)
            if not alerts:
                continue

            async def ack(done: int, entries: list[SpoolEntry] = entries) -> None:
                await spool.remove_through(entries[done - 1].seq)
                self._set_depth(lane)
                lane.space.set()

            await self._deliver_batch(lane, alerts, ack)

    async def _decode(self, lane: _Lane, entries: list[SpoolEntry]) -> tuple[list[Alert], list[SpoolEntry]]:
        """Decode the head of the spool; an entry that cannot be decoded is dead-lettered and removed."""
        alerts: list[Alert] = []
        for index, entry in enumerate(entries):
            try:
                alerts.append(decode_alert(entry.payload))
            except Exception as error:
                if index:
                    return alerts, entries[:index]
                await self._keep_dead(lane, {"id": entry.alert_id,
                                             "spooled": entry.payload.decode("utf-8", "replace")},
                                      f"undecodable spool entry: {type(error).__name__}")
                assert lane.spool is not None
                await lane.spool.remove_through(entry.seq)
                self._set_depth(lane)
                lane.space.set()
                return [], []
        return alerts, entries

    async def _deliver_batch(self, lane: _Lane, alerts: list[Alert],
                             ack: Callable[[int], Awaitable[None]] | None) -> bool:
        """Send until every alert is delivered or dead-lettered; False if dropped at shutdown."""
        sink, metrics = lane.sink, self.metrics
        done = attempt = 0
        one_by_one = False
        while done < len(alerts):
            batch = alerts[done:done + 1] if one_by_one else (alerts[done:] if done else alerts)
            started = time.perf_counter()
            try:
                await sink.send(batch)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                known = error if isinstance(error, DeliveryError) else None
                arrived = min(max(known.delivered, 0), len(batch)) if known else 0
                if arrived:
                    self._count_delivered(lane, arrived, started)
                    done += arrived
                    if ack is not None:
                        await ack(done)
                # A local sink's own error (not a DeliveryError) is permanent unless it is an OSError
                # other than a closed pipe (a full disk recovers; a closed stdout does not).
                permanent = (not known.transient) if known is not None else (
                    isinstance(error, BrokenPipeError) or not isinstance(error, OSError))
                if permanent and known is None and len(batch) > 1:
                    one_by_one = True
                    continue
                if permanent:
                    await self._dead_letter(lane, alerts[done], error)
                    done += 1
                    attempt = 0
                    if ack is not None:
                        await ack(done)
                    continue
                attempt += 1
                remaining = len(alerts) - done
                metrics.sink_deliveries.labels(sink=lane.name, outcome="retry").inc(remaining)
                detail = lane.redact(str(error))[:200]
                if lane.spool is None and self.stopping:
                    metrics.sink_deliveries.labels(sink=lane.name, outcome="dropped").inc(remaining)
                    self.log.error("alerts lost: sink failed during shutdown", sink=lane.name,
                                   alert_ids=[a.id for a in alerts[done:]], error=type(error).__name__,
                                   detail=detail)
                    return False
                delay = self._backoff(attempt, known.retry_after if known else None)
                self.log.warning("sink delivery failed; will retry", sink=lane.name, attempt=attempt,
                                 retry_in=round(delay, 2), pending=remaining, error=type(error).__name__,
                                 detail=detail)
                await asyncio.sleep(delay)
                continue
            self._count_delivered(lane, len(batch), started)
            done = len(alerts)
            if ack is not None:
                await ack(done)
        return True

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter (the one backoff, :class:`daemon.retry.Backoff`), at least ``Retry-After`` when given."""
        return Backoff(initial=self.delivery.initial_backoff, maximum=self.max_backoff, jitter="full").delay(
            attempt, retry_after, self.delivery.max_retry_after)

    def _count_delivered(self, lane: _Lane, count: int, started: float) -> None:
        self.metrics.sink_deliveries.labels(sink=lane.name, outcome="delivered").inc(count)
        self.metrics.sink_latency.labels(sink=lane.name).observe((time.perf_counter() - started) / count)

    async def _dead_letter(self, lane: _Lane, alert: Alert, error: Exception) -> None:
        self.metrics.sink_deliveries.labels(sink=lane.name, outcome="failed_permanent").inc()
        try:
            record = alert.to_dict()
        except Exception:
            record = {"id": alert.id, "detector": alert.detector, "rule_id": alert.rule_id}
        await self._keep_dead(lane, record, lane.redact(str(error))[:500])

    async def _keep_dead(self, lane: _Lane, record: dict[str, Any], reason: str) -> None:
        try:
            kept = await lane.dead.keep(lane.name, record, reason)
        except OSError as error:
            kept = False
            self.log.error("dead-letter file not writable", sink=lane.name, path=str(lane.dead.path),
                           error=type(error).__name__)
        if kept:
            self.log.error("sink refused alert permanently; kept in its dead-letter file", sink=lane.name,
                           alert_id=record.get("id"), reason=reason, path=str(lane.dead.path))
        else:
            self.log.error("sink refused alert permanently; no dead-letter directory, alert only logged here",
                           sink=lane.name, alert_id=record.get("id"), reason=reason, alert=record)

    def _set_depth(self, lane: _Lane) -> None:
        if lane.spool is not None:
            self.metrics.sink_spool_depth.labels(sink=lane.name).set(lane.spool.depth)
