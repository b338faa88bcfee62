"""The operator endpoint over real sockets: routes, HTTP/1.1 keep-alive and pipelining, HEAD, and
the limits that keep a misbehaving client from holding descriptors (idle and half-sent requests
closed, oversized heads refused, bodies never parsed as requests).  The connection cap under 1,100
idle connections is in tests/test_reliability.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from daemon import http
from daemon.http import MAX_HEAD_BYTES, OperatorServer
from daemon.metrics import Metrics


@pytest.fixture
async def server() -> AsyncIterator[OperatorServer]:
    served = OperatorServer(Metrics(), host="127.0.0.1", port=0, health=lambda: (True, "making progress"),
                            ready=lambda: (False, "restoring state"))
    await served.start()
    yield served
    await served.stop()


async def _exchange(server: OperatorServer, request: bytes, timeout: float = 10) -> bytes:
    """Send ``request`` and read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def test_probes_answer_with_status_and_reason(server: OperatorServer) -> None:
    health = await _exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    ready = await _exchange(server, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert health.startswith(b"HTTP/1.1 200 OK\r\n") and health.endswith(b"\r\n\r\nok: making progress\n")
    assert ready.startswith(b"HTTP/1.1 503 ") and ready.endswith(b"\r\n\r\nnot ok: restoring state\n")
    assert b"Content-Type: text/plain; charset=utf-8\r\n" in health


async def test_metrics_are_the_registry_in_prometheus_text_format(server: OperatorServer) -> None:
    server.metrics.events_received.labels(source="trail").inc(3)
    response = await _exchange(server, b"GET /metrics?name[]=x HTTP/1.1\r\nConnection: close\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Type: text/plain; version=" in head
    assert b'trailguard_events_received_total{source="trail"} 3.0' in body
    assert f"Content-Length: {len(body)}".encode() in head


async def test_unknown_paths_and_methods_are_refused(server: OperatorServer) -> None:
    missing = await _exchange(server, b"GET /admin HTTP/1.1\r\nConnection: close\r\n\r\n")
    posted = await _exchange(server, b"DELETE /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    garbage = await _exchange(server, b"\x16\x03\x01 hello\r\n\r\n")
    assert missing.startswith(b"HTTP/1.1 404 ")
    assert posted.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD\r\n" in posted
    assert garbage.startswith(b"HTTP/1.1 400 ")


async def test_head_answers_headers_without_the_body(server: OperatorServer) -> None:
    response = await _exchange(server, b"HEAD /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200 OK") and response.endswith(b"\r\n\r\n")
    assert b"Content-Length: 20\r\n" in response


async def test_keep_alive_answers_pipelined_requests_in_order_on_one_connection(server: OperatorServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await asyncio.wait_for(reader.readuntil(b"progress\n"), 10)
        second = await asyncio.wait_for(reader.readuntil(b"state\n"), 10)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: TE, close\r\n\r\n")
        third = await asyncio.wait_for(reader.read(), 10)  # then closed, as asked
    finally:
        writer.close()
    assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 503")
    assert third.startswith(b"HTTP/1.1 200")


async def test_http_1_0_closes_after_the_answer_unless_kept_alive(server: OperatorServer) -> None:
    response = await _exchange(server, b"GET /healthz HTTP/1.0\r\n\r\n")  # read() returns: the server closed
    assert response.startswith(b"HTTP/1.1 200") and b"Connection: close\r\n" in response


async def test_an_oversized_request_head_is_refused_and_closed(server: OperatorServer) -> None:
    request = b"GET /healthz HTTP/1.1\r\nX-Padding: " + b"a" * (MAX_HEAD_BYTES + 10)  # never ends
    response = await _exchange(server, request)
    assert response.startswith(b"HTTP/1.1 431 ")


async def test_a_request_with_a_body_is_answered_and_the_connection_closed(server: OperatorServer) -> None:
    """The body is never read: it could otherwise be parsed as a second, smuggled request."""
    response = await _exchange(server, b"GET /healthz HTTP/1.1\r\nContent-Length: 30\r\n\r\n"
                                       b"GET /metrics HTTP/1.1\r\n\r\n")
    assert response.count(b"HTTP/1.1 ") == 1 and response.startswith(b"HTTP/1.1 200")


async def test_idle_and_half_sent_connections_are_closed_after_the_idle_timeout(
        server: OperatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "IDLE_TIMEOUT", 0.2)
    idle = await _exchange(server, b"")
    half = await _exchange(server, b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    answered_then_idle = await _exchange(server, b"GET /healthz HTTP/1.1\r\n\r\n")
    assert idle == b"" and half == b""
    assert answered_then_idle.startswith(b"HTTP/1.1 200") and answered_then_idle.endswith(b"progress\n")
    assert not server._connections
