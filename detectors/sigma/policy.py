"""IAM policy documents evaluated the way IAM does, for rules that judge who a policy lets in.

Why it exists: a rule that regexes a policy's JSON text is wrong both ways — any ``Condition``
anywhere silenced the public-resource rule, and adding the caller's own account next to a foreign
one silenced the external-account rule.  This module parses a policy (JSON text or an object) and
judges each statement: ``Effect``, ``Principal``/``NotPrincipal`` in all forms, ``Action``/
``NotAction`` with wildcards, ``Resource``/``NotResource``, and whether its ``Condition`` really
restricts who can use the grant.  A ``Deny`` never grants; it takes a public grant back only when
it applies to everyone, covers the grant's actions and is conditioned only on negated restricting
keys ("deny everyone outside my organisation").  The result feeds the derived ``trailguard.policy.*``
fields (:mod:`detectors.sigma.derived`); the semantics are documented in docs/rule-types.md.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

__all__ = ["PolicyVerdict", "evaluate_policy", "restricts"]

#: Condition keys that limit *who* (which account, organisation, network, principal) can use a grant.
RESTRICTING_KEYS: Final = frozenset({
    "aws:sourceaccount", "aws:sourcearn", "aws:sourceowner", "aws:principalaccount", "aws:principalarn",
    "aws:principalorgid", "aws:principalorgpaths", "aws:resourceorgid", "aws:sourceorgid",
    "aws:sourceorgpaths", "aws:sourcevpc", "aws:sourcevpce", "aws:sourceip", "aws:vpcsourceip",
    "aws:userid", "aws:username", "aws:principalservicename", "kms:calleraccount",
    "s3:dataaccesspointaccount", "s3:dataaccesspointarn", "sns:endpoint",
})
#: Positive-match operators: the key must have one of the listed values.
_POSITIVE: Final = frozenset({"stringequals", "stringequalsignorecase", "stringlike", "arnequals", "arnlike",
                              "ipaddress"})
#: Negated operators: in a Deny, "deny everyone who is not X" restricts the policy as a whole.
_NEGATED: Final = frozenset({"stringnotequals", "stringnotequalsignorecase", "stringnotlike", "arnnotequals",
                             "arnnotlike", "notipaddress"})
_ACCOUNT: Final = re.compile(r"[0-9]{12}")
_ALL_ACTIONS: Final = frozenset({"*", "*:*"})


@dataclass(slots=True)
class PolicyVerdict:
    """What a policy document grants, as the derived fields expose it."""

    error: str | None = None
    public: bool = False
    public_actions: list[str] = field(default_factory=list)
    external_accounts: list[str] = field(default_factory=list)
    grants_actions: list[str] = field(default_factory=list)
    admin: bool = False
    service_principals: list[str] = field(default_factory=list)
    #: Condition keys of public grants judged not restricting (for the alert's reader).
    conditions: list[str] = field(default_factory=list)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def _split_operator(operator: str) -> tuple[str, bool]:
    """(base operator lowercased, is an ``…IfExists`` form); ``ForAnyValue:``/``ForAllValues:`` removed."""
    name = operator.lower()
    for prefix in ("foranyvalue:", "forallvalues:"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if name.endswith("ifexists"):
        return name[: -len("ifexists")], True
    return name, False


def _real_values(values: Any) -> bool:
    listed = _strings(values) if not isinstance(values, (int, float, bool)) else [str(values)]
    return bool(listed) and all(value.strip() not in ("", "*") for value in listed)


def restricts(condition: Any, *, negated: bool = False) -> tuple[bool, list[str]]:
    """(does this ``Condition`` block restrict who can use the statement, the keys that did not).

    ``negated``: judge it as a Deny's condition, where only negated operators on restricting keys
    count ("deny everyone outside X").  In an Allow, one positive restricting test is enough.
    """
    if not isinstance(condition, dict) or not condition:
        return False, []
    loose: list[str] = []
    restricted = False
    only_restricting = True
    for operator, tests in condition.items():
        if not isinstance(operator, str) or not isinstance(tests, dict):
            only_restricting = False
            continue
        base, if_exists = _split_operator(operator)
        for key, values in tests.items():
            name = key.lower() if isinstance(key, str) else ""
            wanted = _NEGATED if negated else _POSITIVE
            if name in RESTRICTING_KEYS and base in wanted and not if_exists and _real_values(values):
                restricted = True
            else:
                only_restricting = False
                loose.append(name)
    if negated:
        return restricted and only_restricting, loose
    return restricted, loose


def _principals(statement: dict[str, Any]) -> tuple[bool, list[str], list[str]]:
    """(anyone, AWS principals, service principals) of a statement's ``Principal``/``NotPrincipal``."""
    if "NotPrincipal" in statement:
        return True, [], []  # Allow with NotPrincipal: everyone except the listed ones
    principal = statement.get("Principal")
    if principal == "*":
        return True, [], []
    if not isinstance(principal, dict):
        return False, [], []
    aws = _strings(principal.get("AWS"))
    anyone = "*" in aws or "*" in _strings(principal.get("CanonicalUser"))
    services = [service.lower() for service in _strings(principal.get("Service"))]
    return anyone, [entry for entry in aws if entry != "*"], services


def _account_of(principal: str) -> str | None:
    if _ACCOUNT.fullmatch(principal):
        return principal
    parts = principal.split(":")
    if len(parts) >= 6 and parts[0] == "arn" and _ACCOUNT.fullmatch(parts[4]):
        return parts[4]
    return None


def _actions(statement: dict[str, Any]) -> list[str]:
    if "NotAction" in statement:
        return ["*"]
    return [action.lower() for action in _strings(statement.get("Action"))]


#: Longest action pattern compared by wildcard (policy text is attacker-controlled; real ones are short).
_MAX_ACTION: Final = 128


def _covers(deny_actions: list[str], allowed: str) -> bool:
    """True when a Deny's action patterns cover ``allowed`` (over-long patterns never cover: stays public)."""
    if len(allowed) > _MAX_ACTION:
        return False
    return any(pattern in _ALL_ACTIONS or (len(pattern) <= _MAX_ACTION and fnmatch.fnmatchcase(allowed, pattern))
               for pattern in deny_actions)


def _statements(document: Any) -> list[dict[str, Any]] | str:
    if isinstance(document, (str, bytes)):
        try:
            document = orjson.loads(document)
        except orjson.JSONDecodeError as error:
            return f"policy is not valid JSON: {error}"
    if not isinstance(document, dict):
        return "policy is not a JSON object"
    statements = document.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list) or not statements:
        return "policy has no Statement"
    return [statement for statement in statements if isinstance(statement, dict)]


def evaluate_policy(document: Any, own_account: str) -> PolicyVerdict:
    """Judge a policy document for the account ``own_account`` (whose principals are not external)."""
    verdict = PolicyVerdict()
    statements = _statements(document)
    if isinstance(statements, str):
        verdict.error = statements
        return verdict
    denies = [statement for statement in statements if statement.get("Effect") == "Deny"]
    takers_back = []
    for deny in denies:
        anyone, _, _ = _principals(deny)
        if anyone and "NotPrincipal" not in deny and restricts(deny.get("Condition"), negated=True)[0]:
            takers_back.append(_actions(deny))
    external: dict[str, None] = {}
    for statement in statements:
        if statement.get("Effect") != "Allow":
            continue
        actions = _actions(statement)
        verdict.grants_actions.extend(actions)
        anyone, aws, services = _principals(statement)
        verdict.service_principals.extend(services)
        for principal in aws:
            account = _account_of(principal)
            if account is not None and account != own_account:
                external[account] = None
        conditioned, loose = restricts(statement.get("Condition"))
        every_resource = "NotResource" in statement or "*" in _strings(statement.get("Resource"))
        identity_policy = "Principal" not in statement and "NotPrincipal" not in statement
        if identity_policy and not conditioned and every_resource and any(a in _ALL_ACTIONS for a in actions):
            verdict.admin = True  # an identity policy: the principal is whoever it is attached to
        if not anyone or conditioned:
            continue
        if actions and all(any(_covers(taken, action) for taken in takers_back) for action in actions):
            continue
        verdict.public = True
        verdict.public_actions.extend(actions)
        verdict.conditions.extend(loose)
    verdict.external_accounts = list(external)
    return verdict
