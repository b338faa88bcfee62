"""``trailguard detectors test FILE...``: timeline tests for any registered detector — built-in or
plugin — in the same format as correlation rules' timelines (see :mod:`daemon.rules_timelines`).

A detector's tests file (``<module>.tests.json``)::

    {"detector": "secrets_read_spree", "config": {"threshold": 5},
     "timelines": [{"name": "...", "expect": true, "events": [{"at": 0, "repeat": 5, "every": 10, "event": {...}}]}]}

Each timeline runs on a fresh detector (built from ``config`` through its strict model, exactly as
the daemon would) inside a real :class:`~detectors.engine.DetectionEngine`: events in the listed
order, then a final watermark a day past the last event so windows judged on close are judged.
``expect: true`` passes when the detector alerted, ``false`` when it did not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

import orjson
from pydantic import ValidationError

from daemon.rules_timelines import Timeline, TimelineError, _timeline_events, parse_timelines
from detectors.base import DetectorContext
from detectors.engine import DetectionEngine
from detectors.event import InvalidEvent
from detectors.registry import detector_class, detector_names
from detectors.suggest import suggestion

__all__ = ["add_detectors_parser", "run_detector_timeline"]

_FILE_KEYS = frozenset({"detector", "config", "timelines"})


def run_detector_timeline(name: str, settings: dict[str, Any], timeline: Timeline) -> tuple[int, str | None]:
    """(alerts of detector ``name``, error) for one timeline on a fresh detector."""
    cls = detector_class(name)
    detector = cls(cls.Config.model_validate(settings), DetectorContext())
    engine = DetectionEngine([detector])
    try:
        events = _timeline_events(timeline)
    except InvalidEvent as error:
        return 0, f"not a usable CloudTrail record ({error})"
    alerts = []
    for event in events:
        alerts.extend(engine.process_many([event]))
    alerts.extend(detector.on_watermark(engine.max_event_time + 86_400.0) or ())
    # continuations (matches inside a detector's throttle) only feed an incident: not alerts
    return sum(alert.detector == name and not alert.continues for alert in alerts), None


def _load(path: Path) -> tuple[str, dict[str, Any], list[Timeline]]:
    document = orjson.loads(path.read_bytes())
    if not isinstance(document, dict) or set(document) - _FILE_KEYS or "detector" not in document:
        raise TimelineError(f"{path}: must be an object with 'detector', optional 'config', 'timelines'")
    name = document["detector"]
    if name not in detector_names():
        raise TimelineError(f"{path}: detector {name!r} is not registered; fix: "
                            f"{suggestion(str(name), detector_names(), 'detector')}")
    return name, document.get("config") or {}, parse_timelines(document.get("timelines"), str(path))


def cmd_test(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run every tests file; PASS/FAIL per timeline; exit 1 on any failure."""
    out = out or sys.stdout
    from daemon.components import SINKS
    from daemon.config import ConfigError, load_config
    from daemon.plugins import load_plugins

    try:
        modules = load_config(args.config).plugins if args.config else []
    except ConfigError as error:
        print("\n".join(f"ERROR {line}" for line in error.problems), file=out)
        return 1
    problems = load_plugins(modules, args.config or "<defaults>", SINKS)
    for line in problems:
        print(f"ERROR {line}", file=out)
    failed = total = 0
    for raw in args.files:
        try:
            name, settings, timelines = _load(Path(raw))
        except (OSError, orjson.JSONDecodeError, TimelineError) as error:
            print(f"ERROR {raw}: {error}", file=out)
            failed += 1
            continue
        for timeline in timelines:
            total += 1
            try:
                alerts, error = run_detector_timeline(name, settings, timeline)
            except ValidationError as invalid:
                alerts, error = 0, f"config: {invalid.errors()[0]['msg']}"
            ok = error is None and (alerts > 0) is timeline.expected
            kind = "positive" if timeline.expected else "negative"
            detail = error or f"{alerts} alert(s)"
            print(f"{'PASS' if ok else 'FAIL'}  {raw}: {name}: {kind} timeline {timeline.name!r}: {detail}", file=out)
            failed += not ok
    print(f"{total} timeline(s): {total - failed} passed, {failed} failed", file=out)
    return 1 if failed or problems else 0


def add_detectors_parser(sub: Any) -> None:
    """Register ``trailguard detectors test``."""
    detectors = sub.add_parser("detectors", help="test detectors (built-in or plugins) on timelines")
    commands = detectors.add_subparsers(dest="detectors_command", required=True)
    test = commands.add_parser("test", help="run detector timeline tests files")
    test.add_argument("files", nargs="+", help="<module>.tests.json files")
    test.add_argument("--config", "-c", help="config whose plugins: modules to load (entry points always load)")
    test.set_defaults(func=cmd_test)
