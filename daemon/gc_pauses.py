"""How long the cyclic garbage collector stops the daemon: ``trailguard_gc_pause_seconds{generation}``.

A full (generation-2) pass walks every tracked object that is not frozen, so in a long-running
process it can stop the event loop for hundreds of milliseconds — the first thing to rule in or
out when alert latency has a tail.  (Measured at 2,000 ev/s into Kafka, docs/performance.md
"Round 4": the daemon itself made no pass above 2 ms after start-up; the benchmark's producer did.)

The collector's callback runs in the middle of whatever allocation triggered the collection, so it
only appends to a bounded list: it takes no lock (a Prometheus histogram's lock, held by a scrape
at that moment, would deadlock it) and allocates nothing tracked.  :meth:`GcPauses.publish` moves
the durations into the histogram; the pipeline calls it after every checkpoint.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any, Final

from daemon.metrics import Metrics

__all__ = ["GcPauses"]

#: Pauses remembered between two publications (a collection never grows memory without bound).
_MAX_PENDING: Final = 4096


class GcPauses:
    """Times every collection while observing; :meth:`publish` exports what was timed."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._pending: list[tuple[int, float]] = []
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif len(self._pending) < _MAX_PENDING:
            self._pending.append((info["generation"], time.perf_counter() - self._started))

    def observe(self) -> Callable[[], None]:
        """Time every collection from now on; returns what stops it."""
        gc.callbacks.append(self._callback)
        return lambda: gc.callbacks.remove(self._callback)

    def publish(self) -> None:
        """Move the pauses timed since the last call into ``trailguard_gc_pause_seconds``."""
        pending, self._pending = self._pending, []
        histogram = self.metrics.gc_pause_seconds
        for generation, seconds in pending:
            histogram.labels(generation=str(generation)).observe(seconds)
