"""Which alert ids each sink already has — so a replay or a restart does not alert twice.

Alert ids are deterministic: re-processing the same events (input redelivered after a crash, a
replay) raises alerts with the same ids.  The dispatcher records, per sink, every id it handed to
that sink (spooled or sent) with the wall-clock time, and drops a repeat within ``horizon``
(``trailguard_alerts_suppressed_total{reason="duplicate"}``).  The record is part of the pipeline
checkpoint (``Dispatcher.snapshot``), so it survives restarts in step with the detector state.
Memory is bounded by ``max_ids`` per sink; ids are forgotten oldest first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["DeliveredRecord"]


class DeliveredRecord:
    """``{sink: {alert_id: handed_over_at}}`` in insertion (= time) order."""

    def __init__(self, horizon: float, max_ids: int, clock: Callable[[], float]) -> None:
        self.horizon = horizon
        self.max_ids = max_ids
        self.clock = clock
        self._sinks: dict[str, dict[str, float]] = {}

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._sinks.values())

    def has(self, sink: str, alert_id: str) -> bool:
        """True if ``alert_id`` was handed to ``sink`` within the horizon."""
        ids = self._sinks.get(sink)
        if not ids or alert_id not in ids:
            return False
        return ids[alert_id] >= self.clock() - self.horizon

    def add(self, sink: str, alert_ids: list[str]) -> None:
        """Record ids as handed to ``sink`` now."""
        if self.max_ids <= 0:
            return
        ids = self._sinks.setdefault(sink, {})
        now = self.clock()
        for alert_id in alert_ids:
            ids.pop(alert_id, None)
            ids[alert_id] = now
        while len(ids) > self.max_ids:
            del ids[next(iter(ids))]

    def expire(self) -> int:
        """Forget ids older than the horizon; returns how many."""
        cutoff = self.clock() - self.horizon
        dropped = 0
        for ids in self._sinks.values():
            while ids:
                first = next(iter(ids))
                if ids[first] >= cutoff:
                    break
                del ids[first]
                dropped += 1
        return dropped

    def snapshot(self) -> dict[str, Any]:
        """Plain data: per sink, ids and times as parallel lists."""
        return {sink: {"ids": list(ids), "times": list(ids.values())} for sink, ids in self._sinks.items()}

    def restore(self, state: dict[str, Any]) -> None:
        """Load a :meth:`snapshot` (ids already past the horizon are dropped)."""
        self._sinks = {sink: dict(zip(data.get("ids") or [], data.get("times") or [], strict=False))
                       for sink, data in (state or {}).items()}
        self.expire()
