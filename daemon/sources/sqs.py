"""The ``sqs`` source: CloudTrail from an SQS queue fed by EventBridge, S3 or SNS notifications.

This is how trailguard follows an organisation trail in real time without polling S3: CloudTrail
writes to a bucket, the bucket (or CloudTrail's SNS topic, or an EventBridge rule) notifies a
queue, and several trailguard replicas share the queue.  Each message's shape is detected from its
body (:mod:`daemon.sources.sqs_messages`); S3 objects are fetched and gunzipped under size limits
(:mod:`daemon.sources.s3fetch`) and decoded by :mod:`daemon.decode`.

Delivery is at-least-once:

* a message is deleted only when :meth:`SqsSource.acknowledge` has seen *every* batch it produced
  (one per message, or one per ``batch_size`` records of a large S3 file), that is after a
  checkpoint covered its events and their alerts reached the sinks;
* while a message is in flight its visibility is extended (at half the visibility timeout), so a
  slow file or a slow checkpoint does not hand it to another replica;
* a message that cannot be parsed or fetched is *not* deleted: it is counted
  (``source_retried``, plus ``source_poison`` when its content is at fault), logged with the
  reason, and left for the queue's redrive policy, which moves it to the dead-letter queue after
  ``maxReceiveCount`` receives;
* at shutdown, messages received but not handed to the pipeline are released (visibility 0) so
  another replica takes them at once.

Receiving is ``pollers`` long-poll loops; a poller does not receive again until every batch of its
previous receive is queued, so a slow pipeline stops the receiving (backpressure).  Credentials,
profiles, IRSA and ``AWS_ENDPOINT_URL_SQS`` / ``AWS_ENDPOINT_URL_S3`` are botocore's standard
chain; nothing here is trailguard-specific.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple
from urllib.parse import urlsplit

import aiohttp
import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from daemon.awsurls import region_from_queue_url
from daemon.deadletter import InvalidReporter
from daemon.decode import decode_bytes
from daemon.retry import Backoff, wait_or_stop
from daemon.sources.base import Source, SourceBatch
from daemon.sources.s3fetch import FetchError, fetch_object
from daemon.sources.sqs_messages import BadMessage, ObjectRef, parse_message
from detectors.durations import Duration
from detectors.event import MAX_RECORD_BYTES

__all__ = ["SqsPosition", "SqsSource", "SqsSourceConfig"]

DEFAULT_KEY_PATTERN: Final = r"(^|/)CloudTrail/.+\.json(\.gz)?$"
_DEFAULT_VISIBILITY: Final = 30
_ENTRIES_PER_CALL: Final = 10
_TRANSPORT_ERRORS: Final = (BotoCoreError, ClientError, aiohttp.ClientError, OSError, asyncio.TimeoutError)


class SqsSourceConfig(BaseModel):
    """Settings of one ``sqs`` source; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["sqs"] = "sqs"
    name: str | None = None
    queue_url: str = Field(min_length=1)
    #: Defaults to the region in ``queue_url``, else botocore's (``AWS_REGION``, profile).
    region: str | None = None
    #: SQS endpoint; ``None``: botocore's (``AWS_ENDPOINT_URL_SQS`` / ``AWS_ENDPOINT_URL`` apply).
    endpoint_url: str | None = None
    #: S3 endpoint for fetching notified objects; ``None``: botocore's (``AWS_ENDPOINT_URL_S3``).
    s3_endpoint_url: str | None = None
    #: A named profile from the AWS config files; ``None``: the default credential chain.
    profile: str | None = None
    wait_time_seconds: int = Field(20, ge=0, le=20)
    max_messages: int = Field(10, ge=1, le=10)
    pollers: int = Field(2, ge=1, le=32)
    #: Passed with each receive; ``None``: the queue's own VisibilityTimeout.
    visibility_timeout: int | None = Field(None, ge=1, le=43200)
    #: Most records in one batch handed to the pipeline (a large S3 file becomes several).
    batch_size: int = Field(1000, ge=1)
    max_object_bytes: int = Field(256 << 20, ge=1)
    max_decompressed_bytes: int = Field(1 << 30, ge=1)
    max_record_bytes: int = Field(MAX_RECORD_BYTES, ge=1)
    #: Objects whose key does not match are skipped (digest files, Insights, other logs).
    object_key_pattern: str = DEFAULT_KEY_PATTERN
    backlog_interval: Duration = Field(30.0, gt=0)
    #: Longest pause between attempts while the queue is unreachable.
    max_backoff: Duration = Field(30.0, gt=0)
    #: After stop, how long in-flight messages wait for their acknowledgement before release.
    close_timeout: Duration = Field(10.0, ge=0)

    @field_validator("queue_url")
    @classmethod
    def _queue_url(cls, value: str) -> str:
        """``https://sqs.<region>.amazonaws.com/<account>/<name>`` (or any host, e.g. LocalStack)."""
        try:
            parts = urlsplit(value)
            host = parts.hostname
        except ValueError as error:
            raise ValueError(f"not a URL: {error}") from None
        path = [p for p in parts.path.split("/") if p]
        if parts.scheme not in ("http", "https") or not host or len(path) != 2 or any(
                ch.isspace() or ord(ch) < 32 for ch in value):
            raise ValueError("not an SQS queue URL; write https://sqs.<region>.amazonaws.com/<account-id>/<queue-name>")
        return value

    @field_validator("object_key_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"not a valid regular expression: {error}") from None
        return value


class SqsPosition(NamedTuple):
    """One batch of one received message: the message's local token and the batch's index."""

    token: int
    chunk: int


@dataclass(slots=True)
class _Message:
    """A received message while it is in flight (received, not yet deleted or released)."""

    token: int
    message_id: str
    receipt: str
    visible_until: float
    emitted: int = 0      # batches produced so far (the next batch's index)
    outstanding: int = 0  # batches handed out and not yet acknowledged
    unyielded: int = 0    # batches queued inside the source, not yet handed to the pipeline
    sealed: bool = False  # every batch of the message has been queued


class _Tally(InvalidReporter):
    """Forwards reports and remembers their reasons, to tell "nothing usable" from "empty"."""

    def __init__(self, inner: InvalidReporter) -> None:
        super().__init__(inner.metrics)
        self.inner = inner
        self.reasons: list[str] = []

    def report(self, reason: str, *, origin: str, location: int | str | None, detail: str,
               payload: bytes | str | object | None = None) -> None:
        self.reasons.append(reason)
        self.inner.report(reason, origin=origin, location=location, detail=detail, payload=payload)


class _GiveUp(Exception):
    """Leave the message for redelivery; ``poison`` when its content (not the network) is at fault."""

    def __init__(self, reason: str, detail: str, poison: bool) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.poison = poison


class SqsSource(Source):
    """Receives from one SQS queue with long polling (see the module doc)."""

    kind = "sqs"
    Config = SqsSourceConfig

    def __init__(self, config: SqsSourceConfig, invalid: InvalidReporter, name: str | None = None) -> None:
        super().__init__(name or config.name or config.type, invalid)
        self.config = config
        self.log = structlog.get_logger("trailguard.source.sqs").bind(source=self.name)
        self._key_pattern = re.compile(config.object_key_pattern)
        self._queue_name = config.queue_url.rstrip("/").rsplit("/", 1)[-1]
        self._region = config.region or region_from_queue_url(config.queue_url)
        self._visibility = config.visibility_timeout or _DEFAULT_VISIBILITY
        self._attributes_known = False
        self._inflight: dict[int, _Message] = {}
        self._next_token = 0
        self._out: asyncio.Queue[tuple[SourceBatch, _Message]] = asyncio.Queue(1)
        self._stop_event = asyncio.Event()
        self._stack: AsyncExitStack | None = None
        self._sqs: Any = None
        self._s3: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pollers: list[asyncio.Task[None]] = []
        self._drained = asyncio.Event()
        self._connected = False
        self._outage = False
        metrics = invalid.metrics
        self._m_retried = metrics.source_retried.labels(source=self.name)
        self._m_poison = metrics.source_poison.labels(source=self.name)
        self._m_errors = metrics.source_errors.labels(source=self.name)
        self._m_up = metrics.source_up.labels(source=self.name)
        self._m_backlog = metrics.sqs_backlog.labels(source=self.name)

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """True once a receive (or attribute read) succeeded and no error followed it."""
        return self._connected and not self._stopping

    def _client_config(self) -> AioConfig:
        return AioConfig(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5,
                         read_timeout=self.config.wait_time_seconds + 15, max_pool_connections=self.config.pollers + 4)

    async def _open_clients(self) -> None:
        session = AioSession(profile=self.config.profile)
        stack = AsyncExitStack()
        config = self._client_config()
        self._sqs = await stack.enter_async_context(session.create_client(
            "sqs", region_name=self._region, endpoint_url=self.config.endpoint_url, config=config))
        self._s3 = await stack.enter_async_context(session.create_client(
            "s3", region_name=self._region, endpoint_url=self.config.s3_endpoint_url, config=config))
        self._stack = stack

    async def start(self) -> None:
        """Create the clients and start the pollers, the visibility heartbeat and the backlog probe."""
        await super().start()
        self._stop_event.clear()
        self._drained.clear()
        if self._stack is None:
            await self._open_clients()
        self._pollers = [asyncio.create_task(self._poll(), name=f"sqs-poller:{self.name}:{i}")
                         for i in range(self.config.pollers)]
        self._tasks = [asyncio.create_task(self._heartbeat(), name=f"sqs-heartbeat:{self.name}"),
                       asyncio.create_task(self._backlog(), name=f"sqs-backlog:{self.name}")]

    async def stop(self) -> None:
        """Stop receiving; release what was not handed out; close once the rest is acknowledged."""
        if self._stopping:
            return
        await super().stop()
        self._stop_event.set()
        for task in self._pollers:
            task.cancel()
        await asyncio.gather(*self._pollers, return_exceptions=True)
        self._pollers = []
        while not self._out.empty():
            _, message = self._out.get_nowait()
            message.unyielded -= 1
        unfinished = [m for m in self._inflight.values() if m.unyielded or not m.sealed]
        for message in unfinished:
            del self._inflight[message.token]
        await self._release(unfinished)
        self._check_drained()
        # wait_closed() then waits until the clients are closed (all in-flight messages acknowledged,
        # or timed out).
        self._close_when_drained(self._drained, self.config.close_timeout, self._undrained, self._close)

    def _undrained(self) -> None:
        self.log.warning("sqs messages not acknowledged before close; released for redelivery",
                         messages=len(self._inflight))

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        leftover = list(self._inflight.values())
        self._inflight.clear()
        await self._release(leftover)
        stack, self._stack = self._stack, None
        self._sqs = self._s3 = None
        if stack is not None:
            await stack.aclose()

    def _check_drained(self) -> None:
        if self._stopping and not self._pollers and not self._inflight:
            self._drained.set()

    # -- batches ---------------------------------------------------------------------------------
    async def batches(self) -> AsyncIterator[SourceBatch]:
        """Batches queued by the pollers, until :meth:`stop`."""
        stop_wait = asyncio.ensure_future(self._stop_event.wait())
        try:
            while not self._stopping:
                get = asyncio.ensure_future(self._out.get())
                await asyncio.wait({get, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    return
                batch, message = get.result()
                message.unyielded -= 1
                yield batch
        finally:
            stop_wait.cancel()

    async def acknowledge(self, positions: list[Any]) -> None:
        """Delete every message whose batches are now all acknowledged."""
        done: list[_Message] = []
        for position in positions:
            message = self._inflight.get(position.token)
            if message is None:
                continue  # released (failed, or shutdown) or already deleted
            message.outstanding -= 1
            if message.sealed and message.outstanding <= 0:
                del self._inflight[message.token]
                done.append(message)
        await self._delete(done)
        self._check_drained()

    # -- receiving -------------------------------------------------------------------------------
    async def _poll(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                if not self._attributes_known:
                    await self._read_attributes()
                response = await self._sqs.receive_message(**self._receive_args())
            except asyncio.CancelledError:
                raise
            except _TRANSPORT_ERRORS as error:
                failures += 1
                await self._backoff(error, failures)
                continue
            failures = 0
            self._mark_up()
            messages = response.get("Messages") or []
            now = time.monotonic()
            tracked = [self._track(m, now) for m in messages]
            for raw, message in zip(messages, tracked, strict=True):
                try:
                    await self._handle(raw, message)
                except _GiveUp as give_up:
                    self._give_up(message, give_up)
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    self.log.error("sqs message handling failed; left for redelivery", message_id=message.message_id,
                                   error=type(error).__name__, detail=str(error)[:300], exc_info=True)
                    self._give_up(message, _GiveUp("internal", str(error), poison=False))

    def _receive_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"QueueUrl": self.config.queue_url, "MaxNumberOfMessages": self.config.max_messages,
                                "WaitTimeSeconds": self.config.wait_time_seconds,
                                "MessageSystemAttributeNames": ["ApproximateReceiveCount"]}
        if self.config.visibility_timeout is not None:
            args["VisibilityTimeout"] = self.config.visibility_timeout
        return args

    async def _read_attributes(self) -> None:
        response = await self._sqs.get_queue_attributes(
            QueueUrl=self.config.queue_url, AttributeNames=["VisibilityTimeout", "ApproximateNumberOfMessages"])
        attributes = response.get("Attributes") or {}
        if self.config.visibility_timeout is None and "VisibilityTimeout" in attributes:
            self._visibility = max(1, int(attributes["VisibilityTimeout"]))
        if "ApproximateNumberOfMessages" in attributes:
            self._m_backlog.set(int(attributes["ApproximateNumberOfMessages"]))
        self._attributes_known = True
        self._mark_up()

    def _track(self, raw: dict[str, Any], now: float) -> _Message:
        self._next_token += 1
        message = _Message(self._next_token, str(raw.get("MessageId", "")), str(raw.get("ReceiptHandle", "")),
                           now + self._visibility)
        self._inflight[message.token] = message
        return message

    def _mark_up(self) -> None:
        if self._outage:
            self.log.info("sqs queue reachable again")
            self._outage = False
        self._connected = True
        self._m_up.set(1)

    async def _backoff(self, error: BaseException, failures: int) -> None:
        self._m_errors.inc()
        self._m_up.set(0)
        self._connected = False
        if not self._outage:
            self._outage = True
            self.log.warning("sqs queue unreachable; backing off", error=type(error).__name__,
                             detail=str(error)[:300])
        await wait_or_stop(Backoff(maximum=self.config.max_backoff).delay(failures + 1), self._stop_event)

    # -- one message -----------------------------------------------------------------------------
    async def _handle(self, raw: dict[str, Any], message: _Message) -> None:
        body = raw.get("Body") or ""
        origin = f"sqs://{self._queue_name}/{message.message_id}"
        try:
            parsed = parse_message(body)
        except BadMessage as bad:
            self.invalid.report(bad.reason, origin=origin, location=None, detail=bad.detail, payload=body)
            raise _GiveUp(bad.reason, bad.detail, poison=True) from None
        if parsed.records:
            await self._emit(message, parsed.records, None, origin)
        for obj in parsed.objects:
            if not self._key_pattern.search(obj.key):
                self.log.debug("s3 object skipped: key does not match object_key_pattern", object=obj.uri)
                continue
            await self._fetch_and_emit(message, obj)
        if parsed.ignored and not parsed.records and not parsed.objects:
            self.log.info("sqs message carries no records; deleted", message_id=message.message_id,
                          why=parsed.ignored)
        message.sealed = True
        if message.outstanding == 0:
            del self._inflight[message.token]
            await self._delete([message])

    async def _fetch_and_emit(self, message: _Message, obj: ObjectRef) -> None:
        config = self.config
        origin = obj.uri
        if obj.size is not None and obj.size > config.max_object_bytes:
            detail = f"object of {obj.size} bytes exceeds max_object_bytes {config.max_object_bytes}"
            self.invalid.report("too_large", origin=origin, location=None, detail=detail)
            raise _GiveUp("too_large", detail, poison=True)
        try:
            data = await fetch_object(self._s3, obj.bucket, obj.key, max_object_bytes=config.max_object_bytes,
                                      max_decompressed_bytes=config.max_decompressed_bytes)
        except FetchError as error:
            if error.poison:
                self.invalid.report(error.reason, origin=origin, location=None, detail=error.detail)
            else:
                self._m_errors.inc()
            raise _GiveUp(error.reason, f"{origin}: {error.detail}", poison=error.poison) from None
        tally = _Tally(self.invalid)
        records, lines = await asyncio.to_thread(decode_bytes, data, origin, tally,
                                                 max_record_bytes=config.max_record_bytes,
                                                 max_bytes=config.max_decompressed_bytes)
        del data
        if not records and tally.reasons:
            raise _GiveUp(tally.reasons[0], f"{origin}: no usable record", poison=True)
        await self._emit(message, records, lines, origin)

    async def _emit(self, message: _Message, records: list[Any], lines: list[int] | None, origin: str) -> None:
        size = self.config.batch_size
        for start in range(0, len(records), size):
            end = min(start + size, len(records))
            chunk = records if start == 0 and end == len(records) else records[start:end]
            locations = lines[start:end] if lines is not None else (range(start, end) if start else None)
            batch = SourceBatch(self.name, chunk, origin, locations, SqsPosition(message.token, message.emitted))
            message.emitted += 1
            message.outstanding += 1
            message.unyielded += 1
            await self._out.put((batch, message))

    def _give_up(self, message: _Message, give_up: _GiveUp) -> None:
        self._inflight.pop(message.token, None)
        self._m_retried.inc()
        if give_up.poison:
            self._m_poison.inc()
        self.log.warning("sqs message not processed; left for redelivery", message_id=message.message_id,
                         reason=give_up.reason, detail=give_up.detail[:300], poison=give_up.poison)

    # -- visibility, deletion, backlog -----------------------------------------------------------
    async def _heartbeat(self) -> None:
        while True:
            # Recomputed each round: the queue's visibility timeout is only known after the first read.
            await asyncio.sleep(max(0.1, min(self._visibility / 4, 1.0)))
            now = time.monotonic()
            due = [m for m in self._inflight.values() if m.visible_until - now < self._visibility / 2]
            if due:
                await self._change_visibility(due, self._visibility, now)

    async def _change_visibility(self, messages: list[_Message], seconds: int, now: float) -> None:
        for group in _groups(messages):
            entries = [{"Id": str(m.token), "ReceiptHandle": m.receipt, "VisibilityTimeout": seconds} for m in group]
            try:
                response = await self._sqs.change_message_visibility_batch(
                    QueueUrl=self.config.queue_url, Entries=entries)
            except asyncio.CancelledError:
                raise
            except _TRANSPORT_ERRORS as error:
                self._m_errors.inc()
                self.log.warning("sqs visibility change failed; messages may be redelivered",
                                 messages=len(group), error=type(error).__name__, detail=str(error)[:300])
                continue
            refused = response.get("Failed") or []
            failed = {entry.get("Id") for entry in refused}
            for message in group:
                if str(message.token) not in failed:
                    message.visible_until = now + seconds
            if refused and seconds:
                self.log.warning("sqs visibility change refused for some messages; they may be redelivered",
                                 messages=len(refused), code=refused[0].get("Code"),
                                 detail=str(refused[0].get("Message"))[:200])

    async def _release(self, messages: list[_Message]) -> None:
        if messages and self._stack is not None:
            await self._change_visibility(messages, 0, time.monotonic())

    async def _delete(self, messages: list[_Message]) -> None:
        if not messages:
            return
        temporary: AsyncExitStack | None = None
        client = self._sqs
        if client is None:  # acknowledged after close: a short-lived client for the deletion
            temporary = AsyncExitStack()
            client = await temporary.enter_async_context(AioSession(profile=self.config.profile).create_client(
                "sqs", region_name=self._region, endpoint_url=self.config.endpoint_url, config=self._client_config()))
        try:
            for group in _groups(messages):
                entries = [{"Id": str(m.token), "ReceiptHandle": m.receipt} for m in group]
                try:
                    response = await client.delete_message_batch(QueueUrl=self.config.queue_url, Entries=entries)
                except _TRANSPORT_ERRORS as error:
                    self._m_errors.inc()
                    self.log.warning("sqs delete failed; messages will be redelivered (duplicates are dropped)",
                                     messages=len(group), error=type(error).__name__, detail=str(error)[:300])
                    continue
                failed = response.get("Failed") or []
                if failed:
                    self.log.warning("sqs delete refused for some messages; they will be redelivered",
                                     messages=len(failed), code=failed[0].get("Code"))
        finally:
            if temporary is not None:
                await temporary.aclose()

    async def _backlog(self) -> None:
        while True:
            await asyncio.sleep(self.config.backlog_interval)
            try:
                await self._read_attributes()
            except asyncio.CancelledError:
                raise
            except _TRANSPORT_ERRORS as error:
                self._m_errors.inc()
                self.log.debug("sqs backlog probe failed", error=type(error).__name__)


def _groups(messages: Iterable[_Message]) -> Iterable[list[_Message]]:
    """Messages in groups of ten, the most one SQS batch call takes."""
    group: list[_Message] = []
    for message in messages:
        group.append(message)
        if len(group) == _ENTRIES_PER_CALL:
            yield group
            group = []
    if group:
        yield group
