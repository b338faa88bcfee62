"""The route table: any-of within a field, all fields ANDed, first match wins unless ``continue``."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from daemon.delivery.routing import Router, RoutingConfig, validate_routes
from detectors.alert import Alert

SINKS = ["pagerduty", "slack-prod", "slack-dev", "siem", "kafka"]

TABLE = RoutingConfig.model_validate({
    "routes": [
        {"name": "page", "min_severity": "high", "sinks": ["pagerduty"], "continue": True},
        {"detectors": ["root_activity", "console_login"], "accounts": ["111111111111"], "sinks": ["slack-prod"]},
        {"accounts": ["222222222222"], "regions": ["eu-west-1", "eu-central-1"], "sinks": ["slack-dev"]},
        {"tags": ["mitre:T1078", "mitre:T1098"], "rule_ids": ["r1"], "sinks": ["siem", "kafka"]},
    ],
    "default_sinks": ["siem"],
})


def alert(**fields: object) -> Alert:
    base: dict = dict(detector="other", title="t", severity="low", time=0.0, summary="", account_id="999",
                      region="us-east-1", tags=[], rule_id=None)
    base.update(fields)
    return Alert(**base)


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, ("siem",)),                                                              # nothing matches → default
    ({"severity": "medium"}, ("siem",)),                                          # below min_severity
    ({"severity": "high"}, ("pagerduty",)),                                       # continue, but nothing else
    ({"severity": "critical", "detector": "root_activity", "account_id": "111111111111"},
     ("pagerduty", "slack-prod")),                                                # continue adds the next match
    ({"detector": "root_activity", "account_id": "111111111111"}, ("slack-prod",)),
    ({"detector": "console_login", "account_id": "111111111111"}, ("slack-prod",)),  # any-of within a field
    ({"detector": "root_activity", "account_id": "222222222222"}, ("siem",)),     # fields are ANDed
    ({"account_id": "222222222222", "region": "eu-central-1"}, ("slack-dev",)),
    ({"account_id": "222222222222", "region": "us-east-1"}, ("siem",)),
    ({"tags": ["x", "mitre:T1098"], "rule_id": "r1"}, ("siem", "kafka")),        # any tag matches
    ({"tags": ["mitre:T1098"], "rule_id": "r2"}, ("siem",)),
    ({"detector": "root_activity", "account_id": "111111111111", "tags": ["mitre:T1078"], "rule_id": "r1"},
     ("slack-prod",)),                                                            # first match stops
])
def test_route_table(fields: dict, expected: tuple[str, ...]) -> None:
    assert Router(TABLE, SINKS).route(alert(**fields)) == expected


def test_default_is_every_sink_and_empty_default_drops() -> None:
    assert Router(RoutingConfig(), SINKS).route(alert()) == tuple(SINKS)
    assert Router(RoutingConfig(default_sinks=()), SINKS).route(alert()) == ()


def test_unknown_sinks_are_reported_with_a_fix() -> None:
    routing = RoutingConfig.model_validate({"routes": [{"name": "x", "sinks": ["pagerdutty"]}],
                                            "default_sinks": ["nope"]})
    problems = validate_routes(routing, SINKS)
    assert problems == [
        "routing.routes[0] (x).sinks: unknown sink 'pagerdutty'; fix: use one of kafka, pagerduty, siem, "
        "slack-dev, slack-prod",
        "routing.default_sinks: unknown sink 'nope'; fix: use one of kafka, pagerduty, siem, slack-dev, slack-prod",
    ]
    with pytest.raises(ValueError, match="pagerdutty"):
        Router(routing, SINKS)
    assert validate_routes(TABLE, SINKS) == []


def test_route_config_is_strict() -> None:
    with pytest.raises(ValidationError):
        RoutingConfig.model_validate({"routes": [{"sinks": ["siem"], "severity": "high"}]})
    with pytest.raises(ValidationError):
        RoutingConfig.model_validate({"routes": [{"sinks": []}]})
    with pytest.raises(ValidationError):
        RoutingConfig.model_validate({"routes": [{"sinks": ["siem"], "min_severity": "urgent"}]})
    with pytest.raises(ValidationError):
        RoutingConfig.model_validate({"route": []})
