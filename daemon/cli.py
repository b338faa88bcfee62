"""``trailguard`` command line: ``run``, ``replay``, ``check-config``, ``--version``.

Configuration problems are printed one per line (file, key, fix) and the process exits 2 without
starting anything.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from typing import Any

from daemon import __version__, early_signals
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
        configure_logging(config.logging.level, config.logging.format)  # logs to stderr; results to stdout
        from daemon.app import build_enricher

        build_enricher(config).close()
    except ConfigError as error:
        return _fail(error.problems)
    except (ValueError, OSError) as error:
        return _fail([f"{args.file}: enrichment: {error}"])
    rule_problems = _rule_problems(built)
    if rule_problems:
        return _fail(rule_problems)
    from detectors.exceptions import expired_lines
    from detectors.sigma.tuning import expired_exceptions

    for cls, model in built.detectors:
        exceptions = getattr(model, "exceptions", ())
        lines = (expired_exceptions(exceptions, time.time()) if not cls.shared_exceptions
                 else expired_lines(cls.name, exceptions, time.time()))
        for line in lines:
            print(f"{args.file}: warning: {line}")
    names = ", ".join(cls.name for cls, _ in built.detectors)
    print(f"{args.file}: ok ({len(built.sources)} source(s), {len(built.sinks)} sink(s), detectors: {names})")
    if args.explain_routing is not None:
        from daemon.routing_explain import explain_routing, sample_alert

        try:
            alert = sample_alert(args.explain_routing)
        except ValueError as error:
            return _fail([f"--explain-routing: {error}"])
        sink_names = [getattr(model, "name", None) or model.type for _, model in built.sinks]
        print("\n".join(explain_routing(built.routing, sink_names, alert)))
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
    # Start-up allocates hundreds of thousands of long-lived objects (rules, models, tables) and
    # no garbage worth a pass: the cyclic GC stays off until the daemon freezes them and is ready
    # (re-enabled in Daemon.run, after gc.freeze), ~0.1-0.3 s of start-up.
    gc.disable()
    # The rule files' parsed YAML from the start-up cache when their texts are unchanged (~70 ms).
    from daemon.rule_documents import RuleDocumentCache
    from detectors.sigma.loader import use_document_cache

    use_document_cache(RuleDocumentCache())
    try:
        return _run(args)
    finally:
        use_document_cache(None)
        gc.enable()


def _run(args: argparse.Namespace) -> int:
    early_signals.catch()  # a stop asked for while starting is honoured once the loop runs
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
        daemon.config_path = path  # SIGHUP re-reads its tuning with the rules
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
    early_signals.catch()
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
    """Process files once in event-time order; alerts on stdout, the per-rule report on stderr."""
    from daemon.replay import replay

    return replay(args, _config_path(args.config), _load, _fail)


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
    replay.add_argument("--format", choices=("json", "pretty"),
                        help="alerts as JSON lines, or one readable line each (default: pretty on a terminal, "
                             "JSON otherwise)")
    replay.add_argument("--rules", action="append", metavar="PATH",
                        help="Sigma rule files/directories to run instead of the configured ones (repeatable)")
    replay.add_argument("--rule", action="append", metavar="ID",
                        help="only report this rule (id or title) or detector (repeatable): a backtest")
    replay.add_argument("--since", help="skip events before this time (2024-01-31 or 2024-01-31T12:00:00Z)")
    replay.add_argument("--until", help="skip events from this time on")
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
    check_cmd.add_argument("--explain-routing", nargs="*", metavar="KEY=VALUE",
                           help="show where a sample alert would be delivered, e.g. severity=high detector=sigma "
                                "account_id=111122223333 region=us-east-1 rule_id=… tags=a,b")
    check_cmd.set_defaults(func=cmd_check_config)
    from daemon.config_defaults import add_config_parser
    from daemon.rules_cli import add_rules_parser

    add_rules_parser(sub)
    add_config_parser(sub)
    from daemon.detector_tests import add_detectors_parser

    add_detectors_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``trailguard`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
