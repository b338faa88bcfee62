"""Start-up: seconds from ``trailguard run`` being started to ``/readyz`` answering 200.

Why it exists: a restarted pod, a rolled-out config or a crashed instance is blind until it is
ready, and Kubernetes' readiness probe decides when it gets traffic.  The daemon runs the shipped
default configuration (``config/trailguard.yaml``: file source on the samples, stdout sink, every
detector, the rule pack, GeoIP and AWS ranges) with only the operator endpoint moved to a free
port and relative paths made absolute.  The clock starts before the process is spawned and stops
at the first ``/readyz`` 200 (polled every 5 ms), so it includes the interpreter, every import,
config validation, rule loading, enrichment and the endpoint binding.

Bytecode is compiled first (``compileall``), as ``pip install`` and the container image do: this
machine's environment sets ``PYTHONDONTWRITEBYTECODE``, and without ``.pyc`` files every run
would also pay for compiling the project's sources.  A is a bare interpreter start
(``python -c pass``) for scale.  Target ≤ 1 s; median of ``--reps`` (at least 3) runs.
"""

from __future__ import annotations

import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Final

import orjson
import yaml

from bench.scenarios.kafka import free_port

__all__ = ["default_config", "run", "seconds_to_ready"]

ROOT: Final = Path(__file__).resolve().parents[2]
CONFIG: Final = ROOT / "config" / "trailguard.yaml"
POLL: Final = 0.005
TIMEOUT: Final = 60.0


def default_config(port: int) -> dict[str, Any]:
    """The shipped configuration, endpoint on ``port``, its relative paths resolved."""
    config = yaml.safe_load(CONFIG.read_text())
    base = CONFIG.parent
    for source in config.get("sources") or ():
        if "paths" in source:
            source["paths"] = [str((base / p).resolve()) for p in source["paths"]]
    sigma = (config.get("detectors") or {}).get("sigma") or {}
    if "paths" in sigma:
        sigma["paths"] = [str((base / p).resolve()) for p in sigma["paths"]]
    config["metrics"] = {**(config.get("metrics") or {}), "host": "127.0.0.1", "port": port}
    return config


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def seconds_to_ready(workdir: Path) -> float:
    """One start of the default configuration: wall seconds until ``/readyz`` is 200."""
    port = free_port()
    path = workdir / "trailguard.yaml"
    path.write_bytes(orjson.dumps(default_config(port)))  # JSON is YAML
    with (workdir / "stderr.log").open("wb") as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--config", str(path)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            while not _ready(port):
                if proc.poll() is not None:
                    raise RuntimeError(f"trailguard exited with {proc.returncode}: "
                                       f"{(workdir / 'stderr.log').read_bytes()[-2000:].decode(errors='replace')}")
                if time.perf_counter() - started > TIMEOUT:
                    raise RuntimeError(f"not ready after {TIMEOUT} s")
                time.sleep(POLL)
            return time.perf_counter() - started
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _bare_interpreter() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def run(quick: bool = False, reps: int = 3) -> list[dict[str, Any]]:
    """Median seconds to ready over ``max(reps, 3)`` starts (bare interpreter start alongside)."""
    for package in ("daemon", "detectors"):
        compileall.compile_dir(str(ROOT / package), quiet=1)
    ready: list[float] = []
    bare: list[float] = []
    with tempfile.TemporaryDirectory(prefix="tg-startup-") as tmp:
        for _ in range(max(reps, 3)):
            bare.append(_bare_interpreter())
            ready.append(seconds_to_ready(Path(tmp)))
    seconds = statistics.median(ready)
    load = os.getloadavg()[0]
    return [{
        "name": "start-up to /readyz 200",
        "startup_seconds": round(seconds, 3),
        "runs": [round(v, 3) for v in ready],
        "bare_interpreter_seconds": round(statistics.median(bare), 3),
        "load_average": round(load, 2),
        "target_seconds": 1.0,
        "note": (f"{seconds:.2f} s median of {[round(v, 2) for v in ready]} (bare python "
                 f"{statistics.median(bare):.2f} s; load {load:.1f}); target ≤ 1 s"
                 f" — {'met' if seconds <= 1.0 else 'MISSED'}"),
    }]
