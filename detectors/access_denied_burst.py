"""Authorization-failure bursts: one principal collecting AccessDenied errors, fast.

Why it exists: stolen credentials are tried before they are used.  The intruder does not know what
the key may do, so it enumerates — ``ListBuckets``, ``DescribeInstances``, ``GetSecretValue``,
``ListUsers`` … — and most of it fails (MITRE ATT&CK T1580 Cloud Infrastructure Discovery, T1526
Cloud Service Discovery).  Tools such as Pacu, ScoutSuite or Stratus Red Team leave exactly this
trail; so does a script hammering one forbidden call (the Invictus dataset's 29
``GetPasswordData`` failures by the ``ec2-get-password-data`` role within two seconds).

What it reports, per principal (``Event.principal``: user, role session, federated user …), over a
sliding window of ``window`` seconds of event time, counting events whose ``errorCode`` is one of
``error_codes``; either trigger fires:

* **breadth** — at least ``min_failures`` failures across at least ``min_distinct_apis`` distinct
  API calls (``eventSource:eventName``): enumeration.  Severity one level above the detector's
  (``high``), ``evidence.finding: breadth``;
* **volume** — at least ``volume_threshold`` failures of any API calls, even a single one: a
  script insisting on something it may not do.  The detector's severity (``medium``),
  ``evidence.finding: volume``.

Failures are counted by a :class:`~detectors.windows.CountWindow`; the distinct APIs of the window
it fires for come from a per-principal record of each API's last failure (a
:class:`~detectors.windows.recent.RecentValues`: exact for events in time order; for out-of-order
arrivals it counts the APIs seen up to the principal's newest failure).  One alert per principal
per ``window`` while failures go on (the next alert's ``evidence.suppressed`` counts the reports
held back).  Evidence: failures in the window, distinct APIs (at most ``max_evidence`` listed),
error codes, window bounds.

Parameters: ``window`` (seconds or ``10m``-style, default 10 min), ``min_failures`` (10),
``min_distinct_apis`` (5), ``volume_threshold`` (20), ``error_codes`` (AccessDenied,
AccessDeniedException, UnauthorizedOperation, Client.UnauthorizedOperation, UnauthorizedAccess,
UnauthorizedException, AuthorizationError, AuthorizationErrorException, Forbidden,
ForbiddenException, NotAuthorized, NotAuthorizedException), ``ignore_identity_types``
(``AWSService``), ``ignore_principals`` (fnmatch globs on the principal; deprecated, mapped onto
``exceptions``, :mod:`detectors.exceptions`), ``max_keys`` (100,000
principals), ``max_evidence`` (10), plus ``enabled``/``severity``.  Counts saturate at
``4 × max(min_failures, volume_threshold)`` failures per window (the state per principal is bounded).

Known false positives: security scanners and CSPM tools running with partial permissions
(Prowler, ScoutSuite, Wiz, Steampipe) — list their roles in ``ignore_principals``; console users
browsing pages whose background calls they may not make (the console fires many ``Describe*`` and
``List*`` calls per page); misconfigured automation retrying a forbidden call (volume trigger).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, ClassVar, Final

from pydantic import Field

from detectors.alert import Alert, shift_severity
from detectors.base import Detector, DetectorConfig, DetectorContext, StateKey
from detectors.durations import Duration
from detectors.event import Event, format_time
from detectors.exceptions import principal_globs
from detectors.resources import bounded, make_resource, resources_of
from detectors.windows import CountReport, CountWindow, Throttle
from detectors.windows.recent import LastSeen, RecentValues
from detectors.windows.store import SNAPSHOT_VERSION, check_snapshot, freeze, thaw

__all__ = ["DEFAULT_ERROR_CODES", "AccessDeniedBurst"]

#: ``errorCode`` values that mean "authenticated, but not allowed" across AWS services.
DEFAULT_ERROR_CODES: Final = frozenset({
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "Client.UnauthorizedOperation",
    "UnauthorizedAccess",
    "UnauthorizedException",
    "AuthorizationError",
    "AuthorizationErrorException",
    "Forbidden",
    "ForbiddenException",
    "NotAuthorized",
    "NotAuthorizedException",
})


#: Error codes remembered per principal (for the evidence).
_MAX_CODES: Final = 8


class _Failures(LastSeen):
    """A principal's APIs with their last failure, the error codes it received and what was denied."""

    __slots__ = ("codes", "targets")

    def __init__(self, newest: float, pairs: list[Any] | None = None, codes: tuple[str, ...] = (),
                 targets: tuple[tuple[str, str, str], ...] = ()) -> None:
        super().__init__(newest, pairs)
        self.codes = codes
        #: ``(type, id, api)`` of the resources the first denied calls named (at most ``max_evidence``).
        self.targets = targets


#: Resource types that say nothing about what was denied (the fallback of an account-wide call).
_NOT_TARGETS: Final = frozenset({"aws_account", "principal", "omitted"})


def _load_failures(entry: list[Any]) -> tuple[Hashable, _Failures]:
    """One ``apis`` snapshot entry; one written before ``targets`` existed has four fields."""
    key, newest, codes, pairs, *rest = entry
    targets = tuple(tuple(t) for t in rest[0]) if rest else ()
    return thaw(key), _Failures(float(newest), list(pairs), tuple(codes), targets)  # type: ignore[arg-type]


class AccessDeniedBurst(Detector):
    """Reports a principal with a burst of authorization failures (broad enumeration or insistence)."""

    name: ClassVar[str] = "access_denied_burst"
    #: State keyed by principal.
    state_key: ClassVar[StateKey | None] = "principal"
    severity: ClassVar[str] = "medium"
    tags: ClassVar[tuple[str, ...]] = ("attack.discovery", "attack.t1580", "attack.t1526")
    runbook: ClassVar[str | None] = (
        "Identify the principal's credentials (access key id, role session, source IP, user agent); "
        "if the calls are not a known tool or deploy, treat the key as stolen: deactivate it or revoke "
        "the role's sessions, then review what the principal did successfully in the same window."
    )

    class Config(DetectorConfig):
        """Tuning for :class:`AccessDeniedBurst`."""

        #: Sliding event-time window (seconds, or ``10m``-style).
        window: Duration = Field(600.0, gt=0)
        #: Breadth trigger: at least this many failures …
        min_failures: int = Field(10, ge=1)
        #: … across at least this many distinct ``eventSource:eventName``.
        min_distinct_apis: int = Field(5, ge=2)
        #: Volume trigger: at least this many failures of any API calls.
        volume_threshold: int = Field(20, ge=1)
        #: ``errorCode`` values counted as authorization failures.
        error_codes: frozenset[str] = DEFAULT_ERROR_CODES
        #: ``userIdentity.type`` values never counted (AWS services acting on their own).
        ignore_identity_types: frozenset[str] = frozenset({"AWSService"})
        #: fnmatch globs (case-sensitive) of principals never counted (scanners, CSPM roles).
        ignore_principals: tuple[str, ...] = ()
        #: Hard cap on tracked principals (least recently active evicted first).
        max_keys: int = Field(100_000, ge=1)
        #: APIs, error codes and event ids listed in an alert at most.
        max_evidence: int = Field(10, ge=1, le=100)

        def legacy_exceptions(self) -> list[Callable[[Event], bool]]:
            """Deprecated ``ignore_principals`` as an exception: the principal fullmatches a glob."""
            return principal_globs(self.ignore_principals)

    config: Config

    def __init__(self, config: DetectorConfig, context: DetectorContext | None = None) -> None:
        super().__init__(config, context)
        c = self.config
        window, keys = c.window, c.max_keys
        on_evict = self.context.on_evict
        lowest = min(c.min_failures, c.volume_threshold)
        most = 4 * max(c.min_failures, c.volume_threshold)
        # an alert lists the ids of every failure it counts (bounded by ``most``), so that its
        # incident holds all of them; ``max_evidence`` bounds the APIs and resources listed
        self._failures = CountWindow(
            window, lowest, max_events=most, max_keys=keys,
            on_evict=lambda n: on_evict(self.name, n), max_evidence=most,
        )
        #: principal → its APIs' last failures and its error codes: the distinct APIs in the window
        #: that a count fires for (exact in order; out of order it counts APIs seen up to the
        #: principal's newest failure).
        self._apis: RecentValues[_Failures] = RecentValues(
            _Failures, horizon=window, max_keys=keys, cap=max(16, 2 * c.min_distinct_apis)
        )
        self._throttle = Throttle(window, max_keys=keys)
        self._watermark = float("-inf")

    # -- events ----------------------------------------------------------------------------
    def on_event(self, event: Event) -> list[Alert] | None:
        """Count an authorization failure for its principal; report when a trigger is reached."""
        code = event.error_code
        if code is None or code not in self.config.error_codes:
            return None
        if event.identity_type in self.config.ignore_identity_types:
            return None
        key = event.principal
        time, event_id = event.time, event.event_id
        if time < self._watermark:
            self.context.on_late(self.name, 1)
        count = self._failures.add(key, time, event_id)
        record = self._apis.see(key, f"{event.event_source}:{event.event_name}", time)
        if code not in record.codes and len(record.codes) < _MAX_CODES:
            record.codes = (*record.codes, code)
        if len(record.targets) < self.config.max_evidence:  # resources_of runs only until the cap is full
            api = f"{event.event_source}:{event.event_name}"
            for found in resources_of(event):
                target = (found["type"], found["id"], api)
                if found["type"] not in _NOT_TARGETS and target not in record.targets:
                    record.targets = (*record.targets, target)
                    break
        if count is None:
            return None
        config = self.config
        apis = record.since(count.start)
        breadth = count.count >= config.min_failures and len(apis) >= config.min_distinct_apis
        if not breadth and count.count < config.volume_threshold:
            return None
        suppressed = self._throttle.allow(key, count.end)
        if suppressed is None:  # already reported in this window: folded into that alert's incident
            return [self._continuation(event, key, breadth)]
        return [self._alert(event, key, count, apis, record, breadth, suppressed)]

    def on_watermark(self, watermark: float) -> None:
        """Expire principals whose failures all left the window."""
        if watermark > self._watermark:
            self._watermark = watermark
        self._failures.advance(watermark)
        self._throttle.advance(watermark)
        self._apis.advance(watermark)
        return None

    def _continuation(self, event: Event, key: Hashable, breadth: bool) -> Alert:
        """One more failure inside an already-reported burst: counted by the incident, never sent alone."""
        who = str(key)
        api = f"{event.event_source}:{event.event_name}"
        return Alert(
            detector=self.name,
            title="Authorization failures across many APIs (enumeration)" if breadth
            else "Burst of authorization failures",
            severity=shift_severity(self.effective_severity, 1) if breadth else self.effective_severity,
            time=event.time,
            summary=f"{who} received one more authorization failure ({api}, {event.error_code}) "
                    f"in a burst already reported, in account {event.account_id or 'unknown'}.",
            account_id=event.account_id,
            region=event.region,
            principal=who,
            source_ips=[event.source_ip] if event.source_ip else [],
            event_ids=[event.event_id] if event.event_id else [],
            evidence={"finding": "breadth" if breadth else "volume", "continues": True, "api": api},
            tags=list(self.tags),
            runbook=self.runbook,
            entity=who,
            resources=bounded(resources_of(event)),
            event_total=1,
            continues=True,
        )

    def _alert(
        self,
        event: Event,
        key: Hashable,
        count: CountReport,
        apis: list[str],
        record: _Failures,
        breadth: bool,
        suppressed: int,
    ) -> Alert:
        severity = shift_severity(self.effective_severity, 1) if breadth else self.effective_severity
        who = str(key)
        distinct = len(apis)
        if breadth:
            title = "Authorization failures across many APIs (enumeration)"
            what = f"{count.count} authorization failures across {distinct} different API calls"
        else:
            title = "Burst of authorization failures"
            what = f"{count.count} authorization failures ({distinct} distinct API call(s))"
        minutes = self.config.window / 60
        summary = (
            f"{who} received {what} within {minutes:g} min in account {event.account_id or 'unknown'}, "
            f"ending {format_time(count.end)} from {event.source_ip or 'an unknown address'}."
        )
        listed = apis[: self.config.max_evidence]
        resources = bounded([
            *(make_resource("aws_api", api, account_id=event.account_id, detail="denied") for api in listed),
            *(make_resource(kind, ident, account_id=event.account_id, detail=f"denied {api}")
              for kind, ident, api in record.targets),
        ])
        touched = ", ".join(r["id"] for r in resources if r["type"] not in ("aws_api", "omitted"))[:300]
        summary += f" Denied: {', '.join(listed)}" + (f" (on {touched})." if touched else ".")
        return Alert(
            detector=self.name,
            title=title,
            severity=severity,
            time=count.end,
            summary=summary,
            account_id=event.account_id,
            region=event.region,
            principal=who,
            source_ips=[event.source_ip] if event.source_ip else [],
            event_ids=list(count.event_ids),
            evidence={
                "finding": "breadth" if breadth else "volume",
                "failures": count.count,
                "distinct_apis": distinct,
                "apis": listed,
                "error_codes": list(record.codes),
                "window_start": format_time(count.start),
                "window_end": format_time(count.end),
                "window_seconds": self.config.window,
                "identity_type": event.identity_type,
                "user_agent": event.user_agent[:200],
                "suppressed": suppressed,
            },
            tags=list(self.tags),
            runbook=self.runbook,
            entity=who,
            resources=resources,
            event_total=count.count,
        )

    # -- state -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Every primitive's state as plain data."""
        return {
            "version": SNAPSHOT_VERSION,
            "kind": self.name,
            "watermark": None if self._watermark == float("-inf") else self._watermark,
            "failures": self._failures.snapshot(),
            "apis": [[freeze(key), r.newest, list(r.codes), list(r.pairs), [list(t) for t in r.targets]]
                     for key, r in self._apis.items()],
            "throttle": self._throttle.snapshot(),
        }

    def restore(self, state: Any) -> None:
        """Load what :meth:`snapshot` returned (``ValueError`` for a foreign or newer snapshot)."""
        data = check_snapshot(state, self.name)
        watermark = data.get("watermark")
        self._watermark = float(watermark) if isinstance(watermark, (int, float)) else float("-inf")
        self._failures.restore(data["failures"])
        self._apis.load([_load_failures(entry) for entry in data["apis"]], self._watermark)
        self._throttle.restore(data["throttle"])

    def state_keys(self) -> int:
        """Principals with failures in the window."""
        return len(self._failures)
