"""The detector interface: what the engine calls, and what a detector may rely on.

A detector is pure: it takes events (already validated, with their event time parsed) and its own
keyed state, and returns alerts.  It never does I/O, never reads the wall clock, and never sees a
source or a sink.  The daemon owns time (it passes the watermark), persistence (it asks for
``snapshot``/``restore``) and enrichment (handed in through :class:`DetectorContext`).

Adding a detector is one file with a subclass of :class:`Detector` plus one line in
``detectors/registry.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from detectors.alert import Alert
from detectors.event import Event
from detectors.exceptions import NO_EXCEPTIONS, DetectorException, DetectorExceptions, compile_exceptions

__all__ = ["STATE_KEYS", "Detector", "DetectorConfig", "DetectorContext", "Enricher", "GeoInfo", "StateKey"]

#: What a detector's state is keyed by, i.e. which events must meet on one engine for it to be right:
#: every event of one account, of one principal (``Event.principal``), of one source IP, or of the
#: whole organisation.  The daemon routes events so each detector sees all events of its key
#: (:mod:`daemon.repartition`); ``None`` is a stateless detector (each event judged where it arrives).
StateKey = Literal["account", "principal", "source_ip", "organisation"]
STATE_KEYS: tuple[StateKey, ...] = ("account", "principal", "source_ip", "organisation")


class DetectorConfig(BaseModel):
    """Base of every detector's settings: strict (unknown keys are errors) and immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    #: Override the detector's own severity (``info|low|medium|high|critical``).
    severity: Literal["info", "low", "medium", "high", "critical"] | None = None
    #: Events this detector must not see: ``match`` (Sigma selection), ``comment``, ``expires``
    #: (:mod:`detectors.exceptions`; applied by the engine, so every detector has them).
    exceptions: tuple[DetectorException, ...] = ()

    def legacy_exceptions(self) -> list[Callable[[Event], bool]]:
        """Predicates for a config's deprecated allowlist keys (``ignore_principals``, …): an event
        a predicate accepts is excepted exactly like one matching ``exceptions``."""
        return []


@dataclass(frozen=True, slots=True)
class GeoInfo:
    """Where an IP address is, as far as the offline database knows."""

    latitude: float
    longitude: float
    country: str = ""
    city: str = ""
    accuracy_km: float = 0.0
    asn: int | None = None
    as_org: str = ""


class Enricher(Protocol):
    """Offline enrichment the daemon hands to detectors (GeoIP, network classification)."""

    def geo(self, ip: str) -> GeoInfo | None:
        """Location of ``ip`` or ``None`` when unknown."""
        ...

    def network_kind(self, ip: str | None) -> str:
        """``public``, ``private``, ``service``, ``aws`` (AWS's published ranges) or ``missing``."""
        ...


class _NoEnrichment:
    def geo(self, ip: str) -> GeoInfo | None:
        return None

    def network_kind(self, ip: str | None) -> str:
        from detectors.event import classify_source_ip

        return classify_source_ip(ip)


def _ignore(_detector: str, _count: int = 1) -> None:
    return None


@dataclass(slots=True)
class DetectorContext:
    """What the daemon gives every detector: enrichment, settings shared by all, and telemetry hooks.

    The hooks are plain callables so that ``detectors/`` stays free of any metrics library.
    """

    enricher: Enricher = field(default_factory=_NoEnrichment)
    allowed_lateness: float = 900.0
    max_keys: int = 100_000
    on_late: Callable[[str, int], None] = _ignore
    on_evict: Callable[[str, int], None] = _ignore


class Detector:
    """Base class.  Subclasses set ``name``, ``Config`` and, when they can, the index hints.

    ``event_names``/``event_sources``: when set, the engine only hands the detector events whose
    ``eventName`` (or ``eventSource``) is in the set, so per-event cost does not grow with the
    number of detectors.  ``None`` means "every event".
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[DetectorConfig]] = DetectorConfig
    event_names: ClassVar[frozenset[str] | None] = None
    event_sources: ClassVar[frozenset[str] | None] = None
    #: Default severity of this detector's alerts (config ``severity`` overrides it).
    severity: ClassVar[str] = "medium"
    tags: ClassVar[tuple[str, ...]] = ()
    runbook: ClassVar[str | None] = None
    #: False for a detector that applies its config's ``exceptions`` itself (Sigma: per rule).
    shared_exceptions: ClassVar[bool] = True
    #: The compiled ``exceptions`` (plus deprecated allowlist keys) the engine applies before ``on_event``.
    event_exceptions: DetectorExceptions = NO_EXCEPTIONS
    #: The key this detector's state needs (see :data:`StateKey`); ``account`` unless declared, as
    #: detectors written before keys were declared assumed.  ``None``: stateless.
    state_key: ClassVar[StateKey | None] = "account"
    #: True for a detector whose clock must be the whole organisation's event time, not its
    #: partition's (``cloudtrail_silence``: absence is measured against everyone else's progress).
    #: On Kafka it then runs on an internal partition, whose watermark is merged from every input
    #: partition, even when its key is the input's key.
    organisation_clock: ClassVar[bool] = False

    def __init__(self, config: DetectorConfig, context: DetectorContext | None = None) -> None:
        self.config = config
        self.context = context if context is not None else DetectorContext()
        self.event_exceptions = compile_exceptions(config) if self.shared_exceptions else NO_EXCEPTIONS

    @property
    def effective_severity(self) -> str:
        """The configured severity override, or the detector's default."""
        return self.config.severity or self.severity

    def fork(self) -> Detector:
        """A twin with the same configuration and empty state (one per Kafka partition).

        Detectors holding expensive immutable data (compiled rules) override this to share it.
        """
        return type(self)(self.config, self.context)

    def required_key(self) -> StateKey | None:
        """The key this instance's state needs (may depend on config or rules); the class's ``state_key``."""
        return self.state_key

    def index_names(self) -> frozenset[str] | None:
        """Event names this instance needs (may depend on config); defaults to the class hint."""
        return self.event_names

    def index_sources(self) -> frozenset[str] | None:
        """Event sources this instance needs; defaults to the class hint."""
        return self.event_sources

    def on_event(self, event: Event) -> Iterable[Alert] | None:
        """Inspect one event; return the alerts it completes (or ``None``)."""
        raise NotImplementedError

    def on_watermark(self, watermark: float) -> Iterable[Alert] | None:
        """The watermark advanced: expire state older than it; emit alerts that time completes."""
        return None

    def snapshot(self) -> Any:
        """All state needed to resume, as plain data (dict/list/str/int/float/bytes).  Stateless: None."""
        return None

    def restore(self, state: Any) -> None:
        """Load what :meth:`snapshot` returned (possibly from an older trailguard)."""
        return None

    def state_keys(self) -> int:
        """How many keys this detector tracks now (exported as ``trailguard_state_keys``)."""
        return 0
