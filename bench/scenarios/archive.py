"""Archive replay: S3-layout ``.json.gz`` files.  A: gunzip + orjson.loads + iterate Records.  B: ``trailguard replay``.

B's events/s is taken from replay's own summary (processing time: from the pipeline start to the
last alert flushed), so process start-up (imports, rule compilation, GeoIP open) is reported
separately as ``startup_seconds`` rather than folded into the ratio.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.events import generate

ROOT = Path(__file__).resolve().parents[2]


def write_archive(directory: Path, count: int, per_file: int = 1000) -> int:
    """Write ``count`` events as CloudTrail delivery files under an S3 ``AWSLogs`` layout."""
    events = [orjson.loads(raw) for raw in generate(count)]
    day = directory / "AWSLogs" / "111122223333" / "CloudTrail" / "us-east-1" / "2025" / "01" / "01"
    day.mkdir(parents=True)
    for index in range(0, count, per_file):
        body = orjson.dumps({"Records": events[index:index + per_file]})
        name = f"111122223333_CloudTrail_us-east-1_20250101T{index // per_file:04d}Z_bench.json.gz"
        (day / name).write_bytes(gzip.compress(body, compresslevel=6))
    return count


def raw_baseline(directory: Path) -> float:
    """Events/s for gunzip + orjson.loads + iterate Records, nothing else."""
    started = time.perf_counter()
    count = 0
    for path in sorted(directory.rglob("*.json.gz")):
        document = orjson.loads(gzip.decompress(path.read_bytes()))
        for _record in document["Records"]:
            count += 1
    return count / (time.perf_counter() - started)


def replay(directory: Path, extra: dict[str, Any], config: Path | None = None) -> float:
    """Events/s of ``trailguard replay`` (processing time from its summary); records start-up in ``extra``.

    ``config``: a configuration file for the replay (default: the built-in defaults).
    """
    started = time.perf_counter()
    options = ["--config", str(config)] if config is not None else []
    result = subprocess.run([sys.executable, "-m", "daemon.cli", "replay", "--quiet", *options, str(directory)],
                            cwd=ROOT, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(result.stderr.decode()[-2000:])
    summary = None
    for line in result.stderr.decode().splitlines():
        if line.startswith("trailguard replay summary: "):
            summary = orjson.loads(line.split(": ", 1)[1])
    if summary is None:
        raise RuntimeError("no summary from trailguard replay")
    extra.setdefault("startup_seconds", []).append(round(wall - summary["seconds"], 2))
    extra["alerts"] = summary["alerts"]
    extra["events"] = summary["events"]
    return summary["events"] / summary["seconds"]


def run(quick: bool, reps: int) -> list[dict[str, Any]]:
    """The archive scenario's row."""
    from bench.run import ab

    count = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="tg-bench-archive-") as tmp:
        directory = Path(tmp)
        write_archive(directory, count)
        extra: dict[str, Any] = {}
        result = ab(lambda: raw_baseline(directory), lambda: replay(directory, extra), reps)
    return [{"name": f"archive replay ({count:,} events)", **result, **extra,
             "note": "target B/A >= 0.4; B excludes process start-up (see startup_seconds)"}]
