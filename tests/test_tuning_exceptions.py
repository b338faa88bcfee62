"""Exceptions in Sigma selection syntax: any field condition with Sigma modifiers, a required
comment, an optional ``expires`` date after which (event time) they stop applying and are reported."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from detectors.sigma.tuning import ExceptionConfig
from tests.conftest import DATA, run_cli

STRATUS = DATA / "builtin" / "stratus"
STOPPED = "CloudTrail Logging Stopped Or Trail Deleted"


def sigma_alerts(tmp_path: Path, exceptions: str) -> list[dict]:
    config = tmp_path / "exc.yaml"
    config.write_text(f"detectors:\n  sigma:\n    exceptions:\n{exceptions}")
    result = run_cli("replay", "--config", str(config), "--rule", STOPPED, str(STRATUS))
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def test_selection_with_modifiers_suppresses_only_what_it_matches(tmp_path: Path) -> None:
    everything = sigma_alerts(tmp_path, "      []\n")
    assert len(everything) == 2
    assert any("StopLogging" in a["summary"] for a in everything) and any("DeleteTrail" in a["summary"]
                                                                         for a in everything)
    kept = sigma_alerts(tmp_path, (
        "      - rule_ids: [" + repr(STOPPED) + "]\n"
        "        match: {eventName: StopLogging, userIdentity.arn|endswith: ':user/christophe'}\n"
        "        comment: CHG-1234 trail maintenance by christophe\n"))
    assert len(kept) == len(everything) - 1
    assert all("StopLogging" not in a["summary"] for a in kept)


@pytest.mark.parametrize(("expires", "suppressed"), [("2024-07-30", False), ("2024-07-31", True), (None, True)])
def test_expires_is_the_last_day_in_event_time(tmp_path: Path, expires: str | None, suppressed: bool) -> None:
    line = f"        expires: {expires}\n" if expires else ""
    alerts = sigma_alerts(tmp_path, "      - match: {eventName: [StopLogging, DeleteTrail]}\n"
                                    "        comment: lab accounts\n" + line)
    assert (alerts == []) is suppressed


def test_a_comment_is_required_and_the_selection_must_be_valid() -> None:
    with pytest.raises(ValidationError, match="needs a comment"):
        ExceptionConfig(match={"eventName": "StopLogging"})
    with pytest.raises(ValidationError, match="not a valid Sigma selection"):
        ExceptionConfig(match={"eventName|nosuchmodifier": "x"}, comment="x")
    with pytest.raises(ValidationError, match="needs a condition"):
        ExceptionConfig(comment="nothing to match")


def test_check_config_refuses_bad_exceptions_and_reports_expired_ones(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("detectors:\n  sigma:\n    exceptions:\n      - match: {eventName: StopLogging}\n")
    refused = run_cli("check-config", str(config))
    assert refused.returncode == 2 and "needs a comment" in refused.stderr.decode()
    config.write_text("detectors:\n  sigma:\n    exceptions:\n      - match: {eventName: StopLogging}\n"
                      "        comment: old lab\n        expires: 2020-01-31\n")
    reported = run_cli("check-config", str(config))
    assert reported.returncode == 0
    assert ("warning: detectors.sigma.exceptions[0] (old lab) expired on 2020-01-31: it no longer suppresses "
            "anything") in reported.stdout.decode()


RULE = Path(__file__).resolve().parent.parent / "config" / "rules" / "root_usage" / "root_console_login.yml"


def test_rules_test_with_config_fails_when_an_exception_is_too_broad(tmp_path: Path) -> None:
    assert run_cli("rules", "test", str(RULE)).returncode == 0
    broad = tmp_path / "broad.yaml"
    broad.write_text("detectors:\n  sigma:\n    exceptions:\n      - match: {eventName: ConsoleLogin}\n"
                     "        comment: far too broad\n")
    result = run_cli("rules", "test", "--config", str(broad), str(RULE))
    assert result.returncode == 1
    assert "FAIL" in result.stdout.decode() and "1 failed" in result.stdout.decode()
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text("detectors:\n  sigma:\n    exceptions:\n      - match: {sourceIPAddress|cidr: 192.0.2.0/24}\n"
                      "        comment: break-glass desk\n")
    assert run_cli("rules", "test", "--config", str(narrow), str(RULE)).returncode == 0
