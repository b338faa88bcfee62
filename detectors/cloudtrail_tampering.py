"""CloudTrail tampering: calls to CloudTrail's own API that *narrow* audit logging without stopping it.

Why it exists: switching the audit trail off is what an intruder does before the real work
(MITRE ATT&CK T1562.008, "Impair Defenses: Disable or Modify Cloud Logs").  The blunt forms —
``StopLogging``, ``DeleteTrail``, ``DeleteEventDataStore``, ``StopEventDataStoreIngestion`` — are
plain event-name matches and live in the Sigma rule pack (``config/rules/logging_tampering/``).
What stays here is what Sigma cannot express: judging whether a configuration change *reduces*
what is recorded, by reading the selector lists and trail flags the request sends.

Only ``cloudtrail.amazonaws.com`` events are considered.  What is reported (``evidence.finding``),
one level below the detector's severity (``high``) unless said otherwise:

* ``trail_reduced`` — ``UpdateTrail`` whose request sets ``isMultiRegionTrail``,
  ``includeGlobalServiceEvents``, ``enableLogFileValidation`` or ``isOrganizationTrail`` to
  ``false``; sends logs to another ``s3BucketName`` (unless it matches ``allowed_s3_buckets``);
  removes CloudWatch Logs delivery (``cloudWatchLogsLogGroupArn: ""``); removes encryption
  (``kmsKeyId: ""``) or moves it to a key owned by *another* account (an attacker-held key makes
  the logs unreadable).  ``UpdateTrail`` only carries the settings it changes, so these are
  exactly the changes made.  An ``UpdateTrail`` that reduces nothing (it enables things, renames
  a prefix, rotates to a same-account key, changes SNS) is *not* reported: it is routine IaC
  traffic, and a low alert on every one would teach the SOC to ignore this detector.
* ``event_selectors_reduced`` — ``PutEventSelectors`` leaving management events
  unlogged or partly logged: basic selectors where no selector logs all management events
  (``includeManagementEvents: false``, ``readWriteType`` other than ``All``, non-empty
  ``excludeManagementEventSources``); advanced selectors with no ``eventCategory = Management``
  selector, or one filtered by ``readOnly`` or ``eventSource``, and any selector that excludes
  by ``eventName``/``eventSource`` (``notEquals``/``notStartsWith``/``notEndsWith``); an empty
  selector list.  Data-event-only selectors next to a full management selector are not reductions.
* ``event_data_store_reduced`` — ``UpdateEventDataStore`` turning off termination
  protection, multi-region or organization coverage, setting ``retentionPeriod`` below
  ``min_retention_days``, or with reducing advanced selectors (as above).
* ``insights_disabled`` (two levels lower, ``medium``) — ``PutInsightSelectors`` with an empty
  list: anomaly detection stops, but no event stops being recorded, hence below the others.

A failed call (``errorCode`` present) is reported one level lower with ``attempt_failed: true``:
trying to narrow logging is the signal, whether or not the caller had the permission.  A ``severity``
override sets the top level; the lower levels follow it.

Parameters: ``ignore_trails`` (fnmatch globs on the trail/event-data-store name or ARN in the
request, for dedicated data-event trails), ``allowed_s3_buckets`` (fnmatch globs of buckets logs
may be moved to), ``min_retention_days`` (default 365), plus ``enabled``/``severity``.

Known false positives: cost-driven exclusion of ``kms.amazonaws.com``/``rdsdata.amazonaws.com``
management events; data-event-only trails (use ``ignore_trails``); planned bucket migrations (``allowed_s3_buckets``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import translate
from typing import Any, ClassVar, Final

from pydantic import Field

from detectors.alert import Alert, shift_severity
from detectors.base import Detector, DetectorConfig, DetectorContext, StateKey
from detectors.event import Event
from detectors.resources import bounded, make_resource, resources_of

__all__ = ["CloudTrailTampering", "advanced_selector_reductions", "basic_selector_reductions"]

_SOURCE: Final = "cloudtrail.amazonaws.com"
_REDUCING: Final = frozenset({"UpdateTrail", "PutEventSelectors", "UpdateEventDataStore", "PutInsightSelectors"})
_EXCLUDING_OPERATORS: Final = ("notEquals", "notStartsWith", "notEndsWith")
_TRAIL_FLAGS: Final = ("isMultiRegionTrail", "includeGlobalServiceEvents", "enableLogFileValidation",
                       "isOrganizationTrail")
_STORE_FLAGS: Final = ("terminationProtectionEnabled", "multiRegionEnabled", "organizationEnabled")



def _pick(mapping: dict[str, Any], key: str) -> Any:
    """``mapping[key]`` in CloudTrail's lowerCamelCase, falling back to the API's PascalCase."""
    value = mapping.get(key)
    if value is None:
        value = mapping.get(key[0].upper() + key[1:])
    return value


def _is_false(value: Any) -> bool:
    return value is False or (isinstance(value, str) and value.lower() == "false")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def _globs(patterns: Iterable[str]) -> re.Pattern[str] | None:
    patterns = list(patterns)
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{translate(p)})" for p in patterns))


def basic_selector_reductions(selectors: Any) -> list[str]:
    """What a ``PutEventSelectors`` basic selector list stops logging (``[]`` if nothing).

    Management events are fully logged when at least one selector includes them with
    ``readWriteType`` ``All`` and no excluded sources; otherwise every narrowing found on the
    management selectors is listed.
    """
    if not isinstance(selectors, list):
        return []  # absent or redacted: nothing to judge
    if not selectors:
        return ["eventSelectors=[] (no events logged)"]
    found: list[str] = []
    management = 0
    for selector in selectors:
        if not isinstance(selector, dict):
            continue
        include = _pick(selector, "includeManagementEvents")
        if _is_false(include):
            continue
        management += 1
        read_write = _pick(selector, "readWriteType") or "All"
        excluded = _strings(_pick(selector, "excludeManagementEventSources"))
        if read_write == "All" and not excluded:
            return []
        if read_write != "All":
            found.append(f"readWriteType={read_write}")
        if excluded:
            found.append(f"excludeManagementEventSources={sorted(excluded)}")
    if management == 0:
        found.append("includeManagementEvents=false")
    return sorted(set(found))


def advanced_selector_reductions(selectors: Any) -> list[str]:
    """What an advanced event selector list stops logging (``[]`` if nothing).

    Management events are fully logged when one ``eventCategory = Management`` selector has no
    ``readOnly``/``eventName``/``eventSource`` condition; otherwise the narrowings of the
    management selectors are listed (or the absence of any).  Exclusions (``notEquals``/
    ``notStartsWith``/``notEndsWith`` on ``eventName``/``eventSource``) in other selectors are
    listed too.
    """
    if not isinstance(selectors, list):
        return []  # absent or redacted: nothing to judge
    if not selectors:
        return ["advancedEventSelectors=[] (no events logged)"]
    management_narrowing: set[str] = set()
    exclusions: set[str] = set()
    any_management = full_management = False
    for selector in selectors:
        fields = _pick(selector, "fieldSelectors") if isinstance(selector, dict) else None
        if not isinstance(fields, list):
            continue
        is_management = False
        narrowing: list[str] = []
        for field in fields:
            if not isinstance(field, dict):
                continue
            name = _pick(field, "field")
            if name == "eventCategory":
                is_management = is_management or "Management" in _strings(_pick(field, "equals"))
            elif name == "readOnly":
                narrowing.append(f"readOnly={','.join(_strings(_pick(field, 'equals'))) or 'filtered'}")
            elif name in ("eventName", "eventSource"):
                excluded = [
                    f"{name} {operator} {sorted(values)}"
                    for operator in _EXCLUDING_OPERATORS
                    if (values := _strings(_pick(field, operator)))
                ]
                narrowing.extend(excluded or [f"{name} limited to some values"])
        if is_management:
            any_management = True
            full_management = full_management or not narrowing
            management_narrowing.update(f"management events: {item}" for item in narrowing)
        else:
            exclusions.update(item for item in narrowing if " not" in item)
    found = exclusions
    if not any_management:
        found.add("no management-event selector (management events not logged)")
    elif not full_management:
        found |= management_narrowing
    return sorted(found)


class CloudTrailTampering(Detector):
    """CloudTrail's own API used to narrow the audit trail (trail flags, selectors, Lake stores)."""

    name: ClassVar[str] = "cloudtrail_tampering"
    #: Stateless (stateless: each event is judged alone).
    state_key: ClassVar[StateKey | None] = None
    severity: ClassVar[str] = "critical"
    event_names: ClassVar[frozenset[str] | None] = _REDUCING
    event_sources: ClassVar[frozenset[str] | None] = frozenset({_SOURCE})
    tags: ClassVar[tuple[str, ...]] = ("attack.defense_evasion", "attack.t1562.008")
    runbook: ClassVar[str | None] = (
        "Restore logging at once (revert the trail settings or selectors), then treat "
        "the principal as compromised until the owner confirms the change; review its other calls."
    )

    class Config(DetectorConfig):
        """Tuning for :class:`CloudTrailTampering`."""

        #: fnmatch globs on the trail or event data store (name or ARN) never reported.
        ignore_trails: tuple[str, ...] = ()
        #: fnmatch globs of S3 buckets that trail logs may be redirected to without an alert.
        allowed_s3_buckets: tuple[str, ...] = ()
        #: UpdateEventDataStore with a shorter retentionPeriod (days) is a reduction.
        min_retention_days: int = Field(default=365, ge=1)

    config: Config

    def __init__(self, config: DetectorConfig, context: DetectorContext | None = None) -> None:
        super().__init__(config, context)
        self._ignored_trails = _globs(self.config.ignore_trails)
        self._allowed_buckets = _globs(self.config.allowed_s3_buckets)

    def on_event(self, event: Event) -> list[Alert] | None:
        """Report ``event`` when it narrows what CloudTrail records."""
        if event.event_source != _SOURCE:
            return None
        name = event.event_name
        params = event.raw.get("requestParameters")
        params = params if isinstance(params, dict) else {}
        target = self._target(params)
        if target and self._ignored_trails is not None and self._ignored_trails.fullmatch(target):
            return None
        if name == "UpdateTrail":
            reduced = self._trail_reductions(params, event.account_id)
            finding, steps, title = "trail_reduced", 1, "CloudTrail trail coverage reduced"
        elif name == "PutEventSelectors":
            if _pick(params, "advancedEventSelectors") is not None:
                reduced = advanced_selector_reductions(_pick(params, "advancedEventSelectors"))
            else:
                reduced = basic_selector_reductions(_pick(params, "eventSelectors"))
            finding, steps, title = "event_selectors_reduced", 1, "CloudTrail event selectors reduce logging"
        elif name == "UpdateEventDataStore":
            reduced = self._store_reductions(params)
            finding, steps, title = "event_data_store_reduced", 1, "CloudTrail Lake event data store reduced"
        elif name == "PutInsightSelectors":
            selectors = _pick(params, "insightSelectors")
            reduced = ["insightSelectors=[] (Insights disabled)"] if selectors == [] else []
            finding, steps, title = "insights_disabled", 2, "CloudTrail Insights disabled"
        else:
            return None
        if not reduced:
            return None
        return [self._alert(event, finding, steps, title, target, reduced)]

    @staticmethod
    def _target(params: dict[str, Any]) -> str:
        for key in ("name", "trailName", "eventDataStore"):
            value = _pick(params, key)
            if isinstance(value, str) and value:
                return value
        return ""

    def _trail_reductions(self, params: dict[str, Any], account_id: str) -> list[str]:
        reduced = [f"{flag}=false" for flag in _TRAIL_FLAGS if _is_false(_pick(params, flag))]
        bucket = _pick(params, "s3BucketName")
        if isinstance(bucket, str) and bucket and not (
            self._allowed_buckets is not None and self._allowed_buckets.fullmatch(bucket)
        ):
            reduced.append(f"s3BucketName changed to {bucket}")
        if _pick(params, "cloudWatchLogsLogGroupArn") == "":
            reduced.append("cloudWatchLogsLogGroupArn removed")
        key = _pick(params, "kmsKeyId")
        if key == "":
            reduced.append("kmsKeyId removed (logs no longer KMS-encrypted)")
        elif isinstance(key, str) and key.startswith("arn:"):
            parts = key.split(":")
            if len(parts) > 4 and account_id and parts[4] and parts[4] != account_id:
                reduced.append(f"kmsKeyId changed to a key in account {parts[4]}")
        return reduced

    def _store_reductions(self, params: dict[str, Any]) -> list[str]:
        reduced = [f"{flag}=false" for flag in _STORE_FLAGS if _is_false(_pick(params, flag))]
        retention = _pick(params, "retentionPeriod")
        if isinstance(retention, int) and not isinstance(retention, bool) and (
            retention < self.config.min_retention_days
        ):
            reduced.append(f"retentionPeriod={retention} days (< {self.config.min_retention_days})")
        selectors = _pick(params, "advancedEventSelectors")
        if selectors is not None:
            reduced.extend(advanced_selector_reductions(selectors))
        return reduced

    def _alert(
        self, event: Event, finding: str, steps: int, title: str, target: str, reduced: list[str]
    ) -> Alert:
        error_code = event.error_code
        failed = error_code is not None
        severity = shift_severity(self.effective_severity, -(steps + (1 if failed else 0)))
        evidence: dict[str, Any] = {
            "finding": finding,
            "eventName": event.event_name,
            "target": target,
            "userAgent": event.user_agent,
            "attempt_failed": failed,
            "reduced": reduced,
        }
        if failed:
            evidence["errorCode"] = error_code
            message = event.get("errorMessage")
            if message is not None:
                evidence["errorMessage"] = message
        params = event.raw.get("requestParameters")
        if isinstance(params, dict):
            evidence["requestParameters"] = params
        what = f"{event.event_name} on {target or 'an unnamed trail'}"
        where = f"in account {event.account_id or 'unknown'} ({event.region or 'no region'})"
        if failed:
            summary = f"{event.principal} tried {what} {where} and got {error_code}."
            title = f"Attempt: {title}"
        else:
            summary = f"{event.principal} called {what} {where}, reducing: {'; '.join(reduced)}."
        kind = "cloudtrail_event_data_store" if "EventDataStore" in event.event_name else "cloudtrail_trail"
        resources = bounded([
            make_resource(kind, target, account_id=event.account_id,
                          detail=f"{'attempted: ' if failed else ''}{'; '.join(reduced) or event.event_name}"),
            *resources_of(event),
        ])
        return Alert.from_event(
            event,
            detector=self.name,
            title=title,
            severity=severity,
            summary=summary,
            evidence=evidence,
            tags=list(self.tags),
            runbook=self.runbook,
            resources=resources,
        )
