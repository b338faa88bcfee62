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

from daemon.delivery.sinks.http_common import HttpSink, HttpSinkConfig, check_http_url
from detectors.alert import Alert
from detectors.event import format_time

__all__ = ["PAGERDUTY_SEVERITY", "PagerDutySink", "PagerDutySinkConfig", "build_event"]

PAGERDUTY_SEVERITY: Final = {"info": "info", "low": "info", "medium": "warning", "high": "error",
                             "critical": "critical"}
_SUMMARY_MAX = 1024


def build_event(alert: Alert, routing_key: str, *, source: str = "trailguard") -> dict[str, Any]:
    """The Events API v2 body for one alert."""
    summary = f"[{alert.severity.upper()}] {alert.title}: {alert.summary}"
    if len(summary) > _SUMMARY_MAX:
        summary = summary[: _SUMMARY_MAX - 1] + "…"
    where = "/".join(p for p in (alert.account_id, alert.region) if p)
    details: dict[str, Any] = {
        "alert_id": alert.id,
        "detector": alert.detector,
        "rule_id": alert.rule_id,
        "principal": alert.principal,
        "account_id": alert.account_id,
        "region": alert.region,
        "source_ips": alert.source_ips,
        "event_ids": alert.event_ids,
        "tags": alert.tags,
        "summary": alert.summary,
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
            "source": f"{source}:{where}" if where else source,
            "severity": PAGERDUTY_SEVERITY[alert.severity],
            "timestamp": format_time(alert.time),
            "component": alert.detector,
            "group": alert.account_id or None,
            "class": alert.rule_id or alert.detector,
            "custom_details": details,
        },
    }
    if alert.runbook:
        event["links"] = [{"href": alert.runbook, "text": "Runbook"}]
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
