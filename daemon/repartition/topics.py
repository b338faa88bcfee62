"""Creates the internal repartition topics before the consumer subscribes to them.

Each internal topic gets its input topic's partition count (the organisation's gets one), default
``cleanup.policy=delete`` with a bounded retention: its records are input, read once by the group,
and their offsets committed like the input's.  A topic that exists with a different partition
count is used as it is (a key still maps to one partition); a missing input topic is an error the
caller retries, as a broker outage is.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from detectors.base import StateKey

__all__ = ["RepartitionTopicError", "ensure_internal_topics"]


class RepartitionTopicError(Exception):
    """An internal topic cannot be created yet (its input topic is missing); retried."""


def _partition_counts(described: list[dict[str, Any]]) -> dict[str, int]:
    return {t["topic"]: len(t.get("partitions") or []) for t in described
            if t.get("topic") and not t.get("error_code")}


async def ensure_internal_topics(connection: dict[str, Any], internal: dict[str, tuple[str, StateKey]], *,
                                 replication_factor: int, retention_ms: int, timeout: float) -> dict[str, int]:
    """Create every missing topic of ``internal`` (name → (input topic, key)); return their partition counts."""
    log = structlog.get_logger("trailguard.repartition")
    admin = AIOKafkaAdminClient(**connection)
    await asyncio.wait_for(admin.start(), timeout)
    try:
        inputs = sorted({topic for topic, _ in internal.values()})
        # list first: describing a missing topic makes some brokers create it with their defaults
        listed = set(await asyncio.wait_for(admin.list_topics(), timeout))
        missing = [topic for topic in inputs if topic not in listed]
        counts = {} if missing else _partition_counts(
            await asyncio.wait_for(admin.describe_topics(inputs), timeout))
        missing += [topic for topic in inputs if topic not in missing and not counts.get(topic)]
        if missing:
            raise RepartitionTopicError(f"input topic(s) {', '.join(missing)} not found; internal topics "
                                        "are created once they exist")
        present = sorted(name for name in internal if name in listed)
        existing = _partition_counts(await asyncio.wait_for(admin.describe_topics(present), timeout)) if present else {}
        wanted = {name: 1 if key == "organisation" else counts[topic]
                  for name, (topic, key) in internal.items()}
        new = [NewTopic(name, partitions, replication_factor,
                        topic_configs={"cleanup.policy": "delete", "retention.ms": str(retention_ms)})
               for name, partitions in sorted(wanted.items()) if not existing.get(name)]
        if new:
            try:
                await asyncio.wait_for(admin.create_topics(new), timeout)
            except TopicAlreadyExistsError:
                pass  # another instance created it meanwhile
            log.info("repartition topics created", topics=[t.name for t in new],
                     replication_factor=replication_factor)
        return {name: existing.get(name) or wanted[name] for name in internal}
    finally:
        await admin.close()
