"""JSON-lines replay: one ``.jsonl`` file.  A: read + ``orjson.loads`` per line.  B: ``trailguard replay``.

Why it exists: JSON lines (``tail -f``, Athena and CloudTrail Lake exports, ``jq -c`` output) is
the second way archives reach trailguard, and unlike S3 delivery files its raw baseline has no
gunzip to hide behind, so it shows the per-event cost outside detection most plainly.  B runs the
default configuration (every detector, the rule pack), as :mod:`bench.scenarios.archive` does;
its events/s comes from replay's own summary, so process start-up is reported separately
(``startup_seconds``).  The file and the helpers are shared with :mod:`bench.scenarios.sigma_only`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.events import generate
from bench.scenarios.archive import replay

__all__ = ["raw_lines", "run", "write_lines"]


def write_lines(path: Path, count: int) -> int:
    """Write ``count`` benchmark events to ``path`` as JSON lines."""
    with path.open("wb") as handle:
        for raw in generate(count):
            handle.write(raw)
            handle.write(b"\n")
    return count


def raw_lines(path: Path) -> float:
    """Events/s for reading the file and ``orjson.loads``-ing every line, nothing else."""
    started = time.perf_counter()
    count = 0
    for line in path.read_bytes().splitlines():
        if line:
            orjson.loads(line)
            count += 1
    return count / (time.perf_counter() - started)


def run(quick: bool, reps: int, size: int | None = None) -> list[dict[str, Any]]:
    """The JSON-lines scenario's row; ``size`` overrides the event count (the smoke test uses a tiny one)."""
    from bench.run import ab

    count = size or (20_000 if quick else 100_000)
    with tempfile.TemporaryDirectory(prefix="tg-bench-jsonl-") as tmp:
        path = Path(tmp) / "events.jsonl"
        write_lines(path, count)
        extra: dict[str, Any] = {}
        result = ab(lambda: raw_lines(path), lambda: replay(path, extra), reps)
    return [{"name": f"JSON-lines replay ({count:,} events)", **result, **extra,
             "note": "target B/A >= 0.2; B excludes process start-up (see startup_seconds)"}]
