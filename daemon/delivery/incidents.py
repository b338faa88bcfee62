"""Incidents: every alert belongs to one, and the SOC is notified per incident, not per event.

A brute force, a script looping over secrets or a Terraform apply raises the same detection
dozens of times; a SOC needs one notification now and the totals later, and must never lose a
match.  So alerts are folded into **incidents** before delivery:

* The incident key is the detection — detector **and** rule id — plus grouping values
  (``group_by``; default ``entity`` + ``account_id``: ``entity`` is what the detector says the
  alert is about, the principal unless it says otherwise, e.g. the source IP of a console brute
  force).  A Sigma rule may declare its own with a top-level ``incident: {group_by, window}``;
  ``delivery.incidents.overrides`` (by rule id, rule title or detector name) wins over both.
* The first alert opens the incident and is handed on **at once** (``kind: "opened"``): folding
  never adds latency to the first notification.
* Later alerts whose event time falls inside the window (``[first, first + window)``) produce no
  notification; they are folded in: count, first/last event time, eventIDs (bounded, with the
  total), distinct source IPs, user agents and resources (bounded).
* A folded alert more severe than the incident so far is handed on at once as an ``updated``
  notification with the higher severity: a critical is never held back by an earlier high.
* When the watermark passes the window's end, the incident closes; if it grew since its last
  notification, exactly one ``updated`` notification carries the totals.  Nothing is suppressed
  silently.  At the end of finite input (``replay``) every open incident closes.
* Ids are deterministic: the incident id is the id of the alert that opened it (so PagerDuty's
  ``dedup_key`` and a replay agree), an update's id is derived from the incident id and count.

This stage runs inside the pipeline's processor, between the detectors and the alert queue, so
its state is snapshot with the detector state in the one checkpoint (see :mod:`daemon.pipeline`):
a restart neither re-opens an incident nor loses an update.  :class:`Incidents` is a plain
``snapshot()``/``restore()`` object with no I/O, no clock of its own and no metrics, so it follows
a Kafka partition like detector state: each owned partition folds the alerts its own engine raises
into its own :meth:`Incidents.fork` (the ``incidents`` state part, changelogged with the engine and
dedupe parts), closed by that partition's watermark, so whichever instance owns the partition next
goes on with the same incidents and the same deterministic ids.  Memory is bounded by ``max_open``: beyond it the
incident closing soonest is closed early (its update, if any, is delivered).

Config (``delivery.incidents``)::

    incidents:
      window: 1h                        # event time
      group_by: [entity, account_id]    # entity, principal, account_id, source_ip, region, or a
                                        # dotted event field (requestParameters.bucketName)
      overrides:
        console_login_bruteforce: {window: 30m}
        "Root Console Sign-In Without MFA": {enabled: false}   # one notification per event
"""

from __future__ import annotations

import difflib
import hashlib
import heapq
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from daemon.config import Duration, format_validation_error
from detectors.alert import SEVERITY_RANK, Alert, make_alert_id
from detectors.event import Event, format_time

__all__ = [
    "ALERT_NAMES",
    "IncidentOverride",
    "Incidents",
    "IncidentsConfig",
    "incident_problems",
    "known_detections",
    "override_problems",
    "rule_incident_specs",
]

#: Grouping names read from the alert itself; anything else is a dotted path into the event.
ALERT_NAMES = ("entity", "principal", "account_id", "source_ip", "region")
_MAX_VALUE = 256
#: 2: the template alert is kept as its spool form (bytes), not as a mapping.
_SNAPSHOT_VERSION = 2


class IncidentOverride(BaseModel):
    """Per rule/detector settings (config override or a rule's ``incident:``); unset keys inherit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool | None = None
    """``false``: every alert of this detection is its own notification (no folding)."""
    window: Duration | None = Field(default=None, gt=0)
    group_by: tuple[str, ...] | None = Field(default=None, min_length=1)

    @field_validator("group_by")
    @classmethod
    def _names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for name in value or ():
            if not name or not name.strip() or name != name.strip():
                raise ValueError(f"group_by entry {name!r} is empty or has spaces; use a field name "
                                 f"such as {', '.join(ALERT_NAMES)} or a dotted event field")
        return value


class IncidentsConfig(BaseModel):
    """``delivery.incidents``: the default window and grouping, overrides, and the state bounds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    """``false``: no folding anywhere (every alert is delivered as its own ``opened`` notification)."""
    window: Duration = Field(default=3600.0, gt=0)
    group_by: tuple[str, ...] = Field(default=("entity", "account_id"), min_length=1)
    overrides: dict[str, IncidentOverride] = Field(default_factory=dict)
    """By rule id, rule title or detector name (unknown names are refused at start-up)."""
    max_open: int = Field(default=20_000, ge=1)
    """Open incidents kept; beyond it the one closing soonest is closed early."""
    max_event_ids: int = Field(default=100, ge=1)
    """EventIDs kept per incident (the total is always counted)."""
    max_values: int = Field(default=20, ge=1)
    """Distinct source IPs, user agents and resources kept per incident."""


class _Policy(NamedTuple):
    enabled: bool
    window: float
    group_by: tuple[str, ...]
    #: Whether ``group_by`` reads the event (dotted fields): then the pipeline stamps the alert.
    reads_event: bool


def _bounded(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif value is None:
        text = ""
    else:
        try:
            text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        except (TypeError, orjson.JSONEncodeError):  # nested too deep for JSON: still a stable key
            text = repr(value)
    if len(text) <= _MAX_VALUE:
        return text
    return text[:64] + "…sha256:" + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:16]


def _time(epoch: float) -> str:
    """RFC 3339, or the raw number for a time outside the datetime range (folding never raises:
    such an alert is dead-lettered by the dispatcher, its incident must not stop the processor)."""
    try:
        return format_time(epoch)
    except (ValueError, OverflowError, OSError):
        return repr(epoch)


def rule_incident_specs(detectors: Iterable[Any]) -> tuple[dict[str, IncidentOverride], list[str]]:
    """Every loaded rule's ``incident:`` attribute, by rule id; and the problems (file, key, fix)."""
    specs: dict[str, IncidentOverride] = {}
    problems: list[str] = []
    for rule in _rules(detectors):
        # a detection rule is a compiled wrapper (.rule, .rule_id, .path); a correlation rule is
        # pySigma's SigmaCorrelationRule itself (.custom_attributes, .id, .source)
        sigma = getattr(rule, "rule", rule)
        raw = (getattr(sigma, "custom_attributes", None) or {}).get("incident")
        if raw is None:
            continue
        rule_id = _rule_id(rule)
        where = getattr(rule, "path", "") or str(getattr(getattr(rule, "source", None), "path", "") or "") or rule_id
        if not isinstance(raw, Mapping):
            problems.append(f"{where}: incident: must be a mapping (group_by, window); fix: write e.g. "
                            "'incident: {group_by: [principal], window: 1h}'")
            continue
        try:
            specs[rule_id] = IncidentOverride.model_validate(dict(raw))
        except ValidationError as error:
            problems.extend(format_validation_error(where, "incident", error))
    return specs, problems


def _rules(detectors: Iterable[Any]) -> list[Any]:
    found = []
    for detector in detectors:
        ruleset = getattr(detector, "rules", None)
        if ruleset is None:
            continue
        found.extend(getattr(ruleset, "rules", ()) or ())
        found.extend(getattr(ruleset, "correlation_rules", ()) or ())
    return [r for r in found if _rule_id(r)]


def _rule_id(rule: Any) -> str:
    """A loaded rule's id as its alerts carry it: ``rule_id`` of a compiled detection rule; ``id``,
    else ``name``, of a correlation rule (as the correlation planner names its alerts)."""
    rule_id = getattr(rule, "rule_id", None)
    if rule_id:
        return str(rule_id)
    correlation_id = getattr(rule, "id", None) or getattr(rule, "name", None)
    return str(correlation_id) if correlation_id else ""


def known_detections(detectors: Iterable[Any]) -> dict[str, tuple[str, str | None]]:
    """Names an override may use → (detector, rule id or None): detector names, rule ids and titles."""
    detectors = list(detectors)
    names: dict[str, tuple[str, str | None]] = {d.name: (d.name, None) for d in detectors}
    for detector in detectors:
        ruleset = getattr(detector, "rules", None)
        if ruleset is None:
            continue
        for rule in _rules([detector]):
            rule_id = _rule_id(rule)
            names.setdefault(rule_id, (detector.name, rule_id))
            title = getattr(rule, "title", None)
            if title:
                names.setdefault(title, (detector.name, rule_id))
    return names


def incident_problems(config: IncidentsConfig, detectors: Iterable[Any]) -> list[str]:
    """Everything wrong with incident settings for these detectors: bad rule ``incident:`` and overrides."""
    detectors = list(detectors)
    _, problems = rule_incident_specs(detectors)
    return problems + override_problems(config, known_detections(detectors))


def override_problems(config: IncidentsConfig, detections: Mapping[str, tuple[str, str | None]]) -> list[str]:
    """Override names that match no loaded detector, rule id or rule title (with the closest match)."""
    problems = []
    for name in config.overrides:
        if name in detections:
            continue
        close = difflib.get_close_matches(name, list(detections), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else "use a detector name, a rule id or a rule title"
        problems.append(f"delivery.incidents.overrides.{name}: no loaded detector or rule has this name; "
                        f"fix: {hint}")
    return problems


class _Incident:
    """One open incident: the alert that opened it (the template of its updates) and the totals."""

    __slots__ = ("count", "end", "event_ids", "first", "id", "key", "last", "notified", "rank",
                 "resources", "seq", "severity", "source_ips", "template", "template_wire", "total_ids",
                 "user_agents")

    def __init__(self, key: tuple[str, ...], template: Alert, end: float, seq: int) -> None:
        self.key = key
        self.id = template.id
        self.template = template
        #: The template's spool form, encoded at its first checkpoint and reused by every later one
        #: (nothing changes an alert once it opened an incident).
        self.template_wire: bytes | None = None
        self.end = end
        self.seq = seq
        self.count = 0
        self.notified = 0
        self.first = self.last = template.time
        self.severity = template.severity
        self.rank = SEVERITY_RANK[template.severity]
        self.event_ids: list[str] = []
        self.total_ids = 0
        self.source_ips: list[str] = []
        self.user_agents: list[str] = []
        self.resources: list[Any] = []

    def add(self, alert: Alert, limits: IncidentsConfig) -> None:
        self.count += max(getattr(alert, "event_total", 0), 1)  # a threshold alert counts its events
        if alert.time < self.first:
            self.first = alert.time
        if alert.time > self.last:
            self.last = alert.time
        ids = self.event_ids
        self.total_ids += max(getattr(alert, "event_total", 0), len(alert.event_ids))
        for event_id in alert.event_ids:
            if len(ids) < limits.max_event_ids and event_id not in ids:
                ids.append(event_id)
        cap = limits.max_values
        for ip in alert.source_ips:
            if len(self.source_ips) < cap and ip not in self.source_ips:
                self.source_ips.append(ip)
        agent = alert.user_agent
        if agent and len(self.user_agents) < cap:
            agent = _bounded(agent)
            if agent not in self.user_agents:
                self.user_agents.append(agent)
        for resource in getattr(alert, "resources", None) or ():
            if len(self.resources) < cap and resource not in self.resources:
                self.resources.append(resource)

    def wire(self, state: str) -> dict[str, Any]:
        """The alert's ``incident`` object (``kind``: ``open`` or ``closed``)."""
        return {"id": self.id, "kind": state, "count": self.count, "first_time": _time(self.first),
                "last_time": _time(self.last), "event_ids": list(self.event_ids),
                "event_ids_total": self.total_ids, "source_ips": list(self.source_ips),
                "user_agents": list(self.user_agents), "resources": list(self.resources)}

    def snapshot(self) -> dict[str, Any]:
        wire = self.template_wire
        if wire is None:
            from daemon.delivery.spool import encode_alert

            wire = self.template_wire = encode_alert(self.template)
        return {"key": list(self.key), "alert_wire": wire, "end": self.end,
                "count": self.count, "notified": self.notified, "first": self.first, "last": self.last,
                "severity": self.severity, "event_ids": self.event_ids, "total_ids": self.total_ids,
                "source_ips": self.source_ips, "user_agents": self.user_agents, "resources": self.resources}

    @classmethod
    def restore(cls, data: Mapping[str, Any], seq: int) -> _Incident:
        from daemon.delivery.spool import decode_alert

        wire = data.get("alert_wire")
        if not isinstance(wire, bytes):  # written before version 2: the spool form as a mapping
            wire = orjson.dumps(data["alert"])
        template = decode_alert(wire)
        incident = cls(tuple(str(v) for v in data["key"]), template, float(data["end"]), seq)
        incident.template_wire = wire
        incident.count = int(data["count"])
        incident.notified = int(data["notified"])
        incident.first, incident.last = float(data["first"]), float(data["last"])
        incident.severity = str(data["severity"])
        incident.rank = SEVERITY_RANK[incident.severity]
        incident.event_ids = [str(i) for i in data.get("event_ids") or []]
        incident.total_ids = int(data.get("total_ids") or 0)
        incident.source_ips = [str(i) for i in data.get("source_ips") or []]
        incident.user_agents = [str(i) for i in data.get("user_agents") or []]
        incident.resources = list(data.get("resources") or [])
        return incident


class Incidents:
    """Folds alerts into incidents; :meth:`fold` returns the notifications to deliver."""

    def __init__(
        self,
        config: IncidentsConfig | None = None,
        *,
        detections: Mapping[str, tuple[str, str | None]] | None = None,
        rule_specs: Mapping[str, IncidentOverride] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``detections`` (from :func:`known_detections`) validates override names when given."""
        self.config = config or IncidentsConfig()
        self.clock = clock
        self._rule_specs = dict(rule_specs or {})
        self._by_rule: dict[str, IncidentOverride] = {}
        self._by_detector: dict[str, IncidentOverride] = {}
        problems = override_problems(self.config, detections) if detections is not None else []
        if problems:
            raise ValueError("; ".join(problems))
        for name, override in self.config.overrides.items():
            target = (detections or {}).get(name)
            if target is None or target[1] is None:
                self._by_detector[target[0] if target else name] = override
                if target is None:
                    self._by_rule[name] = override
            else:
                self._by_rule[target[1]] = override
        self._policies: dict[tuple[str, str | None], _Policy] = {}
        self._open: dict[tuple[str, ...], _Incident] = {}
        self._closing: list[tuple[float, int, tuple[str, ...]]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._open)

    def fork(self) -> Incidents:
        """An empty :class:`Incidents` with these settings: the incident state of one Kafka partition
        (a state part that follows its partition through the changelog, see :mod:`daemon.pipeline`)."""
        fresh = Incidents(self.config, rule_specs=self._rule_specs, clock=self.clock)
        fresh._by_rule, fresh._by_detector = self._by_rule, self._by_detector  # resolved names, shared
        return fresh

    # -- policy ------------------------------------------------------------------------------
    def policy(self, detector: str, rule_id: str | None) -> _Policy:
        """Effective settings for one detection: config override by rule > rule's ``incident:`` >
        config override by detector > config defaults."""
        key = (detector, rule_id)
        found = self._policies.get(key)
        if found is not None:
            return found
        config = self.config
        enabled, window, group_by = config.enabled, config.window, config.group_by
        layers = [self._by_detector.get(detector),
                  self._rule_specs.get(rule_id) if rule_id else None,
                  self._by_rule.get(rule_id) if rule_id else None]
        for layer in layers:
            if layer is None:
                continue
            if layer.enabled is not None:
                enabled = layer.enabled
            if layer.window is not None:
                window = layer.window
            if layer.group_by is not None:
                group_by = layer.group_by
        found = _Policy(enabled and config.enabled, window, group_by,
                        any(name not in ALERT_NAMES for name in group_by))
        self._policies[key] = found
        return found

    def stamp(self, alert: Alert, event: Event) -> None:
        """Record what the alert's incident needs from its triggering event (pipeline, per alert)."""
        alert.user_agent = event.user_agent
        policy = self.policy(alert.detector, alert.rule_id)
        if policy.reads_event and policy.enabled:
            alert.group = tuple(self._value(alert, name, event) for name in policy.group_by)

    @staticmethod
    def _value(alert: Alert, name: str, event: Event | None) -> str:
        if name == "entity":
            return alert.entity or alert.principal
        if name == "principal":
            return alert.principal
        if name == "account_id":
            return alert.account_id
        if name == "region":
            return alert.region
        if name == "source_ip":
            return alert.source_ips[0] if alert.source_ips else ""
        return _bounded(event.get(name, "")) if event is not None else ""

    # -- folding -----------------------------------------------------------------------------
    def fold(self, alerts: list[Alert], watermark: float) -> list[Alert]:
        """The notifications for ``alerts`` (openings, escalations) and for incidents the watermark closed."""
        out: list[Alert] = []
        for alert in alerts:
            policy = self.policy(alert.detector, alert.rule_id)
            if not policy.enabled:
                if getattr(alert, "continues", False):  # per-event output: the detector's throttle holds
                    continue
                alert.kind = "opened"
                out.append(alert)
                continue
            group = alert.group
            if group is None:
                group = tuple(_bounded(self._value(alert, name, None)) for name in policy.group_by)
            key = (alert.detector, alert.rule_id or "", *group)
            incident = self._open.get(key)
            if incident is not None and alert.time >= incident.end:
                self._close(incident, out)
                incident = None
            if incident is None:
                self._open_incident(key, alert, policy.window, out)
                continue
            incident.add(alert, self.config)
            rank = SEVERITY_RANK[alert.severity]
            if rank > incident.rank:
                incident.rank, incident.severity = rank, alert.severity
                out.append(self._update(incident, "open"))
        self.advance(watermark, out)
        return out

    def advance(self, watermark: float, out: list[Alert]) -> None:
        """Close every incident whose window ended at or before ``watermark``."""
        closing = self._closing
        while closing and closing[0][0] <= watermark:
            _end, seq, key = heapq.heappop(closing)
            incident = self._open.get(key)
            if incident is not None and incident.seq == seq:
                self._close(incident, out)

    def close_all(self, out: list[Alert]) -> None:
        """Close every open incident (end of finite input), soonest first."""
        self.advance(float("inf"), out)

    def _open_incident(self, key: tuple[str, ...], alert: Alert, window: float, out: list[Alert]) -> None:
        self._seq += 1
        incident = _Incident(key, alert, alert.time + window, self._seq)
        incident.add(alert, self.config)
        incident.notified = incident.count
        self._open[key] = incident
        heapq.heappush(self._closing, (incident.end, incident.seq, key))
        alert.kind = "opened"
        alert.incident = incident.wire("open")
        out.append(alert)
        while len(self._open) > self.config.max_open:
            _end, seq, oldest = heapq.heappop(self._closing)
            found = self._open.get(oldest)
            if found is not None and found.seq == seq:
                self._close(found, out)

    def _close(self, incident: _Incident, out: list[Alert]) -> None:
        del self._open[incident.key]
        if incident.count > incident.notified:
            out.append(self._update(incident, "closed"))

    def _update(self, incident: _Incident, state: str) -> Alert:
        template = incident.template
        incident.notified = incident.count
        span = f"{incident.count} matching events from {_time(incident.first)} to {_time(incident.last)}"
        update = Alert(
            detector=template.detector, title=template.title, severity=incident.severity,
            time=incident.last, summary=f"{template.summary} ({span})" if template.summary else span,
            account_id=template.account_id, region=template.region, principal=template.principal,
            source_ips=list(incident.source_ips), event_ids=list(incident.event_ids),
            evidence=template.evidence, tags=list(template.tags), rule_id=template.rule_id,
            runbook=template.runbook, id=make_alert_id(incident.id, "updated", incident.count),
            detected_at=self.clock(), entity=template.entity,
        )
        for name in ("resources", "links", "account_name", "account", "identity_chain", "origin_principal",
                     "fields"):
            if hasattr(template, name):
                setattr(update, name, getattr(template, name))
        update.kind = "updated"
        update.incident = incident.wire(state)
        return update

    # -- checkpointed state ------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Plain data for the checkpoint: every open incident with its template alert and totals."""
        kept = []
        for incident in sorted(self._open.values(), key=lambda i: i.seq):
            try:
                kept.append(incident.snapshot())
            except (TypeError, ValueError, OverflowError, orjson.JSONEncodeError):
                # A poison template (no wire form): its notifications go to the dead letters anyway;
                # leaving it out keeps every other incident's checkpoint from failing with it.
                continue
        return {"version": _SNAPSHOT_VERSION, "incidents": kept}

    def restore(self, state: Mapping[str, Any] | None) -> None:
        """Load a :meth:`snapshot` (an empty or missing one leaves no incident open)."""
        self._open.clear()
        self._closing.clear()
        for data in (state or {}).get("incidents") or []:
            self._seq += 1
            incident = _Incident.restore(data, self._seq)
            self._open[incident.key] = incident
            heapq.heappush(self._closing, (incident.end, incident.seq, incident.key))
