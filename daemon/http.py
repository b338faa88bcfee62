"""The operator endpoint: ``/metrics`` (Prometheus), ``/healthz`` (alive, making progress) and
``/readyz`` (state restored, sources connected), served by a small HTTP/1.1 protocol on asyncio.

Why not aiohttp: three fixed GET routes answered from memory need no web framework, and importing
``aiohttp.web`` imports all of aiohttp — its client, cookie jar and two TLS contexts built at import
time — ~0.15-0.2 s CPU of every start-up before ``/readyz`` can answer (docs/performance.md, round 4).
aiohttp is still what the HTTP sinks and the SQS source use, imported when one is configured.

It must not be a way to starve the daemon of file descriptors (which also breaks checkpoints):
a connection that sends nothing, or half a request, is closed :data:`IDLE_TIMEOUT` seconds after it
opened or was last answered; beyond :data:`MAX_CONNECTIONS` open connections the oldest are closed
to make room, so a probe or a scrape always gets through; a request head larger than
:data:`MAX_HEAD_BYTES` is refused, and a request with a body is answered and the connection closed
(nothing here reads bodies, so nothing is left to desynchronise the next request).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.metrics import Metrics

__all__ = ["IDLE_TIMEOUT", "MAX_CONNECTIONS", "MAX_HEAD_BYTES", "OperatorServer"]

#: Seconds an idle or half-sent connection is kept (Prometheus scrapes take milliseconds).
IDLE_TIMEOUT: Final = 10.0
#: Open connections kept at most; a new one beyond it closes the oldest.
MAX_CONNECTIONS: Final = 128
#: Largest request line plus headers accepted (aiohttp's limit was 8,190 bytes a line).
MAX_HEAD_BYTES: Final = 16_384

_TEXT: Final = "text/plain; charset=utf-8"
_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                   431: "Request Header Fields Too Large", 503: "Service Unavailable"}

#: One answer: status, content type, body.
Answer = tuple[int, str, bytes]


class _Connection(asyncio.Protocol):
    """One client connection: parses request heads, answers them in order, enforces the limits."""

    def __init__(self, server: OperatorServer) -> None:
        self._server = server
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server._opened(self)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        self._server._closed(self)

    def abort(self) -> None:
        """Drop the connection now (idle, over the cap, or misbehaving)."""
        if self._transport is not None:
            self._transport.abort()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self.abort)

    def pause_writing(self) -> None:  # the client does not read its answers: stop reading its requests
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self._transport is not None:
            self._transport.resume_reading()
            self._answer_buffered()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer += data
        self._answer_buffered()

    def _answer_buffered(self) -> None:
        while self._transport is not None and not self._paused and not self._closing:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    self._reply(431, _TEXT, b"request head too large\n", "HTTP/1.1", close=True)
                return
            if end > MAX_HEAD_BYTES:
                self._reply(431, _TEXT, b"request head too large\n", "HTTP/1.1", close=True)
                return
            head, self._buffer = self._buffer[:end], self._buffer[end + 4:]
            self._request(head)

    def _request(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._reply(400, _TEXT, b"bad request\n", "HTTP/1.1", close=True)
            return
        method, target, version = parts[0], parts[1], parts[2].decode("ascii", "replace")
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                self._reply(400, _TEXT, b"bad header\n", version, close=True)
                return
            headers[name.strip().lower()] = value.strip().lower()
        tokens = {token.strip() for token in headers.get(b"connection", b"").split(b",")}
        close = b"close" in tokens if version == "HTTP/1.1" else b"keep-alive" not in tokens
        if headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers:
            close = True  # a body is never read: answer, then close rather than parse it as a request
        if method not in (b"GET", b"HEAD"):
            self._reply(405, _TEXT, b"method not allowed\n", version, close=close, extra="Allow: GET, HEAD\r\n")
            return
        status, content_type, body = self._server._route(target.partition(b"?")[0])
        self._reply(status, content_type, body, version, close=close, head_only=method == b"HEAD")

    def _reply(self, status: int, content_type: str, body: bytes, version: str, *, close: bool,
               head_only: bool = False, extra: str = "") -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        keep = "Connection: close\r\n" if close else ("Connection: keep-alive\r\n" if version == "HTTP/1.0" else "")
        transport.write(f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                        f"Content-Length: {len(body)}\r\n{keep}{extra}\r\n".encode("latin-1")
                        + (b"" if head_only else body))
        if close:  # closed once what is written has been sent; aborted by the timer if never read
            self._closing = True
            self._buffer = b""
            transport.close()
        self._arm()


class OperatorServer:
    """Serves metrics and probes; ``port=0`` picks a free port (see :attr:`port` after start)."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        host: str,
        port: int,
        health: Callable[[], tuple[bool, str]],
        ready: Callable[[], tuple[bool, str]],
    ) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._routes: dict[bytes, Callable[[], Answer]] = {
            b"/metrics": self._metrics,
            b"/healthz": lambda: self._probe(health),
            b"/readyz": lambda: self._probe(ready),
        }
        self._server: asyncio.Server | None = None
        #: Open connections, oldest first (dicts keep insertion order).
        self._connections: dict[_Connection, None] = {}

    async def start(self) -> None:
        """Bind and serve (raises ``OSError`` when the port is taken: the daemon refuses to start)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port, backlog=128)
        if self._server.sockets:
            self.port = self._server.sockets[0].getsockname()[1]

    def _opened(self, connection: _Connection) -> None:
        """Close the oldest connections once more than :data:`MAX_CONNECTIONS` are open."""
        self._connections[connection] = None
        excess = len(self._connections) - MAX_CONNECTIONS
        if excess > 0:
            for old in list(self._connections)[:excess]:
                del self._connections[old]
                old.abort()

    def _closed(self, connection: _Connection) -> None:
        self._connections.pop(connection, None)

    def _route(self, path: bytes) -> Answer:
        handler = self._routes.get(path)
        return handler() if handler is not None else (404, _TEXT, b"not found\n")

    def _metrics(self) -> Answer:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)

    @staticmethod
    def _probe(check: Callable[[], tuple[bool, str]]) -> Answer:
        ok, reason = check()
        return (200 if ok else 503), _TEXT, f"{'ok' if ok else 'not ok'}: {reason}\n".encode()

    async def stop(self) -> None:
        """Stop serving and close every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for connection in list(self._connections):
            connection.abort()
        self._connections.clear()
        await server.wait_closed()
