"""The one consumer configuration that reads changelog partitions (restores and standby replicas).

A changelog is read by assignment, never by a consumer group (no offsets to commit, no rebalance),
from the beginning of what compaction kept, with a partition fetch large enough for a whole state
chunk (16 MiB, above the largest ``changelog_chunk_bytes``).  Restoring and keeping a standby copy
differ only in how long a fetch may wait, so both build their consumer here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:  # imported when a reader is built: a daemon without Kafka never loads aiokafka
    from aiokafka import AIOKafkaConsumer

__all__ = ["READER_DEFAULTS", "changelog_reader"]

READER_DEFAULTS: Final[dict[str, Any]] = {
    "group_id": None,
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "max_partition_fetch_bytes": 16 << 20,
}


def changelog_reader(connection: dict[str, Any], **overrides: Any) -> AIOKafkaConsumer:
    """A changelog consumer (not started) on ``connection``; ``overrides`` win over the defaults."""
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(**connection, **{**READER_DEFAULTS, **overrides})
