"""``slack`` sink: one Block Kit message per alert through a Slack incoming webhook.

The webhook URL *is* the credential (anyone holding it can post), so it is a secret: never logged,
redacted in every error.  Alert fields come from CloudTrail, i.e. partly from whoever made the API
call, so they are escaped for Slack's mrkdwn (``&``, ``<``, ``>``) — a principal name cannot smuggle
a link or a mention into the channel.  A plain ``text`` fallback is sent for notifications and
clients that do not render blocks.

An ``updated`` notification (the incident grew or escalated, see :mod:`daemon.delivery.incidents`)
is a short follow-up — title, count, time span, incident id — not a second full alert; the
``mention`` is repeated only when the update raised the severity to the mention level.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import orjson
from pydantic import SecretStr, field_validator

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


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_message(alert: Alert, *, mention: str | None = None) -> dict[str, Any]:
    """The webhook payload: ``text`` fallback plus header, summary, facts, context and runbook link."""
    severity = alert.severity.upper()
    emoji = SEVERITY_EMOJI[alert.severity]
    where = " / ".join(p for p in (alert.account_id, alert.region) if p) or "—"
    ips = ", ".join(alert.source_ips[:_MAX_IPS]) + (" …" if len(alert.source_ips) > _MAX_IPS else "")
    fallback = f"{emoji} [{severity}] {alert.title} — {alert.principal or 'unknown principal'} in {where}"
    fields = [
        ("Severity", f"{emoji} {severity}"),
        ("Detector", alert.detector + (f" ({alert.rule_id})" if alert.rule_id else "")),
        ("Principal", alert.principal or "—"),
        ("Account / region", where),
        ("Source IPs", ips or "—"),
        ("Event time", format_time(alert.time)),
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "emoji": True,
                                    "text": _cut(f"{emoji} {alert.title}", _HEADER_MAX)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _cut(_escape(alert.summary) or "—", _TEXT_MAX)}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": _cut(f"*{k}*\n{_escape(v)}", _FIELD_MAX)}
                                       for k, v in fields]},
    ]
    if alert.runbook:
        link = alert.runbook.replace("|", "%7C").replace(">", "%3E").replace("<", "%3C")
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f":book: <{link}|Runbook>"}})
    context = f"alert `{alert.id}`"
    if alert.tags:
        context += " · " + _escape(", ".join(alert.tags))
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _cut(context, _FIELD_MAX)}]})
    text = _cut(_escape(fallback), _TEXT_MAX)
    if mention:
        text = f"{mention} {text}"
        blocks.insert(1, {"type": "section", "text": {"type": "mrkdwn", "text": mention}})
    return {"text": text, "blocks": blocks}


def build_follow_up(alert: Alert, *, mention: str | None = None) -> dict[str, Any]:
    """The short message for an ``updated`` notification: what grew, by how much, over what time."""
    incident = alert.incident or {}
    emoji = SEVERITY_EMOJI[alert.severity]
    count = int(incident.get("count") or 0)
    span = f"{incident.get('first_time', '?')} – {incident.get('last_time', '?')}"
    state = "closed" if incident.get("kind") == "closed" else "still open"
    line = (f"{emoji} Update [{alert.severity.upper()}] {_cut(_escape(alert.title), _HEADER_MAX)}: "
            f"{count} matching events, {span} ({state})")
    ips = [str(ip) for ip in incident.get("source_ips") or []][:_MAX_IPS]
    context = f"incident `{_escape(str(incident.get('id', alert.id)))}`"
    if ips:
        context += " · source IPs: " + _escape(", ".join(ips))
    total = incident.get("event_ids_total")
    if total:
        context += f" · {total} event ids"
    text = _cut(line, _TEXT_MAX)
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _cut(context, _FIELD_MAX)}]},
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
