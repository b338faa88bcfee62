"""The source interface: what the pipeline consumes and what it acknowledges back.

A source yields :class:`SourceBatch` objects of decoded (but not yet validated) records.  Each
batch carries an opaque ``position``; the pipeline hands positions back through
:meth:`Source.acknowledge` only once a checkpoint covers them (flush sinks → snapshot state →
acknowledge input), so an input is never acknowledged before its events were processed.
Backpressure is the pipeline's bounded queue: a source awaits ``put`` and so stops reading.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from daemon.deadletter import InvalidReporter

__all__ = ["Source", "SourceBatch"]


@dataclass(slots=True)
class SourceBatch:
    """Records decoded from one unit of input (a file chunk, an SQS message, a Kafka batch)."""

    source: str
    """The source's name (its ``type`` unless configured): the ``source`` metric label."""
    records: list[Any]
    """Decoded records, expected to be CloudTrail event dicts; the pipeline validates them."""
    origin: str
    """Where they came from, for logs and the dead-letter file: a path, ``s3://b/k``, ``topic/3``."""
    locations: Sequence[int] | None = None
    """Per record, its line number (JSON lines) in ``origin``; ``None``: its index in the document."""
    position: Any = None
    """Opaque; returned to :meth:`Source.acknowledge` once a checkpoint covers the batch."""
    partition: str | None = None
    """Which state partition the records belong to (Kafka: ``topic/partition``); ``None``: the default."""
    first_index: int = 0
    """Index of ``records[0]`` in its document (when ``locations`` is ``None``), for error context."""
    watermarks: list[Any] | None = None
    """Event-time marks read with the records (Kafka internal topics, :mod:`daemon.repartition.watermark`)."""
    received_at: float = 0.0
    """``time.perf_counter()`` when the pipeline received the batch (``trailguard_stage_seconds``)."""


class Source(ABC):
    """Base of every source: ``start``/``stop`` lifecycle, batches, acknowledgement, readiness."""

    kind: ClassVar[str] = ""
    #: True when :meth:`acknowledge` only updates memory (files): the checkpointer then acknowledges
    #: *before* taking the snapshot, so the snapshot records the positions.  Sources whose
    #: acknowledgement is external (Kafka commit, SQS delete) are acknowledged after it is durable.
    local_acknowledge: ClassVar[bool] = False

    def __init__(self, name: str, invalid: InvalidReporter) -> None:
        self.name = name
        self.invalid = invalid
        self._stopping = False
        self._closer: asyncio.Task[None] | None = None

    @property
    def finite(self) -> bool:
        """True when the input ends by itself (files without follow); the daemon then exits."""
        return False

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (an endless source that ends without it has failed)."""
        return self._stopping

    @property
    def ready(self) -> bool:
        """True while the source is connected and able to deliver (``/readyz``)."""
        return True

    async def start(self) -> None:
        """Connect / open; called before :meth:`batches` is iterated."""
        self._stopping = False

    async def stop(self) -> None:
        """Stop producing: :meth:`batches` must return promptly after this is called."""
        self._stopping = True

    @abstractmethod
    def batches(self) -> AsyncIterator[SourceBatch]:
        """Yield batches until the input ends or :meth:`stop` is called."""

    async def wait_closed(self) -> None:
        """After the final checkpoint: wait until connections are closed (they close once every
        handed-out batch is acknowledged, or after the source's close timeout).

        Returns at once for a source that never started closing in the background (see
        :meth:`_close_when_drained`).
        """
        if self._closer is not None:
            await asyncio.shield(self._closer)

    def _close_when_drained(
        self,
        drained: asyncio.Event,
        timeout: float,
        on_timeout: Callable[[], None],
        close: Callable[[], Awaitable[None]],
    ) -> None:
        """From :meth:`stop`: close in the background once every handed-out batch is acknowledged.

        Why: a source with external acknowledgement (Kafka commit, SQS delete) must keep its
        connection until the pipeline's final checkpoint acknowledged what it handed out, but not
        forever.  The task waits until ``drained`` is set or ``timeout`` seconds passed, calling
        ``on_timeout()`` (which logs what is left) in the second case, then runs ``close()`` either
        way.  :meth:`wait_closed` awaits it.
        """
        self._closer = asyncio.create_task(self._drain_then_close(drained, timeout, on_timeout, close),
                                           name=f"{self.kind}-close:{self.name}")

    @staticmethod
    async def _drain_then_close(
        drained: asyncio.Event,
        timeout: float,
        on_timeout: Callable[[], None],
        close: Callable[[], Awaitable[None]],
    ) -> None:
        try:
            await asyncio.wait_for(drained.wait(), timeout)
        except TimeoutError:
            on_timeout()
        finally:
            await close()

    async def acknowledge(self, positions: list[Any]) -> None:
        """Positions now covered by a checkpoint: commit offsets / delete messages / record files."""
        return None

    def checkpoint_positions(self) -> dict[str, Any]:
        """Source positions to store in the checkpoint (file offsets, Kafka offsets)."""
        return {}

    def on_partitions(self, callback: Any) -> None:
        """Register ``callback(assigned, revoked)`` (sets of partition keys) for rebalances.

        Only partitioned sources (Kafka) call it; others never change their partitions.
        """
        return None

    def state_log(self) -> Any | None:
        """The changelog that partition state follows (Kafka), or ``None``: state is local only."""
        return None

    def restore_positions(self, positions: dict[str, Any]) -> None:
        """Resume from positions a checkpoint recorded."""
        return None
