"""Start-up: seconds from ``trailguard run`` being started to ``/readyz`` answering 200.

Why it exists: a restarted pod, a rolled-out config or a crashed instance is blind until it is
ready, and Kubernetes' readiness probe decides when it gets traffic.  The daemon runs the shipped
default configuration (``config/trailguard.yaml``: file source on the samples, stdout sink, every
detector, the rule pack, GeoIP and AWS ranges) with only the operator endpoint moved to a free
port and relative paths made absolute.  The clock starts before the process is spawned and stops
at the first ``/readyz`` 200 (polled every 5 ms), so it includes the interpreter, every import,
config validation, rule loading, enrichment and the endpoint binding.

``python -m bench.scenarios.startup OTHER_TREE [--reps N]`` compares two source trees (e.g. a
``git worktree`` of main as A, this tree as B), starting them in turns, A/B/A/B.

Bytecode is compiled first (``compileall``), as ``pip install`` and the container image do: this
machine's environment sets ``PYTHONDONTWRITEBYTECODE``, and without ``.pyc`` files every run
would also pay for compiling the project's sources.  A is a bare interpreter start
(``python -c pass``) for scale.  Target ≤ 1 s; median of ``--reps`` (at least 3) runs.  The
daemon's CPU seconds at that moment (``/proc/<pid>/stat``) are reported too: on a shared machine
the wall clock mostly measures the neighbours.
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

__all__ = ["compare", "default_config", "run", "seconds_to_ready"]

ROOT: Final = Path(__file__).resolve().parents[2]
CONFIG: Final = ROOT / "config" / "trailguard.yaml"
POLL: Final = 0.005
TIMEOUT: Final = 60.0


def default_config(port: int, root: Path = ROOT) -> dict[str, Any]:
    """The shipped configuration of the tree at ``root``, endpoint on ``port``, its relative paths resolved."""
    path = root / CONFIG.relative_to(ROOT)
    config = yaml.safe_load(path.read_text())
    base = path.parent
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


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds the process has used so far (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def seconds_to_ready(workdir: Path, root: Path = ROOT) -> tuple[float, float | None]:
    """One start of the default configuration (of the source tree at ``root``) until ``/readyz`` is 200:
    (wall seconds, CPU seconds of the daemon by then — what a busy machine does not inflate)."""
    port = free_port()
    path = workdir / "trailguard.yaml"
    path.write_bytes(orjson.dumps(default_config(port, root)))  # JSON is YAML
    with (workdir / "stderr.log").open("wb") as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--config", str(path)],
                                cwd=root, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            while not _ready(port):
                if proc.poll() is not None:
                    raise RuntimeError(f"trailguard exited with {proc.returncode}: "
                                       f"{(workdir / 'stderr.log').read_bytes()[-2000:].decode(errors='replace')}")
                if time.perf_counter() - started > TIMEOUT:
                    raise RuntimeError(f"not ready after {TIMEOUT} s")
                time.sleep(POLL)
            return time.perf_counter() - started, _cpu_seconds(proc.pid)
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
    cpu: list[float] = []
    bare: list[float] = []
    with tempfile.TemporaryDirectory(prefix="tg-startup-") as tmp:
        for _ in range(max(reps, 3)):
            bare.append(_bare_interpreter())
            wall, used = seconds_to_ready(Path(tmp))
            ready.append(wall)
            if used is not None:
                cpu.append(used)
    seconds = statistics.median(ready)
    cpu_seconds = statistics.median(cpu) if cpu else None
    load = os.getloadavg()[0]
    return [{
        "name": "start-up to /readyz 200",
        "startup_seconds": round(seconds, 3),
        "startup_cpu_seconds": round(cpu_seconds, 3) if cpu_seconds is not None else None,
        "runs": [round(v, 3) for v in ready],
        "bare_interpreter_seconds": round(statistics.median(bare), 3),
        "load_average": round(load, 2),
        "target_seconds": 1.0,
        "note": (f"{seconds:.2f} s median of {[round(v, 2) for v in ready]}, CPU {cpu_seconds or 0:.2f} s "
                 f"(bare python "
                 f"{statistics.median(bare):.2f} s; load {load:.1f}); target ≤ 1 s"
                 f" — {'met' if seconds <= 1.0 else 'MISSED'}"),
    }]


def compare(before: Path, after: Path = ROOT, reps: int = 5) -> dict[str, Any]:
    """Start the shipped configuration of two source trees in turns (A = ``before``, B = ``after``):
    per tree the wall and CPU seconds to ready of every start, and their medians."""
    for root in (before, after):
        for package in ("daemon", "detectors"):
            compileall.compile_dir(str(root / package), quiet=1)
    runs: dict[str, list[tuple[float, float | None]]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="tg-startup-") as tmp:
        for _ in range(reps):
            for name, root in (("A", before), ("B", after)):
                runs[name].append(seconds_to_ready(Path(tmp), root))
    out: dict[str, Any] = {"load_average": round(os.getloadavg()[0], 2)}
    for name, measured in runs.items():
        cpu = [c for _, c in measured if c is not None]
        out[name] = {"wall": [round(w, 3) for w, _ in measured], "cpu": [round(c, 3) for c in cpu],
                     "wall_median": round(statistics.median(w for w, _ in measured), 3),
                     "cpu_median": round(statistics.median(cpu), 3) if cpu else None}
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="start-up to /readyz: another source tree (A) vs this one (B)")
    parser.add_argument("before", type=Path, help="the other tree, e.g. a git worktree of main")
    parser.add_argument("--reps", type=int, default=5)
    arguments = parser.parse_args()
    print(orjson.dumps(compare(arguments.before.resolve(), reps=arguments.reps), option=orjson.OPT_INDENT_2).decode())
