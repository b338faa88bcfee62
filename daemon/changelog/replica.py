"""A changelog partition folded to its latest value per key, as far as it has been read.

Restoring a partition and keeping a standby copy of it are the same fold over its records: keep
the latest value per key (what compaction keeps), follow the claims and skip a manifest written by
an older consumer-group generation than the newest claim before it (a fenced owner's late write,
see :mod:`daemon.changelog.codec`).  A :class:`Replica` remembers the next offset to read, so a
restore from a warm standby copy reads only the records written since.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from daemon.changelog.codec import fenced_manifest, owner_generation

__all__ = ["Replica"]


@dataclass(slots=True)
class Replica:
    """Latest value per key of one changelog partition, read up to :attr:`position`."""

    position: int
    latest: dict[bytes, bytes | None] = field(default_factory=dict)
    #: Newest claim's generation seen, and manifests skipped because they were older than it.
    claimed: int = -1
    fenced: int = 0

    def apply(self, messages: Iterable[Any]) -> int:
        """Fold consumer records in; returns how many offsets that advanced :attr:`position`."""
        latest = self.latest
        last = self.position - 1
        for message in messages:
            last = message.offset
            key = message.key
            if key is None:
                continue
            if key.endswith(b"/claim"):
                self.claimed = max(self.claimed, owner_generation(message.value))
            elif key.endswith(b"/manifest") and fenced_manifest(message.value, self.claimed):
                self.fenced += 1
                continue  # a stalled previous owner's write: not the state of record
            latest[key] = message.value
        advanced = max(0, last + 1 - self.position)
        self.position += advanced
        return advanced
