"""JSON-lines replay: one ``.jsonl`` file.  A: read + ``orjson.loads`` per line.  B: ``trailguard replay``.

Why it exists: JSON lines (``tail -f``, Athena and CloudTrail Lake exports, ``jq -c`` output) is
the second way archives reach trailguard, and unlike S3 delivery files its raw baseline has no
gunzip to hide behind, so it shows the per-event cost outside detection most plainly.  B runs the
default configuration (every detector, the rule pack), as :mod:`bench.scenarios.archive` does;
its events/s comes from replay's own summary, so process start-up is reported separately
(``startup_seconds``).  The file, the helpers and the shape of :func:`run` (:func:`replay_rows`) are shared with
:mod:`bench.scenarios.sigma_only`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench.events import generate
from bench.scenarios.archive import replay

__all__ = ["raw_lines", "replay_rows", "run", "write_lines"]


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


def replay_rows(prefix: str, quick: bool, reps: int, size: int | None,
                config: Callable[[Path], Path | None] = lambda _tmp: None,
                ) -> tuple[int, Path, dict[str, Any], dict[str, Any]]:
    """The shape both JSON-lines scenarios share: write the file, A/B the raw loop and a replay of it.

    ``config(tmp)`` writes the replay's configuration into the scenario's directory (``None``: the
    defaults).  Returns the event count, the file (kept for the caller's further rows: the caller
    removes its directory), the A/B result and replay's extras (start-up, alerts, events).
    """
    from bench.run import ab

    count = size or (20_000 if quick else 100_000)
    tmp = Path(tempfile.mkdtemp(prefix=f"tg-bench-{prefix}-"))
    path = tmp / "events.jsonl"
    try:
        write_lines(path, count)
        replay_config = config(tmp)
        extra: dict[str, Any] = {}
        result = ab(lambda: raw_lines(path), lambda: replay(path, extra, replay_config), reps)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return count, path, result, extra


def run(quick: bool, reps: int, size: int | None = None) -> list[dict[str, Any]]:
    """The JSON-lines scenario's row; ``size`` overrides the event count (the smoke test uses a tiny one)."""
    count, path, result, extra = replay_rows("jsonl", quick, reps, size)
    shutil.rmtree(path.parent, ignore_errors=True)
    return [{"name": f"JSON-lines replay ({count:,} events)", **result, **extra,
             "note": "target B/A >= 0.2; B excludes process start-up (see startup_seconds)"}]
