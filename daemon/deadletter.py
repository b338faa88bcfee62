"""Where input that is not a usable CloudTrail event goes: counted, logged once, kept whole.

Bad input must never stop the daemon and never vanish silently.  Every source and the pipeline
hand each rejected piece to one :class:`InvalidReporter`, which

* increments ``trailguard_events_invalid_total{reason}`` (``reason`` is a fixed, low-cardinality
  label, one of :data:`REASONS`),
* logs one stable warning line (``invalid input skipped``) with a short preview, never the payload,
* and, when a dead-letter path is configured, appends one JSON line holding the payload *whole*
  so that an operator can inspect or replay it.

Decoding runs in worker threads (``asyncio.to_thread``), so :meth:`InvalidReporter.report` is
thread-safe.  A dead-letter file that cannot be written is logged once at ERROR (data is lost from
then on) and never raises into the pipeline.
"""

from __future__ import annotations

import base64
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

import orjson
import structlog

from daemon.metrics import Metrics

__all__ = ["REASONS", "InvalidReporter"]

#: Every ``reason`` label trailguard uses for invalid input (documented in the metrics reference).
REASONS: Final[frozenset[str]] = frozenset({
    "invalid_json",     # not parseable as JSON (a whole document, or one JSON-lines line)
    "truncated_gzip",   # the gzip stream ends early; what came out before was kept if usable
    "bad_gzip",         # corrupt gzip data
    "unknown_shape",    # valid JSON, but not a CloudTrail shape
    "not_an_object",    # a record that is not a JSON object
    "missing_field",    # a record without eventTime / eventName
    "wrong_type",       # a field of the wrong JSON type
    "bad_event_time",   # an eventTime that does not parse
    "too_large",        # a record, file or decompressed stream over its size limit
    "unreadable",       # an I/O error reading the input
})

_PREVIEW_CHARS: Final = 200


def _preview(payload: bytes | str | object | None) -> str | None:
    """At most :data:`_PREVIEW_CHARS` characters of ``payload`` for the log line."""
    if payload is None:
        return None
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload[: _PREVIEW_CHARS * 4]).decode("utf-8", "replace")[:_PREVIEW_CHARS]
    if isinstance(payload, str):
        return payload[:_PREVIEW_CHARS]
    try:
        text = orjson.dumps(payload, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        text = repr(payload)
    return text[:_PREVIEW_CHARS]


def _payload_fields(payload: bytes | str | object | None) -> dict[str, Any]:
    """The dead-letter ``payload`` (and ``payload_encoding`` when it is not plain text)."""
    if payload is None:
        return {"payload": None}
    if isinstance(payload, (bytes, bytearray, memoryview)):
        raw = bytes(payload)
        try:
            return {"payload": raw.decode("utf-8")}
        except UnicodeDecodeError:
            return {"payload": base64.b64encode(raw).decode("ascii"), "payload_encoding": "base64"}
    if isinstance(payload, str):
        return {"payload": payload}
    # A decoded JSON value (a dict or list that failed validation): kept as JSON, not as text.
    return {"payload": payload, "payload_encoding": "json"}


class InvalidReporter:
    """Counts, logs and dead-letters invalid input; shared by every source and the pipeline."""

    def __init__(
        self,
        metrics: Metrics,
        dead_letter_path: Path | None = None,
        logger: Any | None = None,
    ) -> None:
        self.metrics = metrics
        self.dead_letter_path = Path(dead_letter_path) if dead_letter_path is not None else None
        self._log = logger if logger is not None else structlog.get_logger("trailguard.deadletter")
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._broken = False

    def report(
        self,
        reason: str,
        *,
        origin: str,
        location: int | str | None,
        detail: str,
        payload: bytes | str | object | None = None,
    ) -> None:
        """Record one piece of invalid input; never raises."""
        self.metrics.events_invalid.labels(reason=reason).inc()
        self._log.warning(
            "invalid input skipped",
            reason=reason,
            origin=origin,
            location=location,
            detail=detail,
            preview=_preview(payload),
        )
        if self.dead_letter_path is not None and not self._broken:
            self._write(reason, origin, location, detail, payload)

    def _write(
        self, reason: str, origin: str, location: int | str | None, detail: str, payload: object
    ) -> None:
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "reason": reason,
            "origin": origin,
            "location": location,
            "detail": detail,
        }
        entry.update(_payload_fields(payload))
        try:
            line = orjson.dumps(
                entry, default=str, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
            )
        except (TypeError, orjson.JSONEncodeError):
            entry["payload"] = repr(payload)
            entry["payload_encoding"] = "repr"
            line = orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)
        with self._lock:
            if self._broken:
                return
            try:
                if self._file is None:
                    assert self.dead_letter_path is not None
                    self.dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
                    self._file = open(self.dead_letter_path, "ab")  # noqa: SIM115 - kept open
                self._file.write(line)
                self._file.flush()
            except OSError as error:
                self._broken = True
                self._close_quietly()
                self._log.error(
                    "dead-letter file unwritable, invalid input is no longer kept",
                    path=str(self.dead_letter_path),
                    error=str(error),
                )

    def _close_quietly(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def close(self) -> None:
        """Close the dead-letter file (further reports reopen it)."""
        with self._lock:
            self._close_quietly()
