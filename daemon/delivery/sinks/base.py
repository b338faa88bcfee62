"""The sink interface: deliver a batch of alerts to one destination, or raise.

Sinks are dumb on purpose: routing, dedup, throttling, retries and spooling live in the
dispatcher around them, so a new sink is one small file with a ``Config`` model and ``send``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from detectors.alert import Alert

__all__ = ["Sink", "SinkConfig"]


class SinkConfig(BaseModel):
    """Keys every sink accepts; subclasses add their own.  Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    name: str | None = None


class Sink(ABC):
    """Base of every sink: ``start``/``stop`` lifecycle, ``send`` a batch, ``flush`` durably."""

    kind: ClassVar[str] = ""
    Config: ClassVar[type[SinkConfig]] = SinkConfig

    def __init__(self, config: SinkConfig) -> None:
        self.config = config
        self.name = config.name or config.type

    async def start(self) -> None:
        """Open connections/files.  Raise to refuse start-up with a clear message."""
        return None

    @abstractmethod
    async def send(self, alerts: list[Alert]) -> None:
        """Deliver every alert or raise; a partial failure must raise (the batch is retried)."""

    async def flush(self) -> None:
        """Make everything sent so far durable (fsync, producer flush)."""
        return None

    async def stop(self) -> None:
        """Flush and close."""
        await self.flush()
