"""``check-config --explain-routing``: where would a sample alert go, and why.

Walks the route table route by route (matched or not, on which field, stopped or continued), then
states the sinks the real :class:`~daemon.delivery.routing.Router` returns — the answer is always
the router's own, the walk only explains it.
"""

from __future__ import annotations

from collections.abc import Sequence

from daemon.delivery.routing import Router, RoutingConfig
from detectors.alert import SEVERITY_RANK, Alert

__all__ = ["explain_routing", "sample_alert"]

_FIELDS = {"severity", "detector", "rule_id", "account_id", "region", "tags"}


def sample_alert(pairs: Sequence[str]) -> Alert:
    """An alert from ``KEY=VALUE`` pairs (severity, detector, rule_id, account_id, region, tags=a,b).

    ``ValueError`` names a bad pair and the keys that are allowed.
    """
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in _FIELDS:
            raise ValueError(f"{pair!r}: give KEY=VALUE with KEY one of {', '.join(sorted(_FIELDS))}")
        values[key] = value
    severity = values.get("severity", "medium")
    if severity not in SEVERITY_RANK:
        raise ValueError(f"severity={severity!r}: use one of {', '.join(SEVERITY_RANK)}")
    return Alert(detector=values.get("detector", "sigma"), title="sample alert", severity=severity, time=0.0,
                 summary="", account_id=values.get("account_id", ""), region=values.get("region", ""),
                 rule_id=values.get("rule_id") or None,
                 tags=[t for t in values.get("tags", "").split(",") if t])


def _mismatch(route: object, alert: Alert) -> str | None:
    checks = (
        ("min_severity", route.min_severity, lambda v: SEVERITY_RANK[alert.severity] >= SEVERITY_RANK[v]),
        ("detectors", route.detectors, lambda v: alert.detector in v),
        ("rule_ids", route.rule_ids, lambda v: alert.rule_id in v),
        ("accounts", route.accounts, lambda v: alert.account_id in v),
        ("regions", route.regions, lambda v: alert.region in v),
        ("tags", route.tags, lambda v: not set(v).isdisjoint(alert.tags)),
    )
    for name, wanted, ok in checks:
        if wanted and not ok(wanted):
            return f"{name} {list(wanted) if not isinstance(wanted, str) else wanted}"
    return None


def explain_routing(routing: RoutingConfig, sink_names: Sequence[str], alert: Alert) -> list[str]:
    """Lines explaining the route table's decision for ``alert``, ending with the sinks it goes to."""
    lines = [f"sample alert: severity={alert.severity} detector={alert.detector} rule_id={alert.rule_id or '-'} "
             f"account_id={alert.account_id or '-'} region={alert.region or '-'} tags={','.join(alert.tags) or '-'}"]
    matched_any = False
    for index, route in enumerate(routing.routes):
        label = f"routes[{index}]" + (f" ({route.name})" if route.name else "")
        why_not = _mismatch(route, alert)
        if why_not is not None:
            lines.append(f"  {label}: no match (needs {why_not})")
            continue
        matched_any = True
        if route.continue_:
            lines.append(f"  {label}: match → {', '.join(route.sinks)}; continue: true, later routes are evaluated")
        else:
            lines.append(f"  {label}: match → {', '.join(route.sinks)}; stops here")
            break
    if not matched_any:
        default = "every sink" if routing.default_sinks is None else (", ".join(routing.default_sinks) or "nowhere")
        lines.append(f"  no route matched: default_sinks → {default}")
    elif routing.default_sinks is not None:
        lines.append("  default_sinks are not used: a route matched (default_sinks only take alerts no route matched)")
    sinks = Router(routing, sink_names).route(alert)
    lines.append(f"delivered to: {', '.join(sinks) if sinks else 'nowhere (counted as unrouted)'}")
    return lines
