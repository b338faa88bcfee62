"""A parsed Sigma detection compiled into one predicate over a raw CloudTrail record.

pySigma parses the YAML (detections, modifiers, values) and the condition string into a tree of
``ConditionAND/OR/NOT``, ``ConditionIdentifier`` and ``ConditionSelector`` (``1 of sel*``).  This
module walks those objects once and builds nested closures: a field item reads its field once and
tests all its values, a map is an AND, a list of maps an OR, and the condition combines the named
detections.  Evaluating a rule is then plain function calls, with short-circuiting.

Keyword (field-less) items search every scalar in the record, recursively, for the keyword *inside*
the value (full-text search, as every Sigma backend does: ``stratus-red-team`` matches a userAgent
that contains it; a keyword already starting/ending with ``*`` keeps its wildcards).  Their cost grows with
the size of the record (a few hundred values for a large CloudTrail event), so rules that use them
should also constrain ``eventName`` or ``eventSource`` so that the index keeps them off most events.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from pyparsing import ParseResults
from sigma.conditions import (
    ConditionAND,
    ConditionIdentifier,
    ConditionItem,
    ConditionNOT,
    ConditionOR,
    ConditionSelector,
    unwrap_parse_result_operand,
)
from sigma.exceptions import SigmaError
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaDetections, SigmaRule
from sigma.types import SigmaExpansion, SigmaNull, SigmaNumber, SigmaString, SigmaType, SpecialChars

from detectors.sigma.values import (
    Matcher,
    Unsupported,
    compile_path,
    compile_value_group,
    leaves,
    string_test,
    to_text,
)

__all__ = ["Predicate", "compile_rule", "compile_rule_and_trees", "condition_trees", "detection_node",
           "resolve_selector"]

#: ``predicate(raw_record) -> bool``
Predicate = Callable[[dict[str, Any]], bool]

#: Keys that legacy (pre-correlation) rules put in ``detection`` for aggregations.
_LEGACY_AGGREGATION_KEYS = ("timeframe",)


def _all_of(predicates: list[Predicate]) -> Predicate:
    if len(predicates) == 1:
        return predicates[0]
    if len(predicates) == 2:
        first, second = predicates
        return lambda raw: first(raw) and second(raw)
    group = tuple(predicates)
    return lambda raw: all(predicate(raw) for predicate in group)


def _any_of(predicates: list[Predicate]) -> Predicate:
    if len(predicates) == 1:
        return predicates[0]
    if len(predicates) == 2:
        first, second = predicates
        return lambda raw: first(raw) or second(raw)
    group = tuple(predicates)
    return lambda raw: any(predicate(raw) for predicate in group)


def _negate(predicate: Predicate) -> Predicate:
    return lambda raw: not predicate(raw)


# -- detection items ------------------------------------------------------------------------------


def _inside(value: SigmaString) -> SigmaString:
    """A keyword as a substring pattern: ``*keyword*`` (no second ``*`` where one is written)."""
    star = SpecialChars.WILDCARD_MULTI
    if not value.s:
        return value  # an empty keyword stays an exact empty value, not "anything"
    if value.startswith(star) and value.endswith(star):
        return value
    parts = list(value.s)
    if not parts or parts[0] is not star:
        parts.insert(0, star)
    if parts[-1] is not star:
        parts.append(star)
    inside = copy.copy(value)
    inside.s = parts
    return inside


def _keyword_item(item: SigmaDetectionItem) -> Predicate:
    """Field-less values: true when a scalar anywhere in the record matches (AND with ``all``)."""
    tests: list[Callable[[str], bool]] = []
    grouped = item.value_linking is ConditionOR
    pending: list[SigmaString] = []
    for value in item.value:
        members = value.values if isinstance(value, SigmaExpansion) else [value]
        strings: list[SigmaString] = []
        for member in members:
            if isinstance(member, SigmaString):
                strings.append(_inside(member))
            elif isinstance(member, SigmaNumber):
                strings.append(_inside(SigmaString(str(member.number))))
            else:
                raise Unsupported(f"keyword value of type {type(member).__name__} is not supported")
        if grouped:
            pending.extend(strings)
        else:
            tests.append(string_test(strings))
    if grouped:
        tests.append(string_test(pending))

    def search(test: Callable[[str], bool]) -> Predicate:
        def found(raw: dict[str, Any]) -> bool:
            for leaf in leaves(raw):
                text = to_text(leaf)
                if text is not None and test(text):
                    return True
            return False

        return found

    return _all_of([search(test) for test in tests])


def _field_item(item: SigmaDetectionItem) -> Predicate:
    field = item.field
    assert field is not None
    resolve = compile_path(field)
    values: list[SigmaType] = list(item.value) or [SigmaNull()]
    matchers: list[Matcher]
    if item.value_linking is ConditionAND and len(values) > 1:
        matchers = [compile_value_group([value]) for value in values]
    else:
        matchers = [compile_value_group(values)]
    if len(matchers) == 1:
        matcher = matchers[0]

        def one(raw: dict[str, Any]) -> bool:
            return matcher(resolve(raw), raw)

        return one
    group = tuple(matchers)

    def every(raw: dict[str, Any]) -> bool:
        value = resolve(raw)
        return all(each(value, raw) for each in group)

    return every


def _item(item: SigmaDetectionItem) -> Predicate:
    predicate = _keyword_item(item) if item.field is None else _field_item(item)
    return _negate(predicate) if item.negated else predicate


def _detection(detection: SigmaDetection) -> Predicate:
    children = [
        _item(child) if isinstance(child, SigmaDetectionItem) else _detection(child)
        for child in detection.detection_items
    ]
    if detection.item_linking is ConditionOR:
        return _any_of(children)
    return _all_of(children)


# -- the condition --------------------------------------------------------------------------------


def detection_node(node: Any) -> Any:
    """Unwrap pyparsing's one-element groups (parentheses) around a condition tree node."""
    if isinstance(node, ParseResults):
        return unwrap_parse_result_operand(node, error_class=Unsupported)
    return node


def resolve_selector(selector: ConditionSelector, detections: SigmaDetections) -> list[str]:
    """The detection names a ``1 of x*`` / ``all of them`` selector stands for (pySigma's rules)."""
    names = [identifier.identifier for identifier in selector.resolve_referenced_detections(detections)]
    if not names:
        raise Unsupported(f"selector '{selector.args[0]} of {selector.pattern}' matches no detection")
    return names


def _condition(node: Any, detections: SigmaDetections, compiled: dict[str, Predicate]) -> Predicate:
    node = detection_node(node)
    if isinstance(node, ConditionIdentifier):
        try:
            return compiled[node.identifier]
        except KeyError:
            raise Unsupported(f"condition references undefined detection '{node.identifier}'") from None
    if isinstance(node, ConditionSelector):
        chosen = [compiled[name] for name in resolve_selector(node, detections)]
        return _all_of(chosen) if node.cond_class is ConditionAND else _any_of(chosen)
    if isinstance(node, ConditionNOT):
        return _negate(_condition(node.args[0], detections, compiled))
    if isinstance(node, (ConditionAND, ConditionOR)):
        children = [_condition(arg, detections, compiled) for arg in node.args]
        return _all_of(children) if isinstance(node, ConditionAND) else _any_of(children)
    raise Unsupported(f"condition element {type(node).__name__} is not supported")


def condition_trees(rule: SigmaRule) -> list[ConditionItem]:
    """The rule's condition(s) as pySigma's parse trees (before identifiers are expanded)."""
    trees = []
    for condition in rule.detection.parsed_condition:
        if "|" in condition.condition:
            raise Unsupported(
                "aggregation in the condition (pipe syntax) is not supported: use a correlation rule"
            )
        try:
            tree = condition.parse(postprocess=False)
        except SigmaError as error:
            raise Unsupported(f"condition {condition.condition!r} does not parse: {error}") from None
        trees.append(detection_node(tree))
    return trees


def compile_rule(rule: SigmaRule) -> Predicate:
    """Compile a parsed detection rule; raise :class:`Unsupported` with the reason if it cannot be."""
    return compile_rule_and_trees(rule)[0]


def compile_rule_and_trees(rule: SigmaRule) -> tuple[Predicate, list[ConditionItem]]:
    """:func:`compile_rule`, plus the :func:`condition_trees` it compiled (for the index's
    requirements, so that each condition is parsed once: pySigma deep-copies a tree per parse)."""
    detections = rule.detection
    for key in _LEGACY_AGGREGATION_KEYS:
        if key in detections.detections:
            raise Unsupported(f"'{key}' in detection (legacy aggregation): use a correlation rule")
    compiled = {name: _detection(detection) for name, detection in detections.detections.items()}
    trees = condition_trees(rule)
    return _any_of([_condition(tree, detections, compiled) for tree in trees]), trees

