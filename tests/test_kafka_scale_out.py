"""Scale-out on Kafka with real daemon processes: the union of alerts equals one replay.

Six accounts' CloudTrail (real Invictus/Panther/Stratus records as templates, with brute forces,
an ``AccessDenied`` burst, a GPU launch and an enumeration spread over the accounts) is produced
to a six-partition tansu topic keyed by account.  ``trailguard run`` instances, each with its own
``state.path`` and no shared storage, consume it in one group while partitions change owner: an
instance is killed with SIGKILL mid-stream and restarted, stopped with SIGTERM and restarted, or a
third instance joins mid-stream, or a second one joins a backlog late.  Partition state moves with
the partitions through the changelog topic, so every alert id of a single ``trailguard replay`` of
the same events is delivered by some instance; a graceful hand-over (SIGTERM, scale-up, late
join) delivers none twice.  Incidents are on (the default configuration): their state is a
partition part too, so an incident opened by one owner is updated, not re-opened, by the next.
SIGKILL may repeat alerts raised after the last checkpoint (at least once; alert ids are
deterministic, so sinks de-duplicate), never lose one.
"""

from __future__ import annotations

import copy
import itertools
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from detectors.event import format_time, parse_event_time
from detectors.registry import DETECTORS
from tests.brokers import Tansu
from tests.conftest import ROOT, TRAILGUARD, DaemonProcess, wait_for
from tests.test_restart_kill9 import MINE, _attacks, _records
from tests.test_source_kafka import create_topic

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

T0 = parse_event_time("2024-06-01T00:00:00Z")
ACCOUNTS = [f"1111111111{n:02d}" for n in range(6)]
BACKGROUND = 1800
_groups = itertools.count()


def _in_account(record: dict[str, Any], account: str) -> dict[str, Any]:
    copied = copy.deepcopy(record)
    copied["recipientAccountId"] = account
    identity = copied.setdefault("userIdentity", {})
    old = identity.get("accountId")
    identity["accountId"] = account
    if old and isinstance(identity.get("arn"), str):
        identity["arn"] = identity["arn"].replace(old, account)
    return copied


def trail() -> list[dict[str, Any]]:
    """Background in every account plus the attacks, each attack group in its own account."""
    templates = _records("invictus_background.json")["Records"]
    records = []
    for k in range(BACKGROUND):
        record = _in_account(templates[k % len(templates)], ACCOUNTS[k % len(ACCOUNTS)])
        record["eventTime"] = format_time(T0 + k * 7200.0 / BACKGROUND)
        record["eventID"] = f"bg-{k:06d}"
        records.append(record)
    for record in _attacks():
        tag = record["eventID"].split("-")[0]
        account = ACCOUNTS[{"a": 0, "denied": 1, "gpu": 2, "b": 3, "enum": 4, "c": 5}[tag]]
        records.append(_in_account(record, account))
    records.sort(key=lambda r: parse_event_time(r["eventTime"]))  # time order (not string order)
    # Four hours later, one event per account: every partition's watermark passes every incident's
    # window, so the daemons close (and send the totals of) what a replay closes at its end.
    for n, account in enumerate(ACCOUNTS):
        record = _in_account(templates[n], account)
        record["eventTime"] = format_time(T0 + 4 * 3600.0 + n)
        record["eventID"] = f"tail-{n}"
        records.append(record)
    return records


def write_config(path: Path, bootstrap: str, topic: str, group: str, workdir: Path, port: int) -> None:
    detectors = {name: ({} if name in MINE else {"enabled": False}) for name in DETECTORS}
    config = {
        "sources": [{"type": "kafka", "bootstrap_servers": bootstrap, "topics": [topic], "group_id": group,
                     "session_timeout_ms": 6000, "heartbeat_interval_ms": 300, "poll_timeout_ms": 200,
                     "max_records": 100, "health_interval": 0.3, "close_timeout": 5.0,
                     "changelog_replication_factor": 1}],
        "sinks": [{"type": "file", "path": str(workdir / "alerts.jsonl")}],
        "detectors": detectors,  # incidents on (the default): incident state follows its partition
        "state": {"path": str(workdir / "state"), "checkpoint_interval": "0.2s"},
        "metrics": {"host": "127.0.0.1", "port": port},
        "logging": {"level": "info", "format": "json"},
        "shutdown": {"deadline": "15s"},
    }
    path.write_bytes(orjson.dumps(config))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Instance:
    """One ``trailguard run`` with its own directory; restartable (same directory, new process)."""

    def __init__(self, root: Path, name: str, bootstrap: str, topic: str, group: str) -> None:
        self.workdir = root / name
        self.workdir.mkdir(parents=True)
        self.config = self.workdir / "config.json"
        self.port = free_port()
        write_config(self.config, bootstrap, topic, group, self.workdir, self.port)
        self.process: DaemonProcess | None = None
        self.runs = 0

    def configure(self, source: dict[str, Any] | None = None, **sections: Any) -> Instance:
        """Change the config before the next start: ``source`` settings merge into the Kafka source,
        each of ``sections`` replaces that top-level section."""
        config = orjson.loads(self.config.read_bytes())
        config["sources"][0].update(source or {})
        config.update(sections)
        self.config.write_bytes(orjson.dumps(config))
        return self

    def start(self) -> Instance:
        self.runs += 1
        run_dir = self.workdir / f"run{self.runs}"
        run_dir.mkdir()
        self.process = DaemonProcess(self.config, run_dir, self.port)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        code = self.process.stop(sig)
        self.process = None
        return code

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        assert self.process is not None
        return self.process.metric(name, labels) or 0.0

    def alerts(self) -> list[str]:
        path = self.workdir / "alerts.jsonl"
        if not path.exists():
            return []
        return [orjson.loads(line)["id"] for line in path.read_bytes().splitlines() if line.strip()]


def replay_alerts(tmp_path: Path, records: list[dict[str, Any]]) -> list[str]:
    trail_path = tmp_path / "replay" / "trail.json"
    trail_path.parent.mkdir()
    trail_path.write_bytes(orjson.dumps({"Records": records}))
    config = tmp_path / "replay" / "config.json"
    detectors = {name: ({} if name in MINE else {"enabled": False}) for name in DETECTORS}
    config.write_bytes(orjson.dumps({"detectors": detectors, "logging": {"level": "error"}}))
    done = subprocess.run([*TRAILGUARD, "replay", "--quiet", "--config", str(config), str(trail_path)], cwd=ROOT,
                          capture_output=True, timeout=240)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return [orjson.loads(line)["id"] for line in done.stdout.splitlines() if line.strip()]


async def produce(bootstrap: str, topic: str, records: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, orjson.dumps(r), key=r["recipientAccountId"].encode())
                   for r in records]
        for future in futures:
            await future
    finally:
        await producer.stop()


def start_in_turn(*instances: Instance) -> None:
    """Start one after the other, each ready before the next (as a StatefulSet's ordered start)."""
    for instance in instances:
        instance.start()
        instance.process.wait_ready(90)  # type: ignore[union-attr]


def union(instances: list[Instance]) -> Counter[str]:
    return Counter(alert for instance in instances for alert in instance.alerts())


def wait_all(instances: list[Instance], expected: set[str], timeout: float = 120) -> None:
    wait_for(lambda: set(union(instances)) >= expected, timeout, interval=0.2, what="every expected alert")


def owned(instance: Instance) -> float:
    return instance.metric("trailguard_state_restores_total", {"origin": "changelog"})


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], set[str]]:
    records = trail()
    alerts = replay_alerts(tmp_path_factory.mktemp("replay"), records)
    # 9 incidents opened, 2 of them updated with their totals (the AccessDenied bursts): incident
    # state must follow its partition for the updates to carry these ids
    assert len(alerts) == len(set(alerts)) == 11, alerts
    return records, set(alerts)


async def setup(bootstrap: str, tmp_path: Path, count: int) -> tuple[str, list[Instance]]:
    topic = await create_topic(bootstrap, partitions=6)
    group = f"scale-{next(_groups)}"
    return topic, [Instance(tmp_path, f"i{n}", bootstrap, topic, group) for n in range(count)]


def halves(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    middle = len(records) // 2
    return records[:middle], records[middle:]


async def test_two_instances_sigkill_one_mid_stream_and_restart_it(kafka_broker: Tansu, tmp_path: Path,
                                                                  expected: Any) -> None:
    records, want = expected
    topic, (a, b) = await setup(kafka_broker.bootstrap, tmp_path, 2)
    first, second = halves(records)
    try:
        start_in_turn(a, b)
        await produce(kafka_broker.bootstrap, topic, first)
        wait_for(lambda: a.metric("trailguard_events_processed_total") + b.metric("trailguard_events_processed_total")
                 >= len(first) * 0.9, 60, what="the first half processed")
        assert a.stop(signal.SIGKILL) == -signal.SIGKILL
        await produce(kafka_broker.bootstrap, topic, second)
        time.sleep(1.0)
        a.start()
        wait_all([a, b], want)
    finally:
        for instance in (a, b):
            if instance.process is not None:
                instance.stop()
    got = union([a, b])
    assert set(got) == want, f"missing {sorted(want - set(got))}, extra {sorted(set(got) - want)}"


async def test_sigterm_restart_and_scale_up_hand_partitions_over_without_duplicates(
        kafka_broker: Tansu, tmp_path: Path, expected: Any) -> None:
    records, want = expected
    topic, (a, b, c) = await setup(kafka_broker.bootstrap, tmp_path, 3)
    thirds = [records[: len(records) // 3], records[len(records) // 3: 2 * len(records) // 3],
              records[2 * len(records) // 3:]]
    try:
        start_in_turn(a, b)
        await produce(kafka_broker.bootstrap, topic, thirds[0])
        wait_for(lambda: a.metric("trailguard_events_processed_total") + b.metric("trailguard_events_processed_total")
                 >= len(thirds[0]), 60, what="the first third processed")
        assert b.stop(signal.SIGTERM) == 0  # b's partitions go to a, with their state
        await produce(kafka_broker.bootstrap, topic, thirds[1])
        b.start()  # and come back
        c.start()  # scale-up 2 → 3 mid-stream
        for instance in (b, c):
            instance.process.wait_ready(90)  # type: ignore[union-attr]
        await produce(kafka_broker.bootstrap, topic, thirds[2])
        wait_all([a, b, c], want)
        time.sleep(1.0)
        moved = sum(owned(i) for i in (a, b, c))
    finally:
        for instance in (a, b, c):
            if instance.process is not None:
                assert instance.stop() == 0
    got = union([a, b, c])
    assert set(got) == want, f"missing {sorted(want - set(got))}"
    assert max(got.values()) == 1, f"delivered twice: {sorted(k for k, v in got.items() if v > 1)}"
    assert moved >= 1, "no partition was restored from the changelog: the test moved nothing"


async def test_a_late_joiner_on_a_backlog_causes_no_duplicates(kafka_broker: Tansu, tmp_path: Path,
                                                              expected: Any) -> None:
    records, want = expected
    topic, (a, b) = await setup(kafka_broker.bootstrap, tmp_path, 2)
    await produce(kafka_broker.bootstrap, topic, records)
    try:
        a.start()
        a.process.wait_ready()  # type: ignore[union-attr]
        wait_for(lambda: a.metric("trailguard_events_processed_total") >= 200, 60, what="a under way")
        b.start()
        b.process.wait_ready(90)  # type: ignore[union-attr]
        wait_all([a, b], want)
        time.sleep(1.0)
    finally:
        for instance in (a, b):
            if instance.process is not None:
                assert instance.stop() == 0
    got = union([a, b])
    assert set(got) == want
    assert max(got.values()) == 1, f"delivered twice: {sorted(k for k, v in got.items() if v > 1)}"


def _delivered(instances: list[Instance]) -> dict[str, list[dict[str, Any]]]:
    """Every delivered notification by id (all instances, every delivery)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for instance in instances:
        path = instance.workdir / "alerts.jsonl"
        for line in path.read_bytes().splitlines() if path.exists() else ():
            if line.strip():
                alert = orjson.loads(line)
                out.setdefault(alert["id"], []).append(alert)
    return out


async def test_three_instances_one_killed_mid_stream_repeat_nothing_but_exact_copies(
        kafka_broker: Tansu, tmp_path: Path, expected: Any) -> None:
    records, want = expected
    topic, instances = await setup(kafka_broker.bootstrap, tmp_path, 3)
    a, b, c = instances
    first, second = halves(records)
    try:
        start_in_turn(a, b, c)
        await produce(kafka_broker.bootstrap, topic, first)
        wait_for(lambda: sum(i.metric("trailguard_events_processed_total") for i in instances)
                 >= len(first) * 0.9, 60, what="the first half processed")
        assert b.stop(signal.SIGKILL) == -signal.SIGKILL  # its partitions go to a and c mid-stream
        await produce(kafka_broker.bootstrap, topic, second)
        # after the session timeout the survivors take b's partitions over from the changelog
        wait_for(lambda: sum(owned(i) for i in (a, c)) >= 1, 90, what="b's partitions restored by a survivor")
        wait_for(lambda: sum(i.metric("trailguard_events_processed_total") for i in (a, c)) >= len(second) * 0.5,
                 90, what="the survivors under way")
        b.start()  # and it comes back mid-stream: partitions move again
        b.process.wait_ready(90)  # type: ignore[union-attr]
        wait_all(instances, want)
        time.sleep(1.0)
        moved = sum(owned(i) for i in (a, c))
    finally:
        for instance in instances:
            if instance.process is not None:
                assert instance.stop() == 0
    delivered = _delivered(instances)
    assert set(delivered) == want, f"missing {sorted(want - set(delivered))}, extra {sorted(set(delivered) - want)}"
    assert moved >= 1, "no partition was restored from the changelog: the kill moved nothing"
    for alert_id, copies in delivered.items():
        # at least once after SIGKILL: a repeat is the same notification (same id, same content)
        shapes = {orjson.dumps({k: v for k, v in alert.items() if k != "detected_at"},
                               option=orjson.OPT_SORT_KEYS) for alert in copies}
        assert len(shapes) == 1, f"{alert_id} delivered {len(copies)} times with different content"
