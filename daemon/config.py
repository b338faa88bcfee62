"""Strict configuration: YAML in, frozen models out, or a refusal that names file, key and fix.

Every section is a pydantic model with unknown keys forbidden, so a typo never silently disables a
detector.  ``${VAR}`` / ``${VAR:-default}`` in string values are replaced from the environment
(secrets stay out of the file).  With no file at all, the defaults run the embedded demo: the
bundled sample trail, alerts on stdout, metrics on :9108.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from daemon.bundled import bundled_root
from detectors.durations import Duration, parse_duration

__all__ = [
    "REPO_ROOT",
    "Config",
    "ConfigError",
    "Duration",
    "load_config",
    "parse_duration",
]

#: The directory holding the shipped ``config/`` and ``samples/``: the source checkout, or the
#: installed package data (see :mod:`daemon.bundled`).
REPO_ROOT = bundled_root()

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors; values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PipelineConfig(Strict):
    """How events flow: lateness, queues, dedupe, dead letters."""

    allowed_lateness: Duration = 900.0
    """How late (event time) an event may arrive and still be placed in its window (default 15m)."""
    queue_size: int = Field(default=16, ge=1, le=10_000)
    """Batches buffered between the sources and the detectors (backpressure beyond it)."""
    alert_queue_size: int = Field(default=10_000, ge=1)
    """Alerts buffered between the detectors and the sinks."""
    dedupe_horizon: Duration = 3600.0
    """An eventID seen again within this much event time is a duplicate (counted, skipped)."""
    dedupe_max_ids: int = Field(default=200_000, ge=0)
    """Hard cap on remembered eventIDs (oldest forgotten first); 0 disables dedupe."""
    dead_letter_path: str | None = None
    """JSON-lines file where invalid input is kept whole, with the reason; none: only counted/logged."""
    max_record_bytes: int = Field(default=1 << 20, ge=1024)
    """A single record larger than this is rejected as ``too_large``."""
    max_future_skew: Duration = Field(default=3600.0, gt=0)
    """An event dated more than this ahead of the wall clock is rejected as ``future_time`` (counted,
    dead-lettered): one forged 2030 record must not move the watermark and blind every window."""


class StateConfig(Strict):
    """Where detector state is checkpointed.  No ``path``: memory only, lost on restart."""

    path: str | None = None
    checkpoint_interval: Duration = Field(default=10.0, gt=0)
    """Seconds between checkpoints (finite, above 0: input is acknowledged only by checkpoints)."""


class MetricsConfig(Strict):
    """The HTTP endpoint serving ``/metrics``, ``/healthz`` and ``/readyz``."""

    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(default=9108, ge=0, le=65535)
    stall_after: Duration = 120.0
    """``/healthz`` fails when input is waiting but nothing was processed for this long."""


class LoggingConfig(Strict):
    """structlog output: JSON lines in production, a readable console on a TTY."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class ShutdownConfig(Strict):
    """SIGTERM handling: everything (drain, flush, checkpoint) must finish within ``deadline``."""

    deadline: Duration = 20.0


class Config(Strict):
    """The whole configuration file."""

    sources: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {"type": "file", "paths": [str(REPO_ROOT / "samples" / "trail")], "follow": True}
        ]
    )
    """Inputs, each with a ``type`` (``file``, ``sqs``, ``kafka``); validated by the source's model.
    Default: the bundled sample trail, then keep watching it for new files."""
    sinks: list[dict[str, Any]] = Field(default_factory=lambda: [{"type": "stdout"}])
    """Alert destinations, each with a ``type``; validated by the sink's model."""
    detectors: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-detector settings by name (``enabled: false`` to turn one off)."""
    enrichment: dict[str, Any] = Field(default_factory=dict)
    """GeoIP and network classification (validated by ``daemon.enrich.EnrichmentConfig``)."""
    routing: dict[str, Any] = Field(default_factory=dict)
    """Which alerts go to which sinks (validated by ``daemon.delivery.routing.RoutingConfig``)."""
    delivery: dict[str, Any] = Field(default_factory=dict)
    """Spool, retries, dedup and throttling of alert delivery (``daemon.delivery.dispatch.DeliveryConfig``)."""
    accounts: dict[str, Any] = Field(default_factory=dict)
    """Account map (``path`` and/or ``entries``: id → name, environment, owner, tags); ``daemon.accounts``."""
    plugins: list[str] = Field(default_factory=list)
    """Importable modules adding detectors/sinks (each defines ``DETECTORS`` and/or ``SINKS``); see
    ``daemon.plugins``.  Entry points ``trailguard.detectors``/``trailguard.sinks`` need no listing."""
    pipeline: PipelineConfig = PipelineConfig()
    state: StateConfig = StateConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    #: Directory relative paths in the file are resolved against (the config file's directory).
    base_dir: str = ""

    def resolve_path(self, value: str) -> str:
        """Resolve a path from the config relative to the config file's directory."""
        if value == "-" or os.path.isabs(value) or not self.base_dir:
            return value
        return os.path.normpath(os.path.join(self.base_dir, value))


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` are lines naming file, key and fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _interpolate(value: Any, where: str, problems: list[str], source: str) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = os.environ.get(name)
            if found is None:
                if default is not None:
                    return default
                problems.append(
                    f"{source}: {where}: environment variable {name} is not set; "
                    f"fix: export {name}=… or write ${{{name}:-default}}"
                )
                return ""
            return found

        return _ENV.sub(replace, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{where}.{k}" if where else str(k), problems, source)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{where}[{i}]", problems, source) for i, v in enumerate(value)]
    return value


def format_validation_error(source: str, prefix: str, error: ValidationError) -> list[str]:
    """One line per pydantic error: ``file: key.path: what is wrong; fix: …``."""
    lines = []
    for item in error.errors():
        loc = prefix
        for part in item["loc"]:
            loc = f"{loc}[{part}]" if isinstance(part, int) else (f"{loc}.{part}" if loc else str(part))
        kind = item["type"]
        if kind == "extra_forbidden":
            fix = "remove the key or correct its spelling (unknown keys are not allowed)"
            message = "unknown key"
        elif kind == "missing":
            fix = "add the key"
            message = "required key is missing"
        else:
            message = item["msg"]
            fix = "change the value"
        lines.append(f"{source}: {loc or '<top>'}: {message}; fix: {fix}")
    return lines


#: Most values a config may expand to once YAML aliases are followed (a billion-laughs bound).
MAX_CONFIG_VALUES: Final = 200_000
#: Deepest nesting a config may have (the real ones are under ten levels).
MAX_CONFIG_DEPTH: Final = 64


class _StrictLoader(yaml.SafeLoader):
    """``safe_load`` that refuses a key written twice in one mapping (a second ``sinks:`` would
    silently replace the first); merge keys (``<<: *defaults``) still override as YAML says."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                first = seen[key]
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice (first at line {first.line + 1})",
                    key_node.start_mark)
            if isinstance(key, (str, int, float, bool)):
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _too_big(value: Any, limit: int, max_depth: int) -> str | None:
    """Why walking ``value`` (aliases expanded) is unreasonable — more than ``limit`` values or
    deeper than ``max_depth`` — or ``None``.  Iterative, and stops at the first bound crossed."""
    budget = limit
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        budget -= 1
        if budget < 0:
            return (f"expands to more than {limit:,} values through its aliases (a 'billion laughs' "
                    "document); fix: write the values out instead of nesting aliases")
        if depth > max_depth:
            return f"is nested more than {max_depth} levels deep; fix: flatten it"
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return None


def _parse_yaml(text: str, source: str) -> Any:
    """Parse config YAML; every way it can fail is a :class:`ConfigError`, never a traceback."""
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = str(getattr(error, "problem", error))
        fix = ("keep one of them (a second one would silently replace the first)" if "appears twice" in problem
               else "correct the YAML syntax")
        raise ConfigError([f"{source}: not valid YAML{where}: {problem}; fix: {fix}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: the YAML is nested too deeply to read; fix: flatten it "
                           "(a trailguard config is a few levels deep)"]) from None
    problem = _too_big(raw, MAX_CONFIG_VALUES, MAX_CONFIG_DEPTH)
    if problem is not None:
        raise ConfigError([f"{source}: the YAML {problem}"])
    return raw


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read, interpolate and validate the top level of a config file (``None``: the defaults).

    Section-specific validation (sources, sinks, detectors) happens when the daemon builds its
    components; :func:`daemon.components.check` runs all of it for ``check-config``.
    """
    if path is None:
        return Config(base_dir=str(REPO_ROOT))
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError([f"{source}: cannot read the config file: {error.strerror}; "
                           "fix: check the path and permissions"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError([f"{source}: not UTF-8 text (byte {error.start}, line {line}); "
                           "fix: save the file as UTF-8"]) from None
    raw = _parse_yaml(text, source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of sections "
                           "(sources, sinks, detectors, …); fix: see config/trailguard.yaml"])
    problems: list[str] = []
    raw = _interpolate(raw, "", problems, source)
    if "base_dir" in raw:
        problems.append(f"{source}: base_dir: unknown key; fix: remove it (it is set automatically)")
    if problems:
        raise ConfigError(problems)
    raw["base_dir"] = str(Path(path).resolve().parent)
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(source, "", error)) from None
