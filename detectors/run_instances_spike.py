"""EC2 launch spikes: far more instances than usual, GPU and bare-metal types weighing more.

Why it exists: stolen AWS credentials are turned into money by launching instances — crypto-mining
on GPU (``p3``, ``g4dn`` …) or large bare-metal types, in many regions at once (MITRE ATT&CK T1496,
Resource Hijacking).  The Stratus Red Team technique ``aws.execution.ec2-launch-unusual-instances``
asks for ten ``p2.xlarge`` at a time.

What is counted: every ``RunInstances`` (``ec2.amazonaws.com``) — **failed ones included**, since
a request refused by a vCPU quota or a missing permission still shows what was wanted.  A call
counts the instances it launched (``responseElements.instancesSet.items``), or when it failed, the
instances it asked for (``requestParameters.instancesSet.items[].maxCount``, else ``minCount``,
else one).  Each instance is weighted by its type: the highest weight among the
``weighted_types`` globs it matches (default 5 for GPU/accelerator families and ``*.metal*``),
else 1.

Per **account + region** and per **principal** (across regions), weighted instances are summed in
event-time buckets of ``bucket`` seconds (epoch-aligned) and compared with the key's own history:
a :class:`~detectors.windows.BaselineRate` keeps an EWMA of past buckets (``alpha``).  A bucket is
reported, once, as soon as its weighted count reaches ``max(min_instances, threshold_factor ×
baseline)`` — so an account that never launches is held to the absolute floor, and one that
launches hundreds an hour to its own normal.  Severity ``high``; ``critical`` when weighted
(GPU/metal) types were asked for.  When both keys of the same call cross together it is one alert
naming both.  Evidence: calls, failed calls and error codes, instances, weighted count, baseline
and limit, instance types, regions, principals, bucket bounds.

Parameters: ``bucket`` (seconds or ``10m``-style, default 10 min), ``min_instances`` (weighted
floor, 20), ``threshold_factor`` (3), ``alpha`` (0.1), ``warmup_buckets`` (0: the floor applies to
new keys at once), ``weighted_types`` (glob → integer weight), ``max_instances_per_call`` (1,000:
a larger request counts as this many, which bounds the work one event can cost),
``ignore_principals`` (fnmatch globs; deprecated, mapped onto ``exceptions``), ``history`` (how
long a quiet key's baseline is kept, 7 days), ``max_keys`` (10,000), ``max_evidence`` (10), plus
``enabled``/``severity``.

Known false positives and limits: capacity events (scale-out of an Auto Scaling group or a batch,
EMR or ML training job) in an account with no history yet — raise ``warmup_buckets`` or list the
service-linked roles in ``ignore_principals``; an attack split evenly across a bucket boundary
needs up to twice the floor in total before one bucket reaches it (buckets are aligned, not
sliding).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from fnmatch import translate
from typing import Any, ClassVar, Final

from pydantic import Field, field_validator, model_validator

from detectors.alert import Alert, shift_severity
from detectors.base import Detector, DetectorConfig, DetectorContext, StateKey
from detectors.durations import Duration
from detectors.event import Event, format_time
from detectors.exceptions import principal_globs
from detectors.resources import bounded, make_resource, resources_of
from detectors.windows import BaselineRate, KeyedState, SpikeReport
from detectors.windows.store import SNAPSHOT_VERSION, check_snapshot, freeze, thaw

__all__ = ["DEFAULT_WEIGHTED_TYPES", "RunInstancesSpike", "launched_instances"]

_GPU_WEIGHT: Final = 5
#: Instance-type globs weighing more than one ordinary instance: GPU, ML accelerators, bare metal.
DEFAULT_WEIGHTED_TYPES: Final[dict[str, int]] = {
    pattern: _GPU_WEIGHT
    for pattern in (
        "p2.*", "p3.*", "p3dn.*", "p4d.*", "p4de.*", "p5.*", "p5e.*", "p5en.*",
        "g3.*", "g3s.*", "g4dn.*", "g4ad.*", "g5.*", "g5g.*", "g6.*", "g6e.*", "gr6.*",
        "inf1.*", "inf2.*", "trn1.*", "trn1n.*", "trn2.*", "dl1.*", "dl2q.*",
        "*.metal*",
    )
}
_UNKNOWN_TYPE: Final = "unknown"
#: Entries kept per bucket for instance types, regions, principals and error codes (evidence).
_MAX_LISTED: Final = 20
#: Event ids remembered per bucket to drop repeats (the pipeline de-duplicates first anyway).
_MAX_IDS: Final = 256
_ACCOUNT: Final = "account:"
_PRINCIPAL: Final = "principal:"


def _count(value: Any) -> int | None:
    """A positive instance count from a request field (int, or a numeric string), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.isdigit():
        return int(value) or None
    return None


def launched_instances(event: Event) -> list[tuple[str, int]]:
    """``(instance type, count)`` of a ``RunInstances``: launched when it succeeded, asked for when not."""
    requested_type = event.get("requestParameters.instanceType")
    if not isinstance(requested_type, str) or not requested_type:
        requested_type = _UNKNOWN_TYPE
    if event.error_code is None:
        items = event.get("responseElements.instancesSet.items")
        if isinstance(items, list) and items:
            counts: dict[str, int] = {}
            for item in items:
                kind = item.get("instanceType") if isinstance(item, dict) else None
                kind = kind if isinstance(kind, str) and kind else requested_type
                counts[kind] = counts.get(kind, 0) + 1
            return list(counts.items())
    asked = 0
    items = event.get("requestParameters.instancesSet.items")
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict):
                asked += _count(item.get("maxCount")) or _count(item.get("minCount")) or 1
    return [(requested_type, asked or 1)]


class _Bucket:
    """What one key's bucket holds, for the evidence (and to drop a repeated event)."""

    __slots__ = ("calls", "codes", "failed", "ids", "instances", "newest", "principals", "regions", "types",
                 "weighted")

    def __init__(self, newest: float) -> None:
        self.newest = newest
        self.calls = 0
        self.failed = 0
        self.instances = 0
        self.weighted = 0
        self.types: dict[str, int] = {}
        self.regions: list[str] = []
        self.principals: list[str] = []
        self.codes: list[str] = []
        self.ids: list[str] = []

    def dump(self) -> list[Any]:
        return [self.newest, self.calls, self.failed, self.instances, self.weighted, self.types,
                self.regions, self.principals, self.codes, self.ids]

    @classmethod
    def load(cls, data: list[Any]) -> _Bucket:
        newest, calls, failed, instances, weighted, types, regions, principals, codes, ids = data
        bucket = cls(float(newest))
        bucket.calls, bucket.failed = int(calls), int(failed)
        bucket.instances, bucket.weighted = int(instances), int(weighted)
        bucket.types = {str(k): int(v) for k, v in types.items()}
        bucket.regions, bucket.principals = list(regions), list(principals)
        bucket.codes, bucket.ids = list(codes), list(ids)
        return bucket


def _bucket_newest(bucket: _Bucket) -> float:
    return bucket.newest


def _remember(values: list[str], value: str) -> None:
    if value and value not in values and len(values) < _MAX_LISTED:
        values.append(value)


class RunInstancesSpike(Detector):
    """Reports a bucket of EC2 launches far above the account/region's or principal's own baseline."""

    name: ClassVar[str] = "run_instances_spike"
    #: State keyed by account (account+region and principal keys, both inside one account).
    state_key: ClassVar[StateKey | None] = "account"
    severity: ClassVar[str] = "high"
    event_names: ClassVar[frozenset[str] | None] = frozenset({"RunInstances"})
    event_sources: ClassVar[frozenset[str] | None] = frozenset({"ec2.amazonaws.com"})
    tags: ClassVar[tuple[str, ...]] = ("attack.impact", "attack.t1496")
    runbook: ClassVar[str | None] = (
        "List the instances (and Spot requests) the principal launched in every region; if unexpected, "
        "terminate them, revoke the principal's credentials and sessions, and check the account's "
        "service quotas and billing alarms."
    )

    class Config(DetectorConfig):
        """Tuning for :class:`RunInstancesSpike`."""

        #: Event-time bucket (seconds or ``10m``-style), aligned to the epoch.
        bucket: Duration = Field(600.0, gt=0)
        #: Weighted instances in one bucket that are always reported (the absolute floor).
        min_instances: int = Field(20, ge=1)
        #: Report when a bucket exceeds this many times the key's baseline (if above the floor).
        threshold_factor: float = Field(3.0, gt=0)
        #: EWMA weight of the newest bucket in the baseline.
        alpha: float = Field(0.1, gt=0, le=1)
        #: Buckets of history a key needs before it can be reported.
        warmup_buckets: int = Field(0, ge=0)
        #: Instance-type fnmatch glob → weight (an instance counts as the highest matching weight).
        weighted_types: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTED_TYPES))
        #: One call counts as at most this many instances.
        max_instances_per_call: int = Field(1000, ge=1)
        #: fnmatch globs (case-sensitive) of principals never counted.
        ignore_principals: tuple[str, ...] = ()
        #: How long (event time) a key with no launches keeps its baseline.
        history: Duration = Field(7 * 86400.0, gt=0)
        #: Hard cap on tracked keys (account+region pairs plus principals).
        max_keys: int = Field(10_000, ge=1)
        #: Event ids listed in an alert at most.
        max_evidence: int = Field(10, ge=1, le=100)

        @field_validator("weighted_types")
        @classmethod
        def _weights(cls, value: dict[str, int]) -> dict[str, int]:
            for pattern, weight in value.items():
                if weight < 1:
                    raise ValueError(f"weight of {pattern!r} must be >= 1, got {weight}")
            return value

        def legacy_exceptions(self) -> list[Callable[[Event], bool]]:
            """Deprecated ``ignore_principals`` as an exception: the principal fullmatches a glob."""
            return principal_globs(self.ignore_principals)

        @model_validator(mode="after")
        def _history_covers_a_bucket(self) -> RunInstancesSpike.Config:
            if self.history < self.bucket:
                raise ValueError("history must be at least one bucket long")
            return self

    config: Config

    def __init__(self, config: DetectorConfig, context: DetectorContext | None = None) -> None:
        super().__init__(config, context)
        c = self.config
        on_evict = self.context.on_evict
        self._rate = BaselineRate(
            c.bucket, c.alpha, c.threshold_factor, c.min_instances - 1,
            warmup=c.warmup_buckets, ttl=c.history,
            max_keys=c.max_keys, on_evict=lambda n: on_evict(self.name, n), max_evidence=c.max_evidence,
        )
        self._buckets: KeyedState[_Bucket] = KeyedState(horizon=c.bucket, max_keys=c.max_keys,
                                                        newest=_bucket_newest)
        by_weight: dict[int, list[str]] = {}
        for pattern, weight in c.weighted_types.items():
            by_weight.setdefault(weight, []).append(translate(pattern))
        #: (weight, regex) heaviest first: the first match is the highest weight.
        self._weights = [(w, re.compile("|".join(f"(?:{p})" for p in by_weight[w])))
                         for w in sorted(by_weight, reverse=True)]
        self._weight_cache: dict[str, int] = {}
        self._watermark = float("-inf")

    def weight(self, instance_type: str) -> int:
        """The weight of one instance of ``instance_type`` (1 unless a ``weighted_types`` glob matches)."""
        found = self._weight_cache.get(instance_type)
        if found is None:
            found = next((w for w, regex in self._weights if regex.fullmatch(instance_type)), 1)
            if len(self._weight_cache) < 4096:
                self._weight_cache[instance_type] = found
        return found

    # -- events ----------------------------------------------------------------------------
    def on_event(self, event: Event) -> list[Alert] | None:
        """Add a launch (or a refused launch request) to its buckets; report a bucket that spikes."""
        if event.event_name != "RunInstances" or event.event_source != "ec2.amazonaws.com":
            return None
        principal = event.principal
        time, event_id = event.time, event.event_id
        if time < self._watermark:
            self.context.on_late(self.name, 1)
            last_closed = math.floor(self._watermark / self.config.bucket) - 1
            if math.floor(time / self.config.bucket) <= last_closed:
                return None  # its bucket is closed and folded into the baseline
        launches = self._clip(launched_instances(event))
        instances = sum(n for _, n in launches)
        weighted = sum(n * self.weight(kind) for kind, n in launches)
        index = math.floor(time / self.config.bucket)
        fired: list[tuple[str, SpikeReport, _Bucket]] = []
        for key in (f"{_ACCOUNT}{event.account_id}/{event.region}", _PRINCIPAL + principal):
            bucket = self._buckets.get((key, index))
            if bucket is None:
                bucket = _Bucket(time)
                self._buckets.insert((key, index), bucket)
            elif event_id is not None and event_id in bucket.ids:
                continue  # the same event again
            self._record(bucket, event, launches, instances, weighted)
            report = self._feed(key, time, event_id, weighted)
            if report is not None:
                fired.append((key, report, bucket))
        return [self._alert(event, fired)] if fired else None

    def _clip(self, launches: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """At most ``max_instances_per_call`` instances from one call (bounds the work per event)."""
        remaining = self.config.max_instances_per_call
        clipped: list[tuple[str, int]] = []
        for kind, n in launches:
            n = min(n, remaining)
            if n:
                clipped.append((kind, n))
                remaining -= n
        return clipped

    def _record(self, bucket: _Bucket, event: Event, launches: list[tuple[str, int]], instances: int,
                weighted: int) -> None:
        if event.time > bucket.newest:
            bucket.newest = event.time
        bucket.calls += 1
        bucket.instances += instances
        bucket.weighted += weighted
        if event.error_code is not None:
            bucket.failed += 1
            _remember(bucket.codes, event.error_code)
        for kind, n in launches:
            if kind in bucket.types or len(bucket.types) < _MAX_LISTED:
                bucket.types[kind] = bucket.types.get(kind, 0) + n
        _remember(bucket.regions, event.region)
        _remember(bucket.principals, event.principal)
        if event.event_id is not None and len(bucket.ids) < _MAX_IDS:
            bucket.ids.append(event.event_id)

    def _feed(self, key: str, time: float, event_id: str | None, units: int) -> SpikeReport | None:
        """Add ``units`` weighted instances to the key's rate; the report of the unit that crossed, if any."""
        rate = self._rate
        found = rate.add(key, time, event_id)
        for _ in range(units - 1):
            report = rate.add(key, time)
            if found is None:
                found = report
        return found

    def on_watermark(self, watermark: float) -> None:
        """Expire closed buckets' evidence and keys quiet for longer than ``history``."""
        if watermark > self._watermark:
            self._watermark = watermark
        self._rate.advance(watermark)
        self._buckets.advance(watermark)
        return None

    # -- alerts ----------------------------------------------------------------------------
    def _alert(self, event: Event, fired: list[tuple[str, SpikeReport, _Bucket]]) -> Alert:
        keys = [key for key, _, _ in fired]
        _, report, bucket = max(fired, key=lambda item: item[2].weighted)
        gpu = bucket.weighted > bucket.instances
        severity = shift_severity(self.effective_severity, 1) if gpu else self.effective_severity
        scopes = ["account_region" if key.startswith(_ACCOUNT) else "principal" for key in keys]
        types = ", ".join(f"{n}× {kind}" for kind, n in sorted(bucket.types.items(), key=lambda kv: -kv[1]))
        refused = f", {bucket.failed} of {bucket.calls} call(s) refused" if bucket.failed else ""
        summary = (
            f"{bucket.instances} EC2 instance(s) launched or requested ({types}; weighted {bucket.weighted}, "
            f"limit {report.limit:g}, baseline {report.baseline:.1f}) "
            f"in account {event.account_id or 'unknown'} "
            f"({', '.join(bucket.regions)}) between {format_time(report.start)} and {format_time(report.end)}"
            f"{refused}."
        )
        launched = resources_of(event)  # the triggering call: its instance ids and image, or its subnet…
        resources = bounded([
            *(r for r in launched if r["type"] == "ec2_instance"),
            *(make_resource("ec2_instance_type", kind, account_id=event.account_id, detail=f"{n} launched")
              for kind, n in sorted(bucket.types.items(), key=lambda kv: -kv[1])),
            *(make_resource("aws_region", region, account_id=event.account_id, detail="launch region")
              for region in bucket.regions),
            *launched,
        ])
        instances = [r["id"] for r in resources if r["type"] == "ec2_instance"]
        if instances:
            summary += f" Instances include {', '.join(instances[:5])}."
        return Alert(
            detector=self.name,
            title="Unusual EC2 launch volume (GPU/bare metal)" if gpu else "Unusual EC2 launch volume",
            severity=severity,
            time=event.time,
            summary=summary,
            account_id=event.account_id,
            region=event.region,
            principal=event.principal,
            source_ips=[event.source_ip] if event.source_ip else [],
            event_ids=bucket.ids[: self.config.max_evidence],
            evidence={
                "finding": "gpu_launch_spike" if gpu else "launch_spike",
                "scopes": scopes,
                "keys": keys,
                "calls": bucket.calls,
                "failed_calls": bucket.failed,
                "error_codes": list(bucket.codes),
                "instances": bucket.instances,
                "weighted_instances": bucket.weighted,
                "baseline": round(report.baseline, 3),
                "limit": report.limit,
                "instance_types": dict(bucket.types),
                "regions": list(bucket.regions),
                "principals": list(bucket.principals),
                "window_start": format_time(report.start),
                "window_end": format_time(report.end),
                "window_seconds": self.config.bucket,
                "suppressed": sum(r.suppressed for _, r, _ in fired),
            },
            tags=list(self.tags),
            runbook=self.runbook,
            entity=" ".join(keys),
            resources=resources,
        )

    # -- state -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The baselines and the open buckets' evidence, as plain data."""
        return {
            "version": SNAPSHOT_VERSION,
            "kind": self.name,
            "watermark": None if self._watermark == float("-inf") else self._watermark,
            "rate": self._rate.snapshot(),
            "buckets": [[freeze(key), bucket.dump()] for key, bucket in self._buckets.items()],
        }

    def restore(self, state: Any) -> None:
        """Load what :meth:`snapshot` returned (``ValueError`` for a foreign or newer snapshot)."""
        data = check_snapshot(state, self.name)
        watermark = data.get("watermark")
        self._watermark = float(watermark) if isinstance(watermark, (int, float)) else float("-inf")
        self._rate.restore(data["rate"])
        self._buckets.load([(thaw(key), _Bucket.load(dump)) for key, dump in data.get("buckets") or []],
                           self._watermark)

    def state_keys(self) -> int:
        """Account+region pairs and principals with a baseline."""
        return len(self._rate)
