"""The one place sources and sinks are registered, and where config sections become components.

Each source/sink class carries its own strict ``Config`` model; this module looks the class up by
``type``, validates its section, and turns every problem into a line naming file, key and fix.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import import_module
from typing import Any, Final

from pydantic import ValidationError

from daemon.bundled import rule_pack_path
from daemon.config import Config, ConfigError, format_validation_error
from detectors.base import Detector, DetectorContext
from detectors.registry import detector_class, detector_names
from detectors.suggest import suggestion

__all__ = ["SINKS", "SOURCES", "Built", "build_detectors", "build_sinks", "build_sources", "check"]

SOURCES: Final[dict[str, str]] = {
    "file": "daemon.sources.file:FileSource",
    "sqs": "daemon.sources.sqs:SqsSource",
    "kafka": "daemon.sources.kafka:KafkaSource",
}

SINKS: Final[dict[str, str]] = {
    "stdout": "daemon.delivery.sinks.stdout:StdoutSink",
    "file": "daemon.delivery.sinks.file:FileSink",
    "webhook": "daemon.delivery.sinks.webhook:WebhookSink",
    "slack": "daemon.delivery.sinks.slack:SlackSink",
    "pagerduty": "daemon.delivery.sinks.pagerduty:PagerDutySink",
    "kafka": "daemon.delivery.sinks.kafka:KafkaSink",
    "sns": "daemon.delivery.sinks.sns:SnsSink",
    "sqs": "daemon.delivery.sinks.sqs:SqsSink",
}


def _load(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    return getattr(import_module(module_name), attr)


class Built:
    """Validated component configs, ready to be instantiated: (class, model) pairs."""

    def __init__(self) -> None:
        self.sources: list[tuple[type, Any]] = []
        self.sinks: list[tuple[type, Any]] = []
        self.detectors: list[tuple[type[Detector], Any]] = []
        self.routing: Any = None
        self.delivery: Any = None
        self.accounts: Any = None


def _validate_section(
    kind: str, registry: dict[str, str], items: list[dict[str, Any]], origin: str,
    problems: list[str], prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> list[tuple[type, Any]]:
    out: list[tuple[type, Any]] = []
    names: set[str] = set()
    for index, item in enumerate(items):
        where = f"{kind}[{index}]"
        if not isinstance(item, dict) or "type" not in item:
            problems.append(f"{origin}: {where}: each entry needs a 'type'; fix: add type: one of "
                            f"{', '.join(sorted(registry))}")
            continue
        kind_name = item["type"]
        if kind_name not in registry:
            problems.append(f"{origin}: {where}.type: unknown {kind[:-1]} type {kind_name!r}; fix: "
                            f"{suggestion(str(kind_name), registry, 'type')} (known: {', '.join(sorted(registry))})")
            continue
        cls = _load(registry[kind_name])
        try:
            model = cls.Config.model_validate(prepare(item) if prepare else item)
        except ValidationError as error:
            problems.extend(format_validation_error(origin, where, error))
            continue
        name = getattr(model, "name", None) or kind_name
        if name in names:
            problems.append(f"{origin}: {where}.name: two {kind} are named {name!r}; fix: give each a "
                            "distinct 'name'")
        names.add(name)
        out.append((cls, model))
    return out


def check(config: Config, origin: str = "<defaults>") -> Built:
    """Validate every section; raise :class:`ConfigError` listing *all* problems at once."""
    problems: list[str] = []
    built = Built()
    from daemon.plugins import load_plugins, plugin_sinks

    problems.extend(load_plugins(config.plugins, origin, SINKS))
    sink_types = {**SINKS, **plugin_sinks()}
    detectors_known = detector_names()

    def resolve_source_paths(item: dict[str, Any]) -> dict[str, Any]:
        if "max_record_bytes" not in item:  # pipeline.max_record_bytes is every source's default
            item = {**item, "max_record_bytes": config.pipeline.max_record_bytes}
        if item.get("type") == "file" and isinstance(item.get("paths"), list):
            item = {**item, "paths": [config.resolve_path(p) if isinstance(p, str) else p
                                      for p in item["paths"]]}
        return item

    def resolve_sink_paths(item: dict[str, Any]) -> dict[str, Any]:
        for key in ("path", "ca_file", "ssl_ca_file", "ssl_cert_file", "ssl_key_file"):
            if isinstance(item.get(key), str):
                item = {**item, key: config.resolve_path(item[key])}
        return item

    built.sources = _validate_section("sources", SOURCES, config.sources, origin, problems,
                                      resolve_source_paths)
    if not config.sources:
        problems.append(f"{origin}: sources: no source configured; fix: add at least one source")
    built.sinks = _validate_section("sinks", sink_types, config.sinks, origin, problems, resolve_sink_paths)
    if not config.sinks:
        problems.append(f"{origin}: sinks: no sink configured; fix: add at least one sink (e.g. type: stdout)")
    for cls, model in built.sources:
        validate = getattr(import_module(cls.__module__), "validate_paths", None)
        if validate is not None:
            problems.extend(f"{origin}: sources: {p}" for p in validate(model))

    for name, section in config.detectors.items():
        if name not in detectors_known:
            problems.append(f"{origin}: detectors.{name}: unknown detector; fix: "
                            f"{suggestion(name, detectors_known, 'detector')} (known: "
                            f"{', '.join(sorted(detectors_known))})")
        elif not isinstance(section, dict):
            problems.append(f"{origin}: detectors.{name}: must be a mapping of settings; "
                            "fix: write e.g. 'enabled: true'")
    for name in detectors_known:
        section = config.detectors.get(name) or {}
        if not isinstance(section, dict):
            continue
        cls = detector_class(name)
        try:
            model = cls.Config.model_validate(_resolve_detector_paths(config, section, name))
        except ValidationError as error:
            problems.extend(format_validation_error(origin, f"detectors.{name}", error))
            continue
        if model.enabled:
            built.detectors.append((cls, model))
        problems.extend(f"{origin}: detectors.{name}: {p}" for p in _detector_problems(cls, model))
    from daemon.delivery.dispatch import DeliveryConfig
    from daemon.delivery.routing import RoutingConfig, validate_routes
    from daemon.enrich import EnrichmentConfig

    try:
        EnrichmentConfig.model_validate(config.enrichment)
    except ValidationError as error:
        problems.extend(format_validation_error(origin, "enrichment", error))
    try:
        built.routing = RoutingConfig.model_validate(config.routing)
        sink_names = [getattr(model, "name", None) or model.type for _, model in built.sinks]
        problems.extend(f"{origin}: routing: {p}" for p in validate_routes(built.routing, sink_names))
    except ValidationError as error:
        problems.extend(format_validation_error(origin, "routing", error))
    delivery = dict(config.delivery)
    for key in ("spool_dir", "dead_letter_dir"):
        if isinstance(delivery.get(key), str):
            delivery[key] = config.resolve_path(delivery[key])
    try:
        built.delivery = DeliveryConfig.model_validate(delivery)
    except ValidationError as error:
        problems.extend(format_validation_error(origin, "delivery", error))
    else:
        for key in ("spool_dir", "dead_letter_dir"):
            where = getattr(built.delivery, key)
            if where is not None:
                problems.extend(f"{origin}: delivery.{key}: {p}" for p in directory_problems(where))
    for index, (_, model) in enumerate(built.sinks):
        if getattr(model, "type", None) == "file":
            problems.extend(f"{origin}: sinks[{index}].path: {p}" for p in file_problems(model.path))
    from daemon.accounts import build_account_map

    try:
        built.accounts = build_account_map(config, origin)
    except ConfigError as error:
        problems.extend(error.problems)
    if problems:
        raise ConfigError(problems)
    return built


def _nearest_existing(path: str) -> str:
    """``path`` or its nearest ancestor that exists."""
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def directory_problems(path: str) -> list[str]:
    """Why a directory trailguard must create or write in cannot be used (empty: it can).

    Checked without creating anything (``check-config`` has no side effects): an existing path must
    be a writable directory; a missing one needs its nearest existing ancestor to be a writable
    directory.
    """
    if os.path.lexists(path):
        if not os.path.isdir(path):
            return [f"{path} exists and is not a directory; fix: point it at a directory, or remove the file"]
        if not os.access(path, os.W_OK | os.X_OK):
            return [f"{path} is not writable by this user (uid {os.getuid()}); fix: change its owner or "
                    "permissions, or point the key at a writable directory"]
        return []
    return _creation_problems(path, path, "point the key at a directory path",
                              "create the directory, change permissions, or point the key elsewhere")


def file_problems(path: str) -> list[str]:
    """Why a file trailguard appends to cannot be used (empty: it can); creates nothing."""
    if os.path.isdir(path):
        return [f"{path} is a directory; fix: name a file, e.g. {os.path.join(path, 'alerts.jsonl')}"]
    if os.path.lexists(path):
        if not os.access(path, os.W_OK):
            return [f"{path} is not writable by this user (uid {os.getuid()}); fix: change its owner or "
                    "permissions, or name another file"]
        return []
    return _creation_problems(path, os.path.dirname(os.path.abspath(path)), "name a file in a directory",
                              "change its permissions or name a file in a writable directory")


def _creation_problems(path: str, start: str, fix_not_directory: str, fix_not_writable: str) -> list[str]:
    """Why ``path`` cannot be created: the nearest existing ancestor of ``start`` must be a writable directory."""
    ancestor = _nearest_existing(start)
    if not os.path.isdir(ancestor):
        return [f"{path} cannot be created: {ancestor} is a file, not a directory; fix: {fix_not_directory}"]
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return [f"{path} cannot be created: {ancestor} is not writable by this user (uid {os.getuid()}); "
                f"fix: {fix_not_writable}"]
    return []


#: Rules loaded by the ``sigma`` detector when its section names no ``paths``: the shipped pack.
DEFAULT_RULE_PATHS: Final = [str(rule_pack_path())]


def _resolve_detector_paths(config: Config, section: dict[str, Any], name: str = "") -> dict[str, Any]:
    if name == "sigma" and "paths" not in section:
        return {**section, "paths": list(DEFAULT_RULE_PATHS)}
    if isinstance(section.get("paths"), list):
        return {**section, "paths": [config.resolve_path(p) if isinstance(p, str) else p
                                     for p in section["paths"]]}
    return section


def _detector_problems(cls: type[Detector], model: Any) -> list[str]:
    validate = getattr(cls, "validate_config", None)
    return list(validate(model)) if validate is not None else []


def build_detectors(built: Built, context: DetectorContext) -> list[Detector]:
    """Instantiate the enabled detectors in registry order."""
    return [cls(model, context) for cls, model in built.detectors]


def build_sources(built: Built, invalid: Any) -> list[Any]:
    """Instantiate the configured sources."""
    return [cls(model, invalid, name=getattr(model, "name", None)) for cls, model in built.sources]


def build_sinks(built: Built) -> list[Any]:
    """Instantiate the configured sinks."""
    return [cls(model) for cls, model in built.sinks]
