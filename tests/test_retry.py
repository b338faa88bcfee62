"""The one backoff helper: capped exponential delays with jitter, a Retry-After floor, and a wait
that ends as soon as shutdown begins."""

from __future__ import annotations

import asyncio
import time

from daemon.retry import Backoff, wait_or_stop


def test_delays_grow_exponentially_within_the_jitter_band_and_cap() -> None:
    equal = Backoff(initial=0.5, maximum=8.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0), (500, 8.0)]:
        delays = [equal.delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), attempt
    full = [Backoff(initial=1.0, maximum=4.0, jitter="full").delay(3) for _ in range(500)]
    assert min(full) < 1.0 and max(full) <= 4.0


def test_retry_after_is_a_floor_with_its_own_cap() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0)
    assert backoff.delay(1, retry_after=20.0) == 20.0
    assert backoff.delay(1, retry_after=5000.0, max_retry_after=600.0) == 600.0


async def test_wait_ends_at_once_when_stopping() -> None:
    stop = asyncio.Event()
    assert await wait_or_stop(0.01, stop) is False
    asyncio.get_running_loop().call_later(0.05, stop.set)
    started = time.monotonic()
    assert await wait_or_stop(30.0, stop) is True
    assert time.monotonic() - started < 5.0
