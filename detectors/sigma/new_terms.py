"""``new_terms`` correlations: "principal does X on Y for the first time in N days", declared in YAML.

Why it exists: first-seen is among the strongest CloudTrail signals (a role reading a secret it
never read, a user calling an API it never called), but Sigma's correlation types cannot say it.
This trailguard extension to the Sigma correlation format (syntax in docs/rule-types.md)::

    correlation: {type: new_terms, rules: [...], group-by: [...], terms: [...], history: 30d, learning: 7d}

runs on the shared :class:`~detectors.windows.FirstSeen` primitive — per group, learning in event
time from the group's first event, a term not seen for ``history`` is new again, bounded values
and keys, checkpointed — so it gets the same lateness, memory bounds and snapshots as every
stateful detector.  pySigma does not know the type, so the loader hands these documents here
(:func:`parse_new_terms`) instead of to pySigma; the Sigma detector feeds matches of the
referenced rules to :meth:`NewTermsSet.observe` like the other correlations.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
from sigma.correlations import SigmaCorrelationTimespan
from sigma.exceptions import SigmaError

from detectors.alert import Alert
from detectors.event import Event, format_time
from detectors.sigma.derived import derived_resolver
from detectors.sigma.values import MISSING, Unsupported
from detectors.windows import FirstSeen

__all__ = ["NORMALISED", "SNAPSHOT_VERSION", "NewTermsError", "NewTermsRule", "NewTermsSet", "is_new_terms",
           "parse_new_terms"]

SNAPSHOT_VERSION: Final = 1
_KEYS: Final = frozenset({"type", "rules", "group-by", "terms", "history", "learning", "generate"})
_TOP: Final = frozenset({"title", "id", "name", "status", "description", "references", "author", "date",
                         "modified", "tags", "level", "falsepositives", "correlation", "license", "fields",
                         "runbook", "alert_summary", "incident", "related", "taxonomy"})
#: Normalised names usable in ``group-by``/``terms`` instead of dotted fields.
NORMALISED: Final[dict[str, Callable[[Event], Any]]] = {
    "principal": lambda event: event.principal,
    "principal_role": lambda event: event.role_arn or event.principal,
    "account_id": lambda event: event.account_id or None,
    "region": lambda event: event.region or None,
    "source_ip": lambda event: event.source_ip or None,
    "event_name": lambda event: event.event_name,
}
#: Longest field value kept in a key (longer ones are hashed: state is bounded by bytes too).
_MAX_VALUE: Final = 256


class NewTermsError(ValueError):
    """A ``new_terms`` correlation that cannot be run; the message names the key and the fix."""


def is_new_terms(document: Any) -> bool:
    """True for a YAML document that is a ``new_terms`` correlation."""
    correlation = document.get("correlation") if isinstance(document, dict) else None
    return isinstance(correlation, dict) and correlation.get("type") == "new_terms"


@dataclass(frozen=True, slots=True)
class NewTermsRule:
    """One parsed ``new_terms`` correlation and the metadata its alerts carry."""

    rule_id: str
    name: str | None
    title: str
    level: str | None
    tags: tuple[str, ...]
    description: str
    references: tuple[str, ...]
    falsepositives: tuple[str, ...]
    path: str
    #: Referenced rules as written (ids or names); the loader resolves them to ids.
    rules: tuple[str, ...]
    group_by: tuple[str, ...]
    terms: tuple[str, ...]
    history: float
    history_spec: str
    learning: float
    learning_spec: str
    generate: bool
    fingerprint: str
    kind: str = "new_terms"
    #: Longest window (for rule tests that push the watermark past every window).
    timespan: float = 0.0


def _names(correlation: dict[str, Any], key: str) -> tuple[str, ...]:
    value = correlation.get(key)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise NewTermsError(f"correlation.{key} must be a non-empty list of field names (dotted event fields or "
                            f"{', '.join(NORMALISED)})")
    return tuple(value)


def _span(correlation: dict[str, Any], key: str) -> tuple[float, str]:
    spec = correlation.get(key)
    if spec in (0, "0"):
        return 0.0, "0s"
    try:
        return float(SigmaCorrelationTimespan(str(spec)).seconds), str(spec)
    except (SigmaError, ValueError, KeyError):
        raise NewTermsError(f"correlation.{key} {spec!r} is not a timespan; fix: write e.g. 30s, 15m, 2h, "
                            "14d") from None


def _strings(document: dict[str, Any], key: str) -> tuple[str, ...]:
    value = document.get(key) or ()
    return tuple(str(item) for item in value) if isinstance(value, list) else (str(value),)


def parse_new_terms(document: dict[str, Any], path: str) -> NewTermsRule:
    """Validate a ``new_terms`` document; :class:`NewTermsError` with the key and fix if it is wrong."""
    unknown = sorted(set(document) - _TOP)
    if unknown:
        raise NewTermsError(f"unknown top-level key(s) {', '.join(unknown)}")
    correlation = document["correlation"]
    extra = sorted(set(correlation) - _KEYS)
    if extra:
        raise NewTermsError(f"unknown correlation key(s) {', '.join(extra)}; known: {', '.join(sorted(_KEYS))}")
    rule_id = document.get("id") or document.get("name")
    if not isinstance(rule_id, str) or not rule_id:
        raise NewTermsError("correlation rule has no id (needed for alerts and state)")
    title = document.get("title")
    if not isinstance(title, str) or not title:
        raise NewTermsError("correlation rule has no title")
    rules = _names(correlation, "rules")
    group_by, terms = _names(correlation, "group-by"), _names(correlation, "terms")
    for field in (*group_by, *terms):
        if field.startswith("trailguard."):
            try:
                derived_resolver(field)
            except Unsupported as error:
                raise NewTermsError(f"correlation group-by/terms: {error}") from None
    history, history_spec = _span(correlation, "history")
    learning, learning_spec = _span(correlation, "learning")
    if history <= 0:
        raise NewTermsError("correlation.history must be longer than 0s")
    generate = correlation.get("generate", False)
    if not isinstance(generate, bool):
        raise NewTermsError("correlation.generate must be true or false")
    level = document.get("level")
    fingerprint = hashlib.sha256(orjson.dumps(["new_terms", sorted(rules), group_by, terms, history, learning]))
    return NewTermsRule(
        rule_id=rule_id, name=document.get("name") if isinstance(document.get("name"), str) else None,
        title=title, level=str(level) if level is not None else None, tags=_strings(document, "tags"),
        description=str(document.get("description") or ""), references=_strings(document, "references"),
        falsepositives=_strings(document, "falsepositives"), path=path, rules=rules, group_by=group_by,
        terms=terms, history=history, history_spec=history_spec, learning=learning, learning_spec=learning_spec,
        generate=generate, fingerprint=fingerprint.hexdigest()[:16], timespan=max(history, learning),
    )


def _reader(name: str) -> Callable[[Event], Any]:
    normalised = NORMALISED.get(name)
    if normalised is not None:
        return normalised
    if name.startswith("trailguard."):
        resolve = derived_resolver(name)

        def read_derived(event: Event) -> Any:
            value = resolve(event.raw)
            return None if value is MISSING else value

        return read_derived
    return lambda event: event.get(name)


def _key_value(value: Any) -> Hashable:
    if value is None or value == "" or value == []:
        return None
    if not isinstance(value, (str, int, float, bool)):
        value = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    if isinstance(value, str) and len(value) > _MAX_VALUE:
        return "sha256:" + hashlib.sha256(value.encode()).hexdigest()
    return value


SeverityOf = Callable[[str, str | None], str]


def _ignore(_n: int) -> None:
    return None


class _Runtime:
    __slots__ = ("group", "rule", "term", "window")

    def __init__(self, rule: NewTermsRule, *, max_keys: int, on_late: Callable[[int], None],
                 on_evict: Callable[[int], None]) -> None:
        self.rule = rule
        self.group = tuple(_reader(name) for name in rule.group_by)
        self.term = tuple(_reader(name) for name in rule.terms)
        self.window = FirstSeen(rule.learning, ttl=rule.history, max_keys=max_keys, on_late=on_late,
                                on_evict=on_evict)


class NewTermsSet:
    """The loaded ``new_terms`` correlations, fed with rule matches; produces their alerts."""

    def __init__(self, rules: Iterable[NewTermsRule] = (), *, severity_of: SeverityOf, max_keys: int = 100_000,
                 on_late: Callable[[int], None] = _ignore, on_evict: Callable[[int], None] = _ignore) -> None:
        self.severity_of = severity_of
        self._settings: dict[str, Any] = {"max_keys": max_keys, "on_late": on_late, "on_evict": on_evict}
        self._runtimes = {rule.rule_id: _Runtime(rule, **self._settings) for rule in rules}
        self._by_input: dict[str, list[_Runtime]] = {}
        for runtime in self._runtimes.values():
            for referenced in runtime.rule.rules:
                self._by_input.setdefault(referenced, []).append(runtime)

    def __len__(self) -> int:
        return len(self._runtimes)

    @property
    def plans(self) -> tuple[NewTermsRule, ...]:
        """The running rules (named like the correlation plans, for the rule-test runner)."""
        return tuple(runtime.rule for runtime in self._runtimes.values())

    def wants(self, rule_id: str) -> bool:
        """True when some ``new_terms`` rule references detection rule ``rule_id``."""
        return rule_id in self._by_input

    def observe(self, rule_id: str, event: Event) -> list[Alert]:
        """Feed one match of ``rule_id``; return the alerts of the terms it makes new."""
        out: list[Alert] = []
        for runtime in self._by_input.get(rule_id, ()):
            group = tuple(_key_value(read(event)) for read in runtime.group)
            term = tuple(_key_value(read(event)) for read in runtime.term)
            if None in group or None in term:
                continue
            report = runtime.window.add(group, event.time, term, event.event_id)
            if report is not None:
                out.append(self._alert(runtime.rule, group, term, report.learning_started, report.known, event))
        return out

    def advance(self, watermark: float) -> None:
        """Advance every rule's state to ``watermark`` (forgets terms unused for ``history``)."""
        for runtime in self._runtimes.values():
            runtime.window.advance(watermark)

    def _alert(self, rule: NewTermsRule, group: tuple[Hashable, ...], term: tuple[Hashable, ...],
               learning_started: float, known: int, event: Event) -> Alert:
        groups = dict(zip(rule.group_by, group, strict=True))
        terms = dict(zip(rule.terms, term, strict=True))
        group_text = ",".join(f"{name}={value}" for name, value in groups.items())
        term_text = ",".join(f"{name}={value}" for name, value in terms.items())
        return Alert.from_event(
            event,
            detector="sigma",
            title=rule.title,
            severity=self.severity_of(rule.rule_id, rule.level),
            summary=f"Sigma new_terms '{rule.title}': {group_text} used {term_text} for the first time in "
                    f"{rule.history_spec}",
            evidence={
                "correlation_type": "new_terms", "group_by": groups, "terms": terms,
                "learning_started": format_time(learning_started), "known_terms": known,
                "history": rule.history_spec, "learning": rule.learning_spec, "rules": list(rule.rules),
                "rule_file": Path(rule.path).name, "level": rule.level, "description": rule.description,
                "references": list(rule.references), "falsepositives": list(rule.falsepositives),
            },
            tags=list(rule.tags),
            rule_id=rule.rule_id,
            entity=f"{rule.rule_id}|{group_text}|{term_text}",
        )

    def state_keys(self) -> int:
        """Groups held by all ``new_terms`` rules."""
        return sum(len(runtime.window) for runtime in self._runtimes.values())

    def snapshot(self) -> dict[str, Any]:
        """State as versioned plain data keyed by rule id, each entry stamped with its fingerprint."""
        return {"version": SNAPSHOT_VERSION,
                "rules": {rule_id: {"fingerprint": runtime.rule.fingerprint, "window": runtime.window.snapshot()}
                          for rule_id, runtime in self._runtimes.items()}}

    def restore(self, data: Any) -> None:
        """Load :meth:`snapshot`; rules whose ``rules``/``group-by``/``terms``/spans changed start empty."""
        if not isinstance(data, dict) or not isinstance(data.get("version"), int):
            raise ValueError("new_terms snapshot must be a mapping with an integer 'version'")
        if data["version"] > SNAPSHOT_VERSION:
            raise ValueError(f"new_terms snapshot has version {data['version']}, newer than {SNAPSHOT_VERSION}")
        saved = data.get("rules") or {}
        for rule_id, runtime in self._runtimes.items():
            entry = saved.get(rule_id)
            runtime.window = _Runtime(runtime.rule, **self._settings).window
            if isinstance(entry, dict) and entry.get("fingerprint") == runtime.rule.fingerprint:
                runtime.window.restore(entry["window"])

    def adopt(self, previous: NewTermsSet) -> None:
        """Take over ``previous``'s live state for rules that are unchanged (rule reload)."""
        for rule_id, runtime in self._runtimes.items():
            old = previous._runtimes.get(rule_id)
            if old is not None and old.rule.fingerprint == runtime.rule.fingerprint:
                runtime.window = old.window
