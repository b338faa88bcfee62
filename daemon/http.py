"""The operator endpoint: ``/metrics`` (Prometheus), ``/healthz`` (alive, making progress) and
``/readyz`` (state restored, sources connected) on one small aiohttp server.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.metrics import Metrics

__all__ = ["OperatorServer"]


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
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if server is not None and server.sockets:  # type: ignore[union-attr]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

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
