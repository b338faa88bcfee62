"""Rule scaling: per-event cost of the Sigma detector with 10, 100 and 1,000 rules loaded.

Every configuration holds the same 10 rules on the traffic's busiest eventNames, plus generated
variants on other eventNames (as a large pack mostly holds rules for calls a given event is not),
so the figure isolates what the *number of loaded rules* costs per event.  The events are the
benchmark traffic.  Target: cost with 1,000 rules <= 2x cost with 10 rules.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.events import generate
from detectors.event import Event
from detectors.sigma.detector import SigmaDetector

_RULE = """title: Generated rule {n}
id: {id}
status: test
logsource:
  product: aws
  service: cloudtrail
detection:
  selection:
    eventSource: {source}
    eventName: {name}
  filter:
    userIdentity.type: AWSService
  condition: selection and not filter
level: medium
tags:
  - attack.t1078
"""


def write_rules(directory: Path, count: int, event_names: list[str]) -> None:
    """``count`` rules: 10 on the real eventNames given, the rest on generated eventNames."""
    for n in range(count):
        name = event_names[n] if n < 10 else f"GeneratedApiCall{n}"
        text = _RULE.format(n=n, id=uuid.UUID(int=n + 1), source="ec2.amazonaws.com" if n % 2 else
                            "iam.amazonaws.com", name=name)
        (directory / f"rule_{n:04d}.yml").write_text(text)


def per_event_cost(count: int, events: list[Event], names: list[str], reps: int) -> float:
    """Median nanoseconds per event for the Sigma detector with ``count`` rules."""
    with tempfile.TemporaryDirectory() as tmp:
        write_rules(Path(tmp), count, names)
        detector = SigmaDetector(SigmaDetector.Config(paths=[tmp]))
        assert len(detector.rules.rules) == count, detector.load_errors
        samples = []
        for _ in range(reps):
            started = time.perf_counter()
            for event in events:
                detector.on_event(event)
            samples.append((time.perf_counter() - started) / len(events) * 1e9)
    return statistics.median(samples)


def run(quick: bool, reps: int) -> list[dict[str, Any]]:
    """One row per rule count, with the ratio to the 10-rule cost."""
    import orjson

    events = [Event(orjson.loads(raw)) for raw in generate(5_000 if quick else 30_000)]
    from collections import Counter

    names = [name for name, _ in Counter(e.event_name for e in events).most_common(10)]
    costs = {n: per_event_cost(n, events, names, max(reps, 3)) for n in (10, 100, 1000)}
    base = costs[10]
    return [{"name": f"sigma rules: {n:>5}", "ns_per_event": round(cost), "ratio_vs_10": round(cost / base, 3),
             "note": "target ratio_vs_10 <= 2 at 1000 rules"} for n, cost in costs.items()]
