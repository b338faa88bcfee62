"""What a Sigma rule adds to its alerts beyond the match: runbook, summary template, ``fields:``.

The trailguard extension attributes sit at the top level of the rule file and pySigma keeps them
in ``SigmaRule.custom_attributes``: ``runbook:`` (a URL, or plain-text triage steps) and
``alert_summary:`` (see :mod:`detectors.summary_template`).  Sigma's own ``fields:`` lists the event
fields whose values the analyst needs; the alert carries them in ``fields``.  Problems with these
attributes are reported by :func:`content_problems` (``trailguard rules check``/the pack test) and
never stop an alert: a broken template renders with fallbacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from sigma.rule import SigmaRule

from detectors.event import Event
from detectors.resources import resources_of
from detectors.summary_template import render_summary, template_problems

__all__ = ["MAX_FIELDS", "RuleContent", "content_of", "content_problems", "describe_match"]

#: ``fields:`` entries carried per alert.
MAX_FIELDS: Final = 50


@dataclass(frozen=True, slots=True)
class RuleContent:
    """The alert-facing extras of one rule."""

    runbook: str | None
    summary_template: str | None
    fields: tuple[str, ...]


def content_of(rule: SigmaRule | None) -> RuleContent:
    """Read the extras of ``rule`` (missing or mistyped ones are simply absent)."""
    if rule is None:
        return RuleContent(None, None, ())
    custom = rule.custom_attributes or {}
    runbook = custom.get("runbook")
    template = custom.get("alert_summary")
    fields = tuple(str(f) for f in (rule.fields or ())[:MAX_FIELDS] if isinstance(f, str) and f)
    return RuleContent(
        runbook=runbook.strip() if isinstance(runbook, str) and runbook.strip() else None,
        summary_template=template if isinstance(template, str) and template.strip() else None,
        fields=fields,
    )


def content_problems(rule: SigmaRule) -> list[str]:
    """Problems with the extension attributes of ``rule`` (empty when there are none)."""
    custom = rule.custom_attributes or {}
    problems: list[str] = []
    if "runbook" in custom and not (isinstance(custom["runbook"], str) and custom["runbook"].strip()):
        problems.append("runbook must be a non-empty string (a URL or triage steps)")
    if "alert_summary" in custom:
        problems.extend(template_problems(custom["alert_summary"]))
    return problems


def _resource_phrase(resources: list[dict[str, str]]) -> str:
    named = [r for r in resources if r.get("type") != "aws_account"] or resources
    if not named:
        return ""
    first = named[0]
    text = f"{first['type']} {first['id']}"
    if first.get("detail"):
        text += f" ({first['detail']})"
    if len(named) > 1:
        text += f" and {len(named) - 1} more"
    return text


def describe_match(title: str, content: RuleContent, event: Event) -> tuple[str, list[dict[str, str]],
                                                                             dict[str, Any]]:
    """The alert summary, resources and field values for a match of a rule with ``content``."""
    resources = resources_of(event)
    fields = {name: event.get(name) for name in content.fields}
    if content.summary_template:
        return render_summary(content.summary_template, event, resources), resources, fields
    action = f"{event.event_source}:{event.event_name}" if event.event_source else event.event_name
    on = _resource_phrase(resources)
    where = f" from {event.source_ip}" if event.source_ip else ""
    summary = f"{title}: {action}{' on ' + on if on else ''} by {event.principal}{where}"
    return summary, resources, fields

