"""A loaded set of compiled Sigma rules and the index that picks the rules an event could match.

Each rule is filed under the ``eventName`` values it requires, else under the ``eventSource``
values it requires, else in the "always" bucket (see :mod:`detectors.sigma.requirements`).  An
event is tested only against ``by_name[eventName] + by_source[eventSource] + always``, so the
cost per event depends on how many rules could match it, not on how many are loaded.  Lookups are
case-insensitive, like Sigma's matching; the candidate list per (eventName, eventSource) is cached.

A :class:`RuleSet` is immutable once built — except that a rule can be *disabled* by the time
budget: reloading builds a new one and swaps it whole.

Time budget: each event's evaluation is timed as a whole (two clock reads).  When it exceeds
``budget`` seconds, the next ``WATCH_EVENTS`` events are timed rule by rule in CPU time (so a
loaded machine does not disable cheap rules); a rule over budget on
``STRIKES`` events is disabled (dropped from the index) and reported through :meth:`take_disabled`,
so one pathological rule cannot stall the daemon while the others run on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from time import perf_counter, thread_time
from typing import Any, Final

from sigma.correlations import SigmaCorrelationRule
from sigma.rule import SigmaRule

from detectors.sigma.compiler import Predicate
from detectors.sigma.new_terms import NewTermsRule

__all__ = ["CompiledRule", "LoadIssue", "RuleSet"]

_CACHE_LIMIT: Final = 65536
#: Default per-event evaluation budget (seconds) before rules are timed one by one.
DEFAULT_BUDGET: Final = 0.05
#: Events timed rule by rule after one event went over budget.
WATCH_EVENTS: Final = 64
#: Over-budget evaluations after which a rule is disabled.
STRIKES: Final = 3


@dataclass(frozen=True, slots=True)
class LoadIssue:
    """Why a rule (or a whole file) was not loaded, or was set aside (``path``/rule id/title/reason)."""

    path: str
    rule_id: str | None
    title: str | None
    reason: str

    def __str__(self) -> str:
        if self.rule_id is None and self.title is None:
            return f"{self.path}: {self.reason}"
        return f"{self.path}: rule {self.rule_id or '?'} ({self.title or 'untitled'}): {self.reason}"


@dataclass(slots=True, eq=False)
class CompiledRule:
    """One detection rule ready to run, with the metadata alerts carry."""

    rule_id: str
    title: str
    #: Sigma level as written (``informational`` … ``critical``) or ``None``.
    level: str | None
    tags: tuple[str, ...]
    description: str
    references: tuple[str, ...]
    falsepositives: tuple[str, ...]
    path: str
    #: False when a correlation rule references this rule with ``generate: false``: it then only
    #: feeds the correlation and never alerts by itself.
    generate: bool
    predicate: Predicate
    #: Lowercased eventName / eventSource values every match has, or ``None`` when unknown.
    required_names: frozenset[str] | None
    required_sources: frozenset[str] | None
    #: Lowercased ``userIdentity.type`` values every match has (root rules: ``{"root"}``), or ``None``.
    required_identity_types: frozenset[str] | None = None
    #: The eventName values as the rule spells them (for the engine's case-sensitive index).
    name_spellings: frozenset[str] = frozenset()
    rule: SigmaRule | None = field(default=None, repr=False)

    def matches(self, raw: dict[str, Any]) -> bool:
        """Evaluate the rule on one raw record."""
        return self.predicate(raw)


class RuleSet:
    """Compiled rules, indexed, plus what the loader set aside (correlations, errors, skips)."""

    def __init__(
        self,
        rules: Sequence[CompiledRule] = (),
        *,
        correlation_rules: Iterable[SigmaCorrelationRule] = (),
        new_terms: Iterable[NewTermsRule] = (),
        errors: Iterable[LoadIssue] = (),
        skipped: Iterable[LoadIssue] = (),
    ) -> None:
        self.rules: tuple[CompiledRule, ...] = tuple(rules)
        self.correlation_rules: tuple[SigmaCorrelationRule, ...] = tuple(correlation_rules)
        #: trailguard ``new_terms`` correlations, references resolved to rule ids.
        self.new_terms: tuple[NewTermsRule, ...] = tuple(new_terms)
        self.errors: tuple[LoadIssue, ...] = tuple(errors)
        self.skipped: tuple[LoadIssue, ...] = tuple(skipped)
        #: How many (rule, event) predicate evaluations :meth:`match` has run.
        self.evaluations = 0
        self._by_id = {rule.rule_id: rule for rule in self.rules}
        self._position = {id(rule): position for position, rule in enumerate(self.rules)}
        self._by_name: dict[str, list[CompiledRule]] = {}
        self._by_source: dict[str, list[CompiledRule]] = {}
        self._by_identity: dict[str, list[CompiledRule]] = {}
        self._always: list[CompiledRule] = []
        for rule in self.rules:
            if rule.required_names is not None:
                for name in rule.required_names:
                    self._by_name.setdefault(name, []).append(rule)
            elif rule.required_sources is not None:
                for source in rule.required_sources:
                    self._by_source.setdefault(source, []).append(rule)
            elif rule.required_identity_types is not None:
                for kind in rule.required_identity_types:
                    self._by_identity.setdefault(kind, []).append(rule)
            else:
                self._always.append(rule)
        self._cache: dict[tuple[str, str, str], tuple[CompiledRule, ...]] = {}
        #: Seconds one event's evaluation may take before rules are timed one by one.
        self.budget = DEFAULT_BUDGET
        self._watching = 0
        self._strikes: dict[str, int] = {}
        #: Rule id → seconds of its slowest evaluation, for rules the time budget disabled.
        self.disabled: dict[str, float] = {}
        self._reported = 0

    def __len__(self) -> int:
        return len(self.rules)

    def get(self, rule_id: str) -> CompiledRule | None:
        """The loaded rule with this id, if any."""
        return self._by_id.get(rule_id)

    @property
    def always_checked(self) -> tuple[CompiledRule, ...]:
        """Rules that no eventName/eventSource/identity-type requirement keeps off any event."""
        return tuple(self._always)

    @property
    def identity_indexed(self) -> bool:
        """True when some rule is indexed by ``userIdentity.type`` (the caller must pass it)."""
        return bool(self._by_identity)

    def candidates(self, event_name: str, event_source: str, identity_type: str | None = None,
                   ) -> tuple[CompiledRule, ...]:
        """The rules an event with this eventName/eventSource/identity type could match, in load order.

        ``identity_type`` ``None`` means "unknown": identity-indexed rules are then all candidates.
        """
        key = (event_name, event_source, identity_type if identity_type is not None else "\x00")
        found = self._cache.get(key)
        if found is not None:
            return found
        name, source = event_name.lower(), event_source.lower()
        chosen = [
            rule
            for rule in self._by_name.get(name, ())
            if rule.required_sources is None or source in rule.required_sources
        ]
        chosen.extend(self._by_source.get(source, ()))
        if identity_type is None:
            chosen.extend(rule for rules in self._by_identity.values() for rule in rules)
        else:
            chosen.extend(self._by_identity.get(identity_type.lower(), ()))
        chosen.extend(self._always)
        position = self._position
        if self.disabled:
            chosen = [rule for rule in chosen if rule.rule_id not in self.disabled]
        found = tuple(sorted(set(chosen), key=lambda rule: position[id(rule)]))
        if len(self._cache) < _CACHE_LIMIT:
            self._cache[key] = found
        return found

    def match(self, raw: dict[str, Any], event_name: str, event_source: str,
              identity_type: str | None = None) -> list[CompiledRule]:
        """The rules that match this record (tested only against its candidates)."""
        if self._by_identity and not identity_type:
            # unknown, or "" (missing / not a string): read it; a non-string type (a list in a
            # forged or converted record) could still match an identity rule, so it is "unknown"
            identity = raw.get("userIdentity")
            kind = identity.get("type") if isinstance(identity, dict) else None
            identity_type = kind if isinstance(kind, str) else (None if kind is not None else "")
        candidates = self.candidates(event_name, event_source, identity_type)
        self.evaluations += len(candidates)
        if self._watching:
            return self._timed_match(raw, candidates)
        started = perf_counter()
        matched = [rule for rule in candidates if rule.predicate(raw)]
        if perf_counter() - started > self.budget:
            self._watching = WATCH_EVENTS
        return matched

    def _timed_match(self, raw: dict[str, Any], candidates: tuple[CompiledRule, ...]) -> list[CompiledRule]:
        """:meth:`match`, timing each rule: strikes for rules over budget, disabling the repeat offenders."""
        self._watching -= 1
        matched: list[CompiledRule] = []
        for rule in candidates:
            # CPU time of this thread: a busy machine (CPU steal, preemption) must not disable a cheap rule
            started = thread_time()
            if rule.predicate(raw):
                matched.append(rule)
            seconds = thread_time() - started
            if seconds > self.budget:
                strikes = self._strikes.get(rule.rule_id, 0) + 1
                self._strikes[rule.rule_id] = strikes
                if strikes >= STRIKES:
                    self.disabled[rule.rule_id] = max(seconds, self.disabled.get(rule.rule_id, 0.0))
                    self._cache.clear()
        return matched

    def take_disabled(self) -> list[tuple[str, float]]:
        """Rules disabled by the time budget since the last call: ``(rule id, slowest seconds)``."""
        fresh = list(self.disabled.items())[self._reported:]
        self._reported = len(self.disabled)
        return fresh

    def index_names(self) -> frozenset[str] | None:
        """Every eventName any rule can match, lowercased; ``None`` if some rule needs every event.

        Lowercased because Sigma matching is case-insensitive: the engine looks these up by the
        event's lowercased name (the Sigma detector declares ``index_case_insensitive``), so an
        event named ``STOPLOGGING`` reaches a ``StopLogging`` rule whatever else is loaded.
        """
        names: set[str] = set()
        for rule in self.rules:
            if rule.required_names is None:
                return None
            names |= rule.required_names
        return frozenset(names)

    def index_sources(self) -> frozenset[str] | None:
        """Every eventSource any rule can match (lowercase); ``None`` unless every rule requires one."""
        sources: set[str] = set()
        for rule in self.rules:
            if rule.required_sources is None:
                return None
            sources |= rule.required_sources
        return frozenset(sources)
