"""What the stateful detectors' timeline tests build events and engines with.

Why it exists: every stateful detector's test rewrites a real CloudTrail record (time, id, a few
fields) into the events of a timeline, counts the late and evicted events its detector reports,
and feeds a :class:`~detectors.engine.DetectionEngine` in batches.  Those builders live here once,
so each test file keeps only what is particular to its detector.
"""

from __future__ import annotations

import copy
import gzip
from functools import cache
from pathlib import Path
from typing import Any

import msgpack
import orjson

from detectors.alert import Alert
from detectors.base import Detector, DetectorContext, Enricher
from detectors.engine import DetectionEngine
from detectors.event import Event, format_time

__all__ = ["Counters", "detector_engine", "from_template", "invictus_iam_user_record", "roundtrip",
           "run_detector", "run_engine"]

DATA = Path(__file__).parent / "data" / "stateful"
_INVICTUS_FILE = (DATA / "travel" / "invictus"
                  / "218007301253_CloudTrail_us-east-1_20230710T1150Z_1vnLavRRp0ek1mP4.json.gz")


def from_template(template: dict[str, Any], time: float, event_id: str) -> dict[str, Any]:
    """A deep copy of the record ``template`` at epoch ``time`` with ``eventID`` ``event_id``."""
    record = copy.deepcopy(template)
    record["eventTime"] = format_time(time)
    record["eventID"] = event_id
    return record


@cache
def invictus_iam_user_record() -> dict[str, Any]:
    """A real Invictus IAMUser record with a source address (``tests/data/stateful/travel/invictus``).

    Shared and cached: copy it (:func:`from_template`) before changing anything.
    """
    records = orjson.loads(gzip.decompress(_INVICTUS_FILE.read_bytes()))["Records"]
    return next(r for r in records if r["userIdentity"]["type"] == "IAMUser" and r.get("sourceIPAddress"))


class Counters:
    """Counts what a detector reports through its context's ``on_late`` and ``on_evict`` hooks."""

    def __init__(self) -> None:
        self.late = 0
        self.evicted = 0

    def context(self, enricher: Enricher | None = None) -> DetectorContext:
        """A detector context reporting into these counters."""
        if enricher is None:
            return DetectorContext(on_late=self.on_late, on_evict=self.on_evict)
        return DetectorContext(enricher=enricher, on_late=self.on_late, on_evict=self.on_evict)

    def on_late(self, _detector: str, n: int) -> None:
        self.late += n

    def on_evict(self, _detector: str, n: int) -> None:
        self.evicted += n


def detector_engine(cls: type[Detector], counters: Counters | None = None, lateness: float = 60.0,
                    **settings: Any) -> DetectionEngine:
    """An engine running one ``cls`` configured with ``settings`` (hooks into ``counters`` if given)."""
    context = counters.context() if counters else DetectorContext()
    return DetectionEngine([cls(cls.Config(**settings), context)], allowed_lateness=lateness)


def run_engine(engine: DetectionEngine, events: list[Event], batch: int) -> list[Alert]:
    """Feed ``events`` to ``engine`` in batches of ``batch``; every alert, in order."""
    out: list[Alert] = []
    for start in range(0, len(events), batch):
        out.extend(engine.process_many(events[start:start + batch]))
    return out


def run_detector(detector: Detector, *batches: list[Event], lateness: float = 900.0) -> list[Alert]:
    """Run ``detector`` in a fresh engine over ``batches`` (one ``process_many`` each); every alert."""
    engine = DetectionEngine([detector], allowed_lateness=lateness)
    out: list[Alert] = []
    for batch in batches:
        out.extend(engine.process_many(batch))
    return out


def roundtrip(state: Any) -> Any:
    """``state`` through msgpack and back, as a checkpoint stores it."""
    return msgpack.unpackb(msgpack.packb(state, use_bin_type=True), raw=False, strict_map_key=False)
