"""trailguard's benchmark suite: every figure is a ratio against a raw baseline measured in the same run.

Machines here are shared and noisy, so each scenario runs A (the raw baseline: the same messages
consumed and ``orjson.loads``-ed with nothing else) and B (trailguard) alternately, A/B/A/B, and
reports medians and B/A.  Run everything (under 10 minutes on 2 cores)::

    .venv/bin/python -m bench.run                  # all scenarios, table + bench/results/<date>.json
    .venv/bin/python -m bench.run --only archive   # one scenario
    .venv/bin/python -m bench.run --quick          # smaller sizes, for a smoke run

Scenarios live in ``bench/scenarios/`` (one module each, registered in ``SCENARIOS`` below).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import import_module
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

#: name → module:function returning a list of result rows (dicts).
SCENARIOS: dict[str, str] = {
    "archive": "bench.scenarios.archive:run",
    "jsonl": "bench.scenarios.jsonl:run",
    "sigma_only": "bench.scenarios.sigma_only:run",
    "rules": "bench.scenarios.rules:run",
    "state": "bench.scenarios.state:run",
    "kafka": "bench.scenarios.kafka:run",
    "sqs": "bench.scenarios.sqs:run",
    "latency": "bench.scenarios.latency:run",
    "restore": "bench.scenarios.restore:run",
    "startup": "bench.scenarios.startup:run",
}


def ab(run_a: Callable[[], float], run_b: Callable[[], float], reps: int) -> dict[str, Any]:
    """Run A and B alternately ``reps`` times each; both return events/s.  Medians and the ratio."""
    a_values: list[float] = []
    b_values: list[float] = []
    for _ in range(reps):
        a_values.append(run_a())
        b_values.append(run_b())
    a = statistics.median(a_values)
    b = statistics.median(b_values)
    return {"a_eps": round(a, 1), "b_eps": round(b, 1), "ratio": round(b / a, 3) if a else None,
            "a_runs": [round(v, 1) for v in a_values], "b_runs": [round(v, 1) for v in b_values]}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}


def print_table(rows: list[dict[str, Any]]) -> None:
    """A fixed-width table of every row's headline figures."""
    print(f"{'scenario':<34} {'A (raw)':>14} {'B (trailguard)':>16} {'B/A':>8}  note")
    for row in rows:
        a = f"{row['a_eps']:,.0f}/s" if row.get("a_eps") is not None else ""
        b = f"{row['b_eps']:,.0f}/s" if row.get("b_eps") is not None else ""
        ratio = f"{row['ratio']:.3f}" if row.get("ratio") is not None else ""
        if "ns_per_event" in row:
            b = f"{row['ns_per_event']:,} ns/event"
            ratio = f"{row['ratio_vs_10']:.3f}"
        print(f"{row['name']:<34} {a:>14} {b:>16} {ratio:>8}  {row.get('note', '')}")


def main(argv: list[str] | None = None) -> int:
    """Run the selected scenarios, print the table, write the JSON."""
    parser = argparse.ArgumentParser(prog="bench.run")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run only these scenarios")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--reps", type=int, default=3, help="A/B repetitions per scenario (median reported)")
    parser.add_argument("--json", type=Path, help="write results here (default bench/results/<date>.json)")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    for name in args.only or list(SCENARIOS):
        module_name, _, function = SCENARIOS[name].partition(":")
        print(f"-- {name}", file=sys.stderr, flush=True)
        scenario_started = time.monotonic()
        scenario_rows = getattr(import_module(module_name), function)(quick=args.quick, reps=args.reps)
        elapsed = round(time.monotonic() - scenario_started, 1)
        print(f"   {name}: {elapsed} s", file=sys.stderr, flush=True)
        for row in scenario_rows:
            row.setdefault("scenario", name)
            row.setdefault("scenario_seconds", elapsed)
        rows.extend(scenario_rows)
    print_table(rows)
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              "seconds": round(time.monotonic() - started, 1), "quick": args.quick, "results": rows}
    out = args.json or RESULTS / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"results written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
