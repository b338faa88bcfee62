"""Alert throttling: one alert per group per window, with a count of what was held back.

A brute-force run or a misbehaving script can raise the same detection hundreds of times a
minute; the SOC needs the first one now and a number for the rest, not a flood.  Alerts are
grouped per (detector, entity) by default — ``Alert.entity`` is what the detector says the alert
is *about* (a principal, a source IP) — and after an alert is delivered for a group, later ones
whose *event time* falls inside ``window`` are suppressed and counted
(``trailguard_alerts_suppressed_total{reason="throttled"}``).  The next alert delivered for the
group carries ``evidence.suppressed_count``.  Event time, not wall clock, so a replay of old logs
is throttled exactly as the live stream was.

Config (``delivery.throttle``)::

    throttle:
      window: 10m                     # 0 (default): no throttling
      per: [detector, entity]
      overrides:
        root_activity: {window: 0}    # never throttle this detector
        access_denied_burst: {window: 1h, per: [detector, account]}

Memory is bounded by ``max_groups`` (oldest groups forgotten first); the state is checkpointed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from daemon.config import Duration
from detectors.alert import Alert

__all__ = ["Throttle", "ThrottleConfig", "ThrottleOverride"]

GroupField = Literal["detector", "entity", "rule_id", "account", "region", "principal", "severity"]
_SWEEP_EVERY = 1024


class ThrottleOverride(BaseModel):
    """Per-detector settings; an unset key inherits the top-level value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: Duration | None = None
    per: tuple[GroupField, ...] | None = Field(default=None, min_length=1)


class ThrottleConfig(BaseModel):
    """``delivery.throttle``: the suppression window, what groups alerts, per-detector overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: Duration = 0.0
    """Suppress repeats within this much event time after a delivered alert (0: off)."""
    per: tuple[GroupField, ...] = Field(default=("detector", "entity"), min_length=1)
    overrides: dict[str, ThrottleOverride] = Field(default_factory=dict)
    """By detector name."""
    max_groups: int = Field(default=100_000, ge=1)


def _field(alert: Alert, name: str) -> str:
    if name == "entity":
        return alert.entity or alert.principal
    if name == "account":
        return alert.account_id
    if name == "rule_id":
        return alert.rule_id or ""
    return str(getattr(alert, name))


class Throttle:
    """Decides, per alert, deliver or suppress; keeps ``{group: [window_end, suppressed]}``."""

    def __init__(self, config: ThrottleConfig) -> None:
        self.config = config
        self._rules: dict[str, tuple[float, tuple[str, ...]]] = {
            name: (config.window if o.window is None else o.window, o.per or config.per)
            for name, o in config.overrides.items()
        }
        self._default = (config.window, config.per)
        self._groups: dict[tuple[str, ...], list[float]] = {}
        self._newest = float("-inf")
        self._calls = 0
        self.enabled = config.window > 0 or any(w > 0 for w, _ in self._rules.values())

    def __len__(self) -> int:
        return len(self._groups)

    def admit(self, alert: Alert) -> bool:
        """True: deliver (with ``evidence.suppressed_count`` when repeats were held back); False: suppressed."""
        if not self.enabled:
            return True
        window, per = self._rules.get(alert.detector, self._default)
        if window <= 0:
            return True
        key = tuple(_field(alert, name) for name in per)
        now = alert.time
        if now > self._newest:
            self._newest = now
        groups = self._groups
        state = groups.get(key)
        if state is not None and now < state[0]:
            state[1] += 1
            return False
        if state is not None:
            del groups[key]
            if state[1]:
                alert.evidence = {**alert.evidence, "suppressed_count": int(state[1])}
        groups[key] = [now + window, 0.0]
        if len(groups) > self.config.max_groups:
            del groups[next(iter(groups))]
        self._calls += 1
        if self._calls % _SWEEP_EVERY == 0:
            self.sweep()
        return True

    def sweep(self) -> int:
        """Forget groups whose window ended and that hold no suppressed count; returns how many."""
        newest = self._newest
        stale = [key for key, (end, count) in self._groups.items() if end <= newest and not count]
        for key in stale:
            del self._groups[key]
        return len(stale)

    def snapshot(self) -> dict[str, Any]:
        """Plain data for the checkpoint."""
        return {"keys": [list(k) for k in self._groups], "ends": [s[0] for s in self._groups.values()],
                "counts": [int(s[1]) for s in self._groups.values()]}

    def restore(self, state: dict[str, Any]) -> None:
        """Load a :meth:`snapshot`."""
        keys, ends, counts = state.get("keys") or [], state.get("ends") or [], state.get("counts") or []
        self._groups = {tuple(k): [float(e), float(c)] for k, e, c in zip(keys, ends, counts, strict=False)}
        if self._groups:
            self._newest = max(self._newest, max(s[0] for s in self._groups.values()))
