"""The per-sink spool: order, accounting, persistence, crash recovery, compaction, alert round trip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon.delivery.spool import (
    DeadLetterFile,
    MemorySpool,
    Spool,
    SqliteSpool,
    alert_from_dict,
    decode_alert,
    encode_alert,
)
from detectors.alert import Alert


def make_alert(n: int) -> Alert:
    return Alert(detector="boom", title=f"t{n}", severity="medium", time=1_700_000_000.123 + n, summary="s",
                 account_id="1", region="r", principal="p", source_ips=["1.2.3.4"], event_ids=[f"e{n}"],
                 evidence={"k": [1, 2]}, tags=["x"], rule_id="r1", runbook="https://rb", entity="ent")


@pytest.fixture(params=["sqlite", "memory"])
async def spool(request: pytest.FixtureRequest, tmp_path: Path):
    store: Spool = SqliteSpool(tmp_path / "s.spool.sqlite") if request.param == "sqlite" else MemorySpool()
    await store.open()
    yield store
    await store.close()


async def test_fifo_order_accounting_and_removal(spool: Spool) -> None:
    await spool.append([(f"id{i}", b"x" * (i + 1)) for i in range(5)])
    await spool.append([("id5", b"y" * 10)])
    assert (spool.depth, spool.size) == (6, 1 + 2 + 3 + 4 + 5 + 10)
    head = await spool.peek(3)
    assert [e.alert_id for e in head] == ["id0", "id1", "id2"]
    await spool.remove_through(head[1].seq)
    assert (spool.depth, spool.size) == (4, 3 + 4 + 5 + 10)
    assert [e.alert_id for e in await spool.peek(10)] == ["id2", "id3", "id4", "id5"]
    await spool.flush()


async def test_sqlite_spool_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "a.spool.sqlite"
    first = SqliteSpool(path)
    assert await first.open() == []
    await first.append([("a", b"1"), ("b", b"22"), ("c", b"333")])
    await first.remove_through((await first.peek(1))[0].seq)
    await first.close()
    second = SqliteSpool(path)
    assert await second.open() == ["b", "c"]
    assert (second.depth, second.size) == (2, 5)
    await second.append([("d", b"4")])
    assert [e.alert_id for e in await second.peek(10)] == ["b", "c", "d"], "order kept, seq keeps growing"
    await second.close()


async def test_unflushed_appends_survive_an_unclean_exit(tmp_path: Path) -> None:
    """No close, no flush: the WAL commit is in the OS already (a process crash loses nothing)."""
    path = tmp_path / "c.spool.sqlite"
    first = SqliteSpool(path)
    await first.open()
    await first.append([("a", b"1"), ("b", b"2")])
    first._executor.shutdown(wait=True)  # abandon the connection without a checkpoint
    second = SqliteSpool(path)
    assert await second.open() == ["a", "b"]
    await second.close()


async def test_corrupt_spool_is_moved_aside_and_logged(tmp_path: Path) -> None:
    path = tmp_path / "bad.spool.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    spool = SqliteSpool(path)
    with capture_logs() as logs:
        assert await spool.open() == []
    await spool.append([("a", b"1")])
    await spool.close()
    assert [e for e in logs if e["log_level"] == "error" and "moved aside" in e["event"]]
    assert len(list(tmp_path.glob("bad.spool.sqlite.corrupt-*"))) == 1


async def test_drained_spool_gives_space_back(tmp_path: Path) -> None:
    path = tmp_path / "big.spool.sqlite"
    spool = SqliteSpool(path)
    await spool.open()
    for _ in range(20):
        await spool.append([(f"id{i}", os.urandom(2000)) for i in range(50)])
    await spool.flush()
    full = path.stat().st_size
    last = (await spool.peek(10_000))[-1].seq
    await spool.remove_through(last)
    await spool.close()
    assert spool.depth == 0 and spool.size == 0
    assert path.stat().st_size < full / 4, (full, path.stat().st_size)
    assert not Path(str(path) + "-wal").exists() or Path(str(path) + "-wal").stat().st_size <= 4 << 20


def test_alert_round_trips_through_spool_and_wire_form() -> None:
    alert = make_alert(1)
    back = decode_alert(encode_alert(alert))
    assert back == alert, "exact, including entity and float times"
    wire = alert_from_dict(alert.to_dict(), entity="ent")
    assert wire.to_dict() == alert.to_dict() and wire.id == alert.id and wire.entity == "ent"


async def test_dead_letter_file_appends_json_lines(tmp_path: Path) -> None:
    dead = DeadLetterFile(tmp_path / "d" / "x.dead.jsonl")
    assert await dead.keep("x", {"id": "a"}, "HTTP 400")
    assert await dead.keep("x", {"id": "b"}, "HTTP 410")
    lines = (tmp_path / "d" / "x.dead.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"reason":"HTTP 400"' in lines[0]
    assert not await DeadLetterFile(None).keep("x", {"id": "c"}, "r")
