"""The one backoff used wherever trailguard retries: capped exponential delays with jitter, an
optional server-given floor (HTTP ``Retry-After``), and a wait that ends at once on shutdown.

Why not stamina or tenacity: trailguard's retry loops are not "call this function again" loops —
a source keeps receiving forever and backs off between failed receives, the dispatcher keeps a
batch and re-sends it — and every wait must end the moment shutdown begins (an ``asyncio.Event``),
inside the shutdown deadline.  stamina's sleeps can only be cancelled, and both libraries would
wrap calls that are not the unit of retry here; the policy itself is three lines, kept here once.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

__all__ = ["Backoff", "wait_or_stop"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """``initial · 2^(attempt-1)`` capped at ``maximum``, with jitter.

    ``jitter="full"`` draws uniformly from ``[0, ceiling]`` (AWS's "full jitter": best spread when
    many clients retry one endpoint); ``"equal"`` from ``[ceiling/2, ceiling]`` (never retries
    almost at once — for reconnect loops against one broker or queue).
    """

    initial: float = 0.25
    maximum: float = 30.0
    jitter: str = "equal"

    def delay(self, attempt: int, retry_after: float | None = None, max_retry_after: float = 600.0) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts failures, from 1)."""
        ceiling = min(self.maximum, self.initial * 2 ** min(max(attempt, 1) - 1, 30))
        low = 0.0 if self.jitter == "full" else ceiling / 2
        delay = random.uniform(low, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, max_retry_after))
        return delay


async def wait_or_stop(delay: float, stop: asyncio.Event) -> bool:
    """Sleep ``delay`` seconds unless ``stop`` is set first; ``True`` when stopped."""
    try:
        await asyncio.wait_for(stop.wait(), delay)
    except TimeoutError:
        return False
    return True
