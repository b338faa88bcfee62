"""``trailguard rules validate|test``: the real CLI on the shipped pack (correlation timelines included), on the
optional console sign-in correlations, and on broken rules and tests."""

from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path

import orjson
import pytest

from daemon.rules_cli import (
    RuleTestCase,
    SidecarError,
    cmd_test,
    cmd_validate,
    load_tests,
    sidecar_path,
)
from daemon.rules_timelines import TimedEvent, Timeline, run_timeline
from detectors.sigma.detector import SigmaConfig, SigmaDetector
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


# -- correlation rules and their timelines ---------------------------------------------------------
CORRELATIONS = PACK / "correlations"
NEW_ADMIN = CORRELATIONS / "iam_user_created_temporal_ordered.yml"
#: The console sign-in correlations, kept out of the default pack (``console_login_bruteforce`` owns them).
SIGN_IN_CORRELATIONS = ROOT / "config" / "rules-optional" / "sign_in_correlations"


def copy_correlations(tmp_path: Path) -> Path:
    target = tmp_path / "correlations"
    shutil.copytree(CORRELATIONS, target)
    return target


def run_test_command(*paths: Path) -> tuple[int, str]:
    """``rules test`` in-process (the subprocess runs are above); returns (exit code, output)."""
    out = io.StringIO()
    code = cmd_test(argparse.Namespace(paths=[str(path) for path in paths]), out)
    return code, out.getvalue()


def test_the_shipped_correlations_pass_with_their_timelines() -> None:
    code, text = run_test_command(CORRELATIONS)
    assert code == 0, text
    lines = text.splitlines()
    chain = next(line for line in lines if "iam_user_created_temporal_ordered.yml" in line)
    assert chain.startswith("PASS") and "positive" in chain and "timeline(s)" in chain
    base = next(line for line in lines if "iam_user_created.yml" in line)
    assert base.startswith("PASS") and "timeline" not in base
    assert not any("console_" in line for line in lines), text
    assert lines[-1] == "38 rule(s) tested: 38 passed, 0 failed"


def test_the_optional_sign_in_correlations_pass_and_validate() -> None:
    result = run_cli("rules", "test", str(SIGN_IN_CORRELATIONS))
    text = output(result)
    assert result.returncode == 0, text
    lines = text.splitlines()
    chain = next(line for line in lines if "console_brute_force_then_success.yml" in line)
    assert chain.startswith("PASS") and "positive" in chain and "timeline(s)" in chain
    base = next(line for line in lines if "console_login_failure.yml" in line)
    assert base.startswith("PASS") and "timeline" not in base
    assert lines[-1] == "6 rule(s) tested: 6 passed, 0 failed"
    result = run_cli("rules", "validate", "--strict", str(SIGN_IN_CORRELATIONS))
    assert result.returncode == 0, output(result)
    assert "6 rule(s) loaded (4 correlation), 0 with errors, 0 skipped" in output(result)


def test_a_failing_correlation_timeline_fails_rules_test(tmp_path: Path) -> None:
    rules = copy_correlations(tmp_path)
    sidecar = sidecar_path(rules / NEW_ADMIN.name)
    tests = orjson.loads(sidecar.read_bytes())
    different_user = next(t for t in tests["timelines"] if t["name"] == "admin attached to a different user")
    different_user["expect"] = True
    stratus = next(t for t in tests["timelines"] if t["name"] == "Stratus create-admin-user")
    tests["timelines"].append({**stratus, "name": "claimed quiet", "expect": False})
    sidecar.write_bytes(orjson.dumps(tests))
    result = run_cli("rules", "test", str(rules))
    text = output(result)
    assert result.returncode == 1, text
    assert any(line.startswith("FAIL") and NEW_ADMIN.name in line for line in text.splitlines()), text
    assert "positive timeline 'admin attached to a different user': correlation did not fire" in text
    assert "negative timeline 'claimed quiet': correlation fired 1 time(s)" in text
    assert "38 rule(s) tested: 37 passed, 1 failed" in text


def test_a_correlation_given_alone_is_run_with_the_base_rules_next_to_it() -> None:
    code, text = run_test_command(NEW_ADMIN)
    assert code == 0, text
    assert text.splitlines()[-1] == "1 rule(s) tested: 1 passed, 0 failed"


def test_a_correlation_without_both_kinds_of_timeline_or_with_events_fails(tmp_path: Path) -> None:
    rules = copy_correlations(tmp_path)
    sidecar = sidecar_path(rules / NEW_ADMIN.name)
    tests = orjson.loads(sidecar.read_bytes())
    tests["timelines"] = [t for t in tests["timelines"] if t["expect"]]
    sidecar.write_bytes(orjson.dumps(tests))
    code, text = run_test_command(rules / NEW_ADMIN.name)
    assert code == 1 and "needs at least one positive and one negative" in text, text
    first = tests["timelines"][0]["events"][0]["event"]
    sidecar.write_bytes(orjson.dumps({"rule_id": tests["rule_id"], "positive": [first], "negative": [first]}))
    code, text = run_test_command(rules / NEW_ADMIN.name)
    assert code == 1 and "tested with 'timelines'" in text, text
    sidecar.unlink()
    code, text = run_test_command(rules / NEW_ADMIN.name)
    assert code == 1 and "no tests (expected iam_user_created_temporal_ordered.tests.json)" in text, text


def test_a_detection_rule_tested_with_timelines_fails(tmp_path: Path) -> None:
    shutil.copy(GOOD, tmp_path / "good.yml")
    event = orjson.loads(sidecar_path(GOOD).read_bytes())["positive"][0]["event"]
    (tmp_path / "good.tests.json").write_bytes(orjson.dumps(
        {"timelines": [{"name": "x", "expect": True, "events": [{"at": 0, "event": event}]}]}))
    code, text = run_test_command(tmp_path)
    assert code == 1 and "timelines are for correlation rules" in text, text


def test_validate_counts_correlations_and_reports_a_dangling_reference(tmp_path: Path) -> None:
    result = run_cli("rules", "validate", "--strict", str(CORRELATIONS))
    assert result.returncode == 0, output(result)
    assert "38 rule(s) loaded (19 correlation), 0 with errors, 0 skipped" in output(result)
    rules = copy_correlations(tmp_path)
    (rules / "iam_user_created.yml").unlink()
    out = io.StringIO()
    code = cmd_validate(argparse.Namespace(paths=[str(rules)], strict=False, verbose=False), out)
    text = out.getvalue()
    assert code == 1, text
    errors = [line for line in text.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and NEW_ADMIN.name in errors[0] and "trailguard_iam_user_created" in errors[0], text


def test_timelines_rewrite_times_repeat_events_and_run_generate_false_correlations() -> None:
    detector = SigmaDetector(SigmaConfig(paths=[str(SIGN_IN_CORRELATIONS)]))
    step = next(p for p in detector.correlations.plans if p.title.endswith("(Sequence Step)"))
    assert step.generate is False
    failure = load_tests(sidecar_path(SIGN_IN_CORRELATIONS / "console_login_failure.yml"))
    record = next(c for c in next(iter(failure.values())) if isinstance(c, RuleTestCase) and c.expected).event
    burst = Timeline("burst", (TimedEvent(0, record, repeat=5, every=60),), True)
    result = run_timeline(detector, step.rule_id, burst)
    assert result.passed and result.alerts == 1 and result.late == 0
    spread = Timeline("spread", (TimedEvent(0, record, repeat=5, every=76),), True)
    assert run_timeline(detector, step.rule_id, spread).alerts == 0  # 304 s > 5 min
    # delivered out of order (the last failure first): the engine's lateness still counts it
    late_first = Timeline("late", (TimedEvent(240, record), TimedEvent(0, record, repeat=4, every=60)), True)
    assert run_timeline(detector, step.rule_id, late_first).alerts == 1
    broken = Timeline("broken", (TimedEvent(0, {"eventName": "ConsoleLogin", "eventID": 7}),), True)
    assert "not a usable CloudTrail record" in run_timeline(detector, step.rule_id, broken).explain()


@pytest.mark.parametrize(("block", "message"), [
    ({"timelines": {"name": "x"}}, "'timelines' must be a list"),
    ({"timelines": [{"name": "x", "events": [{"at": 0, "event": {}}]}]}, "needs 'expect'"),
    ({"timelines": [{"name": "x", "expect": True, "events": []}]}, "non-empty list"),
    ({"timelines": [{"name": "x", "expect": True, "when": 1, "events": [{"at": 0, "event": {}}]}]}, "unknown key"),
    ({"timelines": [{"name": "x", "expect": True, "events": [{"at": -1, "event": {}}]}]}, "'at' must be a number"),
    ({"timelines": [{"name": "x", "expect": True, "events": [{"at": 0, "repeat": 0, "event": {}}]}]}, "'repeat'"),
    ({"timelines": [{"name": "x", "expect": True, "events": [{"event": {}}]}]}, "'at' and 'event'"),
])
def test_timeline_sidecar_format_errors(tmp_path: Path, block: dict, message: str) -> None:
    bad = tmp_path / "x.tests.json"
    bad.write_bytes(orjson.dumps(block))
    with pytest.raises(SidecarError, match=message):
        load_tests(bad)
