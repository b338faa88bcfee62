"""Drop CloudTrail events seen before (same ``eventID``), within an event-time horizon, in bounded memory.

CloudTrail delivers some events twice, and at-least-once inputs redeliver after a crash.  Counting a
repeat twice would inflate every window, so the pipeline drops repeats before the detectors.
Memory is bounded by ``max_ids`` (oldest forgotten first) and by the horizon (ids whose event time
fell behind ``newest - horizon`` are forgotten).  The record is part of the checkpoint.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Deduplicator"]


class Deduplicator:
    """Remembers eventIDs in insertion order; ``seen`` is O(1)."""

    __slots__ = ("_ids", "horizon", "max_ids", "newest")

    def __init__(self, horizon: float, max_ids: int) -> None:
        self.horizon = horizon
        self.max_ids = max_ids
        self._ids: dict[str, float] = {}
        self.newest = float("-inf")

    def __len__(self) -> int:
        return len(self._ids)

    def seen(self, event_id: str | None, event_time: float) -> bool:
        """True if ``event_id`` is a repeat; otherwise remember it and return False."""
        if event_id is None or self.max_ids == 0:
            return False
        ids = self._ids
        if event_id in ids:
            return True
        ids[event_id] = event_time
        if event_time > self.newest:
            self.newest = event_time
        if len(ids) > self.max_ids:
            del ids[next(iter(ids))]
        return False

    def expire(self) -> int:
        """Forget ids older than the horizon, from the oldest inserted; returns how many."""
        cutoff = self.newest - self.horizon
        ids = self._ids
        dropped = 0
        for event_time in ids.values():
            if event_time >= cutoff:
                break
            dropped += 1
        if dropped:
            for event_id in list(ids)[:dropped]:
                del ids[event_id]
        return dropped

    def snapshot(self) -> dict[str, Any]:
        """Plain data for the checkpoint: ids and times as parallel lists (insertion order kept)."""
        return {"ids": list(self._ids), "times": list(self._ids.values())}

    def restore(self, state: dict[str, Any]) -> None:
        """Load a :meth:`snapshot`."""
        ids = state.get("ids") or []
        times = state.get("times") or []
        self._ids = dict(zip(ids, times, strict=False))
        if self._ids:
            self.newest = max(self._ids.values())
