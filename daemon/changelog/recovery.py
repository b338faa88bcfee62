"""Restores a partition from its changelog before the partition is processed (Kafka Streams' restore).

On assignment the new owner reads changelog partition ``p`` from the beginning to the end offset it
saw when it started, keeping the latest value per key (what compaction would keep), and assembles
the newest manifest's generation.  The local file is only a cache: it is used instead of reading
when it records the changelog's current end offset, or only claims of other owners (instances
that took the partition and wrote no state) came after it, so a pod that restarts in place
restores in milliseconds and a pod that lost its volume, or whose partition was written by another
instance meanwhile, reads the changelog.
Progress is exported as ``trailguard_state_restore_remaining_records``.  A manifest written by an
older consumer-group generation than a claim before it (a stalled previous owner's late write,
see :mod:`daemon.changelog.codec`) is skipped: the state restored is the last one its rightful
owner wrote.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack
import structlog

from daemon.changelog.codec import Restored, assemble
from daemon.changelog.producer import changelog_topic, split_partition
from daemon.changelog.reader import changelog_reader
from daemon.changelog.replica import Replica
from daemon.metrics import Metrics

if TYPE_CHECKING:  # aiokafka is imported where it is used: a daemon without Kafka never loads it
    from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = ["CachedState", "RecoveryManager"]

#: Records after the cached offset that are read to see whether they are only claims.
_CLAIMS_AFTER_CACHE = 64


@dataclass(frozen=True, slots=True)
class CachedState:
    """What the local cache file holds for a partition."""

    changelog_end: int | None
    generation: int
    body: bytes
    live_keys: frozenset[bytes]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the cache file."""
        return {"changelog_end": self.changelog_end, "generation": self.generation, "body": self.body,
                "live_keys": sorted(self.live_keys)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CachedState | None:
        """Read a cache file's body (``None`` when it is not a changelog cache)."""
        body = data.get("body")
        if not isinstance(body, bytes):
            return None
        end = data.get("changelog_end")
        return cls(end if isinstance(end, int) else None, int(data.get("generation") or 0), body,
                   frozenset(k for k in data.get("live_keys") or () if isinstance(k, bytes)))


class RecoveryManager:
    """Reads changelog partitions back (one restore at a time, one reusable consumer)."""

    def __init__(self, connection: dict[str, Any], *, group_id: str, timeout: float, metrics: Metrics) -> None:
        self.connection = connection
        self.group_id = group_id
        self.timeout = timeout
        self.metrics = metrics
        self.log = structlog.get_logger("trailguard.changelog")
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = changelog_reader(self.connection, fetch_max_bytes=64 << 20, fetch_max_wait_ms=20)
            await asyncio.wait_for(consumer.start(), self.timeout)
            self._consumer = consumer
        return self._consumer

    async def stop(self) -> None:
        """Close the restore consumer."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def end_offset(self, key: str) -> int:
        """The changelog end offset of partition ``key`` now (the writer's fencing check)."""
        from aiokafka import TopicPartition

        topic, partition = split_partition(key)
        tp = TopicPartition(changelog_topic(self.group_id, topic), partition)
        async with self._lock:
            consumer = await self._started()
            return (await asyncio.wait_for(consumer.end_offsets([tp]), self.timeout))[tp]

    async def restore(self, key: str, cache: CachedState | None,
                      warm: Replica | None = None) -> tuple[Restored | None, int, str]:
        """The state of partition ``key``, the changelog end offset it matches, and where it came from
        (``"cache"``, ``"standby"``, ``"changelog"`` or ``"empty"``).  ``warm``: a standby copy, of
        which only the records written since it was last read are read."""
        from aiokafka import TopicPartition

        topic, partition = split_partition(key)
        tp = TopicPartition(changelog_topic(self.group_id, topic), partition)
        async with self._lock:
            consumer = await self._started()
            end = (await asyncio.wait_for(consumer.end_offsets([tp]), self.timeout))[tp]
            if cache is not None and await self._current(consumer, tp, cache, end):
                parts = msgpack.unpackb(cache.body, raw=False, strict_map_key=False)
                return Restored(cache.generation, parts, set(cache.live_keys), cache.body), end, "cache"
            begin = (await asyncio.wait_for(consumer.beginning_offsets([tp]), self.timeout))[tp]
            if end <= begin:
                return None, end, "empty"
            origin = "changelog"
            if warm is not None and begin <= warm.position <= end:
                replica, origin = warm, "standby"  # verified against the end offset: read the delta
            else:
                replica = Replica(begin)
            if replica.position < end:  # a warm copy may be current: nothing to read
                consumer.assign([tp])
                try:
                    await self._read(consumer, tp, replica, end)
                finally:
                    consumer.unsubscribe()  # no background fetches between restores
        restored = assemble(key, replica.latest)
        return restored, end, origin if restored is not None else "empty"

    async def _current(self, consumer: AIOKafkaConsumer, tp: TopicPartition, cache: CachedState, end: int) -> bool:
        """Whether the cache holds the partition's state at ``end``: it was written at ``end``, or only
        claims (other owners that wrote no state, e.g. a partition handed back) came after it."""
        since = cache.changelog_end
        if since is None or since > end or end - since > _CLAIMS_AFTER_CACHE:
            return False
        if since == end:
            return True
        after = Replica(since)
        consumer.assign([tp])
        try:
            await self._read(consumer, tp, after, end, quiet=True)
        finally:
            consumer.unsubscribe()
        return all(key.endswith(b"/claim") for key in after.latest)

    async def _read(self, consumer: AIOKafkaConsumer, tp: TopicPartition, replica: Replica, end: int,
                    quiet: bool = False) -> None:
        """Read ``tp`` from ``replica.position`` to ``end`` into ``replica``."""
        started = time.perf_counter()
        begin = replica.position
        remaining = self.metrics.state_restore_remaining
        remaining.inc(max(0, end - begin))
        fenced_before = replica.fenced
        consumer.seek(tp, begin)
        idle_since = time.monotonic()
        try:
            while replica.position < end:
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=10_000)
                messages = batch.get(tp, [])
                if not messages:
                    if time.monotonic() - idle_since > self.timeout:
                        raise TimeoutError(f"changelog {tp.topic}/{tp.partition} returned nothing for "
                                           f"{self.timeout:.0f}s at offset {replica.position} of {end}")
                    continue
                idle_since = time.monotonic()
                before = replica.position
                read = replica.apply(messages)  # records past ``end`` are committed data too: kept
                remaining.dec(max(0, min(replica.position, end) - before))
                self.metrics.state_restore_records.inc(read)
        finally:
            remaining.dec(max(0, end - max(replica.position, begin)))
        fenced = replica.fenced - fenced_before
        if fenced:
            self.metrics.changelog_fenced.inc(fenced)
            self.log.warning("changelog writes of a fenced previous owner ignored", changelog=tp.topic,
                             partition=tp.partition, writes=fenced, claimed_by_generation=replica.claimed)
        if quiet:
            return
        self.log.info("partition state read from changelog", changelog=tp.topic, partition=tp.partition,
                      records=end - begin, keys=len(replica.latest),
                      seconds=round(time.perf_counter() - started, 3))
