"""``trailguard rules validate|test``: the real CLI on the shipped pack and on broken rules and tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

from daemon.rules_cli import SidecarError, load_tests, sidecar_path
from tests.conftest import ROOT, run_cli

PACK = ROOT / "config" / "rules"
GOOD = PACK / "logging_tampering" / "vpc_flow_logs_deleted.yml"

BROKEN_CONDITION = """\
title: Condition names a detection that does not exist
id: 7b1d0c55-43f2-4a8e-9a57-3a0e1f0d9b11
logsource: {product: aws, service: cloudtrail}
detection:
  selection: {eventName: StopLogging}
  condition: selection and not filter
level: high
"""
NOT_YAML = "title: [unclosed\n"
NO_TAGS = """\
title: Loads but carries no ATT&CK tags
id: 5d7e9c21-0b8f-4d3c-a1e2-6f4b8c9d0e12
description: a rule without tags
logsource: {product: aws, service: cloudtrail}
detection:
  selection: {eventName: DeleteFlowLogs}
  condition: selection
falsepositives: [none]
level: low
"""


def with_id(text: str, rule_id: str) -> str:
    """A copy of a rule with another id."""
    old = next(line for line in text.splitlines() if line.startswith("id: "))
    return text.replace(old, f"id: {rule_id}")


def output(result) -> str:  # type: ignore[no-untyped-def]
    return result.stdout.decode() + result.stderr.decode()


def test_validate_the_shipped_pack() -> None:
    result = run_cli("rules", "validate", "--strict", str(PACK))
    assert result.returncode == 0, output(result)
    assert "0 with errors, 0 skipped" in output(result)


def test_validate_reports_each_broken_rule_with_file_id_title_and_reason(tmp_path: Path) -> None:
    shutil.copy(GOOD, tmp_path / "good.yml")
    (tmp_path / "broken.yml").write_text(BROKEN_CONDITION)
    (tmp_path / "garbage.yml").write_text(NOT_YAML)
    duplicate = (tmp_path / "good.yml").read_text().replace("title: VPC Flow Logs Deleted", "title: Copy")
    (tmp_path / "duplicate.yml").write_text(duplicate)
    result = run_cli("rules", "validate", str(tmp_path))
    text = output(result)
    assert result.returncode == 1, text
    lines = [line for line in text.splitlines() if line.startswith("ERROR")]
    assert len(lines) == 3, text
    broken = next(line for line in lines if "broken.yml" in line)
    assert "7b1d0c55-43f2-4a8e-9a57-3a0e1f0d9b11" in broken
    assert "(Condition names a detection that does not exist)" in broken and "filter" in broken
    assert any("garbage.yml" in line and "not a valid Sigma YAML file" in line for line in lines)
    assert any("duplicate rule id" in line for line in lines)
    assert "1 rule(s) loaded, 3 with errors" in text


def test_validate_strict_requires_the_pack_metadata(tmp_path: Path) -> None:
    (tmp_path / "untagged.yml").write_text(NO_TAGS)
    assert run_cli("rules", "validate", str(tmp_path)).returncode == 0
    result = run_cli("rules", "validate", "--strict", str(tmp_path))
    text = output(result)
    assert result.returncode == 1
    assert "no ATT&CK tactic tag" in text and "no ATT&CK technique tag" in text
    assert "no tests sidecar untagged.tests.json" in text


def test_test_runs_every_rule_and_fails_on_a_wrong_case_and_on_missing_tests(tmp_path: Path) -> None:
    shutil.copy(GOOD, tmp_path / "good.yml")
    shutil.copy(sidecar_path(GOOD), tmp_path / "good.tests.json")
    # a second copy of the rule whose sidecar claims a wrong label
    (tmp_path / "wrong.yml").write_text(with_id(GOOD.read_text(), "9f0c7d6e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"))
    tests = orjson.loads(sidecar_path(GOOD).read_bytes())
    tests["rule_id"] = "9f0c7d6e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
    tests["negative"].append({"name": "mislabelled positive", "event": tests["positive"][0]["event"]})
    (tmp_path / "wrong.tests.json").write_bytes(orjson.dumps(tests))
    (tmp_path / "untested.yml").write_text(with_id(GOOD.read_text(), "1e2d3c4b-5a69-4788-9a0b-c1d2e3f4a5b6"))
    result = run_cli("rules", "test", str(tmp_path))
    text = output(result)
    assert result.returncode == 1, text
    assert any(line.startswith("PASS") and "good.yml" in line for line in text.splitlines()), text
    assert any(line.startswith("FAIL") and "wrong.yml" in line for line in text.splitlines()), text
    assert "negative 'mislabelled positive': rule matched" in text
    assert any(line.startswith("FAIL") and "untested.yml" in line and "no tests (expected untested.tests.json)"
               in line for line in text.splitlines()), text
    assert "3 rule(s) tested: 1 passed, 2 failed" in text


def test_test_passes_on_the_shipped_pack() -> None:
    result = run_cli("rules", "test", str(PACK))
    text = output(result)
    assert result.returncode == 0, text
    assert "FAIL" not in text and " 0 failed" in text


def test_sidecar_format_errors(tmp_path: Path) -> None:
    bad = tmp_path / "x.tests.json"
    bad.write_text("{not json")
    with pytest.raises(SidecarError, match="not valid JSON"):
        load_tests(bad)
    bad.write_text('{"positive": [], "negatives": []}')
    with pytest.raises(SidecarError, match="unknown key"):
        load_tests(bad)
    bad.write_text('{"positive": {"name": "x"}}')
    with pytest.raises(SidecarError, match="must be a list"):
        load_tests(bad)
    bad.write_text('[{"rule_id": "a", "positive": [{"eventName": "X"}]}, {"rule_id": "b", "negative": []}]')
    tests = load_tests(bad)
    assert set(tests) == {"a", "b"} and tests["a"][0].name == "#0" and tests["a"][0].expected is True
    assert sidecar_path("/r/dir/rule.yml") == Path("/r/dir/rule.tests.json")
