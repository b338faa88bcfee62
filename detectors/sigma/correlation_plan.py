"""Turn pySigma correlation rules into run plans: which window primitive, threshold, keys and fields.

Why it exists: a Sigma correlation rule says *what* to correlate (type, referenced rules, group-by
with per-rule aliases, timespan, condition); the window engine only knows *how* to count.  This
module decides, once per load, how each rule maps onto :mod:`detectors.windows` and rejects — with
a reason, per rule, like the detection loader — what cannot be run faithfully.  The mapping:

=====================  ==========================  ===================================================
type                   condition                   runs on
=====================  ==========================  ===================================================
``event_count``        ``gt``/``gte``              :class:`~detectors.windows.CountWindow` (sliding)
``value_count``        ``gt``/``gte``              :class:`~detectors.windows.DistinctCountWindow`
``temporal``           all referenced rules        :class:`~detectors.windows.SequenceWindow`, unordered
``temporal``           ``gt``/``gte`` k < n rules  :class:`~detectors.windows.DistinctCountWindow` of rule ids
``temporal_ordered``   all referenced rules        :class:`~detectors.windows.SequenceWindow`, ordered
any of the above       ``lt``/``lte``/``eq``/``neq``  windows evaluated when they close (see below)
``value_sum``/``avg``  any                         windows evaluated when they close
``value_median``       any                         windows evaluated when they close
``value_percentile``   any                         windows evaluated when they close
=====================  ==========================  ===================================================

"At most" conditions (``lt``, ``lte``, ``eq``, ``neq``) and aggregates of field values can only be
decided once a window is complete, so they run on tumbling windows aligned to the timespan
(:mod:`detectors.sigma.correlation_closing`) and fire from ``on_watermark`` when the watermark
passes a window's end — up to ``timespan + allowed lateness`` after its first event.  A group with
no event in a window is never seen, so ``lt`` means "fewer than N, but at least one".

Unsupported, reported per rule: extended (boolean string) conditions, ``temporal_ordered`` with a
condition other than "all rules", a rule listed twice in ``temporal_ordered``, conditions that can
never be met, references to rules that are not loaded, cycles, and chaining onto a correlation that
fires only when windows close.  A correlation may reference another correlation (pySigma resolves
it): the inner one's firings are the outer one's events, carrying the inner group-by values as fields.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson
from sigma.correlations import (
    SigmaCorrelationCondition,
    SigmaCorrelationRule,
    SigmaCorrelationType,
    SigmaRuleReference,
)
from sigma.rule import SigmaRule

from detectors.sigma.ruleset import LoadIssue, RuleSet
from detectors.summary_template import template_problems

__all__ = ["AT_MOST", "Input", "Plan", "Strategy", "Unsupported", "compare", "compile_correlations", "identity"]

Strategy = Literal["count", "distinct", "sequence", "closing"]
Aggregate = Literal["count", "distinct", "sum", "avg", "percentile"]

#: Operators decided only when a window closes.
AT_MOST: Final = frozenset({"lt", "lte", "eq", "neq"})

_VALUE_AGGREGATES: Final[dict[SigmaCorrelationType, Aggregate]] = {
    SigmaCorrelationType.VALUE_SUM: "sum",
    SigmaCorrelationType.VALUE_AVG: "avg",
    SigmaCorrelationType.VALUE_MEDIAN: "percentile",
    SigmaCorrelationType.VALUE_PERCENTILE: "percentile",
}


class Unsupported(Exception):
    """A correlation rule that cannot be run faithfully; the message says why."""


def compare(op: str, actual: float, expected: float) -> bool:
    """Evaluate a Sigma correlation condition operator."""
    if op == "gte":
        return actual >= expected
    if op == "gt":
        return actual > expected
    if op == "lte":
        return actual <= expected
    if op == "lt":
        return actual < expected
    if op == "eq":
        return actual == expected
    return actual != expected


def identity(rule: SigmaRule | SigmaCorrelationRule) -> str | None:
    """The id alerts and tuning use for a rule: its ``id``, else its ``name`` (as the loader does)."""
    return str(rule.id) if rule.id is not None else rule.name


@dataclass(frozen=True, slots=True)
class Input:
    """One referenced rule: its id and the fields its matches are grouped (and measured) by."""

    rule_id: str
    #: True when the referenced rule is itself a correlation (its firings are the events).
    chained: bool
    #: Per group-by name, the field read on this rule's matches (aliases resolved).
    group_fields: tuple[str, ...]
    #: The field measured by value_* types on this rule's matches (aliases resolved).
    value_field: str | None


@dataclass(frozen=True, slots=True)
class Plan:
    """How one correlation rule runs, plus the metadata its alerts carry."""

    rule_id: str
    title: str
    level: str | None
    tags: tuple[str, ...]
    description: str
    references: tuple[str, ...]
    falsepositives: tuple[str, ...]
    path: str
    kind: str
    timespan: float
    timespan_spec: str
    group_by: tuple[str, ...]
    inputs: tuple[Input, ...]
    op: str
    count: float
    strategy: Strategy
    #: Sliding strategies: the number of events / distinct values / steps that fires.
    threshold: int
    ordered: bool
    #: Closing strategy: what the window's condition is evaluated on.
    aggregate: Aggregate
    percentile: float
    #: False when another correlation references this one with ``generate: false``.
    generate: bool
    #: Digest of everything that shapes the window state; equal digests may share state.
    fingerprint: str
    #: The rule's ``runbook:`` and ``alert_summary:`` (trailguard extensions), carried onto its alerts.
    runbook: str | None = None
    summary_template: str | None = None

    @property
    def condition(self) -> dict[str, float]:
        """The condition as written, e.g. ``{"gte": 5}``."""
        return {self.op: int(self.count) if self.count.is_integer() else self.count}


def _reference_names(ref: SigmaRuleReference) -> set[str]:
    names = {ref.reference}
    rule = ref.rule
    if rule.name:
        names.add(rule.name)
    if rule.id is not None:
        names.add(str(rule.id))
    return names


def _field_for(rule: SigmaCorrelationRule, name: str, ref: SigmaRuleReference) -> str:
    alias = rule.aliases.aliases.get(name)
    if alias is None:
        return name
    names = _reference_names(ref)
    for alias_ref, field in alias.mapping.items():
        if alias_ref.reference in names:
            return field
    raise Unsupported(f"alias '{name}' gives no field for referenced rule '{ref.reference}'")


def _at_least(op: str, count: float) -> int:
    return max(1, math.floor(count) + 1 if op == "gt" else math.ceil(count))


def _strategy(rule: SigmaCorrelationRule, n_rules: int, op: str, count: float) -> tuple[Strategy, int, Aggregate]:
    kind = rule.type
    if kind in _VALUE_AGGREGATES:
        return "closing", 0, _VALUE_AGGREGATES[kind]
    if kind is SigmaCorrelationType.EVENT_COUNT:
        return ("closing", 0, "count") if op in AT_MOST else ("count", _at_least(op, count), "count")
    if kind is SigmaCorrelationType.VALUE_COUNT:
        return ("closing", 0, "distinct") if op in AT_MOST else ("distinct", _at_least(op, count), "distinct")
    if kind is SigmaCorrelationType.TEMPORAL:
        if op in AT_MOST:
            return "closing", 0, "distinct"
        needed = _at_least(op, count)
        if needed > n_rules:
            raise Unsupported(f"condition {op} {count} can never be met by {n_rules} referenced rules")
        if needed == n_rules and n_rules >= 2:
            return "sequence", needed, "distinct"
        return "distinct", needed, "distinct"
    if kind is SigmaCorrelationType.TEMPORAL_ORDERED:
        if op in AT_MOST or _at_least(op, count) != n_rules:
            raise Unsupported("temporal_ordered supports only the condition 'all referenced rules, in order'")
        if n_rules < 2:
            raise Unsupported("temporal_ordered needs at least two referenced rules")
        return "sequence", n_rules, "distinct"
    raise Unsupported(f"correlation type {kind} is not supported")


def _value_field(rule: SigmaCorrelationRule, condition: SigmaCorrelationCondition) -> str | None:
    if rule.type in (SigmaCorrelationType.EVENT_COUNT, SigmaCorrelationType.TEMPORAL,
                     SigmaCorrelationType.TEMPORAL_ORDERED):
        return None
    field = condition.fieldref
    if isinstance(field, list):
        if len(field) != 1:
            raise Unsupported("a condition on several fields is not supported")
        field = field[0]
    if not field:
        raise Unsupported(f"{rule.type} needs a condition field")
    return str(field)


def _percentile(rule: SigmaCorrelationRule, condition: SigmaCorrelationCondition) -> float:
    if rule.type is SigmaCorrelationType.VALUE_MEDIAN:
        return 50.0
    if rule.type is not SigmaCorrelationType.VALUE_PERCENTILE:
        return 0.0
    if condition.percentile is None or not 0 <= condition.percentile <= 100:
        raise Unsupported("value_percentile needs a 'percentile' between 0 and 100 in its condition")
    return float(condition.percentile)


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _plan(rule: SigmaCorrelationRule, rule_id: str, rules: RuleSet, correlation_ids: set[str]) -> Plan:
    condition = rule.condition
    if not isinstance(condition, SigmaCorrelationCondition):
        raise Unsupported("extended (boolean expression) correlation conditions are not supported")
    refs = list(rule.referenced_rules)
    if not refs:
        raise Unsupported("the correlation references no rule")
    op, count = condition.op.name.lower(), float(condition.count)
    group_by = tuple(rule.group_by or ())
    value_name = _value_field(rule, condition)
    inputs: list[Input] = []
    for ref in refs:
        target = identity(ref.rule)
        if target is None:
            raise Unsupported(f"referenced rule '{ref.reference}' has neither id nor name")
        chained = isinstance(ref.rule, SigmaCorrelationRule)
        if chained and target not in correlation_ids:
            raise Unsupported(f"referenced correlation '{ref.reference}' is not loaded")
        if not chained and rules.get(target) is None:
            raise Unsupported(f"referenced rule '{ref.reference}' is not loaded (see its own load report)")
        fields = tuple(_field_for(rule, name, ref) for name in group_by)
        value_field = _field_for(rule, value_name, ref) if value_name is not None else None
        if chained:
            inner = tuple(ref.rule.group_by or ())  # type: ignore[union-attr]
            for field in (*fields, *((value_field,) if value_field else ())):
                if field not in inner:
                    raise Unsupported(f"field '{field}' is not a group-by field of correlation '{ref.reference}'")
        inputs.append(Input(target, chained, fields, value_field))
    if len({i.rule_id for i in inputs}) != len(inputs):
        raise Unsupported("a rule is referenced more than once")
    strategy, threshold, aggregate = _strategy(rule, len(inputs), op, count)
    percentile = _percentile(rule, condition)
    kind = rule.type.name.lower()
    custom = rule.custom_attributes or {}
    if "alert_summary" in custom and (problems := template_problems(custom["alert_summary"])):
        raise Unsupported(f"alert_summary: {'; '.join(problems)}")
    seconds = float(rule.timespan.seconds)
    fingerprint = _fingerprint(kind, seconds, group_by, [[i.rule_id, i.group_fields, i.value_field] for i in inputs],
                               op, count, percentile)
    return Plan(
        rule_id=rule_id,
        title=rule.title,
        level=rule.level.name.lower() if rule.level is not None else None,
        tags=tuple(str(tag) for tag in rule.tags),
        description=rule.description or "",
        references=tuple(rule.references),
        falsepositives=tuple(rule.falsepositives),
        path=str(rule.source.path) if rule.source is not None else "<unknown>",
        kind=kind,
        timespan=seconds,
        timespan_spec=rule.timespan.spec,
        group_by=group_by,
        inputs=tuple(inputs),
        op=op,
        count=count,
        strategy=strategy,
        threshold=threshold,
        ordered=rule.type is SigmaCorrelationType.TEMPORAL_ORDERED,
        aggregate=aggregate,
        percentile=percentile,
        generate=bool(rule._output),
        fingerprint=fingerprint,
        runbook=_text(custom.get("runbook")),
        summary_template=_text(custom.get("alert_summary")),
    )


def _text(value: Any) -> str | None:
    """A non-empty string attribute, stripped of surrounding blank lines; else ``None``."""
    return value.strip() if isinstance(value, str) and value.strip() else None


def _issue(rule: SigmaCorrelationRule, reason: str) -> LoadIssue:
    path = str(rule.source.path) if rule.source is not None else "<unknown>"
    return LoadIssue(path, identity(rule), rule.title, reason)


def compile_correlations(rules: RuleSet, *, disabled: Iterable[str] = ()) -> tuple[list[Plan], list[LoadIssue]]:
    """Plans for the loaded correlation rules in dependency order (inner before outer), and errors."""
    off = set(disabled)
    errors: list[LoadIssue] = []
    candidates: dict[str, SigmaCorrelationRule] = {}
    for rule in rules.correlation_rules:
        rule_id = identity(rule)
        if rule_id is None:
            errors.append(_issue(rule, "correlation rule has no id (needed for alerts and state)"))
        elif rule_id in off:
            continue
        elif rule_id in candidates or rules.get(rule_id) is not None:
            errors.append(_issue(rule, "duplicate rule id"))
        else:
            candidates[rule_id] = rule
    plans: dict[str, Plan] = {}
    pending = dict(candidates)
    # Kahn-style: plan a correlation once every correlation it references is planned.
    while pending:
        progressed = False
        for rule_id, rule in list(pending.items()):
            inner = [identity(ref.rule) for ref in rule.referenced_rules if isinstance(ref.rule, SigmaCorrelationRule)]
            if any(i in pending for i in inner):
                continue
            del pending[rule_id]
            progressed = True
            try:
                plan = _plan(rule, rule_id, rules, set(plans))
                for ref in inner:
                    if plans[str(ref)].strategy == "closing":
                        raise Unsupported(f"correlation '{ref}' fires only when windows close and cannot be chained")
            except Unsupported as error:
                errors.append(_issue(rule, f"unsupported: {error}"))
                continue
            plans[rule_id] = plan
        if not progressed:
            for rule in pending.values():
                errors.append(_issue(rule, "unsupported: correlation rules reference each other in a cycle"))
            break
    return list(plans.values()), errors
