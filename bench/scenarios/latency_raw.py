"""The latency scenario's A: a raw consumer of the same topic, so the instrument's own delay is known.

Why it exists: the latency scenario's producer (Python aiokafka, 2,000 sends/s), the broker (tansu)
and the tail thread share two cores with the daemon, and on their own they take tens of
milliseconds at the median and hundreds at the tail (measured 2026-12-01: p50 ~50 ms, p99 ~500 ms
with nothing but ``getmany`` + ``orjson.loads`` consuming).  A trailguard figure means something
only next to that floor, as every other scenario's B/A does.

:class:`RawConsumer` has the shape of :class:`bench.scenarios.kafka.Daemon` that the latency run
uses: a subprocess (this module run as a script) consumes the topic with one consumer-group member,
``orjson.loads`` every message and, for each injected StopLogging record, appends a line naming its
event id to the same "alert" file the tail thread watches; ``processed()`` reads its count.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

__all__ = ["RawConsumer"]


class RawConsumer:
    """``getmany`` + ``orjson.loads`` in a subprocess; writes ``{"event_ids": [...]}`` per injection."""

    #: No operator endpoint: the latency run reads stage histograms only from trailguard.
    port = None

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        source = config["sources"][0]
        self._count = workdir / "raw-consumer.count"
        self._stderr_path = workdir / "raw-consumer.stderr"
        self._stderr = self._stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.scenarios.latency_raw", source["bootstrap_servers"], source["topics"][0],
             str(config["sinks"][0]["path"]), str(self._count)],
            cwd=Path(__file__).resolve().parents[2], stderr=self._stderr)

    def processed(self) -> float | None:
        """Messages consumed so far (``None`` before the first count is written)."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"raw consumer exited with {self.proc.returncode}: {self.stderr_tail()}")
        try:
            return float(self._count.read_bytes() or 0)
        except (OSError, ValueError):
            return None

    def stderr_tail(self) -> str:
        """The consumer's last error output (for error messages)."""
        return self._stderr_path.read_bytes()[-3000:].decode(errors="replace")

    def stop(self) -> None:
        """Stop the consumer (it holds nothing worth draining)."""
        self.proc.kill()
        self.proc.wait()
        self._stderr.close()


async def _consume(bootstrap: str, topic: str, sink: str, count_path: str) -> None:
    from aiokafka import AIOKafkaConsumer

    # the daemon's own consumer settings (daemon/sources/kafka.py defaults), nothing else
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"raw-latency-{os.getpid()}",
                                auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=100)
    await consumer.start()
    consumed = 0
    with open(sink, "ab", buffering=0) as out:
        while True:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=500)
            for messages in fetched.values():
                for message in messages:
                    record = orjson.loads(message.value)
                    consumed += 1
                    if record.get("eventName") == "StopLogging":
                        out.write(orjson.dumps({"event_ids": [record["eventID"]]}) + b"\n")
            temporary = count_path + ".tmp"
            with open(temporary, "w") as handle:
                handle.write(str(consumed))
            os.replace(temporary, count_path)


if __name__ == "__main__":
    asyncio.run(_consume(*sys.argv[1:5]))
