"""``trailguard replay`` on a terminal (a real pseudo-terminal, via pexpect): readable alert lines,
a progress bar while it runs, the per-rule table at the end; JSON and the summary line when piped;
``--rule`` / ``--since`` / ``--until`` / ``--rules`` as a backtest."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import orjson
import pexpect

from tests.conftest import DATA, ROOT, run_cli

STRATUS = DATA / "builtin" / "stratus"
TRAIL = ROOT / "samples" / "trail"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def on_a_terminal(*args: str, timeout: float = 180) -> str:
    child = pexpect.spawn(sys.executable, ["-m", "daemon.cli", *args], cwd=str(ROOT), dimensions=(50, 200),
                          timeout=timeout, env={"TERM": "xterm-256color", "PATH": "/usr/bin:/bin",
                                                "PYTHONPATH": str(ROOT)})
    child.expect(pexpect.EOF)
    child.close()
    text = child.before.decode(errors="replace")
    assert child.exitstatus == 0, text[-3000:]
    return text


def summary_of(stderr: bytes) -> dict:
    (line,) = [x for x in stderr.decode().splitlines() if x.startswith("trailguard replay summary: ")]
    return orjson.loads(line.split(": ", 1)[1])


def test_replay_on_a_terminal_prints_lines_and_a_table() -> None:
    text = ANSI.sub("", on_a_terminal("replay", str(STRATUS)))
    assert '{"id"' not in text, "no JSON on a terminal"
    lines = [line for line in text.splitlines() if re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ  (HIGH|CRITICAL|MEDIUM)",
                                                          line.strip())]
    assert lines, text[-3000:]
    assert "alerts per rule" in text and "first → last" in text
    assert re.search(r"\d[\d,]* events \(\d+ duplicates, \d+ invalid\) in [\d.]+s", text)
    assert "trailguard replay summary:" not in text


def test_progress_bar_is_drawn_then_cleared() -> None:
    raw = on_a_terminal("replay", str(TRAIL))
    assert "replay" in raw and "files" in raw and "ETA" in raw, raw[-2000:]
    # rich clears a transient bar with erase-line sequences before the table is printed
    table_at = raw.index("alerts per rule")
    assert "\x1b[2K" in raw[:table_at]


def test_piped_output_is_json_lines_and_a_summary_line() -> None:
    result = run_cli("replay", str(STRATUS))
    assert result.returncode == 0
    alerts = [orjson.loads(line) for line in result.stdout.splitlines()]
    summary = summary_of(result.stderr)
    assert len(alerts) == summary["alerts"] > 0
    backtest = summary["backtest"]
    assert sum(row["alerts"] for row in backtest) == len(alerts)
    assert all({"detector", "rule", "title", "alerts", "severity", "first", "last"} <= row.keys() for row in backtest)


def test_rule_backtest_reports_only_that_rule_and_refuses_typos() -> None:
    full = summary_of(run_cli("replay", str(STRATUS)).stderr)["backtest"]
    sigma = next(row for row in full if row["detector"] == "sigma")
    result = run_cli("replay", "--rule", sigma["rule"], str(STRATUS))
    alerts = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert alerts and {a["rule_id"] for a in alerts} == {sigma["rule"]}
    assert len(alerts) == sigma["alerts"]
    by_title = run_cli("replay", "--rule", sigma["title"], str(STRATUS))
    assert len(by_title.stdout.splitlines()) == sigma["alerts"]
    typo = run_cli("replay", "--rule", sigma["title"][:-2], str(STRATUS))
    assert typo.returncode == 2
    assert f"did you mean {sigma['title']!r}?" in typo.stderr.decode()


def test_since_until_skip_events_outside_the_range() -> None:
    whole = summary_of(run_cli("replay", str(STRATUS)).stderr)
    none = run_cli("replay", "--since", "2000-01-01", "--until", "2000-01-02", str(STRATUS))
    summary = summary_of(none.stderr)
    assert summary["events"] == 0 and summary["alerts"] == 0 and summary["outside_range"] == whole["received"]
    bad = run_cli("replay", "--since", "yesterday", str(STRATUS))
    assert bad.returncode == 2 and "--since/--until" in bad.stderr.decode()


def test_rules_option_runs_other_rule_files(tmp_path: Path) -> None:
    rule = tmp_path / "stop_logging.yml"
    rule.write_text("title: Test StopLogging\nid: 0f5e2a63-4c1e-4f8b-9d1a-2b9f3e6c7d10\nstatus: test\n"
                    "logsource: {product: aws, service: cloudtrail}\n"
                    "detection:\n  sel: {eventName: StopLogging}\n  condition: sel\nlevel: high\n")
    result = run_cli("replay", "--rules", str(rule), str(STRATUS))
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    sigma = [orjson.loads(x) for x in result.stdout.splitlines() if b'"detector":"sigma"' in x]
    assert sigma and {a["rule_id"] for a in sigma} == {"0f5e2a63-4c1e-4f8b-9d1a-2b9f3e6c7d10"}
