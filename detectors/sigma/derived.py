"""Derived ``trailguard.*`` fields: values computed from an event that Sigma rules test like fields.

Why it exists: some facts a rule needs are not in the record as a value a Sigma modifier can test —
"this bucket policy is public" needs the policy document parsed and evaluated
(:mod:`detectors.sigma.policy`); "the caller created this secret" needs a record of earlier
events (:mod:`detectors.sigma.creators`).  The compiler asks :func:`derived_resolver` for any
field path starting with ``trailguard.``; the resolver computes lazily — only when a candidate
rule tests the field — and at most once per event (a one-entry cache keyed by the record object),
so events without a policy, and rules that do not use these fields, cost nothing.

The creator record is state owned by the Sigma detector; the detector binds it here
(:func:`bind_creators`) before matching an event, which keeps the compiled predicates pure
functions of ``(record, bound state)``.  Field names and semantics: docs/rule-types.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from sigma.rule import SigmaDetection, SigmaDetectionItem

from detectors.sigma.creators import CreatorRecord
from detectors.sigma.external_accounts import REQUEST_FIELDS, request_resolver
from detectors.sigma.policy import PolicyVerdict, evaluate_policy
from detectors.sigma.values import MISSING, Resolver, Unsupported

if TYPE_CHECKING:
    from detectors.sigma.ruleset import RuleSet

__all__ = ["POLICY_FIELDS", "RESOURCE_FIELDS", "bind_creators", "derived_resolver", "policy_of", "uses_creators"]

#: eventName → (policy kind, where the document is, optional (field, value) the event must have).
_POLICY_SOURCES: Final[dict[str, tuple[str, tuple[str, ...], tuple[str, str] | None]]] = {
    "PutBucketPolicy": ("bucket", ("bucketPolicy",), None),
    "PutKeyPolicy": ("key", ("policy",), None),
    "CreateKey": ("key", ("policy",), None),
    "SetQueueAttributes": ("queue", ("attributes", "Policy"), None),
    "CreateQueue": ("queue", ("attributes", "Policy"), None),
    "SetTopicAttributes": ("topic", ("attributeValue",), ("attributeName", "Policy")),
    "CreateTopic": ("topic", ("attributes", "Policy"), None),
    "PutResourcePolicy": ("secret", ("resourcePolicy",), None),
    "SetRepositoryPolicy": ("repository", ("policyText",), None),
    "PutRegistryPolicy": ("repository", ("policyText",), None),
    "PutBackupVaultAccessPolicy": ("vault", ("policy",), None),
    "UpdateAssumeRolePolicy": ("trust", ("policyDocument",), None),
    "CreateRole": ("trust", ("assumeRolePolicyDocument",), None),
    "PutUserPolicy": ("identity", ("policyDocument",), None),
    "PutRolePolicy": ("identity", ("policyDocument",), None),
    "PutGroupPolicy": ("identity", ("policyDocument",), None),
    "CreatePolicy": ("identity", ("policyDocument",), None),
    "CreatePolicyVersion": ("identity", ("policyDocument",), None),
    "CreateElasticsearchDomain": ("domain", ("accessPolicies",), None),
    "UpdateElasticsearchDomainConfig": ("domain", ("accessPolicies",), None),
    "CreateDomain": ("domain", ("accessPolicies",), None),
    "UpdateDomainConfig": ("domain", ("accessPolicies",), None),
}

#: ``trailguard.policy.<name>`` → how to read it from the verdict (``MISSING`` when no policy).
POLICY_FIELDS: Final[dict[str, Callable[[str, PolicyVerdict], Any]]] = {
    "present": lambda _kind, _v: True,
    "kind": lambda kind, _v: kind,
    "error": lambda _kind, v: v.error if v.error is not None else MISSING,
    "public": lambda _kind, v: v.public,
    "public_actions": lambda _kind, v: v.public_actions,
    "external_accounts": lambda _kind, v: v.external_accounts,
    "external": lambda _kind, v: bool(v.external_accounts),
    "grants_actions": lambda _kind, v: v.grants_actions,
    "admin": lambda _kind, v: v.admin,
    "service_principals": lambda _kind, v: v.service_principals,
    "conditions": lambda _kind, v: v.conditions,
}
RESOURCE_FIELDS: Final = ("created_by_caller", "creators", "name")


def _lambda_permission(params: dict[str, Any]) -> dict[str, Any] | None:
    """Lambda ``AddPermission``: the one statement it adds, in policy form."""
    principal = params.get("principal")
    if not isinstance(principal, str):
        return None
    condition: dict[str, dict[str, Any]] = {}
    if isinstance(params.get("sourceArn"), str):
        condition.setdefault("ArnLike", {})["aws:SourceArn"] = params["sourceArn"]
    if isinstance(params.get("sourceAccount"), str):
        condition.setdefault("StringEquals", {})["aws:SourceAccount"] = params["sourceAccount"]
    if isinstance(params.get("principalOrgID"), str):
        condition.setdefault("StringEquals", {})["aws:PrincipalOrgID"] = params["principalOrgID"]
    who: Any = "*" if principal == "*" else (
        {"Service": principal} if principal.endswith(".amazonaws.com") else {"AWS": principal})
    statement = {"Effect": "Allow", "Principal": who, "Action": params.get("action") or "lambda:InvokeFunction",
                 "Resource": "*"}
    if condition:
        statement["Condition"] = condition
    return {"Statement": [statement]}


def _document(raw: dict[str, Any]) -> tuple[str, Any] | None:
    name = raw.get("eventName")
    if not isinstance(name, str):
        return None
    params = raw.get("requestParameters")
    if not isinstance(params, dict):
        return None
    if name.startswith("AddPermission"):
        document = _lambda_permission(params)
        return None if document is None else ("function", document)
    source = _POLICY_SOURCES.get(name)
    if source is None:
        return None
    kind, path, required = source
    if required is not None and params.get(required[0]) != required[1]:
        return None
    node: Any = params
    for step in path:
        node = node.get(step) if isinstance(node, dict) else None
    if node is None:
        return None
    return kind, node


def _own_account(raw: dict[str, Any]) -> str:
    account = raw.get("recipientAccountId")
    if not isinstance(account, str):
        identity = raw.get("userIdentity")
        account = identity.get("accountId") if isinstance(identity, dict) else None
    return account if isinstance(account, str) else ""


class _LastPolicy:
    """One-entry cache: the record last evaluated and its (kind, verdict) or ``None``."""

    __slots__ = ("raw", "result")

    def __init__(self) -> None:
        self.raw: dict[str, Any] | None = None
        self.result: tuple[str, PolicyVerdict] | None = None


_LAST = _LastPolicy()


def policy_of(raw: dict[str, Any]) -> tuple[str, PolicyVerdict] | None:
    """The event's policy kind and verdict, or ``None`` when it carries no policy (cached per record)."""
    if _LAST.raw is raw:
        return _LAST.result
    found = _document(raw)
    result = None if found is None else (found[0], evaluate_policy(found[1], _own_account(raw)))
    _LAST.raw, _LAST.result = raw, result
    return result


class _Bound:
    __slots__ = ("creators",)

    def __init__(self) -> None:
        self.creators: CreatorRecord | None = None


_BOUND = _Bound()


def bind_creators(creators: CreatorRecord | None) -> None:
    """Make ``creators`` the record ``trailguard.resource.*`` fields read (the detector calls this)."""
    _BOUND.creators = creators


def _resource_name(raw: dict[str, Any]) -> Any:
    names = CreatorRecord.names_of_read(raw)
    if names is None:
        return MISSING
    return names[0] if len(names) == 1 else names


def _resource_resolver(name: str) -> Resolver:
    if name == "name":
        return _resource_name

    def resolve(raw: dict[str, Any]) -> Any:
        creators = _BOUND.creators
        if creators is None:
            return MISSING
        writers = creators.writers_of_read(raw)
        if writers is None:
            return False if name == "created_by_caller" else MISSING
        if name == "creators":
            return writers
        return creators.caller_wrote(raw, writers)

    return resolve


def derived_resolver(field: str) -> Resolver:
    """The resolver of one ``trailguard.*`` field; :class:`Unsupported` for an unknown name."""
    parts = field.split(".")
    if len(parts) == 3 and parts[1] == "policy" and parts[2] in POLICY_FIELDS:
        read = POLICY_FIELDS[parts[2]]

        def resolve_policy(raw: dict[str, Any]) -> Any:
            found = policy_of(raw)
            if found is None:
                return MISSING
            return read(found[0], found[1])

        return resolve_policy
    if len(parts) == 3 and parts[1] == "resource" and parts[2] in RESOURCE_FIELDS:
        return _resource_resolver(parts[2])
    if len(parts) == 3 and parts[1] == "request" and parts[2] in REQUEST_FIELDS:
        return request_resolver(parts[2])
    known = [f"trailguard.policy.{name}" for name in POLICY_FIELDS] + [
        f"trailguard.resource.{name}" for name in RESOURCE_FIELDS] + [
        f"trailguard.request.{name}" for name in REQUEST_FIELDS]
    raise Unsupported(f"unknown derived field '{field}'; known: {', '.join(known)} (see docs/rule-types.md)")


def _fields(detection: SigmaDetection) -> list[str]:
    found: list[str] = []
    for child in detection.detection_items:
        if isinstance(child, SigmaDetectionItem):
            if child.field:
                found.append(child.field)
        else:
            found.extend(_fields(child))
    return found


def uses_creators(rules: RuleSet) -> bool:
    """True when some loaded rule tests a ``trailguard.resource.*`` field (the record is then fed)."""
    for compiled in rules.rules:
        rule = compiled.rule
        if rule is None:
            continue
        for detection in rule.detection.detections.values():
            if any(field.startswith("trailguard.resource.") for field in _fields(detection)):
                return True
    return False
