"""Repartitioning with real daemon processes on tansu: the union of alerts equals one replay.

The scale-out trail of :mod:`tests.test_kafka_scale_out` (six accounts of real CloudTrail records
with brute forces, an ``AccessDenied`` burst and a GPU launch) plus what a partition key by account
can never see whole: one IP trying one user in each of six accounts (per-IP brute force across
accounts), one role session collecting ``AccessDenied`` in six accounts (a cross-account spray, per
principal), and a seventh account that goes silent half-way while the others go on
(``cloudtrail_silence``).  It is produced keyed by account, by principal, and round-robin
(``key=None``) to a six-partition topic; 1 and 2 ``trailguard run`` instances (each its own
``state.path``, no shared storage, ``input_key`` saying how the producer keyed) consume it.  Every
alert id of a single ``trailguard replay`` of the same events is delivered, none twice, and none
else — in particular no false silence when an account's events are spread over partitions.  The
control run with ``repartition: off`` on round-robin input shows what the test would catch.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from detectors.event import Event, format_time, parse_event_time
from detectors.registry import DETECTORS
from tests.brokers import Tansu
from tests.conftest import wait_for
from tests.test_kafka_scale_out import ACCOUNTS, T0, Instance, start_in_turn, trail, union
from tests.test_restart_kill9 import RECON_APIS, _records
from tests.test_source_kafka import create_topic

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

ENABLED = ("console_login_bruteforce", "access_denied_burst", "run_instances_spike", "cloudtrail_silence")
SETTINGS: dict[str, dict[str, Any]] = {"cloudtrail_silence": {"quiet_period": "20m", "min_events": 50}}
SILENT = "111111111199"
SPRAY_IP = "198.18.7.99"
_groups = itertools.count()


def _at(record: dict[str, Any], t: float, event_id: str) -> dict[str, Any]:
    copied = copy.deepcopy(record)
    copied["eventTime"] = format_time(T0 + t)
    copied["eventID"] = event_id
    return copied


def _ip_spray() -> list[dict[str, Any]]:
    """One address, one failed console login per account (six users): only the per-IP key sees it."""
    failure = _records("console_logins.json")["panther_failure"][0]
    out = []
    for n, account in enumerate(ACCOUNTS):
        record = _at(failure, 2400 + 20 * n, f"ipspray-{n}")
        record["sourceIPAddress"] = SPRAY_IP
        record["recipientAccountId"] = account
        record["userIdentity"] = {"type": "IAMUser", "accountId": account, "userName": f"user{n}",
                                  "arn": f"arn:aws:iam::{account}:user/user{n}"}
        out.append(record)
    return out


def _cross_account_spray() -> list[dict[str, Any]]:
    """One role session enumerating six accounts, denied everywhere: only the principal key sees it."""
    template = _records("invictus_get_password_data.json")["Records"][0]
    apis = RECON_APIS
    out = []
    for i in range(12):
        record = _at(template, 4800 + 4 * i, f"xspray-{i}")
        record["eventSource"], record["eventName"] = apis[i % len(apis)]
        record["errorCode"] = "AccessDenied"
        record["recipientAccountId"] = ACCOUNTS[i % len(ACCOUNTS)]
        record["userIdentity"] = {"type": "AssumedRole", "accountId": ACCOUNTS[0], "principalId": "AROAXSPRAY:s",
                                  "arn": f"arn:aws:sts::{ACCOUNTS[0]}:assumed-role/scanner/s"}
        out.append(record)
    return out


def _silent_account() -> list[dict[str, Any]]:
    """An account that sends steadily for the first 50 minutes of the two hours, then nothing."""
    templates = _records("invictus_background.json")["Records"]
    out = []
    for k in range(150):
        record = _at(templates[k % len(templates)], k * 20.0, f"quiet-{k:04d}")
        record["recipientAccountId"] = SILENT
        record.setdefault("userIdentity", {})["accountId"] = SILENT
        out.append(record)
    return out


def records() -> list[dict[str, Any]]:
    # without the scale-out trail's tail (one event per account four hours later, there to close
    # incidents): this module compares per-event alerts, and the tail would make the spray accounts
    # really fall silent while the organisation goes on, which a replay ending at the tail cannot see
    out = [*(r for r in trail() if not r["eventID"].startswith("tail-")), *_ip_spray(), *_cross_account_spray(),
           *_silent_account()]
    out.sort(key=lambda r: parse_event_time(r["eventTime"]))
    return out


def _detectors() -> dict[str, Any]:
    return {name: ({**SETTINGS.get(name, {})} if name in ENABLED else {"enabled": False}) for name in DETECTORS}


class RepartitionInstance(Instance):
    """A scale-out instance with this module's detectors and the source's keying settings."""

    def __init__(self, root: Path, name: str, bootstrap: str, topic: str, group: str, **source: Any) -> None:
        super().__init__(root, name, bootstrap, topic, group)
        # per-event alerts, as the replay compared
        self.configure(source, detectors=_detectors(), delivery={"incidents": {"enabled": False}})


def _key(record: dict[str, Any], keying: str) -> bytes | None:
    if keying == "account":
        return record["recipientAccountId"].encode()
    if keying == "principal":
        return Event(record, "producer").principal.encode()
    return None


async def produce(bootstrap: str, topic: str, batch: list[dict[str, Any]], keying: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, orjson.dumps(r), key=_key(r, keying)) for r in batch]
        for future in futures:
            await future
    finally:
        await producer.stop()


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], dict[str, str]]:
    trail_records = records()
    ids = _replay(tmp_path_factory.mktemp("replay"), trail_records)
    assert len(ids) == len(set(ids)), ids
    return trail_records, ids


def _replay(root: Path, trail_records: list[dict[str, Any]]) -> dict[str, str]:
    """Alert id → detector of one single-process replay with this module's detector settings."""
    import subprocess

    from tests.conftest import ROOT, TRAILGUARD

    path = root / "trail.json"
    path.write_bytes(orjson.dumps({"Records": trail_records}))
    config = root / "config.json"
    config.write_bytes(orjson.dumps({"detectors": _detectors(), "delivery": {"incidents": {"enabled": False}},
                                     "logging": {"level": "error"}}))
    done = subprocess.run([*TRAILGUARD, "replay", "--quiet", "--config", str(config), str(path)], cwd=ROOT,
                          capture_output=True, timeout=240)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    alerts = [orjson.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return {a["id"]: a["detector"] for a in alerts}


def test_the_replay_sees_what_only_other_keys_can_see(expected: Any) -> None:
    _, ids = expected
    detectors = Counter(ids.values())
    assert detectors["cloudtrail_silence"] == 1, detectors  # the silent account, and no other
    assert detectors["console_login_bruteforce"] >= 4, detectors  # three brute forces + the per-IP spray
    assert detectors["access_denied_burst"] >= 2, detectors  # the burst + the cross-account spray


def _alert_details(instances: list[Instance]) -> list[dict[str, Any]]:
    return [orjson.loads(line) for i in instances if (i.workdir / "alerts.jsonl").exists()
            for line in (i.workdir / "alerts.jsonl").read_bytes().splitlines() if line.strip()]


def _forwarded(instances: list[RepartitionInstance]) -> float:
    return sum(i.metric("trailguard_repartition_produced_total", {"key": key}) for i in instances
               for key in ("account", "principal", "source_ip", "organisation"))


def _processed(instances: list[RepartitionInstance]) -> float:
    return sum(i.metric("trailguard_events_processed_total") + i.metric("trailguard_events_duplicate_total")
               for i in instances)


async def _run(tmp_path: Path, kafka_broker: Tansu, trail_records: list[dict[str, Any]], keying: str,
               count: int, until: set[str] | None = None,
               **source: Any) -> tuple[list[RepartitionInstance], Counter[str]]:
    bootstrap = kafka_broker.bootstrap
    topic = await create_topic(bootstrap, partitions=6)
    group = f"repart-{next(_groups)}"
    instances = [RepartitionInstance(tmp_path, f"i{n}", bootstrap, topic, group, **source) for n in range(count)]
    try:
        start_in_turn(*instances)
        await produce(bootstrap, topic, trail_records, keying)
        # Every record is processed once on its input partition and once per route it was forwarded
        # to: wait until all of it is processed, then until no alert arrives for a few seconds.
        wait_for(lambda: _processed(instances) >= len(trail_records) + _forwarded(instances), 180, interval=0.5,
                 what="the input and the internal topics processed")
        # internal partitions release held events once every input partition is idle (2 s here)
        if until is not None:
            with contextlib.suppress(AssertionError):  # the test's assertion names what is missing
                wait_for(lambda: set(union(instances)) >= until, 120, interval=0.5,  # type: ignore[arg-type]
                         what="every alert of the replay")
        time.sleep(4 if until is not None else 15)  # anything extra (or, off, anything at all) shows
    finally:
        for instance in instances:
            if instance.process is not None:
                assert instance.stop(signal.SIGTERM) == 0
    return instances, union(instances)  # type: ignore[arg-type]


@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("keying", ["account", "principal", "none"])
async def test_alerts_equal_one_replay_whatever_the_producer_keys_by(
        kafka_broker: Tansu, tmp_path: Path, expected: Any, keying: str, count: int) -> None:
    trail_records, want = expected
    instances, got = await _run(tmp_path, kafka_broker, trail_records, keying, count, set(want),
                                input_key=keying, repartition_idle_after=2.0)
    missing = {a: want[a] for a in set(want) - set(got)}
    extra = [(a["detector"], a.get("summary", "")[:120]) for a in _alert_details(instances)  # type: ignore[arg-type]
             if a["id"] not in want]
    assert not missing and not extra, f"missing {missing}, extra {extra}"
    assert max(got.values()) == 1, f"delivered twice: {sorted(k for k, v in got.items() if v > 1)}"


async def test_without_repartitioning_round_robin_input_misses_and_invents_alerts(
        kafka_broker: Tansu, tmp_path: Path, expected: Any) -> None:
    """The control: the same run with ``repartition: off`` is wrong, so the test above can fail."""
    trail_records, want = expected
    _, got = await _run(tmp_path, kafka_broker, trail_records, "none", 2, input_key="none", repartition="off")
    wrong = set(want) ^ set(got)
    assert wrong, "repartition: off gave the replay's alerts: the trail does not exercise repartitioning"
