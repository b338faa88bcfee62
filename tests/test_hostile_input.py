"""Hostile input at the edge, one class per test, built at run time from real CloudTrail records.

Each class is one that a hostile-input campaign found to lose good records or cost unbounded
memory/CPU (issue 13): junk around documents, invalid bytes, one bad message in a CloudWatch Logs
batch, deeply nested records, gzip bombs, newline bombs, event times outside the datetime range,
and attacker-sized identity keys.  The rule everywhere: every good record is kept, every bad piece
is counted and dead-lettered (bounded), nothing raises.
"""

from __future__ import annotations

import copy
import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.deadletter import MAX_PAYLOAD_BYTES, InvalidReporter
from daemon.decode import decode_bytes
from daemon.metrics import Metrics
from detectors.event import MAX_KEY_CHARS, Event, InvalidEvent
from tests.conftest import run_cli

DATA = Path(__file__).parent / "data" / "decode"
RECORDS: list[dict[str, Any]] = orjson.loads((DATA / "records.json").read_bytes())["Records"]
LINES = (DATA / "lines.jsonl").read_bytes()


class Reporter:
    def __init__(self, tmp_path: Path) -> None:
        self.metrics = Metrics()
        self.dead = tmp_path / "dead.jsonl"
        self.invalid = InvalidReporter(self.metrics, self.dead)

    def count(self, reason: str) -> float:
        return self.metrics.registry.get_sample_value("trailguard_events_invalid_total", {"reason": reason}) or 0.0

    def entries(self) -> list[dict[str, Any]]:
        self.invalid.close()
        return [orjson.loads(line) for line in self.dead.read_bytes().splitlines()] if self.dead.exists() else []


@pytest.fixture
def rep(tmp_path: Path) -> Reporter:
    return Reporter(tmp_path)


def decode(rep: Reporter, data: bytes) -> list[Any]:
    records, _ = decode_bytes(data, "hostile", rep.invalid)
    return records


def pretty() -> bytes:
    return orjson.dumps({"Records": RECORDS}, option=orjson.OPT_INDENT_2)


# -- whole-file decisions become per-record ----------------------------------------------------
def test_eight_junk_lines_above_json_lines_keep_every_line(rep: Reporter) -> None:
    junk = b"".join(f"garbage line {i} <script>\n".encode() for i in range(8))
    records, lines = decode_bytes(junk + LINES, "hostile", rep.invalid)
    assert len(records) == 19 and lines is not None and lines[0] == 9
    assert rep.count("invalid_json") == 8


def test_junk_lines_above_a_pretty_printed_document_keep_its_records(rep: Reporter) -> None:
    assert decode(rep, b"HTTP/1.1 200 OK\nServer: s3\n\n" + pretty()) == RECORDS
    [entry] = rep.entries()
    assert entry["reason"] == "repaired_json" and "before the document" in entry["detail"]
    assert entry["payload"].startswith("HTTP/1.1")


def test_trailing_garbage_after_a_pretty_printed_document(rep: Reporter) -> None:
    assert decode(rep, pretty() + b"\n}}} trailing junk \x00\xff") == RECORDS
    [entry] = rep.entries()
    assert entry["reason"] == "repaired_json" and "trailing bytes" in entry["detail"]


def test_one_invalid_utf8_byte_in_a_document_loses_nothing(rep: Reporter) -> None:
    data = orjson.dumps({"Records": RECORDS}).replace(b'"userAgent":"', b'"userAgent":"\xff', 1)
    records = decode(rep, data)
    assert len(records) == 13 and "\ufffd" in orjson.dumps(records).decode()
    assert rep.count("repaired_json") == 1


def test_a_nul_inside_a_document_string_loses_nothing(rep: Reporter) -> None:
    data = orjson.dumps({"Records": RECORDS}).replace(b'"userAgent":"', b'"userAgent":"\x00', 1)
    records = decode(rep, data)
    assert len(records) == 13 and any(r.get("userAgent", "").startswith("\x00") for r in records)
    assert rep.count("repaired_json") == 1


def test_a_bom_invalid_byte_and_nul_on_single_lines_cost_only_those_lines(rep: Reporter) -> None:
    lines = LINES.splitlines()
    lines[3] = b"\xef\xbb\xbf" + lines[3]          # a BOM in the middle (cat of two files)
    lines[5] = lines[5][:40] + b"\xff" + lines[5][40:]
    lines[7] = lines[7][:40] + b"\x00" + lines[7][40:]
    records, numbers = decode_bytes(b"\n".join(lines), "hostile", rep.invalid)
    assert len(records) == 17 and numbers is not None and 6 not in numbers and 8 not in numbers
    assert 4 in numbers and rep.count("invalid_json") == 2


def test_one_bad_message_in_a_cloudwatch_logs_batch_keeps_the_others(rep: Reporter) -> None:
    batch = {"messageType": "DATA_MESSAGE", "owner": "123837392027", "logGroup": "CloudTrail/x",
             "logStream": "s", "subscriptionFilters": ["f"],
             "logEvents": [{"id": str(i), "timestamp": 0, "message": orjson.dumps(r).decode()}
                           for i, r in enumerate(RECORDS[:4])]}
    batch["logEvents"].insert(2, {"id": "x", "timestamp": 0, "message": "{not json"})
    assert decode(rep, orjson.dumps(batch)) == RECORDS[:4]
    [entry] = rep.entries()
    assert entry["reason"] == "invalid_json" and "logEvents[2]" in entry["detail"]


# -- nesting, size and compression bombs -------------------------------------------------------
def test_a_record_nested_300_deep_inside_a_large_document_is_one_reject(rep: Reporter) -> None:
    # orjson reads 1024 levels but writes only 254: the record is written by hand
    deep = (orjson.dumps(dict(RECORDS[0], eventID="deep", requestParameters=None))[:-1]
            + b',"responseElements":' + b'{"a":' * 300 + b"{}" + b"}" * 300 + b"}")
    padding = [dict(r, eventID=f"pad-{i}", userAgent="x" * 90_000) for i, r in enumerate(RECORDS)]
    data = orjson.dumps({"Records": [*padding, RECORDS[1]]})[:-2] + b"," + deep + b"]}"
    assert len(data) > 1 << 20
    records = decode(rep, data)
    assert len(records) == len(padding) + 1 and all(r.get("eventID") != "deep" for r in records)
    assert rep.count("too_deep") == 1


def test_gzip_of_zeros_stops_at_the_ratio_guard_with_a_bounded_dead_letter(rep: Reporter) -> None:
    bomb = gzip.compress(b"\0" * (160 << 20), compresslevel=9)
    assert len(bomb) < 200_000
    assert decode(rep, bomb) == []
    [entry] = rep.entries()
    assert entry["reason"] == "too_large" and "times its" in entry["detail"]
    # the dead-letter line holds the compressed body (it is small) — never the 160 MB output
    assert rep.dead.stat().st_size < 2 * MAX_PAYLOAD_BYTES


def test_a_large_junk_body_is_dead_lettered_as_excerpt_and_hash(rep: Reporter) -> None:
    junk = b"<html>" + b"x" * (8 << 20)
    assert decode(rep, junk) == []
    [entry] = rep.entries()
    assert entry["payload_truncated"] is True and entry["payload_bytes"] == len(junk)
    assert len(entry["payload_sha256"]) == 64 and rep.dead.stat().st_size < MAX_PAYLOAD_BYTES


def test_a_newline_bomb_around_records_keeps_them_with_their_line_numbers(rep: Reporter) -> None:
    lines = LINES.splitlines()
    data = lines[0] + b"\n" * 3_000_000 + b"\r\n \t\n" + lines[1] + b"\n" * 1_000_000
    records, numbers = decode_bytes(data, "hostile", rep.invalid)
    assert len(records) == 2 and numbers == [1, 3_000_003]
    assert rep.entries() == []


# -- event time and identity keys --------------------------------------------------------------
@pytest.mark.parametrize("when", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00",
                                  "1969-12-31T23:59:59Z"])
def test_event_times_outside_the_utc_range_are_bad_event_time(when: str) -> None:
    with pytest.raises(InvalidEvent) as raised:
        Event(dict(RECORDS[0], eventTime=when))
    assert raised.value.reason == "bad_event_time" and "range" in raised.value.detail


def test_the_edges_of_the_range_are_accepted() -> None:
    assert Event(dict(RECORDS[0], eventTime="9999-12-31T23:59:59Z")).time_iso == "9999-12-31T23:59:59Z"
    assert Event(dict(RECORDS[0], eventTime="1970-01-01T00:00:00Z")).time == 0.0


def test_identity_keys_are_bounded_in_size_but_stay_distinct() -> None:
    big = "A" * 300_000
    one = copy.deepcopy(RECORDS[0])
    one.update(eventID=big + "1", sourceIPAddress=big + "1", recipientAccountId=big + "1")
    one["userIdentity"] = {"type": "IAMUser", "arn": big + "1"}
    two = copy.deepcopy(one)
    two.update(eventID=big + "2", sourceIPAddress=big + "2", recipientAccountId=big + "2")
    two["userIdentity"] = {"type": "IAMUser", "arn": big + "2"}
    first, second = Event(one), Event(two)
    for name in ("event_id", "principal", "account_id", "source_ip"):
        a, b = getattr(first, name), getattr(second, name)
        assert len(a) <= MAX_KEY_CHARS and len(b) <= MAX_KEY_CHARS and a != b, name
    short = Event(RECORDS[0])
    assert short.principal == RECORDS[0]["userIdentity"]["arn"] and short.event_id == RECORDS[0]["eventID"]


# -- a future-dated event does not blind the windows (the real CLI, `run` on two files) --------
def test_a_2030_event_does_not_blind_eight_failed_logins(tmp_path: Path) -> None:
    logins = orjson.loads((Path(__file__).parent / "data" / "stateful" / "burst" / "console_logins.json")
                          .read_bytes())["panther_failure"][0]
    trail = tmp_path / "trail"
    trail.mkdir()
    future = dict(logins, eventID="future", eventTime="2030-01-01T00:00:00Z")
    (trail / "a.jsonl").write_bytes(orjson.dumps(future) + b"\n")  # read first: sorted path order
    failures = [dict(logins, eventID=f"fail-{i}", sourceIPAddress="203.0.113.66",
                     eventTime=f"2024-05-01T10:{i:02d}:30Z") for i in range(8)]
    (trail / "b.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in failures))
    dead = tmp_path / "dead.jsonl"
    config = tmp_path / "trailguard.yaml"
    config.write_text(f"sources: [{{type: file, paths: ['{trail}']}}]\nsinks: [{{type: stdout}}]\n"
                      f"metrics: {{enabled: false}}\npipeline: {{dead_letter_path: '{dead}'}}\n")
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    alerts = [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [a for a in alerts if a["detector"] == "console_login_bruteforce"], alerts
    assert all("future" not in a["event_ids"] for a in alerts)
    [entry] = [orjson.loads(line) for line in dead.read_bytes().splitlines()]
    assert entry["reason"] == "future_time" and entry["payload"]["eventID"] == "future"
