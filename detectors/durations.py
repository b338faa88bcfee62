"""Durations as operators write them (``250ms``, ``10s``, ``15m``, ``2h``, ``7d`` or seconds).

Shared by the daemon's config and by detectors' own config models, so every duration in a
trailguard config file is written, parsed and rejected the same way.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Final

from pydantic import BeforeValidator

__all__ = ["Duration", "parse_duration"]

_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``10s``, ``15m``, ``1.5h``, ``250ms``, ``7d`` or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '10s', '15m', '2h'")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"a duration must be a finite number of seconds, not {value!r}")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError(f"{value!r} is not a duration; write e.g. '10s', '15m', '2h' or a number of seconds")


#: A pydantic field type: seconds as a float, accepting the written forms above.
Duration = Annotated[float, BeforeValidator(parse_duration)]
