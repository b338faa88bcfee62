"""One principal reading many distinct secrets in a short time (MITRE ATT&CK T1555.006).

Stolen credentials are used to harvest every secret they can read: Secrets Manager
``GetSecretValue``/``BatchGetSecretValue`` and decrypted SSM ``GetParameter(s)`` (Stratus Red Team
``aws.credential-access.secretsmanager-retrieve-secrets`` and ``…ssm-retrieve-securestring-parameters``).
Per principal, distinct secret names are counted in a sliding event-time window by trailguard's
shared :class:`~detectors.windows.DistinctCountWindow`; reaching ``threshold`` raises one alert.
State (the window) is checkpointed through ``snapshot``/``restore`` like any built-in detector's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import Field

from detectors.alert import Alert
from detectors.base import Detector, DetectorConfig, DetectorContext
from detectors.durations import Duration
from detectors.event import Event, format_time
from detectors.windows import DistinctCountWindow


class SecretsReadSpreeConfig(DetectorConfig):
    """``detectors.secrets_read_spree``: strict like every detector section."""

    threshold: int = Field(default=10, ge=2)
    """Distinct secrets one principal must read within ``window``."""
    window: Duration = 600.0
    max_keys: int = Field(default=10_000, ge=1)


def _secrets_read(event: Event) -> list[str]:
    """Names of the secrets a successful read returned."""
    if event.error_code is not None:
        return []
    if event.event_name == "GetSecretValue":
        secret = event.get("requestParameters.secretId")
        return [secret] if isinstance(secret, str) else []
    if event.event_name == "BatchGetSecretValue":
        listed = event.get("requestParameters.secretIdList")
        return [s for s in listed if isinstance(s, str)] if isinstance(listed, list) else []
    if event.get("requestParameters.withDecryption") is not True:
        return []
    if event.event_name == "GetParameter":
        name = event.get("requestParameters.name")
        return [name] if isinstance(name, str) else []
    names = event.get("requestParameters.names")
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


class SecretsReadSpree(Detector):
    """Alerts when one principal reads ``threshold`` distinct secrets within ``window``."""

    name: ClassVar[str] = "secrets_read_spree"
    Config = SecretsReadSpreeConfig
    event_names: ClassVar[frozenset[str] | None] = frozenset(
        {"GetSecretValue", "BatchGetSecretValue", "GetParameter", "GetParameters"})
    severity: ClassVar[str] = "high"
    tags: ClassVar[tuple[str, ...]] = ("attack.credential_access", "attack.t1555.006")

    def __init__(self, config: SecretsReadSpreeConfig, context: DetectorContext | None = None) -> None:
        super().__init__(config, context)
        self._window = DistinctCountWindow(config.window, config.threshold, max_keys=config.max_keys,
                                           throttle=config.window,
                                           on_late=lambda n: self.context.on_late(self.name, n),
                                           on_evict=lambda n: self.context.on_evict(self.name, n))

    def on_event(self, event: Event) -> Iterable[Alert] | None:
        alerts = []
        for secret in _secrets_read(event):
            report = self._window.add(event.principal, event.time, secret, event_id=event.event_id)
            if report is None:
                continue
            alerts.append(Alert(
                detector=self.name, title="One principal read many secrets", severity=self.effective_severity,
                time=event.time,
                summary=f"{report.count} distinct secrets read between {format_time(report.start)} "
                        f"and {format_time(report.end)}",
                account_id=event.account_id, region=event.region, principal=event.principal,
                source_ips=[event.source_ip] if event.source_ip else [], event_ids=list(report.event_ids),
                evidence={"secrets": [str(v) for v in report.values], "count": report.count,
                          "window_seconds": self.config.window},
                tags=list(self.tags)))
        return alerts

    def on_watermark(self, watermark: float) -> Iterable[Alert] | None:
        self._window.advance(watermark)
        return None

    def snapshot(self) -> Any:
        return self._window.snapshot()

    def restore(self, state: Any) -> None:
        self._window.restore(state)

    def state_keys(self) -> int:
        return len(self._window)
