"""The named state parts of one partition, so the changelog carries them without knowing what they are.

Each Kafka partition owned by this instance has its own detector engine and dedupe record (and any
part registered later, such as incident grouping state): a *part* is anything with ``snapshot()``
returning plain data and ``restore(data)``.  :class:`PartRegistry` maps a part's name to the factory
that builds a fresh one; the pipeline registers ``engine`` and ``dedupe``, and adding another part
to what follows a partition is one :meth:`PartRegistry.register` call.  Parts saved by a newer build
and unknown to this one are ignored; parts missing from a saved snapshot start empty.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["PartRegistry", "PartitionState", "StatePart"]


class StatePart(Protocol):
    """One piece of a partition's state."""

    def snapshot(self) -> Any:
        """Plain data (msgpack-encodable) describing the state now."""

    def restore(self, state: Any) -> None:
        """Load what :meth:`snapshot` returned."""


@dataclass(slots=True)
class PartitionState:
    """The parts of one partition (``topic/p``) and whether it changed since it was last written."""

    key: str
    parts: dict[str, StatePart]
    #: Processed events since the last changelog write (a clean partition is not written again).
    dirty: bool = False
    #: Changelog end offset this state corresponds to (``None``: not written yet).
    changelog_end: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        """Every part's snapshot, by name."""
        return {name: part.snapshot() for name, part in self.parts.items()}

    def restore(self, saved: dict[str, Any]) -> None:
        """Load each part present in ``saved``."""
        for name, part in self.parts.items():
            value = saved.get(name)
            if value is not None:
                part.restore(value)

    def part(self, name: str) -> Any:
        """The part called ``name``."""
        return self.parts[name]


class PartRegistry:
    """Part name → factory; :meth:`build` makes the parts of a newly owned partition."""

    def __init__(self) -> None:
        self._factories: dict[str, Callable[[], StatePart]] = {}

    def register(self, name: str, factory: Callable[[], StatePart]) -> None:
        """Make every partition carry a part ``name`` built by ``factory()`` (names are unique)."""
        if name in self._factories:
            raise ValueError(f"state part {name!r} is already registered")
        self._factories[name] = factory

    def names(self) -> list[str]:
        """Registered part names, in registration order."""
        return list(self._factories)

    def build(self, key: str) -> PartitionState:
        """Fresh parts for partition ``key``."""
        return PartitionState(key, {name: factory() for name, factory in self._factories.items()})
