"""Standby replicas: warm copies of partitions this instance does not own (Kafka Streams'
``num.standby.replicas``), so a take-over restores in milliseconds instead of reading the changelog.

With ``standby_replicas: N`` an instance tails the changelog partitions ``p+1 … p+N`` (modulo the
partition count) of every partition ``p`` it owns, except those it owns itself, and the partitions
it gave up in the last rebalance (they often come back), folding them into
:class:`~daemon.changelog.replica.Replica` copies as they are written.  The placement needs no
member list (aiokafka does not expose the group's): with sticky assignment the neighbours of a
partition are mostly owned by other instances, so partition ``p`` has warm copies on the owners of
``p-1 … p-N``, and on a take-over the new owner is often one of them — always when ``N`` is at
least the partition count minus one (every instance keeps every partition warm).  A copy whose
partition becomes owned is handed to the restorer (:meth:`take`), which checks it against the
changelog's end offset and reads only the records written since.  A copy costs the memory of
the partition's encoded state; ``trailguard_state_standby_partitions`` counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import structlog

from daemon.changelog.producer import changelog_topic, split_partition
from daemon.changelog.reader import changelog_reader
from daemon.changelog.replica import Replica
from daemon.metrics import Metrics

if TYPE_CHECKING:  # aiokafka is imported where it is used: a daemon without Kafka never loads it
    from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = ["StandbyReplicas", "standby_placement"]


def standby_placement(owned: set[str], counts: dict[str, int], replicas: int) -> set[str]:
    """The partitions to keep warm: ``p+1 … p+replicas`` of each owned ``topic/p``, minus the owned."""
    wanted: set[str] = set()
    for key in owned:
        topic, partition = split_partition(key)
        count = counts.get(topic, 0)
        for step in range(1, min(replicas, max(count - 1, 0)) + 1):
            wanted.add(f"{topic}/{(partition + step) % count}")
    return wanted - owned


class StandbyReplicas:
    """Tails the changelog partitions chosen by :func:`standby_placement` in the background."""

    def __init__(self, connection: dict[str, Any], *, group_id: str, replicas: int, metrics: Metrics) -> None:
        self.connection = connection
        self.group_id = group_id
        self.replicas = replicas
        self.metrics = metrics
        self.log = structlog.get_logger("trailguard.changelog.standby")
        self._copies: dict[str, Replica] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def _tp(self, key: str) -> TopicPartition:
        from aiokafka import TopicPartition

        topic, partition = split_partition(key)
        return TopicPartition(changelog_topic(self.group_id, topic), partition)

    async def follow(self, owned: set[str], counts: dict[str, int], keep: set[str] | None = None) -> None:
        """Keep the placement of ``owned`` warm, plus ``keep`` (new copies start from the beginning).

        Called once a rebalance's restores are over: a copy is handed over (:meth:`take`) before
        the placement changes, never dropped while its partition may still be restored here."""
        wanted = standby_placement(owned, counts, self.replicas) | ((keep or set()) - owned)
        async with self._lock:
            for key in set(self._copies) - wanted:
                del self._copies[key]
            added = [key for key in sorted(wanted) if key not in self._copies]
            if self._consumer is None and wanted:
                consumer = changelog_reader(self.connection, fetch_max_wait_ms=100)
                await consumer.start()
                self._consumer = consumer
                self._task = asyncio.create_task(self._tail(), name="standby-replicas")
            if self._consumer is not None and not wanted:
                self._consumer.unsubscribe()
            elif self._consumer is not None:
                self._consumer.assign([self._tp(key) for key in sorted(wanted)])
                for key in added:
                    tp = self._tp(key)
                    begin = (await self._consumer.beginning_offsets([tp]))[tp]
                    self._copies[key] = Replica(begin)
                    self._consumer.seek(tp, begin)
                for key, copy in self._copies.items():
                    if key not in added:
                        self._consumer.seek(self._tp(key), copy.position)
        self.metrics.state_standby_partitions.set(len(self._copies))
        if added:
            self.log.info("standby replicas following", partitions=sorted(wanted))

    def take(self, key: str) -> Replica | None:
        """The warm copy of ``key`` (now owned), removed from the standby set."""
        copy = self._copies.pop(key, None)
        self.metrics.state_standby_partitions.set(len(self._copies))
        return copy

    async def _tail(self) -> None:
        from aiokafka.errors import KafkaError

        by_tp: dict[TopicPartition, str] = {}
        while True:
            try:
                async with self._lock:
                    consumer = self._consumer
                    if consumer is None:
                        return
                    by_tp = {self._tp(key): key for key in self._copies}
                    batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
                    for tp, messages in batch.items():
                        key = by_tp.get(tp)
                        copy = self._copies.get(key) if key is not None else None
                        if copy is not None:
                            copy.apply(m for m in messages if m.offset >= copy.position)
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError) as error:
                self.log.warning("standby replica read failed; retrying", error=type(error).__name__,
                                 detail=str(error)[:300])
                await asyncio.sleep(1.0)
                continue
            await asyncio.sleep(0)

    async def stop(self) -> None:
        """Stop tailing and close the consumer."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
        self._copies.clear()
