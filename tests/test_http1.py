"""http1.py, the data plane's HTTP/1.1 client, against raw loopback servers that answer scripted bytes.

`RawServer` records every connection and every byte it received and answers each request with the next
scripted reply, or runs a handler that misbehaves at the byte level (trickles, hangs, hangs up, floods).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from fakes.raw import RawConnection, RawServer, self_signed, server_context

from gateway.proxy.http1 import (
    HIGH_WATER,
    KEEPALIVE_S,
    ConnectFailed,
    ConnectionPool,
    InvalidRequest,
    ProtocolError,
    ReadTimeout,
    Response,
    UpstreamClosed,
)

MAX_READ = 256 * 1024  # the most one socket read hands the protocol (asyncio's selector and uvloop alike)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
GET = b"GET / HTTP/1.1\r\nHost: upstream.test\r\n\r\n"


# ------------------------------------------------------------------------------------------ helpers


@contextlib.asynccontextmanager
async def opened(server: RawServer, **options: Any) -> AsyncIterator[ConnectionPool]:
    pool = server.pool(**options)
    try:
        yield pool
    finally:
        await pool.aclose()


async def read_all(response: Response) -> bytes:
    chunks = []
    while chunk := await response.read():
        chunks.append(chunk)
    return b"".join(chunks)


async def fetch(pool: ConnectionPool, method: str = "GET", target: str = "/") -> tuple[int, bytes]:
    """One whole exchange, the connection released afterwards."""
    response = await pool.request(method, target, [])
    try:
        body = await read_all(response)
    finally:
        response.release()
    return response.status, body


async def eventually(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def chunks(*parts: bytes, delay_s: float = 0.0) -> AsyncIterator[bytes]:
    for part in parts:
        if delay_s:
            await asyncio.sleep(delay_s)
        yield part


# -------------------------------------------------------------------------------------- keep-alive


async def test_sequential_requests_share_one_connection() -> None:
    async with RawServer(OK, OK) as server, opened(server) as pool:
        assert await fetch(pool) == (200, b"ok")
        assert pool.idle == 1
        assert await fetch(pool) == (200, b"ok")
        assert pool.idle == 1
    assert len(server.connections) == 1
    assert server.connections[0].requests == [GET, GET]


async def test_connection_close_answer_is_not_reused() -> None:
    """The server says close but keeps the socket open: the client still drops it and opens a new one."""
    close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    async with RawServer(close, OK) as server, opened(server) as pool:
        assert await fetch(pool) == (200, b"ok")
        assert pool.idle == 0
        await server.connections[0].wait_client_closed()
        assert await fetch(pool) == (200, b"ok")
    assert len(server.connections) == 2


async def test_http10_answer_is_not_reused() -> None:
    old = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with RawServer(old, OK) as server, opened(server) as pool:
        assert await fetch(pool) == (200, b"ok")
        await server.connections[0].wait_client_closed()
        assert await fetch(pool) == (200, b"ok")
    assert len(server.connections) == 2


async def test_pool_keeps_at_most_size_idle_connections() -> None:
    async with RawServer(OK, OK) as server, opened(server, size=1) as pool:
        first = await pool.request("GET", "/", [])
        second = await pool.request("GET", "/", [])  # the first is busy: a second connection
        for response in (first, second):
            assert await read_all(response) == b"ok"
            response.release()
        assert pool.idle == 1
        await eventually(lambda: sum(c.client_closed.is_set() for c in server.connections) == 1)
    assert len(server.connections) == 2


# ------------------------------------------------------------------------------------------ framing


async def test_content_length_body_and_headers() -> None:
    reply = (
        b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nX-Twice: a\r\nX-Twice: b\r\nContent-Length: 11\r\n\r\n"
    )
    async with RawServer(reply + b"hello world") as server, opened(server) as pool:
        response = await pool.request("POST", "/messages", [])
        assert response.status == 201
        assert response.raw_headers == [
            (b"Content-Type", b"text/plain"),
            (b"X-Twice", b"a"),
            (b"X-Twice", b"b"),
            (b"Content-Length", b"11"),
        ]
        assert (response.header(b"content-type"), response.header(b"x-twice"), response.header(b"x-none")) == (
            "text/plain",
            "a",
            None,
        )
        assert response.content_length == 11
        assert await read_all(response) == b"hello world"
        assert response.at_eof
        response.release()
        assert pool.idle == 1


async def test_chunked_body_is_dechunked_and_the_connection_reused() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    async with RawServer(chunked, OK) as server, opened(server) as pool:
        response = await pool.request("GET", "/", [])
        assert response.content_length is None
        assert await read_all(response) == b"hello world"
        response.release()
        assert await fetch(pool) == (200, b"ok")
    assert len(server.connections) == 1


async def test_body_delimited_by_the_end_of_the_connection() -> None:
    async def handler(connection: RawConnection) -> None:
        await connection.read_request()
        await connection.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
        await asyncio.sleep(0.02)
        await connection.send(b"the end")
        connection.hang_up()

    async with RawServer(handler=handler) as server, opened(server) as pool:
        response = await pool.request("GET", "/", [])
        assert await read_all(response) == b"until the end"
        assert response.at_eof
        response.release()
        assert pool.idle == 0


async def test_head_answer_has_no_body_and_is_not_reused() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    async with RawServer(head, OK) as server, opened(server, read_timeout_s=0.3) as pool:
        started = time.monotonic()
        response = await pool.request("HEAD", "/", [])
        assert response.content_length == 5
        assert response.at_eof
        assert await response.read() == b""
        assert time.monotonic() - started < 0.2  # not waiting for 5 bytes that never come
        response.release()
        assert pool.idle == 0
        assert await fetch(pool) == (200, b"ok")
    assert len(server.connections) == 2


async def test_body_sent_with_a_head_answer_is_not_taken_for_one() -> None:
    async with RawServer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", OK) as server, opened(server) as pool:
        response = await pool.request("HEAD", "/", [])
        assert (response.status, await response.read(), response.at_eof) == (200, b"", True)
        response.release()
        await server.connections[0].wait_client_closed()
        assert await fetch(pool) == (200, b"ok")
    assert len(server.connections) == 2


async def test_204_has_no_body_and_is_reused() -> None:
    async with RawServer(b"HTTP/1.1 204 No Content\r\n\r\n", OK) as server, opened(server, read_timeout_s=0.3) as pool:
        assert await fetch(pool, "DELETE") == (204, b"")
        assert await fetch(pool) == (200, b"ok")
    assert len(server.connections) == 1


async def test_extra_answer_in_the_same_packet_is_not_taken_for_this_one() -> None:
    """Bytes after a complete answer (here a second answer, sent unasked) never alter it; the connection goes."""
    smuggled = OK + b"HTTP/1.1 500 Smuggled\r\nX-Evil: 1\r\nContent-Length: 0\r\n\r\n"
    async with RawServer(smuggled, OK) as server, opened(server) as pool:
        response = await pool.request("GET", "/", [])
        assert (response.status, response.raw_headers) == (200, [(b"Content-Length", b"2")])
        assert await read_all(response) == b"ok"
        response.release()
        assert pool.idle == 0
        assert await fetch(pool) == (200, b"ok")
    assert len(server.connections) == 2


# ------------------------------------------------------------------------------------ informational


async def test_early_hints_are_skipped() -> None:
    async def handler(connection: RawConnection) -> None:
        await connection.read_request()
        await connection.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        await asyncio.sleep(0.02)
        await connection.send(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-Final: 1\r\nContent-Length: 2\r\n\r\nok"
        )

    async with RawServer(handler=handler) as server, opened(server) as pool:
        response = await pool.request("GET", "/", [])
        assert response.status == 200
        assert response.raw_headers == [(b"X-Final", b"1"), (b"Content-Length", b"2")]
        assert await read_all(response) == b"ok"
        response.release()
        assert pool.idle == 1


async def test_switching_protocols_is_a_protocol_error() -> None:
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    async with RawServer(upgrade) as server, opened(server) as pool:
        with pytest.raises(ProtocolError):
            await pool.request("GET", "/", [])
        await server.connections[0].wait_client_closed()
        assert pool.idle == 0


# ------------------------------------------------------------------------------------------- faults


async def test_malformed_status_line_is_a_protocol_error() -> None:
    async with RawServer(b"HTTP/1.1 OK 200\r\n\r\n") as server, opened(server) as pool:
        with pytest.raises(ProtocolError):
            await pool.request("GET", "/", [])
        await server.connections[0].wait_client_closed()


async def test_many_headers_over_64k_are_a_protocol_error() -> None:
    headers = b"".join(b"X-Header-%05d: %s\r\n" % (i, b"v" * 40) for i in range(1200))  # ~72 KiB
    async with RawServer(b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 0\r\n\r\n") as server:
        async with opened(server) as pool:
            with pytest.raises(ProtocolError):
                await pool.request("GET", "/", [])
        await server.connections[0].wait_client_closed()


async def test_endless_header_line_is_refused_past_64k() -> None:
    """One header line that never ends: refused once past the limit, not buffered until the server stops."""

    async def handler(connection: RawConnection) -> None:
        await connection.read_request()
        await connection.send(b"HTTP/1.1 200 OK\r\nX-Big: ")
        for _ in range(256):  # up to 4 MiB, until the client hangs up
            await connection.send(b"b" * 16384)
            await asyncio.sleep(0.002)

    async with RawServer(handler=handler) as server, opened(server, read_timeout_s=1.0) as pool:
        started = time.monotonic()
        with pytest.raises(ProtocolError):
            await pool.request("GET", "/", [])
        assert time.monotonic() - started < 0.5
        await server.connections[0].wait_client_closed()
        assert server.connections[0].sent < 512 * 1024


async def test_close_before_the_head_is_upstream_closed() -> None:
    async def handler(connection: RawConnection) -> None:
        await connection.read_request()
        await connection.send(b"HTTP/1.1 200 O")
        connection.hang_up()

    async with RawServer(handler=handler) as server, opened(server) as pool:
        with pytest.raises(UpstreamClosed):
            await pool.request("GET", "/", [])
        assert pool.idle == 0


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n"],
)
async def test_close_mid_body_fails_the_read_after_what_arrived(head: bytes) -> None:
    async def handler(connection: RawConnection) -> None:
        await connection.read_request()
        await connection.send(head + b"partial")
        await asyncio.sleep(0.02)
        connection.hang_up()

    async with RawServer(handler=handler) as server, opened(server) as pool:
        response = await pool.request("GET", "/", [])
        received = bytearray()

        async def read_on() -> None:
            while True:
                received.extend(await response.read())

        with pytest.raises(UpstreamClosed):
            await read_on()
        assert received == b"partial"
        assert not response.at_eof
        response.release()
        assert pool.idle == 0


async def test_bad_chunk_size_mid_body_is_a_protocol_error() -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n"
    async with RawServer(reply) as server, opened(server) as pool:
        response = await pool.request("GET", "/", [])
        with pytest.raises(ProtocolError):
            await read_all(response)
        response.release()
        await server.connections[0].wait_client_closed()


async def test_refused_port_is_connect_failed() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    pool = ConnectionPool("127.0.0.1", port, host_header="x", connect_timeout_s=1)
    with pytest.raises(ConnectFailed) as failed:
        await pool.request("GET", "/", [])
    assert str(port) not in str(failed.value)
    await pool.aclose()


# ----------------------------------------------------------------------------------- request head


async def test_request_head_is_exactly_what_was_given() -> None:
    async with RawServer(OK) as server, opened(server, host_header="api.example:8443") as pool:
        headers = [("X-B", "2"), ("x-a", "1"), ("Authorization", "Basic b3BzOnM="), ("X-B", "é latin-1")]
        response = await pool.request("PUT", "/v1/x%20y?q=1&r", headers)
        assert await read_all(response) == b"ok"
        response.release()
    assert server.connections[0].requests == [
        b"PUT /v1/x%20y?q=1&r HTTP/1.1\r\nHost: api.example:8443\r\n"
        b"X-B: 2\r\nx-a: 1\r\nAuthorization: Basic b3BzOnM=\r\nX-B: \xe9 latin-1\r\n\r\n"
    ]


@pytest.mark.parametrize(
    ("target", "header"),
    [
        ("/", ("X-A", "a\r\nX-Injected: 1")),
        ("/", ("X-A", "a\nX-Injected: 1")),
        ("/", ("X-A", "a\rb")),
        ("/", ("X-A", "a\x00b")),
        ("/", ("X-A\r\nX-Injected", "1")),
        ("/", ("X-A", "\u20ac")),
        ("/", ("X-\u0100", "1")),
        ("/ HTTP/1.1\r\nX-Injected: 1\r\nX:", ("X-A", "1")),
    ],
)
async def test_unsafe_request_head_is_refused_before_connecting(target: str, header: tuple[str, str]) -> None:
    async with RawServer(OK) as server, opened(server) as pool:
        with pytest.raises(InvalidRequest):
            await pool.request("GET", target, [header])
        await asyncio.sleep(0.02)
        assert server.accepted == 0


# ----------------------------------------------------------------------------------- request body


async def test_bytes_body_is_sent_as_is() -> None:
    async with RawServer(OK) as server, opened(server) as pool:
        response = await pool.request("POST", "/", [("Content-Length", "5")], b"hello")
        await read_all(response)
        response.release()
    assert server.connections[0].requests == [
        b"POST / HTTP/1.1\r\nHost: upstream.test\r\nContent-Length: 5\r\n\r\nhello"
    ]


async def test_streamed_body_with_content_length_is_sent_raw() -> None:
    async with RawServer(OK, OK) as server, opened(server) as pool:
        body = chunks(b"hel", b"", b"lo", delay_s=0.005)
        response = await pool.request("POST", "/", [("content-length", "5")], body)
        await read_all(response)
        response.release()
        assert await fetch(pool) == (200, b"ok")  # the framing held: the connection was reused
    assert server.connections[0].requests == [
        b"POST / HTTP/1.1\r\nHost: upstream.test\r\ncontent-length: 5\r\n\r\nhello",
        GET,
    ]


async def test_streamed_body_without_length_is_chunked() -> None:
    async with RawServer(OK, OK) as server, opened(server) as pool:
        body = chunks(b"hello", b"", b" wonderful world", delay_s=0.005)
        response = await pool.request("POST", "/", [("X-A", "1")], body)
        await read_all(response)
        response.release()
        assert await fetch(pool) == (200, b"ok")
    assert server.connections[0].requests == [
        b"POST / HTTP/1.1\r\nHost: upstream.test\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n10\r\n wonderful world\r\n0\r\n\r\n",
        GET,
    ]


async def test_empty_streamed_body_is_just_the_last_chunk() -> None:
    async with RawServer(OK) as server, opened(server) as pool:
        response = await pool.request("POST", "/", [], chunks())
        await read_all(response)
        response.release()
    assert server.connections[0].requests == [
        b"POST / HTTP/1.1\r\nHost: upstream.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ]


class Upload:
    """A streamed body that counts what was taken and notices being closed early."""

    def __init__(self, count: int, size: int, delay_s: float = 0.0) -> None:
        self.count = count
        self.size = size
        self.delay_s = delay_s
        self.taken = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            for _ in range(self.count):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                self.taken += 1
                yield b"u" * self.size
        finally:
            self.closed = True


async def test_answer_before_the_streamed_body_ends_is_the_response() -> None:
    """413 while the body is still streaming: that answer comes back (no error), the body stops, no reuse."""

    async def handler(connection: RawConnection) -> None:
        if connection is not server.connections[0]:
            await connection.read_request()
            await connection.send(OK)
            return
        await connection.read_head()
        await connection.send(
            b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 8\r\n\r\ntoo big!"
        )

    upload = Upload(count=200, size=1024, delay_s=0.005)
    async with RawServer(handler=handler) as server, opened(server) as pool:
        response = await pool.request("POST", "/", [], upload.__aiter__())
        assert response.status == 413
        assert await read_all(response) == b"too big!"
        response.release()
        assert pool.idle == 0
        assert upload.closed
        assert upload.taken < upload.count
        await server.connections[0].wait_client_closed()
        assert await fetch(pool) == (200, b"ok")
    assert len(server.connections) == 2


async def test_answer_while_the_upload_is_blocked_is_the_response() -> None:
    """The upstream answered and stopped reading: the client, stuck on a full socket, still gets the answer."""

    async def handler(connection: RawConnection) -> None:
        await connection.read_head()
        connection.stop_reading()  # never reads the body
        await connection.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
        await asyncio.Event().wait()

    upload = Upload(count=1 << 14, size=65536)  # 1 GiB, far more than the socket buffers hold
    async with RawServer(handler=handler) as server, opened(server) as pool:
        response = await asyncio.wait_for(pool.request("POST", "/", [], upload.__aiter__()), 2)
        assert response.status == 413
        response.release()
        assert pool.idle == 0
        assert upload.closed
        assert upload.taken < upload.count


async def test_an_upstream_that_never_takes_the_body_is_a_read_timeout() -> None:
    """No answer and no reading: the upload stops after `read_timeout_s` with a full socket, the connection closes."""

    async def handler(connection: RawConnection) -> None:
        await connection.read_head()
        connection.stop_reading()
        await asyncio.Event().wait()

    upload = Upload(count=1 << 14, size=65536)
    async with RawServer(handler=handler) as server, opened(server, read_timeout_s=0.3) as pool:
        started = time.monotonic()
        with pytest.raises(ReadTimeout):
            await asyncio.wait_for(pool.request("POST", "/", [], upload.__aiter__()), 5)
        assert time.monotonic() - started < 3
        assert upload.closed
        assert upload.taken < upload.count
        assert pool.idle == 0


# ---------------------------------------------------------------------------------------- timeouts


async def test_silence_before_the_head_is_a_read_timeout_and_closes() -> None:
    async def handler(connection: RawConnection) -> None:
        await connection.read_request()

    async with RawServer(handler=handler) as server, opened(server, read_timeout_s=0.2) as pool:
        started = time.monotonic()
        with pytest.raises(ReadTimeout):
            await pool.request("GET", "/", [])
        assert 0.18 < time.monotonic() - started < 1.0
        await server.connections[0].wait_client_closed()
        assert pool.idle == 0


async def test_trickled_head_counts_from_the_last_bytes() -> None:
    async def handler(connection: RawConnection) -> None:
        await connection.read_request()
        for byte in OK:
            await connection.send(bytes([byte]))
            await asyncio.sleep(0.01)

    async with RawServer(handler=handler) as server, opened(server, read_timeout_s=0.15) as pool:
        started = time.monotonic()
        assert await fetch(pool) == (200, b"ok")
        assert time.monotonic() - started > 0.3  # longer than the timeout in total
    assert server.errors == []


async def test_silence_mid_body_is_a_read_timeout() -> None:
    async def handler(connection: RawConnection) -> None:
        await connection.read_request()
        await connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome")

    async with RawServer(handler=handler) as server, opened(server, read_timeout_s=0.2) as pool:
        response = await pool.request("GET", "/", [])
        assert await response.read() == b"some"
        started = time.monotonic()
        with pytest.raises(ReadTimeout):
            await response.read()
        assert time.monotonic() - started > 0.18
        response.release()
        await server.connections[0].wait_client_closed()
        assert pool.idle == 0


# ------------------------------------------------------------------------------ idle connections


async def test_unsolicited_bytes_on_an_idle_connection_drop_it() -> None:
    released = asyncio.Event()

    async def handler(connection: RawConnection) -> None:
        await connection.read_request()
        await connection.send(OK)
        if connection is server.connections[0]:
            await released.wait()
            await connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")

    async with RawServer(handler=handler) as server, opened(server) as pool:
        assert await fetch(pool) == (200, b"ok")
        assert pool.idle == 1
        released.set()
        await server.connections[0].wait_client_closed()
        assert pool.idle == 0
        assert await fetch(pool) == (200, b"ok")
    assert len(server.connections) == 2


async def test_connection_idle_past_keepalive_is_not_reused() -> None:
    async with RawServer(OK, OK) as server, opened(server) as pool:
        assert await fetch(pool) == (200, b"ok")
        [idle] = pool._idle
        idle.idle_since -= KEEPALIVE_S + 1
        assert await fetch(pool) == (200, b"ok")
        await server.connections[0].wait_client_closed()
    assert len(server.connections) == 2


async def test_aclose_closes_idle_connections_and_refuses_more() -> None:
    async with RawServer(OK, OK) as server:
        pool = server.pool()
        assert await fetch(pool) == (200, b"ok")
        await pool.aclose()
        await server.connections[0].wait_client_closed()
        with pytest.raises(UpstreamClosed):
            await pool.request("GET", "/", [])
        assert len(server.connections) == 1


async def test_connection_in_use_at_aclose_closes_when_released() -> None:
    async with RawServer(OK) as server:
        pool = server.pool()
        response = await pool.request("GET", "/", [])
        await pool.aclose()
        assert await read_all(response) == b"ok"
        response.release()
        await server.connections[0].wait_client_closed()
        assert pool.idle == 0


async def test_response_close_mid_body_closes_the_connection() -> None:
    partial = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"p" * 100
    async with RawServer(partial, OK) as server, opened(server) as pool:
        response = await pool.request("GET", "/", [])
        assert await response.read() == b"p" * 100
        response.close()
        await server.connections[0].wait_client_closed()
        assert pool.idle == 0
        assert await fetch(pool) == (200, b"ok")
    assert len(server.connections) == 2


async def test_release_before_the_body_was_read_closes_the_connection() -> None:
    async with RawServer(OK, OK) as server, opened(server) as pool:
        response = await pool.request("GET", "/", [])
        response.release()  # its body never read
        await server.connections[0].wait_client_closed()
        assert await fetch(pool) == (200, b"ok")
    assert len(server.connections) == 2


# --------------------------------------------------------------------------------------------- TLS


@pytest.mark.parametrize(("host", "sni"), [("localhost", "localhost"), ("127.0.0.1", None)])
async def test_tls_with_a_trusted_certificate(tmp_path: Path, host: str, sni: str | None) -> None:
    pem = self_signed(tmp_path)
    seen: list[str | None] = []
    trusting = ssl.create_default_context(cafile=pem)
    async with (
        RawServer(OK, OK, tls=server_context(pem, seen)) as server,
        opened(server, host=host, tls=trusting) as pool,
    ):
        assert await fetch(pool) == (200, b"ok")
        assert await fetch(pool) == (200, b"ok")
    assert seen == [sni]  # one handshake; SNI carries a host name, never an IP address
    assert server.connections[0].requests == [GET, GET]


async def test_tls_host_name_is_verified(tmp_path: Path) -> None:
    """Trusted, but issued for another name: refused."""
    pem = self_signed(tmp_path, names=("other.test",), ips=())
    trusting = ssl.create_default_context(cafile=pem)
    async with RawServer(OK, tls=server_context(pem)) as server, opened(server, host="localhost", tls=trusting) as pool:
        with pytest.raises(ConnectFailed, match="SSLCertVerificationError"):
            await pool.request("GET", "/", [])
    assert server.accepted == 1
    assert server.connections == []


async def test_tls_self_signed_against_system_cas_is_connect_failed(tmp_path: Path) -> None:
    pem = self_signed(tmp_path)
    system = ssl.create_default_context()
    async with RawServer(OK, tls=server_context(pem)) as server, opened(server, host="localhost", tls=system) as pool:
        with pytest.raises(ConnectFailed, match="SSLCertVerificationError"):
            await pool.request("GET", "/", [])
    assert server.accepted == 1
    assert server.connections == []


# ---------------------------------------------------------------------------------- flow control


async def test_large_body_read_slowly_is_flow_controlled() -> None:
    size = 16 * 1024 * 1024
    pattern = bytes(range(256)) * 256  # 64 KiB

    async def handler(connection: RawConnection) -> None:
        await connection.read_request()
        await connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // len(pattern)):
            await connection.send(pattern)

    async with RawServer(handler=handler) as server, opened(server) as pool:
        response = await pool.request("GET", "/", [])
        held = response._connection
        await asyncio.sleep(0.1)  # let every buffer on the way fill up
        upstream = server.connections[0]
        assert upstream.sent < size // 2  # the server's writes are paused, not all buffered in the client
        assert HIGH_WATER < held._buffered <= HIGH_WATER + MAX_READ
        assert held.transport is not None
        assert not held.transport.is_reading()
        digest = hashlib.sha256()
        received = reads = 0
        while chunk := await response.read():
            assert held._buffered <= HIGH_WATER + MAX_READ
            digest.update(chunk)
            received += len(chunk)
            reads += 1
            if reads % 32 == 0:
                await asyncio.sleep(0.001)
        assert received == size
        assert digest.digest() == hashlib.sha256(pattern * (size // len(pattern))).digest()
        response.release()
        assert pool.idle == 1
