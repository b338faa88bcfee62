"""Render a rule's ``alert_summary`` template against the event that matched it.

A rule author writes ``"{requestParameters.groupId} opened to {requestParameters.cidrIp} by
{principal}"``: each ``{…}`` is a dotted event path or one of the normalised names (``principal``,
``account_id``, ``region``, ``source_ip``, ``event_name``, ``event_source``, ``user_agent``) or
``resource`` (the first resource the alert names, with its detail) / ``resources`` (all of them).
``{{`` and ``}}`` are literal braces.  Rendering never raises: a missing value renders as
``(no <last path step>)``, a list as its first few items, a mapping as compact JSON, every value
cut to :data:`MAX_VALUE` characters, and text that is not a placeholder is kept as written.  The
values come from the event (attacker-controlled); sinks neutralise them for their destination.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

import orjson

from detectors.event import Event

__all__ = ["MAX_VALUE", "NAMED", "render_summary", "template_problems"]

MAX_VALUE: Final = 200
_LIST_ITEMS: Final = 5
_PLACEHOLDER: Final = re.compile(r"\{\{|\}\}|\{([A-Za-z0-9_.\-]+)\}")

#: The normalised names a template may use besides event paths.
NAMED: Final = ("principal", "account_id", "region", "source_ip", "event_name", "event_source",
                "user_agent", "resource", "resources")


def _cut(text: str) -> str:
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        shown = ", ".join(_show(v) for v in value[:_LIST_ITEMS])
        return shown + (f" (+{len(value) - _LIST_ITEMS} more)" if len(value) > _LIST_ITEMS else "")
    if isinstance(value, dict) and set(value) == {"items"}:
        return _show(value["items"])
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()[: MAX_VALUE * 2]
    except (TypeError, orjson.JSONEncodeError):
        return repr(value)[: MAX_VALUE * 2]


def _resource_text(resource: dict[str, str]) -> str:
    detail = resource.get("detail")
    return f"{resource.get('id', '')} ({detail})" if detail else resource.get("id", "")


def _value(name: str, event: Event, resources: Sequence[dict[str, str]]) -> str | None:
    if name == "principal":
        return event.principal
    if name == "account_id":
        return event.account_id or None
    if name == "region":
        return event.region or None
    if name == "source_ip":
        return event.source_ip or None
    if name == "event_name":
        return event.event_name
    if name == "event_source":
        return event.event_source or None
    if name == "user_agent":
        return event.user_agent or None
    if name == "resource":
        return _resource_text(resources[0]) if resources else None
    if name == "resources":
        return ", ".join(_resource_text(r) for r in resources[:_LIST_ITEMS]) if resources else None
    value = event.get(name)
    if value is None or value == "" or value == [] or value == {}:
        return None
    return _show(value)


def render_summary(template: str, event: Event, resources: Sequence[dict[str, str]] = ()) -> str:
    """``template`` with every placeholder replaced; missing values as ``(no <name>)``."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        name = match.group(1)
        try:
            value = _value(name, event, resources)
        except (TypeError, ValueError, AttributeError):
            value = None
        if value is None:
            return f"(no {name.rsplit('.', 1)[-1]})"
        return _cut(value)

    return _PLACEHOLDER.sub(replace, template)


def template_problems(template: object) -> list[str]:
    """Why ``template`` is not a usable ``alert_summary`` (empty: it is); for rule checks."""
    if not isinstance(template, str):
        return [f"alert_summary must be a string, not {type(template).__name__}"]
    if not template.strip():
        return ["alert_summary is empty"]
    leftover = _PLACEHOLDER.sub("", template)
    if "{" in leftover or "}" in leftover:
        return ["alert_summary has a brace that is not a {placeholder}: write {{ or }} for a literal brace, "
                "and placeholders as {dotted.event.path} or one of " + ", ".join(NAMED)]
    return []
