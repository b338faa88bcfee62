"""Assembles a running trailguard from a validated config, and runs it until told to stop.

Start order: state restored → sinks → sources → operator endpoint marks ready.  Stop order is the
reverse, under one deadline shorter than Kubernetes' grace period: sources stop first, the
pipeline drains, sinks flush, state is checkpointed, then the process exits 0.  Signal handlers
only set a flag; a second SIGINT forces an immediate exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import structlog

from daemon import __version__, early_signals
from daemon.components import Built, build_detectors, build_sinks, build_sources
from daemon.config import Config
from daemon.deadletter import REASONS, InvalidReporter
from daemon.delivery.dispatch import DeliveryConfig, Dispatcher
from daemon.delivery.incidents import Incidents, incident_problems, known_detections, rule_incident_specs
from daemon.delivery.sinks.base import Sink
from daemon.gc_pauses import GcPauses
from daemon.http import OperatorServer
from daemon.metrics import Metrics
from daemon.pipeline import Pipeline
from daemon.sources.base import Source
from daemon.state import StateStore
from detectors.base import DetectorContext
from detectors.engine import DetectionEngine
from detectors.event import Event

__all__ = ["Daemon", "ListenError"]

#: Young-generation collections every 50,000 container allocations instead of 700 (older ones
#: every 20 and 10 of those).  Every record is a tree of dicts and lists (~7) plus its Event, and
#: replay and the reorder buffer hold many at once, so at the default thresholds collections ran
#: every few dozen events and cost ~20 % of replay CPU (docs/performance.md, "Pipeline").  What the
#: pipeline frees is freed by reference counting; the larger threshold only delays reclaiming rare
#: reference cycles.
GC_THRESHOLDS: Final = (50_000, 20, 10)


class ListenError(OSError):
    """The operator endpoint cannot bind its port (only this is reported as "cannot listen")."""


def build_enricher(config: Config) -> Any:
    """The enrichment the detectors get (GeoIP, network classification)."""
    from daemon.enrich import EnrichmentConfig
    from daemon.enrich import build_enricher as build

    return build(EnrichmentConfig.model_validate(config.enrichment), base_dir=config.base_dir or None)


def build_incidents(delivery: DeliveryConfig, detectors: Sequence[Any]) -> Incidents:
    """The incident stage for these detectors; ``ValueError`` naming every bad override or rule spec."""
    problems = incident_problems(delivery.incidents, detectors)
    if problems:
        raise ValueError("; ".join(problems))
    specs, _ = rule_incident_specs(detectors)
    return Incidents(delivery.incidents, detections=known_detections(detectors), rule_specs=specs)


class Daemon:
    """One trailguard process: pipeline, operator endpoint, signals."""

    def __init__(
        self,
        config: Config,
        built: Built,
        *,
        metrics: Metrics | None = None,
        sources: Sequence[Source] | None = None,
        sinks: Sequence[Sink] | None = None,
        serve_http: bool = True,
        reorder: bool = False,
        state_dir: str | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.build_info.labels(version=__version__).set(1)
        self.log = structlog.get_logger("trailguard")
        dead_letter = config.pipeline.dead_letter_path
        self.invalid = InvalidReporter(self.metrics, Path(config.resolve_path(dead_letter)) if dead_letter else None)
        context = DetectorContext(
            enricher=build_enricher(config),
            allowed_lateness=config.pipeline.allowed_lateness,
            on_late=lambda detector, n: self.metrics.events_late.labels(detector=detector).inc(n),
            on_evict=lambda detector, n: self.metrics.state_evictions.labels(detector=detector).inc(n),
        )
        self.detectors = build_detectors(built, context)
        self.engine = DetectionEngine(self.detectors, allowed_lateness=config.pipeline.allowed_lateness,
                                      on_error=self._detector_error, on_disabled=self._detector_disabled)
        for detector in self.detectors:  # exported at 0 from start-up, so absence/rate alerts work
            self.metrics.detectors_disabled.labels(detector=detector.name, rule="no")
            if getattr(detector, "budgets_itself", False):
                self.metrics.detectors_disabled.labels(detector=detector.name, rule="yes")
        self.sinks = list(sinks) if sinks is not None else build_sinks(built)
        self.sources = list(sources) if sources is not None else build_sources(built, self.invalid)
        self.metrics.preinitialise(sources=[s.name for s in self.sources], sinks=[s.name for s in self.sinks],
                                   detectors=[d.name for d in self.detectors], invalid_reasons=REASONS)
        state_path = state_dir or (config.resolve_path(config.state.path) if config.state.path else None)
        self.store = StateStore(state_path) if state_path else None
        if self.store is not None:
            self.store.prepare()
        delivery = built.delivery or DeliveryConfig()
        if state_path and delivery.spool_dir is None:
            # Durable by default: the checkpoint acknowledges input once alerts are spooled, so the
            # spool must survive what the checkpoint survives.
            delivery = delivery.model_copy(update={"spool_dir": str(Path(state_path) / "spool")})
        self.incidents = build_incidents(delivery, self.detectors)
        self.gc_pauses = GcPauses(self.metrics)
        self.pipeline = Pipeline(
            sources=self.sources,
            engine=self.engine,
            dispatcher=Dispatcher(self.sinks, self.metrics, routing=built.routing, delivery=delivery),
            invalid=self.invalid,
            metrics=self.metrics,
            config=config.pipeline,
            store=self.store,
            checkpoint_interval=config.state.checkpoint_interval,
            reorder=reorder,
            accounts=built.accounts,
            incidents=self.incidents,
            gc_pauses=self.gc_pauses,
        )
        self.server = (
            OperatorServer(self.metrics, host=config.metrics.host, port=config.metrics.port,
                           health=self._health, ready=self._ready)
            if serve_http and config.metrics.enabled else None
        )
        self.stop_requested = asyncio.Event()
        self._reload_requests: list[asyncio.Task[bool]] = []
        self._first_interrupt: float | None = None
        self.started_at = time.monotonic()
        #: The config file, re-read on SIGHUP for the rules' tuning (``None``: defaults, rules only).
        self.config_path: str | None = None

    def _detector_error(self, detector: str, event: Event | None, error: BaseException) -> None:
        self.metrics.detector_errors.labels(detector=detector).inc()
        self.log.error("detector raised; event skipped for this detector", detector=detector,
                       event_id=event.event_id if event else None, error=type(error).__name__,
                       detail=str(error)[:300], exc_info=error)

    def _detector_disabled(self, detector: str, rule_id: str | None, seconds: float) -> None:
        self.metrics.detectors_disabled.labels(detector=detector, rule="yes" if rule_id else "no").inc()
        what = f"rule {rule_id} of detector {detector}" if rule_id else f"detector {detector}"
        self.log.error(f"{what} disabled: it exceeded the per-event time budget repeatedly; the rest run on",
                       detector=detector, rule_id=rule_id, seconds=round(seconds, 3))

    def _health(self) -> tuple[bool, str]:
        return self.pipeline.healthy(self.config.metrics.stall_after)

    def _ready(self) -> tuple[bool, str]:
        if not self.pipeline.restored:
            return False, "restoring state"
        if not self.pipeline.started:
            return False, "starting"
        if self.pipeline.failed_sources:
            return False, f"sources failed: {', '.join(self.pipeline.failed_sources)}"
        down = [s.name for s in self.sources if not s.ready]
        if down:
            return False, f"sources not connected: {', '.join(down)}"
        partitions = self.pipeline.not_ready_reason()
        if partitions:
            return False, partitions
        if self.stop_requested.is_set():
            return False, "shutting down"
        return True, "ok"

    def request_stop(self, signum: int | None = None) -> None:
        """Signal handler body: set the flag; a second SIGINT forces exit.

        A SIGINT within half a second of the first is the same Ctrl-C delivered twice (to the
        process and again through its process group by a wrapper such as ``timeout``), not a
        second keypress, so it does not force the exit.
        """
        if signum == signal.SIGINT:
            now = time.monotonic()
            if self._first_interrupt is not None and now - self._first_interrupt >= 0.5:
                with contextlib.suppress(Exception):  # stderr may be gone: exit regardless
                    self.log.error("second interrupt: exiting now without draining")
                os._exit(130)
            if self._first_interrupt is not None:
                return
            self._first_interrupt = now
        self.stop_requested.set()  # first: a log write that fails must not lose the request
        with contextlib.suppress(Exception):
            self.log.info("stop requested; draining", signal=signal.Signals(signum).name if signum else None)

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT → :meth:`request_stop`; SIGHUP → rule reload (handlers only schedule work)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signum)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._reload_requests.append(
            loop.create_task(self.reload_rules())))
        if (early := early_signals.pending()) is not None:  # asked to stop while still starting
            self.request_stop(early)

    def log_rule_problems(self) -> None:
        """Rules that could not be loaded are reported one by one; the others run."""
        for detector in self.detectors:
            for issue in getattr(detector, "load_errors", ()):
                self.log.warning("rule not loaded", detector=detector.name, problem=str(issue))

    def _tuning_from_file(self) -> dict[str, Any] | None:
        """The rule detectors' settings re-read from the config file (SIGHUP), or ``None`` (no file,
        or it is refused: logged, and the running rules and tuning stay)."""
        if not self.config_path:
            return None
        from daemon.components import check
        from daemon.config import ConfigError, load_config

        try:
            built = check(load_config(self.config_path), self.config_path)
        except ConfigError as error:
            for problem in error.problems:
                self.log.error("rule reload rejected; the running rule set stays", problem=problem)
            return {}
        return {cls.name: model for cls, model in built.detectors if hasattr(cls, "retune")}

    async def reload_rules(self) -> bool:
        """Reload every rule-based detector atomically (between two batches); keep the old set on error.

        With a config file, its tuning (disabled rules, overrides, exceptions) is re-read and applied
        together with the rules."""
        tuning = await asyncio.to_thread(self._tuning_from_file)
        if tuning == {}:
            return False
        async with self.pipeline.paused():
            ok = True
            for engine in self.pipeline.engines():
                for detector in engine.detectors:
                    reload = getattr(detector, "reload", None)
                    if reload is None:
                        continue
                    settings = (tuning or {}).get(detector.name)
                    problems = detector.retune(settings) if settings is not None else reload()
                    if problems:
                        ok = False
                        for issue in problems:
                            self.log.error("rule reload rejected; the running rule set stays",
                                           detector=detector.name, problem=str(issue))
                        break
                    if engine is self.engine:
                        self.log.info("rules reloaded", detector=detector.name,
                                      rules=len(getattr(detector, "rules", ()) or ()))
                engine.reindex()
                if not ok:
                    break
            for source in self.sources:  # what is forwarded to internal topics follows the new index
                routes = getattr(source, "routes", None)
                if ok and routes is not None:
                    routes.reindex()
        return ok

    async def run(self) -> int:
        """Start everything, wait for a stop request or the end of finite input, then stop."""
        if self.server is not None:
            try:
                await self.server.start()
            except OSError as error:
                raise ListenError(error.errno, error.strerror or str(error)) from error
            self.log.info("operator endpoint listening", host=self.server.host, port=self.server.port)
        self.log_rule_problems()
        # Rules, GeoIP tables and imports are long-lived: keep them out of every future GC pass.
        # No gc.collect() first: a full pass over the start-up heap costs 60-130 ms of start-up CPU
        # to reclaim ~1.7 MB of parse-time cycles (pyparsing frames and tracebacks), which are frozen
        # with the rest instead (docs/performance.md, round 4).
        gc.freeze()
        gc.enable()  # ``trailguard run`` starts with it off (see daemon.cli.cmd_run)
        gc.set_threshold(*GC_THRESHOLDS)
        stop_observing_gc = self.gc_pauses.observe()
        try:
            await self.pipeline.start()
            self.log.info("trailguard started", version=__version__,
                          sources=[s.name for s in self.sources], sinks=[s.name for s in self.sinks],
                          detectors=[d.name for d in self.detectors],
                          state=str(self.store.path) if self.store else "memory only")
            stop = asyncio.create_task(self.stop_requested.wait())
            finished = asyncio.create_task(self.pipeline.finished.wait())
            await asyncio.wait({stop, finished}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            finished.cancel()
            await self.pipeline.stop(self.config.shutdown.deadline)
        finally:
            stop_observing_gc()
            self.invalid.close()
            if self.server is not None:
                await self.server.stop()
        return 0
