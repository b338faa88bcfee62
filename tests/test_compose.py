"""The docker-compose demo (Docker cannot run here): structure checked, its trailguard config validated."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.conftest import ROOT, run_cli

COMPOSE = ROOT / "deploy" / "compose"


def test_compose_wires_trailguard_to_kafka_and_localstack() -> None:
    spec = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    services = spec["services"]
    assert {"kafka", "localstack", "trailguard"} <= set(services)
    trailguard = services["trailguard"]
    assert trailguard["build"]["context"] == "../.."
    assert (COMPOSE / trailguard["build"]["context"] / "Dockerfile").is_file()
    assert set(trailguard["depends_on"]) == {"kafka", "localstack"}
    assert trailguard["read_only"] is True
    mounted = {v.split(":")[0] for v in trailguard["volumes"]}
    for local in (m for m in mounted if m.startswith("./")):
        assert (COMPOSE / local).is_file(), local
    assert trailguard["environment"]["AWS_ENDPOINT_URL_SQS"].startswith("http://localstack:")


def test_compose_trailguard_config_is_valid(tmp_path: Path) -> None:
    config = yaml.safe_load((COMPOSE / "trailguard.yaml").read_text())
    assert {s["type"] for s in config["sources"]} == {"kafka", "sqs"}
    # container paths → a temp dir, so check-config can validate it on this machine
    text = (COMPOSE / "trailguard.yaml").read_text().replace("/var/lib/trailguard", str(tmp_path))
    local = tmp_path / "trailguard.yaml"
    local.write_text(text)
    result = run_cli("check-config", str(local))
    assert result.returncode == 0, result.stderr.decode()
