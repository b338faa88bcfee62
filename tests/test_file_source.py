"""The file source over real trails: directories, globs, follow mode, stdin pipes and resume."""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from daemon.deadletter import InvalidReporter
from daemon.decode import LINE_CHUNK_BYTES, decode_lines
from daemon.metrics import Metrics
from daemon.sources.base import SourceBatch
from daemon.sources.file import FilePosition, FileSource, FileSourceConfig, validate_paths

DATA = Path(__file__).parent / "data" / "decode"
S3 = DATA / "s3"
LINES = (DATA / "lines.jsonl").read_bytes().splitlines(keepends=True)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def invalid(metrics: Metrics, tmp_path: Path) -> InvalidReporter:
    return InvalidReporter(metrics, tmp_path / "dead-letter.jsonl")


def count(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("trailguard_events_invalid_total", {"reason": reason}) or 0.0


def source(invalid: InvalidReporter, paths: list[str], **options: Any) -> FileSource:
    return FileSource(FileSourceConfig(paths=paths, **options), invalid)


async def collect(src: FileSource, timeout: float = 10) -> list[SourceBatch]:
    async def run() -> list[SourceBatch]:
        await src.start()
        return [batch async for batch in src.batches()]

    return await asyncio.wait_for(run(), timeout)


def names(batches: list[SourceBatch]) -> list[str]:
    return [record["eventID"] for batch in batches for record in batch.records]


async def wait_for(condition: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def make_trail(root: Path) -> list[Path]:
    """Three real files in an S3-like tree: gzip Records, plain Records, JSON lines."""
    day = root / "AWSLogs" / "218007301253" / "CloudTrail" / "us-east-1" / "2023" / "07" / "10"
    day.mkdir(parents=True)
    files = [day / "a_20230710T1200Z.json.gz", day / "b_20230710T1205Z.json", day / "c_20230710T1210Z.jsonl"]
    files[0].write_bytes(gzip.compress((DATA / "records.json").read_bytes()))
    shutil.copy(DATA / "array.json", files[1])
    files[2].write_bytes(b"".join(LINES))
    (day / "README.md").write_text("not a trail file")
    return files


# -- files -------------------------------------------------------------------------------------
async def test_directory_in_s3_layout_read_in_sorted_order(invalid: InvalidReporter, metrics: Metrics) -> None:
    src = source(invalid, [str(S3)])
    assert src.finite and src.name == "file"
    batches = await collect(src)
    origins = [batch.origin for batch in batches]
    assert origins == sorted(str(p) for p in S3.rglob("*.json.gz")) and len(origins) == 8
    assert sum(len(batch.records) for batch in batches) == 37
    assert all(batch.source == "file" and batch.locations is None for batch in batches)
    assert all(batch.position.last and batch.position.records_done == len(batch.records) for batch in batches)
    assert count(metrics, "invalid_json") == 0


async def test_batches_are_bounded_and_carry_line_numbers(invalid: InvalidReporter, tmp_path: Path) -> None:
    files = make_trail(tmp_path / "trail")
    batches = await collect(source(invalid, [str(tmp_path / "trail")], batch_size=5))
    assert [len(b.records) for b in batches] == [5, 5, 3, 3, 5, 5, 5, 4]
    assert [b.origin for b in batches] == [str(files[0])] * 3 + [str(files[1])] + [str(files[2])] * 4
    jsonl = [b for b in batches if b.origin == str(files[2])]
    assert [list(b.locations or []) for b in jsonl] == [list(range(i, min(i + 5, 20))) for i in (1, 6, 11, 16)]
    assert [b.position for b in jsonl] == [
        FilePosition(str(files[2]), jsonl[0].position.fingerprint, done, done == 19) for done in (5, 10, 15, 19)]
    assert names(jsonl) == [orjson.loads(line)["eventID"] for line in LINES]


async def test_glob_pattern_and_explicit_file(invalid: InvalidReporter, tmp_path: Path) -> None:
    files = make_trail(tmp_path / "trail")
    odd = tmp_path / "export.txt"  # explicit files are read whatever their name
    shutil.copy(DATA / "eventbridge-api-call.json", odd)
    batches = await collect(source(invalid, [str(tmp_path / "trail" / "**" / "*.json*"), str(odd)]))
    assert [b.origin for b in batches] == sorted([*map(str, files), str(odd)])
    assert sum(len(b.records) for b in batches) == 13 + 3 + 19 + 1


async def test_vanished_file_is_unreadable_and_the_rest_goes_on(
    invalid: InvalidReporter, metrics: Metrics, tmp_path: Path
) -> None:
    files = make_trail(tmp_path / "trail")
    src = source(invalid, [str(tmp_path / "trail")])
    await src.start()
    seen = []
    async for batch in src.batches():
        seen.append(batch.origin)
        if batch.origin == str(files[0]):
            files[1].unlink()  # listed by the scan, gone before it is read
    assert seen == [str(files[0]), str(files[2])]
    assert count(metrics, "unreadable") == 1
    entry = orjson.loads((tmp_path / "dead-letter.jsonl").read_bytes())
    assert entry["reason"] == "unreadable" and entry["origin"] == str(files[1])


async def test_too_large_file_and_bad_files_do_not_stop_the_source(
    invalid: InvalidReporter, metrics: Metrics, tmp_path: Path
) -> None:
    (tmp_path / "a.json").write_bytes((DATA / "records.json").read_bytes())  # 16.8 kB: too large
    (tmp_path / "b.json").write_bytes((DATA / "not-cloudtrail.json").read_bytes())
    (tmp_path / "c.json.gz").write_bytes(gzip.compress((DATA / "array.json").read_bytes())[:-40])
    (tmp_path / "d.json").write_bytes((DATA / "array.json").read_bytes())
    batches = await collect(source(invalid, [str(tmp_path)], max_file_bytes=10_000))
    assert [b.origin for b in batches] == [str(tmp_path / "d.json")]
    assert (count(metrics, "too_large"), count(metrics, "unknown_shape"), count(metrics, "truncated_gzip")) == (1, 1, 1)


# -- follow --------------------------------------------------------------------------------------
async def test_follow_picks_up_a_new_file_only_once_it_stopped_growing(
    invalid: InvalidReporter, metrics: Metrics, tmp_path: Path
) -> None:
    trail = tmp_path / "trail"
    trail.mkdir()
    backlog = trail / "old.json"
    shutil.copy(DATA / "array.json", backlog)
    os.utime(backlog, (time.time() - 60, time.time() - 60))  # delivered before the daemon started
    src = source(invalid, [str(trail)], follow=True, poll_interval=0.3)
    assert not src.finite
    await src.start()
    got: list[SourceBatch] = []

    async def consume() -> None:
        async for batch in src.batches():
            got.append(batch)

    task = asyncio.create_task(consume())
    await wait_for(lambda: len(got) == 1, timeout=0.25)  # the backlog is read at once, not after a poll
    assert got[0].origin == str(backlog)

    target = trail / "AWSLogs" / "2023" / "new.jsonl"
    target.parent.mkdir(parents=True)
    with target.open("wb") as handle:  # a sync tool writing the file in two steps
        handle.write(b"".join(LINES[:7]) + LINES[7][:100])
        handle.flush()
        await wait_for(lambda: str(target) in src._previous)  # a poll saw the partial file...
        handle.write(LINES[7][100:] + b"".join(LINES[8:]))  # ...and it grew before the next one
    await wait_for(lambda: len(got) == 2)
    assert len(got[1].records) == 19 and got[1].origin == str(target)
    assert count(metrics, "invalid_json") == 0  # the half-written line was never decoded

    await asyncio.sleep(0.7)  # more polls: the same file is not read again
    assert len(got) == 2
    target.write_bytes(b"".join(LINES[:2]))  # changed content: read again
    await wait_for(lambda: len(got) == 3)
    assert len(got[2].records) == 2

    started = time.monotonic()
    await src.stop()
    await asyncio.wait_for(task, 2)
    assert time.monotonic() - started < 0.6


# -- stdin ---------------------------------------------------------------------------------------
async def test_stdin_json_lines_arrive_before_eof(invalid: InvalidReporter, metrics: Metrics) -> None:
    read_fd, write_fd = os.pipe()
    try:
        src = FileSource(FileSourceConfig(paths=["-"]), invalid, stdin_fd=read_fd)
        await src.start()
        iterator = src.batches().__aiter__()
        os.write(write_fd, b"".join(LINES[:3]))
        first = await asyncio.wait_for(iterator.__anext__(), 5)  # live: the writer is still open
        assert first.origin == "<stdin>" and list(first.locations or []) == [1, 2, 3]
        assert first.position is None
        os.write(write_fd, LINES[3][:50])  # half a line: held until its newline comes
        await asyncio.sleep(0.05)
        os.write(write_fd, LINES[3][50:] + b"{not json\n" + b"".join(LINES[4:]).rstrip(b"\n"))
        os.close(write_fd)
        write_fd = -1
        rest = [batch async for batch in iterator]
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)
    lines = [n for batch in [first, *rest] for n in batch.locations or []]
    assert lines == [1, 2, 3, 4, *range(6, 21)]
    assert names([first, *rest]) == [orjson.loads(line)["eventID"] for line in LINES]
    assert count(metrics, "invalid_json") == 1


async def test_stdin_line_over_the_limit_is_dropped_up_to_its_newline(
    invalid: InvalidReporter, metrics: Metrics, tmp_path: Path
) -> None:
    huge = dict(orjson.loads(LINES[1]), requestParameters={"padding": "A" * 20_000})
    big = orjson.dumps(huge) + b"\n"
    read_fd, write_fd = os.pipe()
    try:
        src = FileSource(FileSourceConfig(paths=["-"], max_file_bytes=8_000), invalid, stdin_fd=read_fd)
        task = asyncio.create_task(collect(src))
        os.write(write_fd, LINES[0] + big[:9_000])  # more than max_file_bytes and no newline yet
        await asyncio.sleep(0.1)
        os.write(write_fd, big[9_000:] + LINES[2])
        os.close(write_fd)
        write_fd = -1
        batches = await asyncio.wait_for(task, 5)
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)
    assert [n for b in batches for n in b.locations or []] == [1, 3]
    assert names(batches) == [orjson.loads(LINES[i])["eventID"] for i in (0, 2)]
    assert count(metrics, "too_large") == 1 and count(metrics, "invalid_json") == 0
    entry = orjson.loads((tmp_path / "dead-letter.jsonl").read_bytes())
    assert (entry["reason"], entry["location"], entry["origin"]) == ("too_large", 2, "<stdin>")


async def test_stdin_pretty_printed_document_from_a_subprocess(invalid: InvalidReporter) -> None:
    pretty = orjson.dumps(orjson.loads((DATA / "records.json").read_bytes()), option=orjson.OPT_INDENT_2)
    read_fd, write_fd = os.pipe()
    writer = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=write_fd)
    os.close(write_fd)
    try:
        assert writer.stdin is not None
        writer.stdin.write(pretty)
        writer.stdin.close()
        batches = await collect(FileSource(FileSourceConfig(paths=["-"], batch_size=10), invalid,
                                           stdin_fd=read_fd))
    finally:
        writer.wait(5)
        os.close(read_fd)
    assert [len(b.records) for b in batches] == [10, 3]
    assert names(batches) == [r["eventID"] for r in orjson.loads(pretty)["Records"]]


async def test_stdin_gzip_and_redirected_regular_file(invalid: InvalidReporter, tmp_path: Path) -> None:
    packed = next(S3.rglob("*jJW5HfNtz7kOnvcP.json.gz"))
    with packed.open("rb") as handle:  # `trailguard run - < file.json.gz`
        batches = await collect(FileSource(FileSourceConfig(paths=["-"]), invalid, stdin_fd=handle.fileno()))
    assert sum(len(b.records) for b in batches) == 19
    lines = tmp_path / "in.jsonl"
    lines.write_bytes(b"".join(LINES))
    with lines.open("rb") as handle:
        batches = await collect(FileSource(FileSourceConfig(paths=["-"]), invalid, stdin_fd=handle.fileno()))
    assert names(batches) == [orjson.loads(line)["eventID"] for line in LINES]


async def test_stop_interrupts_a_stdin_read_that_waits(invalid: InvalidReporter) -> None:
    read_fd, write_fd = os.pipe()
    try:
        src = FileSource(FileSourceConfig(paths=["-"]), invalid, stdin_fd=read_fd)
        await src.start()
        task = asyncio.create_task(collect(src))
        await asyncio.sleep(0.1)
        assert not task.done()
        await src.stop()
        assert await asyncio.wait_for(task, 1) == []
        assert os.get_blocking(read_fd)  # the descriptor is left as the pipe transport found it
    finally:
        os.close(write_fd)
        os.close(read_fd)


# -- resume --------------------------------------------------------------------------------------
async def test_resume_from_checkpoint_positions(invalid: InvalidReporter, tmp_path: Path) -> None:
    files = make_trail(tmp_path / "trail")
    first = source(invalid, [str(tmp_path / "trail")], batch_size=5)
    batches = await collect(first)
    # a checkpoint covered the first file and two batches of the second... of the JSON lines file
    covered = [b.position for b in batches if b.origin in (str(files[0]), str(files[1]))]
    covered += [b.position for b in batches if b.origin == str(files[2])][:2]
    await first.acknowledge([None, *covered])
    stored = orjson.loads(orjson.dumps(first.checkpoint_positions()))
    assert set(stored["completed"]) == {str(files[0]), str(files[1])}
    assert stored["partial"][str(files[2])]["records"] == 10

    second = source(invalid, [str(tmp_path / "trail")], batch_size=5)
    second.restore_positions(stored)
    resumed = await collect(second)
    assert [b.origin for b in resumed] == [str(files[2])] * 2
    assert [list(b.locations or []) for b in resumed] == [list(range(11, 16)), list(range(16, 20))]
    await second.acknowledge([b.position for b in resumed])
    done = second.checkpoint_positions()
    assert set(done["completed"]) == set(map(str, files)) and done["partial"] == {}

    # nothing left; a rewritten file is read again from the start; a deleted one is forgotten
    third = source(invalid, [str(tmp_path / "trail")])
    third.restore_positions(done)
    files[1].write_bytes((DATA / "eventbridge-api-call.json").read_bytes())
    files[0].unlink()
    again = await collect(third)
    assert [b.origin for b in again] == [str(files[1])]
    assert str(files[0]) not in third.checkpoint_positions()["completed"]


def big_json_lines(path: Path, tail: bytes = b"") -> tuple[bytes, int]:
    """A JSON-lines file of several decode pieces (> LINE_CHUNK_BYTES) of real records, with a bad
    line and a blank run in it; returns its bytes and the number of good records."""
    records = [orjson.loads(line) for line in LINES]
    lines: list[bytes] = []
    for index in range(2600):
        record = dict(records[index % len(records)], eventID=f"big-{index}")
        lines.append(orjson.dumps(record) + b"\n")
        if index == 1234:
            lines.append(b"not json\n\n\n  \n")
    data = b"".join(lines) + tail
    assert len(data) > 2 * LINE_CHUNK_BYTES
    path.write_bytes(data)
    return data, 2600


async def test_a_big_json_lines_file_is_decoded_in_pieces_exactly_as_whole(
    invalid: InvalidReporter, metrics: Metrics, tmp_path: Path
) -> None:
    path = tmp_path / "big.jsonl"
    data, good = big_json_lines(path, tail=b"junk at the end\n{\"also\": \"junk\"}\n")
    whole_records, whole_lines = decode_lines(data, str(path), InvalidReporter(Metrics()))
    src = source(invalid, [str(path)], batch_size=100)
    await src.start()
    stream = src.batches()
    batches = [await anext(stream)]
    # handed on before the rest is decoded: the bad line further down is not reported yet
    assert count(metrics, "invalid_json") == 0
    batches += [batch async for batch in stream]
    assert [r for b in batches for r in b.records] == whole_records and len(whole_records) == good
    assert [n for b in batches for n in b.locations or []] == whole_lines
    # positions count the file's records; only the very last batch is last, though the final
    # piece decodes to nothing (its lines are junk)
    assert [b.position.records_done for b in batches] == [min(100 * (i + 1), good) for i in range(len(batches))]
    assert [b.position.last for b in batches] == [False] * (len(batches) - 1) + [True]
    assert (count(metrics, "invalid_json"), count(metrics, "unknown_shape")) == (2, 1)

    # resuming from a partial position in the middle of a piece skips exactly what was covered
    first = source(invalid, [str(path)], batch_size=100)
    await first.acknowledge([b.position for b in batches[:17]])
    second = source(invalid, [str(path)], batch_size=100)
    second.restore_positions(orjson.loads(orjson.dumps(first.checkpoint_positions())))
    resumed = await collect(second)
    assert [r["eventID"] for b in resumed for r in b.records] == [f"big-{i}" for i in range(1700, good)]
    await second.acknowledge([b.position for b in resumed])
    assert second.checkpoint_positions() == {"completed": {str(path): resumed[0].position.fingerprint},
                                             "partial": {}}


async def test_a_big_json_lines_file_already_covered_is_complete_without_a_batch(
    invalid: InvalidReporter, tmp_path: Path
) -> None:
    path = tmp_path / "big.jsonl"
    _, good = big_json_lines(path)
    first = source(invalid, [str(path)])
    fingerprint = (await collect(first))[0].position.fingerprint
    covered = source(invalid, [str(path)])
    covered.restore_positions({"partial": {str(path): {"fingerprint": fingerprint, "records": good}}})
    assert await collect(covered) == []
    assert covered.checkpoint_positions()["completed"] == {str(path): fingerprint}


def test_restore_ignores_malformed_entries(invalid: InvalidReporter) -> None:
    src = source(invalid, ["-"])
    src.restore_positions({"completed": {"a": "1:2", "b": 3}, "partial": {"c": {"fingerprint": "1:2"}, "d": 4}})
    assert src.checkpoint_positions() == {"completed": {"a": "1:2"}, "partial": {}}


# -- configuration -------------------------------------------------------------------------------
def test_validate_paths_reports_what_would_fail(tmp_path: Path) -> None:
    assert validate_paths(FileSourceConfig(paths=[str(S3), str(DATA / "array.json"), "-"])) == []
    problems = validate_paths(FileSourceConfig(paths=[
        str(tmp_path / "missing"), str(tmp_path / "*.json"), "-", "-"]))
    assert len(problems) == 3
    assert any("missing" in p and "does not exist" in p for p in problems)
    assert any("matches no file" in p for p in problems)
    assert any("more than once" in p for p in problems)
    # in follow mode a pattern may match files that arrive later
    assert validate_paths(FileSourceConfig(paths=[str(tmp_path / "*.json")], follow=True)) == []


def test_config_is_strict_and_frozen() -> None:
    with pytest.raises(ValidationError):
        FileSourceConfig(paths=["x"], folow=True)
    with pytest.raises(ValidationError):
        FileSourceConfig(paths=[])
    assert FileSource.Config is FileSourceConfig  # what the component registry validates with
    config = FileSourceConfig(paths=["x"], name="trail")
    with pytest.raises(ValidationError):
        config.follow = True  # type: ignore[misc]
    assert config.include == ["*.json", "*.json.gz", "*.jsonl", "*.jsonl.gz", "*.ndjson", "*.gz"]
