"""Correlation-rule timelines: what ``trailguard rules test`` runs instead of single events.

A correlation only fires on several records spread over time, so one labelled event cannot test it.
Its tests are *timelines*, given in the rule's tests sidecar (see :mod:`daemon.rules_cli`)::

    {"rule_id": "<uuid>",
     "timelines": [{"name": "...", "source": "...", "expect": true,
                    "events": [{"at": 0, "event": {...}}, {"at": 30, "repeat": 5, "every": 10, "event": {...}}]}]}

This module parses the ``timelines`` list and runs one timeline; finding sidecars and matching their
blocks to rules stays with the CLI.  Each timeline runs on a fresh fork of a real
:class:`~detectors.sigma.detector.SigmaDetector` inside a :class:`~detectors.engine.DetectionEngine`
with the default allowed lateness: events are fed one by one in the listed order (``eventTime``
rewritten to ``TIMELINE_EPOCH + at``; a ``repeat``-ed event recurs every ``every`` seconds, its copies'
``eventID`` suffixed ``#n``), the watermark advancing after each, then a final watermark past every
window so windows that are judged when they close are judged.  ``expect: true`` passes when the
correlation fired (an alert with its ``rule_id``); ``false`` when it did not.  A correlation that only
feeds another (``generate: false``) is tested as if it alerted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final

from detectors.engine import DetectionEngine
from detectors.event import Event, InvalidEvent, format_time
from detectors.sigma.detector import SigmaDetector

__all__ = [
    "TIMELINE_EPOCH",
    "TimedEvent",
    "Timeline",
    "TimelineError",
    "TimelineResult",
    "parse_timelines",
    "run_timeline",
]

#: Where timelines start: ``eventTime`` of an event is this plus its ``at`` (2024-01-01T00:00:00Z).
TIMELINE_EPOCH: Final = 1_704_067_200.0
_TIMELINE_KEYS: Final = frozenset({"name", "source", "expect", "events"})
_TIMED_KEYS: Final = frozenset({"at", "event", "repeat", "every"})


class TimelineError(ValueError):
    """A ``timelines`` list of the wrong shape; the message names where (file, timeline) and why."""


@dataclass(frozen=True, slots=True)
class TimedEvent:
    """One record of a timeline, at ``at`` seconds after its start (``repeat`` times, ``every`` s apart)."""

    at: float
    event: Any
    repeat: int = 1
    every: float = 0.0


@dataclass(frozen=True, slots=True)
class Timeline:
    """Records in delivery order; the correlation must fire on them (``expected``) or must not."""

    name: str
    events: tuple[TimedEvent, ...]
    expected: bool
    source: str = ""


@dataclass(frozen=True, slots=True)
class TimelineResult:
    """What the detector did with one timeline: how many alerts the correlation raised."""

    case: Timeline
    alerts: int
    late: int = 0
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and (self.alerts > 0) is self.case.expected

    def explain(self) -> str:
        kind = "positive" if self.case.expected else "negative"
        if self.error is not None:
            return f"{kind} timeline {self.case.name!r}: {self.error}"
        late = f" ({self.late} event(s) arrived too late to count)" if self.late else ""
        if self.alerts:
            return f"{kind} timeline {self.case.name!r}: correlation fired {self.alerts} time(s){late}"
        return f"{kind} timeline {self.case.name!r}: correlation did not fire{late}"


def _number(value: Any, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise TimelineError(f"{where}: {what} must be a number >= 0, not {value!r}")
    return float(value)


def _timed_event(entry: Any, where: str) -> TimedEvent:
    if not isinstance(entry, dict) or "event" not in entry or "at" not in entry:
        raise TimelineError(f"{where}: each event must be an object with 'at' and 'event'")
    unknown = set(entry) - _TIMED_KEYS
    if unknown:
        raise TimelineError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    repeat = entry.get("repeat", 1)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise TimelineError(f"{where}: 'repeat' must be an integer >= 1, not {repeat!r}")
    every = _number(entry.get("every", 0), "'every'", where)
    return TimedEvent(_number(entry["at"], "'at'", where), entry["event"], repeat, every)


def parse_timelines(entries: Any, where: str) -> list[Timeline]:
    """The timelines of a sidecar block's ``timelines`` value (``None``: none); ``where`` prefixes errors.

    Raises :class:`TimelineError` on anything but the documented shape (unknown keys included).
    """
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise TimelineError(f"{where}: 'timelines' must be a list")
    timelines = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise TimelineError(f"{where}: timeline #{index} must be an object")
        name = str(entry.get("name") or f"#{index}")
        here = f"{where}: timeline {name!r}"
        unknown = set(entry) - _TIMELINE_KEYS
        if unknown:
            raise TimelineError(f"{here}: unknown key(s) {', '.join(sorted(unknown))}")
        if not isinstance(entry.get("expect"), bool):
            raise TimelineError(f"{here}: needs 'expect': true or false")
        events = entry.get("events")
        if not isinstance(events, list) or not events:
            raise TimelineError(f"{here}: 'events' must be a non-empty list")
        timed = tuple(_timed_event(event, here) for event in events)
        timelines.append(Timeline(name, timed, entry["expect"], str(entry.get("source") or "")))
    return timelines


def _timeline_events(timeline: Timeline) -> list[Event]:
    """The timeline's records with ``eventTime`` (and repeated copies' ``eventID``) rewritten."""
    events = []
    for timed in timeline.events:
        if not isinstance(timed.event, dict):
            raise InvalidEvent("not_an_object", f"record is a {type(timed.event).__name__}, not an object")
        for copy in range(timed.repeat):
            raw = dict(timed.event)
            raw["eventTime"] = format_time(TIMELINE_EPOCH + timed.at + copy * timed.every)
            if copy and isinstance(raw.get("eventID"), str):
                raw["eventID"] = f"{raw['eventID']}#{copy}"
            events.append(Event(raw, "rule-test"))
    return events


def run_timeline(detector: SigmaDetector, rule_id: str, timeline: Timeline) -> TimelineResult:
    """Feed ``timeline`` to a fresh fork of ``detector`` in an engine; count correlation ``rule_id``'s alerts.

    Every correlation of the fork alerts (``generate`` forced on), so a correlation that only feeds
    another can be tested as firing; ``detector`` itself is left untouched.
    """
    try:
        events = _timeline_events(timeline)
    except InvalidEvent as error:
        return TimelineResult(timeline, 0, error=f"not a usable CloudTrail record ({error})")
    late = [0]

    def on_late(_detector: str, n: int) -> None:
        late[0] += n

    twin = detector.fork(generate_all=True, context=dataclasses.replace(detector.context, on_late=on_late))
    engine = DetectionEngine([twin])
    alerts = []
    for event in events:
        alerts.extend(engine.process_many([event]))
    plans = (*twin.correlations.plans, *twin.new_terms.plans)
    horizon = max((plan.timespan for plan in plans), default=0.0) + engine.allowed_lateness + 1.0
    alerts.extend(twin.on_watermark(engine.max_event_time + horizon) or ())
    count = sum(alert.rule_id == rule_id and not alert.continues for alert in alerts)  # not continuations
    return TimelineResult(timeline, count, late=late[0])
