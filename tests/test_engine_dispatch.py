"""The engine's per-event dispatch: candidates and their exceptions are looked up once per
(eventSource, eventName), not re-derived for every event.

The exceptions themselves (which events they keep from which detector) are pinned by
``tests/test_detector_exceptions.py``; this pins that an event of an already-seen kind costs no
exceptions check for a detector that has none, and that a disabled detector leaves the plan.
"""

from __future__ import annotations

from typing import Any

import pytest

from detectors.alert import Alert
from detectors.base import Detector
from detectors.engine import DetectionEngine
from detectors.event import Event, format_time, parse_event_time
from detectors.exceptions import DetectorExceptions

T0 = parse_event_time("2024-06-01T00:00:00Z")


class Counting(Detector):
    """Alerts on nothing; counts the events it is fed."""

    name = "counting"

    def __init__(self, *_: Any) -> None:
        super().__init__(self.Config(), None)
        self.fed = 0

    def on_event(self, event: Event) -> list[Alert] | None:
        self.fed += 1
        return None


def _event(index: int, name: str = "ListBuckets") -> Event:
    return Event({"eventTime": format_time(T0 + index), "eventName": name, "eventSource": "s3.amazonaws.com",
                  "eventID": f"e{index}", "recipientAccountId": "111111111111"})


def test_exceptions_are_asked_once_per_event_kind_not_per_event(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []
    original = DetectorExceptions.__bool__

    def counted(self: DetectorExceptions) -> bool:
        asked.append(1)
        return original(self)

    monkeypatch.setattr(DetectorExceptions, "__bool__", counted)
    detector = Counting()
    engine = DetectionEngine([detector])
    out: list[Alert] = []
    for index in range(100):
        engine.process(_event(index), out)
    for index in range(100, 150):
        engine.process(_event(index, "GetObject"), out)
    assert detector.fed == 150
    assert len(asked) == 2  # one plan per (eventSource, eventName), every event after that reuses it


def test_a_reindex_rebuilds_the_plan() -> None:
    detector = Counting()
    engine = DetectionEngine([detector])
    out: list[Alert] = []
    engine.process(_event(0), out)
    engine.disabled.add(detector.name)
    engine.reindex()
    engine.process(_event(1), out)
    assert detector.fed == 1  # the disabled detector is no longer in the cached plan
