"""The routing decision: which detectors run on the input partitions and which on internal topics.

A detector runs where the events of its key meet.  On the input partitions that is every
stateless detector (``state_key = None``: each event judged once, where it arrives) and every
detector whose key is the key the producer partitions by (``input_key``).  Every other detector,
with ``repartition: auto``, runs on the partitions of ``<group_id>-<topic>-repartition-<key>``
(so does a detector whose clock must be the organisation's, ``organisation_clock``, whatever its
key: only internal partitions have the merged watermark),
fed only the events its eventName/eventSource index admits (the same index the engine uses, so
nothing it could match is held back, and a ConsoleLogin-only detector costs ConsoleLogin traffic
only).  With ``repartition: off`` (or a ``topic_pattern`` source, whose topics are not known up
front) every detector runs on the input partitions and those whose key differs are listed in
:attr:`Routes.unrouted` so the daemon can say at start which ones see only part of their key.

Internal topics have the input topic's partition count, except the organisation's: one key, one
partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from detectors.base import STATE_KEYS, Detector, StateKey
from detectors.engine import DetectionEngine
from detectors.event import Event

__all__ = ["InputKey", "Routes", "plan_routes", "repartition_topic"]

#: How the producer keys the input topic: by account (``trailguard relay`` does), by principal, or
#: not at all (round-robin, or a key trailguard does not know).
InputKey = Literal["account", "principal", "none"]


def repartition_topic(group_id: str, topic: str, key: StateKey) -> str:
    """The internal topic carrying ``topic``'s events re-keyed by ``key`` for group ``group_id``."""
    return f"{group_id}-{topic}-repartition-{key}"


@dataclass(slots=True)
class Routes:
    """Where each detector runs, and what is forwarded to which internal topic."""

    group_id: str
    input_key: StateKey | None
    #: Input topics (those named in the config).
    inputs: tuple[str, ...]
    #: Detectors run on input partitions.
    local: frozenset[str]
    #: Key → detectors run on that key's internal partitions.
    remote: dict[StateKey, frozenset[str]]
    #: Detectors whose key differs from the input key but run on input partitions (repartition off).
    unrouted: dict[str, StateKey] = field(default_factory=dict)
    #: Key → an engine over that key's detectors, used only for its eventName/eventSource index.
    _filters: dict[StateKey, DetectionEngine] = field(default_factory=dict)
    #: Internal topic → (input topic, key).
    _internal: dict[str, tuple[str, StateKey]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for topic in self.inputs:
            for key in self.remote:
                self._internal[repartition_topic(self.group_id, topic, key)] = (topic, key)

    @property
    def repartitions(self) -> bool:
        """True when some detector runs on an internal topic."""
        return bool(self.remote)

    def internal_topics(self) -> dict[str, tuple[str, StateKey]]:
        """Every internal topic → (input topic it re-keys, key)."""
        return dict(self._internal)

    def topic_key(self, topic: str) -> StateKey | None:
        """The key of internal ``topic``; ``None`` for an input topic."""
        found = self._internal.get(topic)
        return found[1] if found else None

    def detectors_for(self, topic: str) -> frozenset[str]:
        """Names of the detectors whose state lives on the partitions of ``topic``."""
        key = self.topic_key(topic)
        return self.local if key is None else self.remote[key]

    def targets(self, event: Event) -> list[StateKey]:
        """Keys whose detectors could use ``event`` (their index admits it): where it is forwarded."""
        return [key for key, engine in self._filters.items() if engine.candidates(event)]

    def reindex(self) -> None:
        """Rebuild the forwarding filters (after a rule reload changed a detector's index)."""
        for engine in self._filters.values():
            engine.reindex()


def plan_routes(detectors: Sequence[Detector], *, group_id: str, topics: Sequence[str],
                input_key: InputKey, repartition: bool) -> Routes:
    """Decide where each of ``detectors`` runs (see the module docstring)."""
    keyed: StateKey | None = None if input_key == "none" else input_key
    local: set[str] = set()
    remote: dict[StateKey, set[str]] = {}
    remote_detectors: dict[StateKey, list[Detector]] = {}
    unrouted: dict[str, StateKey] = {}
    for detector in detectors:
        key = detector.required_key()
        if key is not None and key not in STATE_KEYS:
            raise ValueError(f"detector {detector.name} declares state key {key!r}; "
                             f"known keys: {', '.join(STATE_KEYS)}")
        needs_clock = detector.organisation_clock and key is not None
        if key is None or (key == keyed and not (needs_clock and repartition and topics)):
            local.add(detector.name)
            if needs_clock and key is not None:
                unrouted[detector.name] = key
        elif repartition and topics:
            remote.setdefault(key, set()).add(detector.name)
            remote_detectors.setdefault(key, []).append(detector)
        else:
            local.add(detector.name)
            unrouted[detector.name] = key
    routes = Routes(group_id, keyed, tuple(topics), frozenset(local),
                    {key: frozenset(names) for key, names in remote.items()}, unrouted)
    routes._filters = {key: DetectionEngine(found) for key, found in remote_detectors.items()}
    return routes
