"""``trailguard config defaults`` prints every key of the effective configuration, and what it
prints is itself a valid configuration (round trip through ``check-config``)."""

from __future__ import annotations

from pathlib import Path

import yaml

from detectors.registry import detector_names
from tests.conftest import run_cli


def test_defaults_list_every_section_and_detector_and_round_trip(tmp_path: Path) -> None:
    result = run_cli("config", "defaults")
    assert result.returncode == 0, result.stderr.decode()
    document = yaml.safe_load(result.stdout)
    assert set(document) >= {"sources", "sinks", "detectors", "enrichment", "routing", "delivery", "pipeline",
                             "state", "metrics", "logging", "shutdown", "plugins"}
    assert set(document["detectors"]) == set(detector_names())
    assert document["detectors"]["sigma"]["exceptions"] == []
    assert "allowed_lateness" in document["pipeline"] and "geoip_city_path" in document["enrichment"]
    again = tmp_path / "effective.yaml"
    again.write_text(result.stdout.decode())
    checked = run_cli("check-config", str(again))
    assert checked.returncode == 0, checked.stderr.decode()


def test_defaults_of_a_file_show_its_values_and_refuse_a_bad_one(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("detectors:\n  impossible_travel: {max_speed_kmh: 1200}\n")
    document = yaml.safe_load(run_cli("config", "defaults", "--config", str(config)).stdout)
    assert document["detectors"]["impossible_travel"]["max_speed_kmh"] == 1200
    config.write_text("detectors:\n  impossible_travel: {max_speed: 1200}\n")
    refused = run_cli("config", "defaults", "--config", str(config))
    assert refused.returncode == 2 and "max_speed: unknown key" in refused.stderr.decode()
