"""Credential exfiltration: temporary credentials of AWS compute used from outside AWS, in real time.

Why it exists: an SSRF, a leaked environment variable or a compromised container hands an attacker
the role credentials of an EC2 instance, a Lambda function or an ECS task.  Those credentials are
meant to be used only from inside AWS; their use from an address outside AWS's published ranges is
the signal GuardDuty reports as ``UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.OutsideAWS``
— here without its delay (MITRE ATT&CK T1552.005, "Unsecured Credentials: Cloud Instance Metadata
API", and exfiltration of the credential itself).

What is a *credential*: one set of temporary credentials of an assumed-role session, keyed by its
``userIdentity.accessKeyId`` (the session ARN when the record has none).  Keying by the access key
rather than the session ARN matters: IAM Identity Center users get the same session ARN (their
e-mail) for every credential set, whether used in CloudShell (inside AWS) or on their laptop.

When is it *compute* (any one reason suffices; all of them are listed in the evidence):

* ``ec2_instance_session``: the session name is an EC2 instance id (``i-`` + 8 or 17 hex digits);
* ``ec2_role_delivery``: ``userIdentity.sessionContext.ec2RoleDelivery`` is present (IMDS-issued);
* ``ecs_task_session`` (``session_name_heuristics``): the session name is an ECS task id, 32 hex
  digits, or a UUID as older ECS task ids were;
* ``compute_user_agent``: the credential was seen with a compute runtime's user agent
  (``awslambda-worker``, ``exec-env/AWS_Lambda_…``, ``exec-env/AWS_ECS_…``);
* ``issued_to:<service>``: an ``AssumeRole`` by a compute service in ``compute_services`` (Lambda,
  ECS tasks, EC2 …) issued this very access key;
* ``role_assumed_by:<service>``: the *role* was seen assumed by such a service within ``role_ttl``;
* ``service_role_path`` (``service_role_path_is_compute``): the role lives under ``/service-role/``,
  the path the console gives execution roles it creates (Lambda's default execution role, CodeBuild);
* ``configured``: the role ARN matches one of ``compute_role_patterns`` (``fnmatch`` globs).

Two findings:

* ``compute_credential_outside_aws``: a compute credential used from a public address outside AWS's
  ranges (``network_kind == "public"``) that is not an allowlisted egress (``is_allowlisted``);
* ``credential_moved_outside_aws`` (``network_change``): any credential whose first use was from
  inside AWS (an AWS-range or private/VPC-endpoint address, or issued to a compute service) and which
  is later used from outside.  Sightings through AWS service names (``cloudformation.amazonaws.com``)
  do not count as inside for credentials not known as compute: services call on a human's behalf with
  the human's own credential.

Calls an AWS service makes with the credential on its holder's behalf (``userIdentity.invokedBy``
set, e.g. EKS) are not sightings: their address is not where the credential is.  Both findings are
judged order-independently: outside uses that do not qualify yet are kept (the latest
four per credential) and re-judged when an earlier inside sighting or a compute reason arrives late.
Events older than the watermark are counted as late (``on_late``) and still judged.

Severity high; critical when an outside use succeeded with a write (``readOnly`` false and no
``errorCode``).  One alert per credential per ``throttle``; a later outside write that escalates the
severity is reported once more.  The next alert carries the suppressed count.

Parameters: ``compute_role_patterns`` (globs, default none), ``ignore_role_patterns`` (globs of role
ARNs never reported), ``compute_services`` (principals whose ``AssumeRole`` marks a compute role),
``session_name_heuristics`` (default true), ``service_role_path_is_compute`` (default true),
``network_change`` (default true), ``session_ttl`` (how long a credential is remembered, default
36 h), ``role_ttl`` (how long a learned compute role is remembered, default 30 d), ``throttle``
(default 12 h), ``max_networks`` (sightings kept per credential, default 16), ``max_keys`` (default
100,000 credentials; learned roles capped alike), plus ``enabled``/``severity``.

Known false positives: compute that legitimately egresses through a non-AWS address (on-premises
proxy, another cloud's NAT, a VPN concentrator outside AWS — allowlist it); developers who copy an
instance or task role credential to their laptop on purpose; tools naming their own sessions with
UUIDs (turn ``session_name_heuristics`` off or list the role in ``ignore_role_patterns``).  Not
detected: use from another AWS account's instance (inside AWS ranges: GuardDuty's ``InsideAWS``
variant needs the account's own address list).
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Annotated, Any, ClassVar, Final

from pydantic import BeforeValidator, Field

from detectors.alert import Alert, make_alert_id
from detectors.base import Detector, DetectorConfig, DetectorContext, StateKey
from detectors.event import Event, format_time
from detectors.resources import bounded, make_resource
from detectors.windows.store import SNAPSHOT_VERSION, KeyedState, check_snapshot

__all__ = ["CredentialExfiltration", "compute_reasons_of_name"]

_NEG_INF: Final = float("-inf")
_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_EC2_SESSION: Final = re.compile(r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
_ECS_SESSION: Final = re.compile(r"^(?:[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")
_COMPUTE_AGENT: Final = re.compile(r"awslambda-worker|exec-env/AWS_Lambda_|exec-env/AWS_ECS_")
#: Networks that count as "inside AWS" for a first sighting.
_INSIDE_FIRST: Final = frozenset({"aws", "private", "issued"})
_HIGH, _CRITICAL = 0, 1
#: Outside uses kept per credential while they do not qualify (yet); the latest are kept.
_MAX_PENDING: Final = 4


def _seconds(value: Any) -> Any:
    """``90``, ``"90s"``, ``"15m"``, ``"12h"``, ``"30d"`` → seconds (other values left for pydantic to refuse)."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(_seconds)]


def compute_reasons_of_name(session_name: str, *, heuristics: bool = True) -> list[str]:
    """The compute reasons a role session name alone gives (``ec2_instance_session``, ``ecs_task_session``)."""
    if _EC2_SESSION.match(session_name):
        return ["ec2_instance_session"]
    if heuristics and _ECS_SESSION.match(session_name):
        return ["ecs_task_session"]
    return []


class _Credential:
    """What is known about one credential (access key).

    ``sightings``: where it was used, ``address-or-service -> [first time, network kind, event id]``;
    ``pending``: outside uses not yet judged qualifying, ``[time, ip, event id, rank, event name, region]``.
    """

    __slots__ = ("agent", "alerted_at", "alerted_rank", "classified", "ip", "network", "newest", "pending",
                 "reasons", "role", "session", "sightings", "suppressed")

    def __init__(self, session: str, role: str, newest: float) -> None:
        self.session = session
        self.role = role
        self.newest = newest
        #: Why this is a compute credential (empty: not known as one); ``classified`` once looked at.
        self.reasons: list[str] = []
        self.classified = False
        self.sightings: dict[str, list[Any]] = {}
        self.pending: list[list[Any]] = []
        self.alerted_at: float | None = None
        self.alerted_rank = -1
        self.suppressed = 0
        #: Per-session memo (not state: rebuilt after a restore): the last user agent already
        #: checked for a compute runtime, and the last address with its network kind, so a
        #: session's repeated calls from one place cost no regex search and no enrichment call.
        self.agent: str | None = None
        self.ip: str | None = None
        self.network = ""

    def first_sighting(self) -> tuple[str, list[Any]] | None:
        """The earliest sighting (ties: inside first)."""
        if not self.sightings:
            return None
        return min(self.sightings.items(), key=lambda kv: (kv[1][0], kv[1][1] not in _INSIDE_FIRST))


def _newest(credential: _Credential) -> float:
    return credential.newest


def _role_seen(entry: list[Any]) -> float:
    return entry[0]


class CredentialExfiltration(Detector):
    """Reports compute role credentials (EC2, Lambda, ECS) used from outside AWS."""

    name: ClassVar[str] = "credential_exfiltration"
    #: State keyed by account (a session's AssumeRole and its uses meet in the role's account).
    state_key: ClassVar[StateKey | None] = "account"
    severity: ClassVar[str] = "high"
    tags: ClassVar[tuple[str, ...]] = ("attack.credential_access", "attack.t1552.005", "attack.exfiltration")
    runbook: ClassVar[str | None] = (
        "Revoke the role's active sessions (IAM console 'Revoke active sessions', an inline deny on "
        "aws:TokenIssueTime), find how the credential left the workload (SSRF to IMDS — enforce IMDSv2 —, "
        "leaked environment, compromised image), and review every call made from the outside address."
    )

    class Config(DetectorConfig):
        """Tuning for :class:`CredentialExfiltration`."""

        #: ``fnmatch`` globs of role ARNs whose sessions are compute credentials.
        compute_role_patterns: tuple[str, ...] = ()
        #: ``fnmatch`` globs of role ARNs never reported (e.g. a role meant to be used from outside).
        ignore_role_patterns: tuple[str, ...] = ()
        #: Principals whose ``AssumeRole`` calls issue compute credentials.
        compute_services: frozenset[str] = frozenset({
            "ec2.amazonaws.com", "lambda.amazonaws.com", "edgelambda.amazonaws.com",
            "ecs-tasks.amazonaws.com", "pods.eks.amazonaws.com", "batch.amazonaws.com",
            "codebuild.amazonaws.com", "glue.amazonaws.com", "sagemaker.amazonaws.com",
            "states.amazonaws.com", "apprunner.amazonaws.com", "tasks.apprunner.amazonaws.com",
        })
        #: Treat ECS-task-id-like session names (32 hex digits, UUIDs) as compute.
        session_name_heuristics: bool = True
        #: Treat roles under the ``/service-role/`` path as compute execution roles.
        service_role_path_is_compute: bool = True
        #: Also report any credential first used inside AWS and later from outside.
        network_change: bool = True
        #: How long (event time since its newest use) a credential is remembered.
        session_ttl: Seconds = Field(36 * 3600.0, gt=0)
        #: How long a role seen assumed by a compute service is remembered as a compute role.
        role_ttl: Seconds = Field(30 * 86400.0, gt=0)
        #: One alert per credential per this many seconds (unless the severity escalates).
        throttle: Seconds = Field(12 * 3600.0, gt=0)
        #: Sightings (addresses, service names) kept per credential.
        max_networks: int = Field(16, ge=2)
        #: Credentials (and learned roles) tracked at most.
        max_keys: int = Field(100_000, ge=1)

    config: Config

    def __init__(self, config: DetectorConfig, context: DetectorContext | None = None) -> None:
        super().__init__(config, context)
        on_evict = self.context.on_evict
        self._credentials: KeyedState[_Credential] = KeyedState(
            horizon=self.config.session_ttl, max_keys=self.config.max_keys, newest=_newest,
            on_evict=lambda n: on_evict(self.name, n),
        )
        #: role ARN → [last time assumed by a compute service, that service]
        self._roles: KeyedState[list[Any]] = KeyedState(
            horizon=self.config.role_ttl, max_keys=self.config.max_keys, newest=_role_seen,
            on_evict=lambda n: on_evict(self.name, n),
        )

    # -- events ------------------------------------------------------------------------------
    def on_event(self, event: Event) -> list[Alert] | None:
        """Learn compute credentials and roles; judge outside uses."""
        kind = event.identity_type
        if kind == "AssumedRole":
            return self._on_session_use(event)
        if kind == "AWSService" and event.event_name == "AssumeRole":
            return self._on_service_assume(event)
        return None

    def _late(self, event: Event) -> None:
        if event.time < self._credentials.watermark:
            self.context.on_late(self.name, 1)

    def _on_service_assume(self, event: Event) -> list[Alert] | None:
        """A compute service assumed a role: the role is compute, and so is the key it was issued."""
        service = event.get("userIdentity.invokedBy") or event.source_ip
        if service not in self.config.compute_services or event.error_code is not None:
            return None
        role = event.get("requestParameters.roleArn")
        if not isinstance(role, str) or not role:
            return None
        self._late(event)
        t = event.time
        seen = self._roles.get(role)
        if seen is None:
            self._roles.insert(role, [t, service])
        elif t >= seen[0]:
            seen[0], seen[1] = t, service
        key = event.get("responseElements.credentials.accessKeyId")
        session_name = event.get("requestParameters.roleSessionName")
        if not isinstance(key, str) or not key or not isinstance(session_name, str):
            return None
        account = role.split(":")[4] if role.count(":") >= 5 else ""
        partition = role.split(":")[1] if role.count(":") >= 5 else "aws"
        session = f"arn:{partition}:sts::{account}:assumed-role/{role.rsplit('/', 1)[-1]}/{session_name}"
        credential = self._credential(key, session, role, t)
        self._add_reason(credential, f"issued_to:{service}")
        self._sight(credential, service, t, "issued", event.event_id or "")
        # the issue event is the earliest possible sighting: outside uses held back may now qualify
        return self._judge(key, credential, event)

    def _on_session_use(self, event: Event) -> list[Alert] | None:
        session = event.principal
        role = event.role_arn or ""
        key = event.get("userIdentity.accessKeyId")
        if not isinstance(key, str) or not key:
            key = session
        self._late(event)
        t = event.time
        credential = self._credential(key, session, role, t)
        agent = event.user_agent
        if not credential.classified:
            self._classify(credential, event)
            credential.agent = agent
        elif agent != credential.agent:
            credential.agent = agent
            if "compute_user_agent" not in credential.reasons and _COMPUTE_AGENT.search(agent):
                self._add_reason(credential, "compute_user_agent")
        if event.get("userIdentity.invokedBy"):
            # an AWS service (EKS, Athena, CloudFormation ...) made this call with the credential on
            # the holder's behalf: its sourceIPAddress says where the service saw the request come
            # from, not where the credential is - never a sighting of its own
            return None
        ip = event.source_ip
        if ip and ip == credential.ip:
            network = credential.network  # enrichment is static: the same address, the same answer
        else:
            network = self._network_of(ip)
            credential.ip, credential.network = ip, network
        if network == "missing":
            return None
        self._sight(credential, ip, t, network, event.event_id or "")
        if network == "public":
            readonly = event.get("readOnly")
            rank = _CRITICAL if readonly is False and event.error_code is None else _HIGH
            pending = credential.pending
            pending.append([t, ip, event.event_id or "", rank, event.event_name, event.region])
            if len(pending) > _MAX_PENDING:
                del pending[0]
        return self._judge(key, credential, event)

    def _network_of(self, ip: str) -> str:
        """``network_kind`` of the address, or ``allowlisted`` for an allowlisted public/AWS one."""
        if not ip:
            return "missing"
        enricher = self.context.enricher
        network = enricher.network_kind(ip)
        allowlisted = getattr(enricher, "is_allowlisted", None)
        if allowlisted is not None and network in ("public", "aws") and allowlisted(ip):
            return "allowlisted"
        return network

    def _credential(self, key: str, session: str, role: str, t: float) -> _Credential:
        credential = self._credentials.get(key)
        if credential is None:
            credential = _Credential(session, role, t)
            self._credentials.insert(key, credential)
        elif t > credential.newest:
            credential.newest = t
        return credential

    @staticmethod
    def _add_reason(credential: _Credential, reason: str) -> None:
        if reason not in credential.reasons:
            credential.reasons.append(reason)

    def _classify(self, credential: _Credential, event: Event) -> None:
        """Find the compute reasons of a credential on its first sighting (they do not change)."""
        config = self.config
        role = credential.role
        reasons = credential.reasons
        session_name = credential.session.split("/", 2)[2] if credential.session.count("/") >= 2 else ""
        reasons.extend(compute_reasons_of_name(session_name, heuristics=config.session_name_heuristics))
        if event.get("userIdentity.sessionContext.ec2RoleDelivery") is not None:
            reasons.append("ec2_role_delivery")
        if _COMPUTE_AGENT.search(event.user_agent):
            reasons.append("compute_user_agent")
        if role:
            learned = self._roles.get(role, touch=False)
            if learned is not None:
                reasons.append(f"role_assumed_by:{learned[1]}")
            if config.service_role_path_is_compute and ":role/service-role/" in role:
                reasons.append("service_role_path")
            if any(fnmatchcase(role, p) for p in config.compute_role_patterns):
                reasons.append("configured")
        credential.classified = True

    def _sight(self, credential: _Credential, where: str, t: float, network: str, event_id: str) -> None:
        sightings = credential.sightings
        seen = sightings.get(where)
        if seen is None:
            if len(sightings) >= self.config.max_networks:
                latest = max(sightings, key=lambda k: sightings[k][0])
                if sightings[latest][0] <= t:
                    return  # full: keep the earliest sightings, they decide "first seen"
                del sightings[latest]
            sightings[where] = [t, network, event_id]
        elif t < seen[0]:
            seen[0], seen[2] = t, event_id

    def _judge(self, key: str, credential: _Credential, event: Event | None) -> list[Alert] | None:
        """Report the pending outside uses that qualify now (throttled per credential)."""
        if not credential.pending:
            return None
        role = credential.role
        if role and any(fnmatchcase(role, p) for p in self.config.ignore_role_patterns):
            credential.pending.clear()
            return None
        compute = bool(credential.reasons)
        first = credential.first_sighting()
        inside_first = first is not None and first[1][1] in _INSIDE_FIRST
        if not compute and not (self.config.network_change and inside_first):
            return None
        start = first[1][0] if first is not None else _NEG_INF
        qualifying = [p for p in credential.pending if compute or p[0] > start]
        if not qualifying:
            return None
        credential.pending = [p for p in credential.pending if p not in qualifying]
        best = max(qualifying, key=lambda p: (p[3], -p[0]))
        last = credential.alerted_at
        if last is not None and abs(best[0] - last) < self.config.throttle and best[3] <= credential.alerted_rank:
            credential.suppressed += len(qualifying)
            return None
        suppressed = credential.suppressed + len(qualifying) - 1
        credential.suppressed = 0
        credential.alerted_at = best[0]
        credential.alerted_rank = max(credential.alerted_rank, best[3]) if last is not None else best[3]
        return [self._alert(key, credential, best, compute, first, suppressed, event)]

    def _alert(self, key: str, credential: _Credential, use: list[Any], compute: bool,
               first: tuple[str, list[Any]] | None, suppressed: int, event: Event | None) -> Alert:
        t, ip, event_id, rank, event_name, region = use
        enricher = self.context.enricher
        geo = enricher.geo(ip)
        severity = self.effective_severity
        if rank == _CRITICAL:
            severity = "critical"
        finding = "compute_credential_outside_aws" if compute else "credential_moved_outside_aws"
        where = f"{geo.city}, {geo.country}" if geo and geo.city else (geo.country if geo else "")
        first_text = ""
        if first is not None:
            first_text = f"; first seen {format_time(first[1][0])} from {first[0]} ({first[1][1]})"
        what = "Compute role credential" if compute else "Credential first used inside AWS"
        role = f", role {credential.role}" if credential.role else ""
        summary = (
            f"{what} {credential.session} ({key}{role}) used from {ip}{f' ({where})' if where else ''} outside AWS: "
            f"{event_name}{' (a successful write)' if rank == _CRITICAL else ''}{first_text}."
        )
        first_evidence = None
        if first is not None:
            first_evidence = {"where": first[0], "network": first[1][1], "time": format_time(first[1][0]),
                              "event_id": first[1][2]}
        ids = sorted(i for i in (event_id, first[1][2] if first is not None else "") if i)
        account = credential.session.split(":")[4] if credential.session.count(":") >= 5 else ""
        resources = bounded([
            make_resource("iam_role", credential.role, account_id=account, detail="role of the session"),
            make_resource("role_session", credential.session, account_id=account,
                          detail=f"used outside AWS for {event_name}"),
            make_resource("access_key", key if key != credential.session else "", account_id=account,
                          detail="temporary credential"),
            make_resource("source_ip", ip, detail=f"outside AWS{f' ({where})' if where else ''}"),
        ])
        return Alert(
            detector=self.name,
            title="Compute role credentials used outside AWS" if compute
            else "Temporary credentials moved from inside AWS to outside",
            severity=severity,
            time=t,
            summary=summary,
            account_id=event.account_id if event is not None else account,
            region=region,
            principal=credential.session,
            source_ips=[ip],
            event_ids=ids,
            evidence={
                "finding": finding,
                "session": credential.session,
                "access_key_id": key if key != credential.session else "",
                "role_arn": credential.role,
                "compute_reasons": list(credential.reasons),
                "outside_ip": ip,
                "outside_event": event_name,
                "outside_time": format_time(t),
                "successful_write": rank == _CRITICAL,
                "geo": None if geo is None else {
                    "city": geo.city, "country": geo.country, "asn": geo.asn, "as_org": geo.as_org,
                },
                "geoip_attribution": (getattr(enricher, "attribution", "") or "") if geo is not None else "",
                "first_seen": first_evidence,
                "networks": sorted({s[1] for s in credential.sightings.values()}),
                "suppressed": suppressed,
            },
            tags=list(self.tags),
            runbook=self.runbook,
            entity=key,
            id="" if ids else make_alert_id(self.name, None, key, t, ip),
            resources=resources,
        )

    def on_watermark(self, watermark: float) -> None:
        """Forget credentials and learned roles past their TTL."""
        self._credentials.advance(watermark)
        self._roles.advance(watermark)
        return None

    # -- state -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Plain data: watermark, every live credential, every learned compute role."""
        wm = self._credentials.watermark
        return {
            "version": SNAPSHOT_VERSION,
            "kind": self.name,
            "watermark": None if wm == _NEG_INF else wm,
            "credentials": [
                [key, c.session, c.role, c.newest, list(c.reasons), c.classified,
                 [[where, *seen] for where, seen in c.sightings.items()],
                 [list(p) for p in c.pending], c.alerted_at, c.alerted_rank, c.suppressed]
                for key, c in self._credentials.items()
            ],
            "roles": [[role, seen[0], seen[1]] for role, seen in self._roles.items()],
        }

    def restore(self, state: Any) -> None:
        """Load :meth:`snapshot` output (``ValueError`` for a foreign or newer snapshot)."""
        data = check_snapshot(state, self.name)
        raw_wm = data.get("watermark")
        watermark = float(raw_wm) if isinstance(raw_wm, (int, float)) else _NEG_INF
        pairs: list[tuple[Any, _Credential]] = []
        for key, session, role, newest, reasons, classified, sightings, pending, alerted_at, rank, suppressed in (
            data.get("credentials") or []
        ):
            c = _Credential(str(session), str(role), float(newest))
            c.reasons = [str(r) for r in reasons]
            c.classified = bool(classified)
            c.sightings = {str(w): [float(t), str(n), str(i)] for w, t, n, i in sightings}
            c.pending = [[float(p[0]), str(p[1]), str(p[2]), int(p[3]), str(p[4]), str(p[5])] for p in pending]
            c.alerted_at = None if alerted_at is None else float(alerted_at)
            c.alerted_rank = int(rank)
            c.suppressed = int(suppressed)
            pairs.append((str(key), c))
        self._credentials.load(pairs, watermark)
        self._roles.load([(str(r), [float(t), str(s)]) for r, t, s in data.get("roles") or []], watermark)

    def state_keys(self) -> int:
        """Credentials plus learned compute roles."""
        return len(self._credentials) + len(self._roles)
