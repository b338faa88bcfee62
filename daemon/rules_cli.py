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
id, level, ATT&CK tags, description, a tests sidecar) and runs pySigma's own validators
(``daemon/rules_validators.py``).  ``test`` runs every case through the real
rule index and predicate (``RuleSet.match`` on a validated :class:`~detectors.event.Event`), so a
rule the index would keep away from its own positive fails too.  A rule without tests fails.
Both exit 1 on any failure, 0 otherwise.

Correlation rules are tested with *timelines* instead, under ``timelines`` in the same sidecar (format
and how they run: :mod:`daemon.rules_timelines`).  The detector they run on is loaded with every rule
file given plus the files next to each given file (where a correlation's base rules live).  A
correlation that only feeds another (``generate: false``) is tested as if it alerted, and so is a
detection rule with ``generate: false``: its positives must *match*.  Whether a rule alerts on its own
is its ``generate`` flag, not its tests.  Rules in the files next to a given file are loaded (so
references resolve) but neither tested nor reported.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import orjson

from daemon.rules_timelines import Timeline, TimelineError, TimelineResult, parse_timelines, run_timeline
from daemon.rules_validators import pysigma_problems, sigma_rules_by_id
from detectors.event import Event, InvalidEvent
from detectors.sigma import CORRELATION_NOTICE, CompiledRule, LoadIssue, RuleSet
from detectors.sigma.correlation_plan import Plan
from detectors.sigma.detector import SigmaConfig, SigmaDetector
from detectors.sigma.loader import rule_files
from detectors.sigma.new_terms import NewTermsRule

__all__ = [
    "TESTS_SUFFIX",
    "CaseResult",
    "LoadedRules",
    "RuleResult",
    "RuleTestCase",
    "SidecarError",
    "add_rules_parser",
    "load_rule_files",
    "load_tests",
    "metadata_problems",
    "run_correlation_tests",
    "run_rule_tests",
    "sidecar_path",
]

TESTS_SUFFIX: Final = ".tests.json"
EXIT_FAILED: Final = 1
_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ATTACK_TECHNIQUE: Final = re.compile(r"attack\.t\d{4}(\.\d{3})?")
_BLOCK_KEYS: Final = frozenset({"rule_id", "positive", "negative", "timelines"})


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

    rule: CompiledRule | Plan | NewTermsRule
    cases: list[CaseResult | TimelineResult] = field(default_factory=list)
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


def load_tests(path: str | Path) -> dict[str | None, list[RuleTestCase | Timeline]]:
    """Read a sidecar: rule id (``None`` when not given) → its cases.  Raises :class:`SidecarError`."""
    try:
        document = orjson.loads(Path(path).read_bytes())
    except OSError as error:
        raise SidecarError(f"{path}: cannot read: {error}") from None
    except orjson.JSONDecodeError as error:
        raise SidecarError(f"{path}: not valid JSON: {error}") from None
    blocks = document if isinstance(document, list) else [document]
    found: dict[str | None, list[RuleTestCase | Timeline]] = {}
    for block in blocks:
        if not isinstance(block, dict):
            raise SidecarError(f"{path}: expected an object with 'positive' and 'negative' (or 'timelines') lists")
        unknown = set(block) - _BLOCK_KEYS
        if unknown:
            raise SidecarError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
        rule_id = block.get("rule_id")
        try:
            cases: list[RuleTestCase | Timeline] = [
                *_cases(block.get("positive"), True, str(path)),
                *_cases(block.get("negative"), False, str(path)),
                *parse_timelines(block.get("timelines"), str(path)),
            ]
        except TimelineError as error:
            raise SidecarError(str(error)) from None
        found.setdefault(str(rule_id) if rule_id is not None else None, []).extend(cases)
    return found


def _run_case(ruleset: RuleSet, rule: CompiledRule, case: RuleTestCase, exceptions: Any = None) -> CaseResult:
    try:
        event = Event(case.event, "rule-test")
    except InvalidEvent as error:
        return CaseResult(case, matched=False, error=f"not a usable CloudTrail record ({error})")
    matched = ruleset.match(event.raw, event.event_name, event.event_source)
    hit = any(candidate is rule for candidate in matched)
    if hit and exceptions and exceptions.suppresses(rule.rule_id, event):  # --config: tuning applies
        hit = False
    return CaseResult(case, matched=hit)


def _labelled(cases: list[Any]) -> str | None:
    """Why a rule's cases cannot stand as its tests: they need both a positive and a negative."""
    expectations = {case.expected for case in cases}
    return None if expectations == {True, False} else "needs at least one positive and one negative"


def _sidecar_cases(
    path: str, ids: list[str], others_in_file: int
) -> tuple[dict[str, list[RuleTestCase | Timeline]], str | None]:
    """The cases of each rule id of the file ``path`` (``ids``), or why the sidecar cannot be used."""
    sidecar = sidecar_path(path)
    if not sidecar.exists():
        return {}, f"no tests (expected {sidecar.name})"
    try:
        tests = load_tests(sidecar)
    except SidecarError as error:
        return {}, str(error)
    found = {rule_id: tests[rule_id] for rule_id in ids if rule_id in tests}
    if len(ids) == 1 and not others_in_file and set(tests) <= {None} and None in tests:
        found[ids[0]] = tests[None]
    return found, None


def _selected(path: str, only: Collection[str] | None) -> bool:
    return only is None or str(Path(path).resolve()) in only


def run_rule_tests(ruleset: RuleSet, *, only: Collection[str] | None = None,
                   exceptions: Any = None) -> list[RuleResult]:
    """Run every loaded detection rule's sidecar events through ``ruleset``'s index and predicates.

    ``only``: resolved paths of the rule files to test (default: every rule in ``ruleset``).
    """
    by_file: dict[str, list[CompiledRule]] = {}
    for rule in ruleset.rules:
        if _selected(rule.path, only):
            by_file.setdefault(rule.path, []).append(rule)
    correlations_in: dict[str, int] = {}
    for correlation in ruleset.correlation_rules:
        if correlation.source is not None:
            where = str(correlation.source.path)
            correlations_in[where] = correlations_in.get(where, 0) + 1
    results: list[RuleResult] = []
    for path, rules in by_file.items():
        tests, problem = _sidecar_cases(path, [rule.rule_id for rule in rules], correlations_in.get(path, 0))
        for rule in rules:
            cases = tests.get(rule.rule_id)
            if problem is not None or not cases:
                missing = f"no tests for this rule in {sidecar_path(path).name}"
                results.append(RuleResult(rule, problem=problem or missing))
                continue
            if any(isinstance(case, Timeline) for case in cases):
                results.append(RuleResult(rule, problem="timelines are for correlation rules; give it "
                                          "'positive' and 'negative' events"))
                continue
            events = [case for case in cases if isinstance(case, RuleTestCase)]
            result = RuleResult(rule, [_run_case(ruleset, rule, case, exceptions) for case in events])
            result.problem = _labelled(cases)
            results.append(result)
    return results


def run_correlation_tests(detector: SigmaDetector, *, only: Collection[str] | None = None) -> list[RuleResult]:
    """Run every loaded correlation rule's sidecar timelines through ``detector`` (see
    :func:`~daemon.rules_timelines.run_timeline`).

    ``only``: resolved paths of the rule files to test (default: every correlation loaded).
    """
    by_file: dict[str, list[Plan | NewTermsRule]] = {}
    for plan in (*detector.correlations.plans, *detector.new_terms.plans):
        if _selected(plan.path, only):
            by_file.setdefault(plan.path, []).append(plan)
    detections_in: dict[str, int] = {}
    for rule in detector.rules.rules:
        detections_in[rule.path] = detections_in.get(rule.path, 0) + 1
    results: list[RuleResult] = []
    for path, plans in by_file.items():
        tests, problem = _sidecar_cases(path, [plan.rule_id for plan in plans], detections_in.get(path, 0))
        for plan in plans:
            cases = tests.get(plan.rule_id)
            if problem is not None or not cases:
                missing = f"no tests for this rule in {sidecar_path(path).name}"
                results.append(RuleResult(plan, problem=problem or missing))
                continue
            if any(isinstance(case, RuleTestCase) for case in cases):
                results.append(RuleResult(plan, problem="a correlation rule is tested with 'timelines', not "
                                          "'positive'/'negative' events"))
                continue
            result = RuleResult(plan, [run_timeline(detector, plan.rule_id, case) for case in cases
                                       if isinstance(case, Timeline)])
            result.problem = _labelled(cases)
            results.append(result)
    return results


def metadata_problems(rule: CompiledRule | Plan | NewTermsRule) -> list[str]:
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


@dataclass(frozen=True, slots=True)
class LoadedRules:
    """The rule files a command was given, loaded in a detector together with their neighbours."""

    #: Loaded with the given files plus the files next to each given file.
    detector: SigmaDetector
    #: Resolved paths of the rule files the command was given (directories expanded).
    selected: frozenset[str]
    #: Load problems of the given files (and of paths that do not exist).
    errors: tuple[LoadIssue, ...]
    #: Rules of the given files set aside (other log sources, disabled); correlations are not.
    skipped: tuple[LoadIssue, ...]

    @property
    def rules(self) -> list[CompiledRule]:
        """The detection rules of the given files."""
        return [rule for rule in self.detector.rules.rules if rule.path in self.selected]

    @property
    def plans(self) -> list[Plan | NewTermsRule]:
        """The correlation rules of the given files that can run."""
        return [plan for plan in (*self.detector.correlations.plans, *self.detector.new_terms.plans)
                if plan.path in self.selected]


def load_rule_files(paths: Sequence[str | Path], tuning: SigmaConfig | None = None) -> LoadedRules:
    """Load the rule files under ``paths`` and, so that correlations find their base rules, the files
    next to each file given directly; report only the given files' problems.

    ``tuning``: a config's ``sigma`` settings (disabled rules, severity overrides, exceptions) to
    load the rules with; their references are validated by ``check-config``, not here, since the
    files under test may be a subset of the configured rules."""
    given, missing = rule_files(paths)
    selected = frozenset(str(path.resolve()) for path in given)
    neighbours, _ = rule_files(Path(entry).resolve().parent for entry in paths if Path(entry).is_file())
    context = sorted(selected | {str(path.resolve()) for path in neighbours})
    settings = SigmaConfig(paths=context) if tuning is None else tuning.model_copy(update={"paths": context})
    detector = SigmaDetector(settings)
    errors = [*missing, *(issue for issue in detector.load_errors
                          if (issue.path in selected or issue.path not in context) and issue.path != "config")]
    skipped = tuple(issue for issue in detector.rules.skipped
                    if issue.path in selected and issue.reason != CORRELATION_NOTICE)
    return LoadedRules(detector, selected, tuple(errors), skipped)


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
    loaded = load_rule_files(args.paths)
    failed = len(loaded.errors)
    for issue in loaded.errors:
        print(f"ERROR {_issue_line(issue)}", file=out)
    for issue in loaded.skipped:
        print(f"SKIP  {_issue_line(issue)}", file=out)
    everything: list[CompiledRule | Plan | NewTermsRule] = [*loaded.rules, *loaded.plans]
    sources = sigma_rules_by_id([*(r.rule for r in loaded.rules if r.rule is not None),
                                 *loaded.detector.rules.correlation_rules]) if args.strict else {}
    for rule in everything:
        problems = metadata_problems(rule) if args.strict else []
        if args.strict and rule.rule_id in sources:
            problems += pysigma_problems(sources[rule.rule_id])
        if problems:
            failed += 1
            for problem in problems:
                print(f"ERROR {_shown(rule.path)}: rule {rule.rule_id} ({rule.title}): {problem}", file=out)
        elif args.verbose:
            print(f"OK    {_shown(rule.path)}: rule {rule.rule_id} ({rule.title})", file=out)
    correlations = f" ({len(loaded.plans)} correlation)" if loaded.plans else ""
    print(f"{len(everything)} rule(s) loaded{correlations}, {failed} with errors, {len(loaded.skipped)} skipped",
          file=out)
    return EXIT_FAILED if failed else 0


def cmd_test(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run every rule's sidecar tests (events and timelines); print pass/fail per rule; exit 1 on any failure."""
    out = out or sys.stdout
    tuning = None
    if getattr(args, "config", None):
        from daemon.components import check
        from daemon.config import ConfigError, load_config

        try:
            built = check(load_config(args.config), args.config)
        except ConfigError as error:
            for line in error.problems:
                print(f"ERROR {line}", file=out)
            return EXIT_FAILED
        tuning = next((model for cls, model in built.detectors if cls.name == "sigma"), None)
    loaded = load_rule_files(args.paths, tuning)
    for issue in loaded.errors:
        print(f"ERROR {_issue_line(issue)}", file=out)
    exceptions = loaded.detector.exceptions if tuning is not None else None
    results = [*run_rule_tests(loaded.detector.rules, only=loaded.selected, exceptions=exceptions),
               *run_correlation_tests(loaded.detector, only=loaded.selected)]
    failed = 0
    for result in results:
        rule = result.rule
        where = f"{_shown(rule.path)} ({rule.title})"
        if result.passed:
            positives = sum(r.case.expected for r in result.cases)
            unit = " timeline(s)" if isinstance(rule, (Plan, NewTermsRule)) else ""
            print(f"PASS  {where}: {positives} positive, {len(result.cases) - positives} negative{unit}", file=out)
            continue
        failed += 1
        print(f"FAIL  {where}" + (f": {result.problem}" if result.problem else ""), file=out)
        for case in result.cases:
            if not case.passed:
                print(f"        {case.explain()}", file=out)
    passed = len(results) - failed
    errors = loaded.errors
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
                          help="also require UUID ids, level, ATT&CK tags, description and a tests sidecar, "
                               "and run pySigma's rule validators")
    validate.add_argument("--verbose", "-v", action="store_true", help="list the rules that are fine too")
    validate.set_defaults(func=cmd_validate)
    test = commands.add_parser("test", help="run each rule's positive and negative test events")
    test.add_argument("paths", nargs="+", help="rule files or directories (searched recursively)")
    test.add_argument("--config", "-c", metavar="FILE",
                      help="apply this config's Sigma tuning (disabled rules, exceptions): a too-broad exception "
                           "fails the positive tests it suppresses")
    test.set_defaults(func=cmd_test)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m daemon.rules_cli validate|test PATH...`` (same as ``trailguard rules ...``)."""
    parser = argparse.ArgumentParser(prog="trailguard")
    add_rules_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["rules", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
