"""The Sigma detector: runs SOC-written Sigma detection rules natively on every CloudTrail event.

Rules are loaded once (and on :meth:`SigmaDetector.reload`, e.g. on SIGHUP) into an indexed
:class:`~detectors.sigma.ruleset.RuleSet`; each event is tested only against the rules that could
match its eventName/eventSource.  A match notifies the ``on_match`` listeners (the correlation
engine's seam) and, unless the rule is only a correlation input (``generate: false``) or an
exception suppresses it, becomes an alert carrying the rule's metadata.

Sigma correlation rules run here too: every unsuppressed match is also handed to the
:class:`~detectors.sigma.correlation.CorrelationSet` (see :mod:`detectors.sigma.correlation` and,
for what each correlation type runs on, :mod:`detectors.sigma.correlation_plan`).  That makes the
detector stateful: :meth:`SigmaDetector.on_watermark` advances the correlation windows (and emits
the alerts of "at most"/value-aggregate correlations, which are decided when a window closes),
:meth:`SigmaDetector.snapshot`/:meth:`SigmaDetector.restore` cover their state, and
:meth:`SigmaDetector.reload` carries the state of unchanged correlation rules over to the new set.
A correlation rule that cannot be run is a load error like an unsupported detection rule.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sigma.correlations import SigmaCorrelationRule

from detectors.alert import SEVERITIES, Alert
from detectors.base import Detector, DetectorConfig, DetectorContext, StateKey
from detectors.event import Event
from detectors.sigma.alert_content import content_of, describe_match
from detectors.sigma.correlation import CorrelationSet
from detectors.sigma.correlation_plan import Plan, compile_correlations
from detectors.sigma.creators import WRITE_EVENT_NAMES, WRITE_EVENT_SOURCES, CreatorRecord
from detectors.sigma.derived import bind_creators, uses_creators
from detectors.sigma.loader import Logsource, load_rules
from detectors.sigma.new_terms import NewTermsSet
from detectors.sigma.ruleset import CompiledRule, LoadIssue, RuleSet
from detectors.sigma.state_key import rule_set_key
from detectors.sigma.tuning import ExceptionConfig, Exceptions, resolve_tuning

__all__ = ["LogsourceConfig", "SigmaConfig", "SigmaDetector"]

#: Sigma ``level`` → trailguard severity.
LEVEL_SEVERITY: Final = {
    "informational": "info",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "critical": "critical",
}

#: ``listener(rule_id, event)``, called for every match that no exception suppresses.
MatchListener = Callable[[str, Event], None]


class LogsourceConfig(BaseModel):
    """An accepted Sigma ``logsource``; an unset field accepts anything."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    product: str | None = None
    service: str | None = None
    category: str | None = None


class SigmaConfig(DetectorConfig):
    """Settings of the ``sigma`` detector."""

    #: Rule files or directories (searched recursively for ``.yml``/``.yaml``).
    paths: list[str] = []
    logsources: list[LogsourceConfig] = [LogsourceConfig(product="aws", service="cloudtrail")]
    #: Rule ids not to load.
    disabled_rules: list[str] = []
    #: Rule id → severity, overriding the rule's ``level``.
    severity_overrides: dict[str, str] = {}
    exceptions: list[ExceptionConfig] = []
    #: Resources the "who created it" record keeps (``trailguard.resource.*`` fields), least
    #: recently written forgotten first.
    creators_max_resources: int = Field(default=100_000, ge=1)
    #: Milliseconds one event's rule evaluation may take before rules are timed one by one; a rule
    #: over it on 3 events is disabled until the next reload (ERROR log, metric).
    rule_budget_ms: float = Field(default=50.0, gt=0)

    @field_validator("severity_overrides")
    @classmethod
    def _known_severities(cls, value: dict[str, str]) -> dict[str, str]:
        for rule_id, severity in value.items():
            if severity not in SEVERITIES:
                raise ValueError(f"severity {severity!r} for rule {rule_id} is not one of {', '.join(SEVERITIES)}")
        return value


class SigmaDetector(Detector):
    """Evaluates loaded Sigma detection rules on each event."""

    name: ClassVar[str] = "sigma"
    #: Sigma applies its own ``exceptions`` per rule (``rule_ids``; :mod:`detectors.sigma.tuning`).
    shared_exceptions: ClassVar[bool] = False
    Config: ClassVar[type[DetectorConfig]] = SigmaConfig
    severity: ClassVar[str] = "medium"
    #: Sigma matches eventName/eventSource case-insensitively: the engine's index must too.
    index_case_insensitive: ClassVar[bool] = True
    #: The time budget disables single rules here (see RuleSet), never the whole detector.
    budgets_itself: ClassVar[bool] = True

    def __init__(self, config: DetectorConfig, context: DetectorContext | None = None) -> None:
        super().__init__(config, context)
        assert isinstance(config, SigmaConfig)
        self.settings: SigmaConfig = config
        self.paths: list[str] = list(config.paths)
        self.logsources = tuple(
            Logsource(product=ls.product, service=ls.service, category=ls.category) for ls in config.logsources
        )
        self.exceptions = Exceptions(config.exceptions)
        #: Called with (rule_id, event) for every unsuppressed match, alerting or not.
        self.on_match: list[MatchListener] = []
        self.rules, plans, errors = self._load(self.paths)
        self.rules.budget = config.rule_budget_ms / 1000.0
        self._plans = plans
        #: The running correlation rules and their window state.
        self.correlations = self._correlation_set(plans)
        #: The running ``new_terms`` correlations (trailguard extension) and their state.
        self.new_terms = self._new_terms_set(self.rules)
        #: Who created/wrote each secret, parameter, function (``trailguard.resource.*`` fields).
        self.creators = CreatorRecord(config.creators_max_resources)
        self._track_creators = uses_creators(self.rules)
        #: Problems from the last load that went live (the initial one); for ``check-config``.
        self.load_errors: list[LoadIssue] = list(errors)

    @classmethod
    def validate_config(cls, config: SigmaConfig) -> list[str]:
        """Configuration problems (not rule problems): rule paths that do not exist."""
        return [f"paths: {path} does not exist; fix: point it at a rule file or directory"
                for path in config.paths if not Path(path).exists()]

    def _load(self, paths: Iterable[str | Path]) -> tuple[RuleSet, list[Plan], list[LoadIssue]]:
        rules, errors = load_rules(paths, logsources=self.logsources, disabled=self.settings.disabled_rules)
        settings, tuning = resolve_tuning(self.settings, rules)  # every tuning reference names a rule
        if settings is not self.settings:  # rules named by title: load again with their ids
            self.settings, self.exceptions = settings, Exceptions(settings.exceptions)
            rules, errors = load_rules(paths, logsources=self.logsources, disabled=settings.disabled_rules)
        plans, problems = compile_correlations(rules, disabled=self.settings.disabled_rules)
        return rules, plans, [*errors, *problems, *(LoadIssue("config", None, None, line) for line in tuning)]

    def _correlation_set(self, plans: list[Plan]) -> CorrelationSet:
        context = self.context
        return CorrelationSet(
            plans,
            severity_of=self.severity_for,
            max_keys=context.max_keys,
            on_late=lambda n: context.on_late(self.name, n),
            on_evict=lambda n: context.on_evict(self.name, n),
        )

    def _new_terms_set(self, rules: RuleSet) -> NewTermsSet:
        context = self.context
        return NewTermsSet(
            rules.new_terms,
            severity_of=self.severity_for,
            max_keys=context.max_keys,
            on_late=lambda n: context.on_late(self.name, n),
            on_evict=lambda n: context.on_evict(self.name, n),
        )

    def fork(self, *, generate_all: bool = False, context: DetectorContext | None = None) -> SigmaDetector:
        """A twin sharing the compiled rules (immutable) with empty correlation state.

        ``generate_all``: every correlation of the twin alerts, also one that only feeds another
        (``generate: false``), so rule tests can see it fire.  ``context``: the twin's own context
        (e.g. to count its late events apart) instead of this detector's.
        """
        twin = copy.copy(self)
        if context is not None:
            twin.context = context
        twin.on_match = list(self.on_match)
        plans = [dataclasses.replace(plan, generate=True) for plan in self._plans] if generate_all else self._plans
        twin.correlations = twin._correlation_set(plans)
        twin.new_terms = twin._new_terms_set(self.rules)
        twin.creators = CreatorRecord(self.settings.creators_max_resources)
        return twin

    def reload(self, paths: Iterable[str | Path] | None = None) -> list[LoadIssue]:
        """Build a complete new rule set; swap it in only if it loaded without errors.

        Returns the errors (empty on success).  On errors the running rule set stays active.
        The caller must re-read :meth:`index_names`/:meth:`index_sources` after a successful reload.
        Correlation rules whose windowing (type, rules, group-by, fields, timespan, condition) is
        unchanged keep their window state; changed or removed ones drop it.
        """
        wanted = [str(path) for path in paths] if paths is not None else self.paths
        rules, plans, errors = self._load(wanted)
        if errors:
            return errors
        correlations = self._correlation_set(plans)
        correlations.adopt(self.correlations)
        rules.budget = self.settings.rule_budget_ms / 1000.0
        new_terms = self._new_terms_set(rules)
        new_terms.adopt(self.new_terms)
        self.new_terms = new_terms
        self.rules = rules
        self._plans = plans
        self.correlations = correlations
        self._track_creators = uses_creators(rules)
        self.paths = wanted
        self.load_errors = []
        return []

    def retune(self, config: SigmaConfig) -> list[LoadIssue]:
        """Reload rules *and* tuning (disabled rules, overrides, exceptions) from ``config`` together.

        All or nothing, like :meth:`reload`: on any load or tuning-reference error the running rules
        and tuning stay and the errors are returned.  Unchanged correlations keep their window state.
        """
        fresh = type(self)(config, self.context)
        if fresh.load_errors:
            return fresh.load_errors
        fresh.correlations.adopt(self.correlations)
        self.config, self.settings, self.exceptions = fresh.config, fresh.settings, fresh.exceptions
        self.rules, self._plans, self.correlations = fresh.rules, fresh._plans, fresh.correlations
        self.paths, self.load_errors = fresh.paths, []
        return []

    @property
    def correlation_rules(self) -> tuple[SigmaCorrelationRule, ...]:
        """Correlation rules found in the rule files, for the correlation engine."""
        return self.rules.correlation_rules

    def take_disabled(self) -> list[tuple[str, float]]:
        """Rules the time budget disabled since the last call (``(rule id, seconds)``), for the engine."""
        return self.rules.take_disabled()

    def required_key(self) -> StateKey | None:
        """The key the loaded correlations' ``group-by`` need (:mod:`detectors.sigma.state_key`)."""
        group_bys = [plan.group_by for plan in self._plans] + [rule.group_by for rule in self.rules.new_terms]
        return rule_set_key(group_bys, tracks_creators=self._track_creators)

    def index_names(self) -> frozenset[str] | None:
        """The union of the eventNames the rules require, or ``None`` if some rule needs all events.

        With a rule that asks who created a resource, the creator record's write events too: the
        record must see every ``CreateSecret``/``PutParameter``/… even when no rule matches it."""
        names = self.rules.index_names()
        if names is not None and self._track_creators:
            names = names | {name.lower() for name in WRITE_EVENT_NAMES}
        return names

    def index_sources(self) -> frozenset[str] | None:
        """The union of the eventSources the rules require, or ``None`` (creator writes included)."""
        sources = self.rules.index_sources()
        if sources is not None and self._track_creators:
            sources = sources | WRITE_EVENT_SOURCES
        return sources

    def severity_of(self, rule: CompiledRule) -> str:
        """Per-rule override, else the detector-wide override, else the rule's level."""
        return self.severity_for(rule.rule_id, rule.level)

    def severity_for(self, rule_id: str, level: str | None) -> str:
        """:meth:`severity_of` for any rule id and Sigma level (correlation rules too)."""
        override = self.settings.severity_overrides.get(rule_id)
        if override:
            return override
        if self.settings.severity:
            return self.settings.severity
        return LEVEL_SEVERITY.get(level or "", self.severity)

    def on_event(self, event: Event) -> list[Alert] | None:
        """Alerts for the rules ``event`` matches (``None`` when it matches none)."""
        if self._track_creators:
            bind_creators(self.creators)
            self.creators.observe(event.raw)
        matched = self.rules.match(event.raw, event.event_name, event.event_source, event.identity_type)
        if not matched:
            return None
        alerts: list[Alert] = []
        correlations = self.correlations
        for rule in matched:
            if self.exceptions and self.exceptions.suppresses(rule.rule_id, event):
                continue
            for listener in self.on_match:
                listener(rule.rule_id, event)
            if rule.generate:
                alerts.append(self._alert(rule, event))
            if correlations.wants(rule.rule_id):
                alerts.extend(correlations.observe(rule.rule_id, event))
            if self.new_terms.wants(rule.rule_id):
                alerts.extend(self.new_terms.observe(rule.rule_id, event))
        return alerts or None

    def on_watermark(self, watermark: float) -> list[Alert] | None:
        """Advance the correlation windows; alerts of the windows that closed (``lt``/``eq``/aggregates)."""
        self.new_terms.advance(watermark)
        return self.correlations.advance(watermark) or None

    def snapshot(self) -> dict[str, Any]:
        """The correlation rules' window state (plain data, versioned, keyed by correlation rule id),
        plus the creator record under ``"creators"``."""
        state = self.correlations.snapshot()
        state["creators"] = self.creators.snapshot()
        state["new_terms"] = self.new_terms.snapshot()
        return state

    def restore(self, state: Any) -> None:
        """Load :meth:`snapshot`; state of correlation rules no longer loaded or changed is dropped."""
        self.correlations.restore(state)
        creators = state.get("creators") if isinstance(state, dict) else None
        if creators is not None:
            self.creators.restore(creators)
        new_terms = state.get("new_terms") if isinstance(state, dict) else None
        if new_terms is not None:
            self.new_terms.restore(new_terms)

    def state_keys(self) -> int:
        """Keys held by the correlation windows, ``new_terms`` groups and the creator record."""
        return self.correlations.state_keys() + self.new_terms.state_keys() + len(self.creators)

    def _alert(self, rule: CompiledRule, event: Event) -> Alert:
        content = content_of(rule.rule)
        summary, resources, fields = describe_match(rule.title, content, event)
        return Alert.from_event(
            event,
            detector=self.name,
            title=rule.title,
            severity=self.severity_of(rule),
            summary=summary,
            evidence={
                "event_name": event.event_name,
                "event_source": event.event_source,
                "rule_file": Path(rule.path).name,
                "level": rule.level,
                "description": rule.description,
                "references": list(rule.references),
                "falsepositives": list(rule.falsepositives),
            },
            tags=list(rule.tags),
            rule_id=rule.rule_id,
            runbook=content.runbook,
            resources=resources,
            fields=fields,
        )
