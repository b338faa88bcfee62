"""InvalidReporter: every piece of bad input is counted, logged once, and kept whole on disk."""

from __future__ import annotations

import base64
import re
import threading
from pathlib import Path
from typing import Any

import orjson
from structlog.testing import capture_logs

import detectors.event
from daemon.deadletter import REASONS, InvalidReporter
from daemon.metrics import Metrics

DATA = Path(__file__).parent / "data" / "decode"


class RecordingLogger:
    """Stands in for the structlog logger: keeps (level, message, context) of every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, message: str, **context: Any) -> None:
        self.calls.append(("warning", message, context))

    def error(self, message: str, **context: Any) -> None:
        self.calls.append(("error", message, context))


def invalid_count(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("trailguard_events_invalid_total", {"reason": reason}) or 0.0


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_report_counts_logs_and_keeps_text_payload_whole(tmp_path: Path) -> None:
    metrics, log = Metrics(), RecordingLogger()
    dead = tmp_path / "dlq" / "invalid.jsonl"
    reporter = InvalidReporter(metrics, dead, log)
    line = (DATA / "lines.jsonl").read_bytes().splitlines()[3]
    broken = line[:-40]  # a real record cut short: not JSON any more
    reporter.report("invalid_json", origin="trail.jsonl", location=4, detail="unexpected end", payload=broken)
    reporter.close()

    assert invalid_count(metrics, "invalid_json") == 1
    assert len(log.calls) == 1
    level, message, context = log.calls[0]
    assert (level, message) == ("warning", "invalid input skipped")
    assert context["reason"] == "invalid_json" and context["origin"] == "trail.jsonl"
    assert context["location"] == 4 and context["detail"] == "unexpected end"
    assert len(context["preview"]) == 200 and broken.decode().startswith(context["preview"])

    [entry] = read_lines(dead)
    assert entry["reason"] == "invalid_json" and entry["origin"] == "trail.jsonl" and entry["location"] == 4
    assert entry["payload"] == broken.decode()  # the whole payload, not the preview
    assert "payload_encoding" not in entry
    assert entry["time"].endswith("Z")


def test_binary_payload_is_base64_and_objects_stay_json(tmp_path: Path) -> None:
    metrics = Metrics()
    dead = tmp_path / "invalid.jsonl"
    reporter = InvalidReporter(metrics, dead, RecordingLogger())
    gz = next((DATA / "s3").rglob("*.json.gz")).read_bytes()
    record = orjson.loads((DATA / "array.json").read_bytes())[0]
    reporter.report("bad_gzip", origin="a.json.gz", location=None, detail="crc", payload=gz)
    reporter.report("missing_field", origin="a.json", location=2, detail="no eventTime", payload=record)
    reporter.report("unreadable", origin="gone.json", location=None, detail="vanished")
    reporter.close()

    first, second, third = read_lines(dead)
    assert first["payload_encoding"] == "base64"
    assert base64.b64decode(first["payload"]) == gz
    assert second["payload_encoding"] == "json" and second["payload"] == record
    assert third["payload"] is None
    assert invalid_count(metrics, "bad_gzip") == invalid_count(metrics, "missing_field") == 1


def test_without_a_path_nothing_is_written_but_all_is_counted(tmp_path: Path) -> None:
    metrics, log = Metrics(), RecordingLogger()
    reporter = InvalidReporter(metrics, None, log)
    for _ in range(3):
        reporter.report("too_large", origin="x", location=None, detail="big", payload=b"x" * 10_000)
    assert invalid_count(metrics, "too_large") == 3
    assert all(len(context["preview"]) <= 200 for _, _, context in log.calls)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_dead_letter_logs_one_error_and_never_raises(tmp_path: Path) -> None:
    metrics, log = Metrics(), RecordingLogger()
    reporter = InvalidReporter(metrics, tmp_path, log)  # a directory: open() fails even as root
    for _ in range(3):
        reporter.report("unknown_shape", origin="x.json", location=None, detail="d", payload="{}")
    assert invalid_count(metrics, "unknown_shape") == 3
    errors = [call for call in log.calls if call[0] == "error"]
    assert len(errors) == 1 and errors[0][2]["path"] == str(tmp_path)
    assert sum(call[0] == "warning" for call in log.calls) == 3


def test_close_then_report_appends(tmp_path: Path) -> None:
    dead = tmp_path / "invalid.jsonl"
    reporter = InvalidReporter(Metrics(), dead, RecordingLogger())
    reporter.report("wrong_type", origin="a", location=0, detail="d", payload="one")
    reporter.close()
    reporter.report("wrong_type", origin="a", location=1, detail="d", payload="two")
    reporter.close()
    assert [entry["payload"] for entry in read_lines(dead)] == ["one", "two"]


def test_reports_from_many_threads_each_write_one_whole_line(tmp_path: Path) -> None:
    metrics = Metrics()
    dead = tmp_path / "invalid.jsonl"
    reporter = InvalidReporter(metrics, dead, RecordingLogger())
    payload = (DATA / "records.json").read_text()

    def worker(index: int) -> None:
        for n in range(25):
            reporter.report("invalid_json", origin=f"t{index}", location=n, detail="d", payload=payload)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reporter.close()
    entries = read_lines(dead)
    assert len(entries) == 100 and all(entry["payload"] == payload for entry in entries)
    assert invalid_count(metrics, "invalid_json") == 100


def test_default_logger_is_structlog_with_stable_message() -> None:
    reporter = InvalidReporter(Metrics())
    with capture_logs() as logs:
        reporter.report("bad_event_time", origin="o", location=7, detail="eventTime 'x'", payload={"a": 1})
    assert logs == [{
        "event": "invalid input skipped", "log_level": "warning", "reason": "bad_event_time",
        "origin": "o", "location": 7, "detail": "eventTime 'x'", "preview": '{"a":1}',
    }]


def test_reasons_cover_every_invalid_event_reason_of_the_event_model() -> None:
    """The pipeline reports ``InvalidEvent.reason`` values: each must be a documented label."""
    source = Path(detectors.event.__file__).read_text()
    raised = set(re.findall(r'InvalidEvent\(\s*"([a-z_]+)"', source))
    assert raised and raised <= REASONS
