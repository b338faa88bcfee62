"""Which sinks get which alert: an ordered route table, evaluated like Alertmanager's.

Each route matches on ``min_severity``, ``detectors``, ``rule_ids``, ``accounts``, ``regions``,
``tags`` and, from the account map, ``account_environments`` and ``account_tags``: within one
field any listed value matches; an empty field matches everything; all
fields must match.  The first matching route decides, unless it says ``continue: true``, in which
case later routes are evaluated too and their sinks added.  An alert no route matched goes to
``default_sinks`` (default: every sink; ``[]`` drops it, counted as ``unrouted``).

Config (top-level ``routing:``)::

    routing:
      routes:
        - min_severity: high
          sinks: [pagerduty]
          continue: true
        - detectors: [root_activity, console_login_anomaly]
          accounts: ["111122223333"]
          sinks: [slack-prod]
      default_sinks: [siem]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from detectors.alert import SEVERITY_RANK, Alert

__all__ = ["Route", "Router", "RoutingConfig", "validate_routes"]

Severity = Literal["info", "low", "medium", "high", "critical"]


class Route(BaseModel):
    """One row of the route table."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str | None = None
    """Shown in validation errors (default: the route's position)."""
    min_severity: Severity | None = None
    detectors: tuple[str, ...] = ()
    rule_ids: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    account_environments: tuple[str, ...] = ()
    """Environments from the account map (``accounts:``), e.g. ``[prod]``."""
    account_tags: tuple[str, ...] = ()
    """Account-map tags; any one listed matches."""
    sinks: tuple[str, ...] = Field(min_length=1)
    """Sink names (a sink's ``name``, or its ``type`` when unnamed)."""
    continue_: bool = Field(default=False, alias="continue")
    """Keep evaluating later routes after this one matched."""


class RoutingConfig(BaseModel):
    """The ``routing:`` section: ordered ``routes`` and the ``default_sinks`` for unmatched alerts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    routes: tuple[Route, ...] = ()
    default_sinks: tuple[str, ...] | None = None
    """Where alerts matching no route go; unset: every sink; ``[]``: nowhere (counted)."""


def validate_routes(routing: RoutingConfig, sink_names: Iterable[str]) -> list[str]:
    """Problems with the table (unknown sink names), one line each, naming route and fix."""
    known = set(sink_names)
    listing = ", ".join(sorted(known)) or "(none configured)"
    problems = []
    for index, route in enumerate(routing.routes):
        label = f"routing.routes[{index}]" + (f" ({route.name})" if route.name else "")
        for sink in route.sinks:
            if sink not in known:
                problems.append(f"{label}.sinks: unknown sink {sink!r}; fix: use one of {listing}")
    for sink in routing.default_sinks or ():
        if sink not in known:
            problems.append(f"routing.default_sinks: unknown sink {sink!r}; fix: use one of {listing}")
    return problems


class _Compiled:
    __slots__ = ("account_environments", "account_tags", "accounts", "cont", "detectors", "min_rank", "regions",
                 "rule_ids", "sinks", "tags")

    def __init__(self, route: Route) -> None:
        self.min_rank = SEVERITY_RANK[route.min_severity] if route.min_severity else -1
        self.detectors = frozenset(route.detectors)
        self.rule_ids = frozenset(route.rule_ids)
        self.accounts = frozenset(route.accounts)
        self.regions = frozenset(route.regions)
        self.tags = frozenset(route.tags)
        self.account_environments = frozenset(route.account_environments)
        self.account_tags = frozenset(route.account_tags)
        self.sinks = route.sinks
        self.cont = route.continue_

    def matches(self, alert: Alert) -> bool:
        return (SEVERITY_RANK[alert.severity] >= self.min_rank
                and (not self.detectors or alert.detector in self.detectors)
                and (not self.rule_ids or alert.rule_id in self.rule_ids)
                and (not self.accounts or alert.account_id in self.accounts)
                and (not self.regions or alert.region in self.regions)
                and (not self.tags or not self.tags.isdisjoint(alert.tags))
                and (not self.account_environments
                     or (alert.account or {}).get("environment") in self.account_environments)
                and (not self.account_tags
                     or not self.account_tags.isdisjoint((alert.account or {}).get("tags") or ())))


class Router:
    """Evaluates the table; :meth:`route` returns sink names in first-mention order."""

    def __init__(self, routing: RoutingConfig, sink_names: Sequence[str]) -> None:
        problems = validate_routes(routing, sink_names)
        if problems:
            raise ValueError("; ".join(problems))
        self._routes = [_Compiled(route) for route in routing.routes]
        self._default = tuple(sink_names) if routing.default_sinks is None else routing.default_sinks

    def route(self, alert: Alert) -> tuple[str, ...]:
        """The sinks ``alert`` goes to (empty: nowhere)."""
        chosen: list[str] | None = None
        for route in self._routes:
            if route.matches(alert):
                if chosen is None:
                    if not route.cont:
                        return route.sinks
                    chosen = []
                chosen.extend(s for s in route.sinks if s not in chosen)
                if not route.cont:
                    break
        return self._default if chosen is None else tuple(chosen)
