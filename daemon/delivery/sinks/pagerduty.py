"""``pagerduty`` sink: PagerDuty Events API v2 ``trigger`` events, one per alert.

``dedup_key`` is the *incident* id (the id of the alert that opened it; see
:mod:`daemon.delivery.incidents`), so an ``updated`` notification — more events folded in, or a
higher severity — updates the same PagerDuty alert instead of paging again, and a re-sent alert
(after a crash or a replay) is folded by PagerDuty itself: the at-least-once delivery never pages
twice.  The routing key
is a secret (it goes in the body, never in a log).  Severities map onto the four PagerDuty knows:
info→info, low→info, medium→warning, high→error, critical→critical.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import orjson
from pydantic import SecretStr, field_validator

from daemon.delivery.render import is_url, plain_data, single_line
from daemon.delivery.sinks.http_common import HttpSink, HttpSinkConfig, check_http_url
from detectors.alert import Alert
from detectors.event import format_time

__all__ = ["PAGERDUTY_SEVERITY", "PagerDutySink", "PagerDutySinkConfig", "build_event"]

PAGERDUTY_SEVERITY: Final = {"info": "info", "low": "info", "medium": "warning", "high": "error",
                             "critical": "critical"}
_SUMMARY_MAX = 1024


def build_event(alert: Alert, routing_key: str, *, source: str = "trailguard") -> dict[str, Any]:
    """The Events API v2 body for one alert.

    Strings from the event are cleaned by :mod:`daemon.delivery.render` (one-line summary of at most
    1,024 characters, no bidi or control characters anywhere); console links and a runbook URL go
    in ``links``, a runbook written as text in ``custom_details.runbook``.
    """
    summary = single_line(f"[{alert.severity.upper()}] {alert.title}: {alert.summary}", _SUMMARY_MAX)
    if len(summary) > _SUMMARY_MAX:  # the cut marker itself must fit too
        summary = summary[: _SUMMARY_MAX - 1] + "…"
    where = "/".join(p for p in (alert.account_id, alert.region) if p)
    details: dict[str, Any] = {
        "alert_id": alert.id,
        "detector": alert.detector,
        "rule_id": alert.rule_id,
        "principal": alert.principal,
        "origin_principal": alert.origin_principal or None,
        "identity_chain": alert.identity_chain or None,
        "account_id": alert.account_id,
        "account_name": alert.account_name or None,
        "account": alert.account,
        "region": alert.region,
        "source_ips": alert.source_ips,
        "event_ids": alert.event_ids,
        "resources": alert.resources,
        "fields": alert.fields or None,
        "tags": alert.tags,
        "summary": alert.summary,
        "runbook": alert.runbook,
        "evidence": alert.evidence,
        "kind": alert.kind,
        "incident": alert.incident,
    }
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": alert.incident["id"] if alert.incident else alert.id,
        "client": "trailguard",
        "payload": {
            "summary": summary,
            "source": single_line(f"{source}:{where}" if where else source, 255),
            "severity": PAGERDUTY_SEVERITY[alert.severity],
            "timestamp": format_time(alert.time),
            "component": alert.detector,
            "group": alert.account_name or alert.account_id or None,
            "class": alert.rule_id or alert.detector,
            "custom_details": plain_data({k: v for k, v in details.items() if v is not None}),
        },
    }
    links = []
    if alert.runbook and is_url(alert.runbook):
        links.append({"href": alert.runbook, "text": "Runbook"})
    for key, label in (("event", "CloudTrail event"), ("principal", "Principal in IAM")):
        href = alert.links.get(key)
        if href and is_url(href):
            links.append({"href": href, "text": label})
    if links:
        event["links"] = links
    return event


class PagerDutySinkConfig(HttpSinkConfig):
    """``type: pagerduty``: the integration's ``routing_key`` (a secret) and the API URL."""

    type: Literal["pagerduty"] = "pagerduty"
    routing_key: SecretStr
    api_url: str = "https://events.pagerduty.com/v2/enqueue"
    source: str = "trailguard"
    """``payload.source`` prefix (the account/region is appended)."""

    @field_validator("api_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_http_url(value)


class PagerDutySink(HttpSink):
    """Triggers one PagerDuty event per alert."""

    kind = "pagerduty"
    Config = PagerDutySinkConfig

    def __init__(self, config: PagerDutySinkConfig) -> None:
        self._config = config
        super().__init__(config)
        self._key = config.routing_key.get_secret_value()
        self._headers = {"Content-Type": "application/json"}

    def secrets(self) -> list[str | None]:
        """The routing key."""
        return [self._config.routing_key.get_secret_value()]

    def target(self) -> str:
        """The Events API URL (not a secret)."""
        return self._config.api_url

    def encode(self, alert: Alert) -> tuple[bytes, dict[str, str]]:
        """The trigger event."""
        return orjson.dumps(build_event(alert, self._key, source=self._config.source)), self._headers
