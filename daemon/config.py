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
from typing import Any, Literal

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


class StateConfig(Strict):
    """Where detector state is checkpointed.  No ``path``: memory only, lost on restart."""

    path: str | None = None
    checkpoint_interval: Duration = 10.0


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


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read, interpolate and validate the top level of a config file (``None``: the defaults).

    Section-specific validation (sources, sinks, detectors) happens when the daemon builds its
    components; :func:`daemon.components.check` runs all of it for ``check-config``.
    """
    if path is None:
        return Config(base_dir=str(REPO_ROOT))
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"{source}: cannot read the config file: {error.strerror}; "
                           "fix: check the path and permissions"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{source}: not valid YAML{where}: {getattr(error, 'problem', error)}; "
                           "fix: correct the YAML syntax"]) from None
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
