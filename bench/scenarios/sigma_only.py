"""Replay with only the Sigma detector, against the JSON-lines raw loop and the engine in-process.

Why it exists: the Sigma engine alone (``Event`` + the indexed rule pack, called in a loop) runs
at about a third of the raw decode loop, yet a replay with only that detector enabled ran at a
twentieth: the difference is everything around detection (decode hand-off, dedupe, reorder,
per-batch bookkeeping, alert building and encoding).  Two rows over the same JSON-lines file:

* **replay**: A = read + ``orjson.loads`` per line (:func:`bench.scenarios.jsonl.raw_lines`),
  B = ``trailguard replay`` with every detector but ``sigma`` disabled;
* **engine in-process**: the same A, B = ``orjson.loads`` + ``Event`` + the Sigma detector's
  ``on_event`` per line in one loop — the ceiling the replay row is measured against.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import orjson

from bench.scenarios.jsonl import raw_lines, replay_rows

__all__ = ["run", "sigma_only_config"]


def sigma_only_config(path: Path) -> Path:
    """Write a configuration enabling only the ``sigma`` detector (the shipped pack) to ``path``."""
    from detectors.registry import detector_names

    detectors: dict[str, Any] = {name: {"enabled": False} for name in detector_names() if name != "sigma"}
    path.write_bytes(orjson.dumps({"detectors": detectors}))  # JSON is YAML
    return path


def _sigma_detector(config: Path) -> Any:
    from daemon.app import build_enricher
    from daemon.cli import _load
    from daemon.components import build_detectors
    from detectors.base import DetectorContext

    loaded, built = _load(str(config))
    context = DetectorContext(enricher=build_enricher(loaded), allowed_lateness=loaded.pipeline.allowed_lateness)
    (detector,) = build_detectors(built, context)
    return detector


def engine_in_process(path: Path, detector: Any) -> float:
    """Events/s of ``orjson.loads`` + ``Event`` + the Sigma detector, in one loop (no pipeline)."""
    from detectors.event import Event

    lines = path.read_bytes().splitlines()
    fork = detector.fork()
    started = time.perf_counter()
    count = 0
    on_event = fork.on_event
    for line in lines:
        if line:
            on_event(Event(orjson.loads(line)))
            count += 1
    return count / (time.perf_counter() - started)


def run(quick: bool, reps: int, size: int | None = None) -> list[dict[str, Any]]:
    """The Sigma-only rows: the replay and, for reference, the engine alone; ``size`` overrides the count."""
    from bench.run import ab

    count, path, replayed, extra = replay_rows("sigma", quick, reps, size,
                                               lambda tmp: sigma_only_config(tmp / "sigma-only.yaml"))
    try:
        detector = _sigma_detector(path.parent / "sigma-only.yaml")
        engine = ab(lambda: raw_lines(path), lambda: engine_in_process(path, detector), reps)
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    return [
        {"name": f"Sigma-only replay ({count:,} events)", **replayed, **extra,
         "note": "target B/A >= 0.15; B excludes process start-up (see startup_seconds)"},
        {"name": f"Sigma engine in-process ({count:,})", **engine,
         "note": "reference: the ceiling of the row above (no pipeline)"},
    ]
