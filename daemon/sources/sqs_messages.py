"""What one SQS message body means: CloudTrail records, S3 objects to fetch, or nothing to do.

A CloudTrail queue receives several shapes, often mixed on one queue, and the shape is detected
per message from its content:

* an EventBridge envelope (``detail`` is the record), a ``{"Records": [...]}`` CloudTrail batch or
  a single record — the records are in the body (:func:`daemon.decode.unwrap`);
* an S3 event notification (``Records[].s3.bucket.name`` / ``.object.key``, keys URL-encoded with
  ``+`` for a space) — the records are in the objects it names;
* CloudTrail's own SNS "new log file" notification (``{"s3Bucket": ..., "s3ObjectKey": [...]}``);
* any of these wrapped in an SNS notification (``"Type": "Notification"`` with a ``Message``
  string), as SNS → SQS delivers them without raw delivery;
* ``s3:TestEvent`` and SNS subscription confirmations, which carry nothing and are acknowledged.

Parsing is pure (no I/O), so it is tested without a broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote_plus

import orjson

from daemon.decode import unwrap

__all__ = ["BadMessage", "ObjectRef", "ParsedMessage", "parse_message"]

_MAX_DEPTH: Final = 3
_IGNORED_SNS_TYPES: Final = frozenset({"SubscriptionConfirmation", "UnsubscribeConfirmation"})


class BadMessage(Exception):
    """A body that is not JSON or not a known shape; ``reason`` is a dead-letter reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """One S3 object a notification points at (key already URL-decoded)."""

    bucket: str
    key: str
    size: int | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(slots=True)
class ParsedMessage:
    """Records carried in the body, objects to fetch, or ``ignored`` (a note saying why)."""

    records: list[Any] = field(default_factory=list)
    objects: list[ObjectRef] = field(default_factory=list)
    ignored: str | None = None


def _s3_notification(records: list[Any]) -> list[ObjectRef] | None:
    """Objects of an S3 event notification; ``None`` when ``records`` are not one."""
    first = records[0] if records else None
    if not isinstance(first, dict) or first.get("eventSource") != "aws:s3" or "s3" not in first:
        return None
    out: list[ObjectRef] = []
    for item in records:
        if not isinstance(item, dict):
            continue
        if not str(item.get("eventName", "")).startswith("ObjectCreated:"):
            continue  # removals, restores, replication events: no new log file
        s3 = item.get("s3")
        bucket = s3.get("bucket") if isinstance(s3, dict) else None
        obj = s3.get("object") if isinstance(s3, dict) else None
        name = bucket.get("name") if isinstance(bucket, dict) else None
        key = obj.get("key") if isinstance(obj, dict) else None
        if not isinstance(name, str) or not isinstance(key, str):
            raise BadMessage("unknown_shape", "S3 notification record without s3.bucket.name/s3.object.key")
        size = obj.get("size") if isinstance(obj, dict) else None
        out.append(ObjectRef(name, unquote_plus(key), size if isinstance(size, int) else None))
    return out


def _parse(value: Any, depth: int) -> ParsedMessage:
    if isinstance(value, dict):
        sns_type = value.get("Type")
        if sns_type == "Notification" and isinstance(value.get("Message"), str) and depth < _MAX_DEPTH:
            try:
                inner = orjson.loads(value["Message"])
            except orjson.JSONDecodeError as error:
                raise BadMessage("invalid_json", f"SNS Message is not JSON: {error}") from None
            return _parse(inner, depth + 1)
        if sns_type in _IGNORED_SNS_TYPES:
            return ParsedMessage(ignored=f"SNS {sns_type}")
        if value.get("Event") == "s3:TestEvent":
            return ParsedMessage(ignored="s3:TestEvent")
        bucket, keys = value.get("s3Bucket"), value.get("s3ObjectKey")
        if isinstance(bucket, str) and isinstance(keys, list):
            # CloudTrail's SNS notification: keys are plain (not URL-encoded).
            return ParsedMessage(objects=[ObjectRef(bucket, k) for k in keys if isinstance(k, str)])
        records = value.get("Records")
        if isinstance(records, list):
            objects = _s3_notification(records)
            if objects is not None:
                return ParsedMessage(objects=objects, ignored=None if objects else "no ObjectCreated record")
    found = unwrap(value)
    if found is None:
        raise BadMessage("unknown_shape", f"a JSON {type(value).__name__} that is neither CloudTrail nor an "
                                          "S3/SNS/EventBridge notification")
    return ParsedMessage(records=found, ignored=None if found else "no records")


def parse_message(body: str | bytes) -> ParsedMessage:
    """Classify one SQS message body; raise :class:`BadMessage` when it is unusable."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BadMessage("invalid_json", f"message body is not JSON: {error}") from None
    return _parse(value, 0)
