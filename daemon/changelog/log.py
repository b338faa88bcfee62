"""The changelog as the pipeline sees it: restore a partition, encode its state, write it, forget it.

Ties :mod:`~daemon.changelog.codec`, :mod:`~daemon.changelog.producer` and
:mod:`~daemon.changelog.recovery` together and remembers, per owned partition, the generation last
written and the chunk keys still live (so the next write knows what to tombstone).  The pipeline
calls :meth:`pack` while detection is paused (the snapshot must be consistent: only msgpack reads
the live state) and :meth:`write` after the sinks are flushed, before offsets are committed; the
write cuts the body into chunks and hashes it in a thread.

**Fencing a stalled old owner.**  An instance paused past its session timeout (SIGSTOP, a frozen
VM, a long GC) loses its partitions without knowing it; resumed, its rebalance listener checkpoints
the state it still holds, which would roll the new owner's state back.  So right after restoring,
an owner writes a claim (with its consumer-group generation) and remembers the changelog end offset
after it; every later write first checks that the end offset is still the one this instance left.
If another instance wrote meanwhile (a claim or state), the write is refused with
:class:`ChangelogFenced` and the pipeline drops the partition's state.  Between that check and the
write there is a window; a manifest that slips through it names an older generation than the claim
before it and the restorer ignores it (:mod:`daemon.changelog.recovery`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.changelog.codec import EncodedWrite, PackedParts, chunked, encode, pack
from daemon.changelog.producer import ChangelogProducer
from daemon.changelog.recovery import CachedState, RecoveryManager
from daemon.changelog.standby import StandbyReplicas
from daemon.metrics import Metrics

__all__ = ["ChangelogFenced", "StateChangelog"]


class ChangelogFenced(Exception):
    """Another instance wrote this partition's changelog since this one did: it owns the partition now."""


@dataclass(slots=True)
class _Known:
    generation: int = 0
    live_keys: set[bytes] = field(default_factory=set)
    #: Changelog end offset after this instance's claim or last write (``None``: not known for sure,
    #: e.g. after a write that failed half way; the next write is not checked).
    end: int | None = None


class StateChangelog:
    """Changelog-backed state of the partitions one Kafka source owns."""

    def __init__(self, connection: dict[str, Any], *, group_id: str, replication_factor: int,
                 chunk_bytes: int, timeout: float, metrics: Metrics,
                 owner_generation: Callable[[], int] = lambda: -1, standby_replicas: int = 0) -> None:
        """``owner_generation()``: this consumer's group generation now (``-1`` when unknown);
        ``standby_replicas``: how many neighbours of each owned partition to keep warm."""
        self.chunk_bytes = chunk_bytes
        self.owner_generation = owner_generation
        self.metrics = metrics
        self.producer = ChangelogProducer(connection, group_id=group_id, replication_factor=replication_factor,
                                          chunk_bytes=chunk_bytes, timeout=timeout, metrics=metrics)
        self.recovery = RecoveryManager(connection, group_id=group_id, timeout=timeout, metrics=metrics)
        self._known: dict[str, _Known] = {}
        self.standby = (StandbyReplicas(connection, group_id=group_id, replicas=standby_replicas, metrics=metrics)
                        if standby_replicas > 0 else None)
        self._counts: dict[str, int] = {}
        self._owned: set[str] = set()

    async def ensure_topic(self, topic: str, partitions: int) -> str:
        """Create the changelog of ``topic`` when missing (called on assignment)."""
        name = await self.producer.ensure_topic(topic, partitions)
        self._counts[topic] = partitions
        return name

    async def restore(self, key: str,
                      cache: CachedState | None) -> tuple[dict[str, Any] | None, str, CachedState | None]:
        """Partition ``key``'s saved parts (``None``: no state yet), where they came from, and what
        the local cache should hold now (``None``: it is current already)."""
        warm = self.standby.take(key) if self.standby is not None else None
        restored, _end, origin = await self.recovery.restore(key, cache, warm)
        # The claim fences any earlier owner still holding this partition's state (module doc).
        claimed = await self.producer.claim(key, self.owner_generation())
        if restored is None:
            self._known[key] = _Known(end=claimed)
            return None, origin, None
        self._known[key] = _Known(restored.generation, set(restored.live_keys), claimed)
        fresh = CachedState(claimed, restored.generation, restored.body, frozenset(restored.live_keys))
        return restored.parts, origin, fresh

    def encode(self, key: str, parts: dict[str, Any]) -> EncodedWrite:
        """The next generation of ``key`` (synchronous: call while the state is consistent)."""
        known = self._known.setdefault(key, _Known())
        return encode(key, known.generation + 1, parts, self.chunk_bytes, self.owner_generation())

    def pack(self, key: str, parts: dict[str, Any]) -> PackedParts:
        """The next generation of ``key``, packed only (synchronous: call while the state is
        consistent); :meth:`write` cuts and hashes it in a thread, so detection waits for less."""
        known = self._known.setdefault(key, _Known())
        return pack(known.generation + 1, parts, self.owner_generation())

    async def write(self, key: str, encoded: EncodedWrite | PackedParts) -> CachedState:
        """Produce ``encoded`` and tombstone older chunks; returns what the local cache should hold."""
        if isinstance(encoded, PackedParts):
            encoded = await asyncio.to_thread(chunked, key, encoded, self.chunk_bytes)
        known = self._known.setdefault(key, _Known())
        if known.end is not None:
            now = await self.recovery.end_offset(key)
            if now != known.end:
                self.metrics.changelog_fenced.inc()
                raise ChangelogFenced(f"changelog of {key} was written by another instance (end offset {now}, "
                                      f"this instance left it at {known.end}): it owns the partition now")
        stale = known.live_keys - encoded.chunk_keys
        known.end = None  # until this write is acknowledged whole
        end = await self.producer.write(key, encoded, stale)
        known.generation = encoded.generation
        known.live_keys = set(encoded.chunk_keys)
        known.end = end
        return CachedState(end, encoded.generation, encoded.body, frozenset(encoded.chunk_keys))

    def forget(self, key: str) -> None:
        """Partition ``key`` was revoked: its next owner decides its generations (and this instance
        may keep it warm as a standby)."""
        self._known.pop(key, None)

    async def settle(self, owned: set[str]) -> None:
        """A rebalance is over and ``owned`` restored: place the standby copies for it, keeping the
        partitions just given up warm too (they often come back, e.g. when a scale-up is undone)."""
        previous, self._owned = self._owned, set(owned)
        if self.standby is None:
            return
        try:
            # inside the rebalance listener: bounded, like a restore
            await asyncio.wait_for(self.standby.follow(set(owned), self._counts, keep=previous - set(owned)),
                                   self.recovery.timeout)
        except Exception as error:  # standby copies are an optimisation: a restore reads the changelog
            self.standby.log.warning("standby replicas not placed", error=type(error).__name__,
                                     detail=str(error)[:300])

    async def stop(self) -> None:
        """Close the producer, the restore consumer and the standby replicas."""
        if self.standby is not None:
            await self.standby.stop()
        await self.producer.stop()
        await self.recovery.stop()
