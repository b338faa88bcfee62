"""Operator-facing documents say what the code does: the README's metric table names exactly the
metrics ``/metrics`` exports, every Prometheus alert has a standard severity and a runbook that
exists, and the dashboard has the noisiest-rules panel."""

from __future__ import annotations

import re

import orjson
import yaml

from daemon.metrics import Metrics
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
STANDARD_SEVERITIES = {"critical", "warning", "info"}


def exported_names() -> set[str]:
    """Names as Prometheus scrapes them (counters get ``_total``), from the daemon's own registry."""
    return {f.name + "_total" if f.type == "counter" else f.name
            for f in Metrics().registry.collect() if f.name.startswith("trailguard_")}


def documented_names() -> set[str]:
    section = README[README.index("## Metrics, health and logs"):README.index("## State and restarts")]
    names: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        prefix = None
        for token in re.findall(r"`([a-z_]+)`", line.split("|")[1]):
            if token.startswith("trailguard_"):
                prefix = token
                names.add(token)
            elif token.startswith("_") and prefix:  # `trailguard_source_acknowledged_total`, `_retried_total`
                names.add(prefix[:prefix.index("_", len("trailguard_"))] + token)
    return names


def test_readme_metric_table_matches_the_exported_names() -> None:
    documented, exported = documented_names(), exported_names()
    assert documented - exported == set(), "documented but not exported"
    assert exported - documented == set(), "exported but not documented"


def test_prometheus_alerts_have_standard_severities_and_existing_runbooks() -> None:
    rules = [rule for group in yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())["groups"]
             for rule in group["rules"]]
    runbooks = (ROOT / "docs" / "prometheus-alerts.md").read_text()
    anchors = {re.sub(r"[^a-z0-9-]", "", h.lower().replace(" ", "-")) for h in re.findall(r"^## (.+)$", runbooks, re.M)}
    for rule in rules:
        assert rule["labels"]["severity"] in STANDARD_SEVERITIES, rule["alert"]
        url = rule["annotations"]["runbook_url"]
        assert url.split("#")[0].endswith("docs/prometheus-alerts.md"), url
        assert url.split("#")[1] in anchors, f"{rule['alert']}: no section {url.split('#')[1]}"


def test_dashboard_has_a_noisiest_rules_panel_on_the_per_rule_label() -> None:
    dashboard = orjson.loads((ROOT / "deploy" / "grafana" / "trailguard.json").read_bytes())
    (panel,) = [p for p in dashboard["panels"] if p.get("title", "").startswith("Noisiest rules")]
    expr = panel["targets"][0]["expr"]
    assert "trailguard_alerts_total" in expr and "by (rule" in expr and expr.startswith("topk(")
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
