"""Shape auto-detection and bad-input handling of daemon.decode, on real CloudTrail records."""

from __future__ import annotations

import base64
import gzip
import hashlib
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.deadletter import EXCERPT_BYTES, InvalidReporter
from daemon.decode import decode_bytes, decode_lines, gunzip, looks_like_json_lines, unwrap
from daemon.metrics import Metrics
from detectors.event import Event

DATA = Path(__file__).parent / "data" / "decode"
S3_FILES = sorted((DATA / "s3").rglob("*.json.gz"))


class Reporter:
    """A real InvalidReporter writing a dead-letter file, plus helpers to read what it recorded."""

    def __init__(self, tmp_path: Path) -> None:
        self.metrics = Metrics()
        self.dead = tmp_path / "dead.jsonl"
        self.invalid = InvalidReporter(self.metrics, self.dead)

    def count(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value("trailguard_events_invalid_total", {"reason": reason})
        return value or 0.0

    def entries(self) -> list[dict[str, Any]]:
        self.invalid.close()
        if not self.dead.exists():
            return []
        return [orjson.loads(line) for line in self.dead.read_bytes().splitlines()]


@pytest.fixture
def rep(tmp_path: Path) -> Reporter:
    return Reporter(tmp_path)


def decode(rep: Reporter, data: bytes, **kwargs: Any) -> tuple[list[Any], list[int] | None]:
    return decode_bytes(data, "test-origin", rep.invalid, **kwargs)


def records_of(name: str) -> list[dict[str, Any]]:
    return orjson.loads((DATA / name).read_bytes())["Records"]


# -- shapes ------------------------------------------------------------------------------------
def test_records_file_returns_the_decoded_list_itself(rep: Reporter) -> None:
    data = (DATA / "records.json").read_bytes()
    records, lines = decode(rep, data)
    assert lines is None
    assert records == records_of("records.json") and len(records) == 13
    assert all(Event(r).event_id for r in records)
    assert rep.entries() == []


def test_records_gzip_detected_by_magic_bytes(rep: Reporter) -> None:
    total = 0
    for path in S3_FILES:
        records, lines = decode(rep, path.read_bytes())
        assert lines is None
        assert records == orjson.loads(gzip.decompress(path.read_bytes()))["Records"]
        total += len(records)
    assert total == 37 and rep.entries() == []


def test_gzip_content_named_json_and_plain_content_named_gz_both_decode(rep: Reporter) -> None:
    plain = (DATA / "records.json").read_bytes()
    assert decode(rep, gzip.compress(plain))[0] == decode(rep, plain)[0]
    assert decode_bytes(plain, "records.json.gz", rep.invalid)[0] == records_of("records.json")
    assert rep.entries() == []


def test_json_array_of_events(rep: Reporter) -> None:
    records, lines = decode(rep, (DATA / "array.json").read_bytes())
    assert records == orjson.loads((DATA / "array.json").read_bytes())
    assert sorted(r["eventName"] for r in records) == ["AttachUserPolicy", "CreateAccessKey", "CreateUser"]
    assert lines is None


def test_json_lines_with_line_numbers_and_blank_lines(rep: Reporter) -> None:
    raw = (DATA / "lines.jsonl").read_bytes().splitlines()
    data = b"\n".join(raw[:5]) + b"\n\n   \r\n" + b"\r\n".join(raw[5:]) + b"\n"
    records, lines = decode(rep, data)
    assert len(records) == 19 and [orjson.loads(line) for line in raw] == records
    assert lines == [1, 2, 3, 4, 5, *range(8, 22)]
    assert rep.entries() == []


def test_json_lines_each_line_any_shape(rep: Reporter) -> None:
    compact = [orjson.dumps(orjson.loads((DATA / name).read_bytes())) for name in (
        "records.json", "array.json", "eventbridge-api-call.json", "sns-records.json")]
    records, lines = decode(rep, b"\n".join(compact))
    assert len(records) == 13 + 3 + 1 + 2
    assert lines == [1] * 13 + [2] * 3 + [3] + [4, 4]
    assert [r["eventName"] for r in records[-3:]] == ["CreateImage", "StopLogging", "DeleteTrail"]


def test_a_bare_record_decodes_alone_and_anything_with_an_envelope_key_is_still_unwrapped(rep: Reporter) -> None:
    record = records_of("records.json")[0]
    # one record per Kafka message / per line: itself, with its line number
    assert decode(rep, orjson.dumps(record)) == ([record], None)
    assert decode_lines(orjson.dumps(record) + b"\n", "o", rep.invalid) == ([record], [1])
    # a record-looking dict that also holds an envelope key takes the unwrapping path
    inner = records_of("records.json")[1]
    wrapped = {"eventVersion": "1.08", "Records": [inner]}
    sns = {"eventName": "x", "Type": "Notification", "Message": orjson.dumps({"Records": [inner]}).decode()}
    for envelope in (wrapped, sns):
        assert decode(rep, orjson.dumps(envelope))[0] == [inner]
        assert decode_lines(orjson.dumps(envelope), "o", rep.invalid) == ([inner], [1])
    # a single message over the record limit is still measured and rejected
    assert decode(rep, orjson.dumps(record), max_record_bytes=100) == ([], None)
    assert rep.count("too_large") == 1 and rep.count("unknown_shape") == 0


@pytest.mark.parametrize(("name", "event_name", "event_type"), [
    ("eventbridge-api-call.json", "CreateImage", "AwsApiCall"),
    ("eventbridge-console-sign-in.json", "ConsoleLogin", "AwsConsoleSignIn"),
    ("eventbridge-service-event.json", "SharedSnapshotVolumeCreated", "AwsServiceEvent"),
    ("eventbridge-console-action.json", "GetAlternateContact", "AwsConsoleAction"),
])
def test_eventbridge_envelope_of_each_detail_type(
    rep: Reporter, name: str, event_name: str, event_type: str
) -> None:
    envelope = orjson.loads((DATA / name).read_bytes())
    assert envelope["detail-type"].endswith("via CloudTrail")
    records, _ = decode(rep, (DATA / name).read_bytes())
    assert records == [envelope["detail"]]
    assert records[0]["eventName"] == event_name and records[0]["eventType"] == event_type


def test_sns_wrapped_envelope_and_sns_wrapped_records(rep: Reporter) -> None:
    api = orjson.loads((DATA / "eventbridge-api-call.json").read_bytes())
    assert decode(rep, (DATA / "sns-eventbridge.json").read_bytes())[0] == [api["detail"]]
    records, _ = decode(rep, (DATA / "sns-records.json").read_bytes())
    assert [r["eventName"] for r in records] == ["StopLogging", "DeleteTrail"]
    twice = {"Type": "Notification", "Message": (DATA / "sns-records.json").read_text()}
    assert decode(rep, orjson.dumps(twice))[0] == records  # SNS in SNS: recursive
    assert rep.entries() == []


def test_cloudwatch_logs_subscription_message(rep: Reporter) -> None:
    records, _ = decode(rep, (DATA / "cloudwatch-logs.json").read_bytes())
    assert len(records) == 1 and records[0]["eventID"] == "bar"
    control = {"messageType": "CONTROL_MESSAGE", "logEvents": [{"message": "CWL CONTROL MESSAGE"}]}
    assert decode(rep, orjson.dumps(control)) == ([], None)
    assert rep.entries() == []


def test_unwrap_is_pure_and_says_none_for_other_json() -> None:
    records = records_of("records.json")
    assert unwrap({"Records": records}) is records
    assert unwrap(records[0]) == [records[0]]
    assert unwrap([]) == []
    assert unwrap(orjson.loads((DATA / "not-cloudtrail.json").read_bytes())) is None
    assert unwrap([1, 2, 3]) is None
    assert unwrap([{"rule_id": "x", "expected_alert": True}]) is None
    assert unwrap("Records") is None


def test_envelope_recursion_is_bounded() -> None:
    value: Any = {"Records": records_of("records.json")[:1]}
    for _ in range(10):
        value = {"Type": "Notification", "Message": orjson.dumps(value).decode()}
    assert unwrap(value) is None


# -- bad input ---------------------------------------------------------------------------------
def test_invalid_json_document_reported_once_with_payload(rep: Reporter) -> None:
    data = (DATA / "records.json").read_bytes()[:-300]
    assert decode(rep, data) == ([], None)
    [entry] = rep.entries()
    assert entry["reason"] == "invalid_json" and entry["origin"] == "test-origin"
    assert entry["location"] is None and entry["payload"] == data.decode()
    assert rep.count("invalid_json") == 1


def test_pretty_printed_broken_document_is_one_report_not_one_per_line(rep: Reporter) -> None:
    pretty = orjson.dumps(orjson.loads((DATA / "records.json").read_bytes()), option=orjson.OPT_INDENT_2)
    assert decode(rep, pretty[:-10]) == ([], None)
    assert rep.count("invalid_json") == 1 and len(rep.entries()) == 1
    assert not looks_like_json_lines(pretty)


def test_one_bad_line_among_good_lines(rep: Reporter) -> None:
    raw = (DATA / "lines.jsonl").read_bytes().splitlines()
    bad = raw[2][: len(raw[2]) // 2]
    records, lines = decode(rep, b"\n".join([raw[0], raw[1], bad, *raw[3:]]))
    assert len(records) == 18 and 3 not in lines and lines[:3] == [1, 2, 4]
    [entry] = rep.entries()
    assert entry["reason"] == "invalid_json" and entry["location"] == 3
    assert entry["payload"] == bad.decode()


def test_non_cloudtrail_json_is_unknown_shape(rep: Reporter) -> None:
    data = (DATA / "not-cloudtrail.json").read_bytes()
    assert decode(rep, data) == ([], None)
    [entry] = rep.entries()
    assert entry["reason"] == "unknown_shape" and entry["payload"] == data.decode()


def test_non_object_records_are_dropped_and_reported(rep: Reporter) -> None:
    records = records_of("records.json")[:3]
    records, _ = decode(rep, orjson.dumps({"Records": [records[0], "oops", records[1], 7, records[2]]}))
    assert len(records) == 3 and all(isinstance(r, dict) for r in records)
    assert [(e["reason"], e["location"]) for e in rep.entries()] == [("not_an_object", 1), ("not_an_object", 3)]


def test_truncated_gzip_of_json_lines_keeps_complete_lines(rep: Reporter) -> None:
    text = (DATA / "lines.jsonl").read_bytes()
    packed = gzip.compress(text)
    cut = packed[: len(packed) * 2 // 3]
    records, lines = decode(rep, cut)
    assert 0 < len(records) < 19
    assert records == [orjson.loads(line) for line in text.splitlines()[: len(records)]]
    assert lines == list(range(1, len(records) + 1))
    assert [e["reason"] for e in rep.entries()] == ["truncated_gzip"]  # the cut line is not re-reported


def test_truncated_gzip_of_a_document_reports_only_the_truncation(rep: Reporter) -> None:
    packed = S3_FILES[-1].read_bytes()
    assert decode(rep, packed[: len(packed) - 30]) == ([], None)
    assert rep.count("truncated_gzip") == 1 and rep.count("invalid_json") == 0


def test_corrupt_gzip_is_bad_gzip(rep: Reporter) -> None:
    packed = bytearray(S3_FILES[0].read_bytes())
    middle = len(packed) // 2
    packed[middle : middle + 20] = b"\xff" * 20
    assert decode(rep, bytes(packed)) == ([], None)
    [entry] = rep.entries()
    assert entry["reason"] == "bad_gzip" and entry["payload_encoding"] == "base64"


def test_gzip_bomb_is_too_large_without_inflating_it_all(rep: Reporter) -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = compressor.compress(b" " * (64 << 20)) + compressor.flush()  # 64 MiB → ~64 KiB
    assert len(bomb) < 200_000
    assert decode(rep, bomb, max_bytes=4 << 20) == ([], None)
    assert rep.count("too_large") == 1


def test_multi_member_gzip(rep: Reporter) -> None:
    first, second = S3_FILES[:2]
    data, complete = gunzip(first.read_bytes() + second.read_bytes(), "o", rep.invalid, max_bytes=1 << 20)
    assert complete and data is not None
    assert data == gzip.decompress(first.read_bytes()) + gzip.decompress(second.read_bytes())


def test_ten_megabyte_record_is_too_large(rep: Reporter) -> None:
    records = records_of("records.json")
    huge = dict(records[0], requestParameters={"padding": "A" * (10 << 20)})
    # in a document: only that record is dropped, by its serialised size
    kept, _ = decode(rep, orjson.dumps({"Records": [records[1], huge, records[2]]}))
    assert kept == [records[1], records[2]]
    # as JSON lines: by line length
    data = b"\n".join([orjson.dumps(records[1]), orjson.dumps(huge), orjson.dumps(records[2])])
    kept, lines = decode(rep, data)
    assert kept == [records[1], records[2]] and lines == [1, 3]
    entries = rep.entries()
    assert [(e["reason"], e["location"]) for e in entries] == [("too_large", 1), ("too_large", 2)]
    # a 10 MB payload is kept as a bounded excerpt plus the size and hash of the whole
    for entry in entries:
        assert entry["payload_truncated"] is True and entry["payload_bytes"] == len(orjson.dumps(huge))
        assert entry["payload_sha256"] == hashlib.sha256(orjson.dumps(huge)).hexdigest()
        assert len(base64.b64decode(entry["payload"])) == EXCERPT_BYTES


def test_a_long_line_holding_many_small_records_is_not_too_large(rep: Reporter) -> None:
    line = orjson.dumps(orjson.loads((DATA / "records.json").read_bytes()))
    records, lines = decode_lines(line + b"\n" + line, "o", rep.invalid, max_record_bytes=4000)
    assert len(records) == 26 and lines == [1] * 13 + [2] * 13
    assert rep.count("too_large") == 0


def test_empty_and_blank_input_decode_to_nothing_silently(rep: Reporter) -> None:
    assert decode(rep, b"") == ([], None)
    assert decode(rep, b" \n\n \r\n") == ([], None)
    assert decode(rep, b"\xef\xbb\xbf" + (DATA / "array.json").read_bytes())[0]  # UTF-8 BOM tolerated
    assert rep.entries() == []
