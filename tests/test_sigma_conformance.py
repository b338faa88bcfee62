"""Sigma conformance where a review found the engine diverging from Sigma, on real Stratus captures.

Each test is one finding: keywords search inside values; the engine index ignores case like
matching does; a non-string ``userIdentity.type`` still reaches root rules; ``exists`` is about
presence; only JSON-number text counts as a number; ``|re`` runs in linear time and refuses
patterns that cannot.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from detectors.engine import DetectionEngine
from detectors.event import Event
from detectors.sigma import load_sources
from detectors.sigma.detector import SigmaConfig, SigmaDetector

STRATUS = Path(__file__).parent / "data" / "sigma" / "stratus"
CLOUDTRAIL = {"product": "aws", "service": "cloudtrail"}


def stratus(technique: str) -> dict[str, Any]:
    records = orjson.loads((STRATUS / f"{technique}.json").read_bytes())
    return copy.deepcopy(records[0])


def rule_text(rule_id: str, detection: dict[str, Any]) -> str:
    return yaml.safe_dump({"title": f"rule {rule_id}", "id": rule_id, "logsource": CLOUDTRAIL,
                           "detection": detection, "level": "high"}, sort_keys=False)


def uid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def matches(detection: dict[str, Any], raw: dict[str, Any]) -> bool:
    rules, errors = load_sources([("inline.yml", rule_text(uid(1), detection))])
    assert errors == []
    return rules.rules[0].matches(raw)


def engine_with(tmp_path: Path, *texts: str, disabled: list[str] | None = None) -> DetectionEngine:
    for index, text in enumerate(texts):
        (tmp_path / f"rule{index}.yml").write_text(text)
    detector = SigmaDetector(SigmaConfig(paths=[str(tmp_path)], disabled_rules=disabled or []))
    return DetectionEngine([detector])


def test_a_keyword_matches_inside_a_value() -> None:
    raw = stratus("aws.defense-evasion.cloudtrail-stop")
    assert raw["userAgent"].startswith("stratus-red-team_")
    assert matches({"keywords": ["stratus-red-team"], "condition": "keywords"}, raw)
    assert matches({"keywords": ["STRATUS-RED"], "condition": "keywords"}, raw)  # case-insensitive
    assert not matches({"keywords": ["pacu"], "condition": "keywords"}, raw)
    # explicit wildcards keep their meaning
    assert matches({"keywords": ["stratus-red-team_*"], "condition": "keywords"}, raw)
    assert not matches({"keywords": ["*team_zzz"], "condition": "keywords"}, raw)


def test_the_engine_index_is_case_insensitive_whatever_other_rules_are_loaded(tmp_path: Path) -> None:
    stop = rule_text(uid(1), {"s": {"eventName": "StopLogging"}, "condition": "s"})
    mis_cased = rule_text(uid(2), {"s": {"eventName": "deletetrail"}, "condition": "s"})
    shouted = stratus("aws.defense-evasion.cloudtrail-stop")
    shouted["eventName"] = "STOPLOGGING"
    shouted["eventSource"] = "CloudTrail.amazonaws.com"
    (tmp_path / "both").mkdir()
    (tmp_path / "one").mkdir()
    both = engine_with(tmp_path / "both", stop, mis_cased)
    one = engine_with(tmp_path / "one", stop, mis_cased, disabled=[uid(2)])
    for engine in (both, one):
        assert [alert.rule_id for alert in engine.process_many([Event(shouted)])] == [uid(1)]


def test_a_list_valued_identity_type_still_reaches_root_rules(tmp_path: Path) -> None:
    root = rule_text(uid(3), {"s": {"userIdentity.type": "Root"}, "condition": "s"})
    other = rule_text(uid(4), {"s": {"eventName": "StopLogging"}, "condition": "s"})
    raw = stratus("aws.defense-evasion.cloudtrail-stop")
    raw["userIdentity"]["type"] = ["IAMUser", "Root"]
    engine = engine_with(tmp_path, root, other)
    assert sorted(alert.rule_id or "" for alert in engine.process_many([Event(raw)])) == [uid(3), uid(4)]
    raw["userIdentity"]["type"] = "IAMUser"
    raw["eventID"] = "other-id"
    assert [alert.rule_id for alert in engine.process_many([Event(raw)])] == [uid(4)]


def test_exists_is_about_presence_so_null_is_present() -> None:
    raw = stratus("aws.defense-evasion.cloudtrail-stop")
    assert raw["responseElements"] is None  # StopLogging answers with a JSON null
    assert matches({"s": {"responseElements|exists": True}, "condition": "s"}, raw)
    assert not matches({"s": {"responseElements|exists": False}, "condition": "s"}, raw)
    assert not matches({"s": {"noSuchField|exists": True}, "condition": "s"}, raw)
    assert matches({"s": {"noSuchField|exists": False}, "condition": "s"}, raw)
    # "null" still means missing or JSON null
    assert matches({"s": {"responseElements": None}, "condition": "s"}, raw)


@pytest.mark.parametrize("text", [" 22", "22 ", "+22", "2_2", "-inf", "inf", "nan", "0x16", "22.", ""])
def test_numeric_comparison_accepts_only_number_text(text: str) -> None:
    raw = stratus("aws.exfiltration.ec2-security-group-open-port-22-ingress")
    rule = {"s": {"requestParameters.fromPort|lte": 22}, "condition": "s"}
    assert matches(rule, raw)  # the real record: fromPort is the JSON number 22
    raw["requestParameters"]["fromPort"] = text
    assert not matches(rule, raw)
    assert not matches({"s": {"requestParameters.fromPort": 22}, "condition": "s"}, raw)
    assert not matches({"s": {"requestParameters.fromPort|gte": -1e308}, "condition": "s"},
                       raw)


@pytest.mark.parametrize("text", ["22", "-1", "21.5", "2.2e1"])
def test_numeric_comparison_still_reads_number_text(text: str) -> None:
    raw = stratus("aws.exfiltration.ec2-security-group-open-port-22-ingress")
    raw["requestParameters"]["fromPort"] = text
    assert matches({"s": {"requestParameters.fromPort|lte": 22}, "condition": "s"}, raw)


def test_a_catastrophic_regex_on_a_real_rule_file_is_fast(tmp_path: Path) -> None:
    """Issue 13: ``^(a+)+$`` on a 32-character userAgent blocked the loop for 105 s."""
    (tmp_path / "redos.yml").write_text(rule_text(uid(5), {
        "s": {"eventName": "StopLogging", "userAgent|re": "^(a+)+$"}, "condition": "s"}))
    detector = SigmaDetector(SigmaConfig(paths=[str(tmp_path)]))
    assert detector.load_errors == []
    raw = stratus("aws.defense-evasion.cloudtrail-stop")
    raw["userAgent"] = "a" * 32 + "!"
    started = time.perf_counter()
    assert detector.on_event(Event(raw)) is None
    raw["userAgent"] = "a" * 100_000 + "!"
    assert detector.on_event(Event(raw)) is None
    # generous: the Python engine takes minutes on the first input alone
    assert time.perf_counter() - started < 5.0
    raw["userAgent"] = "a" * 32
    assert [alert.rule_id for alert in detector.on_event(Event(raw)) or ()] == [uid(5)]


@pytest.mark.parametrize("pattern", [r"(a)\1", r"^a(?=b)", r"(?<!x)admin", r"a++"])
def test_a_regex_without_a_linear_time_evaluation_is_refused_at_load(pattern: str) -> None:
    rules, errors = load_sources([("r.yml", rule_text(uid(6), {"s": {"userAgent|re": pattern}, "condition": "s"}))])
    assert len(rules) == 0
    assert len(errors) == 1
    # pySigma itself validates with RE2 when it is installed; trailguard's own check says "linear time"
    assert pattern in errors[0].reason


def test_regex_flags_still_apply_on_re2() -> None:
    assert matches({"s": {"f|re|i": "^ADMIN"}, "condition": "s"}, {"f": "admin-role"})
    assert not matches({"s": {"f|re": "^ADMIN"}, "condition": "s"}, {"f": "admin-role"})
    assert matches({"s": {"f|re|m": "^second"}, "condition": "s"}, {"f": "first\nsecond"})
    assert matches({"s": {"f|re|s": "a.b"}, "condition": "s"}, {"f": "a\nb"})
    assert not matches({"s": {"f|re": "a.b"}, "condition": "s"}, {"f": "a\nb"})


def test_many_wildcards_on_a_long_value_are_fast() -> None:
    """Sigma wildcards ran on Python's backtracking ``re``: ``*a*a*a*a*b`` took 74 s on 300 chars."""
    raw = stratus("aws.defense-evasion.cloudtrail-stop")
    raw["userAgent"] = "a" * 20_000
    started = time.perf_counter()
    assert not matches({"s": {"userAgent": "*a*a*a*a*a*b"}, "condition": "s"}, raw)
    assert not matches({"s": {"userAgent": "a?a*a?a*b"}, "condition": "s"}, raw)
    assert time.perf_counter() - started < 5.0  # generous; it is milliseconds
    assert matches({"s": {"userAgent": "stratus*a*"}, "condition": "s"}, stratus("aws.defense-evasion.cloudtrail-stop"))
    assert matches({"s": {"f": "a?b*c"}, "condition": "s"}, {"f": "A\nb-and-C"})  # ? and * cross newlines


def test_correlation_value_aggregates_read_numbers_as_strictly_as_matching() -> None:
    from detectors.sigma.correlation import _number

    assert [_number(text) for text in ("22", "-1.5", "1e3")] == [22.0, -1.5, 1000.0]
    assert [_number(text) for text in (" 22", "+22", "2_2", "-inf", "nan", "0x16")] == [None] * 6
