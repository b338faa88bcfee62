"""Detector state memory: resident memory per tracked key, and memory under a key spray.

Why it exists: an attacker chooses the principals and addresses detectors group by, so what each
tracked key costs, and that memory stops growing at the caps whatever arrives, are properties to
measure and keep, not to assume.  Two measurements, each in a fresh child process (so that one
measurement's garbage never counts in another's), reading ``VmRSS`` from ``/proc/self/status``:

* **bytes per key** — RSS before and after ``impossible_travel`` and ``access_denied_burst`` track
  10,000 / 100,000 / 1,000,000 distinct principals (one observation each, all inside the window,
  ``max_keys`` raised to the key count so nothing is evicted);
* **spray** — 10,000,000 events from as many distinct source addresses, with the detectors' default
  caps: half are failed console sign-ins (``console_login_bruteforce``, keyed by address), half
  authorization failures by as many distinct principals (``impossible_travel``,
  ``access_denied_burst``); RSS is sampled at 1M, 5M and 10M events and must stay flat.

``--quick`` runs a tenth of every size.  Detectors are measured only if registered (the scenario
names them, so a detector added later is measured as soon as ``detectors/registry.py`` has it).
Run alone with ``python -m bench.run --only state``; a child is ``python -m bench.scenarios.state
child <json>``.
"""

from __future__ import annotations

import gc
import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

import orjson

ROOT = Path(__file__).resolve().parents[2]
#: Detectors whose per-key cost is measured (those registered are; the others are skipped).
PER_KEY_DETECTORS: Final = ("impossible_travel", "access_denied_burst")
SPRAY_DETECTORS: Final = ("console_login_bruteforce", "impossible_travel", "access_denied_burst")
_T0: Final = 1_717_200_000.0
_FIRST_IP: Final = int(ipaddress.ip_address("11.0.0.0"))
_BATCH: Final = 2000


def rss_bytes() -> int:
    """This process's resident set size now (not its peak)."""
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class _FakeGeo:
    """A deterministic stand-in for the GeoIP database: every address is public and somewhere."""

    def geo(self, ip: str) -> Any:
        from detectors.base import GeoInfo

        n = hash(ip)
        return GeoInfo(latitude=(n % 17_000) / 100 - 85, longitude=(n // 17_000 % 36_000) / 100 - 180)

    def network_kind(self, ip: str | None) -> str:
        return "public" if ip else "missing"


def _address(i: int) -> str:
    n = _FIRST_IP + i
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def _record(i: int, *, console: bool) -> dict[str, Any]:
    """A failed console sign-in (hidden user name) or an ``AccessDenied`` call, from address ``i``."""
    ip = _address(i)
    if console:
        return {
            "eventTime": "2024-06-01T00:00:00Z", "eventName": "ConsoleLogin", "eventSource": "signin.amazonaws.com",
            "eventID": f"c-{i}", "sourceIPAddress": ip, "recipientAccountId": "111122223333",
            "responseElements": {"ConsoleLogin": "Failure"},
            "userIdentity": {"type": "IAMUser", "accountId": "111122223333",
                             "userName": "HIDDEN_DUE_TO_SECURITY_REASONS"},
        }
    return {
        "eventTime": "2024-06-01T00:00:00Z", "eventName": "ListBuckets", "eventSource": "s3.amazonaws.com",
        "eventID": f"a-{i}", "sourceIPAddress": ip, "recipientAccountId": "111122223333",
        "errorCode": "AccessDenied",
        "userIdentity": {"type": "IAMUser", "accountId": "111122223333",
                         "arn": f"arn:aws:iam::111122223333:user/u{i}"},
    }


def _engine(names: list[str], settings: dict[str, dict[str, Any]]) -> Any:
    from detectors.base import DetectorContext
    from detectors.engine import DetectionEngine
    from detectors.registry import detector_class

    context = DetectorContext(enricher=_FakeGeo())
    detectors = [detector_class(n)(detector_class(n).Config.model_validate(settings.get(n, {})), context)
                 for n in names]
    return DetectionEngine(detectors, allowed_lateness=60.0)


def _feed(engine: Any, start: int, stop: int, step: float, console_every: int) -> None:
    """Events ``start … stop-1`` (address and principal ``i``, time ``_T0 + i × step``) in batches.

    Each event's address kind is set to ``public`` (what ``classify_source_ip`` returns for these
    addresses): classifying a never-seen address costs ~12 µs of CPU, which this scenario does not
    measure and which would triple its run time.
    """
    from detectors.event import IP_PUBLIC, Event

    for begin in range(start, stop, _BATCH):
        batch = []
        for i in range(begin, min(begin + _BATCH, stop)):
            event = Event(_record(i, console=console_every > 0 and i % console_every == 0))
            event.time = _T0 + i * step
            event._ip_kind = IP_PUBLIC
            batch.append(event)
        engine.process_many(batch)


def child_per_key(name: str, keys: int) -> dict[str, Any]:
    """RSS before/after one detector tracks ``keys`` principals (one observation each)."""
    engine = _engine([name], {name: {"max_keys": keys}})
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    _feed(engine, 0, keys, 300.0 / keys, console_every=0)  # all within 5 minutes: nothing expires
    seconds = time.perf_counter() - started
    gc.collect()
    after = rss_bytes()
    held = engine.detectors[0].state_keys()
    return {"rss_before": before, "rss_after": after, "keys_held": held, "seconds": round(seconds, 2)}


def child_spray(names: list[str], total: int, samples: list[int]) -> dict[str, Any]:
    """RSS at each of ``samples`` events of a distinct-address spray through detectors at default caps."""
    engine = _engine(names, {})
    gc.collect()
    points = [{"events": 0, "rss": rss_bytes()}]
    started = time.perf_counter()
    done = 0
    for mark in samples:
        _feed(engine, done, mark, 0.001, console_every=2)  # 1,000 events/s of event time
        done = mark
        gc.collect()
        points.append({"events": mark, "rss": rss_bytes(),
                       "keys": {d.name: d.state_keys() for d in engine.detectors}})
    return {"points": points, "seconds": round(time.perf_counter() - started, 1), "total": total}


def _start_child(task: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bench.scenarios.state", "child", orjson.dumps(task).decode()],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONHASHSEED": "0"})


def _result(child: subprocess.Popen[bytes]) -> dict[str, Any]:
    out, err = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(err.decode()[-2000:])
    return orjson.loads(out.splitlines()[-1])


def _registered(names: tuple[str, ...]) -> list[str]:
    from detectors.registry import DETECTORS

    return [n for n in names if n in DETECTORS]


def run(quick: bool, reps: int) -> list[dict[str, Any]]:
    """Rows: bytes per key at three sizes per detector, and RSS along a distinct-address spray."""
    scale = 10 if quick else 1
    rows: list[dict[str, Any]] = []
    total = 10_000_000 // scale
    samples = [total // 10, total // 2, total]
    sprayed = _registered(SPRAY_DETECTORS)
    # The spray (the long one) runs alongside the per-key children, one of those at a time.
    spray = _start_child({"task": "spray", "names": sprayed, "total": total, "samples": samples})
    try:
        for name in _registered(PER_KEY_DETECTORS):
            for keys in (10_000 // scale, 100_000 // scale, 1_000_000 // scale):
                found = _result(_start_child({"task": "per_key", "name": name, "keys": keys}))
                grown = found["rss_after"] - found["rss_before"]
                per_key = grown / keys
                rows.append({
                    "name": f"state {name} {keys:,} keys", "detector": name, "keys": keys,
                    "keys_held": found["keys_held"], "rss_before_mb": round(found["rss_before"] / 2**20, 1),
                    "rss_after_mb": round(found["rss_after"] / 2**20, 1), "bytes_per_key": round(per_key),
                    "seconds": found["seconds"],
                    "note": f"{per_key:,.0f} B/key (RSS +{grown / 2**20:,.1f} MB)",
                })
        found = _result(spray)
    finally:
        if spray.poll() is None:
            spray.kill()
            spray.wait()
    points = found["points"]
    for point in points[1:]:
        rows.append({
            "name": f"state spray {point['events']:,} addresses", "detectors": sprayed,
            "events": point["events"], "rss_mb": round(point["rss"] / 2**20, 1),
            "rss_start_mb": round(points[0]["rss"] / 2**20, 1), "keys": point["keys"],
            "note": f"RSS {point['rss'] / 2**20:,.0f} MB (start {points[0]['rss'] / 2**20:,.0f} MB); "
                    f"keys {sum(point['keys'].values()):,}",
        })
    first, last = points[1]["rss"], points[-1]["rss"]
    rows.append({"name": "state spray growth after first sample", "growth_mb": round((last - first) / 2**20, 1),
                 "seconds": found["seconds"],
                 "note": f"{(last - first) / 2**20:+.1f} MB from {samples[0]:,} to {total:,} events: flat at the caps"})
    return rows


def _child_main(argument: str) -> None:
    task = orjson.loads(argument)
    # Every RSS sample follows an explicit gc.collect(), so automatic collection while feeding only
    # costs time (a quarter of it with millions of live objects), not accuracy.
    gc.disable()
    if task["task"] == "per_key":
        out = child_per_key(task["name"], task["keys"])
    else:
        out = child_spray(task["names"], task["total"], task["samples"])
    sys.stdout.write(orjson.dumps(out).decode() + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        _child_main(sys.argv[2])
    else:
        sys.exit("usage: python -m bench.scenarios.state child <json>  (run the scenario through bench.run)")
