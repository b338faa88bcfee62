"""Read Sigma rule files, validate them with pySigma, and compile the CloudTrail ones into a RuleSet.

One bad rule never stops the others: every rule that cannot be used becomes a :class:`LoadIssue`
(file, rule id, title, reason) in ``errors`` and the rest load.  Rules for other log sources, rules
disabled by configuration and correlation rules are set aside in ``skipped`` (not errors).
Correlation rules are kept, with their references resolved across all files, in
``RuleSet.correlation_rules`` for the correlation engine (trailguard's ``new_terms`` correlations,
which pySigma does not know, are parsed by :mod:`detectors.sigma.new_terms` into
``RuleSet.new_terms``); a detection rule a correlation references
with ``generate: false`` is still loaded and evaluated, but marked as not alerting by itself.

The only I/O here is reading the files given; everything else is pure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import yaml
from sigma.collection import SigmaCollection
from sigma.correlations import SigmaCorrelationRule
from sigma.exceptions import SigmaError, SigmaRuleLocation
from sigma.rule import SigmaRule

from detectors.sigma.compiler import compile_rule_and_trees
from detectors.sigma.new_terms import NewTermsError, NewTermsRule, is_new_terms, parse_new_terms
from detectors.sigma.requirements import required_values, spellings
from detectors.sigma.ruleset import CompiledRule, LoadIssue, RuleSet
from detectors.sigma.values import Unsupported

__all__ = [
    "CORRELATION_NOTICE",
    "DEFAULT_LOGSOURCES",
    "Logsource",
    "load_rules",
    "load_sources",
    "rule_files",
    "use_document_cache",
]

CORRELATION_NOTICE: Final = "correlation rule: handled by the correlation engine"
RULE_SUFFIXES: Final = (".yml", ".yaml")
#: libyaml's safe loader when PyYAML was built with it (the wheels are): the same documents as
#: ``yaml.safe_load_all``, about ten times faster — YAML parsing was most of start-up.
_SAFE_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _documents(text: str) -> list[object]:
    """Every YAML document of ``text``, as ``yaml.safe_load_all`` (what pySigma's ``from_yaml`` uses)."""
    return list(yaml.load_all(text, Loader=_SAFE_LOADER))


class DocumentCache(Protocol):
    """Where parsed documents may come from instead of parsing (the daemon's: ``daemon.rule_documents``)."""

    def documents(self, text: str, parse: Callable[[str], list[object]]) -> list[object]:
        """``parse(text)``, or documents equal to what it returns."""
        ...

    def save(self) -> bool:
        """Called once per load, after every file's documents were asked for."""
        ...


#: Installed by the daemon's command line; ``None`` (tests, libraries): every file is parsed.
_document_cache: DocumentCache | None = None


def use_document_cache(cache: DocumentCache | None) -> None:
    """Take rule files' YAML documents from ``cache`` (``None``: parse every file, the default)."""
    global _document_cache
    _document_cache = cache


@dataclass(frozen=True, slots=True)
class Logsource:
    """An accepted Sigma log source; a field left ``None`` accepts any value (or none)."""

    product: str | None = None
    service: str | None = None
    category: str | None = None

    def accepts(self, product: str | None, service: str | None, category: str | None) -> bool:
        """True when a rule with this ``logsource`` applies to what trailguard reads."""
        for wanted, given in ((self.product, product), (self.service, service), (self.category, category)):
            if wanted is not None and (given or "").lower() != wanted.lower():
                return False
        return True


DEFAULT_LOGSOURCES: Final = (Logsource(product="aws", service="cloudtrail"),)


def rule_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[LoadIssue]]:
    """Expand files and directories (recursively, ``.yml``/``.yaml``) into a sorted file list."""
    files: list[Path] = []
    issues: list[LoadIssue] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in RULE_SUFFIXES and p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            issues.append(LoadIssue(str(path), None, None, "no such file or directory"))
    return files, issues


def load_rules(
    paths: Iterable[str | Path],
    *,
    logsources: Sequence[Logsource] = DEFAULT_LOGSOURCES,
    disabled: Iterable[str] = (),
) -> tuple[RuleSet, list[LoadIssue]]:
    """Load every rule under ``paths``; return the rule set and the errors (also on ``.errors``)."""
    files, issues = rule_files(paths)
    sources: list[tuple[str, str]] = []
    for file in files:
        try:
            sources.append((str(file), file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as error:
            issues.append(LoadIssue(str(file), None, None, f"cannot read: {error}"))
    rules, errors = load_sources(sources, logsources=logsources, disabled=disabled)
    if issues:
        errors = issues + errors
        rules = RuleSet(
            rules.rules, correlation_rules=rules.correlation_rules, new_terms=rules.new_terms, errors=errors,
            skipped=rules.skipped,
        )
    return rules, errors


def _reason(error: BaseException) -> str:
    message = error.args[0] if isinstance(error, SigmaError) and error.args else str(error)
    return str(message)


def _identity(rule: SigmaRule | SigmaCorrelationRule) -> str | None:
    if rule.id is not None:
        return str(rule.id)
    return rule.name


def _path_of(rule: SigmaRule | SigmaCorrelationRule, default: str) -> str:
    return str(rule.source.path) if rule.source is not None else default


def _split_new_terms(
    path: str, documents: list[object], new_terms: list[NewTermsRule], issues: list[LoadIssue]
) -> list[object] | None:
    """The file's documents without its ``new_terms`` correlations (parsed into ``new_terms``), or
    ``None`` when it has none (the documents then go to pySigma unchanged)."""
    documents = [document for document in documents if document is not None]
    if not any(is_new_terms(document) for document in documents):
        return None
    others: list[object] = []
    for document in documents:
        if not is_new_terms(document):
            others.append(document)
            continue
        try:
            new_terms.append(parse_new_terms(document, path))
        except NewTermsError as error:
            rule_id = document.get("id") or document.get("name")
            issues.append(LoadIssue(path, str(rule_id) if rule_id else None, document.get("title"),
                                    f"new_terms correlation: {error}"))
    return others


def _parse(
    sources: Iterable[tuple[str, str]], issues: list[LoadIssue], new_terms: list[NewTermsRule],
) -> tuple[list[SigmaRule | SigmaCorrelationRule], list[object]]:
    parsed: list[SigmaRule | SigmaCorrelationRule] = []
    filters: list[object] = []
    cache = _document_cache
    for path, text in sources:
        try:
            documents = cache.documents(text, _documents) if cache is not None else _documents(text)
            others = _split_new_terms(path, documents, new_terms, issues) if "new_terms" in text else None
            collection = SigmaCollection.from_dicts(
                documents if others is None else others,  # type: ignore[arg-type]
                collect_errors=True, source=SigmaRuleLocation(path), resolve_references=False,
                collect_filters=True,
            )
        except (yaml.YAMLError, SigmaError) as error:
            issues.append(LoadIssue(path, None, None, f"not a valid Sigma YAML file: {_reason(error)}"))
            continue
        rule_errors = {id(error) for rule in collection.rules for error in rule.errors}
        for error in collection.errors:
            if id(error) not in rule_errors:
                issues.append(LoadIssue(path, None, None, _reason(error)))
        parsed.extend(collection.rules)
        filters.extend(collection.filters)
    if cache is not None:
        cache.save()
    return parsed, filters


def _combine(
    parsed: list[SigmaRule | SigmaCorrelationRule], filters: list[object], issues: list[LoadIssue]
) -> list[SigmaRule | SigmaCorrelationRule]:
    """One collection over all files, so filters and correlation references work across files."""
    try:
        collection = SigmaCollection(parsed + filters, resolve_references=False)  # type: ignore[operator]
    except SigmaError as error:  # a filter that cannot be applied
        issues.append(LoadIssue("<filters>", None, None, f"Sigma filters not applied: {_reason(error)}"))
        collection = SigmaCollection(list(parsed), resolve_references=False)  # type: ignore[arg-type]
    return list(collection.rules)


def _compile(rule: SigmaRule, rule_id: str, path: str) -> CompiledRule:
    predicate, trees = compile_rule_and_trees(rule)  # each condition parsed once for all of this
    names = required_values(rule, "eventName", trees)
    return CompiledRule(
        rule_id=rule_id,
        title=rule.title,
        level=rule.level.name.lower() if rule.level is not None else None,
        tags=tuple(str(tag) for tag in rule.tags),
        description=rule.description or "",
        references=tuple(rule.references),
        falsepositives=tuple(rule.falsepositives),
        path=path,
        generate=bool(rule._output),
        predicate=predicate,
        required_names=names,
        required_sources=required_values(rule, "eventSource", trees),
        required_identity_types=required_values(rule, "userIdentity.type", trees),
        name_spellings=spellings(rule, "eventName") if names is not None else frozenset(),
        rule=rule,
    )


def load_sources(
    sources: Iterable[tuple[str, str]],
    *,
    logsources: Sequence[Logsource] = DEFAULT_LOGSOURCES,
    disabled: Iterable[str] = (),
) -> tuple[RuleSet, list[LoadIssue]]:
    """Load rules from ``(path label, YAML text)`` pairs: the pure core of :func:`load_rules`."""
    errors: list[LoadIssue] = []
    skipped: list[LoadIssue] = []
    new_terms: list[NewTermsRule] = []
    parsed, filters = _parse(sources, errors, new_terms)
    rules = _combine(parsed, filters, errors)
    off = set(disabled)
    compiled: list[CompiledRule] = []
    correlations: list[SigmaCorrelationRule] = []
    seen: dict[str, str] = {}
    # correlations first: resolving their references marks the rules that must not alert alone
    everything = SigmaCollection(list(rules), resolve_references=False)
    for rule in rules:
        if not isinstance(rule, SigmaCorrelationRule):
            continue
        issue = LoadIssue(_path_of(rule, "<unknown>"), _identity(rule), rule.title, CORRELATION_NOTICE)
        try:
            if rule.errors:
                raise rule.errors[0]
            rule.resolve_rule_references(everything)
        except SigmaError as error:
            errors.append(LoadIssue(issue.path, issue.rule_id, issue.title, _reason(error)))
            continue
        correlations.append(rule)
        skipped.append(issue)
    for rule in rules:
        if not isinstance(rule, SigmaRule):
            continue
        path, rule_id = _path_of(rule, "<unknown>"), _identity(rule)
        if rule.errors:
            errors.append(LoadIssue(path, rule_id, rule.title, _reason(rule.errors[0])))
            continue
        logsource = rule.logsource
        if not any(ls.accepts(logsource.product, logsource.service, logsource.category) for ls in logsources):
            reason = (
                f"log source product={logsource.product} service={logsource.service} "
                f"category={logsource.category} is not read by trailguard"
            )
            skipped.append(LoadIssue(path, rule_id, rule.title, reason))
            continue
        if rule_id is None:
            errors.append(LoadIssue(path, None, rule.title, "rule has no id (needed for alerts and tuning)"))
            continue
        if rule_id in off:
            skipped.append(LoadIssue(path, rule_id, rule.title, "disabled by configuration"))
            continue
        if rule_id in seen:
            errors.append(LoadIssue(path, rule_id, rule.title, f"duplicate rule id (also in {seen[rule_id]})"))
            continue
        try:
            compiled.append(_compile(rule, rule_id, path))
        except (Unsupported, SigmaError) as error:
            errors.append(LoadIssue(path, rule_id, rule.title, f"unsupported: {_reason(error)}"))
            continue
        seen[rule_id] = path
    resolved = _resolve_new_terms(new_terms, compiled, off, errors, skipped)
    ruleset = RuleSet(compiled, correlation_rules=correlations, new_terms=resolved, errors=errors, skipped=skipped)
    return ruleset, errors


def _resolve_new_terms(
    new_terms: list[NewTermsRule], compiled: list[CompiledRule], off: set[str], errors: list[LoadIssue],
    skipped: list[LoadIssue],
) -> list[NewTermsRule]:
    """``new_terms`` rules with their references resolved to loaded rule ids (and ``generate`` applied)."""
    by_ref: dict[str, CompiledRule] = {}
    for rule in compiled:
        by_ref[rule.rule_id] = rule
        if rule.rule is not None and rule.rule.name:
            by_ref[rule.rule.name] = rule
    resolved: list[NewTermsRule] = []
    seen = {rule.rule_id for rule in compiled}
    for rule in new_terms:
        issue = LoadIssue(rule.path, rule.rule_id, rule.title, CORRELATION_NOTICE)
        if rule.rule_id in off:
            skipped.append(LoadIssue(rule.path, rule.rule_id, rule.title, "disabled by configuration"))
            continue
        if rule.rule_id in seen:
            errors.append(LoadIssue(rule.path, rule.rule_id, rule.title, "duplicate rule id"))
            continue
        missing = [ref for ref in rule.rules if ref not in by_ref]
        if missing:
            errors.append(LoadIssue(rule.path, rule.rule_id, rule.title, f"new_terms correlation: referenced "
                                    f"rule(s) {', '.join(missing)} not loaded (see their own load report)"))
            continue
        targets = [by_ref[ref] for ref in rule.rules]
        if not rule.generate:
            for target in targets:
                target.generate = False
        seen.add(rule.rule_id)
        skipped.append(issue)
        resolved.append(dataclasses.replace(rule, rules=tuple(target.rule_id for target in targets)))
    return resolved
