"""proxy.py under upstream faults and client disconnects: the right status, no retries, no leaks.

Every fault is a real socket misbehaving (`fakes.FaultServer`); disconnects go through real uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import FaultServer, RecordingUpstream, Reply, UvicornServer
from fakes.raw import RawServer, self_signed, server_context
from test_proxy import CANARY, call, gateway

from gateway.observe.events import RECORD_KEY, RequestRecord
from gateway.proxy.forward import ResponseAborted

FAST: dict[str, Any] = {"connect_timeout_s": 0.3, "read_timeout_s": 0.3}
_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def assert_clean_message(body: bytes, port: int) -> str:
    """The error is SMSGate-shaped and names no credential, host, port or URL."""
    message = json.loads(body)["message"]
    assert isinstance(message, str)
    assert message
    for leak in (CANARY, "127.0.0.1", str(port), "http://", "Basic "):
        assert leak not in message
    return message


@pytest.mark.parametrize(
    ("mode", "status"),
    [
        ("refuse", 502),
        ("blackhole", 504),
        ("hang_before_headers", 504),
        ("close_before_headers", 502),
        ("reset_before_headers", 502),
        ("malformed_status_line", 502),
        ("huge_headers", 502),
    ],
)
async def test_fault_before_response_is_an_error(mode: str, status: int) -> None:
    """Refused, reset or garbled → 502; connect or read timeout → 504; as `{"message": ...}`."""
    async with FaultServer(mode) as upstream, gateway(upstream.url, **FAST) as app:
        got, headers, body = await call(app, "POST", headers=[("Content-Length", "2")], body=[b"hi"])
    assert got == status
    assert headers["content-type"] == "application/json"
    assert_clean_message(body, upstream.port)


@pytest.mark.parametrize("mode", ["close_before_headers", "reset_before_headers"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "POST"])
async def test_dropped_request_is_never_resent(mode: str, method: str) -> None:
    """aiohttp would silently resend GET/PUT/DELETE after a dropped connection; the gateway never does."""
    async with FaultServer(mode) as upstream, gateway(upstream.url) as app:
        status, _, _ = await call(app, method, headers=[("Content-Length", "1")], body=[b"x"])
        await asyncio.sleep(0.05)
        assert upstream.requests == 1
    assert status == 502


async def test_timeout_closes_the_upstream_connection() -> None:
    """After a read timeout the upstream connection is closed, not left hanging."""
    async with FaultServer("hang_before_headers") as upstream, gateway(upstream.url, **FAST) as app:
        status, _, _ = await call(app)
        await upstream.wait_closed(timeout_s=2)
    assert status == 504


async def test_slow_but_alive_upstream_is_not_cut_off() -> None:
    """sock_read limits the silence between bytes, not the whole response."""
    async with (
        FaultServer("slow_trickle", interval_s=0.005) as upstream,
        gateway(upstream.url, read_timeout_s=0.5) as app,
    ):
        status, _, body = await call(app)
    assert (status, body) == (200, b"slow but alive")


async def test_trickle_slower_than_the_read_timeout_is_504() -> None:
    """A gap between bytes longer than read_timeout_s is a 504."""
    async with (
        FaultServer("slow_trickle", interval_s=0.3) as upstream,
        gateway(upstream.url, read_timeout_s=0.1) as app,
    ):
        status, _, body = await call(app)
    assert status == 504
    assert "in time" in assert_clean_message(body, upstream.port)


async def run_collecting(app: Any) -> tuple[list[dict[str, Any]], BaseException | None]:
    """Drive one GET, collecting every ASGI message sent and the exception the app raised, if any."""
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/3rdparty/v1/messages",
        "raw_path": b"/3rdparty/v1/messages",
        "query_string": b"",
        "headers": [],
        "scheme": "http",
        "client": ("127.0.0.1", 1),
    }
    gone = asyncio.Event()
    body = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if body:
            return body.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    try:
        await app(scope, receive, send)
    except Exception as exc:
        return sent, exc
    finally:
        gone.set()
    return sent, None


@pytest.mark.parametrize("mode", ["hang_mid_body", "reset_mid_body"])
async def test_fault_after_start_aborts_without_a_second_response(mode: str) -> None:
    """Once the response started, a failure drops the connection: one start, no end of body, no 5xx."""
    async with FaultServer(mode) as upstream, gateway(upstream.url, **FAST) as app:
        sent, error = await run_collecting(app)
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [200]
    assert all(m.get("more_body") for m in sent if m["type"] == "http.response.body")
    assert isinstance(error, ResponseAborted)
    assert str(upstream.port) not in str(error)
    assert error.__cause__ is None


@pytest.mark.parametrize("mode", ["hang_mid_body", "reset_mid_body"])
async def test_fault_after_start_reaches_the_client_as_a_broken_response(mode: str) -> None:
    """Through a real server the client sees a truncated body, never a complete-looking one."""
    async with (
        FaultServer(mode) as upstream,
        gateway(upstream.url, **FAST) as app,
        UvicornServer(app) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get("/3rdparty/v1/messages")


async def test_huge_body_streams_through() -> None:
    """A large upstream body arrives whole and byte-exact through a real server."""
    size = 5 * 1024 * 1024
    async with (
        FaultServer("huge_body", body_bytes=size) as upstream,
        gateway(upstream.url) as app,
        UvicornServer(app) as server,
        httpx.AsyncClient(base_url=server.url) as http,
        http.stream("GET", "/3rdparty/v1/messages") as response,
    ):
        received = 0
        async for chunk in response.aiter_raw():
            assert not chunk.strip(b"\0")
            received += len(chunk)
    assert response.headers["content-length"] == str(size)
    assert received == size


@contextlib.asynccontextmanager
async def raw_request(port: int, head: bytes) -> AsyncIterator[asyncio.StreamReader]:
    """Send a raw request, hand over the reader, then hang up (FIN) like a client that gives up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    try:
        yield reader
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


GET = b"GET /3rdparty/v1/messages HTTP/1.1\r\nHost: gw.example\r\n\r\n"


async def test_client_disconnect_mid_stream_closes_the_upstream() -> None:
    """A client leaving mid-response closes the upstream connection within a couple of seconds."""
    slow = Reply(stream_bytes=1024 * 1024, chunk_size=1024, chunk_delay_s=0.02)
    async with (
        RecordingUpstream(slow) as upstream,
        gateway(upstream.url, pool_size=1) as app,
        UvicornServer(app) as server,
    ):
        async with raw_request(server.port, GET) as reader:
            await reader.readuntil(b"\r\n\r\n")
            assert await reader.read(512)
        seen = upstream.last
        await asyncio.wait_for(seen.aborted.wait(), 2)
        assert not seen.completed.is_set()
        # The in-flight slot came back: with pool_size=1 the next request still goes through.
        upstream.reply(Reply(body=b"next"))
        async with httpx.AsyncClient(base_url=server.url) as http:
            response = await http.get("/3rdparty/v1/messages")
    assert (response.status_code, response.content) == (200, b"next")


async def test_client_disconnect_while_waiting_for_headers_closes_the_upstream() -> None:
    """A client leaving before the upstream answered closes the upstream connection too."""
    async with (
        FaultServer("hang_before_headers") as upstream,
        gateway(upstream.url, read_timeout_s=30) as app,
        UvicornServer(app) as server,
    ):
        async with raw_request(server.port, GET):
            for _ in range(100):
                if upstream.requests:
                    break
                await asyncio.sleep(0.01)
        await upstream.wait_closed(timeout_s=2)


async def test_client_disconnect_mid_upload_closes_the_upstream() -> None:
    """A client leaving while its streamed body is being forwarded closes the upstream connection."""
    head = b"POST /3rdparty/v1/messages HTTP/1.1\r\nHost: gw.example\r\nContent-Length: 1000000\r\n\r\n"
    async with (
        FaultServer("hang_before_headers") as upstream,
        gateway(upstream.url, read_timeout_s=30) as app,
        UvicornServer(app) as server,
    ):
        async with raw_request(server.port, head + b"u" * 200_000):
            await asyncio.sleep(0.2)
        await upstream.wait_closed(timeout_s=2)
    assert upstream.requests == 1  # the head went out once; the body never completed


async def test_self_signed_https_upstream_is_unreachable(tmp_path: Path) -> None:
    """TLS to the upstream is verified by default: a self-signed certificate is a 502, nothing is sent."""
    record = RequestRecord(request_id="tls")
    async with RawServer(_OK, tls=server_context(self_signed(tmp_path))) as upstream:
        async with gateway(f"https://127.0.0.1:{upstream.port}", **FAST) as app:

            async def observed(scope: dict[str, Any], receive: Any, send: Any) -> None:
                scope[RECORD_KEY] = record
                await app(scope, receive, send)

            status, _, body = await call(observed)
        assert upstream.accepted == 1  # the handshake was tried, and failed
        assert upstream.connections == []
    assert (status, record.reason) == (502, "upstream_unreachable")
    assert_clean_message(body, upstream.port)
