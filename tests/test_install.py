"""``pip install <wheel>`` gives a trailguard that works from any directory: the rule pack, the
sample trail, the default config and the alert schema ship inside the wheel and are found through
``importlib.resources``, not next to a source tree."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import free_port, wait_for
from tests.wheel_venv import build_wheel, make_venv


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The bin directory of a fresh venv holding only the built wheel."""
    workdir = tmp_path_factory.mktemp("wheel")
    yield make_venv(workdir, build_wheel(workdir))


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory with no source tree anywhere near it."""
    where = tmp_path / "elsewhere"
    where.mkdir()
    return where


def run(bin_dir: Path, cwd: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRAILGUARD_CONFIG")}
    return subprocess.run([str(bin_dir / "trailguard"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_the_installed_package_is_the_wheel_not_the_checkout(installed: Path, elsewhere: Path) -> None:
    probe = subprocess.run([str(installed / "python"), "-c",
                            "import daemon, daemon.bundled as b; print(daemon.__file__); print(b.bundled_root())"],
                           cwd=elsewhere, capture_output=True, text=True, check=True)
    module, root = probe.stdout.split()
    assert "site-packages" in module and str(installed.parent) in module
    assert root.endswith(os.path.join("daemon", "_bundled")) and str(installed.parent) in root


def test_version_and_rules_validate_of_the_shipped_pack(installed: Path, elsewhere: Path) -> None:
    version = run(installed, elsewhere, "--version")
    assert version.returncode == 0 and version.stdout.startswith("trailguard "), version.stderr
    probe = subprocess.run([str(installed / "python"), "-c",
                            "from daemon.bundled import rule_pack_path; print(rule_pack_path())"],
                           cwd=elsewhere, capture_output=True, text=True, check=True)
    pack = probe.stdout.strip()
    result = run(installed, elsewhere, "rules", "validate", pack)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 with errors" in result.stdout, result.stdout


def test_check_config_with_the_default_rule_pack(installed: Path, elsewhere: Path) -> None:
    config = elsewhere / "site.yaml"
    config.write_text("sinks: [{type: stdout}]\nmetrics: {port: 0}\n")
    result = run(installed, elsewhere, "check-config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout and "sigma" in result.stdout


def test_replay_of_the_bundled_sample_trail_alerts_and_matches_the_schema(installed: Path, elsewhere: Path) -> None:
    import jsonschema

    probe = subprocess.run([str(installed / "python"), "-c",
                            "from daemon.bundled import sample_trail_path as s, alert_schema_path as a;"
                            "print(s()); print(a())"],
                           cwd=elsewhere, capture_output=True, text=True, check=True)
    trail, schema_path = probe.stdout.split()
    result = run(installed, elsewhere, "replay", "--quiet", trail)
    assert result.returncode == 0, result.stderr[-3000:]
    alerts = [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert alerts, result.stderr[-3000:]
    schema = orjson.loads(Path(schema_path).read_bytes())
    for alert in alerts:
        jsonschema.validate(alert, schema)
    assert any(a["detector"] == "sigma" for a in alerts)


def test_the_demo_runs_on_the_defaults(installed: Path, elsewhere: Path) -> None:
    """``trailguard run`` with no config file: the bundled sample trail, alerts on stdout."""
    port = free_port()
    config = elsewhere / "port.yaml"
    config.write_text(f"metrics: {{host: 127.0.0.1, port: {port}}}\n")  # only the port differs from the defaults
    out, err = (elsewhere / "stdout.log").open("wb"), (elsewhere / "stderr.log").open("wb")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen([str(installed / "trailguard"), "run", "--config", str(config)], cwd=elsewhere,
                            stdout=out, stderr=err, env=env)
    try:
        wait_for(lambda: (elsewhere / "stdout.log").read_bytes().count(b"\n") >= 3, timeout=120,
                 what="alerts from the bundled demo")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        out.close()
        err.close()
    assert code == 0, (elsewhere / "stderr.log").read_text()[-3000:]
    first = orjson.loads((elsewhere / "stdout.log").read_bytes().splitlines()[0])
    assert first["detector"] and first["severity"]
