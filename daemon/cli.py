"""``trailguard`` command line: ``run``, ``replay``, ``check-config``, ``--version``.

Configuration problems are printed one per line (file, key, fix) and the process exits 2 without
starting anything.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

import orjson

from daemon import __version__
from daemon.components import Built, check
from daemon.config import Config, ConfigError, load_config
from daemon.logs import configure_logging
from daemon.state import CheckpointError

__all__ = ["main"]

EXIT_CONFIG = 2


def _config_path(arg: str | None) -> str | None:
    return arg or os.environ.get("TRAILGUARD_CONFIG") or None


def _load(path: str | None, **overrides: Any) -> tuple[Config, Built]:
    config = load_config(path)
    if overrides:
        config = Config.model_validate({**config.model_dump(), **overrides})
    return config, check(config, path or "<defaults>")


def _fail(problems: list[str]) -> int:
    print("trailguard: configuration refused:", file=sys.stderr)
    for line in problems:
        print(f"  {line}", file=sys.stderr)
    return EXIT_CONFIG


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate everything (sections, detectors, rules, paths) and report; exit 2 on problems."""
    try:
        config, built = _load(args.file)
        from daemon.app import build_enricher

        build_enricher(config).close()
    except ConfigError as error:
        return _fail(error.problems)
    except (ValueError, OSError) as error:
        return _fail([f"{args.file}: enrichment: {error}"])
    rule_problems = _rule_problems(built)
    if rule_problems:
        return _fail(rule_problems)
    names = ", ".join(cls.name for cls, _ in built.detectors)
    print(f"{args.file}: ok ({len(built.sources)} source(s), {len(built.sinks)} sink(s), detectors: {names})")
    return 0


def _rule_problems(built: Built) -> list[str]:
    """Load rule-based detectors once and return every rule that would not load."""
    from detectors.base import DetectorContext

    problems = []
    loaded = []
    for cls, model in built.detectors:
        if hasattr(cls, "reload"):
            try:
                detector = cls(model, DetectorContext())
            except Exception as error:  # a rule path that is not a rule file: a refusal, not a traceback
                problems.append(f"detectors.{cls.name}: cannot load rules: {type(error).__name__}: "
                                f"{str(error)[:300]}; fix: point paths at Sigma rule files or directories")
                continue
            loaded.append(detector)
            problems.extend(f"detectors.{cls.name}: {issue}" for issue in getattr(detector, "load_errors", ()))
        else:
            loaded.append(cls)
    if built.delivery is not None:
        from daemon.delivery.incidents import incident_problems

        problems.extend(incident_problems(built.delivery.incidents, loaded))
    return problems


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM/SIGINT (or until finite input is exhausted)."""
    path = _config_path(args.config)
    try:
        config, built = _load(path)
    except ConfigError as error:
        return _fail(error.problems)
    configure_logging(config.logging.level, config.logging.format)
    from daemon.app import Daemon

    async def main() -> int:
        try:
            daemon = Daemon(config, built)
        except (CheckpointError, ValueError, OSError) as error:
            return _fail([f"{path or '<defaults>'}: {error}"])
        except Exception as error:  # e.g. a rule file that does not parse: refuse, never a traceback
            return _fail([f"{path or '<defaults>'}: cannot start: {type(error).__name__}: {str(error)[:300]}"])
        daemon.install_signal_handlers()
        try:
            return await daemon.run()
        except CheckpointError as error:  # raised while restoring, before any input is read
            return _fail([f"{path or '<defaults>'}: state: {error}"])

    from daemon.app import ListenError

    try:
        return asyncio.run(main())
    except ListenError as error:
        return _fail([f"{path or '<defaults>'}: metrics: cannot listen: {error}; fix: change metrics.port "
                      "or stop what uses it"])
    except OSError as error:
        return _fail([f"{path or '<defaults>'}: {error.filename or 'I/O'}: {error.strerror or error}; "
                      "fix: check free disk space and permissions of the paths in the config"])


def cmd_relay(args: argparse.Namespace) -> int:
    """Drain SQS into Kafka until SIGTERM/SIGINT (see :mod:`daemon.relay`)."""
    path = _config_path(args.config)
    if not args.bootstrap_servers or not args.topic:
        return _fail(["relay: --bootstrap-servers and --topic are required (or TRAILGUARD_RELAY_BOOTSTRAP and "
                      "TRAILGUARD_RELAY_TOPIC)"])
    try:
        config, built = _load(path)
    except ConfigError as error:
        return _fail(error.problems)
    configure_logging(config.logging.level, config.logging.format)
    from daemon.relay import Relay

    async def main() -> int:
        try:
            relay = Relay(config, built, bootstrap_servers=args.bootstrap_servers, topic=args.topic)
        except (ValueError, OSError) as error:
            return _fail([f"{path or '<defaults>'}: {error}"])
        return await relay.run()

    return asyncio.run(main())


def cmd_replay(args: argparse.Namespace) -> int:
    """Process files once in event-time order; alerts on stdout, a summary on stderr."""
    path = _config_path(args.config)
    sources = [{"type": "file", "paths": [os.path.abspath(p) if p != "-" else p for p in args.paths]}]
    try:
        config, built = _load(path, sources=sources, sinks=[{"type": "stdout"}])
    except ConfigError as error:
        return _fail(error.problems)
    configure_logging(config.logging.level if not args.quiet else "error", config.logging.format)
    from daemon.app import Daemon

    async def main() -> int:
        try:
            daemon = Daemon(config, built, serve_http=False, reorder=True, state_dir=args.state)
        except (CheckpointError, ValueError, OSError) as error:
            return _fail([f"{path or '<defaults>'}: {error}"])
        except Exception as error:  # e.g. a rule file that does not parse: refuse, never a traceback
            return _fail([f"{path or '<defaults>'}: cannot start: {type(error).__name__}: {str(error)[:300]}"])
        daemon.install_signal_handlers()
        started = time.monotonic()
        progress = asyncio.create_task(_progress(daemon)) if sys.stderr.isatty() else None
        try:
            code = await daemon.run()
        except CheckpointError as error:
            return _fail([f"{path or '<defaults>'}: state: {error}"])
        if progress is not None:
            progress.cancel()
            print(file=sys.stderr)
        _summary(daemon, time.monotonic() - started)
        return code

    return asyncio.run(main())


async def _progress(daemon: Any) -> None:
    counts = daemon.pipeline.counts
    while True:
        await asyncio.sleep(0.25)
        print(f"\r{counts['processed']:>10,} events  {counts['alerts']:>6,} alerts  "
              f"{counts['invalid']:>6,} invalid", end="", file=sys.stderr, flush=True)


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


def _summary(daemon: Any, seconds: float) -> None:
    counts = daemon.pipeline.counts
    invalid = _invalid_by_reason(daemon)
    summary = {
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
    }
    sys.stderr.write("trailguard replay summary: " + orjson.dumps(summary).decode() + "\n")
    sys.stderr.flush()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and tests)."""
    parser = argparse.ArgumentParser(prog="trailguard", description="Real-time AWS CloudTrail threat detection.")
    parser.add_argument("--version", action="version", version=f"trailguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", "-c", help="config file (default: $TRAILGUARD_CONFIG or built-in defaults)")
    run.set_defaults(func=cmd_run)

    replay = sub.add_parser("replay", help="process files once, print alerts as JSON lines")
    replay.add_argument("--config", "-c", help="config file for detector settings")
    replay.add_argument("--state", help="checkpoint directory (resume an interrupted replay)")
    replay.add_argument("--quiet", "-q", action="store_true", help="only errors on stderr (summary still shown)")
    replay.add_argument("paths", nargs="+", help="files, directories, globs, or - for stdin")
    replay.set_defaults(func=cmd_replay)

    relay = sub.add_parser("relay", help="drain the config's SQS source into a Kafka topic keyed by account")
    relay.add_argument("--config", "-c", help="config file with an 'sqs' source (default: $TRAILGUARD_CONFIG)")
    relay.add_argument("--bootstrap-servers", default=os.environ.get("TRAILGUARD_RELAY_BOOTSTRAP"),
                       help="Kafka brokers (default: $TRAILGUARD_RELAY_BOOTSTRAP)")
    relay.add_argument("--topic", default=os.environ.get("TRAILGUARD_RELAY_TOPIC"),
                       help="topic to produce to (default: $TRAILGUARD_RELAY_TOPIC)")
    relay.set_defaults(func=cmd_relay)

    check_cmd = sub.add_parser("check-config", help="validate a config file and exit")
    check_cmd.add_argument("file")
    check_cmd.set_defaults(func=cmd_check_config)
    from daemon.rules_cli import add_rules_parser

    add_rules_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``trailguard`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
