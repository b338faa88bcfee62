"""Config is strict: every problem names the file, the key and the fix, and the daemon refuses to start."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.components import check
from daemon.config import ConfigError, load_config, parse_duration
from tests.conftest import run_cli


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trailguard.yaml"
    path.write_text(text)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        check(load_config(path), str(path))
    return caught.value.problems


@pytest.mark.parametrize(("text", "fragment"), [
    ("pipeline:\n  allowed_latenes: 5m\n", "pipeline.allowed_latenes: unknown key"),
    ("pipeline:\n  allowed_lateness: soon\n", "pipeline.allowed_lateness"),
    ("sources:\n  - type: carrier-pigeon\n", "sources[0].type: unknown source type 'carrier-pigeon'"),
    ("sources:\n  - paths: [x]\n", "sources[0]: each entry needs a 'type'"),
    ("sinks:\n  - type: file\n", "sinks[0].path: required key is missing"),
    ("detectors:\n  no_such_detector: {}\n", "detectors.no_such_detector: unknown detector"),
    ("detectors:\n  cloudtrail_tampering: {enabeld: false}\n", "detectors.cloudtrail_tampering.enabeld: unknown key"),
    ("metrics:\n  port: 99999\n", "metrics.port"),
    ("sinks:\n  - type: stdout\n  - type: stdout\n", "two sinks are named 'stdout'"),
    ("sources: []\n", "no source configured"),
])
def test_errors_name_file_key_and_fix(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert any(fragment in p for p in problems), problems
    assert all(p.startswith(str(path)) and "fix:" in p for p in problems), problems


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "pipeline:\n  bogus: 1\nmetrics:\n  nope: 2\n")
    problems = problems_of(path)
    assert len(problems) == 2


def test_missing_source_path_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "sources:\n  - type: file\n    paths: [does/not/exist]\n")
    problems = problems_of(path)
    assert any("does/not/exist" in p for p in problems), problems


def test_environment_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TG_ALERTS", str(tmp_path / "alerts.jsonl"))
    path = write(tmp_path, "sinks:\n  - type: file\n    path: ${TG_ALERTS}\n"
                           "  - type: stdout\n    name: ${TG_NAME:-console}\n")
    config = load_config(path)
    assert config.sinks[0]["path"] == str(tmp_path / "alerts.jsonl")
    assert config.sinks[1]["name"] == "console"


def test_unset_environment_variable_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TG_SURELY_UNSET", raising=False)
    path = write(tmp_path, "sinks:\n  - type: stdout\n    name: ${TG_SURELY_UNSET}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "sinks[0].name: environment variable TG_SURELY_UNSET is not set" in str(caught.value)


def test_bad_yaml_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "pipeline:\n  allowed_lateness: [1,\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "not valid YAML at line" in str(caught.value)


def test_relative_paths_resolve_against_config_dir(tmp_path: Path) -> None:
    (tmp_path / "trail").mkdir()
    path = write(tmp_path, "sources:\n  - type: file\n    paths: [trail]\n"
                           "sinks:\n  - type: file\n    path: out/a.jsonl\n")
    built = check(load_config(path), str(path))
    assert built.sources[0][1].paths == [str(tmp_path / "trail")]
    assert built.sinks[0][1].path == str(tmp_path / "out" / "a.jsonl")


def test_defaults_need_no_file() -> None:
    built = check(load_config(None))
    assert [m.type for _, m in built.sinks] == ["stdout"]
    assert {cls.name for cls, _ in built.detectors} >= {"sigma", "cloudtrail_tampering", "impossible_travel",
                                                        "credential_exfiltration", "new_region"}


@pytest.mark.parametrize(("text", "seconds"), [("10s", 10), ("15m", 900), ("1.5h", 5400), ("250ms", 0.25),
                                               (30, 30), ("7d", 604800)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_check_config_cli(tmp_path: Path) -> None:
    bad = write(tmp_path, "pipeline:\n  queue_sise: 3\n")
    result = run_cli("check-config", str(bad))
    assert result.returncode == 2
    assert b"pipeline.queue_sise: unknown key" in result.stderr
    good = tmp_path / "good.yaml"
    good.write_text("sinks:\n  - type: stdout\n")
    result = run_cli("check-config", str(good))
    assert result.returncode == 0, result.stderr
    assert b"ok" in result.stdout


def test_shipped_config_is_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    result = run_cli("check-config", str(root / "config" / "trailguard.yaml"))
    assert result.returncode == 0, result.stderr.decode()
