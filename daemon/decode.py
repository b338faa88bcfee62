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

import re
import zlib
from typing import Any, Final

import orjson

from daemon.deadletter import InvalidReporter
from detectors.event import MAX_RECORD_BYTES

__all__ = [
    "DEFAULT_MAX_BYTES",
    "GZIP_MAGIC",
    "LINE_CHUNK_BYTES",
    "decode_bytes",
    "decode_line_chunk",
    "decode_lines",
    "gunzip",
    "is_json_lines",
    "line_chunks",
    "looks_like_json_lines",
    "unwrap",
]

GZIP_MAGIC: Final = b"\x1f\x8b"
#: Largest decompressed input accepted (a gzip bomb is reported ``too_large``).
DEFAULT_MAX_BYTES: Final = 512 << 20

#: Decompressed output allowed per compressed byte (CloudTrail JSON compresses 10-30x; a block
#: of zeros ~1000x); outputs up to :data:`GZIP_RATIO_FLOOR` are always allowed.
GZIP_MAX_RATIO: Final = 200
GZIP_RATIO_FLOOR: Final = 64 << 20
_GZIP_CHUNK: Final = 4 << 20

#: JSON lines are decoded this many bytes at a time (cut at a newline) by sources that stream them.
LINE_CHUNK_BYTES: Final = 1 << 20

_BOM: Final = b"\xef\xbb\xbf"
_UNPARSED: Final = object()
_MAX_DEPTH: Final = 4
_PROBE_LINES: Final = 8
#: Lines probed (error path only) when looking for JSON lines behind junk at the top of a file.
_DEEP_PROBE_LINES: Final = 10_000
_NON_BLANK: Final = re.compile(rb"[^ \t\r\n]")
_CONTROL: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_DOCUMENT_START: Final = re.compile(rb"^[ \t]*[\[{]", re.MULTILINE)


def _is_record(obj: dict[str, Any]) -> bool:
    """A dict that is itself a CloudTrail record (not an envelope around one)."""
    # Spelled out rather than ``any(...)`` over a tuple of keys: this runs once per record.
    return "eventName" in obj or "eventSource" in obj or "eventTime" in obj or "eventVersion" in obj


def _plain_record(value: Any) -> bool:
    """A bare CloudTrail record that :func:`_unwrap` would return as ``[value]``, tested without it.

    True only when no envelope key is present, so every other shape still takes :func:`_unwrap`'s
    path; this is the per-line fast path of JSON lines and Kafka messages (one record each).
    """
    return (type(value) is dict and "Records" not in value and "detail" not in value
            and "Type" not in value and "messageType" not in value and _is_record(value))


#: Pieces of an otherwise good input that were dropped: ``(reason, detail, payload)``.
_Rejects = list[tuple[str, str, Any]]


def _unwrap(obj: Any, depth: int, rejects: _Rejects | None = None) -> list[Any] | None:
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
            return _unwrap(inner, depth + 1, rejects)
        message_type = obj.get("messageType")
        if message_type == "DATA_MESSAGE" and isinstance(obj.get("logEvents"), list):
            return _unwrap_log_events(obj["logEvents"], depth, rejects)
        if message_type == "CONTROL_MESSAGE":
            return []
        if _is_record(obj):
            return [obj]
        return None
    if isinstance(obj, list):
        return _unwrap_array(obj, depth, rejects)
    return None


def _unwrap_log_events(log_events: list[Any], depth: int, rejects: _Rejects | None) -> list[Any] | None:
    """CloudWatch Logs subscription data: each ``logEvents[].message`` is one JSON record.

    A bad message is one reject (reported with its index by the caller); the others are kept.
    Without a ``rejects`` list to report into, any bad message makes the batch unusable.
    """
    out: list[Any] = []
    already = len(rejects) if rejects is not None else 0
    for index, item in enumerate(log_events):
        message = item.get("message") if isinstance(item, dict) else None
        if not isinstance(message, str):
            if rejects is None:
                return None
            rejects.append(("wrong_type", f"logEvents[{index}].message is not a string", item))
            continue
        try:
            inner = orjson.loads(message)
        except orjson.JSONDecodeError as error:
            if rejects is None:
                return None
            rejects.append(("invalid_json", f"logEvents[{index}].message: {error}", message))
            continue
        found = _unwrap(inner, depth + 1, rejects)
        if found is None:
            if rejects is None:
                return None
            rejects.append(("unknown_shape", f"logEvents[{index}].message is not a CloudTrail shape", message))
            continue
        out.extend(found)
    if rejects is not None and log_events and len(rejects) - already == len(log_events):
        del rejects[already:]  # no message is CloudTrail: the batch is another log group's
        return None
    return out


def _unwrap_array(items: list[Any], depth: int, rejects: _Rejects | None) -> list[Any] | None:
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
                inner = _unwrap(item, depth + 1, rejects)
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


def _report_rejects(rejects: _Rejects, origin: str, invalid: InvalidReporter, location: int | None) -> None:
    for reason, detail, payload in rejects:
        invalid.report(reason, origin=origin, location=location, detail=detail, payload=payload)
    rejects.clear()


def gunzip(
    data: bytes, origin: str, invalid: InvalidReporter, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[bytes | None, bool]:
    """Decompress gzip ``data`` (one or more members) as a stream; return ``(output, complete)``.

    * corrupt data → ``bad_gzip`` reported, ``(None, False)``;
    * more than ``max_bytes`` of output, or more than :data:`GZIP_MAX_RATIO` times the compressed
      size (beyond :data:`GZIP_RATIO_FLOOR`) — a gzip bomb — → ``too_large`` reported as soon as
      the limit is crossed (never decompressed further), ``(None, False)``;
    * a stream that ends early → ``truncated_gzip`` reported, ``(what came out, False)``: the
      caller keeps what is usable (complete JSON lines).

    The dead-letter entry of a rejected stream is a bounded excerpt of the compressed bytes plus
    their hash (see :mod:`daemon.deadletter`), never the output.
    """
    allowed = min(max_bytes, max(GZIP_RATIO_FLOOR, GZIP_MAX_RATIO * len(data)))
    parts: list[bytes] = []
    total = 0
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pending = data
    while True:
        want = min(_GZIP_CHUNK, allowed + 1 - total)
        try:
            chunk = decompressor.decompress(pending, want)
        except zlib.error as error:
            invalid.report("bad_gzip", origin=origin, location=None,
                           detail=f"corrupt gzip data after {total} bytes: {error}", payload=data)
            return None, False
        parts.append(chunk)
        total += len(chunk)
        if total > allowed:
            why = (f"more than max_bytes {max_bytes}" if allowed == max_bytes
                   else f"more than {GZIP_MAX_RATIO} times its {len(data)} compressed bytes")
            invalid.report("too_large", origin=origin, location=None,
                           detail=f"gzip expands to {why}", payload=data)
            return None, False
        pending = decompressor.unconsumed_tail
        if decompressor.eof:
            rest = decompressor.unused_data
            if rest[:2] != GZIP_MAGIC:
                break
            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            pending = rest
            continue
        if not pending and len(chunk) < want:
            out = parts[0] if len(parts) == 1 else b"".join(parts)
            invalid.report("truncated_gzip", origin=origin, location=None,
                           detail=f"gzip stream ends early, {len(out)} bytes decoded")
            return out, False
    return (parts[0] if len(parts) == 1 else b"".join(parts)), True


def _blank(line: memoryview) -> bool:
    return not bytes(line[:64]).strip() and not bytes(line).strip()


def _skip_blank_run(data: bytes | bytearray, start: int) -> tuple[int, int] | None:
    """From ``start``, the start of the line holding the next non-blank byte and the newlines
    skipped to reach it; ``None`` when only blanks are left.  One C-speed scan, so a file of a
    hundred million newlines costs a regex search, not a hundred million Python iterations."""
    found = _NON_BLANK.search(data, start)
    if found is None:
        return None
    pos = found.start()
    skipped = data.count(b"\n", start, pos)
    if skipped:
        start = data.rfind(b"\n", start, pos) + 1
    return start, skipped


def looks_like_json_lines(
    data: bytes | bytearray, probe: int = _PROBE_LINES, *, cloudtrail_only: bool = False
) -> bool:
    """True when one of the first ``probe`` non-blank lines is a JSON object or array on its own.

    Tells JSON lines (with perhaps a bad line) from a pretty-printed or broken document, whose
    lines (``{``, ``"Records": [``) never parse alone.  With ``cloudtrail_only`` the line must be
    a CloudTrail shape too (a deep probe past junk, where a stray ``{}`` line proves nothing).
    """
    view = memoryview(data)
    start = 0
    probed = 0
    size = len(view)
    while start < size and probed < probe:
        end = data.find(b"\n", start)
        if end < 0:
            end = size
        line = view[start:end]
        start = end + 1
        if _blank(line):
            skip = _skip_blank_run(data, start) if start < size else None
            if skip is None:
                break
            start = skip[0]
            continue
        probed += 1
        if line[:1] not in (b"{", b"[", b" ", b"\t"):
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, (dict, list)) and (not cloudtrail_only or unwrap(value) is not None):
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

    Blank lines are skipped (a run of them in one scan); a bad line is reported with its number
    and the others still decode (junk, invalid UTF-8, a NUL, a BOM on any line).  A final line
    without a newline is decoded too.
    """
    records: list[Any] = []
    lines: list[int] = []
    view = memoryview(data)
    size = len(view)
    start = 0
    lineno = first_line - 1
    rejects: _Rejects = []
    while start < size:
        end = data.find(b"\n", start)
        if end < 0:
            end = size
        lineno += 1
        line = view[start:end]
        start = end + 1
        length = len(line)
        if length < 64 and not bytes(line).strip():
            skip = _skip_blank_run(data, start) if start < size else None
            if skip is None:
                break
            start, skipped = skip
            lineno += skipped
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            if not bytes(line).strip():
                continue
            detail = str(error)
            if line[:3] == _BOM:  # a BOM mid-file (files concatenated): error path only
                try:
                    value = orjson.loads(line[3:])
                except orjson.JSONDecodeError:
                    value = _UNPARSED
            else:
                value = _UNPARSED
        if value is _UNPARSED:
            invalid.report("invalid_json", origin=origin, location=lineno, detail=detail,
                           payload=bytes(line))
            continue
        if _plain_record(value):  # the usual line: one record, nothing to unwrap or re-check
            if length > max_record_bytes:
                invalid.report("too_large", origin=origin, location=lineno,
                               detail=f"record of {length} bytes exceeds {max_record_bytes}", payload=bytes(line))
                continue
            records.append(value)
            lines.append(lineno)
            continue
        found = _unwrap(value, 0, rejects)
        if rejects:
            _report_rejects(rejects, origin, invalid, lineno)
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


def is_json_lines(data: bytes) -> bool:
    """True when :func:`decode_bytes` would decode plain ``data`` as JSON lines, decided from its top.

    That is so when the first non-blank line (after a BOM) is a JSON object or array on its own and
    more non-blank content follows it: then the whole cannot be one JSON document, and the first
    line makes it look like JSON lines.  Gzip data, and anything this cannot tell from the first
    line (a pretty-printed document, junk on top), answer ``False``: decode those whole.
    """
    start = 3 if data[:3] == _BOM else 0
    found = _NON_BLANK.search(data, start)
    if found is None:
        return False
    begin = found.start()
    if data[begin:begin + 1] not in (b"{", b"["):
        return False
    end = data.find(b"\n", begin)
    if end < 0:
        return False
    try:
        value = orjson.loads(memoryview(data)[begin:end])
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, (dict, list)) and _NON_BLANK.search(data, end) is not None


def line_chunks(data: bytes, size: int = LINE_CHUNK_BYTES) -> list[tuple[int, int, int]]:
    """``(begin, end, first_line)`` of consecutive pieces of JSON lines ``data``, each cut after a newline.

    Pieces are about ``size`` bytes (a longer line is one piece); a leading BOM is left out, as
    :func:`decode_bytes` leaves it out.  Decoding the pieces with :func:`decode_line_chunk` gives
    the same records and line numbers as :func:`decode_lines` over the whole.
    """
    begin = 3 if data[:3] == _BOM else 0
    total = len(data)
    line = 1
    out: list[tuple[int, int, int]] = []
    while begin < total:
        end = data.find(b"\n", min(begin + size, total) - 1)
        end = total if end < 0 else end + 1
        out.append((begin, end, line))
        line += data.count(b"\n", begin, end)
        begin = end
    return out


def decode_line_chunk(
    data: bytes, origin: str, invalid: InvalidReporter, *, first_line: int, max_record_bytes: int = MAX_RECORD_BYTES
) -> tuple[list[Any], list[int]]:
    """:func:`decode_lines` of one piece from :func:`line_chunks`; never raises, like :func:`decode_bytes`."""
    try:
        return decode_lines(data, origin, invalid, first_line=first_line, max_record_bytes=max_record_bytes)
    except Exception as error:  # the last line of defence: a source never dies from its data
        invalid.report("undecodable", origin=origin, location=first_line,
                       detail=f"{type(error).__name__}: {str(error)[:200]}", payload=data)
        return [], []


def _checked(
    records: list[Any],
    origin: str,
    invalid: InvalidReporter,
    data_size: int,
    max_record_bytes: int,
    location: int | None = None,
) -> list[Any]:
    """Drop (and report) records that are not objects or are too large; no copy when all are fine.

    Sizes are only measured when the whole input is over ``max_record_bytes``; a record too deep
    to measure (nested past orjson's 254 levels) is ``too_deep``.  A report's location is
    ``location`` (a line number) or else the record's index in the document.
    """
    check_size = data_size > max_record_bytes
    keep: list[Any] | None = None
    for index, record in enumerate(records):
        bad = False
        where = index if location is None else location
        if not isinstance(record, dict):
            invalid.report("not_an_object", origin=origin, location=where,
                           detail=f"record is a {type(record).__name__}, not an object", payload=record)
            bad = True
        elif check_size:
            try:
                size = len(orjson.dumps(record))
            except orjson.JSONEncodeError as error:
                invalid.report("too_deep", origin=origin, location=where,
                               detail=f"record cannot be re-encoded: {error}", payload=None)
                bad = True
            else:
                if size > max_record_bytes:
                    invalid.report("too_large", origin=origin, location=where,
                                   detail=f"record of {size} bytes exceeds {max_record_bytes}", payload=record)
                    bad = True
        if bad:
            if keep is None:
                keep = records[:index]
        elif keep is not None:
            keep.append(record)
    return records if keep is None else keep


def _repair_document(data: bytes) -> tuple[Any, list[str], bytes] | None:
    """Error path: parse a document orjson refused, after the least repair that makes it parse.

    Tries, cumulatively: invalid UTF-8 replaced (U+FFFD), raw control characters (a NUL) escaped,
    junk lines before the document skipped, trailing garbage after it cut.  Returns the value,
    what was repaired, and the dropped bytes (leading + trailing, for the dead-letter entry);
    ``None`` when nothing parses.
    """
    notes: list[str] = []
    dropped = b""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        data = data.decode("utf-8", "replace").encode("utf-8")
        notes.append("invalid UTF-8 replaced")
    if _CONTROL.search(data):
        data = _CONTROL.sub(lambda found: b"\\u%04x" % found[0][0], data)
        notes.append("raw control characters escaped")
    begin = _DOCUMENT_START.search(data)
    if begin is None:
        return None
    if begin.start():
        dropped += data[: begin.start()]
        notes.append(f"{begin.start()} bytes before the document skipped")
        data = data[begin.start():]
    for _attempt in range(2):
        try:
            return orjson.loads(data), notes, dropped
        except orjson.JSONDecodeError as error:
            cut = getattr(error, "pos", 0)
            if "after document" not in str(error) or not 0 < cut < len(data):
                return None
            dropped += data[cut:]
            notes.append(f"{len(data) - cut} trailing bytes after the document cut")
            data = data[:cut]
    return None


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
    Gzip is detected by its magic bytes; ``max_bytes`` bounds the decompressed size.  Never
    raises: an unexpected failure is reported (``undecodable``) and the unit yields nothing, so a
    source never dies from its data.
    """
    try:
        return _decode(data, origin, invalid, max_record_bytes, max_bytes)
    except Exception as error:  # the last line of defence: a source never dies from its data
        invalid.report("undecodable", origin=origin, location=None,
                       detail=f"{type(error).__name__}: {str(error)[:200]}", payload=data)
        return [], None


def _decode(
    data: bytes, origin: str, invalid: InvalidReporter, max_record_bytes: int, max_bytes: int
) -> tuple[list[Any], list[int] | None]:
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
    rejects: _Rejects = []
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        if not data.strip():
            return [], None
        if b"\n" in data and looks_like_json_lines(data):
            return decode_lines(data, origin, invalid, max_record_bytes=max_record_bytes)
        if b"\n" in data and looks_like_json_lines(data, _DEEP_PROBE_LINES, cloudtrail_only=True):
            return decode_lines(data, origin, invalid, max_record_bytes=max_record_bytes)
        repaired = _repair_document(bytes(data))
        if repaired is None:
            invalid.report("invalid_json", origin=origin, location=None, detail=str(error), payload=data)
            return [], None
        value, notes, dropped = repaired
        records = _unwrap(value, 0, rejects)
        if records is None:
            invalid.report("invalid_json", origin=origin, location=None, detail=str(error), payload=data)
            return [], None
        invalid.report("repaired_json", origin=origin, location=None,
                       detail=f"{'; '.join(notes)}; the {len(records)} records kept", payload=dropped or None)
    else:
        if _plain_record(value) and len(data) <= max_record_bytes:
            return [value], None  # one message, one record (Kafka, EventBridge-less SQS): nothing to check
        records = _unwrap(value, 0, rejects)
    if rejects:
        _report_rejects(rejects, origin, invalid, None)
    if records is None:
        invalid.report("unknown_shape", origin=origin, location=None,
                       detail=f"a JSON {type(value).__name__} that is not a CloudTrail shape", payload=data)
        return [], None
    return _checked(records, origin, invalid, len(data), max_record_bytes), None
