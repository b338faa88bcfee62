"""Which ``eventName``/``eventSource`` values a rule cannot match without, read from its condition.

The rule index needs, for each rule, a set S such that *every* record the rule matches has its
field in S.  Deriving it is conservative: an exact, case-insensitive value list on the field in a
map gives S; AND intersects what its operands require; OR unions only when every operand requires
something; NOT, wildcards, modifiers, regexes, keywords and anything else give "unknown" (``None``),
and such a rule is checked against every event.  Being wrong here would silently drop alerts, so
"unknown" is always the safe answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sigma.conditions import (
    ConditionAND,
    ConditionIdentifier,
    ConditionNOT,
    ConditionOR,
    ConditionSelector,
)
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaDetections, SigmaRule
from sigma.types import SigmaString

from detectors.sigma.compiler import condition_trees, detection_node, resolve_selector

__all__ = ["Requirement", "required_values", "spellings"]

#: Lowercased values the field must take, or ``None`` when nothing can be said.
Requirement = frozenset[str] | None


def _intersect(requirements: list[Requirement]) -> Requirement:
    known = [requirement for requirement in requirements if requirement is not None]
    if not known:
        return None
    result = known[0]
    for requirement in known[1:]:
        result = result & requirement
    return result


def _union(requirements: list[Requirement]) -> Requirement:
    if not requirements or any(requirement is None for requirement in requirements):
        return None
    result: frozenset[str] = frozenset()
    for requirement in requirements:
        assert requirement is not None
        result = result | requirement
    return result


def _item(item: SigmaDetectionItem, field: str) -> Requirement:
    if item.field != field or item.negated or not item.value:
        return None
    exact: set[str] = set()
    for value in item.value:
        if not isinstance(value, SigmaString):
            return None
        if any(not isinstance(part, str) for part in value.s):  # a wildcard or a placeholder
            return None
        exact.add("".join(part for part in value.s if isinstance(part, str)).lower())
    if item.value_linking is ConditionAND and len(exact) > 1:
        return frozenset()  # one field cannot equal two different values
    return frozenset(exact)


def _detection(detection: SigmaDetection, field: str) -> Requirement:
    children = [
        _item(child, field) if isinstance(child, SigmaDetectionItem) else _detection(child, field)
        for child in detection.detection_items
    ]
    if detection.item_linking is ConditionOR:
        return _union(children)
    return _intersect(children)


def _node(node: Any, detections: SigmaDetections, field: str) -> Requirement:
    node = detection_node(node)
    if isinstance(node, ConditionIdentifier):
        return _detection(detections[node.identifier], field)
    if isinstance(node, ConditionSelector):
        chosen = [_detection(detections[name], field) for name in resolve_selector(node, detections)]
        return _intersect(chosen) if node.cond_class is ConditionAND else _union(chosen)
    if isinstance(node, ConditionNOT):
        return None
    if isinstance(node, ConditionAND):
        return _intersect([_node(arg, detections, field) for arg in node.args])
    if isinstance(node, ConditionOR):
        return _union([_node(arg, detections, field) for arg in node.args])
    return None


def required_values(rule: SigmaRule, field: str, trees: Sequence[Any] | None = None) -> Requirement:
    """Lowercased values ``field`` must have for ``rule`` to match, or ``None`` if unknown.

    Only call this on a rule that :func:`~detectors.sigma.compiler.compile_rule` accepted.
    ``trees``: the rule's :func:`~detectors.sigma.compiler.condition_trees` when the caller has them
    (they are only read here).
    """
    if trees is None:
        trees = condition_trees(rule)
    return _union([_node(tree, rule.detection, field) for tree in trees])



def spellings(rule: SigmaRule, field: str) -> frozenset[str]:
    """Every exact (wildcard-free) value the rule gives ``field``, as written."""
    found: set[str] = set()

    def walk(detection: SigmaDetection) -> None:
        for child in detection.detection_items:
            if isinstance(child, SigmaDetection):
                walk(child)
            elif child.field == field:
                for value in child.value:
                    if isinstance(value, SigmaString) and all(isinstance(part, str) for part in value.s):
                        found.add("".join(part for part in value.s if isinstance(part, str)))

    for detection in rule.detection.detections.values():
        walk(detection)
    return frozenset(found)
