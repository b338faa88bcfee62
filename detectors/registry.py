"""The one place detectors are registered: name → ``module:Class``.

Built-in detectors are listed here; detectors from other packages are added at start-up by
:mod:`daemon.plugins` (entry points ``trailguard.detectors`` and the config's ``plugins:``
modules) through :func:`register_detector`, and from then on are looked up exactly like a
built-in.  Imports are lazy so that a broken or heavy detector module costs nothing unless enabled.
"""

from __future__ import annotations

from importlib import import_module
from typing import Final

from detectors.base import Detector

__all__ = ["DETECTORS", "detector_class", "detector_names", "register_detector"]

DETECTORS: Final[dict[str, str]] = {
    "cloudtrail_tampering": "detectors.cloudtrail_tampering:CloudTrailTampering",
    "cloudtrail_silence": "detectors.cloudtrail_silence:CloudTrailSilence",
    "run_instances_spike": "detectors.run_instances_spike:RunInstancesSpike",
    "console_login_bruteforce": "detectors.console_login_bruteforce:ConsoleLoginBruteforce",
    "access_denied_burst": "detectors.access_denied_burst:AccessDeniedBurst",
    "impossible_travel": "detectors.impossible_travel:ImpossibleTravel",
    "credential_exfiltration": "detectors.credential_exfiltration:CredentialExfiltration",
    "new_region": "detectors.new_region:NewRegion",
    "sigma": "detectors.sigma.detector:SigmaDetector",
}


#: Detectors registered by plugins (name → ``module:Class``), after the built-ins.
_PLUGINS: dict[str, str] = {}


def register_detector(name: str, target: str) -> None:
    """Register a plugin detector ``name`` → ``module:Class``.

    ``ValueError`` when the name is a built-in's or another plugin already registered it with a
    different class (a plugin never silently replaces a detector).
    """
    if name in DETECTORS:
        raise ValueError(f"detector name {name!r} is a built-in detector's")
    if _PLUGINS.get(name, target) != target:
        raise ValueError(f"detector name {name!r} is already registered by {_PLUGINS[name]}")
    _PLUGINS[name] = target


def detector_names() -> list[str]:
    """Every registered detector name: the built-ins in their order, then plugins."""
    return [*DETECTORS, *_PLUGINS]


def detector_class(name: str) -> type[Detector]:
    """Import and return the detector class registered as ``name``; ``KeyError`` if unknown."""
    target = DETECTORS[name] if name in DETECTORS else _PLUGINS[name]
    module_name, _, class_name = target.partition(":")
    cls = getattr(import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        raise TypeError(f"{target} is not a Detector")
    if cls.name != name:
        raise TypeError(f"{target} is named {cls.name!r}, registered as {name!r}; the two must agree")
    return cls
