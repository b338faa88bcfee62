"""One CloudTrail record, read sparsely and cheaply.

CloudTrail records miss fields all the time, so every read goes through one sparse-safe accessor
(:meth:`Event.get`) that returns a default instead of raising.  The raw ``dict`` produced by
``orjson.loads`` is kept as it is: nothing is copied or converted on the hot path.  The few
normalised fields every detector needs (principal, account, region, source IP and its kind, error
code) are computed lazily, once, and cached in slots.
"""

from __future__ import annotations

import hashlib
import ipaddress
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final

__all__ = [
    "IP_MISSING",
    "IP_PRIVATE",
    "IP_PUBLIC",
    "IP_SERVICE",
    "MAX_EVENT_TIME",
    "MAX_KEY_CHARS",
    "MIN_EVENT_TIME",
    "Event",
    "InvalidEvent",
    "bounded_key",
    "classify_source_ip",
    "format_time",
    "get_path",
    "parse_event_time",
]

_UNSET: Final = object()

IP_PUBLIC: Final = "public"
IP_PRIVATE: Final = "private"
IP_SERVICE: Final = "service"  # "ec2.amazonaws.com", "AWS Internal", anything that is not an address
IP_MISSING: Final = "missing"

#: The largest record (serialised bytes) trailguard accepts; CloudTrail's own limit is far below.
MAX_RECORD_BYTES: Final = 1 << 20

#: Event times accepted, in UTC epoch seconds: 1970-01-01 up to the end of year 9999.  Anything
#: outside (year 1 with a positive offset, year 9999 with a negative one) cannot be formatted in
#: UTC, so an alert about it could never be encoded: it is rejected at the edge as bad_event_time.
MIN_EVENT_TIME: Final = 0.0
MAX_EVENT_TIME: Final = 253402300799.0

#: Longest identity key (eventID, principal, account id) kept as is; longer ones are cut and
#: suffixed with a hash (see :func:`bounded_key`), so state is bounded by bytes, not only by keys.
MAX_KEY_CHARS: Final = 256


class InvalidEvent(ValueError):
    """A record that is not a usable CloudTrail event; ``reason`` is a fixed metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@lru_cache(maxsize=4096)
def _split(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def get_path(record: Any, path: str, default: Any = None) -> Any:
    """Read a dotted path (``userIdentity.sessionContext.sessionIssuer.arn``) from nested dicts.

    Returns ``default`` when any step is missing or is not a mapping.  Lists are indexed by a
    numeric step (``resources.0.ARN``).
    """
    node = record
    for step in _split(path):
        if isinstance(node, dict):
            node = node.get(step, _UNSET)
            if node is _UNSET:
                return default
        elif isinstance(node, list) and step.isdigit():
            index = int(step)
            if index >= len(node):
                return default
            node = node[index]
        else:
            return default
    return default if node is None else node


@lru_cache(maxsize=65536)
def parse_event_time(value: str) -> float:
    """Parse CloudTrail's ``eventTime`` (``2023-07-10T11:45:12Z``) to epoch seconds (UTC).

    Cached: CloudTrail timestamps have one-second resolution and bursts share them.
    """
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("eventTime has no time zone")
    epoch = moment.timestamp()
    if not MIN_EVENT_TIME <= epoch <= MAX_EVENT_TIME:
        raise ValueError("outside the supported range (1970-01-01 to 9999-12-31 in UTC)")
    return epoch


def bounded_key(value: str, limit: int = MAX_KEY_CHARS) -> str:
    """``value`` itself when at most ``limit`` characters, else its head plus a hash of the whole.

    Attacker-controlled strings become state keys (dedupe ids, principals, accounts, addresses);
    a 300 KB ``principalId`` must cost a few hundred bytes, and two long values that differ only
    at the end must still be two keys.
    """
    if len(value) <= limit:
        return value
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
    return f"{value[: limit - 27]}~h:{digest}"


@lru_cache(maxsize=65536)
def classify_source_ip(value: str | None) -> str:
    """Tell a real address from the AWS service names CloudTrail puts in ``sourceIPAddress``.

    Returns one of ``public``, ``private`` (private, loopback, link-local, reserved, shared
    address space), ``service`` (``ec2.amazonaws.com``, ``AWS Internal``, any non-address) or
    ``missing``.  AWS's own published ranges are told apart later, by enrichment.
    """
    if not value:
        return IP_MISSING
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return IP_SERVICE
    if address.is_global and not address.is_multicast:
        return IP_PUBLIC
    return IP_PRIVATE


def _principal_of(identity: Any) -> tuple[str, str | None]:
    """Return (stable principal key, role ARN or None) for every ``userIdentity.type``."""
    if not isinstance(identity, dict):
        return "unknown", None
    kind = identity.get("type")
    arn = identity.get("arn")
    account = identity.get("accountId") or ""
    if kind == "Root":
        return (arn if isinstance(arn, str) and arn else f"arn:aws:iam::{account}:root"), None
    if kind == "IAMUser":
        if isinstance(arn, str) and arn:
            return arn, None
        return f"arn:aws:iam::{account}:user/{identity.get('userName') or identity.get('principalId')}", None
    if kind == "AssumedRole":
        role = get_path(identity, "sessionContext.sessionIssuer.arn")
        role = role if isinstance(role, str) and role else None
        if isinstance(arn, str) and arn:
            return arn, role
        return f"assumed-role:{identity.get('principalId') or 'unknown'}", role
    if kind == "FederatedUser":
        role = get_path(identity, "sessionContext.sessionIssuer.arn")
        if isinstance(arn, str) and arn:
            return arn, role if isinstance(role, str) else None
        return f"federated-user:{identity.get('principalId') or 'unknown'}", None
    if kind == "AWSService":
        return f"service:{identity.get('invokedBy') or 'unknown'}", None
    if kind == "AWSAccount":
        return f"aws-account:{account or 'unknown'}:{identity.get('principalId') or ''}", None
    if kind in ("SAMLUser", "WebIdentityUser"):
        provider = identity.get("identityProvider") or ""
        return f"{kind.lower()}:{provider}:{identity.get('userName') or identity.get('principalId')}", None
    if kind in ("IdentityCenterUser", "Directory", "Unknown"):
        name = (
            get_path(identity, "onBehalfOf.userId")
            or identity.get("userName")
            or identity.get("principalId")
            or "unknown"
        )
        return f"{kind.lower()}:{name}", None
    if isinstance(arn, str) and arn:
        return arn, None
    return f"{kind or 'unknown'}:{identity.get('principalId') or identity.get('userName') or 'unknown'}", None


class Event:
    """A validated CloudTrail record with its event time parsed once and lazy normalised fields.

    ``raw`` is the dict exactly as decoded; detectors read it through :meth:`get`.
    """

    __slots__ = (
        "_account_id",
        "_error_code",
        "_identity_type",
        "_ip_kind",
        "_principal",
        "_region",
        "_role_arn",
        "_source_ip",
        "event_id",
        "event_name",
        "event_source",
        "origin",
        "raw",
        "time",
    )

    def __init__(self, raw: dict[str, Any], origin: str | None = None) -> None:
        """Validate ``raw`` as a CloudTrail record; raise :class:`InvalidEvent` with a reason if not."""
        if not isinstance(raw, dict):
            raise InvalidEvent("not_an_object", f"record is a {type(raw).__name__}, not an object")
        event_time = raw.get("eventTime")
        name = raw.get("eventName")
        if event_time is None or name is None:
            missing = "eventTime" if event_time is None else "eventName"
            raise InvalidEvent("missing_field", f"record has no {missing}")
        if not isinstance(event_time, str) or not isinstance(name, str):
            raise InvalidEvent("wrong_type", "eventTime and eventName must be strings")
        try:
            self.time = parse_event_time(event_time)
        except ValueError as error:
            raise InvalidEvent("bad_event_time", f"eventTime {event_time[:40]!r}: {error}") from None
        source = raw.get("eventSource")
        if source is not None and not isinstance(source, str):
            raise InvalidEvent("wrong_type", "eventSource must be a string")
        event_id = raw.get("eventID")
        if event_id is not None and not isinstance(event_id, str):
            raise InvalidEvent("wrong_type", "eventID must be a string")
        self.raw = raw
        self.event_name: str = name
        self.event_source: str = source or ""
        self.event_id: str | None = (
            event_id if event_id is None or len(event_id) <= MAX_KEY_CHARS else bounded_key(event_id))
        self.origin = origin
        self._principal: Any = _UNSET
        self._role_arn: Any = _UNSET
        self._account_id: Any = _UNSET
        self._identity_type: Any = _UNSET
        self._ip_kind: Any = _UNSET
        self._region: Any = _UNSET
        self._source_ip: Any = _UNSET
        self._error_code: Any = _UNSET

    def get(self, path: str, default: Any = None) -> Any:
        """Sparse-safe read of a dotted path; never raises on missing or oddly typed fields."""
        if "." not in path:
            value = self.raw.get(path)
            return default if value is None else value
        return get_path(self.raw, path, default)

    # -- normalised fields -------------------------------------------------------------------
    def _resolve_principal(self) -> None:
        principal, role = _principal_of(self.raw.get("userIdentity"))
        if len(principal) > MAX_KEY_CHARS:
            principal = bounded_key(principal)
        if role is not None and len(role) > MAX_KEY_CHARS:
            role = bounded_key(role)
        self._principal, self._role_arn = principal, role

    @property
    def principal(self) -> str:
        """A stable identity key: user/role-session/federated ARN, ``service:…``, root ARN."""
        if self._principal is _UNSET:
            self._resolve_principal()
        return self._principal

    @property
    def role_arn(self) -> str | None:
        """For assumed-role (and federated) sessions, the ARN of the role that issued the session."""
        if self._principal is _UNSET:
            self._resolve_principal()
        return self._role_arn

    @property
    def identity_type(self) -> str:
        """``userIdentity.type`` (``Root``, ``IAMUser``, ``AssumedRole`` …) or ``""``.

        Cached: several detectors and the Sigma index read it for every event.
        """
        kind = self._identity_type
        if kind is _UNSET:
            identity = self.raw.get("userIdentity")
            kind = identity.get("type") if isinstance(identity, dict) else None
            kind = self._identity_type = kind if isinstance(kind, str) else ""
        return kind

    @property
    def account_id(self) -> str:
        """The account the event happened in (``recipientAccountId``, else the identity's account)."""
        if self._account_id is _UNSET:
            account = self.raw.get("recipientAccountId") or get_path(self.raw, "userIdentity.accountId")
            if not isinstance(account, str):
                account = ""
            elif len(account) > MAX_KEY_CHARS:
                account = bounded_key(account)
            self._account_id = account
        return self._account_id

    @property
    def region(self) -> str:
        """``awsRegion`` or ``""`` (cached: most detectors and every alert read it)."""
        value = self._region
        if value is _UNSET:
            value = self.raw.get("awsRegion")
            value = self._region = value if isinstance(value, str) else ""
        return value

    @property
    def source_ip(self) -> str:
        """``sourceIPAddress`` as given (may be a service name); ``""`` when absent; bounded in size.

        Cached: the address kind, enrichment and several detectors read it for every event.
        """
        value = self._source_ip
        if value is _UNSET:
            value = self.raw.get("sourceIPAddress")
            if not isinstance(value, str):
                value = ""
            elif len(value) > MAX_KEY_CHARS:
                value = bounded_key(value)
            self._source_ip = value
        return value

    @property
    def source_ip_kind(self) -> str:
        """``public``, ``private``, ``service`` or ``missing``: see :func:`classify_source_ip`."""
        if self._ip_kind is _UNSET:
            self._ip_kind = classify_source_ip(self.source_ip or None)
        return self._ip_kind

    @property
    def real_source_ip(self) -> str | None:
        """The source address when it is a real IP (public or private), else ``None``."""
        kind = self.source_ip_kind
        return self.source_ip if kind in (IP_PUBLIC, IP_PRIVATE) else None

    @property
    def error_code(self) -> str | None:
        """``errorCode`` or ``None`` when the call succeeded (cached: the failure flag of most detectors)."""
        value = self._error_code
        if value is _UNSET:
            value = self.raw.get("errorCode")
            value = self._error_code = value if isinstance(value, str) and value else None
        return value

    @property
    def user_agent(self) -> str:
        """``userAgent`` or ``""``."""
        value = self.raw.get("userAgent")
        return value if isinstance(value, str) else ""

    @property
    def time_iso(self) -> str:
        """The event time as RFC 3339 UTC with a ``Z`` suffix."""
        return format_time(self.time)

    def __repr__(self) -> str:
        return f"Event({self.event_source}/{self.event_name} id={self.event_id} t={self.time_iso})"


def format_time(epoch: float) -> str:
    """Epoch seconds → ``2023-07-10T11:45:12Z`` (milliseconds kept when present)."""
    moment = datetime.fromtimestamp(epoch, UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
