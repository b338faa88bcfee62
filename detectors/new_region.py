"""New region: activity in an AWS region an account does not use (or is not allowed to use).

Why it exists: attackers with stolen keys mine cryptocurrency or stage resources in regions nobody
watches, and probe opt-in regions to find one with no guardrails (MITRE ATT&CK T1535, "Unused/
Unsupported Cloud Regions").  A first call in a region an account has never used is one of the
strongest signals in CloudTrail, once the account's normal set is known.

Two modes, per account (``event.account_id``):

* **learning** (default): the account's regions are learned for ``learning_period`` of event time
  from its first event (:class:`~detectors.windows.FirstSeen`); afterwards the first activity in a
  region not seen for ``forget_after`` is reported once (``new_region``, severity medium);
* **allowlist**: with ``approved_regions`` configured, any activity outside it is reported at once,
  without learning (``unapproved_region``, severity one step up: high), at most once per account and
  region per ``throttle``; the next alert carries the suppressed count.

Calls rejected because the region is disabled (``errorCode`` in ``region_disabled_errors``:
``OptInRequired``, ``RegionDisabledException``, ``UnrecognizedClientException``,
``InvalidClientTokenId``, ``AuthFailure`` — what EC2, STS and the JSON APIs return for an opt-in
region that is not enabled) are not activity: they never make a region known.  An attacker probing
disabled regions is still a signal, so after the same learning period (probes are learned too:
scanners such as Prowler probe every region daily) the first probe of a region is reported at low
severity (``disabled_region_probe``), unless the region is known as active or approved.

Optionally (``principal_new_service``, off by default: noisy), a principal's first call to an
``eventSource`` it has not used during its own learning period is reported at low severity
(``new_service``), at most once per principal per ``service_throttle`` (suppressed count carried).

Skipped: global services whose events carry a fixed region (``global_services``: an entry
``source`` skips the event source everywhere, ``source@region`` only in that region — the STS global
endpoint logs as ``us-east-1``), AWS services acting for themselves (``ignore_aws_services``:
``userIdentity.type`` ``AWSService``, ``eventType`` ``AwsServiceEvent``, service-linked roles under
``/aws-service-role/``), principals matching ``ignore_principal_patterns``.

Parameters: ``learning_period`` (default 7 d), ``forget_after`` (default 90 d), ``approved_regions``
(default empty = learning mode), ``throttle`` (default 24 h), ``region_disabled_errors``,
``global_services``, ``ignore_aws_services`` (default true), ``ignore_principal_patterns``,
``principal_new_service`` (default false), ``service_learning_period`` (default 7 d),
``service_throttle`` (default 1 h), ``max_known_in_evidence`` (default 32), ``max_keys`` (default
100,000 accounts/principals), ``late_policy`` (``evaluate``, default, or ``drop``: events older than
the watermark are counted as late either way), plus ``enabled``/``severity``.

Known false positives: a team legitimately expanding into a region (approve it, or acknowledge the
one alert); organisation-wide tooling run by an IAM role rather than a service principal (StackSets
executions, security scanners — list them in ``ignore_principal_patterns``); a replay that starts
mid-history learns from its first event (the first week of a replay is silent).
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import BeforeValidator, Field

from detectors.alert import Alert, shift_severity
from detectors.base import Detector, DetectorConfig, DetectorContext, StateKey
from detectors.event import Event, format_time
from detectors.resources import bounded, make_resource, resources_of
from detectors.windows.first_seen import FirstSeen, FirstSeenReport
from detectors.windows.store import SNAPSHOT_VERSION, KeyedState, check_snapshot
from detectors.windows.throttle import Throttle

__all__ = ["DEFAULT_GLOBAL_SERVICES", "NewRegion"]

_NEG_INF: Final = float("-inf")
_DAY: Final = 86_400.0
_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
#: Regions remembered per account for the evidence (an account rarely uses more than a handful).
_MAX_REGIONS: Final = 64

#: Event sources whose ``awsRegion`` says nothing about where the caller works.
DEFAULT_GLOBAL_SERVICES: Final = (
    "iam.amazonaws.com",
    "sts.amazonaws.com@us-east-1",
    "signin.amazonaws.com",
    "cloudfront.amazonaws.com",
    "route53.amazonaws.com",
    "route53domains.amazonaws.com",
    "organizations.amazonaws.com",
    "support.amazonaws.com",
    "health.amazonaws.com",
    "globalaccelerator.amazonaws.com",
    "shield.amazonaws.com",
    "waf.amazonaws.com",
    "budgets.amazonaws.com",
    "ce.amazonaws.com",
    "account.amazonaws.com",
    "billingconsole.amazonaws.com",
    "trustedadvisor.amazonaws.com",
    "artifact.amazonaws.com",
    "notifications.amazonaws.com",
)


def _seconds(value: Any) -> Any:
    """``90``, ``"90s"``, ``"15m"``, ``"24h"``, ``"7d"`` → seconds (other values left for pydantic to refuse)."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(_seconds)]


class _Known:
    """An account's regions with their last activity, and the newest of those times."""

    __slots__ = ("newest", "regions")

    def __init__(self, newest: float, regions: dict[str, float]) -> None:
        self.newest = newest
        self.regions = regions


def _newest(known: _Known) -> float:
    return known.newest


class NewRegion(Detector):
    """Reports an account's first activity in an unused (or unapproved) region."""

    name: ClassVar[str] = "new_region"
    #: State keyed by account.
    state_key: ClassVar[StateKey | None] = "account"
    severity: ClassVar[str] = "medium"
    tags: ClassVar[tuple[str, ...]] = ("attack.defense_evasion", "attack.t1535")
    runbook: ClassVar[str | None] = (
        "Ask the principal's owner why it works in this region. If unexplained: list what was created "
        "there (EC2 instances, Lambda functions, IAM-less resources such as key pairs), treat the "
        "principal's credentials as compromised, and deny the region with an SCP (aws:RequestedRegion)."
    )

    class Config(DetectorConfig):
        """Tuning for :class:`NewRegion`."""

        #: Event time, from an account's first event, during which its regions are learned silently.
        learning_period: Seconds = Field(7 * _DAY, ge=0)
        #: A region unused this long (event time) is forgotten and would be reported again.
        forget_after: Seconds = Field(90 * _DAY, gt=0)
        #: When set, every region outside it is reported at once (no learning).
        approved_regions: frozenset[str] = frozenset()
        #: In allowlist mode: one alert per account and region per this many seconds.
        throttle: Seconds = Field(_DAY, gt=0)
        #: Error codes meaning "this region is disabled for the account".
        region_disabled_errors: frozenset[str] = frozenset({
            "OptInRequired", "RegionDisabledException", "UnrecognizedClientException",
            "InvalidClientTokenId", "AuthFailure",
        })
        #: ``source`` (skipped everywhere) or ``source@region`` (skipped in that region only).
        global_services: tuple[str, ...] = DEFAULT_GLOBAL_SERVICES
        #: Skip AWS services acting for themselves (AWSService identities, service events, service-linked roles).
        ignore_aws_services: bool = True
        #: ``fnmatch`` globs of principals never considered.
        ignore_principal_patterns: tuple[str, ...] = ()
        #: Also report a principal's first call to a new event source (noisy).
        principal_new_service: bool = False
        #: Learning period of each principal's event sources.
        service_learning_period: Seconds = Field(7 * _DAY, ge=0)
        #: At most one ``new_service`` alert per principal per this many seconds.
        service_throttle: Seconds = Field(3600.0, gt=0)
        #: Known regions listed in an alert's evidence at most.
        max_known_in_evidence: int = Field(32, ge=0)
        #: Accounts (and principals, for ``principal_new_service``) tracked at most.
        max_keys: int = Field(100_000, ge=1)
        #: ``evaluate`` (default) judges events older than the watermark too; ``drop`` ignores them.
        late_policy: Literal["evaluate", "drop"] = "evaluate"

    config: Config

    def __init__(self, config: DetectorConfig, context: DetectorContext | None = None) -> None:
        super().__init__(config, context)
        config = self.config
        on_evict = self.context.on_evict
        # late events are counted once, here (see on_event), not by each primitive
        #: (account, region) → the event time (a second) whose activity was last recorded in full.
        #: Another call of that account in that region in that same second changes no state (its
        #: region is known with that very time, the account's newest time is not older), so it is
        #: skipped; cleared on any eviction or restore, so a skip never stands for dropped state.
        self._recent: dict[tuple[str, str], float] = {}
        self._cap_recent = config.max_keys

        def evicted(n: int) -> None:
            self._recent.clear()
            on_evict(self.name, n)

        hooks: dict[str, Any] = {
            "max_keys": config.max_keys,
            "late_policy": config.late_policy,
            "on_evict": evicted,
        }
        # One learning clock per account for activity (value: the region) and disabled-region probes
        # (value: ("disabled", region)), so that both learn from the account's first event.
        self._regions = FirstSeen(config.learning_period, ttl=config.forget_after, max_values=2 * _MAX_REGIONS,
                                  **hooks)
        self._services = FirstSeen(config.service_learning_period, ttl=config.forget_after,
                                   throttle=config.service_throttle, **hooks)
        #: account → {region: last active}: the known regions shown in evidence.
        self._known: KeyedState[_Known] = KeyedState(
            horizon=config.forget_after, max_keys=config.max_keys, newest=_newest, on_evict=evicted,
        )
        self._approved_throttle = Throttle(config.throttle, max_keys=config.max_keys,
                                           on_evict=lambda n: on_evict(self.name, n))
        everywhere: set[str] = set()
        per_region: set[tuple[str, str]] = set()
        for entry in config.global_services:
            source, _, region = entry.partition("@")
            if region:
                per_region.add((source, region))
            else:
                everywhere.add(source)
        self._global_everywhere = frozenset(everywhere)
        self._global_in_region = frozenset(per_region)

    # -- events ------------------------------------------------------------------------------
    def _skipped(self, event: Event) -> bool:
        config = self.config
        source = event.event_source
        if source in self._global_everywhere or (source, event.region) in self._global_in_region:
            return True
        if config.ignore_aws_services and (
            event.identity_type == "AWSService"
            or event.get("eventType") == "AwsServiceEvent"
            or ":role/aws-service-role/" in (event.role_arn or "")
        ):
            return True
        patterns = config.ignore_principal_patterns
        return bool(patterns) and any(fnmatchcase(event.principal, p) for p in patterns)

    def on_event(self, event: Event) -> list[Alert] | None:
        """Learn or judge the event's region (and, optionally, the principal's event source)."""
        region, account = event.region, event.account_id
        if not region or not account or self._skipped(event):
            return None
        config = self.config
        if event.time < self._known.watermark:
            self.context.on_late(self.name, 1)
            if config.late_policy == "drop":
                return None
        out: list[Alert] = []
        if event.error_code in config.region_disabled_errors:
            self._on_probe(event, account, region, out)
        else:
            self._on_activity(event, account, region, out)
            if config.principal_new_service and event.event_source:
                report = self._services.add(event.principal, event.time, event.event_source, event.event_id)
                if report is not None:
                    out.append(self._service_alert(event, report))
        return out or None

    def _on_activity(self, event: Event, account: str, region: str, out: list[Alert]) -> None:
        t = event.time
        pair = (account, region)
        approved = self.config.approved_regions
        recent = self._recent
        if not approved and recent.get(pair) == t and t >= self._known.watermark:
            return  # this account in this region in this second: already recorded (see __init__)
        state = self._known.get(account)
        if state is None:
            state = _Known(t, {})
            self._known.insert(account, state)
        elif t > state.newest:
            state.newest = t
        known = state.regions
        last = known.pop(region, None)
        known[region] = t if last is None or t > last else last
        if len(known) > _MAX_REGIONS:
            dropped = next(iter(known))
            del known[dropped]
            recent.pop((account, dropped), None)
        report = self._regions.add(account, t, region, event.event_id)
        if len(recent) >= self._cap_recent:
            recent.clear()
        recent[pair] = t
        if approved:
            if region in approved:
                return
            suppressed = self._approved_throttle.allow((account, region), t)
            if suppressed is not None:
                out.append(self._region_alert(event, "unapproved_region", 1, self._known_regions(known, region),
                                              None, suppressed))
            return
        if report is not None:
            out.append(self._region_alert(event, "new_region", 0, self._known_regions(known, region),
                                          report.learning_started, report.suppressed))

    def _on_probe(self, event: Event, account: str, region: str, out: list[Alert]) -> None:
        approved = self.config.approved_regions
        if region in approved:
            return
        state = self._known.get(account, touch=False)
        known = state.regions if state is not None else {}
        report = self._regions.add(account, event.time, ("disabled", region), event.event_id)
        if report is None or region in known:
            return
        out.append(self._region_alert(event, "disabled_region_probe", -1, self._known_regions(known, region),
                                      report.learning_started, report.suppressed))

    def _known_regions(self, known: dict[str, float], region: str) -> list[str]:
        cutoff = self._known.watermark - self.config.forget_after
        regions = sorted(r for r, last in known.items() if last >= cutoff and r != region)
        return regions[: self.config.max_known_in_evidence]

    def _region_alert(self, event: Event, finding: str, steps: int, known: list[str],
                      learning_started: float | None, suppressed: int) -> Alert:
        region, account = event.region, event.account_id
        approved = sorted(self.config.approved_regions)
        if finding == "unapproved_region":
            title = "Activity in a region outside the approved regions"
            why = f"outside the approved regions ({', '.join(approved)})"
        elif finding == "disabled_region_probe":
            title = "Call to a disabled region"
            why = f"a disabled region (error {event.error_code}) never probed before"
        else:
            title = "First activity in a new region"
            why = "a region the account has not used" + (f" (known: {', '.join(known)})" if known else "")
        evidence: dict[str, Any] = {
            "finding": finding,
            "region": region,
            "account_id": account,
            "known_regions": known,
            "event_source": event.event_source,
            "event_name": event.event_name,
            "error_code": event.error_code,
            "suppressed": suppressed,
        }
        if learning_started is not None:
            evidence["learning_started"] = format_time(learning_started)
            evidence["learning_period_seconds"] = self.config.learning_period
        if approved:
            evidence["approved_regions"] = approved
        return Alert.from_event(
            event,
            detector=self.name,
            title=title,
            severity=shift_severity(self.effective_severity, steps),
            summary=f"{event.principal} called {event.event_source} {event.event_name} in {region}, {why}.",
            evidence=evidence,
            tags=list(self.tags),
            rule_id=finding,
            runbook=self.runbook,
            entity=f"{account}/{region}",
            resources=bounded([
                make_resource("aws_region", region, account_id=account,
                              detail=f"{finding.replace('_', ' ')} in account {account or 'unknown'}"),
                *resources_of(event),
            ]),
        )

    def _service_alert(self, event: Event, report: FirstSeenReport) -> Alert:
        return Alert.from_event(
            event,
            detector=self.name,
            title="Principal used a service for the first time",
            severity=shift_severity(self.effective_severity, -1),
            summary=(f"{event.principal} called {event.event_source} ({event.event_name}) for the first time "
                     f"since {format_time(report.learning_started)}."),
            evidence={
                "finding": "new_service",
                "event_source": event.event_source,
                "event_name": event.event_name,
                "region": event.region,
                "known_services": report.known,
                "learning_started": format_time(report.learning_started),
                "suppressed": report.suppressed,
            },
            tags=list(self.tags),
            rule_id="new_service",
            runbook=self.runbook,
            entity=event.principal,
            resources=bounded([
                make_resource("aws_service", event.event_source, account_id=event.account_id,
                              detail=f"first used by {event.principal} in {event.region or 'no region'}"),
                *resources_of(event),
            ]),
        )

    def on_watermark(self, watermark: float) -> None:
        """Expire forgotten regions, services and throttles."""
        self._regions.advance(watermark)
        self._services.advance(watermark)
        self._known.advance(watermark)
        self._approved_throttle.advance(watermark)
        return None

    # -- state -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Plain data: every primitive's snapshot and the known-regions map."""
        wm = self._known.watermark
        return {
            "version": SNAPSHOT_VERSION,
            "kind": self.name,
            "watermark": None if wm == _NEG_INF else wm,
            "regions": self._regions.snapshot(),
            "services": self._services.snapshot(),
            "known": [[account, k.newest, [[r, t] for r, t in k.regions.items()]]
                      for account, k in self._known.items()],
            "approved_throttle": self._approved_throttle.snapshot(),
        }

    def restore(self, state: Any) -> None:
        """Load :meth:`snapshot` output (``ValueError`` for a foreign or newer snapshot)."""
        data = check_snapshot(state, self.name)
        self._recent.clear()
        self._regions.restore(data["regions"])
        self._services.restore(data["services"])
        self._approved_throttle.restore(data["approved_throttle"])
        raw_wm = data.get("watermark")
        watermark = float(raw_wm) if isinstance(raw_wm, (int, float)) else _NEG_INF
        self._known.load(
            [(str(account), _Known(float(newest), {str(r): float(t) for r, t in regions}))
             for account, newest, regions in data.get("known") or []],
            watermark,
        )

    def state_keys(self) -> int:
        """Keys held: accounts (regions, known regions), principals (services), throttled pairs."""
        return (len(self._regions) + len(self._known) + len(self._services)
                + len(self._approved_throttle))
