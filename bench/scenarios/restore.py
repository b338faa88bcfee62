"""Restore time of one partition's state from its changelog topic (tansu), at 1 M keys.

Why it exists: when a partition changes owner, detection of that partition waits until its new
owner has read the state back (``/readyz`` is false meanwhile), so restore time bounds how long a
rebalance stalls detection.  The state is a dedupe record of ``keys`` event ids (the largest part
at the default caps) written once by :class:`daemon.changelog.log.StateChangelog` in its default
512 KiB chunks.  A is reading every record of the changelog partition with a bare consumer; B is
trailguard's restore (read, keep latest per key, assemble, verify the checksum, decode, load the
dedupe record), without the local cache.  ``warm_restore_seconds`` is the same restore by an
instance that kept a standby replica of the partition (``standby_replicas: 1``, caught up before
the take-over): it reads only the records written since, then assembles and decodes the same state.
``--quick`` uses 100,000 keys.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from daemon.changelog.log import StateChangelog
from daemon.changelog.producer import changelog_topic
from daemon.dedupe import Deduplicator
from daemon.metrics import Metrics

_GROUP = "bench-restore"
_TOPIC = "cloudtrail"


def _dedupe(keys: int) -> Deduplicator:
    dedupe = Deduplicator(horizon=10 * 86400, max_ids=keys)
    for n in range(keys):
        dedupe.seen(f"{n:08x}-5c1e-4b7d-9a3f-bench000000", 1_717_200_000.0 + n * 0.001)
    return dedupe


def _log(bootstrap: str, standby: int = 0) -> StateChangelog:
    return StateChangelog({"bootstrap_servers": bootstrap}, group_id=_GROUP, replication_factor=1,
                          chunk_bytes=512 << 10, timeout=120.0, metrics=Metrics(), standby_replicas=standby)


async def _write(bootstrap: str, keys: int) -> tuple[int, float]:
    log = _log(bootstrap)
    try:
        await log.ensure_topic(_TOPIC, 2)  # partition 1: owned by the standby instance
        encoded = log.encode(f"{_TOPIC}/0", {"dedupe": _dedupe(keys).snapshot()})
        started = time.perf_counter()
        await log.write(f"{_TOPIC}/0", encoded)
        return len(encoded.body), time.perf_counter() - started
    finally:
        await log.stop()


async def _raw_read(bootstrap: str) -> float:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20,
                                max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20)
    await consumer.start()
    try:
        started = time.perf_counter()
        tp = TopicPartition(changelog_topic(_GROUP, _TOPIC), 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, 0)
        position = 0
        while position < end:
            messages = (await consumer.getmany(tp, timeout_ms=500)).get(tp, [])
            if messages:
                position = messages[-1].offset + 1
        return time.perf_counter() - started
    finally:
        await consumer.stop()


async def _restore(bootstrap: str, keys: int) -> float:
    log = _log(bootstrap)
    try:
        started = time.perf_counter()
        saved, origin, _ = await log.restore(f"{_TOPIC}/0", None)
        dedupe = Deduplicator(horizon=10 * 86400, max_ids=keys)
        assert saved is not None and origin == "changelog"
        dedupe.restore(saved["dedupe"])
        assert len(dedupe) == keys
        return time.perf_counter() - started
    finally:
        await log.stop()


async def _warm_restore(bootstrap: str, keys: int) -> float:
    log = _log(bootstrap, standby=1)
    try:
        await log.ensure_topic(_TOPIC, 2)
        await log.restore(f"{_TOPIC}/1", None)  # owns partition 1, so keeps partition 0 warm
        await log.settle({f"{_TOPIC}/1"})
        assert log.standby is not None
        end = await log.recovery.end_offset(f"{_TOPIC}/0")
        async with asyncio.timeout(300):
            while (copy := log.standby._copies.get(f"{_TOPIC}/0")) is None or copy.position < end:
                await asyncio.sleep(0.05)
        started = time.perf_counter()
        saved, origin, _ = await log.restore(f"{_TOPIC}/0", None)
        dedupe = Deduplicator(horizon=10 * 86400, max_ids=keys)
        assert saved is not None and origin == "standby", origin
        dedupe.restore(saved["dedupe"])
        assert len(dedupe) == keys
        return time.perf_counter() - started
    finally:
        await log.stop()


def run(quick: bool, reps: int, keys: int | None = None) -> list[dict[str, Any]]:
    """One row: restore seconds for a partition of ``keys`` dedupe ids (A: raw read, B: restore)."""
    from tests.brokers import Tansu

    count = keys or (100_000 if quick else 1_000_000)
    with tempfile.TemporaryDirectory(prefix="tg-bench-restore-") as tmp:
        broker = Tansu(log_dir=Path(tmp)).start()
        try:
            size, write_seconds = asyncio.run(_write(broker.bootstrap, count))
            raw = sorted(asyncio.run(_raw_read(broker.bootstrap)) for _ in range(max(reps, 1)))
            restore = sorted(asyncio.run(_restore(broker.bootstrap, count)) for _ in range(max(reps, 1)))
            warm = sorted(asyncio.run(_warm_restore(broker.bootstrap, count)) for _ in range(max(reps, 1)))
        finally:
            broker.stop()
    a, b, w = raw[len(raw) // 2], restore[len(restore) // 2], warm[len(warm) // 2]
    return [{"name": f"restore ({count:,} keys)", "keys": count, "state_mb": round(size / 2**20, 1),
             "write_seconds": round(write_seconds, 3), "raw_read_seconds": round(a, 3),
             "restore_seconds": round(b, 3), "warm_restore_seconds": round(w, 3),
             "ratio": round(a / b, 3) if b else None,
             "note": f"restore {b:.2f}s for {size / 2**20:.1f} MB (raw read {a:.2f}s, write {write_seconds:.2f}s); "
                     f"from a warm standby {w:.2f}s"}]
