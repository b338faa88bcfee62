"""Bound what an alert carries (evidence, fields) so that encoding it can never fail or explode.

Evidence is copied from events, and events come from whoever made the API call: a request value
can nest hundreds of levels deep (``orjson`` refuses more than 254) or hold megabytes.  An alert is
built once and then encoded by every sink, spooled and dead-lettered, so it is bounded once, when
it is built: nesting deeper than :data:`MAX_DEPTH` is replaced by a marker, strings longer than
:data:`MAX_STRING` are cut with a marker saying how much was cut, lists and mappings keep their
first :data:`MAX_ITEMS` entries plus a marker, and once :data:`MAX_TOTAL` characters have been
kept the rest is replaced by markers.  Values that JSON cannot hold (bytes, sets, objects) become
their ``repr``, bounded too.  The result is plain JSON data, and a bounded value is returned as is
(no copy) when nothing had to be cut.
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = ["CUT_KEY", "MAX_DEPTH", "MAX_ITEMS", "MAX_STRING", "MAX_TOTAL", "bound", "cut_text"]

#: Deepest nesting kept (the top-level mapping is depth 1); orjson's own limit is 254.
MAX_DEPTH: Final = 16
#: Longest string kept whole.
MAX_STRING: Final = 4096
#: Entries kept per list or mapping.
MAX_ITEMS: Final = 200
#: Characters (strings and keys) kept in all, across the whole value.
MAX_TOTAL: Final = 64 * 1024
#: Key of the marker entry added to a mapping that lost entries.
CUT_KEY: Final = "…cut"

_SCALARS: Final = (bool, int, float, type(None))
_CUT_TAIL: Final = re.compile(r"…\[\+\d+ chars\]$")


def cut_text(text: str, limit: int) -> str:
    """``text`` or its first ``limit`` characters followed by ``…[+N chars]``."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[+{len(text) - limit} chars]"


class _Budget:
    __slots__ = ("cut", "left")

    def __init__(self, total: int) -> None:
        self.left = total
        self.cut = False


def _string(text: str, budget: _Budget, limit: int) -> str:
    allowed = min(limit, max(budget.left, 0))
    if len(text) <= allowed:
        budget.left -= len(text)
        return text
    if text.startswith("…[") and text.endswith("]") and len(text) < 80:
        return text  # a marker left by an earlier bounding: free, so bounding twice changes nothing
    cut = _CUT_TAIL.search(text)
    if cut is not None and cut.start() <= allowed:
        budget.left -= cut.start()
        return text  # cut before, to this same limit
    budget.cut = True
    budget.left -= allowed
    return cut_text(text, allowed)


def _is_marker(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("…[") and value.endswith("cut]")


def _bound(value: Any, depth: int, budget: _Budget, limits: tuple[int, int, int]) -> Any:
    max_depth, max_string, max_items = limits
    if isinstance(value, str):
        return _string(value, budget, max_string)
    if isinstance(value, _SCALARS):
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
            budget.cut = True
            return _string(str(value), budget, max_string)  # orjson cannot encode it as a number
        return value
    if isinstance(value, (dict, list, tuple)):
        if depth >= max_depth:
            budget.cut = True
            kind = "mapping" if isinstance(value, dict) else "list"
            return f"…[{kind} nested deeper than {max_depth} levels cut]"
        if budget.left <= 0:
            budget.cut = True
            return f"…[{len(value)} entries cut: size limit]"
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for index, (key, item) in enumerate(value.items()):
                if key == CUT_KEY and index == len(value) - 1 and index <= max_items:
                    out[CUT_KEY] = item  # the marker of an earlier bounding
                    break
                if index >= max_items or budget.left <= 0:
                    budget.cut = True
                    out[CUT_KEY] = f"{len(value) - index} more entries cut"
                    break
                if not isinstance(key, str):
                    budget.cut = True  # orjson refuses non-string keys
                    key = str(key)
                name = key
                out[_string(name, budget, 256)] = _bound(item, depth + 1, budget, limits)
            return out
        items: list[Any] = []
        for index, item in enumerate(value):
            if index == len(value) - 1 and index <= max_items and _is_marker(item):
                items.append(item)  # the marker of an earlier bounding
                break
            if index >= max_items or budget.left <= 0:
                budget.cut = True
                items.append(f"…[{len(value) - index} more items cut]")
                break
            items.append(_bound(item, depth + 1, budget, limits))
        return items
    budget.cut = True
    return _string(repr(value), budget, max_string)


def bound(
    value: Any,
    *,
    max_depth: int = MAX_DEPTH,
    max_string: int = MAX_STRING,
    max_items: int = MAX_ITEMS,
    max_total: int = MAX_TOTAL,
) -> Any:
    """``value`` as JSON-encodable data within the limits, with a marker wherever something was cut.

    Returns ``value`` itself when it already fits (the common case costs one walk, no copy).
    """
    budget = _Budget(max_total)
    bounded = _bound(value, 1, budget, (max_depth, max_string, max_items))
    return bounded if budget.cut else value
