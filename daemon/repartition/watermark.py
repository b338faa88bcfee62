"""Event time on internal partitions: the organisation's watermark, merged from every input partition.

An internal partition receives the events of many input partitions, each read at its own pace (a
backlog of one partition is read minutes after another's): an event forwarded late by a slow input
partition is not late in event time.  So the engine of an internal partition does not take its
watermark from the newest event it saw (which would call the slow partition's events late and drop
them) but, as Flink does, from its *origins*: each input partition's owner sends, in order with
its forwarded events, a mark ``{"origin": p, "of": n, "time": t, "idle": bool}`` to every partition
of every internal topic (:mod:`daemon.repartition.forwarder`): ``t`` is the newest event time read
from input partition ``p`` of ``n``; ``idle`` says the partition is read to its end (nothing older
is waiting in it).  The merged watermark is the oldest time among the origins that are not idle
(the newest of all when every one is idle) minus the allowed lateness, and ``-inf`` until every
origin has reported once.  So ``cloudtrail_silence`` on the organisation partition measures an
account against the whole organisation's progress, and never fires because the account's events
sit in a partition read later.

Events are also *released in event-time order*: the engine holds what it receives (a
:class:`~daemon.reorder.ReorderBuffer` whose cutoff is the merged time, not the newest event) and
the pipeline detects an event only once every origin has passed its time.  So an internal partition
sees its key's events in the order one replay of the organisation's trail would, however the input
partitions were interleaved on the way — a threshold crossed by the fifth of six failures from six
accounts names the same five events as the replay.  The held events are part of the engine's
snapshot (its changelogged state), so acknowledging the internal topic's offsets never loses them.

The origins' progress is part of the snapshot too: an input partition that moved to a new owner
after it was read to its end gives that owner no event to learn its time from, so the new owner's
marks say only ``idle`` (time ``-inf``) and the restored engine keeps the time it had (a mark never
moves an origin back).  Without it a rebalance after the backlog would hold every event forever.
Until every origin reported (to this engine or the one it was restored from) the watermark is
``-inf``; the owners send a mark at least every probe interval.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from typing import Any, Final

import orjson

from daemon.reorder import ReorderBuffer
from detectors.base import Detector
from detectors.engine import DetectionEngine
from detectors.event import Event

__all__ = ["MARK_HEADER", "MergedWatermarkEngine", "decode_mark", "encode_mark"]

#: Kafka header naming a watermark mark (its value is the mark; the record is no event).
MARK_HEADER: Final = "trailguard-mark"
_NEG_INF: Final = float("-inf")

Mark = tuple[int, int, float, bool]


def encode_mark(origin: int, of: int, time: float, idle: bool) -> bytes:
    """The value of a mark from input partition ``origin`` of ``of``."""
    return orjson.dumps({"origin": origin, "of": of, "time": None if time == _NEG_INF else time, "idle": idle})


def decode_mark(value: bytes | None) -> Mark | None:
    """``(origin, of, time, idle)`` of a mark's value; ``None`` when it is not one."""
    try:
        data: Any = orjson.loads(value or b"")
        time = data.get("time")
        return (int(data["origin"]), int(data["of"]), _NEG_INF if time is None else float(time),
                bool(data.get("idle")))
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        return None


class _MergedOrder(ReorderBuffer):
    """Holds events until the merged time of ``engine``'s origins has passed them."""

    __slots__ = ("engine",)

    def __init__(self, engine: MergedWatermarkEngine) -> None:
        super().__init__(0.0)
        self.engine = engine

    def release(self, out: list[Event]) -> None:
        """Append the events every origin has passed, oldest first."""
        cutoff = self.engine.merged_time
        heap = self._heap
        while heap and heap[0][0] <= cutoff:
            out.append(heapq.heappop(heap)[2])


class MergedWatermarkEngine(DetectionEngine):
    """A detection engine whose watermark is merged from its origins' marks (see the module doc)."""

    def __init__(self, detectors: Sequence[Detector], **kwargs: Any) -> None:
        super().__init__(detectors, **kwargs)
        self.origins: dict[int, tuple[float, bool]] = {}
        self.origin_count = 0
        #: Events received and not yet passed by every origin (the pipeline pushes and releases).
        self.held: ReorderBuffer = _MergedOrder(self)

    def snapshot(self) -> dict[str, object]:
        """The engine's state plus the held events and the origins' progress."""
        state = super().snapshot()
        state["held"] = self.held.snapshot()
        state["origins"] = [[origin, None if time == _NEG_INF else time, idle]
                            for origin, (time, idle) in sorted(self.origins.items())]
        state["origin_count"] = self.origin_count
        return state

    def restore(self, state: dict[str, object]) -> None:
        """Load :meth:`snapshot` (held events are held again, the origins' progress is known again)."""
        super().restore(state)
        held = state.get("held")
        if isinstance(held, list):
            self.held.restore(held)
        count, origins = state.get("origin_count"), state.get("origins")
        if isinstance(count, int) and isinstance(origins, list):
            self.origin_count = count
            self.origins = {int(origin): (_NEG_INF if time is None else float(time), bool(idle))
                            for origin, time, idle in origins if int(origin) < count}

    def observe_marks(self, marks: Iterable[Mark]) -> None:
        """Record marks read from this partition (in order)."""
        for origin, of, time, idle in marks:
            if of != self.origin_count:  # the input topic grew (or the first mark): forget the rest
                self.origin_count = of
                self.origins = {o: v for o, v in self.origins.items() if o < of}
            previous = self.origins.get(origin)
            newest = max(time, previous[0]) if previous is not None else time
            self.origins[origin] = (newest, idle)

    @property
    def merged_time(self) -> float:
        """The organisation's event time (``-inf`` until every origin reported)."""
        if not self.origin_count or len(self.origins) < self.origin_count:
            return _NEG_INF
        active = [time for time, idle in self.origins.values() if not idle]
        return min(active) if active else max(time for time, _ in self.origins.values())

    @property
    def watermark(self) -> float:
        """Merged event time minus the allowed lateness."""
        return self.merged_time - self.allowed_lateness
