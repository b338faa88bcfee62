"""Hands alerts to every sink, retrying transient failures with exponential backoff and jitter.

A sink that keeps failing does not stall the others: each sink is tried on its own, and a batch
is retried for that sink until it succeeds or the daemon stops.  Alerts still undelivered at
shutdown are logged at ERROR with their ids (data was lost) and counted.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

import structlog

from daemon.metrics import Metrics
from daemon.sinks.base import Sink
from detectors.alert import Alert

__all__ = ["Dispatcher"]


class Dispatcher:
    """Delivers alert batches to sinks; ``flush`` makes everything delivered durable."""

    def __init__(self, sinks: Sequence[Sink], metrics: Metrics, *, max_backoff: float = 30.0) -> None:
        self.sinks = list(sinks)
        self.metrics = metrics
        self.max_backoff = max_backoff
        self.stopping = False
        self.log = structlog.get_logger("trailguard.dispatch")

    async def start(self) -> None:
        """Start every sink (a sink that cannot start refuses the daemon's start)."""
        for sink in self.sinks:
            await sink.start()

    async def deliver(self, alerts: list[Alert]) -> None:
        """Send ``alerts`` to every sink; per sink, retry until delivered or stopping."""
        if not alerts:
            return
        await asyncio.gather(*(self._deliver_to(sink, alerts) for sink in self.sinks))

    async def _deliver_to(self, sink: Sink, alerts: list[Alert]) -> None:
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                await sink.send(alerts)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                attempt += 1
                self.metrics.sink_deliveries.labels(sink=sink.name, outcome="retry").inc(len(alerts))
                if self.stopping:
                    self.metrics.sink_deliveries.labels(sink=sink.name, outcome="dropped").inc(len(alerts))
                    self.log.error("alerts lost: sink failed during shutdown", sink=sink.name,
                                   alert_ids=[a.id for a in alerts], error=type(error).__name__)
                    return
                delay = min(self.max_backoff, 0.5 * 2 ** min(attempt, 10)) * random.uniform(0.5, 1.0)
                self.log.warning("sink delivery failed; will retry", sink=sink.name, attempt=attempt,
                                 retry_in=round(delay, 2), error=type(error).__name__, detail=str(error)[:200])
                await asyncio.sleep(delay)
                continue
            elapsed = time.perf_counter() - started
            self.metrics.sink_deliveries.labels(sink=sink.name, outcome="delivered").inc(len(alerts))
            self.metrics.sink_latency.labels(sink=sink.name).observe(elapsed / len(alerts))
            return

    async def flush(self) -> None:
        """Flush every sink (fsync, producer flush) — the checkpoint waits for this."""
        for sink in self.sinks:
            try:
                await sink.flush()
            except Exception as error:
                self.log.error("sink flush failed", sink=sink.name, error=type(error).__name__,
                               detail=str(error)[:200])
                raise

    async def stop(self) -> None:
        """Stop every sink, in reverse order of start."""
        self.stopping = True
        for sink in reversed(self.sinks):
            try:
                await sink.stop()
            except Exception as error:
                self.log.error("sink did not stop cleanly", sink=sink.name, error=type(error).__name__)
