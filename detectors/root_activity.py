"""Root user activity: any console sign-in or API call made with an account's root credentials.

Why it exists: the root user cannot be limited by IAM policies (and, in a management account, not
by SCPs either), so AWS and the CIS Foundations Benchmark (3.3 "monitor usage of root") ask that
it is never used day to day.  Any use is either a rare, known break-glass task or stolen
credentials; both deserve a human look.

What it reports (``evidence.finding``):

* ``root_console_login`` — a root ``ConsoleLogin`` that did not fail.  Severity: the detector's
  (``high``).
* ``root_sign_in_failed`` — a failed root sign-in step: ``ConsoleLogin`` with ``errorMessage``
  ("Failed authentication") or ``responseElements.ConsoleLogin == "Failure"``, and any other
  ``signin.amazonaws.com`` step by root that failed (``PasswordUpdated``, ``CheckMfa`` …).
  One level lower (``medium``), ``evidence.attempt_failed: true``: someone knows the root e-mail
  address, which is worth knowing but is not a compromise.
* ``root_activity`` — any other call by root, console or API (``high``).  When the call failed
  (``errorCode`` present) it is still reported, one level lower and with ``attempt_failed: true``:
  the request carried a valid root signature, which is the signal, even if the call was refused.

Not reported:

* calls an AWS service made on root's behalf: ``eventType == "AwsServiceEvent"``,
  ``userIdentity.invokedBy`` naming a service, or ``sourceIPAddress`` that is a service name
  (``AWS Internal``, ``*.amazonaws.com``).  ``invokedBy`` of ``signin.amazonaws.com`` or
  ``console.amazonaws.com`` with a real source address is *not* excluded: that is how CloudTrail
  records root clicking in the console (e.g. ``CreateAccessKey`` on "My security credentials").
* event names in ``ignore_event_names``; read-only calls when ``ignore_read_only`` is set.

Parameters: ``ignore_event_names`` (exact eventNames, default none), ``ignore_read_only``
(default ``False``: a root key enumerating the account is how a thief starts), plus the common
``enabled``/``severity``.  A ``severity`` override sets the top level; the lower levels follow it.

Known false positives: planned break-glass work and the few tasks only root can do (changing the
support plan, closing the account, restoring a locked-out S3 bucket policy, enabling MFA delete);
``CreateServiceLinkedRole`` calls some consoles make as root.  Silence them with
``ignore_event_names`` rather than disabling the detector.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

from detectors.alert import Alert, shift_severity
from detectors.base import Detector, DetectorConfig
from detectors.event import Event

__all__ = ["RootActivity"]

#: The console front-ends that appear in ``invokedBy`` when root itself acts in the console.
_CONSOLE_FRONT_ENDS: Final = frozenset({"signin.amazonaws.com", "console.amazonaws.com"})
_SIGNIN_SOURCE: Final = "signin.amazonaws.com"



def _is_service_name(source_ip: str) -> bool:
    """``AWS Internal`` or an AWS service endpoint name, as CloudTrail writes in sourceIPAddress."""
    return source_ip == "AWS Internal" or source_ip.endswith(".amazonaws.com")


class RootActivity(Detector):
    """Every console sign-in or API call by the root user that a human (or a thief) made."""

    name: ClassVar[str] = "root_activity"
    severity: ClassVar[str] = "high"
    tags: ClassVar[tuple[str, ...]] = (
        "attack.initial_access",
        "attack.privilege_escalation",
        "attack.t1078.004",
    )
    runbook: ClassVar[str | None] = (
        "Confirm with the account owner that root was used on purpose; if not, reset the root "
        "password, rotate/delete root access keys, check root MFA, review everything root did."
    )

    class Config(DetectorConfig):
        """Tuning for :class:`RootActivity`."""

        #: eventNames never reported (exact match), e.g. ``CreateServiceLinkedRole``.
        ignore_event_names: frozenset[str] = frozenset()
        #: Skip calls CloudTrail marks ``readOnly: true``.
        ignore_read_only: bool = False

    config: Config

    def on_event(self, event: Event) -> list[Alert] | None:
        """Report ``event`` when it was made by root itself (see the module docstring)."""
        identity = event.raw.get("userIdentity")
        if not isinstance(identity, dict) or identity.get("type") != "Root":
            return None
        if self._made_by_service(event, identity):
            return None
        name = event.event_name
        config = self.config
        if name in config.ignore_event_names:
            return None
        if config.ignore_read_only and event.raw.get("readOnly") is True:
            return None
        return [self._alert(event)]

    @staticmethod
    def _made_by_service(event: Event, identity: dict[str, Any]) -> bool:
        if event.raw.get("eventType") == "AwsServiceEvent":
            return True
        invoked_by = identity.get("invokedBy")
        if invoked_by and invoked_by not in _CONSOLE_FRONT_ENDS:
            return True
        return _is_service_name(event.source_ip)

    def _alert(self, event: Event) -> Alert:
        name = event.event_name
        top = self.effective_severity
        error_code = event.error_code
        error_message = event.get("errorMessage")
        evidence: dict[str, Any] = {
            "eventName": name,
            "eventSource": event.event_source,
            "eventType": event.get("eventType"),
            "userAgent": event.user_agent,
            "readOnly": event.raw.get("readOnly"),
        }
        where = f"account {event.account_id or 'unknown'} ({event.region or 'no region'})"
        source = event.source_ip or "an unknown address"
        if event.event_source == _SIGNIN_SOURCE:
            outcome = event.get(f"responseElements.{name}")
            failed = outcome == "Failure" or error_code is not None or error_message is not None
            evidence["outcome"] = outcome
            if name == "ConsoleLogin":
                evidence["MFAUsed"] = event.get("additionalEventData.MFAUsed")
                evidence["LoginTo"] = event.get("additionalEventData.LoginTo")
        else:
            failed = error_code is not None
        if error_code is not None:
            evidence["errorCode"] = error_code
        if error_message is not None:
            evidence["errorMessage"] = error_message
        evidence["attempt_failed"] = failed

        if event.event_source == _SIGNIN_SOURCE and failed:
            finding, severity = "root_sign_in_failed", shift_severity(top, -1)
            title = "Failed root user sign-in"
            summary = f"A {name} sign-in step for the root user of {where} failed, from {source}."
        elif name == "ConsoleLogin":
            finding, severity = "root_console_login", top
            title = "Root user signed in to the console"
            summary = f"The root user of {where} signed in to the AWS console from {source}."
        else:
            finding = "root_activity"
            severity = shift_severity(top, -1) if failed else top
            title = "Root user API call" + (" (refused)" if failed else "")
            verb = f"tried {name} and got {error_code}" if failed else f"called {name}"
            summary = f"The root user of {where} {verb} ({event.event_source}) from {source}."
        evidence["finding"] = finding
        return Alert.from_event(
            event,
            detector=self.name,
            title=title,
            severity=severity,
            summary=summary,
            evidence=evidence,
            tags=list(self.tags),
            runbook=self.runbook,
        )
