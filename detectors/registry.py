"""The one place detectors are registered: name → ``module:Class``.

Imports are lazy so that a broken or heavy detector module costs nothing unless enabled.
"""

from __future__ import annotations

from importlib import import_module
from typing import Final

from detectors.base import Detector

__all__ = ["DETECTORS", "detector_class"]

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


def detector_class(name: str) -> type[Detector]:
    """Import and return the detector class registered as ``name``; ``KeyError`` if unknown."""
    module_name, _, class_name = DETECTORS[name].partition(":")
    cls = getattr(import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        raise TypeError(f"{DETECTORS[name]} is not a Detector")
    return cls
