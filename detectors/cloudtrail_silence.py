"""CloudTrail silence: an account that normally sends events has gone quiet while the rest of the
organisation keeps flowing.

Why it exists: an intruder who cannot (or does not want to) call ``StopLogging`` — which
:mod:`detectors.cloudtrail_tampering` would see — can still blind the SOC for one account: detach it
from the organisation trail, change an S3 bucket policy or KMS key policy so delivery fails, put an
SCP in the way, or break the EventBridge rule that forwards its events.  None of these leaves an
event in the silenced account's own stream after the fact, so the only signal is absence
(MITRE ATT&CK T1562.008, "Impair Defenses: Disable or Modify Cloud Logs").

Absence is measured in **event time, relative to the organisation**: the watermark (newest event
time seen across all accounts minus the allowed lateness) is the clock.  A key (an account, or an
account and region with ``per_region: true``) is *silent* when its newest event is older than
``watermark - quiet_period``.  Because the watermark only moves when *other* accounts deliver, a
replay or a slow pipeline never makes an account look silent, and when the whole organisation stops
arriving (trail stopped org-wide, input broken) this detector stays quiet by design — that case is
caught by the wall-clock Prometheus rule on ``trailguard_account_last_event_timestamp_seconds`` and
``trailguard_watermark_timestamp_seconds`` (``deploy/prometheus/alerts.yml``).

Its state is keyed by account but its clock is the organisation's (``organisation_clock``): on
Kafka it runs on the partitions of the account-keyed internal topic, whose watermark is merged
from every input partition's progress (:mod:`daemon.repartition.watermark`), so an account whose
events sit in a partition read later, or by another instance, is never reported silent — and the
work is spread over as many partitions as the input has, not one.

Only keys that have sent at least ``min_events`` events count as "normally sending": a sandbox
account that logs three calls a week is not expected to be continuous.  One alert per silence
episode: the key is re-armed when it is current again (an event newer than
``watermark - quiet_period`` arrives).  A late event that still leaves the key silent does not
re-arm it.

State is one small record per key in a :class:`~detectors.windows.store.KeyedState`: bounded by
``max_keys`` (least recently updated evicted first) and forgotten ``forget_after`` of event time
after its last event (an account closed or moved out of the trail stops costing memory; it has been
reported by then).  The watermark scan is exact and cheap: the detector remembers the earliest
watermark at which any armed key could become silent and skips the scan until then.

Parameters: ``quiet_period`` (seconds or ``1h``-style, default 1 h), ``min_events`` (default 100), ``per_region``
(default ``False``), ``max_keys`` (default 10,000), ``forget_after`` (seconds, default 7 days),
``ignore_accounts`` (account ids never reported), plus ``enabled``/``severity``.

Known false positives: accounts with genuinely bursty activity (batch-only accounts that are idle
at night) — raise ``quiet_period`` or list them in ``ignore_accounts``; ``per_region: true`` in
regions used only occasionally (keep it off unless regions are continuously busy); an account
being decommissioned.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, ClassVar, Final

from pydantic import Field, model_validator

from detectors.alert import Alert, make_alert_id
from detectors.base import Detector, DetectorConfig, DetectorContext, StateKey
from detectors.durations import Duration
from detectors.event import Event, format_time
from detectors.resources import bounded, make_resource
from detectors.windows.store import SNAPSHOT_VERSION, KeyedState, check_snapshot, freeze, thaw

__all__ = ["CloudTrailSilence"]

_NEG_INF: Final = float("-inf")
_POS_INF: Final = float("inf")


class _Seen:
    """What is known about one key: its newest event, how many events, and whether it is reported."""

    __slots__ = ("alerted", "count", "last", "last_id")

    def __init__(self, last: float, last_id: str, count: int = 1, alerted: bool = False) -> None:
        self.last = last
        self.last_id = last_id
        self.count = count
        self.alerted = alerted


def _newest(seen: _Seen) -> float:
    return seen.last


def _duration_text(seconds: float) -> str:
    """``5400`` → ``1h 30m``; ``90`` → ``1m 30s`` (for the one-sentence summary)."""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if hours:
        parts.append(f"{hours}h")
    if minutes and not days:
        parts.append(f"{minutes}m")
    if secs and not days and not hours:
        parts.append(f"{secs}s")
    return " ".join(parts) or "0s"


class CloudTrailSilence(Detector):
    """Reports an account (or account+region) whose events stopped while the organisation's did not."""

    name: ClassVar[str] = "cloudtrail_silence"
    #: State keyed by account; its clock is the organisation's event time (``organisation_clock``).
    state_key: ClassVar[StateKey | None] = "account"
    organisation_clock: ClassVar[bool] = True
    severity: ClassVar[str] = "high"
    tags: ClassVar[tuple[str, ...]] = ("attack.defense_evasion", "attack.t1562.008")
    runbook: ClassVar[str | None] = (
        "Check the account's trail status (GetTrailStatus: IsLogging, LatestDeliveryError), its "
        "membership of the organisation trail, the trail bucket and KMS key policies, SCPs and the "
        "EventBridge forwarding rule; then review the account's last events before the silence."
    )

    class Config(DetectorConfig):
        """Tuning for :class:`CloudTrailSilence`."""

        #: Event-time seconds behind the watermark after which a key counts as silent.
        quiet_period: Duration = Field(3600.0, gt=0)
        #: Events a key must have sent before its silence is reported ("normally sends events").
        min_events: int = Field(100, ge=1)
        #: Track account+region instead of account.
        per_region: bool = False
        #: Hard cap on tracked keys (least recently updated evicted first).
        max_keys: int = Field(10_000, ge=1)
        #: Event-time seconds after a key's last event when it is forgotten (must exceed quiet_period).
        forget_after: Duration = Field(7 * 86400.0, gt=0)
        #: Account ids whose silence is never reported (still tracked, so nothing else changes).
        ignore_accounts: frozenset[str] = frozenset()

        @model_validator(mode="after")
        def _forget_after_quiet(self) -> CloudTrailSilence.Config:
            if self.forget_after <= self.quiet_period:
                raise ValueError("forget_after must be longer than quiet_period, or a silent account "
                                 "is forgotten before it is reported")
            return self

    config: Config

    def __init__(self, config: DetectorConfig, context: DetectorContext | None = None) -> None:
        super().__init__(config, context)
        on_evict = self.context.on_evict
        self._keys: KeyedState[_Seen] = KeyedState(
            horizon=self.config.forget_after,
            max_keys=self.config.max_keys,
            newest=_newest,
            on_evict=lambda n: on_evict(self.name, n),
        )
        self._watermark = _NEG_INF
        #: Earliest watermark at which an armed key can become silent (a lower bound: scanning early is harmless).
        self._next_check = _POS_INF

    # -- events ----------------------------------------------------------------------------
    def on_event(self, event: Event) -> None:
        """Record the event's time as its key's newest (if it is), count it, re-arm a resumed key."""
        account = event.account_id
        if not account:
            return None
        key: Hashable = (account, event.region) if self.config.per_region else account
        seen = self._keys.get(key)
        if seen is None:
            if event.time < self._watermark - self.config.forget_after:
                return None  # older than anything we remember: it would be expired at once
            seen = _Seen(event.time, event.event_id)
            self._keys.insert(key, seen)
        else:
            seen.count += 1
            if event.time > seen.last:
                seen.last = event.time
                seen.last_id = event.event_id
        if seen.count >= self.config.min_events:
            deadline = seen.last + self.config.quiet_period
            if seen.alerted:
                if deadline >= self._watermark:  # current again: the episode is over
                    seen.alerted = False
                    self._next_check = min(self._next_check, deadline)
            elif deadline < self._next_check:
                self._next_check = deadline
        return None

    def on_watermark(self, watermark: float) -> list[Alert] | None:
        """Expire forgotten keys; report keys that became silent (once per episode)."""
        if watermark > self._watermark:
            self._watermark = watermark
        self._keys.advance(watermark)
        if watermark <= self._next_check:
            return None
        config = self.config
        quiet, min_events = config.quiet_period, config.min_events
        out: list[Alert] = []
        next_check = _POS_INF
        for key, seen in self._keys.items():
            if seen.alerted or seen.count < min_events:
                continue
            deadline = seen.last + quiet
            if watermark > deadline:
                seen.alerted = True
                account = key[0] if isinstance(key, tuple) else key
                if account not in config.ignore_accounts:
                    out.append(self._alert(key, seen, watermark))
            elif deadline < next_check:
                next_check = deadline
        self._next_check = next_check
        return out or None

    def _alert(self, key: Hashable, seen: _Seen, watermark: float) -> Alert:
        account, region = (key if isinstance(key, tuple) else (key, ""))
        silent_for = watermark - seen.last
        where = f"account {account}" + (f" in {region}" if region else "")
        entity = f"{account}/{region}" if region else str(account)
        summary = (
            f"CloudTrail events from {where} stopped {_duration_text(silent_for)} before the rest of the "
            f"organisation's (last event {format_time(seen.last)}, watermark {format_time(watermark)})."
        )
        resources = bounded([
            make_resource("aws_account", account, account_id=account,
                          detail=f"silent {_duration_text(silent_for)}" + (f" in {region}" if region else "")),
            make_resource("aws_region", region, account_id=account, detail="silent region") if region else None,
        ])
        return Alert(
            detector=self.name,
            title="CloudTrail events stopped arriving from an account",
            severity=self.effective_severity,
            time=watermark,
            summary=summary,
            account_id=str(account),
            region=str(region),
            event_ids=[seen.last_id] if seen.last_id else [],
            evidence={
                "finding": "account_silent",
                "scope": "account_region" if region else "account",
                "last_event_time": format_time(seen.last),
                "last_event_id": seen.last_id,
                "watermark": format_time(watermark),
                "silent_for_seconds": round(silent_for, 3),
                "quiet_period_seconds": self.config.quiet_period,
                "events_seen": seen.count,
            },
            tags=list(self.tags),
            runbook=self.runbook,
            entity=entity,
            id="" if seen.last_id else make_alert_id(self.name, None, entity, seen.last),
            resources=resources,
        )

    # -- state -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Plain data: the watermark and every live key's record, least recently updated first."""
        return {
            "version": SNAPSHOT_VERSION,
            "kind": self.name,
            "watermark": self._watermark if self._watermark != _NEG_INF else None,
            "keys": [[freeze(key), s.last, s.last_id, s.count, s.alerted] for key, s in self._keys.items()],
        }

    def restore(self, state: Any) -> None:
        """Load :meth:`snapshot` output; keys beyond ``max_keys`` (a lowered cap) are dropped oldest first."""
        data = check_snapshot(state, self.name)
        raw_watermark = data.get("watermark")
        watermark = float(raw_watermark) if isinstance(raw_watermark, (int, float)) else _NEG_INF
        per_region = self.config.per_region
        pairs: list[tuple[Hashable, _Seen]] = []
        for key, last, last_id, count, alerted in data.get("keys") or []:
            key = thaw(key)
            if isinstance(key, tuple) != per_region:
                continue  # per_region was changed: the old keys mean something else, start over
            pairs.append((key, _Seen(float(last), str(last_id), int(count), bool(alerted))))
        self._keys.load(pairs, watermark)
        self._watermark = watermark
        self._next_check = _NEG_INF  # one full scan recomputes it

    def state_keys(self) -> int:
        """Tracked keys (accounts, or account+region pairs)."""
        return len(self._keys)
