"""The merged watermark of internal partitions, as timelines (no broker).

Marks from each input partition (origin) drive an internal partition's engine: nothing is
released before every origin reported, events come out in event-time order once every active
origin has passed them, an origin read to its end does not hold the others back, and held events
survive a snapshot, as does the origins' progress.
"""

from __future__ import annotations

from typing import Any

from daemon.repartition.watermark import MergedWatermarkEngine, decode_mark, encode_mark
from detectors.event import Event, format_time, parse_event_time

T0 = parse_event_time("2024-06-01T00:00:00Z")


def _event(t: float, event_id: str) -> Event:
    record: dict[str, Any] = {"eventTime": format_time(T0 + t), "eventName": "ConsoleLogin",
                              "eventSource": "signin.amazonaws.com", "eventID": event_id,
                              "recipientAccountId": "111111111111"}
    return Event(record, "internal/0")


def _released(engine: MergedWatermarkEngine) -> list[str]:
    out: list[Event] = []
    engine.held.release(out)
    return [e.event_id or "" for e in out]


def test_marks_round_trip_and_garbage_is_not_a_mark() -> None:
    assert decode_mark(encode_mark(2, 6, T0, True)) == (2, 6, T0, True)
    assert decode_mark(encode_mark(0, 1, float("-inf"), False)) == (0, 1, float("-inf"), False)
    assert decode_mark(b'{"eventName": "x"}') is None and decode_mark(b"\xff") is None


def test_nothing_is_released_before_every_origin_reported() -> None:
    engine = MergedWatermarkEngine([], allowed_lateness=900)
    engine.held.push(_event(10, "a"))
    engine.observe_marks([(0, 2, T0 + 100, False)])
    assert _released(engine) == [] and engine.watermark == float("-inf")
    engine.observe_marks([(1, 2, T0 + 50, False)])
    assert engine.merged_time == T0 + 50 and engine.watermark == T0 + 50 - 900
    assert _released(engine) == ["a"]


def test_events_come_out_in_event_time_order_across_origins() -> None:
    engine = MergedWatermarkEngine([], allowed_lateness=900)
    # origin 0 was read first, all of it; origin 1 lags behind
    for t, name in ((300, "late-partition-3"), (100, "p0-1"), (200, "p0-2")):
        engine.held.push(_event(t, name))
    engine.observe_marks([(0, 2, T0 + 300, False), (1, 2, T0 + 150, False)])
    assert _released(engine) == ["p0-1"]
    engine.held.push(_event(120, "p1-1"))  # origin 1's older event is not late: it comes next
    engine.observe_marks([(1, 2, T0 + 400, False)])
    assert _released(engine) == ["p1-1", "p0-2", "late-partition-3"]


def test_an_origin_read_to_its_end_does_not_hold_the_others_back() -> None:
    engine = MergedWatermarkEngine([], allowed_lateness=0)
    engine.observe_marks([(0, 3, T0 + 500, False), (1, 3, float("-inf"), True), (2, 3, T0 + 20, True)])
    assert engine.merged_time == T0 + 500  # only origin 0 is still being read
    engine.observe_marks([(0, 3, T0 + 600, True)])
    assert engine.merged_time == T0 + 600  # all read to their end: the newest progress
    engine.observe_marks([(2, 3, T0 + 10, False)])  # a mark never moves an origin back
    assert engine.origins[2] == (T0 + 20, False) and engine.merged_time == T0 + 20


def test_held_events_are_part_of_the_snapshot() -> None:
    engine = MergedWatermarkEngine([], allowed_lateness=900)
    engine.held.push(_event(5, "held"))
    state = engine.snapshot()
    restored = MergedWatermarkEngine([], allowed_lateness=900)
    restored.restore(state)
    restored.observe_marks([(0, 1, T0 + 5, False)])
    assert _released(restored) == ["held"]


def test_the_origins_progress_survives_a_snapshot() -> None:
    # every input partition was read to its end and then moved: its new owner read no event, so its
    # marks say only "idle" (time -inf); the restored engine still knows how far each origin got
    engine = MergedWatermarkEngine([], allowed_lateness=0)
    engine.held.push(_event(5, "held"))
    engine.observe_marks([(0, 2, T0 + 10, False), (1, 2, T0 + 20, False)])
    restored = MergedWatermarkEngine([], allowed_lateness=0)
    restored.restore(engine.snapshot())
    assert restored.merged_time == T0 + 10
    restored.observe_marks([(0, 2, float("-inf"), True), (1, 2, float("-inf"), True)])
    assert restored.merged_time == T0 + 20 and _released(restored) == ["held"]
