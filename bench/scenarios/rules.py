"""Rule scaling: per-event cost of the Sigma detector with 10, 100 and 1,000 rules loaded.

Every configuration holds the same 10 rules on the traffic's busiest eventNames, plus generated
variants on other eventNames (as a large pack mostly holds rules for calls a given event is not),
so the figure isolates what the *number of loaded rules* costs per event.  One rule in five also
feeds a trailguard ``new_terms`` correlation (first address per principal for that call, the rule
type the pack's precision work adds), so the busy rules carry first-seen state and the large
configurations carry 200 correlations.  The events are the benchmark traffic.  Target (issue 15):
cost with 1,000 rules <= 1.1x cost with 10 rules.
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


_NEW_TERMS = """title: Generated first address {n}
id: {id}
status: test
correlation:
  type: new_terms
  rules:
    - {rule}
  group-by:
    - principal
  terms:
    - source_ip
  history: 30d
  learning: 1h
  generate: true
level: low
"""

#: One rule in this many also feeds a ``new_terms`` correlation.
NEW_TERMS_EVERY = 5


def write_rules(directory: Path, count: int, event_names: list[str]) -> None:
    """``count`` rules: 10 on the real eventNames given, the rest on generated eventNames; one in
    :data:`NEW_TERMS_EVERY` also referenced by a ``new_terms`` correlation."""
    for n in range(count):
        name = event_names[n] if n < 10 else f"GeneratedApiCall{n}"
        rule_id = uuid.UUID(int=n + 1)
        text = _RULE.format(n=n, id=rule_id, source="ec2.amazonaws.com" if n % 2 else
                            "iam.amazonaws.com", name=name)
        (directory / f"rule_{n:04d}.yml").write_text(text)
        if n % NEW_TERMS_EVERY == 0:
            (directory / f"new_terms_{n:04d}.yml").write_text(
                _NEW_TERMS.format(n=n, id=uuid.UUID(int=1_000_000 + n), rule=rule_id))


def sigma_with(count: int, directory: Path, names: list[str]) -> SigmaDetector:
    """A Sigma detector loaded with ``count`` generated rules (written under ``directory``)."""
    directory.mkdir()
    write_rules(directory, count, names)
    detector = SigmaDetector(SigmaDetector.Config(paths=[str(directory)]))
    assert len(detector.rules.rules) == count, detector.load_errors
    assert len(detector.rules.new_terms) == -(-count // NEW_TERMS_EVERY), detector.load_errors
    return detector


def one_pass(detector: SigmaDetector, events: list[Event]) -> float:
    """CPU nanoseconds per event of one pass (``process_time``: other load's time does not count)."""
    started = time.process_time()
    for event in events:
        detector.on_event(event)
    return (time.process_time() - started) / len(events) * 1e9


def run(quick: bool, reps: int) -> list[dict[str, Any]]:
    """One row per rule count, with the ratio to the 10-rule cost; the counts take turns each rep."""
    import orjson

    events = [Event(orjson.loads(raw)) for raw in generate(5_000 if quick else 30_000)]
    from collections import Counter

    names = [name for name, _ in Counter(e.event_name for e in events).most_common(10)]
    counts = (10, 100, 1000)
    samples: dict[int, list[float]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory() as tmp:
        detectors = {n: sigma_with(n, Path(tmp) / str(n), names) for n in counts}
        for n in counts:  # a first pass each: first-seen state learnt, caches warm
            one_pass(detectors[n], events)
        for _ in range(max(reps, 3)):
            for n in counts:
                samples[n].append(one_pass(detectors[n], events))
    costs = {n: statistics.median(values) for n, values in samples.items()}
    base = costs[10]
    return [{"name": f"sigma rules: {n:>5}", "ns_per_event": round(cost), "ratio_vs_10": round(cost / base, 3),
             "runs_ns": [round(v) for v in samples[n]],
             "note": f"incl. {-(-n // NEW_TERMS_EVERY)} new_terms; target ratio_vs_10 <= 1.1 at 1000 rules"}
            for n, cost in costs.items()]
