"""The changelog as the pipeline sees it: restore a partition, encode its state, write it, forget it.

Ties :mod:`~daemon.changelog.codec`, :mod:`~daemon.changelog.producer` and
:mod:`~daemon.changelog.recovery` together and remembers, per owned partition, the generation last
written and the chunk keys still live (so the next write knows what to tombstone).  The pipeline
calls :meth:`encode` while detection is paused (the snapshot must be consistent) and :meth:`write`
after the sinks are flushed, before offsets are committed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from daemon.changelog.codec import EncodedWrite, encode
from daemon.changelog.producer import ChangelogProducer
from daemon.changelog.recovery import CachedState, RecoveryManager
from daemon.metrics import Metrics

__all__ = ["StateChangelog"]


@dataclass(slots=True)
class _Known:
    generation: int = 0
    live_keys: set[bytes] = field(default_factory=set)


class StateChangelog:
    """Changelog-backed state of the partitions one Kafka source owns."""

    def __init__(self, connection: dict[str, Any], *, group_id: str, replication_factor: int,
                 chunk_bytes: int, timeout: float, metrics: Metrics) -> None:
        self.chunk_bytes = chunk_bytes
        self.producer = ChangelogProducer(connection, group_id=group_id, replication_factor=replication_factor,
                                          chunk_bytes=chunk_bytes, timeout=timeout, metrics=metrics)
        self.recovery = RecoveryManager(connection, group_id=group_id, timeout=timeout, metrics=metrics)
        self._known: dict[str, _Known] = {}

    async def ensure_topic(self, topic: str, partitions: int) -> str:
        """Create the changelog of ``topic`` when missing (called on assignment)."""
        return await self.producer.ensure_topic(topic, partitions)

    async def restore(self, key: str,
                      cache: CachedState | None) -> tuple[dict[str, Any] | None, str, CachedState | None]:
        """Partition ``key``'s saved parts (``None``: no state yet), where they came from, and what
        the local cache should hold now (``None``: it is current already)."""
        restored, end, origin = await self.recovery.restore(key, cache)
        if restored is None:
            self._known[key] = _Known()
            return None, origin, None
        self._known[key] = _Known(restored.generation, set(restored.live_keys))
        fresh = (CachedState(end, restored.generation, restored.body, frozenset(restored.live_keys))
                 if origin == "changelog" else None)
        return restored.parts, origin, fresh

    def encode(self, key: str, parts: dict[str, Any]) -> EncodedWrite:
        """The next generation of ``key`` (synchronous: call while the state is consistent)."""
        known = self._known.setdefault(key, _Known())
        return encode(key, known.generation + 1, parts, self.chunk_bytes)

    async def write(self, key: str, encoded: EncodedWrite) -> CachedState:
        """Produce ``encoded`` and tombstone older chunks; returns what the local cache should hold."""
        known = self._known.setdefault(key, _Known())
        stale = known.live_keys - encoded.chunk_keys
        end = await self.producer.write(key, encoded, stale)
        known.generation = encoded.generation
        known.live_keys = set(encoded.chunk_keys)
        return CachedState(end, encoded.generation, encoded.body, frozenset(encoded.chunk_keys))

    def forget(self, key: str) -> None:
        """Partition ``key`` was revoked: its next owner decides its generations."""
        self._known.pop(key, None)

    async def stop(self) -> None:
        """Close the producer and the restore consumer."""
        await self.producer.stop()
        await self.recovery.stop()
