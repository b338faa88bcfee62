"""Turn raw input bytes into CloudTrail records, whatever shape they arrive in.

CloudTrail reaches users as S3 delivery files (``{"Records": [...]}``, usually gzip), JSON arrays
(exports, Stratus Red Team logs), JSON lines (``tail -f``, Athena/Lake exports), single events,
EventBridge envelopes (``{"detail-type": "AWS API Call via CloudTrail", "detail": {...}}``),
CloudWatch Logs subscription messages, and any of these wrapped in an SNS notification.  Sources
must not care: they hand bytes to :func:`decode_bytes` and get records back.  The shape is
detected from the content (gzip magic bytes, JSON structure), never from a file name.

Bad input never raises: each piece is reported once through the
:class:`~daemon.deadletter.InvalidReporter` (with its origin and line number or record index) and
decoding goes on with the rest.  The common path — one well-formed ``Records`` file — costs one
``orjson.loads`` and returns the decoded ``Records`` list itself.
"""

from __future__ import annotations

import zlib
from typing import Any, Final

import orjson

from daemon.deadletter import InvalidReporter
from detectors.event import MAX_RECORD_BYTES

__all__ = [
    "DEFAULT_MAX_BYTES",
    "GZIP_MAGIC",
    "decode_bytes",
    "decode_lines",
    "gunzip",
    "looks_like_json_lines",
    "unwrap",
]

GZIP_MAGIC: Final = b"\x1f\x8b"
#: Largest decompressed input accepted (a gzip bomb is reported ``too_large``).
DEFAULT_MAX_BYTES: Final = 512 << 20

_BOM: Final = b"\xef\xbb\xbf"
_MAX_DEPTH: Final = 4
_PROBE_LINES: Final = 8
_RECORD_KEYS: Final = ("eventName", "eventSource", "eventTime", "eventVersion")


def _is_record(obj: dict[str, Any]) -> bool:
    """A dict that is itself a CloudTrail record (not an envelope around one)."""
    return any(key in obj for key in _RECORD_KEYS)


def _unwrap(obj: Any, depth: int) -> list[Any] | None:
    if depth > _MAX_DEPTH:
        return None
    if isinstance(obj, dict):
        records = obj.get("Records")
        if isinstance(records, list):
            return records
        detail = obj.get("detail")
        detail_type = obj.get("detail-type")
        if isinstance(detail, dict) and isinstance(detail_type, str):
            # EventBridge: "AWS API Call via CloudTrail", "AWS Console Sign In via CloudTrail", ...
            if detail_type.endswith("via CloudTrail") or _is_record(detail):
                return [detail]
            return None
        if obj.get("Type") == "Notification":
            message = obj.get("Message")
            if not isinstance(message, str):
                return None
            try:
                inner = orjson.loads(message)
            except orjson.JSONDecodeError:
                return None
            return _unwrap(inner, depth + 1)
        message_type = obj.get("messageType")
        if message_type == "DATA_MESSAGE" and isinstance(obj.get("logEvents"), list):
            return _unwrap_log_events(obj["logEvents"], depth)
        if message_type == "CONTROL_MESSAGE":
            return []
        if _is_record(obj):
            return [obj]
        return None
    if isinstance(obj, list):
        return _unwrap_array(obj, depth)
    return None


def _unwrap_log_events(log_events: list[Any], depth: int) -> list[Any] | None:
    """CloudWatch Logs subscription data: each ``logEvents[].message`` is one JSON record."""
    out: list[Any] = []
    for item in log_events:
        message = item.get("message") if isinstance(item, dict) else None
        if not isinstance(message, str):
            return None
        try:
            inner = orjson.loads(message)
        except orjson.JSONDecodeError:
            return None
        found = _unwrap(inner, depth + 1)
        if found is None:
            return None
        out.extend(found)
    return out


def _unwrap_array(items: list[Any], depth: int) -> list[Any] | None:
    """A JSON array of events; elements that are envelopes or ``Records`` files are flattened.

    Returns the list itself when no element needs unwrapping, and ``None`` when no element is a
    CloudTrail record or envelope.  Other elements of a CloudTrail array are kept as they are:
    validation reports them (``not_an_object``, ``missing_field``).
    """
    out: list[Any] | None = None
    cloudtrail = not items
    for index, item in enumerate(items):
        inner = None
        if isinstance(item, dict):
            if _is_record(item):
                cloudtrail = True
            else:
                inner = _unwrap(item, depth + 1)
        if inner is None:
            if out is not None:
                out.append(item)
            continue
        cloudtrail = True
        if out is None:
            out = items[:index]
        out.extend(inner)
    if not cloudtrail:
        return None
    return items if out is None else out


def unwrap(obj: Any) -> list[Any] | None:
    """The CloudTrail records inside one parsed JSON value; ``None`` if it is not a CloudTrail shape.

    Records are returned as found (not validated): the pipeline builds and validates ``Event``s.
    """
    return _unwrap(obj, 0)


def gunzip(
    data: bytes, origin: str, invalid: InvalidReporter, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[bytes | None, bool]:
    """Decompress gzip ``data`` (one or more members); return ``(output, complete)``.

    * corrupt data → ``bad_gzip`` reported, ``(None, False)``;
    * more than ``max_bytes`` of output (a gzip bomb) → ``too_large`` reported, ``(None, False)``;
    * a stream that ends early → ``truncated_gzip`` reported, ``(what came out, False)``: the
      caller keeps what is usable (complete JSON lines).
    """
    limit = max_bytes + 1
    parts: list[bytes] = []
    total = 0
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pending = data
    while True:
        try:
            chunk = decompressor.decompress(pending, limit - total)
        except zlib.error as error:
            invalid.report("bad_gzip", origin=origin, location=None,
                           detail=f"corrupt gzip data after {total} bytes: {error}", payload=data)
            return None, False
        parts.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            invalid.report("too_large", origin=origin, location=None,
                           detail=f"gzip expands to more than {max_bytes} bytes")
            return None, False
        # Output was not capped, so all of ``pending`` was consumed unless the member ended.
        pending = decompressor.unconsumed_tail
        if decompressor.eof:
            rest = decompressor.unused_data
            if rest[:2] != GZIP_MAGIC:
                break
            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            pending = rest
            continue
        if not pending:
            out = parts[0] if len(parts) == 1 else b"".join(parts)
            invalid.report("truncated_gzip", origin=origin, location=None,
                           detail=f"gzip stream ends early, {len(out)} bytes decoded")
            return out, False
    return (parts[0] if len(parts) == 1 else b"".join(parts)), True


def _blank(line: memoryview) -> bool:
    return not bytes(line[:64]).strip() and not bytes(line).strip()


def looks_like_json_lines(data: bytes | bytearray) -> bool:
    """True when one of the first few non-blank lines is a JSON object or array on its own.

    Tells JSON lines (with perhaps a bad line) from a pretty-printed or broken document, whose
    lines (``{``, ``"Records": [``) never parse alone.
    """
    view = memoryview(data)
    start = 0
    probed = 0
    size = len(view)
    while start < size and probed < _PROBE_LINES:
        end = data.find(b"\n", start)
        if end < 0:
            end = size
        line = view[start:end]
        start = end + 1
        if _blank(line):
            continue
        probed += 1
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, (dict, list)):
            return True
    return False


def decode_lines(
    data: bytes | bytearray,
    origin: str,
    invalid: InvalidReporter,
    *,
    first_line: int = 1,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> tuple[list[Any], list[int]]:
    """Decode JSON lines (each line any CloudTrail shape); return records and their line numbers.

    Blank lines are skipped; a bad line is reported with its number and the others still decode.
    A final line without a newline is decoded too.
    """
    records: list[Any] = []
    lines: list[int] = []
    view = memoryview(data)
    size = len(view)
    start = 0
    lineno = first_line - 1
    while start < size:
        end = data.find(b"\n", start)
        if end < 0:
            end = size
        lineno += 1
        line = view[start:end]
        start = end + 1
        length = len(line)
        if length < 64 and not bytes(line).strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            if not bytes(line).strip():
                continue
            invalid.report("invalid_json", origin=origin, location=lineno, detail=str(error),
                           payload=bytes(line))
            continue
        found = unwrap(value)
        if found is None:
            invalid.report("unknown_shape", origin=origin, location=lineno,
                           detail=f"a JSON {type(value).__name__} that is not a CloudTrail shape",
                           payload=bytes(line))
            continue
        if length > max_record_bytes and len(found) <= 1:
            # One record per line (the usual case): its line length is its size.
            invalid.report("too_large", origin=origin, location=lineno,
                           detail=f"record of {length} bytes exceeds {max_record_bytes}", payload=bytes(line))
            continue
        found = _checked(found, origin, invalid, length, max_record_bytes, lineno)
        records.extend(found)
        lines.extend([lineno] * len(found))
    return records, lines


def _checked(
    records: list[Any],
    origin: str,
    invalid: InvalidReporter,
    data_size: int,
    max_record_bytes: int,
    location: int | None = None,
) -> list[Any]:
    """Drop (and report) records that are not objects or are too large; no copy when all are fine.

    Sizes are only measured when the whole input is over ``max_record_bytes``; a report's location
    is ``location`` (a line number) or else the record's index in the document.
    """
    check_size = data_size > max_record_bytes
    keep: list[Any] | None = None
    for index, record in enumerate(records):
        bad = False
        if not isinstance(record, dict):
            invalid.report("not_an_object", origin=origin, location=index if location is None else location,
                           detail=f"record is a {type(record).__name__}, not an object", payload=record)
            bad = True
        elif check_size:
            size = len(orjson.dumps(record))
            if size > max_record_bytes:
                invalid.report("too_large", origin=origin, location=index if location is None else location,
                               detail=f"record of {size} bytes exceeds {max_record_bytes}", payload=record)
                bad = True
        if bad:
            if keep is None:
                keep = records[:index]
        elif keep is not None:
            keep.append(record)
    return records if keep is None else keep


def decode_bytes(
    data: bytes,
    origin: str,
    invalid: InvalidReporter,
    *,
    max_record_bytes: int = MAX_RECORD_BYTES,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[list[Any], list[int] | None]:
    """Decode one input unit (a file, an S3 object, a message body) into CloudTrail records.

    Returns ``(records, line_numbers)``: ``line_numbers`` is the parallel list of 1-based line
    numbers for JSON lines, ``None`` for a document (where a record's location is its index).
    Gzip is detected by its magic bytes; ``max_bytes`` bounds the decompressed size.
    """
    complete = True
    if data[:2] == GZIP_MAGIC:
        unzipped, complete = gunzip(data, origin, invalid, max_bytes=max_bytes)
        if unzipped is None:
            return [], None
        data = unzipped
    if data[:3] == _BOM:
        data = data[3:]
    if not complete:
        # Keep the complete lines of truncated JSON lines; a truncated document is unusable and
        # the truncation was already reported.
        cut = data.rfind(b"\n")
        usable = data[: cut + 1] if cut >= 0 else b""
        if not usable or not looks_like_json_lines(usable):
            return [], None
        return decode_lines(usable, origin, invalid, max_record_bytes=max_record_bytes)
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        if not data.strip():
            return [], None
        if b"\n" in data and looks_like_json_lines(data):
            return decode_lines(data, origin, invalid, max_record_bytes=max_record_bytes)
        invalid.report("invalid_json", origin=origin, location=None, detail=str(error), payload=data)
        return [], None
    records = unwrap(value)
    if records is None:
        invalid.report("unknown_shape", origin=origin, location=None,
                       detail=f"a JSON {type(value).__name__} that is not a CloudTrail shape", payload=data)
        return [], None
    return _checked(records, origin, invalid, len(data), max_record_bytes), None
