"""Writes partition state to its changelog topic and creates that topic when it is missing.

One changelog topic per consumer group and input topic, ``<group_id>-<topic>-changelog`` (Kafka
Streams' ``<application.id>-<store>-changelog``), with the input's partition count and
``cleanup.policy=compact``: changelog partition ``p`` holds the state of input partition ``p``.  A
write produces every chunk and then the manifest (see :mod:`daemon.changelog.codec`) with
``acks=all`` and waits for the broker; only then does the pipeline commit the input offsets the
state covers.  Chunks of older generations are tombstoned after the new manifest is acknowledged.
An existing changelog with a different partition count is refused with the fix, because state
would land on the wrong partition.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from daemon.changelog.codec import EncodedWrite, claim_record
from daemon.metrics import Metrics

if TYPE_CHECKING:  # aiokafka is imported where it is used: a daemon without Kafka never loads it
    from aiokafka import AIOKafkaProducer

__all__ = ["ChangelogError", "ChangelogProducer", "changelog_topic", "split_partition"]


class ChangelogError(Exception):
    """The changelog topic cannot be used; the message says why and what to do."""


def changelog_topic(group_id: str, topic: str) -> str:
    """The changelog topic of ``topic`` consumed by group ``group_id``."""
    return f"{group_id}-{topic}-changelog"


def split_partition(key: str) -> tuple[str, int]:
    """``"topic/3"`` → ``("topic", 3)``."""
    topic, _, number = key.rpartition("/")
    return topic, int(number)


class ChangelogProducer:
    """Creates changelog topics and produces partition state to them (``acks=all``)."""

    def __init__(self, connection: dict[str, Any], *, group_id: str, replication_factor: int,
                 chunk_bytes: int, timeout: float, metrics: Metrics) -> None:
        self.connection = connection
        self.group_id = group_id
        self.replication_factor = replication_factor
        self.chunk_bytes = chunk_bytes
        self.timeout = timeout
        self.metrics = metrics
        self.log = structlog.get_logger("trailguard.changelog")
        self._producer: AIOKafkaProducer | None = None
        self._ready_topics: set[str] = set()
        self._lock = asyncio.Lock()

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            from aiokafka import AIOKafkaProducer

            producer = AIOKafkaProducer(**self.connection, acks="all", linger_ms=0,
                                        max_request_size=max(1 << 20, self.chunk_bytes + (64 << 10)))
            await asyncio.wait_for(producer.start(), self.timeout)
            self._producer = producer
        return self._producer

    async def stop(self) -> None:
        """Close the producer (pending writes were awaited by their checkpoints)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def ensure_topic(self, topic: str, partitions: int) -> str:
        """Create the changelog of ``topic`` if missing; check its partition count; return its name."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        name = changelog_topic(self.group_id, topic)
        if name in self._ready_topics:
            return name
        async with self._lock:
            if name in self._ready_topics:
                return name
            admin = AIOKafkaAdminClient(**self.connection)
            await asyncio.wait_for(admin.start(), self.timeout)
            try:
                try:
                    await asyncio.wait_for(admin.create_topics(
                        [NewTopic(name, partitions, self.replication_factor,
                                  topic_configs={"cleanup.policy": "compact"})]), self.timeout)
                    self.log.info("changelog topic created", topic=name, partitions=partitions,
                                  replication_factor=self.replication_factor)
                except TopicAlreadyExistsError:
                    pass
                found = await asyncio.wait_for(admin.describe_topics([name]), self.timeout)
            finally:
                await admin.close()
            existing = next((len(t.get("partitions") or []) for t in found if t.get("topic") == name), 0)
            if existing and existing != partitions:
                raise ChangelogError(
                    f"changelog topic {name} has {existing} partitions but input topic {topic} has {partitions}; "
                    f"fix: delete {name} (state is rebuilt from the input) or use a new group_id")
            self._ready_topics.add(name)
            return name

    async def claim(self, key: str, owner: int) -> int:
        """Write the claim of partition ``key`` by generation ``owner``; returns the end offset after it."""
        topic, partition = split_partition(key)
        producer = await self._started()
        record_key, value = claim_record(key, owner)
        result = await asyncio.wait_for(producer.send_and_wait(changelog_topic(self.group_id, topic), value,
                                                               key=record_key, partition=partition), self.timeout)
        return result.offset + 1

    async def write(self, key: str, encoded: EncodedWrite, stale: set[bytes]) -> int:
        """Produce ``encoded`` to the partition of ``key``, then tombstones for ``stale`` chunk keys.

        Returns the changelog end offset after the write (the local cache records it).
        """
        topic, partition = split_partition(key)
        name = changelog_topic(self.group_id, topic)
        producer = await self._started()
        # One record per produce request, each awaited: the manifest is never in a batch with (or
        # ahead of) its chunks, and every record is a batch of its own (tansu reports the end offset
        # of a multi-record batch as its base offset + 1, which would defeat the cache check).
        last = -1
        for record_key, value in [*encoded.records, *((k, None) for k in sorted(stale))]:
            result = await asyncio.wait_for(
                producer.send_and_wait(name, value, key=record_key, partition=partition), self.timeout)
            last = max(last, result.offset)
        self.metrics.changelog_bytes.inc(sum(len(v) for _, v in encoded.records))
        return last + 1
