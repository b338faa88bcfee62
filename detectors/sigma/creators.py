"""Who created or wrote each secret, parameter and function: so a rule can spare the creator.

Why it exists: the principal that created a secret or a parameter reading it back (Terraform, a CI
pipeline) is not an incident, but every "secret read" rule fired on it.  The Sigma detector feeds
every event to :meth:`CreatorRecord.observe`; a successful write (``CreateSecret``,
``PutParameter``, ``CreateFunction…`` …) records its principal against the resource, and the
derived field ``trailguard.resource.created_by_caller`` (:mod:`detectors.sigma.derived`) asks on a
read event whether the caller is one of the recorded writers.

"The same principal" is the role for assumed-role sessions (each CI run has a new session name
but the same role), else ``userIdentity.arn``.  Resources are keyed by account, region, kind and
name: an ARN is reduced to its name, a Secrets Manager ARN's random ``-XXXXXX`` suffix dropped,
an SSM parameter name's leading ``/`` normalised.  State is bounded (``max_resources``, least
recently written forgotten first; 4 writers per resource) and is plain data for the checkpoint.
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = ["SNAPSHOT_VERSION", "WRITE_EVENT_NAMES", "WRITE_EVENT_SOURCES", "CreatorRecord"]

SNAPSHOT_VERSION: Final = 1
MAX_WRITERS: Final = 4
#: Longest resource name or principal kept (longer ones are cut: state is bounded by bytes too).
MAX_TEXT: Final = 512

#: eventName (exact, or a prefix ending in ``*``) → (kind, request fields naming the resource); a field
#: written ``response:<name>`` is read from ``responseElements`` (an AMI's id exists only there).
_WRITES: Final = {
    "CreateSecret": ("secret", ("name",)),
    "PutSecretValue": ("secret", ("secretId",)),
    "UpdateSecret": ("secret", ("secretId",)),
    "PutParameter": ("parameter", ("name",)),
    "CreateFunction*": ("function", ("functionName",)),
    "UpdateFunctionCode*": ("function", ("functionName",)),
    "CreateBucket": ("bucket", ("bucketName",)),
    "CreateDBInstance": ("db_instance", ("dBInstanceIdentifier",)),
    "CreateDBSnapshot": ("db_snapshot", ("dBSnapshotIdentifier",)),
    "CreateDBClusterSnapshot": ("db_snapshot", ("dBClusterSnapshotIdentifier",)),
    "RegisterImage": ("image", ("response:imageId",)),
    "CreateImage": ("image", ("response:imageId",)),
    "CopyImage": ("image", ("response:imageId",)),
    "CreateLogGroup": ("log_group", ("logGroupName",)),
}
#: Events that read - or tear down - a tracked resource: "the caller created it" is asked on these.
_READS: Final = {
    "GetSecretValue": ("secret", ("secretId",)),
    "DescribeSecret": ("secret", ("secretId",)),
    "BatchGetSecretValue": ("secret", ("secretIdList",)),
    "GetParameter": ("parameter", ("name",)),
    "GetParameters": ("parameter", ("names",)),
    "GetParameterHistory": ("parameter", ("name",)),
    "GetFunction*": ("function", ("functionName",)),
    "GetFunctionConfiguration*": ("function", ("functionName",)),
    "DeleteBucket": ("bucket", ("bucketName",)),
    "DeleteDBInstance": ("db_instance", ("dBInstanceIdentifier",)),
    "DeleteDBSnapshot": ("db_snapshot", ("dBSnapshotIdentifier",)),
    "DeleteDBClusterSnapshot": ("db_snapshot", ("dBClusterSnapshotIdentifier",)),
    "DeregisterImage": ("image", ("imageId",)),
    "DeleteLogGroup": ("log_group", ("logGroupName",)),
}
#: The eventNames and eventSources of :data:`_WRITES`, for the Sigma detector's index: the record must
#: see every write even when no rule matches it (Lambda's API versions spelled out: the index is exact).
WRITE_EVENT_NAMES: Final = frozenset(
    [name for name in _WRITES if not name.endswith("*")]
    + ["CreateFunction", "CreateFunction20150331", "UpdateFunctionCode", "UpdateFunctionCode20150331v2"])
WRITE_EVENT_SOURCES: Final = frozenset({
    "secretsmanager.amazonaws.com", "ssm.amazonaws.com", "lambda.amazonaws.com", "s3.amazonaws.com",
    "rds.amazonaws.com", "ec2.amazonaws.com", "logs.amazonaws.com"})
_SECRET_SUFFIX: Final = re.compile(r"-[A-Za-z0-9]{6}$")


_Entry = tuple[str, tuple[str, ...]]
#: The ``*`` patterns of each table as a tuple of prefixes (startswith takes a tuple: one C call).
_PREFIXES: Final[dict[int, tuple[tuple[str, ...], tuple[_Entry, ...]]]] = {
    id(table): (tuple(p[:-1] for p in table if p.endswith("*")), tuple(e for p, e in table.items() if p.endswith("*")))
    for table in (_WRITES, _READS)}


def _lookup(table: dict[str, _Entry], name: str) -> _Entry | None:
    """The entry for ``name``: exact, else the first ``*`` pattern it starts with (every event asks)."""
    found = table.get(name)
    if found is not None:
        return found
    prefixes, entries = _PREFIXES[id(table)]
    if not name.startswith(prefixes):
        return None
    return next(entry for prefix, entry in zip(prefixes, entries, strict=True) if name.startswith(prefix))


def _name(kind: str, value: str) -> str:
    """The resource name a write and a read agree on (ARNs reduced, SSM slashes normalised)."""
    if value.startswith("arn:"):
        tail = ":".join(value.split(":")[5:])
        if kind == "secret":
            tail = _SECRET_SUFFIX.sub("", tail.removeprefix("secret:"))
        elif kind == "parameter":
            tail = tail.removeprefix("parameter")
        elif kind == "function":
            tail = tail.removeprefix("function:").split(":", 1)[0]
        value = tail
    if kind == "parameter":
        value = "/" + value.lstrip("/")
    return value[:MAX_TEXT]


def principal_of(raw: dict[str, Any]) -> str | None:
    """The principal a write is recorded under: the session's role, else the identity's ARN."""
    identity = raw.get("userIdentity")
    if not isinstance(identity, dict):
        return None
    context = identity.get("sessionContext")
    issuer = context.get("sessionIssuer") if isinstance(context, dict) else None
    role = issuer.get("arn") if isinstance(issuer, dict) else None
    if isinstance(role, str) and role:
        return role[:MAX_TEXT]
    arn = identity.get("arn")
    return arn[:MAX_TEXT] if isinstance(arn, str) and arn else None


def _names(raw: dict[str, Any], fields: tuple[str, ...], kind: str) -> list[str]:
    params, response = raw.get("requestParameters"), raw.get("responseElements")
    names: list[str] = []
    for field in fields:
        source = params
        if field.startswith("response:"):
            source, field = response, field.removeprefix("response:")
        value = source.get(field) if isinstance(source, dict) else None
        values = value if isinstance(value, list) else [value]
        names.extend(_name(kind, item) for item in values if isinstance(item, str) and item)
    return names


class CreatorRecord:
    """Bounded map ``(account, region, kind, name) -> principals that wrote it``."""

    def __init__(self, max_resources: int = 100_000) -> None:
        if max_resources < 1:
            raise ValueError(f"max_resources must be >= 1, got {max_resources}")
        self.max_resources = max_resources
        self._writers: dict[tuple[str, str, str, str], list[str]] = {}

    def __len__(self) -> int:
        return len(self._writers)

    @staticmethod
    def _scope(raw: dict[str, Any]) -> tuple[str, str]:
        account = raw.get("recipientAccountId")
        region = raw.get("awsRegion")
        return (account if isinstance(account, str) else ""), (region if isinstance(region, str) else "")

    def observe(self, raw: dict[str, Any]) -> None:
        """Record the writer if ``raw`` is a successful write of a tracked resource."""
        name = raw.get("eventName")
        if not isinstance(name, str) or raw.get("errorCode"):
            return
        entry = _lookup(_WRITES, name)
        if entry is None:
            return
        principal = principal_of(raw)
        if principal is None:
            return
        kind, fields = entry
        account, region = self._scope(raw)
        for resource in _names(raw, fields, kind):
            key = (account, region, kind, resource)
            writers = self._writers.pop(key, [])
            if principal in writers:
                writers.remove(principal)
            writers.append(principal)
            del writers[:-MAX_WRITERS]
            self._writers[key] = writers  # re-inserted: most recently written last
        while len(self._writers) > self.max_resources:
            del self._writers[next(iter(self._writers))]

    def writers_of_read(self, raw: dict[str, Any]) -> list[str] | None:
        """The writers of the resources a read event names (all of them), or ``None`` if not a known read.

        For a read of several resources, only writers common to all of them are returned: the
        caller "created what it reads" only when it wrote every one.
        """
        name = raw.get("eventName")
        entry = _lookup(_READS, name) if isinstance(name, str) else None
        if entry is None:
            return None
        kind, fields = entry
        account, region = self._scope(raw)
        common: list[str] | None = None
        for resource in _names(raw, fields, kind):
            writers = self._writers.get((account, region, kind, resource))
            if writers is None:
                return None
            common = list(writers) if common is None else [w for w in common if w in writers]
        return common

    @staticmethod
    def names_of_read(raw: dict[str, Any]) -> list[str] | None:
        """The normalised names of the resources a read event names (sorted), or ``None``.

        The same secret read by ARN and by name gives the same name, so a first-read rule does not
        take the second spelling for a new secret.
        """
        name = raw.get("eventName")
        entry = _lookup(_READS, name) if isinstance(name, str) else None
        if entry is None:
            return None
        names = sorted(set(_names(raw, entry[1], entry[0])))
        return names or None

    @staticmethod
    def caller_wrote(raw: dict[str, Any], writers: list[str]) -> bool:
        """True when the principal of ``raw`` is one of ``writers``."""
        principal = principal_of(raw)
        return principal is not None and principal in writers

    def snapshot(self) -> dict[str, Any]:
        """Plain data for the checkpoint, oldest write first."""
        return {"version": SNAPSHOT_VERSION, "resources": [[*key, writers] for key, writers in self._writers.items()]}

    def restore(self, data: Any) -> None:
        """Load :meth:`snapshot`; ``ValueError`` for data that is not one (or is newer)."""
        if not isinstance(data, dict) or not isinstance(data.get("version"), int):
            raise ValueError("creator record snapshot must be a mapping with an integer 'version'")
        if data["version"] > SNAPSHOT_VERSION:
            raise ValueError(f"creator record snapshot has version {data['version']}, newer than {SNAPSHOT_VERSION}")
        restored: dict[tuple[str, str, str, str], list[str]] = {}
        for account, region, kind, name, writers in data.get("resources") or []:
            restored[(str(account), str(region), str(kind), str(name))] = [str(w) for w in writers][-MAX_WRITERS:]
        while len(restored) > self.max_resources:
            del restored[next(iter(restored))]
        self._writers = restored
