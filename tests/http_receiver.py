"""A real HTTP server on a free loopback port standing in for a webhook / Slack / PagerDuty receiver.

Behaviour is scripted per request: ``receiver.script`` is a list of responses consumed in order
(status, headers, delay), after which ``receiver.default`` answers.  ``stop()`` takes the port
down (connections refused) and ``start()`` brings it back on the same port — an outage.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

import orjson
from aiohttp import web

__all__ = ["Received", "Receiver", "Reply"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Reply:
    """One scripted answer."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: str = "ok"


@dataclass
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> dict:
        return orjson.loads(self.body)


class Receiver:
    """``await Receiver().start()``; ``url(path)``; ``requests``/``accepted`` recorded."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.script: list[Reply] = []
        self.default = Reply()
        self.requests: list[Received] = []
        self.accepted: list[Received] = []
        self._runner: web.AppRunner | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        item = Received(request.path_qs, dict(request.headers), body, asyncio.get_running_loop().time())
        self.requests.append(item)
        reply = self.script.pop(0) if self.script else self.default
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if 200 <= reply.status < 300:
            self.accepted.append(item)
        return web.Response(status=reply.status, text=reply.body, headers=reply.headers)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def accepted_ids(self) -> list[str]:
        """Alert ids of accepted webhook posts, in arrival order."""
        return [r.json()["id"] for r in self.accepted]
