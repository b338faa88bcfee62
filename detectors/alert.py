"""The one alert schema every detector emits and every sink delivers.

The schema is stable: other tools parse it (see ``config/alert.schema.json``).  Alert ids are
deterministic — the same detection over the same events yields the same id — so a replay or a
restart after a crash re-emits recognisable repeats that sinks can drop, never new incidents.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Final

from detectors.event import Event, format_time
from detectors.evidence import bound
from detectors.links import links_for
from detectors.resources import resources_of

__all__ = ["SEVERITIES", "SEVERITY_RANK", "WIRE_EXTRAS", "Alert", "make_alert_id", "shift_severity", "wire_extras"]

SEVERITIES: Final = ("info", "low", "medium", "high", "critical")
SEVERITY_RANK: Final = {name: rank for rank, name in enumerate(SEVERITIES)}


def shift_severity(severity: str, steps: int) -> str:
    """Move ``severity`` up (positive) or down (negative) the scale, clamped at its ends."""
    rank = SEVERITY_RANK[severity] + steps
    return SEVERITIES[max(0, min(len(SEVERITIES) - 1, rank))]


def make_alert_id(*parts: object) -> str:
    """A deterministic 32-hex-digit id from the parts that identify one detection."""
    digest = hashlib.sha256("\x1f".join("" if p is None else str(p) for p in parts).encode())
    return digest.hexdigest()[:32]


@dataclass(slots=True)
class Alert:
    """One detection.  ``time`` is the event time (epoch seconds) of the triggering event."""

    detector: str
    title: str
    severity: str
    time: float
    summary: str
    account_id: str = ""
    region: str = ""
    principal: str = ""
    source_ips: list[str] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    rule_id: str | None = None
    runbook: str | None = None
    id: str = ""
    #: Wall-clock time the daemon raised it; stamped by the pipeline (detectors never read the clock).
    detected_at: float = 0.0
    #: What the alert is about (principal, source IP…): the default incident grouping; not on the wire.
    entity: str = ""
    #: What the event(s) touched: ``{"type", "id"}`` plus ``arn``/``account_id``/``detail`` when known.
    resources: list[dict[str, str]] = field(default_factory=list)
    #: Console links: ``event`` (CloudTrail event history), ``principal`` (IAM page).
    links: dict[str, str] = field(default_factory=dict)
    #: Values of the event fields the rule lists (Sigma ``fields:``), by dotted path.
    fields: dict[str, Any] = field(default_factory=dict)
    #: From the account map (stamped by the daemon): display name and ``{name, environment, owner, tags}``.
    account_name: str = ""
    account: dict[str, Any] | None = None
    #: For a role session, the hops back to the principal that started it (oldest first).
    identity_chain: list[dict[str, Any]] = field(default_factory=list)
    origin_principal: str = ""
    #: ``opened`` (first notification of an incident) or ``updated`` (its totals grew); see
    #: :mod:`daemon.delivery.incidents`.
    kind: str = "opened"
    #: The incident this notification belongs to (id, count, first/last time, eventIDs…) or ``None``.
    incident: dict[str, Any] | None = None
    #: Grouping values read from the triggering event when the incident key needs them; not on the wire.
    group: tuple[str, ...] | None = None
    #: The triggering event's ``userAgent`` (collected per incident); not on the wire.
    user_agent: str = ""
    #: Matching events the alert stands for when more than its one trigger (a threshold detector's
    #: count, which may exceed its listed ``event_ids``); ``0`` means one.  Counted per incident; not on the wire.
    event_total: int = 0
    #: A match the detector already reported within its throttle: only folded into the open incident
    #: (so its totals count every event), never a notification of its own; not on the wire.
    continues: bool = False

    def __post_init__(self) -> None:
        if self.severity not in SEVERITY_RANK:
            raise ValueError(f"unknown severity {self.severity!r}; use one of {', '.join(SEVERITIES)}")
        if not self.id:
            self.id = make_alert_id(self.detector, self.rule_id, self.entity, *sorted(self.event_ids))
        # attacker-sized values are cut here, once, so that every sink can always encode the alert
        self.evidence = bound(self.evidence)
        if self.fields:
            self.fields = bound(self.fields)
        if not self.links and self.event_ids:
            self.links = links_for(self.event_ids[-1], self.region, self.principal)
        if not self.resources:  # a detector that names nothing touched: the actor and the account
            if self.principal:
                self.resources.append({"type": "principal", "id": self.principal, "detail": "acting identity"})
            if self.account_id:
                self.resources.append({"type": "aws_account", "id": self.account_id, "account_id": self.account_id})

    @classmethod
    def from_event(
        cls,
        event: Event,
        *,
        detector: str,
        title: str,
        severity: str,
        summary: str,
        evidence: dict[str, Any] | None = None,
        tags: list[str] | None = None,
        rule_id: str | None = None,
        runbook: str | None = None,
        entity: str | None = None,
        fields: dict[str, Any] | None = None,
        resources: list[dict[str, str]] | None = None,
    ) -> Alert:
        """Build a single-event alert carrying the event's context: resources it touched, links."""
        ip = event.source_ip
        return cls(
            detector=detector,
            title=title,
            severity=severity,
            time=event.time,
            summary=summary,
            account_id=event.account_id,
            region=event.region,
            principal=event.principal,
            source_ips=[ip] if ip else [],
            event_ids=[event.event_id] if event.event_id else [],
            evidence=evidence if evidence is not None else {},
            tags=tags if tags is not None else [],
            rule_id=rule_id,
            runbook=runbook,
            entity=entity if entity is not None else event.principal,
            id="" if event.event_id else make_alert_id(detector, rule_id, event.principal, event.time,
                                                          event.event_name),
            resources=resources if resources is not None else resources_of(event),
            links=links_for(event.event_id, event.region, event.principal),
            fields=fields if fields is not None else {},
        )

    def to_dict(self) -> dict[str, Any]:
        """The wire form (field order fixed; times as RFC 3339 UTC)."""
        return {
            "id": self.id,
            "detector": self.detector,
            "rule_id": self.rule_id,
            "title": self.title,
            "severity": self.severity,
            "time": format_time(self.time),
            "detected_at": format_time(self.detected_at),
            "account_id": self.account_id,
            "region": self.region,
            "principal": self.principal,
            "source_ips": self.source_ips,
            "event_ids": self.event_ids,
            "summary": self.summary,
            "evidence": self.evidence,
            "tags": self.tags,
            "runbook": self.runbook,
            "resources": self.resources,
            "links": self.links,
            "fields": self.fields,
            "account_name": self.account_name,
            "account": self.account,
            "identity_chain": self.identity_chain,
            "origin_principal": self.origin_principal,
            "kind": self.kind,
            "incident": self.incident,
        }


#: Wire keys added after the first schema; :func:`wire_extras` reads them back (spool, replays).
WIRE_EXTRAS: Final = ("resources", "links", "fields", "account_name", "account", "identity_chain",
                      "origin_principal")


def wire_extras(data: Any) -> dict[str, Any]:
    """The :data:`WIRE_EXTRAS` present in a wire dict, as :class:`Alert` keyword arguments."""
    return {key: data[key] for key in WIRE_EXTRAS if data.get(key) is not None}
