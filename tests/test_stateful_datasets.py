"""Real-data checks for ``impossible_travel``, ``credential_exfiltration`` and ``new_region``.

* Invictus (``tests/data/stateful/travel/invictus``, all 55 delivery files, gzipped): a real account
  during a Stratus Red Team run whose IPs were rewritten to private ranges — impossible travel has
  nothing to compare and must stay silent; so must the other two (no outside address, one hour of a
  learning week).
* flaws2.cloud (``tests/data/stateful/travel/flaws2``, the 8 files): the attacker steals the Lambda
  role session ``level1`` and the ECS task role ``level3`` credentials and uses both from
  104.102.221.250; both must be flagged, by the generic heuristics (no names are configured).

Each is run twice: through the engine with the daemon's real enricher (bundled DB-IP and AWS ranges),
and through the real ``trailguard replay`` CLI with the default configuration.
"""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

from detectors.alert import Alert
from detectors.base import DetectorContext
from detectors.engine import DetectionEngine
from detectors.event import Event
from detectors.registry import detector_class
from tests.conftest import run_cli

DATA = Path(__file__).parent / "data" / "stateful" / "travel"
INVICTUS = DATA / "invictus"
FLAWS2 = DATA / "flaws2"
MINE = ("impossible_travel", "credential_exfiltration", "new_region")
ATTACKER = "104.102.221.250"
LEVEL1 = "arn:aws:sts::653711331788:assumed-role/level1/level1"
LEVEL3 = "arn:aws:sts::653711331788:assumed-role/level3/d190d14a-2404-45d6-9113-4eda22d7f2c7"


@cache
def enricher() -> Any:
    from daemon.enrich import EnrichmentConfig, build_enricher

    return build_enricher(EnrichmentConfig(max_age_days=0))


def load(root: Path) -> list[Event]:
    events = [Event(record, str(path)) for path in sorted(root.rglob("*.json.gz"))
              for record in orjson.loads(gzip.decompress(path.read_bytes()))["Records"]]
    return sorted(events, key=lambda e: e.time)


def detect(events: list[Event], **configs: dict[str, Any]) -> list[Alert]:
    context = DetectorContext(enricher=enricher())
    detectors = []
    for name in MINE:
        cls = detector_class(name)
        detectors.append(cls(cls.Config(**configs.get(name, {})), context))
    return DetectionEngine(detectors, allowed_lateness=900).process_many(events)


def replay(path: Path) -> list[dict[str, Any]]:
    result = run_cli("replay", "--quiet", str(path))
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_invictus_copy_is_complete_and_its_addresses_are_private() -> None:
    events = load(INVICTUS)
    assert len(list(INVICTUS.glob("*.json.gz"))) == 55 and len(events) == 2900
    kinds = {enricher().network_kind(e.source_ip) for e in events}
    assert "public" not in kinds and "private" in kinds


def test_invictus_is_silent_for_all_three() -> None:
    assert detect(load(INVICTUS)) == []


def test_flaws2_lambda_and_ecs_credentials_are_flagged() -> None:
    alerts = detect(load(FLAWS2))
    assert sorted((a.detector, a.principal, a.source_ips[0]) for a in alerts) == [
        ("credential_exfiltration", LEVEL1, ATTACKER),
        ("credential_exfiltration", LEVEL3, ATTACKER),
    ]
    by_session = {a.principal: a.evidence for a in alerts}
    lambda_ev, ecs_ev = by_session[LEVEL1], by_session[LEVEL3]
    assert {"issued_to:lambda.amazonaws.com", "service_role_path", "compute_user_agent"} <= set(
        lambda_ev["compute_reasons"])
    assert lambda_ev["first_seen"]["network"] in ("aws", "issued")
    assert {"issued_to:ecs-tasks.amazonaws.com", "ecs_task_session"} <= set(ecs_ev["compute_reasons"])
    assert ecs_ev["role_arn"] == "arn:aws:iam::653711331788:role/level3"
    assert ecs_ev["geo"]["country"] == "US"
    assert all(a.severity == "high" for a in alerts)


def test_flaws2_is_caught_by_the_learned_issue_alone() -> None:
    # no name, path or user-agent heuristics: the AssumeRole by lambda/ecs-tasks still identifies both
    alerts = detect(load(FLAWS2), credential_exfiltration={
        "session_name_heuristics": False, "service_role_path_is_compute": False, "network_change": False})
    assert sorted(a.principal for a in alerts) == [LEVEL1, LEVEL3]
    reasons = {a.principal: a.evidence["compute_reasons"] for a in alerts}
    assert reasons[LEVEL3] == ["issued_to:ecs-tasks.amazonaws.com", "role_assumed_by:ecs-tasks.amazonaws.com"]
    assert "issued_to:lambda.amazonaws.com" in reasons[LEVEL1]


@pytest.mark.parametrize("dataset", ["invictus", "flaws2"])
def test_cli_replay_default_config(dataset: str) -> None:
    alerts = [a for a in replay(DATA / dataset) if a["detector"] in MINE]
    if dataset == "invictus":
        assert alerts == []
        return
    assert sorted((a["detector"], a["principal"], a["source_ips"][0]) for a in alerts) == [
        ("credential_exfiltration", LEVEL1, ATTACKER),
        ("credential_exfiltration", LEVEL3, ATTACKER),
    ]
    assert all(a["evidence"]["geoip_attribution"].startswith("IP Geolocation by DB-IP") for a in alerts)
