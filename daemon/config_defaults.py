"""``trailguard config defaults [--config FILE]``: the full effective configuration as YAML.

Every section is shown after validation by the model that owns it — top-level sections, each
source and sink with its defaults filled in, every registered detector (plugins too), enrichment,
routing and delivery — so an operator sees every key and its value, not only those in the file.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from daemon.components import check
from daemon.config import ConfigError, load_config
from detectors.registry import detector_class, detector_names

__all__ = ["add_config_parser", "effective_config"]


def _plain(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True) if hasattr(model, "model_dump") else model


def effective_config(path: str | None) -> dict[str, Any]:
    """The configuration at ``path`` (``None``: the built-in defaults) with every default filled in."""
    config = load_config(path)
    built = check(config, path or "<defaults>")
    from daemon.enrich import EnrichmentConfig

    top = config.model_dump(mode="json", exclude={"base_dir"})
    top["sources"] = [_plain(model) for _, model in built.sources]
    top["sinks"] = [_plain(model) for _, model in built.sinks]
    detectors: dict[str, Any] = {}
    for name in detector_names():
        section = config.detectors.get(name) or {}
        enabled = next((model for cls, model in built.detectors if cls.name == name), None)
        model = enabled if enabled is not None else detector_class(name).Config.model_validate(section)
        detectors[name] = _plain(model)
    top["detectors"] = detectors
    top["enrichment"] = _plain(EnrichmentConfig.model_validate(config.enrichment))
    top["routing"] = _plain(built.routing)
    top["delivery"] = _plain(built.delivery)
    return top


def cmd_defaults(args: argparse.Namespace) -> int:
    """Print the effective configuration; exit 2 (with the problems) if it would be refused."""
    try:
        document = effective_config(args.config)
    except ConfigError as error:
        print("trailguard: configuration refused:", file=sys.stderr)
        for line in error.problems:
            print(f"  {line}", file=sys.stderr)
        return 2
    sys.stdout.write(f"# effective configuration of {args.config or 'the built-in defaults'}\n")
    sys.stdout.write(yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=110))
    return 0


def add_config_parser(sub: Any) -> None:
    """Register ``trailguard config defaults``."""
    config = sub.add_parser("config", help="inspect the configuration")
    commands = config.add_subparsers(dest="config_command", required=True)
    defaults = commands.add_parser("defaults", help="print the full effective configuration (every key)")
    defaults.add_argument("--config", "-c", help="config file (default: the built-in defaults)")
    defaults.set_defaults(func=cmd_defaults)
