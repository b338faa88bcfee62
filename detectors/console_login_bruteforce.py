"""Console sign-in brute force and password spraying, and the success that ends one.

Why it exists: the AWS console sign-in page is on the internet.  Repeated failed ``ConsoleLogin``
events are a password being guessed (MITRE ATT&CK T1110, Brute Force); one address failing for
many different user names is password spraying (T1110.003); and a success right after the
failures — from the same address, or for the same user — is the guess that worked.

Each failed ``ConsoleLogin`` (``signin.amazonaws.com``, ``responseElements.ConsoleLogin ==
"Failure"``) is counted twice, over a sliding event-time ``window``:

* per **source IP** (``sourceIPAddress``, when it is an address), with the user names it tried;
* per **user** (account + ``userIdentity.userName``; ``root`` for the root user), with the
  addresses it was tried from.  CloudTrail writes ``HIDDEN_DUE_TO_SECURITY_REASONS`` as the name
  when the name tried does not exist: such failures count for the address (as user ``<hidden>``),
  not for a user.

What it reports:

* **burst** — ``threshold`` or more failures for one address or one user within ``window``:
  the detector's severity (``medium``); from one address across at least ``spray_users`` user
  names it is spraying (one level up, ``high``, tag ``attack.t1110.003``).  When the address and
  the user reach the threshold with the same event it is one alert naming both.
* **success after failures** — a successful ``ConsoleLogin`` from an address, or for a user, whose
  failures reached the threshold at most ``success_within`` seconds earlier (event time; arrival
  order does not matter): ``critical``.  Evidence names the success event.

Failures are counted by a :class:`~detectors.windows.CountWindow` per key, the success is matched
by a :class:`~detectors.windows.SequenceWindow` (step ``failures``: every failure at or past the
threshold; step ``success``), and users/addresses come from a per-key record of each value's last
failure (a :class:`~detectors.windows.recent.RecentValues`: exact in time order; out of order it
counts values seen up to the key's newest failure).  One alert per key per ``window`` for each of
the two findings while the attack goes on; ``evidence.suppressed`` counts what was held back.
Evidence: failures in the window, users tried, addresses, window bounds.

Parameters: ``window`` (seconds or ``10m``-style, default 10 min), ``threshold`` (5),
``spray_users`` (3), ``success_within`` (default: ``window``), ``ignore_networks`` (CIDRs whose
failures are not counted, e.g. a corporate egress used by many users; deprecated, mapped onto
``exceptions``), ``max_keys`` (100,000 per structure), ``max_evidence`` (10), plus ``enabled``/``severity``.

Known false positives: a user who forgot a password (a burst, then the success: critical — confirm
with the user); shared egress addresses (NAT, VPN) where several users mistype at once (spraying
pattern) — list them in ``ignore_networks``; password managers retrying a stale password.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any, ClassVar, Final

from pydantic import Field, field_validator

from detectors.alert import Alert, shift_severity
from detectors.base import Detector, DetectorConfig, DetectorContext, StateKey
from detectors.durations import Duration
from detectors.event import Event, format_time
from detectors.exceptions import source_networks
from detectors.windows import CountReport, CountWindow, SequenceWindow, Throttle
from detectors.windows.recent import LastSeen, RecentValues
from detectors.windows.store import SNAPSHOT_VERSION, check_snapshot

__all__ = ["ConsoleLoginBruteforce"]

#: What CloudTrail writes as ``userName`` when the name tried does not exist.
HIDDEN_USER: Final = "HIDDEN_DUE_TO_SECURITY_REASONS"
_HIDDEN_LABEL: Final = "<hidden>"
_NO_ADDRESS: Final = "<none>"
_IP: Final = "ip:"
_USER: Final = "user:"
_STEPS: Final = ("failures", "success")


class _Tried(LastSeen):
    """Per address the user names tried, per user the addresses; plus the key's last burst."""

    __slots__ = ("burst", "burst_end")

    def __init__(self, newest: float, pairs: list[Any] | None = None, burst: int = 0,
                 burst_end: float = float("-inf")) -> None:
        super().__init__(newest, pairs)
        #: Failures in the key's last burst and when it ended: what a later success alert reports.
        self.burst = burst
        self.burst_end = burst_end


def _targets(users: list[str], account_id: str) -> list[dict[str, str]]:
    """The accounts' users whose passwords were tried: what the alert is about."""
    out = [{"type": "iam_user", "id": user[:512], "detail": "console password tried"} for user in users[:25]]
    if not out and account_id:
        out.append({"type": "aws_account", "id": account_id, "account_id": account_id,
                    "detail": "console sign-in targeted"})
    return out


def user_of(event: Event) -> str | None:
    """The user name a ``ConsoleLogin`` was for: ``root``, the IAM user name, or ``<hidden>``.

    ``userIdentity.userName`` carries it for IAM users (and is ``HIDDEN_DUE_TO_SECURITY_REASONS``
    when the name tried does not exist); the root user is recognised by ``userIdentity.type``.
    Older records and some exports carry it only in ``additionalEventData.UserName``.
    """
    if event.identity_type == "Root":
        return "root"
    name = event.get("userIdentity.userName") or event.get("additionalEventData.UserName")
    if not isinstance(name, str) or not name:
        return None
    return _HIDDEN_LABEL if name == HIDDEN_USER else name


class ConsoleLoginBruteforce(Detector):
    """Reports bursts of failed console sign-ins per address and per user, and a success after them."""

    name: ClassVar[str] = "console_login_bruteforce"
    #: State keyed by organisation: it keys by source IP *and* by account user, and only ConsoleLogin
    #: events travel to its partition, so one partition holds both cheaply.
    state_key: ClassVar[StateKey | None] = "organisation"
    severity: ClassVar[str] = "medium"
    event_names: ClassVar[frozenset[str] | None] = frozenset({"ConsoleLogin"})
    event_sources: ClassVar[frozenset[str] | None] = frozenset({"signin.amazonaws.com"})
    tags: ClassVar[tuple[str, ...]] = ("attack.credential_access", "attack.t1110")
    runbook: ClassVar[str | None] = (
        "Check the source addresses (owner, reputation) and the users tried. After a success: ask the "
        "user, reset the password, revoke sessions and review the session's actions. Enforce MFA."
    )

    class Config(DetectorConfig):
        """Tuning for :class:`ConsoleLoginBruteforce`."""

        #: Sliding event-time window for counting failures (seconds, or ``10m``-style).
        window: Duration = Field(600.0, gt=0)
        #: Failures per address or per user within ``window`` that make a burst.
        threshold: int = Field(5, ge=2)
        #: Distinct user names from one address (in a burst) that make it password spraying.
        spray_users: int = Field(3, ge=2)
        #: A success at most this long after a burst is reported as critical (default: ``window``).
        success_within: Duration | None = Field(None, gt=0)
        #: CIDRs (or single addresses) whose failures are not counted.
        ignore_networks: tuple[str, ...] = ()
        #: Hard cap on tracked addresses + users, per structure.
        max_keys: int = Field(100_000, ge=1)
        #: Users, addresses and event ids listed in an alert at most.
        max_evidence: int = Field(10, ge=1, le=100)

        @field_validator("ignore_networks")
        @classmethod
        def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
            for network in value:
                try:
                    ipaddress.ip_network(network, strict=False)
                except ValueError:
                    raise ValueError(f"{network!r} is not an address or CIDR network") from None
            return value

        def legacy_exceptions(self) -> list[Callable[[Event], bool]]:
            """Deprecated ``ignore_networks`` as an exception: the source address is in a network."""
            return source_networks(self.ignore_networks)

    config: Config

    def __init__(self, config: DetectorConfig, context: DetectorContext | None = None) -> None:
        super().__init__(config, context)
        c = self.config
        window, keys, evidence = c.window, c.max_keys, c.max_evidence
        within = c.success_within or window
        on_evict = self.context.on_evict
        self._failures = CountWindow(window, c.threshold, max_events=max(64, 4 * c.threshold), max_keys=keys,
                                     on_evict=lambda n: on_evict(self.name, n), max_evidence=evidence)
        #: Burst ("failures": every failure at or past the threshold) then "success", per key.
        self._sequence = SequenceWindow(_STEPS, within, max_per_step=64, max_keys=keys, throttle=window,
                                        max_evidence=evidence)
        self._throttle = Throttle(window, max_keys=keys)
        #: key → per address the user names tried, per user the addresses tried from, each with its last
        #: failure (exact for in-order arrivals; out of order it counts values seen up to the key's
        #: newest failure), and the key's last burst.
        self._recent: RecentValues[_Tried] = RecentValues(
            _Tried, horizon=max(window, within), max_keys=keys, cap=max(16, 2 * c.spray_users, evidence)
        )
        self._watermark = float("-inf")

    # -- events ----------------------------------------------------------------------------
    def on_event(self, event: Event) -> list[Alert] | None:
        """Count a failed sign-in, or match a successful one against earlier bursts."""
        if event.event_name != "ConsoleLogin" or event.event_source != "signin.amazonaws.com":
            return None
        outcome = event.get("responseElements.ConsoleLogin")
        if outcome not in ("Failure", "Success"):
            return None
        address = event.real_source_ip
        user = user_of(event)
        keys: list[str] = []
        if address is not None:
            keys.append(_IP + address)
        if user is not None and user != _HIDDEN_LABEL:
            keys.append(f"{_USER}{event.account_id}/{user}")
        if not keys:
            return None
        if event.time < self._watermark:
            self.context.on_late(self.name, 1)
        if outcome == "Failure":
            return self._failure(event, keys, user or _HIDDEN_LABEL, address or _NO_ADDRESS)
        return self._success(event, keys)

    def _failure(self, event: Event, keys: list[str], user: str, address: str) -> list[Alert] | None:
        time, event_id = event.time, event.event_id
        bursts: list[tuple[str, CountReport, int]] = []
        matches: list[tuple[str, Any]] = []
        for key in keys:
            count = self._failures.add(key, time, event_id)
            recent = self._recent.see(key, user if key.startswith(_IP) else address, time)
            if count is None:
                continue
            recent.burst, recent.burst_end = count.count, count.end
            match = self._sequence.add(key, count.end, "failures", event_id)
            if match is not None:  # a success that arrived before these (late) failures
                matches.append((key, match))
            suppressed = self._throttle.allow(key, count.end)
            if suppressed is not None:
                bursts.append((key, count, suppressed))
        out: list[Alert] = []
        if bursts:
            out.append(self._burst_alert(event, bursts))
        if matches:
            out.append(self._success_alert(event, matches, success_id=None))
        return out or None

    def _success(self, event: Event, keys: list[str]) -> list[Alert] | None:
        matches = []
        for key in keys:
            match = self._sequence.add(key, event.time, "success", event.event_id)
            if match is not None:
                matches.append((key, match))
        return [self._success_alert(event, matches, success_id=event.event_id)] if matches else None

    def on_watermark(self, watermark: float) -> None:
        """Expire addresses and users whose failures all left the window."""
        if watermark > self._watermark:
            self._watermark = watermark
        for primitive in (self._failures, self._sequence, self._throttle):
            primitive.advance(watermark)
        self._recent.advance(watermark)
        return None

    # -- alerts ----------------------------------------------------------------------------
    def _spread_of(self, keys: list[str], start: float) -> tuple[list[str], list[str], int]:
        """Users tried and addresses used since ``start`` (records of ``keys``), and the users count."""
        users: list[str] = []
        addresses: list[str] = []
        user_count = 0
        for key in keys:
            recent = self._recent.get(key)
            values = recent.since(start) if recent is not None else []
            if key.startswith(_IP):
                addresses.append(key[len(_IP):])
                users.extend(v for v in values if v not in users)
                user_count = max(user_count, len(values))
            else:
                user = key[len(_USER):].partition("/")[2]
                if user not in users:
                    users.append(user)
                user_count = max(user_count, 1)
                addresses.extend(v for v in values if v not in addresses and v != _NO_ADDRESS)
        limit = self.config.max_evidence
        return users[:limit], addresses[:limit], user_count

    def _burst_alert(self, event: Event, bursts: list[tuple[str, CountReport, int]]) -> Alert:
        keys = [key for key, _, _ in bursts]
        start = min(count.start for _, count, _ in bursts)
        users, addresses, user_count = self._spread_of(keys, start)
        failures = max(count.count for _, count, _ in bursts)
        end = max(count.end for _, count, _ in bursts)
        spraying = user_count >= self.config.spray_users
        severity = shift_severity(self.effective_severity, 1) if spraying else self.effective_severity
        event_ids: list[str] = []
        for _, count, _ in bursts:
            event_ids.extend(i for i in count.event_ids if i not in event_ids)
        if spraying:
            title = "Console password spraying"
            what = f"{failures} failed console sign-ins for {user_count} different users from {addresses[0]}"
        else:
            title = "Console sign-in brute force"
            target = ", ".join(users) or "unknown users"
            source = ", ".join(addresses) or "unknown addresses"
            what = f"{failures} failed console sign-ins for {target} from {source}"
        summary = (f"{what} within {self.config.window / 60:g} min in account "
                   f"{event.account_id or 'unknown'}, ending {format_time(end)}.")
        tags = [*self.tags, "attack.t1110.003"] if spraying else list(self.tags)
        return Alert(
            detector=self.name,
            title=title,
            severity=severity,
            time=end,
            summary=summary,
            account_id=event.account_id,
            region=event.region,
            principal=event.principal if any(key.startswith(_USER) for key in keys) else "",
            source_ips=addresses,
            event_ids=event_ids,
            evidence={
                "finding": "spraying" if spraying else "burst",
                "keys": keys,
                "failures": failures,
                "users_tried": users,
                "distinct_users": user_count,
                "source_ips": addresses,
                "window_start": format_time(start),
                "window_end": format_time(end),
                "window_seconds": self.config.window,
                "suppressed": sum(s for _, _, s in bursts),
            },
            tags=tags,
            rule_id="burst",
            runbook=self.runbook,
            entity=" ".join(keys),
            resources=_targets(users, event.account_id),
        )

    def _success_alert(self, event: Event, matches: list[tuple[str, Any]], success_id: str | None) -> Alert:
        keys = [key for key, _ in matches]
        failures = 0
        burst_end = float("-inf")
        for key in keys:
            recent = self._recent.get(key)
            if recent is not None and recent.burst > failures:
                failures, burst_end = recent.burst, recent.burst_end
        users, addresses, user_count = self._spread_of(keys, burst_end - self.config.window)
        event_ids: list[str] = []
        for _, match in matches:
            event_ids.extend(i for i in match.event_ids if i is not None and i not in event_ids)
        success = matches[0][1]
        success_time = success.times[1]
        if success_id is None:
            success_id = success.event_ids[1]
        succeeded = success_id == event.event_id
        who = (user_of(event) if succeeded else None) or ", ".join(users) or "an unknown user"
        summary = (
            f"A console sign-in for {who} succeeded at {format_time(success_time)} after {failures} failed "
            f"sign-ins from {', '.join(addresses) or 'unknown addresses'} in account "
            f"{event.account_id or 'unknown'}: the brute force may have worked."
        )
        return Alert(
            detector=self.name,
            title="Console sign-in succeeded after repeated failures",
            severity=shift_severity(self.effective_severity, 2),
            time=success_time,
            summary=summary,
            account_id=event.account_id,
            region=event.region,
            principal=event.principal if succeeded else "",
            source_ips=addresses,
            event_ids=event_ids,
            evidence={
                "finding": "success_after_failures",
                "keys": keys,
                "success_event_id": success_id,
                "failures": failures,
                "users_tried": users,
                "distinct_users": user_count,
                "source_ips": addresses,
                "first_failure_to_success_seconds": round(success_time - success.start, 3),
                "suppressed": sum(m.suppressed for _, m in matches),
            },
            tags=[*self.tags, "attack.initial_access", "attack.t1078.004"],
            rule_id="success_after_failures",
            runbook=self.runbook,
            entity=" ".join(keys),
            resources=_targets(users, event.account_id),
        )

    # -- state -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Every primitive's state as plain data."""
        return {
            "version": SNAPSHOT_VERSION,
            "kind": self.name,
            "watermark": None if self._watermark == float("-inf") else self._watermark,
            "failures": self._failures.snapshot(),
            "sequence": self._sequence.snapshot(),
            "throttle": self._throttle.snapshot(),
            "recent": [[key, r.newest, r.burst, r.burst_end, list(r.pairs)] for key, r in self._recent.items()],
        }

    def restore(self, state: Any) -> None:
        """Load what :meth:`snapshot` returned (``ValueError`` for a foreign or newer snapshot)."""
        data = check_snapshot(state, self.name)
        watermark = data.get("watermark")
        self._watermark = float(watermark) if isinstance(watermark, (int, float)) else float("-inf")
        self._failures.restore(data["failures"])
        self._sequence.restore(data["sequence"])
        self._throttle.restore(data["throttle"])
        self._recent.load(
            [(str(key), _Tried(float(newest), list(pairs), int(burst), float(burst_end)))
             for key, newest, burst, burst_end, pairs in data.get("recent") or []],
            self._watermark,
        )

    def state_keys(self) -> int:
        """Addresses and users with failures in the window."""
        return len(self._failures)
