"""Console sign-in without MFA: a password alone opened the AWS console.

Why it exists: a password is phished, reused or guessed far more easily than a second factor is
stolen.  An IAM user (or, worse, root) that reaches the console with only a password is an account
one leaked password away from takeover, and a successful password-only sign-in is what a
credential-stuffing success looks like (MITRE ATT&CK T1078.004, Valid Accounts: Cloud Accounts).

What it reports: a ``ConsoleLogin`` (``signin.amazonaws.com``) with
``responseElements.ConsoleLogin == "Success"`` and ``additionalEventData.MFAUsed == "No"`` by

* an ``IAMUser`` — at the detector's severity (``high``), ``evidence.finding: iam_user_without_mfa``;
* ``Root`` — one level higher (``critical``), ``evidence.finding: root_without_mfa``.  The same
  event also raises ``root_activity``'s ``root_console_login``: the two say different things
  (root was used / root has no MFA) and are fixed differently.

Not reported:

* federated, SSO and assumed-role sign-ins (``AssumedRole``, ``FederatedUser``,
  ``SAMLUser``, ``IdentityCenterUser`` …) and IAM-user records carrying
  ``additionalEventData.SamlProviderArn``: MFA happens at the identity provider and CloudTrail
  always writes ``MFAUsed: No`` for them;
* failed sign-ins: the password was rejected before any second factor was asked for, so
  ``MFAUsed`` says nothing; repeated failures are a brute-force detector's business;
* records without ``MFAUsed`` (nothing to judge);
* principals whose ARN matches a glob in ``allowed_principals``.

Parameters: ``allowed_principals`` (fnmatch globs, case-sensitive, matched against the principal
ARN, e.g. ``arn:aws:iam::*:user/kiosk-*``), plus ``enabled``/``severity``; a ``severity``
override sets the IAM-user level and root stays one level above it.

Known false positives: break-glass IAM users deliberately kept without MFA, shared kiosk/service
console users — list them in ``allowed_principals`` (and fix them).
"""

from __future__ import annotations

import re
from fnmatch import translate
from typing import Any, ClassVar, Final

from detectors.alert import Alert, shift_severity
from detectors.base import Detector, DetectorConfig, DetectorContext
from detectors.event import Event

__all__ = ["ConsoleLoginWithoutMfa"]

_REPORTED_TYPES: Final = frozenset({"IAMUser", "Root"})



class ConsoleLoginWithoutMfa(Detector):
    """A successful password-only console sign-in by an IAM user or the root user."""

    name: ClassVar[str] = "console_login_without_mfa"
    severity: ClassVar[str] = "high"
    event_names: ClassVar[frozenset[str] | None] = frozenset({"ConsoleLogin"})
    event_sources: ClassVar[frozenset[str] | None] = frozenset({"signin.amazonaws.com"})
    tags: ClassVar[tuple[str, ...]] = ("attack.initial_access", "attack.t1078.004")
    runbook: ClassVar[str | None] = (
        "Ask the user whether they signed in from this address; if not, reset the password and "
        "revoke sessions. Either way enforce MFA (IAM policy denying actions without aws:MultiFactorAuthPresent)."
    )

    class Config(DetectorConfig):
        """Tuning for :class:`ConsoleLoginWithoutMfa`."""

        #: fnmatch globs (case-sensitive) of principal ARNs never reported.
        allowed_principals: tuple[str, ...] = ()

    config: Config

    def __init__(self, config: DetectorConfig, context: DetectorContext | None = None) -> None:
        super().__init__(config, context)
        patterns = self.config.allowed_principals
        self._allowed: re.Pattern[str] | None = (
            re.compile("|".join(f"(?:{translate(p)})" for p in patterns)) if patterns else None
        )

    def on_event(self, event: Event) -> list[Alert] | None:
        """Report a successful ``ConsoleLogin`` without MFA by an IAM user or root."""
        if event.event_name != "ConsoleLogin" or event.event_source != "signin.amazonaws.com":
            return None
        kind = event.identity_type
        if kind not in _REPORTED_TYPES:
            return None
        if event.get("responseElements.ConsoleLogin") != "Success" or event.error_code is not None:
            return None
        extra = event.raw.get("additionalEventData")
        if not isinstance(extra, dict) or extra.get("MFAUsed") != "No" or extra.get("SamlProviderArn"):
            return None
        principal = event.principal
        if self._allowed is not None and self._allowed.fullmatch(principal):
            return None
        return [self._alert(event, kind, extra)]

    def _alert(self, event: Event, kind: str, extra: dict[str, Any]) -> Alert:
        is_root = kind == "Root"
        severity = shift_severity(self.effective_severity, 1) if is_root else self.effective_severity
        who = "The root user" if is_root else f"IAM user {event.get('userIdentity.userName') or event.principal}"
        summary = (
            f"{who} signed in to the AWS console without MFA in account {event.account_id or 'unknown'} "
            f"({event.region or 'no region'}) from {event.source_ip or 'an unknown address'}."
        )
        evidence: dict[str, Any] = {
            "finding": "root_without_mfa" if is_root else "iam_user_without_mfa",
            "eventName": event.event_name,
            "identityType": kind,
            "MFAUsed": extra.get("MFAUsed"),
            "LoginTo": extra.get("LoginTo"),
            "MobileVersion": extra.get("MobileVersion"),
            "userAgent": event.user_agent,
            "attempt_failed": False,
        }
        return Alert.from_event(
            event,
            detector=self.name,
            title="Root console sign-in without MFA" if is_root else "Console sign-in without MFA",
            severity=severity,
            summary=summary,
            evidence=evidence,
            tags=list(self.tags),
            runbook=self.runbook,
        )
