"""Start-up stays fast without changing what is loaded: libyaml parses the rule pack exactly as PyYAML's
pure-Python safe loader does, and the start-up benchmark starts the shipped configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.scenarios.startup import default_config
from detectors.sigma import loader
from detectors.sigma.loader import load_rules, rule_files

ROOT = Path(__file__).resolve().parent.parent
PACK = ROOT / "config" / "rules"


def test_the_rule_pack_is_parsed_by_libyaml() -> None:
    assert loader._SAFE_LOADER is yaml.CSafeLoader  # the wheels ship libyaml: a fallback here is a regression


def test_libyaml_reads_every_pack_file_as_the_pure_python_loader_does() -> None:
    files, issues = rule_files([PACK])
    assert files and not issues
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert loader._documents(text) == list(yaml.load_all(text, Loader=yaml.SafeLoader)), path


def test_a_yaml_error_is_still_one_issue_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.yml").write_text("title: x\ndetection: [unclosed\n")
    rules, errors = load_rules([tmp_path])
    assert not rules.rules
    assert [e.path for e in errors] == [str(tmp_path / "broken.yml")]
    assert "not a valid Sigma YAML file" in errors[0].reason


def test_the_startup_benchmark_runs_the_shipped_configuration_with_absolute_paths() -> None:
    config = default_config(12345)
    assert config["metrics"] == {**config["metrics"], "host": "127.0.0.1", "port": 12345}
    paths = [p for s in config["sources"] for p in s.get("paths", ())] + config["detectors"]["sigma"]["paths"]
    assert paths and all(Path(p).is_absolute() and Path(p).exists() for p in paths)


def one_event_run(tmp_path: Path) -> Path:
    """A finite ``run`` config: one event from a file, alerts to a file, no metrics endpoint."""
    import orjson

    trail = tmp_path / "trail.json"
    trail.write_bytes(orjson.dumps({"Records": [{"eventTime": "2024-01-01T00:00:00Z", "eventName": "ListBuckets",
                                                 "eventSource": "s3.amazonaws.com", "eventID": "e-1"}]}))
    config = tmp_path / "trailguard.yaml"
    config.write_bytes(orjson.dumps({"sources": [{"type": "file", "paths": [str(trail)], "follow": False}],
                                     "sinks": [{"type": "file", "path": str(tmp_path / "alerts.jsonl")}],
                                     "metrics": {"enabled": False}}))
    return config


def test_run_starts_with_the_cyclic_gc_off_and_runs_with_it_on(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """GC is off only for start-up: the running daemon collects as usual, whatever way run ends."""
    import gc

    from daemon import app, cli

    config = one_event_run(tmp_path)
    seen: dict[str, bool] = {}
    started = app.Daemon.__init__

    def spy(self: app.Daemon, *args: object, **kwargs: object) -> None:
        seen["building"] = gc.isenabled()
        started(self, *args, **kwargs)

    monkeypatch.setattr(app.Daemon, "__init__", spy)
    original_start = app.Pipeline.start

    async def spy_start(self: app.Pipeline) -> None:
        seen["running"] = gc.isenabled()
        await original_start(self)

    monkeypatch.setattr(app.Pipeline, "start", spy_start)
    assert cli.main(["run", "--config", str(config)]) == 0
    assert seen == {"building": False, "running": True}
    assert gc.isenabled()
    assert cli.main(["run", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert gc.isenabled()


def test_the_startup_scenario_is_registered_and_measures_a_real_start(tmp_path: Path) -> None:
    from bench.run import SCENARIOS
    from bench.scenarios.startup import seconds_to_ready

    assert SCENARIOS["startup"] == "bench.scenarios.startup:run"
    wall, cpu = seconds_to_ready(tmp_path)
    assert 0 < wall < 60
    assert cpu is None or 0 < cpu <= wall * 2  # two cores at most


def test_the_rule_scaling_scenario_loads_its_new_terms_correlations(tmp_path: Path) -> None:
    from bench.scenarios.rules import NEW_TERMS_EVERY, sigma_with

    detector = sigma_with(100, tmp_path / "rules", [f"Call{n}" for n in range(10)])
    assert len(detector.rules.new_terms) == 100 // NEW_TERMS_EVERY
    assert not detector.load_errors


# -- what `trailguard run` imports ------------------------------------------------------------
#: Runs the shipped configuration (finite input, endpoint on a free port) through ``cli.main`` in a
#: fresh interpreter, then prints which optional packages the whole run imported.
_RUN_AND_REPORT_IMPORTS = """
import sys
from pathlib import Path
import orjson
from bench.scenarios.startup import default_config
from tests.conftest import free_port
config = default_config(free_port())
config["sources"][0]["follow"] = False
config.update(extra)
path = Path(sys.argv[1]) / "trailguard.yaml"
path.write_bytes(orjson.dumps(config))
from daemon import cli
code = cli.main(["run", "--config", str(path)])
print(orjson.dumps({"code": code, "imported": sorted(m for m in watched if m in sys.modules)}).decode())
"""


def _imports_of_run(tmp_path: Path, watched: list[str], extra: dict[str, object] | None = None) -> dict[str, object]:
    import os
    import subprocess
    import sys

    import orjson

    script = f"watched = {watched!r}\nextra = {extra or {}!r}\n{_RUN_AND_REPORT_IMPORTS}"
    env = {**os.environ, "TRAILGUARD_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, capture_output=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return orjson.loads(result.stdout.splitlines()[-1])


def test_run_with_the_shipped_configuration_never_imports_aiohttp_kafka_or_rich(tmp_path: Path) -> None:
    """aiohttp (~0.15 s: the operator endpoint is served without it), aiokafka (~0.07 s) and rich
    (~0.1 s, pulled in by ``import structlog``) are not start-up costs of a daemon that has no HTTP
    sink, no Kafka source, sink or changelog, and prints no console."""
    report = _imports_of_run(tmp_path, ["aiohttp", "aiokafka", "rich", "structlog"])
    assert report == {"code": 0, "imported": ["structlog"]}



def test_the_startup_comparison_starts_both_trees_in_turns() -> None:
    from bench.scenarios.startup import compare

    result = compare(ROOT, ROOT, reps=1)
    for name in ("A", "B"):
        assert len(result[name]["wall"]) == 1 and 0 < result[name]["wall_median"] < 60


def test_each_rule_condition_is_parsed_once_while_the_pack_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """pySigma deep-copies a condition's tree on every parse: the compiler and the index's three
    requirements share one parse per condition (four before)."""
    from sigma.conditions import SigmaCondition

    parses: list[str] = []
    original = SigmaCondition.parse

    def counting(self: SigmaCondition, postprocess: bool = True) -> object:
        parses.append(self.condition)
        return original(self, postprocess)

    monkeypatch.setattr(SigmaCondition, "parse", counting)
    rules, _ = load_rules([PACK])
    conditions = sum(len(rule.rule.detection.condition) for rule in rules.rules if rule.rule is not None)
    assert rules.rules and len(parses) == conditions


def test_console_logs_print_plain_tracebacks_without_frame_locals(monkeypatch: pytest.MonkeyPatch) -> None:
    """With rich out of structlog, console logs use plain tracebacks (rich's default showed locals)."""
    import io
    import sys

    from daemon.logs import configure_logging, structlog

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    configure_logging("info", "console")
    webhook = "https://hooks.example/T0/B0/secret-token-in-a-local"

    def deliver(url: str) -> None:
        raise ConnectionError("refused")

    try:
        deliver(webhook)
    except ConnectionError:
        structlog.get_logger("t").error("delivery failed", exc_info=True)
    output = err.getvalue()
    assert "Traceback (most recent call last)" in output and "ConnectionError: refused" in output
    assert webhook not in output, output
