"""The operator endpoint: ``/metrics`` (Prometheus), ``/healthz`` (alive, making progress) and
``/readyz`` (state restored, sources connected) on one small aiohttp server.

It must not be a way to starve the daemon of file descriptors (which also breaks checkpoints):
a connection that sends nothing, or half a request, is closed after :data:`IDLE_TIMEOUT` seconds,
and beyond :data:`MAX_CONNECTIONS` open connections the oldest are closed to make room, so a
probe or a scrape always gets through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.metrics import Metrics

__all__ = ["IDLE_TIMEOUT", "MAX_CONNECTIONS", "OperatorServer"]

#: Seconds an idle or half-sent connection is kept (Prometheus scrapes take milliseconds).
IDLE_TIMEOUT: Final = 10.0
#: Open connections kept at most; a new one beyond it closes the oldest.
MAX_CONNECTIONS: Final = 128


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
        self._health = health
        self._ready = ready
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and serve (raises ``OSError`` when the port is taken: the daemon refuses to start)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._probe(self._health))
        app.router.add_get("/readyz", self._probe(self._ready))
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=IDLE_TIMEOUT)
        await self._runner.setup()
        self._cap_connections(self._runner.server)
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if server is not None and server.sockets:  # type: ignore[union-attr]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    @staticmethod
    def _cap_connections(server: Any) -> None:
        """Close the oldest connections once more than :data:`MAX_CONNECTIONS` are open."""
        connections: dict[Any, asyncio.Transport] = getattr(server, "_connections", {})
        opened = server.connection_made

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            opened(handler, transport)
            excess = len(connections) - MAX_CONNECTIONS
            if excess > 0:
                for old, old_transport in list(connections.items())[:excess]:
                    if old is not handler:
                        old_transport.abort()

        server.connection_made = connection_made

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @staticmethod
    def _probe(check: Callable[[], tuple[bool, str]]) -> Callable[[web.Request], object]:
        async def handler(_request: web.Request) -> web.Response:
            ok, reason = check()
            return web.Response(status=200 if ok else 503, text=f"{'ok' if ok else 'not ok'}: {reason}\n")

        return handler

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
