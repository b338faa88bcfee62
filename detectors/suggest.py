""""Did you mean …?" for every name a user types: rule ids and names, detectors, sinks.

One helper, so every refusal (tuning, ``--rule``, detector sections, incident overrides) suggests
the same way: the closest known name by similarity (difflib), case-insensitively.
"""

from __future__ import annotations

from collections.abc import Iterable
from difflib import get_close_matches

__all__ = ["closest", "suggestion"]


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name most similar to ``name`` (ignoring case), or ``None`` if none is close."""
    by_lower: dict[str, str] = {}
    for candidate in known:
        by_lower.setdefault(candidate.lower(), candidate)
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    found = get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[found[0]] if found else None


def suggestion(name: str, known: Iterable[str], what: str = "name") -> str:
    """A fix text: ``did you mean 'x'?``, else ``use a known {what}`` with a few examples."""
    known = sorted(set(known))
    match = closest(name, known)
    if match is not None:
        return f"did you mean {match!r}?"
    if not known:
        return f"no {what} is loaded"
    shown = ", ".join(known[:8]) + (", …" if len(known) > 8 else "")
    return f"use a known {what} ({shown})"
