"""``slack`` sink: one Block Kit message per alert through a Slack incoming webhook.

The webhook URL *is* the credential (anyone holding it can post), so it is a secret: never logged,
redacted in every error.  Alert fields come from CloudTrail, i.e. partly from whoever made the API
call, so every value goes through :mod:`daemon.delivery.render` — a principal name cannot smuggle a
link, a mention, formatting or a forged line into the channel.  A runbook that is a URL is a link;
one written as triage steps is shown as text.  A plain ``text`` fallback is sent for notifications and
clients that do not render blocks.

An ``updated`` notification (the incident grew or escalated, see :mod:`daemon.delivery.incidents`)
is a short follow-up — title, count, time span, incident id — not a second full alert; the
``mention`` is repeated only when the update raised the severity to the mention level.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import orjson
from pydantic import SecretStr, field_validator

from daemon.delivery.render import safe_link, single_line, slack_code, slack_text
from daemon.delivery.sinks.http_common import HttpSink, HttpSinkConfig, check_http_url
from detectors.alert import SEVERITY_RANK, Alert
from detectors.event import format_time

__all__ = ["SEVERITY_EMOJI", "SlackSink", "SlackSinkConfig", "build_follow_up", "build_message"]

SEVERITY_EMOJI: Final = {
    "info": ":information_source:",
    "low": ":large_blue_circle:",
    "medium": ":large_yellow_circle:",
    "high": ":red_circle:",
    "critical": ":rotating_light:",
}
_HEADER_MAX = 150
_TEXT_MAX = 2900
_FIELD_MAX = 1900
_MAX_IPS = 10
_MAX_RESOURCES = 10
_MAX_FIELDS = 15


def _resources_text(alert: Alert) -> str:
    lines = []
    for resource in alert.resources[:_MAX_RESOURCES]:
        line = f"{slack_text(resource.get('type', ''), 60)} {slack_code(resource.get('id', ''), 200)}"
        if resource.get("detail"):
            line += f" — {slack_text(resource['detail'], 200)}"
        lines.append(line)
    if len(alert.resources) > _MAX_RESOURCES:
        lines.append(f"… and {len(alert.resources) - _MAX_RESOURCES} more")
    return "\n".join(lines)


def _fields_text(alert: Alert) -> str:
    lines = [f"*{slack_text(name, 80)}*: {slack_code(_show(value), 300)}"
             for name, value in list(alert.fields.items())[:_MAX_FIELDS]]
    return "\n".join(lines)


def _show(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _runbook_block(runbook: str) -> dict[str, Any]:
    link = safe_link(runbook)
    if link is not None:
        text = f":book: <{link}|Runbook>"
    else:  # triage steps written in the rule: shown as text, never as a (dead) link
        text = f":book: *Runbook*\n{slack_text(runbook, _TEXT_MAX - 20, multiline=True)}"
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _links_text(alert: Alert) -> str:
    parts = []
    for key, label in (("event", "CloudTrail event"), ("principal", "Principal in IAM")):
        link = safe_link(alert.links.get(key, ""))
        if link is not None:
            parts.append(f"<{link}|{label}>")
    return " · ".join(parts)


def build_message(alert: Alert, *, mention: str | None = None) -> dict[str, Any]:
    """The webhook payload: ``text`` fallback, header, summary, facts, resources, links, runbook.

    Every value from the event goes through :mod:`daemon.delivery.render`: nothing in it can
    mention, link, format or add a line (see that module for what is neutralised and how).
    """
    severity = alert.severity.upper()
    emoji = SEVERITY_EMOJI[alert.severity]
    account = alert.account_id + (f" ({alert.account_name})" if alert.account_name else "")
    where = " / ".join(p for p in (account, alert.region) if p) or "—"
    ips = ", ".join(single_line(ip, 64) for ip in alert.source_ips[:_MAX_IPS]) + (
        " …" if len(alert.source_ips) > _MAX_IPS else "")
    fallback = f"{emoji} [{severity}] {single_line(alert.title, _HEADER_MAX)} — " \
               f"{single_line(alert.principal, 200) or 'unknown principal'} in {where}"
    facts = [
        ("Severity", f"{emoji} {severity}"),
        ("Detector", slack_text(alert.detector + (f" ({alert.rule_id})" if alert.rule_id else ""), 200)),
        ("Principal", slack_text(alert.principal, 300) or "—"),
        ("Account / region", slack_text(where, 300)),
        ("Source IPs", slack_text(ips, 300) or "—"),
        ("Event time", format_time(alert.time)),
    ]
    if alert.origin_principal and alert.origin_principal != alert.principal:
        facts.append(("Started by", slack_text(alert.origin_principal, 300)))
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "emoji": True,
                                    "text": single_line(f"{emoji} {alert.title}", _HEADER_MAX)}},
        {"type": "section", "text": {"type": "mrkdwn",
                                     "text": slack_text(alert.summary, _TEXT_MAX) or "—"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"[:_FIELD_MAX]} for k, v in facts]},
    ]
    extra = "\n".join(t for t in (_resources_text(alert), _fields_text(alert)) if t)
    if extra:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": extra[:_TEXT_MAX]}})
    links = _links_text(alert)
    if links:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f":link: {links}"}})
    if alert.runbook:
        blocks.append(_runbook_block(alert.runbook))
    context = f"alert `{alert.id}`"
    if alert.tags:
        context += " · " + slack_text(", ".join(alert.tags), 500)
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context[:_FIELD_MAX]}]})
    text = slack_text(fallback, _TEXT_MAX)
    if mention:
        text = f"{mention} {text}"
        blocks.insert(1, {"type": "section", "text": {"type": "mrkdwn", "text": mention}})
    return {"text": text, "blocks": blocks}


def build_follow_up(alert: Alert, *, mention: str | None = None) -> dict[str, Any]:
    """The short message for an ``updated`` notification: what grew, by how much, over what time."""
    incident = alert.incident or {}
    emoji = SEVERITY_EMOJI[alert.severity]
    count = int(incident.get("count") or 0)
    span = slack_text(f"{incident.get('first_time', '?')} – {incident.get('last_time', '?')}", 100)
    state = "closed" if incident.get("kind") == "closed" else "still open"
    line = (f"{emoji} Update [{alert.severity.upper()}] {slack_text(alert.title, _HEADER_MAX)}: "
            f"{count} matching events, {span} ({state})")
    ips = [str(ip) for ip in incident.get("source_ips") or []][:_MAX_IPS]
    context = f"incident {slack_code(incident.get('id', alert.id), 64)}"
    if ips:
        context += " · source IPs: " + slack_text(", ".join(ips), 600)
    total = incident.get("event_ids_total")
    if total:
        context += f" · {total} event ids"
    text = line[:_TEXT_MAX]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": context[:_FIELD_MAX]}]},
    ]
    if mention:
        text = f"{mention} {text}"
        blocks.insert(0, {"type": "section", "text": {"type": "mrkdwn", "text": mention}})
    return {"text": text, "blocks": blocks}


class SlackSinkConfig(HttpSinkConfig):
    """``type: slack``: the incoming-webhook ``url`` (a secret) and an optional ``mention``."""

    type: Literal["slack"] = "slack"
    url: SecretStr
    mention: str | None = None
    """Prepended to the message, e.g. ``<!subteam^S0123>`` or ``<!here>`` (written by you: not escaped)."""
    min_mention_severity: Literal["info", "low", "medium", "high", "critical"] = "high"
    """``mention`` only for alerts at least this severe."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretStr) -> SecretStr:
        check_http_url(value.get_secret_value())
        return value


class SlackSink(HttpSink):
    """Posts one Block Kit message per alert."""

    kind = "slack"
    Config = SlackSinkConfig

    def __init__(self, config: SlackSinkConfig) -> None:
        self._config = config
        super().__init__(config)
        self._headers = {"Content-Type": "application/json"}

    def secrets(self) -> list[str | None]:
        """The webhook URL."""
        return [self._config.url.get_secret_value()]

    def target(self) -> str:
        """The webhook URL."""
        return self._config.url.get_secret_value()

    def encode(self, alert: Alert) -> tuple[bytes, dict[str, str]]:
        """The Block Kit payload."""
        mention = self._config.mention
        if mention and SEVERITY_RANK[alert.severity] < SEVERITY_RANK[self._config.min_mention_severity]:
            mention = None
        if alert.kind == "updated":
            escalated = bool(alert.incident) and alert.incident.get("kind") == "open"
            return orjson.dumps(build_follow_up(alert, mention=mention if escalated else None)), self._headers
        return orjson.dumps(build_message(alert, mention=mention)), self._headers
