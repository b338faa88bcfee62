"""``trailguard rules validate|test``: the rule author's loop, like ``panther_analysis_tool test``.

A detection is only trusted with its own positive *and* negative events, so every rule file
``NAME.yml`` has a sidecar ``NAME.tests.json`` next to it (JSON, not a ``.yml`` the rule loader
would pick up, and real CloudTrail records are JSON anyway)::

    {"rule_id": "<uuid, optional when the file holds one rule>",
     "positive": [{"name": "...", "source": "where the record comes from", "event": {...}}],
     "negative": [...]}

A file holding several rules may give a list of such objects, one per rule.  ``validate`` loads
every rule through the real loader (pySigma + trailguard's compiler) and prints each problem with
file, id, title and reason; ``--strict`` also checks the metadata the shipped pack promises (UUID
id, level, ATT&CK tags, description, a tests sidecar).  ``test`` runs every case through the real
rule index and predicate (``RuleSet.match`` on a validated :class:`~detectors.event.Event`), so a
rule the index would keep away from its own positive fails too.  A rule without tests fails.
Both exit 1 on any failure, 0 otherwise.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import orjson

from detectors.event import Event, InvalidEvent
from detectors.sigma import CompiledRule, LoadIssue, RuleSet, load_rules

__all__ = [
    "TESTS_SUFFIX",
    "CaseResult",
    "RuleResult",
    "RuleTestCase",
    "SidecarError",
    "add_rules_parser",
    "load_tests",
    "metadata_problems",
    "run_rule_tests",
    "sidecar_path",
]

TESTS_SUFFIX: Final = ".tests.json"
EXIT_FAILED: Final = 1
_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ATTACK_TECHNIQUE: Final = re.compile(r"attack\.t\d{4}(\.\d{3})?")


class SidecarError(ValueError):
    """A tests sidecar that cannot be used (unreadable, not JSON, wrong shape)."""


@dataclass(frozen=True, slots=True)
class RuleTestCase:
    """One labelled event: the rule must match it (``expected``) or must not."""

    name: str
    event: Any
    expected: bool
    source: str = ""


@dataclass(frozen=True, slots=True)
class CaseResult:
    """What the engine did with one case."""

    case: RuleTestCase
    matched: bool
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.matched is self.case.expected

    def explain(self) -> str:
        kind = "positive" if self.case.expected else "negative"
        if self.error is not None:
            return f"{kind} {self.case.name!r}: {self.error}"
        return f"{kind} {self.case.name!r}: rule {'matched' if self.matched else 'did not match'}"


@dataclass(slots=True)
class RuleResult:
    """The outcome of one rule's tests (``problem`` is set when they could not run at all)."""

    rule: CompiledRule
    cases: list[CaseResult] = field(default_factory=list)
    problem: str | None = None

    @property
    def passed(self) -> bool:
        return self.problem is None and all(result.passed for result in self.cases)


def sidecar_path(rule_path: str | Path) -> Path:
    """The sidecar of a rule file: ``x/NAME.yml`` → ``x/NAME.tests.json``."""
    path = Path(rule_path)
    return path.with_name(path.stem + TESTS_SUFFIX)


def _cases(entries: Any, expected: bool, where: str) -> list[RuleTestCase]:
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise SidecarError(f"{where}: '{'positive' if expected else 'negative'}' must be a list")
    cases = []
    for index, entry in enumerate(entries):
        if isinstance(entry, dict) and "event" in entry:
            name = str(entry.get("name") or f"#{index}")
            cases.append(RuleTestCase(name, entry["event"], expected, str(entry.get("source") or "")))
        else:
            cases.append(RuleTestCase(f"#{index}", entry, expected))
    return cases


def load_tests(path: str | Path) -> dict[str | None, list[RuleTestCase]]:
    """Read a sidecar: rule id (``None`` when not given) → its cases.  Raises :class:`SidecarError`."""
    try:
        document = orjson.loads(Path(path).read_bytes())
    except OSError as error:
        raise SidecarError(f"{path}: cannot read: {error}") from None
    except orjson.JSONDecodeError as error:
        raise SidecarError(f"{path}: not valid JSON: {error}") from None
    blocks = document if isinstance(document, list) else [document]
    found: dict[str | None, list[RuleTestCase]] = {}
    for block in blocks:
        if not isinstance(block, dict):
            raise SidecarError(f"{path}: expected an object with 'positive' and 'negative' lists")
        unknown = set(block) - {"rule_id", "positive", "negative"}
        if unknown:
            raise SidecarError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
        rule_id = block.get("rule_id")
        cases = _cases(block.get("positive"), True, str(path)) + _cases(block.get("negative"), False, str(path))
        found.setdefault(str(rule_id) if rule_id is not None else None, []).extend(cases)
    return found


def _run_case(ruleset: RuleSet, rule: CompiledRule, case: RuleTestCase) -> CaseResult:
    try:
        event = Event(case.event, "rule-test")
    except InvalidEvent as error:
        return CaseResult(case, matched=False, error=f"not a usable CloudTrail record ({error})")
    matched = ruleset.match(event.raw, event.event_name, event.event_source)
    return CaseResult(case, matched=any(candidate is rule for candidate in matched))


def run_rule_tests(ruleset: RuleSet) -> list[RuleResult]:
    """Run every loaded rule's sidecar tests through ``ruleset``'s index and predicates."""
    by_file: dict[str, list[CompiledRule]] = {}
    for rule in ruleset.rules:
        by_file.setdefault(rule.path, []).append(rule)
    results: list[RuleResult] = []
    for path, rules in by_file.items():
        sidecar = sidecar_path(path)
        if not sidecar.exists():
            results.extend(RuleResult(rule, problem=f"no tests (expected {sidecar.name})") for rule in rules)
            continue
        try:
            tests = load_tests(sidecar)
        except SidecarError as error:
            results.extend(RuleResult(rule, problem=str(error)) for rule in rules)
            continue
        for rule in rules:
            cases = tests.get(rule.rule_id)
            if cases is None and len(rules) == 1 and set(tests) <= {None}:
                cases = tests.get(None)
            if not cases:
                results.append(RuleResult(rule, problem=f"no tests for this rule in {sidecar.name}"))
                continue
            result = RuleResult(rule, [_run_case(ruleset, rule, case) for case in cases])
            if not any(case.expected for case in cases) or all(case.expected for case in cases):
                result.problem = "needs at least one positive and one negative event"
            results.append(result)
    return results


def metadata_problems(rule: CompiledRule) -> list[str]:
    """What a rule of the shipped pack must carry beyond loading (``validate --strict``)."""
    problems = []
    if not _UUID.fullmatch(rule.rule_id):
        problems.append("id is not a lowercase UUID")
    if rule.level is None:
        problems.append("no level")
    if not any(tag.startswith("attack.") and not _ATTACK_TECHNIQUE.fullmatch(tag) for tag in rule.tags):
        problems.append("no ATT&CK tactic tag (attack.<tactic>)")
    if not any(_ATTACK_TECHNIQUE.fullmatch(tag) for tag in rule.tags):
        problems.append("no ATT&CK technique tag (attack.tNNNN[.NNN])")
    if not rule.description.strip():
        problems.append("no description")
    if not rule.falsepositives:
        problems.append("no falsepositives")
    if not sidecar_path(rule.path).exists():
        problems.append(f"no tests sidecar {sidecar_path(rule.path).name}")
    return problems


def _shown(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def _issue_line(issue: LoadIssue) -> str:
    return str(LoadIssue(_shown(issue.path), issue.rule_id, issue.title, issue.reason))


def cmd_validate(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Load every rule under the paths; print each problem; exit 1 if any rule failed."""
    out = out or sys.stdout
    ruleset, errors = load_rules(args.paths)
    failed = len(errors)
    for issue in errors:
        print(f"ERROR {_issue_line(issue)}", file=out)
    for issue in ruleset.skipped:
        print(f"SKIP  {_issue_line(issue)}", file=out)
    for rule in ruleset.rules:
        problems = metadata_problems(rule) if args.strict else []
        if problems:
            failed += 1
            for problem in problems:
                print(f"ERROR {_shown(rule.path)}: rule {rule.rule_id} ({rule.title}): {problem}", file=out)
        elif args.verbose:
            print(f"OK    {_shown(rule.path)}: rule {rule.rule_id} ({rule.title})", file=out)
    print(f"{len(ruleset.rules)} rule(s) loaded, {failed} with errors, {len(ruleset.skipped)} skipped", file=out)
    return EXIT_FAILED if failed else 0


def cmd_test(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run every rule's sidecar tests; print pass/fail per rule; exit 1 on any failure."""
    out = out or sys.stdout
    ruleset, errors = load_rules(args.paths)
    for issue in errors:
        print(f"ERROR {_issue_line(issue)}", file=out)
    results = run_rule_tests(ruleset)
    failed = 0
    for result in results:
        rule = result.rule
        where = f"{_shown(rule.path)} ({rule.title})"
        if result.passed:
            positives = sum(r.case.expected for r in result.cases)
            print(f"PASS  {where}: {positives} positive, {len(result.cases) - positives} negative", file=out)
            continue
        failed += 1
        print(f"FAIL  {where}" + (f": {result.problem}" if result.problem else ""), file=out)
        for case in result.cases:
            if not case.passed:
                print(f"        {case.explain()}", file=out)
    passed = len(results) - failed
    print(f"{len(results)} rule(s) tested: {passed} passed, {failed} failed"
          + (f"; {len(errors)} rule(s) did not load" if errors else ""), file=out)
    return EXIT_FAILED if failed or errors else 0


def add_rules_parser(sub: Any) -> None:
    """Register ``trailguard rules {validate,test}`` on the CLI's subparsers object."""
    rules = sub.add_parser("rules", help="validate and test Sigma detection rules")
    commands = rules.add_subparsers(dest="rules_command", required=True)
    validate = commands.add_parser("validate", help="load every rule and report problems")
    validate.add_argument("paths", nargs="+", help="rule files or directories (searched recursively)")
    validate.add_argument("--strict", action="store_true",
                          help="also require UUID ids, level, ATT&CK tags, description and a tests sidecar")
    validate.add_argument("--verbose", "-v", action="store_true", help="list the rules that are fine too")
    validate.set_defaults(func=cmd_validate)
    test = commands.add_parser("test", help="run each rule's positive and negative test events")
    test.add_argument("paths", nargs="+", help="rule files or directories (searched recursively)")
    test.set_defaults(func=cmd_test)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m daemon.rules_cli validate|test PATH...`` (same as ``trailguard rules ...``)."""
    parser = argparse.ArgumentParser(prog="trailguard")
    add_rules_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["rules", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
