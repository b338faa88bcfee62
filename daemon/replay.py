"""``trailguard replay``: run an archive through the real pipeline once and report what fired.

This is the backtest: the same detectors, tuning, routing and dedup as the daemon, event-time
ordered, with ``--rules`` (other rule files), ``--rule`` (report only some rules), ``--since`` /
``--until`` (an event-time range).  stdout carries only alerts (JSON lines, or readable lines on a
terminal); stderr carries the progress bar and the per-rule summary (a table on a terminal, one
``trailguard replay summary: {json}`` line otherwise, for scripts).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
from rich.console import Console

from daemon.config import ConfigError
from daemon.logs import configure_logging
from daemon.replay_output import ReplayOutput, render_summary
from daemon.replay_progress import ReplayProgress
from daemon.replay_range import limit_to_time_range, parse_bound
from daemon.state import CheckpointError
from detectors.suggest import suggestion

__all__ = ["replay"]


def _overrides(args: argparse.Namespace, config: Any) -> dict[str, Any]:
    sources = [{"type": "file", "paths": [os.path.abspath(p) if p != "-" else p for p in args.paths]}]
    out: dict[str, Any] = {"sources": sources, "sinks": [{"type": "stdout"}]}
    if args.rules:
        detectors = dict(config.detectors)
        sigma = dict(detectors.get("sigma") or {})
        sigma["paths"] = [os.path.abspath(p) for p in args.rules]
        detectors["sigma"] = sigma
        out["detectors"] = detectors
    return out


def _known_rule_names(daemon: Any) -> set[str]:
    names = {detector.name for detector in daemon.detectors}
    for detector in daemon.detectors:
        ruleset = getattr(detector, "rules", None)
        for rule in getattr(ruleset, "rules", ()) or ():
            names.update(n for n in (getattr(rule, "rule_id", None), getattr(rule, "title", None)) if n)
        for rule in getattr(detector, "correlation_rules", ()) or ():
            names.update(str(n) for n in (getattr(rule, "id", None), getattr(rule, "name", None),
                                          getattr(rule, "title", None)) if n)
    return names


def _input_sizes(source: Any) -> dict[str, int]:
    scan = getattr(source, "_scan", None)
    if scan is None:
        return {}
    return {found.path: found.size for found in scan()}


def replay(args: argparse.Namespace, path: str | None, load: Callable[..., Any],
           fail: Callable[[list[str]], int]) -> int:
    """Run the replay described by ``args`` (see ``trailguard replay --help``); the exit code."""
    origin = path or "<defaults>"
    try:
        since = parse_bound(args.since) if args.since else None
        until = parse_bound(args.until) if args.until else None
    except ValueError as error:
        return fail([f"--since/--until: {error}; fix: give a date or an RFC 3339 UTC time"])
    try:
        from daemon.config import load_config

        base = load_config(path)
        config, built = load(path, **_overrides(args, base))
    except ConfigError as error:
        return fail(error.problems)
    configure_logging(config.logging.level if not args.quiet else "error", config.logging.format)
    alert_format = args.format or ("pretty" if sys.stdout.isatty() else "json")
    output = ReplayOutput(alert_format, only=frozenset(args.rule or ()))
    terminal = sys.stderr.isatty()
    from daemon.app import Daemon

    async def main() -> int:
        try:
            daemon = Daemon(config, built, serve_http=False, reorder=True, state_dir=args.state, sinks=[output])
        except (CheckpointError, ValueError, OSError) as error:
            return fail([f"{origin}: {error}"])
        except Exception as error:  # e.g. a rule file that does not parse: refuse, never a traceback
            return fail([f"{origin}: cannot start: {type(error).__name__}: {str(error)[:300]}"])
        if args.rule:
            known = _known_rule_names(daemon)
            unknown = [name for name in args.rule if name not in known]
            if unknown:
                return fail([f"--rule {name}: no loaded rule or detector has this id or title; fix: "
                             f"{suggestion(name, known, 'rule id')}" for name in unknown])
        outside = [0]
        if since is not None or until is not None:
            for source in daemon.sources:
                limit_to_time_range(source, since, until, outside)
        daemon.install_signal_handlers()
        started = time.monotonic()
        console = Console(file=sys.stderr, highlight=False)
        if terminal and daemon.sources:
            sizes = await asyncio.to_thread(_input_sizes, daemon.sources[0])
            progress = ReplayProgress(console, sizes, daemon.pipeline.counts)
            progress.watch(daemon.sources[0])
            try:
                with progress:
                    code = await daemon.run()
            except CheckpointError as error:  # raised while restoring, before any input is read
                return fail([f"{origin}: state: {error}"])
        else:
            try:
                code = await daemon.run()
            except CheckpointError as error:
                return fail([f"{origin}: state: {error}"])
        # The rate is processing time: from the pipeline's start (after the daemon's start-up work,
        # e.g. its one full garbage collection) to the last alert flushed.
        begun = daemon.pipeline.started_at if daemon.pipeline.started_at is not None else started
        summary = _summary(daemon, time.monotonic() - begun, output, outside[0])
        if terminal:
            render_summary(summary, summary["backtest"], console)
        else:
            sys.stderr.write("trailguard replay summary: " + orjson.dumps(summary).decode() + "\n")
            sys.stderr.flush()
        return code

    return asyncio.run(main())


def _invalid_by_reason(daemon: Any) -> dict[str, int]:
    found: dict[str, int] = {}
    for family in daemon.metrics.registry.collect():
        if family.name == "trailguard_events_invalid":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.value:
                    found[sample.labels["reason"]] = int(sample.value)
    return dict(sorted(found.items()))


def _by_rule(pipeline: Any) -> list[dict[str, Any]]:
    """Alerts raised, incidents opened and updates sent per detection, most alerts first."""
    rows = [{"detector": detector, "rule": rule, "title": pipeline.rule_titles.get((detector, rule), rule),
             "alerts": alerts, "incidents": opened, "updates": updated}
            for (detector, rule), (alerts, opened, updated) in pipeline.by_rule.items()]
    return sorted(rows, key=lambda row: (-row["alerts"], -row["incidents"], row["title"], row["rule"]))


def _summary(daemon: Any, seconds: float, output: ReplayOutput, outside: int) -> dict[str, Any]:
    counts = daemon.pipeline.counts
    invalid = _invalid_by_reason(daemon)
    summary: dict[str, Any] = {
        "events": counts["processed"],
        "received": counts["received"],
        "invalid": sum(invalid.values()),
        "invalid_by_reason": invalid,
        "duplicates": counts["duplicate"],
        "alerts": counts["alerts"],
        "alerts_by_detector": dict(sorted(daemon.pipeline.alerts_by_detector.items())),
        "notifications": counts.get("notifications", 0),
        "by_rule": _by_rule(daemon.pipeline),
        "seconds": round(seconds, 3),
        "events_per_second": round(counts["processed"] / seconds, 1) if seconds > 0 else None,
        "outside_range": outside,
        "backtest": output.report(),
    }
    if output.only:
        summary["alerts_reported"] = sum(row["alerts"] for row in summary["backtest"])
    return summary
