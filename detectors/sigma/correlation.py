"""The Sigma correlation engine: runs correlation rules on the matches of the detection rules.

Why it exists: single-event rules cannot say "20 failed logins for one user in 5 minutes" or "a new
IAM user, then an admin policy attached to it, within 10 minutes".  Sigma correlation rules can;
this module runs them on the shared event-time window engine (:mod:`detectors.windows`), so they
get the same lateness, bounded memory, throttling and checkpointing as every stateful detector.

How it is fed: :class:`~detectors.sigma.detector.SigmaDetector` hands every unsuppressed rule match
to :meth:`CorrelationSet.observe` (rule id, event); each correlation that references the rule adds
the event under its group key — the ``group-by`` fields read with the dotted accessor, aliases
resolved per referenced rule.  An event lacking a group-by field (or the measured field) is not
counted, as in SIEM ``by`` clauses.  How each type maps onto a window primitive, and what is
unsupported, is in :mod:`detectors.sigma.correlation_plan`.  When a correlation fires, its firing
feeds the correlations that reference it (chaining) as an event at the firing time whose fields
are its group-by values and whose id is its alert id.

Alerts: detector ``sigma``, ``rule_id`` the correlation's id, severity from its ``level`` (with the
detector's overrides), one per group per timespan (the next one carries the suppressed count).
Entity is ``<rule id>|<group>``, event ids the events in the firing window (bounded), so alert ids
are deterministic.  A correlation referenced with ``generate: false`` by another fires (and chains)
without alerting.

State: :meth:`CorrelationSet.snapshot` is versioned plain data keyed by correlation rule id, each
entry stamped with the rule's fingerprint; :meth:`CorrelationSet.restore` and
:meth:`CorrelationSet.adopt` (rule reload) keep the state of rules whose windowing is unchanged and
drop the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from detectors.alert import Alert
from detectors.event import MAX_KEY_CHARS, Event, bounded_key, format_time
from detectors.sigma.correlation_closing import ClosingWindows
from detectors.sigma.correlation_evidence import EvidenceLog
from detectors.sigma.correlation_plan import Input, Plan, compare
from detectors.sigma.values import as_number
from detectors.summary_template import render_summary
from detectors.windows import CountWindow, DistinctCountWindow, SequenceWindow

__all__ = ["SNAPSHOT_VERSION", "CorrelationSet", "Firing"]

#: Version of :meth:`CorrelationSet.snapshot`'s layout.
SNAPSHOT_VERSION: Final = 1
DETECTOR: Final = "sigma"

Reader = Callable[[str], Any]
SeverityOf = Callable[[str, str | None], str]


def _ignore(_n: int) -> None:
    return None


def _hashable(value: Any) -> Hashable:
    """A field value usable in a key and in a snapshot: scalars as they are, the rest as JSON text.

    Strings (and JSON text) longer than ``MAX_KEY_CHARS`` become a prefix plus a hash
    (:func:`~detectors.event.bounded_key`): group-by and ``value_count`` values come from arbitrary
    event fields, so a 300 KB userAgent must not be held (or snapshotted) whole.
    """
    if value is None or isinstance(value, (int, float, bool)):
        return value
    if not isinstance(value, str):
        value = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return value if len(value) <= MAX_KEY_CHARS else bounded_key(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        number = as_number(value)  # number text only: not " 22", "+22", "2_2", "-inf", "nan"
        return float(number) if number is not None else None
    return None


@dataclass(frozen=True, slots=True)
class Firing:
    """A correlation's condition was met for ``key`` over ``[start, end]``."""

    key: tuple[Hashable, ...]
    start: float
    end: float
    event_ids: tuple[str, ...]
    #: What was measured: count, distinct values, sequence, aggregate value.
    detail: dict[str, Any]
    suppressed: int
    #: The event that completed it (``None`` when a window closed).
    event: Event | None
    #: The condition held again inside the throttle period: only this event, for the incident's totals.
    continues: bool = False


class _Runtime:
    """One correlation rule's plan and the window primitive it runs on."""

    __slots__ = ("evidence", "max_evidence", "plan", "window")

    def __init__(
        self,
        plan: Plan,
        *,
        max_keys: int,
        max_evidence: int,
        on_late: Callable[[int], None],
        on_evict: Callable[[int], None],
    ) -> None:
        self.plan = plan
        self.max_evidence = max_evidence
        self.evidence: EvidenceLog | None = None
        common: dict[str, Any] = {"max_keys": max_keys, "on_late": on_late, "on_evict": on_evict,
                                  "throttle": plan.timespan, "max_evidence": max_evidence}
        self.window: CountWindow | DistinctCountWindow | SequenceWindow | ClosingWindows
        if plan.strategy == "count":
            self.window = CountWindow(plan.timespan, plan.threshold, max_events=max(1000, plan.threshold), **common)
        elif plan.strategy == "distinct":
            self.window = DistinctCountWindow(plan.timespan, plan.threshold, **common)
            self.evidence = EvidenceLog(plan.timespan, max_keys=max_keys)
        elif plan.strategy == "sequence":
            self.window = SequenceWindow([i.rule_id for i in plan.inputs], plan.timespan, ordered=plan.ordered,
                                         **common)
        else:
            self.window = ClosingWindows(
                plan.timespan, plan.aggregate, percentile=plan.percentile, max_keys=max_keys,
                max_values=max(1000, int(plan.count) + 2) if plan.aggregate == "distinct" else 10_000,
                max_evidence=max_evidence, on_late=on_late, on_evict=on_evict,
            )

    def _measured(self, inp: Input, read: Reader) -> Hashable:
        if self.plan.kind in ("temporal", "temporal_ordered"):
            return inp.rule_id
        if inp.value_field is None:
            return True
        if self.plan.aggregate == "distinct":
            return _hashable(read(inp.value_field))
        return _number(read(inp.value_field))

    def add(self, inp: Input, time: float, event_id: str | None, read: Reader, event: Event | None) -> Firing | None:
        """Add one match of ``inp``'s rule; return the firing it completes, if any."""
        key = tuple(_hashable(read(field)) for field in inp.group_fields)
        if None in key:
            return None
        window = self.window
        held = getattr(window, "held", 0)
        firing = self._add(window, key, inp, time, event_id, read, event)
        if firing is None and getattr(window, "held", 0) != held:  # met again, held back by the throttle
            return Firing(key, time, time, (event_id,) if event_id else (), {}, 0, event, continues=True)
        return firing

    def _add(self, window: Any, key: tuple[Hashable, ...], inp: Input, time: float, event_id: str | None,
             read: Reader, event: Event | None) -> Firing | None:
        if isinstance(window, CountWindow):
            report = window.add(key, time, event_id)
            if report is None:
                return None
            return Firing(key, report.start, report.end, report.event_ids, {"count": report.count},
                          report.suppressed, event)
        value = self._measured(inp, read)
        if value is None:
            return None
        if isinstance(window, ClosingWindows):
            window.add(key, time, event_id, value)
            return None
        if isinstance(window, SequenceWindow):
            seq = window.add(key, time, inp.rule_id, event_id)
            if seq is None:
                return None
            steps = [{"rule_id": step, "time": format_time(t), "event_id": i}
                     for step, t, i in zip(seq.steps, seq.times, seq.event_ids, strict=True)]
            ids = tuple(i for i in seq.event_ids if i is not None)
            return Firing(key, seq.start, seq.end, ids, {"count": len(steps), "sequence": steps}, seq.suppressed,
                          event)
        assert self.evidence is not None
        self.evidence.add(key, time, event_id)
        distinct = window.add(key, time, value, event_id)
        if distinct is None:
            return None
        ids = self.evidence.ids(key, distinct.start, distinct.end, self.max_evidence)
        detail = {"count": distinct.count, "values": list(distinct.values)}
        return Firing(key, distinct.start, distinct.end, ids, detail, distinct.suppressed, event)

    def advance(self, watermark: float) -> list[Firing]:
        """Advance the window; closing windows return the firings the watermark completed."""
        if self.evidence is not None:
            self.evidence.advance(watermark)
        window = self.window
        if not isinstance(window, ClosingWindows):
            window.advance(watermark)
            return []
        plan = self.plan
        firings = []
        for closed in window.advance(watermark):
            if not compare(plan.op, closed.value, plan.count):
                continue
            detail: dict[str, Any] = {"count": closed.count}
            if plan.aggregate == "distinct":
                detail["distinct"] = int(closed.value)
                detail["values"] = list(closed.values)
            elif plan.aggregate != "count":
                detail["value"] = closed.value
            firings.append(Firing(closed.key, closed.start, closed.end, closed.event_ids, detail, 0,  # type: ignore[arg-type]
                                  None))
        return firings

    def snapshot(self) -> dict[str, Any]:
        return {
            "fingerprint": self.plan.fingerprint,
            "window": self.window.snapshot(),
            "evidence": None if self.evidence is None else self.evidence.snapshot(),
        }

    def restore(self, data: dict[str, Any]) -> None:
        self.window.restore(data["window"])
        if self.evidence is not None and data.get("evidence") is not None:
            self.evidence.restore(data["evidence"])

    def state_keys(self) -> int:
        return len(self.window)


def _count_of(detail: dict[str, Any]) -> int:
    """Events a firing stands for, when its detail counts them (count, distinct, sequence)."""
    count = detail.get("count")
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


def _group_text(plan: Plan, key: tuple[Hashable, ...]) -> str:
    if not plan.group_by:
        return "*"
    return ",".join(f"{name}={value}" for name, value in zip(plan.group_by, key, strict=True))


def _what(plan: Plan, firing: Firing) -> str:
    detail = firing.detail
    if plan.strategy == "sequence":
        arrow = " -> ".join(step["rule_id"] for step in detail["sequence"])
        return f"{arrow} within {plan.timespan_spec}"
    if plan.strategy == "count":
        return f"{detail['count']} events within {plan.timespan_spec}"
    if plan.strategy == "distinct":
        measured = "rules" if plan.kind == "temporal" else f"distinct {plan.inputs[0].value_field}"
        return f"{detail['count']} {measured} within {plan.timespan_spec}"
    measured = detail.get("distinct", detail.get("value", detail["count"]))
    return f"{plan.kind} {measured} ({plan.op} {plan.count:g}) in the {plan.timespan_spec} window"


class CorrelationSet:
    """The loaded correlation rules, fed with rule matches; produces correlation alerts."""

    def __init__(
        self,
        plans: Iterable[Plan] = (),
        *,
        severity_of: SeverityOf,
        max_keys: int = 100_000,
        max_evidence: int = 10,
        on_late: Callable[[int], None] = _ignore,
        on_evict: Callable[[int], None] = _ignore,
    ) -> None:
        self.severity_of = severity_of
        self._settings: dict[str, Any] = {"max_keys": max_keys, "max_evidence": max_evidence,
                                          "on_late": on_late, "on_evict": on_evict}
        #: Runtimes in dependency order (a correlation after those it references).
        self._runtimes: dict[str, _Runtime] = {plan.rule_id: _Runtime(plan, **self._settings) for plan in plans}
        self._by_input: dict[str, list[tuple[_Runtime, Input]]] = {}
        self._rewire()

    def __len__(self) -> int:
        return len(self._runtimes)

    @property
    def plans(self) -> tuple[Plan, ...]:
        """The running correlation plans, inner ones first."""
        return tuple(runtime.plan for runtime in self._runtimes.values())

    def wants(self, rule_id: str) -> bool:
        """True when some correlation references ``rule_id``."""
        return rule_id in self._by_input

    def observe(self, rule_id: str, event: Event) -> list[Alert]:
        """Feed one match of detection rule ``rule_id``; return the correlation alerts it completes."""
        targets = self._by_input.get(rule_id)
        if not targets:
            return []
        out: list[Alert] = []
        for runtime, inp in targets:
            firing = runtime.add(inp, event.time, event.event_id, event.get, event)
            if firing is not None:
                self._emit(runtime.plan, firing, out)
        return out

    def advance(self, watermark: float) -> list[Alert]:
        """Advance every window to ``watermark``; return alerts of windows it closed."""
        out: list[Alert] = []
        for runtime in self._runtimes.values():
            for firing in runtime.advance(watermark):
                self._emit(runtime.plan, firing, out)
        return out

    def _emit(self, plan: Plan, firing: Firing, out: list[Alert]) -> None:
        if firing.continues:  # folded into the open incident of the alert it continues; chains nothing
            if plan.generate:
                out.append(self._continuation(plan, firing))
            return
        alert = self._alert(plan, firing)
        if plan.generate:
            out.append(alert)
        dependents = self._by_input.get(plan.rule_id)
        if not dependents:
            return
        fields = dict(zip(plan.group_by, firing.key, strict=True))
        for runtime, inp in dependents:
            chained = runtime.add(inp, firing.end, alert.id, fields.get, firing.event)
            if chained is not None:
                self._emit(runtime.plan, chained, out)

    def _continuation(self, plan: Plan, firing: Firing) -> Alert:
        group_text = _group_text(plan, firing.key)
        return self._alert_of(
            plan, firing, group_text,
            summary=f"Sigma correlation '{plan.title}' still met for {group_text} (one more matching event).",
            evidence={"correlation_type": plan.kind, "group_by": dict(zip(plan.group_by, firing.key, strict=True)),
                      "continues": True},
            event_total=1,
            continues=True,
        )

    def _alert_of(self, plan: Plan, firing: Firing, group_text: str, *, summary: str, evidence: dict[str, Any],
                  event_total: int, continues: bool = False) -> Alert:
        """The alert of a firing: who and where from its last event, the rule's identity and tags."""
        event = firing.event
        ip = event.source_ip if event is not None else None
        return Alert(
            detector=DETECTOR,
            title=plan.title,
            severity=self.severity_of(plan.rule_id, plan.level),
            time=firing.end,
            summary=summary,
            runbook=plan.runbook,
            account_id=event.account_id if event is not None else "",
            region=event.region if event is not None else "",
            principal=event.principal if event is not None else "",
            source_ips=[ip] if ip else [],
            event_ids=list(firing.event_ids),
            evidence=evidence,
            tags=list(plan.tags),
            rule_id=plan.rule_id,
            entity=f"{plan.rule_id}|{group_text}",
            event_total=event_total,
            continues=continues,
        )

    def _alert(self, plan: Plan, firing: Firing) -> Alert:
        group = dict(zip(plan.group_by, firing.key, strict=True))
        group_text = _group_text(plan, firing.key)
        evidence: dict[str, Any] = {
            "correlation_type": plan.kind,
            "group_by": group,
            "timespan": plan.timespan_spec,
            "condition": plan.condition,
            "window_start": format_time(firing.start),
            "window_end": format_time(firing.end),
            **firing.detail,
            "rules": [inp.rule_id for inp in plan.inputs],
            "suppressed": firing.suppressed,
            "rule_file": Path(plan.path).name,
            "level": plan.level,
            "description": plan.description,
            "references": list(plan.references),
            "falsepositives": list(plan.falsepositives),
        }
        event = firing.event
        what = _what(plan, firing)
        if plan.summary_template is not None and event is not None:  # the rule's own words, on its last event
            summary = f"{render_summary(plan.summary_template, event)} ({what})"
        else:
            summary = f"Sigma correlation '{plan.title}' met for {group_text}: {what}"
        return self._alert_of(plan, firing, group_text, summary=summary, evidence=evidence,
                              event_total=max(len(firing.event_ids), _count_of(firing.detail)))

    # -- state -----------------------------------------------------------------------------------
    def state_keys(self) -> int:
        """Keys held by all correlation windows."""
        return sum(runtime.state_keys() for runtime in self._runtimes.values())

    def snapshot(self) -> dict[str, Any]:
        """All correlation state as versioned plain data, keyed by correlation rule id."""
        return {
            "version": SNAPSHOT_VERSION,
            "correlations": {rule_id: runtime.snapshot() for rule_id, runtime in self._runtimes.items()},
        }

    def restore(self, data: Any) -> list[str]:
        """Replace all state with a :meth:`snapshot`; return the ids whose saved state was dropped.

        Saved state is dropped for rules no longer loaded and for rules whose windowing changed
        (fingerprint differs); those rules, and rules absent from ``data``, start empty.
        ``ValueError`` for a snapshot that is not one of ours or is newer.
        """
        if not isinstance(data, dict) or not isinstance(data.get("version"), int):
            raise ValueError("correlation snapshot must be a mapping with an integer 'version'")
        if data["version"] > SNAPSHOT_VERSION:
            raise ValueError(f"correlation snapshot has format version {data['version']}, newer than "
                             f"the supported {SNAPSHOT_VERSION}: it was written by a newer trailguard")
        saved = data.get("correlations") or {}
        dropped = [rule_id for rule_id in saved if rule_id not in self._runtimes]
        for rule_id, runtime in list(self._runtimes.items()):
            fresh = _Runtime(runtime.plan, **self._settings)
            self._runtimes[rule_id] = fresh
            entry = saved.get(rule_id)
            if entry is None:
                continue
            if entry.get("fingerprint") != runtime.plan.fingerprint:
                dropped.append(rule_id)
                continue
            fresh.restore(entry)
        self._rewire()
        return dropped

    def adopt(self, previous: CorrelationSet) -> list[str]:
        """Take over the live state of ``previous`` (before a reload) for rules whose windowing is unchanged.

        Returns the ids of the correlations that start empty (new or changed rules).
        """
        fresh: list[str] = []
        for rule_id, runtime in self._runtimes.items():
            old = previous._runtimes.get(rule_id)
            if old is None or old.plan.fingerprint != runtime.plan.fingerprint:
                fresh.append(rule_id)
                continue
            runtime.window, runtime.evidence = old.window, old.evidence
        return fresh

    def _rewire(self) -> None:
        self._by_input = {}
        for runtime in self._runtimes.values():
            for inp in runtime.plan.inputs:
                self._by_input.setdefault(inp.rule_id, []).append((runtime, inp))
