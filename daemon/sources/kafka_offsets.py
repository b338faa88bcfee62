"""Which Kafka offset may be committed: the end of the acknowledged, contiguous prefix per partition.

Batches of a partition are handed to the pipeline in offset order but may be acknowledged in any
order (and some never, if the daemon stops first).  Committing ``offset + 1`` of an acknowledged
batch while an earlier batch is still unacknowledged would lose the earlier one on a restart, so
each partition keeps its handed-out offset ranges in order and only the acknowledged prefix
counts.  Pure bookkeeping, no I/O: the Kafka source owns the consumer and the commits.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["PartitionOffsets"]


@dataclass(slots=True)
class _Range:
    first: int
    last: int
    acked: bool = False


@dataclass(slots=True)
class PartitionOffsets:
    """Offset ranges handed out for one partition during one assignment (``epoch``)."""

    epoch: int
    #: The committed offset (next offset to read) as far as this consumer knows; ``None``: unknown.
    committed: int | None = None
    _ranges: deque[_Range] = field(default_factory=deque)
    _commit_to: int | None = None

    def emitted(self, first: int, last: int) -> None:
        """A batch covering offsets ``first..last`` was handed to the pipeline."""
        self._ranges.append(_Range(first, last))

    def acknowledged(self, first: int, last: int) -> None:
        """The batch ``first..last`` is covered by a checkpoint; advance the contiguous prefix."""
        for item in self._ranges:
            if item.first == first and item.last == last:
                item.acked = True
                break
        ranges = self._ranges
        while ranges and ranges[0].acked:
            self._commit_to = ranges.popleft().last + 1

    @property
    def outstanding(self) -> int:
        """Batches handed out and not yet part of the acknowledged prefix."""
        return len(self._ranges)

    def to_commit(self) -> int | None:
        """The offset to commit (``last + 1`` of the prefix) if it is ahead of ``committed``."""
        target = self._commit_to
        if target is None or (self.committed is not None and target <= self.committed):
            return None
        return target
