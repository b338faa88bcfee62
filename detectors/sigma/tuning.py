"""Suppressions for Sigma rules, kept out of the rules themselves (Falco-style exceptions).

A SOC tunes third-party rules without editing them: an exception names the rules it applies to
(none = every rule; by id or title) and a condition on the event.  The condition is ``match:``, a
Sigma *selection* — any fields, any Sigma modifiers (``|contains``, ``|cidr``, ``|startswith``,
``|re``, …), a mapping (all fields must hold) or a list of mappings (any of them) — compiled by the
same compiler as the rules.  Each exception carries a ``comment`` (why it exists: required with
``match``) and may carry an ``expires`` date: from that date (event time) it no longer applies,
and ``check-config`` reports it as expired.

The older fixed dimensions (``principals`` globs, ``account_ids``, ``regions``, ``cidrs``,
``user_agents``) still work, ANDed with ``match``; they are deprecated in favour of ``match``
(e.g. ``userIdentity.arn|re``, ``recipientAccountId``, ``awsRegion``, ``sourceIPAddress|cidr``,
``userAgent|contains``).  An event that matches any exception for a rule does not alert for it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from fnmatch import translate
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from detectors.event import Event
from detectors.exceptions import expiry_epoch

__all__ = ["ExceptionConfig", "Exceptions", "compile_selection", "expired_exceptions", "resolve_tuning",
           "rule_references"]


class ExceptionConfig(BaseModel):
    """One suppression (config).  Globs use ``fnmatch`` syntax and are case-sensitive."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Rule ids this exception applies to; empty means every Sigma rule.
    rule_ids: list[str] = []
    #: Globs over the principal ARN and, for assumed roles, the role ARN.
    principals: list[str] = []
    account_ids: list[str] = []
    regions: list[str] = []
    #: Networks (IPv4 or IPv6) containing ``sourceIPAddress``.
    cidrs: list[str] = []
    user_agents: list[str] = []
    #: A Sigma selection over the event (mapping: AND of fields; list of mappings: OR).
    match: dict[str, Any] | list[dict[str, Any]] | None = None
    #: Why this exception exists (who asked, which ticket); required with ``match``.
    comment: str | None = None
    #: Last day the exception applies (UTC, inclusive); from the next day on it is expired.
    expires: date | None = None

    @field_validator("match")
    @classmethod
    def _valid_selection(cls, value: Any) -> Any:
        if value is not None:
            compile_selection(value)
        return value

    @field_validator("cidrs")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)
        return value

    @model_validator(mode="after")
    def _has_criteria(self) -> ExceptionConfig:
        if not (self.match or self.principals or self.account_ids or self.regions or self.cidrs or self.user_agents):
            raise ValueError("an exception needs a condition: match (a Sigma selection), or one of the "
                             "deprecated principals, account_ids, regions, cidrs, user_agents")
        if (self.match is not None or self.expires is not None) and not (self.comment or "").strip():
            raise ValueError("an exception with match or expires needs a comment saying why it exists")
        return self

    @property
    def expires_at(self) -> float | None:
        """Epoch seconds from which the exception no longer applies (the day after ``expires``)."""
        return expiry_epoch(self.expires)


def compile_selection(selection: Any) -> Callable[[dict[str, Any]], bool]:
    """Compile a Sigma selection (mapping or list of mappings) into ``predicate(raw_record)``.

    ``ValueError`` with pySigma's or the compiler's reason when it is not a valid selection.
    """
    from sigma.exceptions import SigmaError
    from sigma.rule import SigmaRule

    from detectors.sigma.compiler import compile_rule

    try:
        rule = SigmaRule.from_dict({"title": "exception", "logsource": {"product": "aws", "service": "cloudtrail"},
                                    "detection": {"exception": selection, "condition": "exception"}})
        return compile_rule(rule)
    except (SigmaError, ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"match is not a valid Sigma selection: {error}") from None


def expired_exceptions(configs: Iterable[ExceptionConfig], now: float) -> list[str]:
    """One line per exception whose ``expires`` date has passed at ``now`` (wall clock, for reports)."""
    out = []
    for index, config in enumerate(configs):
        until = config.expires_at
        if until is not None and now >= until:
            out.append(f"detectors.sigma.exceptions[{index}] ({config.comment}) expired on {config.expires}: it "
                       "no longer suppresses anything; fix: remove it, or extend expires if it is still needed")
    return out


def _globs(patterns: list[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{translate(pattern)})" for pattern in patterns))


@dataclass(frozen=True, slots=True)
class _Compiled:
    principals: re.Pattern[str] | None
    account_ids: frozenset[str]
    regions: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    user_agents: re.Pattern[str] | None
    selection: Callable[[dict[str, Any]], bool] | None = None
    expires_at: float | None = None

    def matches(self, event: Event) -> bool:
        if self.expires_at is not None and event.time >= self.expires_at:
            return False
        if self.selection is not None and not self.selection(event.raw):
            return False
        if self.principals is not None:
            role = event.role_arn
            if not (self.principals.match(event.principal) or (role and self.principals.match(role))):
                return False
        if self.account_ids and event.account_id not in self.account_ids:
            return False
        if self.regions and event.region not in self.regions:
            return False
        if self.networks and not _in_networks(event.real_source_ip, self.networks):
            return False
        return self.user_agents is None or self.user_agents.match(event.user_agent) is not None


def _in_networks(ip: str | None, networks: Iterable[Any]) -> bool:
    if ip is None:
        return False
    address = ipaddress.ip_address(ip)
    return any(address.version == network.version and address in network for network in networks)


class Exceptions:
    """Compiled exceptions, looked up by rule id."""

    def __init__(self, configs: Iterable[ExceptionConfig]) -> None:
        self._global: list[_Compiled] = []
        self._by_rule: dict[str, list[_Compiled]] = {}
        for config in configs:
            compiled = _Compiled(
                principals=_globs(config.principals),
                account_ids=frozenset(config.account_ids),
                regions=frozenset(config.regions),
                networks=tuple(ipaddress.ip_network(cidr, strict=False) for cidr in config.cidrs),
                user_agents=_globs(config.user_agents),
                selection=compile_selection(config.match) if config.match is not None else None,
                expires_at=config.expires_at,
            )
            if not config.rule_ids:
                self._global.append(compiled)
            for rule_id in config.rule_ids:
                self._by_rule.setdefault(rule_id, []).append(compiled)

    def __bool__(self) -> bool:
        return bool(self._global or self._by_rule)

    def suppresses(self, rule_id: str, event: Event) -> bool:
        """True when an exception for ``rule_id`` (or for every rule) matches ``event``."""
        for exception in self._global:
            if exception.matches(event):
                return True
        return any(exception.matches(event) for exception in self._by_rule.get(rule_id, ()))


def rule_references(rules: Any) -> dict[str, str]:
    """Every way tuning may name a rule → its rule id: the id itself, its title, its Sigma ``name``.

    ``rules`` is a :class:`~detectors.sigma.ruleset.RuleSet`; rules set aside (disabled, or
    correlations) count too, so disabling a rule by id stays a valid reference.
    """
    found: dict[str, str] = {}
    for rule in getattr(rules, "rules", ()):
        found.setdefault(rule.rule_id, rule.rule_id)
    for issue in getattr(rules, "skipped", ()):
        if issue.rule_id:
            found.setdefault(issue.rule_id, issue.rule_id)
    for rule in getattr(rules, "correlation_rules", ()):
        rule_id = str(getattr(rule, "id", None) or getattr(rule, "name", None) or "")
        if rule_id:
            found.setdefault(rule_id, rule_id)
    for rule in getattr(rules, "rules", ()):
        found.setdefault(rule.title, rule.rule_id)
    for issue in getattr(rules, "skipped", ()):
        if issue.rule_id and issue.title:
            found.setdefault(issue.title, issue.rule_id)
    for rule in getattr(rules, "correlation_rules", ()):
        rule_id = str(getattr(rule, "id", None) or getattr(rule, "name", None) or "")
        for alias in (getattr(rule, "name", None), getattr(rule, "title", None)):
            if rule_id and alias:
                found.setdefault(str(alias), rule_id)
    return found


def resolve_tuning(settings: Any, rules: Any) -> tuple[Any, list[str]]:
    """Check every rule reference of the Sigma detector's tuning against the loaded rules.

    Returns the settings with titles/names replaced by rule ids (the same object when nothing
    needed replacing) and one problem line per reference that names no rule, with the closest
    match: ``disabled_rules[1]: 'Root console logn' names no loaded rule; fix: did you mean …?``.
    """
    from detectors.suggest import suggestion

    known = rule_references(rules)
    problems: list[str] = []

    def resolve(reference: str, where: str) -> str:
        if reference in known:
            return known[reference]
        problems.append(f"tuning: detectors.sigma.{where}: {reference!r} names no loaded rule (by id or title); "
                        f"fix: {suggestion(reference, known, 'rule id or title')}")
        return reference

    disabled = [resolve(ref, f"disabled_rules[{i}]") for i, ref in enumerate(settings.disabled_rules)]
    overrides = {resolve(ref, f"severity_overrides.{ref}"): level for ref, level in settings.severity_overrides.items()}
    exceptions = [
        exception.model_copy(update={"rule_ids": [resolve(ref, f"exceptions[{i}].rule_ids[{j}]")
                                                  for j, ref in enumerate(exception.rule_ids)]})
        for i, exception in enumerate(settings.exceptions)
    ]
    changed = (disabled != list(settings.disabled_rules) or overrides != dict(settings.severity_overrides)
               or any(new.rule_ids != old.rule_ids for new, old in zip(exceptions, settings.exceptions, strict=True)))
    if not changed:
        return settings, problems
    return settings.model_copy(update={"disabled_rules": disabled, "severity_overrides": overrides,
                                       "exceptions": exceptions}), problems
