"""Issue 12's first "done means": every one of the 44 Stratus Red Team AWS techniques raises an alert
from the default detector set naming one of the technique's own calls, and the table in
``docs/rule-pack.md`` is what ``bench/stratus_coverage.py --write`` generates from today's pack."""

from __future__ import annotations

from functools import cache

from bench.stratus_coverage import (
    DATA,
    TECHNIQUES,
    TechniqueResult,
    doc_table,
    format_table,
    load_records,
    run_coverage,
)
from detectors.event import Event

#: Stratus Red Team's AWS techniques (docs/attack-techniques/AWS/, stratus-red-team main, 2026-08).
STRATUS_AWS_TECHNIQUES = 44


@cache
def results() -> tuple[TechniqueResult, ...]:
    return tuple(run_coverage())


def test_every_technique_has_records_that_contain_its_own_calls() -> None:
    assert len(TECHNIQUES) == STRATUS_AWS_TECHNIQUES
    assert {p.name for p in DATA.glob("aws.*.json")} == {f"aws.{t}.json" for t in TECHNIQUES}
    for result in results():
        assert result.records > 0, result.technique
    for technique, calls in TECHNIQUES.items():
        records = load_records(technique)
        assert {Event(raw, "stratus").event_name for raw in records} & set(calls), technique


def test_all_44_techniques_raise_an_alert_naming_one_of_their_own_calls() -> None:
    uncovered = [result.technique for result in results() if not result.covered]
    assert uncovered == []
    for result in results():
        assert all(call in TECHNIQUES[result.technique] for _, call in result.hits)


def test_the_ransomware_techniques_are_caught_by_the_object_and_sequence_rules() -> None:
    """Counting objects and the listing-then-batch-delete sequence, not only the ransom note."""
    by_technique = {result.technique: {by for by, _ in result.hits} for result in results()}
    assert "correlations/s3_object_deleted_value_count" in by_technique["impact.s3-ransomware-individual-deletion"]
    assert "correlations/s3_object_versions_listed_temporal_ordered" in by_technique[
        "impact.s3-ransomware-batch-deletion"]
    assert "destruction/s3_object_rewritten_with_customer_key" in by_technique[
        "impact.s3-ransomware-client-side-encryption"]


def test_the_table_in_docs_rule_pack_md_is_current() -> None:
    assert doc_table() == format_table(results()), "run: .venv/bin/python bench/stratus_coverage.py --write"
