"""The start-up cache of rule files' parsed YAML gives exactly the documents a parse gives — same
values, same types — and never stands in for a changed, corrupt or unrepresentable file; the whole
pack matches the same events of the Invictus and Stratus samples with and without it."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.rule_documents import RuleDocumentCache
from detectors.sigma import loader
from detectors.sigma.loader import load_rules, rule_files, use_document_cache
from tests.test_startup import one_event_run

ROOT = Path(__file__).resolve().parent.parent
PACK = ROOT / "config" / "rules"
SAMPLES = [ROOT / "samples" / "trail" / "3-invictus-ir", ROOT / "samples" / "trail" / "4-stratus-red-team"]


def _typed(value: Any) -> Any:
    """``value`` with every scalar's type made part of it (``1``, ``1.0`` and ``True`` differ)."""
    if isinstance(value, dict):
        return ("dict", [(_typed(k), _typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    return (type(value).__name__, value)


def _refuse(_text: str) -> list[object]:
    raise AssertionError("parsed although the cache has the documents")


class Counting:
    """The loader's parser, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, text: str) -> list[object]:
        self.calls += 1
        return loader._documents(text)


@pytest.fixture
def pack_texts() -> list[str]:
    files, issues = rule_files([PACK])
    assert files and not issues
    return [path.read_text(encoding="utf-8") for path in files]


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "cache"
    use_document_cache(None)


def test_a_warm_cache_gives_every_pack_file_s_documents_without_parsing(tmp_path: Path,
                                                                         pack_texts: list[str]) -> None:
    cold = RuleDocumentCache(tmp_path)
    parsed = [cold.documents(text, loader._documents) for text in pack_texts]
    assert cold.parsed == len(pack_texts) and cold.save()
    warm = RuleDocumentCache(tmp_path)
    cached = [warm.documents(text, _refuse) for text in pack_texts]
    assert warm.parsed == 0
    assert [_typed(d) for d in cached] == [_typed(loader._documents(t)) for t in pack_texts] == \
        [_typed(d) for d in parsed]


def _records() -> list[dict[str, Any]]:
    records = []
    for sample in SAMPLES:
        for path in sorted(sample.rglob("*.json")):
            content = orjson.loads(path.read_bytes())  # a CloudTrail file, or Stratus' list of records
            records.extend(content["Records"] if isinstance(content, dict) else content)
    assert len(records) > 500
    return records


def _matches(rules: Any, records: list[dict[str, Any]]) -> list[list[str]]:
    return [sorted(rule.rule_id for rule in rules.rules if rule.matches(record)) for record in records]


def _shape(rules: Any) -> Any:
    return ([(r.rule_id, r.title, r.level, r.tags, r.generate, r.required_names, r.required_sources,
              r.required_identity_types, r.name_spellings) for r in rules.rules],
            sorted(str(c.id) for c in rules.correlation_rules), [t.rule_id for t in rules.new_terms],
            [(e.path, e.rule_id, e.reason) for e in rules.errors])


def test_the_whole_pack_loads_and_matches_the_same_with_and_without_the_cache(installed: Path) -> None:
    records = _records()
    use_document_cache(None)
    plain, _ = load_rules([PACK])
    cache = RuleDocumentCache(installed)
    use_document_cache(cache)
    cold, _ = load_rules([PACK])
    cache.parsed = 0
    warm, _ = load_rules([PACK])
    assert cache.parsed == 0  # every file came from the cache
    assert _shape(plain) == _shape(cold) == _shape(warm)
    expected = _matches(plain, records)
    assert sum(map(len, expected)) > 20  # the samples do raise alerts
    assert _matches(cold, records) == expected and _matches(warm, records) == expected


@pytest.mark.parametrize("garbage", [b"", b"\xc1\xc1not msgpack", b"\x81\xa3key\xa5wrong",
                                     orjson.dumps({"files": {}})], ids=["empty", "corrupt", "foreign", "json"])
def test_a_corrupt_or_foreign_cache_file_only_costs_the_parse(tmp_path: Path, pack_texts: list[str],
                                                              garbage: bytes) -> None:
    first = RuleDocumentCache(tmp_path)
    for text in pack_texts:
        first.documents(text, loader._documents)
    first.save()
    first.path.write_bytes(garbage)
    counting = Counting()
    again = RuleDocumentCache(tmp_path)
    documents = [again.documents(text, counting) for text in pack_texts]
    assert counting.calls == len(pack_texts)
    assert [_typed(d) for d in documents] == [_typed(loader._documents(t)) for t in pack_texts]
    assert again.save()
    assert [_typed(RuleDocumentCache(tmp_path).documents(t, _refuse)) for t in pack_texts[:3]] == \
        [_typed(d) for d in documents[:3]]  # rewritten whole


def test_a_changed_file_is_parsed_again_and_its_old_documents_dropped(tmp_path: Path) -> None:
    before, after = "title: one\nlevel: low\n", "title: one\nlevel: high\n"
    cache = RuleDocumentCache(tmp_path)
    cache.documents(before, loader._documents)
    cache.save()
    counting = Counting()
    edited = RuleDocumentCache(tmp_path)
    assert edited.documents(after, counting) == [{"title": "one", "level": "high"}] and counting.calls == 1
    edited.save()
    counting = Counting()
    assert RuleDocumentCache(tmp_path).documents(before, counting) == [{"title": "one", "level": "low"}]
    assert counting.calls == 1  # the old text's entry went with the last save


@pytest.mark.parametrize(("text", "cached"), [
    ("date: 2024-01-31\nn: 1\nf: 1.0\nb: true\nz: null\n", True),
    ("a: &shared {k: 1}\nb: *shared\n", False),  # one object in two places
    ("when: 2024-01-31 10:00:00\n", False),  # a datetime
    ("big: 123456789012345678901234567890\n", False),  # beyond 64 bits
    ("binary: !!binary aGVsbG8=\n", False),
], ids=["plain", "alias", "datetime", "bigint", "binary"])
def test_only_documents_that_come_back_identical_are_cached(tmp_path: Path, text: str, cached: bool) -> None:
    cache = RuleDocumentCache(tmp_path)
    parsed = cache.documents(text, loader._documents)
    cache.save()
    counting = Counting()
    again = RuleDocumentCache(tmp_path).documents(text, counting)
    assert _typed(again) == _typed(parsed) == _typed(loader._documents(text))
    assert counting.calls == (0 if cached else 1)
    if cached:
        assert type(again[0]["date"]) is datetime.date  # type: ignore[index]


def test_an_unwritable_cache_directory_only_costs_the_parse(tmp_path: Path) -> None:
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the directory should be")
    cache = RuleDocumentCache(blocked)
    assert cache.documents("title: x\n", loader._documents) == [{"title": "x"}]
    assert cache.save() is False
    assert blocked.is_file()


def test_run_uses_the_cache_and_leaves_the_loader_without_one(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon import cli

    monkeypatch.setenv("TRAILGUARD_CACHE_DIR", str(tmp_path / "cache"))
    config = one_event_run(tmp_path)
    assert cli.main(["run", "--config", str(config)]) == 0
    assert (tmp_path / "cache" / "rule-documents-v1.msgpack").is_file()
    assert loader._document_cache is None
