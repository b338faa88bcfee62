"""Every reference in tuning names a loaded rule or detector, or ``check-config`` refuses it with the
closest match; rules can be referenced by id or by title."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from detectors.suggest import closest, suggestion
from tests.conftest import DATA, run_cli

STRATUS = DATA / "builtin" / "stratus"
ROOT_LOGIN_ID = "ec0a761c-e196-5b4b-b49d-b40028fc7802"
ROOT_LOGIN = "Root User Signed In To The Console"


def check(tmp_path: Path, text: str) -> tuple[int, str]:
    config = tmp_path / "tuning.yaml"
    config.write_text(text)
    result = run_cli("check-config", str(config))
    return result.returncode, result.stdout.decode() + result.stderr.decode()


def test_closest_match_helper() -> None:
    assert closest("impossible_travle", ["impossible_travel", "new_region"]) == "impossible_travel"
    assert closest("IMPOSSIBLE_TRAVEL", ["impossible_travel"]) == "impossible_travel"
    assert closest("zzz", ["impossible_travel"]) is None
    assert suggestion("zzz", ["a", "b"], "detector") == "use a known detector (a, b)"


@pytest.mark.parametrize(("tuning", "expected"), [
    ("disabled_rules: ['Root User Signed In To The Consol']",
     "detectors.sigma.disabled_rules[0]: 'Root User Signed In To The Consol' names no loaded rule (by id or title); "
     f"fix: did you mean {ROOT_LOGIN!r}?"),
    ("disabled_rules: ['ec0a761c-e196-5b4b-b49d-b40028fc7803']",
     f"fix: did you mean {ROOT_LOGIN_ID!r}?"),
    ("severity_overrides: {'Root User Signed In To Console': low}",
     "detectors.sigma.severity_overrides.Root User Signed In To Console: 'Root User Signed In To Console' names no "
     f"loaded rule (by id or title); fix: did you mean {ROOT_LOGIN!r}?"),
    ("exceptions: [{rule_ids: [root-login], principals: ['arn:aws:iam::*:root'], comment: x}]",
     "detectors.sigma.exceptions[0].rule_ids[0]: 'root-login' names no loaded rule"),
])
def test_a_tuning_typo_is_refused_with_a_suggestion(tmp_path: Path, tuning: str, expected: str) -> None:
    indented = tuning.replace("comment: x", "").replace(", }", "}")
    code, out = check(tmp_path, f"detectors:\n  sigma:\n    {indented}\n")
    assert code == 2, out
    assert expected in out


def test_an_unknown_detector_section_gets_the_closest_name(tmp_path: Path) -> None:
    code, out = check(tmp_path, "detectors:\n  impossible_travle: {enabled: false}\n")
    assert code == 2
    assert "detectors.impossible_travle: unknown detector; fix: did you mean 'impossible_travel'?" in out


def test_an_unknown_sink_type_gets_the_closest_type(tmp_path: Path) -> None:
    code, out = check(tmp_path, "sinks: [{type: pagerduty2}]\n")
    assert code == 2 and "unknown sink type 'pagerduty2'; fix: did you mean 'pagerduty'?" in out


def test_rules_are_referenced_by_title_as_well_as_by_id(tmp_path: Path) -> None:
    def sigma_rules(tuning: str) -> tuple[set[str], dict[str, str]]:
        config = tmp_path / "replay.yaml"
        config.write_text(f"detectors:\n  sigma:\n    {tuning}\n")
        result = run_cli("replay", "--config", str(config), str(STRATUS))
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        alerts = [orjson.loads(x) for x in result.stdout.splitlines()]
        sigma = [a for a in alerts if a["detector"] == "sigma"]
        return {a["rule_id"] for a in sigma}, {a["rule_id"]: a["severity"] for a in sigma}

    fired, _ = sigma_rules("disabled_rules: []")
    assert len(fired) >= 2
    code, _ = check(tmp_path, "detectors:\n  sigma:\n    disabled_rules: []\n")
    assert code == 0
    # pick a rule that fired; disable it by its title, override another's severity by title
    result = run_cli("replay", str(STRATUS))
    titles = {a["rule_id"]: a["title"] for a in map(orjson.loads, result.stdout.splitlines()) if a["rule_id"]}
    first, second = sorted(fired)[:2]
    tuned, severities = sigma_rules(f"disabled_rules: [{titles[first]!r}]\n"
                                    f"    severity_overrides: {{{titles[second]!r}: info}}")
    assert first not in tuned and second in tuned
    assert severities[second] == "info"
