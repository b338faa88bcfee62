"""Sigma values compiled into matchers over the values found in a CloudTrail record.

pySigma parses a detection item's values (after its modifiers) into typed objects —
``SigmaString`` with wildcards, ``SigmaNull``, ``SigmaNumber``, ``SigmaRegularExpression`` … —
but only to translate them into other query languages.  This module turns each of them, once at
load time, into a small Python closure ``matcher(value, raw) -> bool`` so that an event is
tested without re-reading the rule.

Semantics, for JSON records:

* A field path is dotted (``requestParameters.bucketName``).  When a step meets a list, the rest
  of the path is read from every element (``resources.ARN`` is every resource's ARN); a numeric
  step indexes the list (``resources.0.ARN``).
* When the value found is a list, it matches when any element matches; when it is an object
  (``requestParameters|contains: Suspended``), it matches when any scalar inside it matches —
  keys are not searched.
* Strings match case-insensitively unless ``cased``; ``*`` and ``?`` are wildcards (``\\*``
  is a literal star).  Numbers and booleans in the record are compared as their JSON text too,
  so ``publiclyAccessible: 'true'`` matches the JSON ``true``.
* ``null`` matches a field that is missing or JSON ``null``; ``exists`` is about presence: a
  field present with JSON ``null`` exists.
* A string counts as a number only when written as one (``22``, ``-1.5``, ``1e3``): not
  ``" 22"``, ``"+22"``, ``"2_2"``, ``"-inf"`` or ``"nan"``, which Python's ``float`` would accept.
* Regular expressions are searched (not anchored: write ``^…$`` to anchor) and are
  case-sensitive unless the ``i`` flag is set.  They run on RE2 (linear time in the input, so no
  pattern can stall the daemon); a pattern RE2 cannot run (backreferences, lookaround) is refused.
* Field paths starting with ``trailguard.`` are derived fields (:mod:`detectors.sigma.derived`).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final

import re2
from sigma.types import (
    CompareOperators,
    Placeholder,
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaExpansion,
    SigmaFieldReference,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaRegularExpressionFlag,
    SigmaString,
    SigmaTimestampPart,
    SigmaType,
    SpecialChars,
    TimestampPart,
)

from detectors.event import parse_event_time

__all__ = [
    "MISSING",
    "Matcher",
    "Resolver",
    "Unsupported",
    "as_number",
    "compile_path",
    "compile_value_group",
    "leaves",
    "string_test",
    "to_text",
]

#: What a resolver returns for a field that is not in the record.
MISSING: Final = object()
#: Field paths computed from the record rather than read from it (see :mod:`detectors.sigma.derived`).
DERIVED_PREFIX: Final = "trailguard."
#: A JSON number, the only text a string may have to be compared as a number.
_NUMBER_TEXT: Final = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")

#: ``matcher(value_found_at_the_field, raw_record) -> bool``
Matcher = Callable[[Any, dict[str, Any]], bool]
#: ``resolver(raw_record) -> value or MISSING``
Resolver = Callable[[dict[str, Any]], Any]


class Unsupported(ValueError):
    """A rule uses a Sigma feature trailguard cannot evaluate natively; the message says which."""


# -- reading the record ---------------------------------------------------------------------------


def _resolve_steps(node: Any, steps: tuple[str, ...], start: int) -> Any:
    for position in range(start, len(steps)):
        step = steps[position]
        kind = type(node)
        if kind is dict:
            node = node.get(step, MISSING)
            if node is MISSING:
                return MISSING
        elif kind is list:
            if step.isdigit():
                index = int(step)
                if index >= len(node):
                    return MISSING
                node = node[index]
                continue
            found: list[Any] = []
            for element in node:
                value = _resolve_steps(element, steps, position)
                if value is MISSING:
                    continue
                if type(value) is list:
                    found.extend(value)
                else:
                    found.append(value)
            return found if found else MISSING
        else:
            return MISSING
    return node


def compile_path(field: str) -> Resolver:
    """A fast reader for one dotted field path (lists fan out, see the module docstring)."""
    if field.startswith(DERIVED_PREFIX):
        from detectors.sigma.derived import derived_resolver  # derived fields read the record too

        return derived_resolver(field)
    steps = tuple(field.split("."))
    if len(steps) == 1:
        key = steps[0]

        def resolve_top(raw: dict[str, Any]) -> Any:
            return raw.get(key, MISSING)

        return resolve_top
    if len(steps) == 2:
        first, second = steps

        def resolve_two(raw: dict[str, Any]) -> Any:
            node = raw.get(first, MISSING)
            if type(node) is dict:
                return node.get(second, MISSING)
            if node is MISSING:
                return MISSING
            return _resolve_steps(node, steps, 1)

        return resolve_two

    def resolve(raw: dict[str, Any]) -> Any:
        return _resolve_steps(raw, steps, 0)

    return resolve


def leaves(value: Any) -> Iterator[Any]:
    """Every scalar (str, number, bool) inside nested lists and objects, depth first."""
    kind = type(value)
    if kind is dict:
        for item in value.values():
            yield from leaves(item)
    elif kind is list:
        for item in value:
            yield from leaves(item)
    elif value is not None and value is not MISSING:
        yield value


def to_text(value: Any) -> str | None:
    """A scalar as Sigma compares it: strings as they are, JSON numbers and booleans as JSON text."""
    kind = type(value)
    if kind is str:
        return value
    if kind is bool:
        return "true" if value else "false"
    if kind is int or kind is float:
        return str(value)
    return None


def _over_values(test: Callable[[Any], bool]) -> Matcher:
    """Lift a scalar test to a field value: missing/null never match, lists/objects match on any."""

    def matcher(value: Any, _raw: dict[str, Any]) -> bool:
        if value is MISSING or value is None:
            return False
        kind = type(value)
        if kind is list or kind is dict:
            return any(test(leaf) for leaf in leaves(value))
        return test(value)

    return matcher


# -- strings and wildcards ------------------------------------------------------------------------


def _parts(value: SigmaString) -> list[str | SpecialChars]:
    parts: list[str | SpecialChars] = []
    for part in value.s:
        if isinstance(part, Placeholder):
            raise Unsupported(
                f"placeholder %{part.name}% (expand modifier) needs a processing pipeline"
            )
        parts.append(part)
    return parts


class _StringPatterns:
    """Several OR-linked string values of one case mode, split by the cheapest test for each."""

    __slots__ = ("anything", "contains", "exact", "fold", "prefixes", "regexes", "suffixes")

    def __init__(self, fold: bool) -> None:
        self.fold = fold
        self.anything = False
        self.exact: set[str] = set()
        self.prefixes: list[str] = []
        self.suffixes: list[str] = []
        self.contains: list[str] = []
        self.regexes: list[Any] = []  # RE2 patterns

    def add(self, value: SigmaString) -> None:
        parts = _parts(value)
        if self.fold:
            parts = [part.lower() if isinstance(part, str) else part for part in parts]
        # collapse runs of "*" (they mean the same as one)
        collapsed: list[str | SpecialChars] = []
        for part in parts:
            if part is SpecialChars.WILDCARD_MULTI and collapsed and collapsed[-1] is part:
                continue
            collapsed.append(part)
        specials = [part for part in collapsed if isinstance(part, SpecialChars)]
        literals = [part for part in collapsed if isinstance(part, str)]
        multi = SpecialChars.WILDCARD_MULTI
        literal = literals[0] if len(literals) == 1 else None
        if not specials:
            self.exact.add("".join(literals))
        elif collapsed == [multi]:
            self.anything = True
        elif literal is not None and collapsed == [multi, literal, multi]:
            self.contains.append(literal)
        elif literal is not None and collapsed == [literal, multi]:
            self.prefixes.append(literal)
        elif literal is not None and collapsed == [multi, literal]:
            self.suffixes.append(literal)
        else:  # "?" anywhere, or "*" between literals
            self.regexes.append(self._regex(collapsed))

    @staticmethod
    def _regex(parts: list[str | SpecialChars]) -> Any:
        """The wildcard pattern on RE2: Python's ``re`` takes minutes on ``*a*a*a*a*b`` over 300 chars."""
        pieces = []
        for part in parts:
            if part is SpecialChars.WILDCARD_MULTI:
                pieces.append(".*")
            elif part is SpecialChars.WILDCARD_SINGLE:
                pieces.append(".")
            else:
                pieces.append(re.escape(str(part)))
        options = _re2_options()
        options.dot_nl = True
        return re2.compile("".join(pieces), options)

    def compile(self) -> Callable[[str], bool]:
        """One test over a text; lowercases it once when the patterns are case-insensitive."""
        if self.anything:
            return _always_text
        fold = self.fold
        exact = frozenset(self.exact)
        prefixes = tuple(self.prefixes)
        suffixes = tuple(self.suffixes)
        contains = tuple(self.contains)
        regexes = tuple(pattern.fullmatch for pattern in self.regexes)
        if not (prefixes or suffixes or contains or regexes):
            if fold:
                return lambda text: text.lower() in exact
            return exact.__contains__

        def test(text: str) -> bool:
            if fold:
                text = text.lower()
            if text in exact:
                return True
            if prefixes and text.startswith(prefixes):
                return True
            if suffixes and text.endswith(suffixes):
                return True
            for needle in contains:
                if needle in text:
                    return True
            return any(match(text) is not None for match in regexes)

        return test


def _always_text(_text: str) -> bool:
    return True


def string_test(values: list[SigmaString]) -> Callable[[str], bool]:
    """A test over a text that is true when any of ``values`` matches it (each by its case mode)."""
    folded = _StringPatterns(fold=True)
    cased = _StringPatterns(fold=False)
    for value in values:
        (cased if isinstance(value, SigmaCasedString) else folded).add(value)
    tests = [group.compile() for group in (folded, cased) if _has_patterns(group)]
    if len(tests) == 1:
        return tests[0]
    return lambda text: any(test(text) for test in tests)


def _has_patterns(group: _StringPatterns) -> bool:
    return bool(
        group.anything or group.exact or group.prefixes or group.suffixes or group.contains
        or group.regexes
    )


def _text_matcher(test: Callable[[str], bool]) -> Matcher:
    def scalar(value: Any) -> bool:
        text = to_text(value)
        return text is not None and test(text)

    return _over_values(scalar)


# -- the other value types -----------------------------------------------------------------------


def _null(value: Any, _raw: dict[str, Any]) -> bool:
    return value is MISSING or value is None


def _exists(expected: bool) -> Matcher:
    def matcher(value: Any, _raw: dict[str, Any]) -> bool:
        return (value is not MISSING) is expected

    return matcher


def _as_number(value: Any) -> float | int | None:
    kind = type(value)
    if kind is int or kind is float:
        return value
    if kind is str and _NUMBER_TEXT.fullmatch(value) is not None:
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def as_number(value: Any) -> float | int | None:
    """A JSON number as it is, a string only when written as a finite JSON number, else ``None``."""
    return _as_number(value)


def _number(expected: int | float) -> Matcher:
    as_text = str(expected)

    def scalar(value: Any) -> bool:
        if type(value) is str and value == as_text:
            return True
        number = _as_number(value)
        return number is not None and number == expected

    return _over_values(scalar)


def _boolean(expected: bool) -> Matcher:
    as_text = "true" if expected else "false"

    def scalar(value: Any) -> bool:
        if type(value) is bool:
            return value is expected
        return type(value) is str and value.lower() == as_text

    return _over_values(scalar)


_COMPARE: Final[dict[CompareOperators, Callable[[float, float], bool]]] = {
    CompareOperators.LT: lambda a, b: a < b,
    CompareOperators.LTE: lambda a, b: a <= b,
    CompareOperators.GT: lambda a, b: a > b,
    CompareOperators.GTE: lambda a, b: a >= b,
    CompareOperators.NEQ: lambda a, b: a != b,
}


def _compare(expression: SigmaCompareExpression) -> Matcher:
    if isinstance(expression.number, SigmaTimestampPart):
        raise Unsupported("comparison on a timestamp part is not supported")
    operator = _COMPARE.get(expression.op)
    if operator is None:
        raise Unsupported(f"unknown comparison operator {expression.op}")
    bound = expression.number.number

    def scalar(value: Any) -> bool:
        number = _as_number(value)
        return number is not None and operator(number, bound)

    return _over_values(scalar)


#: Sigma regex flags as RE2 inline flags (RE2 takes no Python flag bits).
_RE2_FLAGS: Final = {
    SigmaRegularExpressionFlag.IGNORECASE: "i",
    SigmaRegularExpressionFlag.MULTILINE: "m",
    SigmaRegularExpressionFlag.DOTALL: "s",
}


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # the refusal carries the reason; RE2 must not write to stderr
    return options


def linear_regex(source: str, inline_flags: str = "") -> Callable[[str], Any]:
    """RE2's ``search`` for ``source``: linear time in the input, whatever the pattern.

    Raises :class:`Unsupported` with the reason for a pattern RE2 cannot run (backreferences,
    lookahead/lookbehind, possessive quantifiers): those have no linear-time evaluation, so they
    are refused at load rather than allowed to stall the event loop on a crafted input.
    """
    try:
        re.compile(source)
    except re.error as error:
        raise Unsupported(f"regular expression {source!r} is invalid: {error}") from None
    pattern = f"(?{inline_flags}){source}" if inline_flags else source
    try:
        return re2.compile(pattern, _re2_options()).search
    except re2.error as error:
        detail = error.args[0].decode(errors="replace") if error.args and isinstance(error.args[0], bytes) else error
        raise Unsupported(
            f"regular expression {source!r} cannot be run in linear time (RE2: {detail}); backreferences "
            "and lookaround are not supported: rewrite it without them"
        ) from None


def _regex(expression: SigmaRegularExpression) -> Matcher:
    flags = "".join(sorted(_RE2_FLAGS[flag] for flag in expression.flags))
    search = linear_regex(str(expression.regexp), flags)
    return _text_matcher(lambda text: search(text) is not None)


@lru_cache(maxsize=16384)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _cidr(expression: SigmaCIDRExpression) -> Matcher:
    network = expression.network

    def scalar(value: Any) -> bool:
        if type(value) is not str:
            return False
        address = _address(value)
        return address is not None and address.version == network.version and address in network

    return _over_values(scalar)


def _field_reference(reference: SigmaFieldReference) -> Matcher:
    other = compile_path(reference.field)
    prefix, suffix = reference.starts_with, reference.ends_with

    def compare(mine: str, theirs: str) -> bool:
        if prefix and suffix:
            return theirs in mine
        if prefix:  # "startswith": the other field's value is at the start of this one
            return mine.startswith(theirs)
        if suffix:
            return mine.endswith(theirs)
        return mine == theirs

    def matcher(value: Any, raw: dict[str, Any]) -> bool:
        if value is MISSING or value is None:
            return False
        found = other(raw)
        if found is MISSING or found is None:
            return False
        theirs = [text.lower() for text in map(to_text, leaves(found)) if text is not None]
        for leaf in leaves(value):
            mine = to_text(leaf)
            if mine is not None:
                mine = mine.lower()
                if any(compare(mine, other_text) for other_text in theirs):
                    return True
        return False

    return matcher


_PARTS: Final[dict[TimestampPart, Callable[[datetime], int]]] = {
    TimestampPart.MINUTE: lambda moment: moment.minute,
    TimestampPart.HOUR: lambda moment: moment.hour,
    TimestampPart.DAY: lambda moment: moment.day,
    TimestampPart.WEEK: lambda moment: moment.isocalendar()[1],
    TimestampPart.MONTH: lambda moment: moment.month,
    TimestampPart.YEAR: lambda moment: moment.year,
}


def _timestamp_part(part: SigmaTimestampPart) -> Matcher:
    extract = _PARTS[part.timestamp_part]
    expected = part.number

    def scalar(value: Any) -> bool:
        try:
            if type(value) is str:
                epoch = parse_event_time(value)
            elif type(value) in (int, float):
                epoch = float(value)
            else:
                return False
            return extract(datetime.fromtimestamp(epoch, UTC)) == expected
        except (ValueError, OverflowError, OSError):
            return False

    return _over_values(scalar)


def _single(value: SigmaType) -> Matcher:
    """One non-string value (strings are grouped by :func:`compile_value_group`)."""
    if isinstance(value, SigmaString):
        return compile_value_group([value])
    if isinstance(value, SigmaNull):
        return _null
    if isinstance(value, SigmaExists):
        return _exists(bool(value.exists))
    if isinstance(value, SigmaTimestampPart):
        return _timestamp_part(value)
    if isinstance(value, SigmaNumber):
        return _number(value.number)
    if isinstance(value, SigmaBool):
        return _boolean(bool(value.boolean))
    if isinstance(value, SigmaRegularExpression):
        return _regex(value)
    if isinstance(value, SigmaCIDRExpression):
        return _cidr(value)
    if isinstance(value, SigmaCompareExpression):
        return _compare(value)
    if isinstance(value, SigmaFieldReference):
        return _field_reference(value)
    if isinstance(value, SigmaExpansion):
        return compile_value_group(list(value.values))
    raise Unsupported(f"value type {type(value).__name__} is not supported")


def compile_value_group(values: list[SigmaType]) -> Matcher:
    """A matcher that is true when the field matches any of ``values`` (Sigma's default OR).

    String values are merged into one test (a set lookup, prefix/suffix tuples, substrings, and
    regexes only for wildcard patterns that need them) so that a field is read, converted and
    lowercased once however many values the rule lists.
    """
    strings = [value for value in values if isinstance(value, SigmaString)]
    matchers = [_single(value) for value in values if not isinstance(value, SigmaString)]
    if strings:
        matchers.insert(0, _text_matcher(string_test(strings)))
    if len(matchers) == 1:
        return matchers[0]
    group = tuple(matchers)

    def any_of(value: Any, raw: dict[str, Any]) -> bool:
        return any(matcher(value, raw) for matcher in group)

    return any_of
