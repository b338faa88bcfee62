"""Where the files shipped with trailguard are: the rule pack, the sample trail, the alert schema.

A source checkout keeps them at the repository's top level (``config/``, ``samples/``); an
installed wheel carries the same trees as package data under ``daemon/_bundled/`` (the wheel
maps them there, see ``setup.py``: generic top-level names such as ``config`` would collide with
other projects in site-packages).  Everything that needs a bundled file asks this module, so
``pip install trailguard`` works from any directory.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

__all__ = ["alert_schema_path", "bundled_root", "default_config_path", "rule_pack_path", "sample_trail_path"]

_SOURCE_TREE = Path(__file__).resolve().parent.parent


@cache
def bundled_root() -> Path:
    """The directory holding ``config/`` and ``samples/``: installed package data, else the checkout."""
    installed = Path(str(files("daemon"))) / "_bundled"
    if (installed / "config").is_dir():
        return installed
    return _SOURCE_TREE


def rule_pack_path() -> Path:
    """The shipped Sigma rule pack (``config/rules``)."""
    return bundled_root() / "config" / "rules"


def sample_trail_path() -> Path:
    """The bundled sample CloudTrail trail the demo replays (``samples/trail``)."""
    return bundled_root() / "samples" / "trail"


def alert_schema_path() -> Path:
    """The JSON Schema of the alert wire format (``config/alert.schema.json``)."""
    return bundled_root() / "config" / "alert.schema.json"


def default_config_path() -> Path:
    """The shipped, commented configuration file (``config/trailguard.yaml``)."""
    return bundled_root() / "config" / "trailguard.yaml"
