"""Fetch one CloudTrail delivery object from S3, gunzipping it as it streams in, under size limits.

The SQS source learns about new CloudTrail files from S3 (or CloudTrail SNS) notifications and
must read objects it did not choose: a huge or hostile object must fail fast and clearly instead
of exhausting memory.  So the compressed size is checked before (``ContentLength``) and during
the download, and gzip is inflated chunk by chunk with a cap on the output — a gzip bomb stops at
the cap, not at the end of the bomb.  Decompression runs in a worker thread, so the event loop
(and the other pollers' visibility heartbeats) keep running while a large file is read.

Failures raise :class:`FetchError` carrying a fixed ``reason`` (a dead-letter reason, or
``transient`` for errors worth retrying as they are, such as throttling or a broken connection).
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any, Final

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from daemon.decode import GZIP_MAGIC

__all__ = ["FetchError", "Inflater", "fetch_object"]

_CHUNK: Final = 1 << 20
_MISSING_CODES: Final = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})


class FetchError(Exception):
    """An object that could not be read; ``reason`` says why (``transient`` is worth a retry)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    @property
    def poison(self) -> bool:
        """True when retrying cannot help: the object itself is missing, too large or corrupt."""
        return self.reason != "transient"


class Inflater:
    """Streaming gunzip (several members allowed) with a cap on the decompressed size."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._parts: list[bytes] = []
        self._decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._between_members = False

    def feed(self, data: bytes) -> None:
        """Inflate ``data``; raise :class:`FetchError` (``bad_gzip``/``too_large``) on a problem."""
        pending = data
        while pending:
            if self._between_members:
                if pending[:2] != GZIP_MAGIC:
                    return  # trailing garbage after the last member is ignored, as gzip(1) does
                self._decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._between_members = False
            room = self.max_bytes + 1 - self.size
            try:
                chunk = self._decompressor.decompress(pending, room)
            except zlib.error as error:
                raise FetchError("bad_gzip", f"corrupt gzip data after {self.size} bytes: {error}") from None
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise FetchError("too_large", f"gzip expands to more than {self.max_bytes} bytes")
            self._parts.append(chunk)
            if self._decompressor.eof:
                pending = self._decompressor.unused_data
                self._between_members = True
            else:
                pending = self._decompressor.unconsumed_tail

    def finish(self) -> bytes:
        """The whole output; ``truncated_gzip`` when the stream ended inside a member."""
        if not self._between_members:
            raise FetchError("truncated_gzip", f"gzip stream ends early, {self.size} bytes decoded")
        return self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


async def fetch_object(
    s3: Any, bucket: str, key: str, *, max_object_bytes: int, max_decompressed_bytes: int
) -> bytes:
    """The content of ``s3://bucket/key``, decompressed when it is gzip (detected by magic bytes)."""
    try:
        response = await s3.get_object(Bucket=bucket, Key=key)
    except ClientError as error:
        code = _error_code(error)
        if code in _MISSING_CODES:
            raise FetchError("unreadable", f"object does not exist ({code})") from None
        raise FetchError("transient", f"GetObject failed: {code or error}") from None
    except (TimeoutError, BotoCoreError, aiohttp.ClientError, OSError) as error:
        raise FetchError("transient", f"GetObject failed: {type(error).__name__}: {error}") from None
    length = response.get("ContentLength")
    inflater: Inflater | None = None
    raw: list[bytes] = []
    received = 0
    try:
        async with response["Body"] as body:
            if isinstance(length, int) and length > max_object_bytes:
                raise FetchError("too_large", f"object of {length} bytes exceeds max_object_bytes "
                                              f"{max_object_bytes}")
            while True:
                chunk = await body.read(_CHUNK)
                if not chunk:
                    break
                received += len(chunk)
                if received > max_object_bytes:
                    raise FetchError("too_large", f"object exceeds max_object_bytes {max_object_bytes}")
                if inflater is None and not raw and chunk[:2] == GZIP_MAGIC:
                    inflater = Inflater(max_decompressed_bytes)
                if inflater is not None:
                    await asyncio.to_thread(inflater.feed, chunk)
                else:
                    raw.append(chunk)
    except FetchError:
        raise
    except (TimeoutError, BotoCoreError, aiohttp.ClientError, OSError) as error:
        raise FetchError("transient", f"reading the object failed: {type(error).__name__}: {error}") from None
    if inflater is not None:
        return inflater.finish()
    data = raw[0] if len(raw) == 1 else b"".join(raw)
    if len(data) > max_decompressed_bytes:
        raise FetchError("too_large", f"object of {len(data)} bytes exceeds max_decompressed_bytes")
    return data
