"""Detectors and sinks from other packages, without forking trailguard.

Two ways in, both resolved once at start-up (and by ``check-config``):

* **entry points** of installed distributions: group ``trailguard.detectors`` (name = detector
  name, value = ``module:Class``) and group ``trailguard.sinks`` (name = sink ``type``);
* the config's ``plugins:`` list of importable modules, each defining ``DETECTORS`` and/or
  ``SINKS``: mappings of name → class.

A plugin detector is a :class:`detectors.base.Detector` subclass like a built-in, so it gets the
same strict config section (``detectors.<name>``), checkpointing (``snapshot``/``restore``),
metrics (labelled with its name) and timeline tests.  A plugin sink has a ``Config`` model with a
``type`` field, like the built-in sinks.  A plugin can add names, never replace a built-in one.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Final

from detectors.base import Detector
from detectors.registry import register_detector

__all__ = ["DETECTOR_GROUP", "SINK_GROUP", "load_plugins", "plugin_sinks"]

DETECTOR_GROUP: Final = "trailguard.detectors"
SINK_GROUP: Final = "trailguard.sinks"

#: Sinks registered by plugins: type → ``module:Class``.
_SINKS: dict[str, str] = {}


def plugin_sinks() -> dict[str, str]:
    """Sink types added by plugins (type → ``module:Class``)."""
    return dict(_SINKS)


def _target(value: Any) -> str:
    return f"{value.__module__}:{value.__qualname__}" if isinstance(value, type) else str(value)


def _register_sink(name: str, target: str, builtin: dict[str, str]) -> None:
    if name in builtin:
        raise ValueError(f"sink type {name!r} is a built-in sink's")
    if _SINKS.get(name, target) != target:
        raise ValueError(f"sink type {name!r} is already registered by {_SINKS[name]}")
    _SINKS[name] = target


def _check_detector(name: str, target: str) -> None:
    module_name, _, attr = target.partition(":")
    cls = getattr(import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        raise TypeError(f"{target} is not a subclass of detectors.base.Detector")
    if cls.name != name:
        raise TypeError(f"{target} has name = {cls.name!r}; it must be {name!r}, the name it is registered as")


def _check_sink(target: str) -> None:
    module_name, _, attr = target.partition(":")
    cls = getattr(import_module(module_name), attr)
    model = getattr(cls, "Config", None)
    if model is None or "type" not in getattr(model, "model_fields", {}):
        raise TypeError(f"{target} has no pydantic Config model with a 'type' field")


def load_plugins(modules: list[str] | tuple[str, ...], origin: str, builtin_sinks: dict[str, str]) -> list[str]:
    """Register every entry-point plugin and every module in ``modules``; return problems as
    ``file: key: what; fix: …`` lines (empty when all loaded)."""
    problems: list[str] = []

    def add(kind: str, name: str, value: Any, where: str, fix: str) -> None:
        target = _target(value)
        try:
            if kind == "detector":
                _check_detector(name, target)
                register_detector(name, target)
            else:
                _check_sink(target)
                _register_sink(name, target, builtin_sinks)
        except Exception as error:
            problems.append(f"{origin}: {where}: {kind} {name!r} ({target}) cannot be used: "
                            f"{type(error).__name__}: {error}; fix: {fix}")

    installed = entry_points()  # one scan of every installed distribution's metadata (~6 ms each)
    for group, kind in ((DETECTOR_GROUP, "detector"), (SINK_GROUP, "sink")):
        for point in installed.select(group=group):
            dist = getattr(point.dist, "name", "?")
            add(kind, point.name, point.value, f"entry point {group}:{point.name} of {dist}",
                f"fix or uninstall the distribution {dist}")
    for index, module_name in enumerate(modules):
        where = f"plugins[{index}]"
        try:
            module = import_module(module_name)
        except Exception as error:
            problems.append(f"{origin}: {where}: cannot import plugin module {module_name!r}: "
                            f"{type(error).__name__}: {error}; fix: install it or correct the module name")
            continue
        detectors, sinks = getattr(module, "DETECTORS", None), getattr(module, "SINKS", None)
        if not isinstance(detectors, dict) and not isinstance(sinks, dict):
            problems.append(f"{origin}: {where}: module {module_name!r} defines neither DETECTORS nor SINKS; "
                            "fix: give it DETECTORS = {name: DetectorClass} and/or SINKS = {type: SinkClass}")
            continue
        for name, value in (detectors or {}).items():
            add("detector", name, value, where, f"correct DETECTORS in {module_name}")
        for name, value in (sinks or {}).items():
            add("sink", name, value, where, f"correct SINKS in {module_name}")
    return problems
