"""How a sink tells the dispatcher what went wrong: retry later, or never.

The dispatcher retries a :class:`TransientError` (or any exception it does not know) with capped,
jittered backoff, honouring ``retry_after``; a :class:`PermanentError` is not retried — that alert
goes to the sink's dead-letter file.  ``delivered`` says how many alerts at the front of the batch
did arrive before the failure, so they are not sent twice.  Messages never contain secrets: sinks
build them from redacted URLs and status codes only.
"""

from __future__ import annotations

__all__ = ["DeliveryError", "PermanentError", "TransientError"]


class DeliveryError(Exception):
    """A delivery failed; ``delivered`` alerts at the head of the batch made it before the failure."""

    transient: bool = True

    def __init__(self, message: str, *, delivered: int = 0, retry_after: float | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.delivered = delivered
        self.retry_after = retry_after
        self.status = status


class TransientError(DeliveryError):
    """Worth retrying: timeouts, refused connections, 408/429/5xx, throttling."""

    transient = True


class PermanentError(DeliveryError):
    """Retrying cannot help (4xx other than 408/429, a rejected message): dead-letter the alert."""

    transient = False
