"""``check-config``: results on stdout, logs on stderr; ``--explain-routing`` shows where a sample
alert goes — including the case the README once got wrong (``continue`` + ``default_sinks``)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli

ROUTES = """\
sinks:
  - {type: stdout, name: siem}
  - {type: file, name: pagerduty, path: pd.jsonl}
routing:
  routes:
    - {min_severity: high, sinks: [pagerduty], continue: true}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_results_on_stdout_logs_on_stderr(tmp_path: Path) -> None:
    result = run_cli("check-config", str(write(tmp_path, "sinks: [{type: stdout}]\n")))
    assert result.returncode == 0
    out, err = result.stdout.decode(), result.stderr.decode()
    assert out.splitlines() == [line for line in out.splitlines() if ": ok (" in line] and out.strip()
    assert "geoip database loaded" in err and "geoip" not in out


def test_continue_with_default_sinks_sends_high_alerts_only_to_the_continued_route(tmp_path: Path) -> None:
    config = write(tmp_path, ROUTES + "  default_sinks: [siem]\n")
    result = run_cli("check-config", str(config), "--explain-routing", "severity=high", "detector=sigma")
    out = result.stdout.decode()
    assert "routes[0]: match → pagerduty; continue: true" in out
    assert "default_sinks are not used: a route matched" in out
    assert out.strip().endswith("delivered to: pagerduty")
    low = run_cli("check-config", str(config), "--explain-routing", "severity=low").stdout.decode()
    assert "routes[0]: no match (needs min_severity high)" in low
    assert low.strip().endswith("delivered to: siem")


def test_catch_all_route_delivers_high_alerts_to_both(tmp_path: Path) -> None:
    config = write(tmp_path, ROUTES + "    - {sinks: [siem]}\n")
    out = run_cli("check-config", str(config), "--explain-routing", "severity=critical").stdout.decode()
    assert out.strip().endswith("delivered to: pagerduty, siem")


def test_bad_sample_is_refused(tmp_path: Path) -> None:
    result = run_cli("check-config", str(write(tmp_path, ROUTES)), "--explain-routing", "sev=high")
    assert result.returncode == 2 and "KEY one of" in result.stderr.decode()
