"""Detectors and sinks from another package: the example plugin in ``examples/`` is installed (entry
points) or listed under ``plugins:``, validated by ``check-config`` like a built-in, alerts in a real
daemon run on real Stratus Red Team logs, and its state survives a restart through the checkpoint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.conftest import DATA, ROOT, run_cli, wait_for

PLUGIN = ROOT / "examples" / "trailguard-example-plugin"
SECRETS = DATA / "plugins" / "aws.credential-access.secretsmanager-retrieve-secrets.json"
PARAMETERS = DATA / "plugins" / "aws.credential-access.ssm-retrieve-securestring-parameters.json"


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin pip-installed (with its entry points) into a directory of its own."""
    target = tmp_path_factory.mktemp("plugin-site")
    build = tmp_path_factory.mktemp("plugin-src") / "src"
    shutil.copytree(PLUGIN, build)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                    "--target", str(target), str(build)], check=True, capture_output=True, timeout=300)
    assert list(target.glob("trailguard_example_plugin-*.dist-info/entry_points.txt"))
    return target


def spree_lines(digest: Path) -> list[str]:
    text = digest.read_text() if digest.exists() else ""
    return [line for line in text.splitlines() if " secrets_read_spree " in line]


def test_entry_point_plugin_validates_like_a_builtin(installed_plugin: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(f"detectors:\n  secrets_read_spree: {{threshold: 5, window: 5m}}\n"
                    f"sinks: [{{type: digest, path: {tmp_path / 'digest.txt'}}}]\n")
    env = {"PYTHONPATH": str(installed_plugin)}
    result = run_cli("check-config", str(good), env=env)
    assert result.returncode == 0, result.stderr.decode()
    assert "secrets_read_spree" in result.stdout.decode()
    bad = tmp_path / "bad.yaml"
    bad.write_text("detectors:\n  secrets_read_spree: {threshold: 1, windwo: 5m}\nsinks: [{type: digest}]\n")
    refused = run_cli("check-config", str(bad), env=env).stderr.decode()
    assert "detectors.secrets_read_spree.threshold" in refused
    assert "detectors.secrets_read_spree.windwo: unknown key" in refused
    assert "sinks[0].path: required key is missing" in refused
    # without the plugin on the path the same names are unknown
    unknown = run_cli("check-config", str(good)).stderr.decode()
    assert "detectors.secrets_read_spree: unknown detector" in unknown


def test_plugins_list_module_alerts_in_a_replay_of_stratus_logs(tmp_path: Path) -> None:
    config = tmp_path / "plugins.yaml"
    config.write_text("plugins: [trailguard_example.plugin]\n"
                      "detectors:\n  secrets_read_spree: {threshold: 10}\n")
    result = run_cli("replay", "--config", str(config), "--quiet", "--format", "json", str(SECRETS), str(PARAMETERS),
                     env={"PYTHONPATH": str(PLUGIN)})
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    spree = [a for a in map(orjson.loads, result.stdout.splitlines()) if a["detector"] == "secrets_read_spree"]
    # 20 distinct secrets by one user, and 10 decrypted parameters in each GetParameters call by another
    assert {a["principal"].rsplit(":", 1)[-1] for a in spree} == {"user/christophe"}
    assert {a["account_id"] for a in spree} == {"903144391865", "933175858973"}
    assert all(a["severity"] == "high" and a["evidence"]["count"] >= 10 for a in spree)


def test_plugin_module_problems_are_refused_with_a_fix(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    missing.write_text("plugins: [trailguard_example.nope]\n")
    stderr = run_cli("check-config", str(missing), env={"PYTHONPATH": str(PLUGIN)}).stderr.decode()
    assert "plugins[0]: cannot import plugin module 'trailguard_example.nope'" in stderr
    empty = tmp_path / "empty.yaml"
    empty.write_text("plugins: [trailguard_example]\n")
    stderr = run_cli("check-config", str(empty), env={"PYTHONPATH": str(PLUGIN)}).stderr.decode()
    assert "defines neither DETECTORS nor SINKS" in stderr


def test_plugin_detector_and_sink_in_a_daemon_run_with_state_across_a_restart(
        installed_plugin: Path, tmp_path: Path, start_daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    """Six secrets read before a restart and fourteen after: only restored state reaches 15."""
    monkeypatch.setenv("PYTHONPATH", str(installed_plugin))
    records = orjson.loads(SECRETS.read_bytes())
    reads = sorted((r for r in records if r["eventName"] == "GetSecretValue"), key=lambda r: r["eventTime"])
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    digest = tmp_path / "digest.txt"
    config = ("sources: [{type: file, paths: [" + str(inbox) + "], follow: true, poll_interval: 0.2}]\n"
              f"sinks: [{{type: digest, path: {digest}}}]\n"
              "detectors:\n  secrets_read_spree: {threshold: 15, window: 10m}\n"
              f"state: {{path: {tmp_path / 'state'}, checkpoint_interval: 0.5}}\n"
              "metrics: {host: 127.0.0.1, port: {port}}\n")
    (inbox / "a.json").write_bytes(orjson.dumps({"Records": reads[:6]}))
    first = start_daemon(config)
    first.wait_ready()
    wait_for(lambda: (first.metric("trailguard_events_processed_total") or 0) >= 6, 60, what="first six reads")
    assert first.stop() == 0
    assert spree_lines(digest) == []  # other detectors (Sigma rules) may have written theirs
    (inbox / "b.json").write_bytes(orjson.dumps({"Records": reads[6:]}))
    second = start_daemon(config)
    wait_for(lambda: spree_lines(digest), 60, what="the digest line")
    (line,) = spree_lines(digest)
    assert line.startswith("high secrets_read_spree arn:aws:iam::903144391865:user/christophe: 15 distinct secrets")
    assert second.metric("trailguard_alerts_total", {"detector": "secrets_read_spree"}) == 1
    assert second.stop() == 0


TIMELINES = PLUGIN / "trailguard_example" / "secrets_read_spree.tests.json"


def test_plugin_detector_timeline_tests_pass_and_a_wrong_expectation_fails(installed_plugin: Path,
                                                                            tmp_path: Path) -> None:
    result = run_cli("detectors", "test", str(TIMELINES), env={"PYTHONPATH": str(installed_plugin)})
    assert result.returncode == 0, result.stdout.decode()
    assert "3 timeline(s): 3 passed, 0 failed" in result.stdout.decode()
    strict = orjson.loads(TIMELINES.read_bytes())
    strict["config"]["threshold"] = 6  # five secrets no longer reach it: the positive timeline must fail
    broken = tmp_path / "strict.tests.json"
    broken.write_bytes(orjson.dumps(strict))
    failed = run_cli("detectors", "test", str(broken), env={"PYTHONPATH": str(installed_plugin)})
    assert failed.returncode == 1
    assert "FAIL" in failed.stdout.decode() and "positive timeline 'five distinct secrets in a minute'" in \
        failed.stdout.decode()


def test_detector_tests_name_an_unknown_detector_with_a_suggestion(tmp_path: Path) -> None:
    wrong = tmp_path / "x.tests.json"
    wrong.write_text('{"detector": "impossible_travle", "timelines": []}')
    result = run_cli("detectors", "test", str(wrong))
    assert result.returncode == 1 and "did you mean 'impossible_travel'?" in result.stdout.decode()
