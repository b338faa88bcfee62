"""Runs the enabled detectors over events, testing each event only against candidate detectors.

Detectors declare the eventNames/eventSources they need; the engine indexes them so that the cost
per event depends on how many detectors *could* match, not on how many are loaded.  A detector
that declares ``index_case_insensitive`` (the Sigma detector: Sigma matching ignores case) is
looked up by the lowercased eventName/eventSource, so its index never hides an event its rules
would match.  The engine
also owns the watermark (max event time seen minus the allowed lateness), which drives expiry.
An event matching one of a detector's ``exceptions`` (:mod:`detectors.exceptions`) is not fed to
that detector.  A detector that raises is isolated: the error is reported through a hook and the others go on.
The engine also keeps the identity lineage (:mod:`detectors.lineage`): fed by the STS events only,
it fills ``identity_chain``/``origin_principal`` on the alerts when the watermark advances.

Time budget: a detector that takes longer than ``detector_budget`` seconds on one event, on
``STRIKES`` of the events timed (one in ``TIMING_SAMPLE``), is disabled — dropped from the index —
and reported through ``on_disabled``; the others run on.  A detector that budgets its own parts
(``budgets_itself``: the Sigma detector disables single rules) is not disabled whole; the rules it
disabled are collected after each batch and reported through the same hook.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from time import perf_counter

from detectors.alert import Alert
from detectors.base import Detector
from detectors.event import Event
from detectors.exceptions import DetectorExceptions
from detectors.lineage import LINEAGE_EVENTS, IdentityLineage

__all__ = ["TIMING_SAMPLE", "DetectionEngine"]

#: One event in this many (a power of two) is timed per detector.
TIMING_SAMPLE = 16
#: Over-budget timed events after which a detector is disabled.
STRIKES = 3


def _folds(detector: Detector) -> bool:
    """True for a detector whose index names/sources match case-insensitively (Sigma rules)."""
    return bool(getattr(detector, "index_case_insensitive", False))


def _ignore_error(_detector: str, _event: Event | None, _error: BaseException) -> None:
    return None


def _ignore_disabled(_detector: str, _rule_id: str | None, _seconds: float) -> None:
    return None


class DetectionEngine:
    """Dispatches events to detectors through an eventName/eventSource index."""

    def __init__(
        self,
        detectors: Sequence[Detector],
        *,
        allowed_lateness: float = 900.0,
        on_error: Callable[[str, Event | None, BaseException], None] = _ignore_error,
        detector_budget: float = 1.0,
        on_disabled: Callable[[str, str | None, float], None] = _ignore_disabled,
    ) -> None:
        self.detectors = list(detectors)
        self.allowed_lateness = allowed_lateness
        self.on_error = on_error
        #: Seconds one detector may take on one event (see the module docstring).
        self.detector_budget = detector_budget
        #: ``on_disabled(detector, rule_id or None, seconds)``: a detector (or one of its rules) was disabled.
        self.on_disabled = on_disabled
        self._strikes: dict[str, int] = {}
        #: Names of the detectors the time budget disabled.
        self.disabled: set[str] = set()
        self.max_event_time = float("-inf")
        #: Role-session chains seen in the stream, for the alerts' ``identity_chain``.
        self.lineage = IdentityLineage(max_keys=max((d.context.max_keys for d in self.detectors), default=100_000))
        self._tick = 0
        #: Seconds spent per detector since the last :meth:`take_timings`.
        self._seconds: dict[str, float] = {d.name: 0.0 for d in self.detectors}
        self.reindex()

    def reindex(self) -> None:
        """(Re)build the eventName/eventSource index, e.g. after a detector reloaded its rules."""
        by_name: dict[str, list[Detector]] = {}
        by_source: dict[str, list[Detector]] = {}
        #: Detectors that match names/sources case-insensitively (Sigma), keyed lowercased.
        folded_name: dict[str, list[Detector]] = {}
        folded_source: dict[str, list[Detector]] = {}
        always: list[Detector] = []
        for detector in self.detectors:
            if detector.name in self.disabled:
                continue
            names, sources = detector.index_names(), detector.index_sources()
            fold = _folds(detector)
            if names is not None:
                for name in names:
                    (folded_name if fold else by_name).setdefault(name.lower() if fold else name, []).append(detector)
            elif sources is not None:
                for source in sources:
                    (folded_source if fold else by_source).setdefault(
                        source.lower() if fold else source, []).append(detector)
            else:
                always.append(detector)
        self._by_name, self._by_source, self._always = by_name, by_source, always
        self._folded_name, self._folded_source = folded_name, folded_source
        self._candidates_cache: dict[tuple[str, str], tuple[Detector, ...]] = {}
        #: Per (eventSource, eventName): each candidate with its exceptions, ``None`` when it has none
        #: (a detector's exceptions are fixed at construction, and the cache is rebuilt here).
        self._plans: dict[tuple[str, str], tuple[tuple[Detector, DetectorExceptions | None], ...]] = {}

    @property
    def watermark(self) -> float:
        """Event time before which windows are considered complete (−inf before any event)."""
        return self.max_event_time - self.allowed_lateness

    def candidates(self, event: Event) -> tuple[Detector, ...]:
        """The detectors that may match ``event`` (cached per (eventSource, eventName))."""
        key = (event.event_source, event.event_name)
        found = self._candidates_cache.get(key)
        if found is None:
            chosen: list[Detector] = []
            for detector in self._by_name.get(event.event_name, ()):
                sources = detector.index_sources()
                if sources is None or event.event_source in sources:
                    chosen.append(detector)
            chosen.extend(self._by_source.get(event.event_source, ()))
            source = event.event_source.lower()
            for detector in self._folded_name.get(event.event_name.lower(), ()):
                sources = detector.index_sources()
                if sources is None or source in {each.lower() for each in sources}:
                    chosen.append(detector)
            chosen.extend(self._folded_source.get(source, ()))
            chosen.extend(self._always)
            # keep registration order so output order is deterministic
            order = {id(d): i for i, d in enumerate(self.detectors)}
            found = tuple(sorted(chosen, key=lambda d: order[id(d)]))
            if len(self._candidates_cache) < 65536:
                self._candidates_cache[key] = found
        return found

    def _plan(self, event: Event) -> tuple[tuple[Detector, DetectorExceptions | None], ...]:
        """:meth:`candidates` paired with their exceptions (cached like them)."""
        plan = tuple((detector, detector.event_exceptions if detector.event_exceptions else None)
                     for detector in self.candidates(event))
        if len(self._plans) < 65536:
            self._plans[event.event_source, event.event_name] = plan
        return plan

    def process(self, event: Event, out: list[Alert]) -> None:
        """Run the candidate detectors on one event, appending their alerts to ``out``.

        Time per detector is measured on one event in ``TIMING_SAMPLE`` (and scaled up), so the
        ``trailguard_detector_seconds`` metric costs two clock reads per 16 events, not per event.
        """
        if event.time > self.max_event_time:
            self.max_event_time = event.time
        if event.event_name in LINEAGE_EVENTS:
            self.lineage.observe(event)
        self._tick += 1
        plan = self._plans.get((event.event_source, event.event_name))
        if plan is None:
            plan = self._plan(event)
        if self._tick & (TIMING_SAMPLE - 1):
            for detector, exceptions in plan:
                if exceptions is not None and exceptions.excepts(event):
                    continue
                try:
                    produced = detector.on_event(event)
                    if produced:
                        out.extend(produced)
                except Exception as error:  # a broken detector must not take the daemon down
                    self.on_error(detector.name, event, error)
            return
        seconds = self._seconds
        for detector, exceptions in plan:
            if exceptions is not None and exceptions.excepts(event):
                continue
            started = perf_counter()
            try:
                produced = detector.on_event(event)
                if produced:
                    out.extend(produced)
            except Exception as error:
                self.on_error(detector.name, event, error)
            took = perf_counter() - started
            seconds[detector.name] += took * TIMING_SAMPLE
            if took > self.detector_budget:
                self._over_budget(detector, took)

    def _over_budget(self, detector: Detector, took: float) -> None:
        if getattr(detector, "budgets_itself", False):
            return
        strikes = self._strikes.get(detector.name, 0) + 1
        self._strikes[detector.name] = strikes
        if strikes >= STRIKES and detector.name not in self.disabled:
            self.disabled.add(detector.name)
            self.reindex()
            self.on_disabled(detector.name, None, took)

    def process_many(self, events: Iterable[Event]) -> list[Alert]:
        """Run :meth:`process` over ``events`` and then advance the watermark once."""
        out: list[Alert] = []
        for event in events:
            self.process(event, out)
        self.advance(out)
        return out

    def advance(self, out: list[Alert]) -> None:
        """Tell every detector the current watermark (expiry, time-completed alerts); annotate ``out``."""
        for detector in self.detectors:
            take = getattr(detector, "take_disabled", None)
            if take is not None:
                for rule_id, seconds in take():
                    self.on_disabled(detector.name, rule_id, seconds)
        watermark = self.watermark
        if watermark == float("-inf"):
            self.lineage.annotate(out)
            return
        self.lineage.advance(watermark)
        for detector in self.detectors:
            try:
                produced = detector.on_watermark(watermark)
                if produced:
                    out.extend(produced)
            except Exception as error:
                self.on_error(detector.name, None, error)
        self.lineage.annotate(out)

    def take_timings(self) -> dict[str, float]:
        """Return and reset the per-detector seconds accumulated since the last call."""
        taken = self._seconds
        self._seconds = {name: 0.0 for name in taken}
        return taken

    def snapshot(self) -> dict[str, object]:
        """Every detector's state plus the engine's clock, as plain data."""
        return {
            "max_event_time": self.max_event_time if self.max_event_time != float("-inf") else None,
            "detectors": {d.name: d.snapshot() for d in self.detectors},
            "lineage": self.lineage.snapshot(),
        }

    def restore(self, state: dict[str, object]) -> None:
        """Load what :meth:`snapshot` wrote; detectors absent from it start empty."""
        max_time = state.get("max_event_time")
        if isinstance(max_time, (int, float)):
            self.max_event_time = float(max_time)
        lineage = state.get("lineage")
        if lineage is not None:
            try:
                self.lineage.restore(lineage)
            except ValueError as error:  # lineage is a help, not detection state: start it empty
                self.on_error("identity_lineage", None, error)
        saved = state.get("detectors")
        if isinstance(saved, dict):
            for detector in self.detectors:
                if detector.name in saved and saved[detector.name] is not None:
                    detector.restore(saved[detector.name])
