"""The data plane's HTTP/1.1 client: one keep-alive connection pool per upstream, nothing more.

Why not aiohttp's ClientSession (used here before): under load it was about 40% of a forwarded
request's CPU (bench/PROFILE.md), most of it machinery a forwarder to one origin never uses (cookie
jars, redirects, proxies, auto headers, URL joining, a retry the gateway had to switch off). This
client does only what the forwarder needs, on asyncio transports (uvloop's when installed) and the same
llhttp parser uvicorn uses (httptools):

- connections: TCP or TLS (verified against the system's CAs, SNI from the upstream's host), opened
  within `connect_timeout_s`, reused most-recent-first, at most `size` kept idle, dropped once idle
  for `KEEPALIVE_S` or when the upstream answers `Connection: close`;
- requests: the head is written in one piece: `Host` from the configured URL, then the caller's
  headers, checked so no CR, LF or NUL can split it. The body is bytes or an async iterator (sent
  chunked when no Content-Length is given), with writes paused while the socket buffer is full;
- responses: status and raw headers once the head arrived, then the body chunk by chunk as it
  arrives (de-chunked, never decompressed), reading paused past `HIGH_WATER` buffered bytes;
  `read_timeout_s` bounds every wait for the upstream: for it to take the request's body (while the
  socket buffer is full), and for each piece of its answer;
- never a retry, a redirect, a setting from the environment, or a header of its own besides `Host`
  and `Transfer-Encoding: chunked`. A connection that failed, timed out, or was left mid-response is
  closed, never reused.

At about 515 lines this module is over the ~500 the package keeps to, on purpose: `_Connection` (the
asyncio protocol, the httptools callbacks and the waits on them), `Response` and `ConnectionPool` share
the connection's state and reuse rules, and read best as one unit.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Final, cast

import httptools

__all__ = [
    "HIGH_WATER",
    "KEEPALIVE_S",
    "ConnectFailed",
    "ConnectTimeout",
    "ConnectionPool",
    "InvalidRequest",
    "ProtocolError",
    "ReadTimeout",
    "Response",
    "UpstreamClosed",
    "UpstreamError",
]

KEEPALIVE_S: Final = 15.0  # an idle connection older than this is not reused (servers close theirs)
HIGH_WATER: Final = 256 * 1024  # buffered response bytes at which reading from the upstream pauses
_LOW_WATER: Final = 64 * 1024
_MAX_HEAD_BYTES: Final = 64 * 1024  # a response head larger than this is refused, not buffered
_CONTENT_LENGTH: Final = b"content-length"
_LAST_CHUNK: Final = b"0\r\n\r\n"


class UpstreamError(Exception):
    """The exchange with the upstream failed; the message names what failed, never a URL or header."""


class ConnectFailed(UpstreamError):
    """No connection: refused, unreachable, name not resolved, or the TLS handshake failed."""


class ConnectTimeout(UpstreamError):
    """The connection was not established within `connect_timeout_s`."""


class ReadTimeout(UpstreamError):
    """The upstream sent nothing for `read_timeout_s` while an answer was awaited."""


class UpstreamClosed(UpstreamError):
    """The upstream closed or reset the connection before its answer was complete."""


class ProtocolError(UpstreamError):
    """The upstream's answer is not HTTP/1.x this client can read."""


class InvalidRequest(UpstreamError):
    """The request head cannot be written safely (a CR, LF or NUL, or a non-Latin-1 character)."""


class _Connection(asyncio.Protocol):
    """One upstream connection and the state of the exchange on it (at most one at a time)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.active = False  # an exchange is in progress (data outside one is a protocol violation)
        self.reusable = False
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._read_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timeout_s = 0.0
        self._last_data = 0.0  # loop time of the last bytes received: the read timeout counts from there
        self._head_request = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._head_received = 0  # bytes received before the head was complete (httptools buffers a line whole)
        self.head_done = False
        self.done = False  # the whole body was received
        self.sent = False  # the whole request was written
        self.error: UpstreamError | None = None
        self.body: deque[bytes] = deque()
        self._buffered = 0

    # ------------------------------------------------------------------ exchange

    def begin(self, head_request: bool, timeout_s: float) -> None:
        self.active = True
        self.reusable = False
        self._head_request = head_request
        self._timeout_s = timeout_s
        self.status = 0
        self.headers = []
        self._head_bytes = self._head_received = 0
        self.head_done = self.done = self.sent = False
        self.error = None

    async def send(self, head: bytes, body: bytes | AsyncIterator[bytes] | None, chunked: bool) -> None:
        """Write the request; with a streamed body, stop early (without error) if the answer already came."""
        transport = self.transport
        if transport is None or self.closed:
            raise UpstreamClosed("the upstream closed the connection")
        if body is None or isinstance(body, bytes):
            transport.write(head + body if body else head)
            self.sent = True
            return
        transport.write(head)
        try:
            await self._stream(transport, body, chunked)
        finally:
            close = getattr(body, "aclose", None)
            if close is not None and not self.sent:
                await close()
        if self.closed and not self.head_done:
            raise self.error or UpstreamClosed("the upstream closed the connection while the request was sent")

    async def _stream(self, transport: asyncio.Transport, body: AsyncIterator[bytes], chunked: bool) -> None:
        """Write the body as it comes, pausing while the socket buffer is full; `sent` once all of it is."""
        async for chunk in body:
            if self.closed or self.head_done:
                return  # it answered (or left) before the body was complete: the answer is what counts
            if chunk:
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            if self._write_paused:
                await self._drain()
                if self.closed:
                    return
        if not self.closed:
            if chunked:
                transport.write(_LAST_CHUNK)
            self.sent = True

    async def wait_head(self) -> None:
        while not self.head_done:
            if self.error is not None:
                raise self.error
            await self._wait()

    async def read(self) -> bytes:
        """The next chunk of the body, b"" once it is complete; raises if the upstream failed first."""
        while True:
            body = self.body
            if body:
                chunk = body.popleft()
                self._buffered -= len(chunk)
                if self._read_paused and self._buffered < _LOW_WATER and self.transport is not None:
                    self._read_paused = False
                    self.transport.resume_reading()
                return chunk
            if self.done:
                return b""
            if self.error is not None:
                raise self.error
            await self._wait()

    @property
    def at_eof(self) -> bool:
        return self.done and not self.body

    def finish(self) -> None:
        """The exchange is over; the connection stays reusable only if it ended cleanly."""
        self.active = False
        self.reusable = self.reusable and self.done and self.sent and not self.body and not self.closed
        self.body.clear()
        self._buffered = 0

    def abort(self) -> None:
        self.active = False
        self.reusable = False
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def _wait(self) -> None:
        loop = self.loop
        waiter = loop.create_future()
        self._waiter = waiter
        self._last_data = loop.time()
        self._timer = loop.call_later(self._timeout_s, self._timed_out, waiter)
        try:
            await waiter
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._waiter = None

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        """Silence for `read_timeout_s` fails the wait; bytes that arrived meanwhile re-arm it (a slow head)."""
        if waiter.done():
            return
        quiet_s = self.loop.time() - self._last_data
        if quiet_s < self._timeout_s:
            self._timer = self.loop.call_later(self._timeout_s - quiet_s, self._timed_out, waiter)
            return
        self._fail(ReadTimeout("the upstream did not answer in time"))
        self.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None and not self.done:
            self.error = error
        self._wake()

    async def _drain(self) -> None:
        """Wait for the socket buffer to drain, at most `read_timeout_s`: an upstream must take the body too."""
        if self._drained is None or self._drained.done():
            self._drained = self.loop.create_future()
        timer = self.loop.call_later(self._timeout_s, self._not_drained, self._drained)
        try:
            await self._drained
        finally:
            timer.cancel()

    def _not_drained(self, drained: asyncio.Future[None]) -> None:
        if not drained.done():
            self._fail(ReadTimeout("the upstream did not take the request in time"))
            self.abort()
            drained.set_result(None)

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.active or self.done:  # unsolicited bytes: the connection's framing can't be trusted
            self.abort()
            return
        if self._waiter is not None:
            self._last_data = self.loop.time()
        if not self.head_done:
            self._head_received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("the upstream switched protocols"))
            self.abort()
        except httptools.HttpParserError:
            self._fail(ProtocolError("the upstream sent an invalid response"))
            self.abort()
        else:
            if not self.head_done and self._head_received > _MAX_HEAD_BYTES:
                self._fail(ProtocolError("the upstream's response head is too large"))
                self.abort()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self.active and self.head_done and not self.done and exc is None and self._until_eof():
            self.done = True  # a body delimited by the end of the connection
            self._wake()
        elif self.active:
            self._fail(UpstreamClosed("the upstream closed the connection before its answer was complete"))
        self._wake_sender()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_sender()

    def _wake_sender(self) -> None:
        """`send` waiting for the socket buffer to drain looks again: writable, answered, or closed."""
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    # ------------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        if self.done:  # a second answer in the same packet: the framing can't be trusted, the connection goes
            raise ProtocolError("the upstream sent more than one answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > _MAX_HEAD_BYTES:
            raise ProtocolError("the upstream's response head is too large")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                raise ProtocolError("the upstream switched protocols")
            self.headers = []  # informational (103 Early Hints, a stray 100): the real answer follows
            self._head_bytes = 0
            return
        self.status = status
        self.head_done = True
        if self._head_request:  # no body follows, whatever the headers say; llhttp can't be told
            self.done = True
        self._wake()
        self._wake_sender()  # an upstream that answered may never read the rest of the body

    def on_body(self, body: bytes) -> None:
        if self.done:  # a body after the answer to HEAD
            raise ProtocolError("the upstream sent a body where none belongs")
        self.body.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.head_done:  # the end of an informational answer
            return
        if self._head_request:
            return  # already done; the connection is not reused (see finish: reusable stays False)
        self.done = True
        self.reusable = self.parser.should_keep_alive()
        self._wake()

    def _until_eof(self) -> bool:
        """Whether the body is delimited by the end of the connection (no Content-Length, not chunked)."""
        return not any(name.lower() in (_CONTENT_LENGTH, b"transfer-encoding") for name, _ in self.headers)


class Response:
    """The upstream's answer: status and raw headers now, the body through `read`; end with `release` or `close`."""

    __slots__ = ("_connection", "_pool", "raw_headers", "status")

    def __init__(self, pool: ConnectionPool, connection: _Connection) -> None:
        self._pool = pool
        self._connection = connection
        self.status = connection.status
        self.raw_headers = connection.headers

    def header(self, name: bytes) -> str | None:
        """The first value of the header `name` (given in lowercase), or None."""
        for key, value in self.raw_headers:
            if len(key) == len(name) and key.lower() == name:
                return value.decode("latin-1")
        return None

    @property
    def content_length(self) -> int | None:
        value = self.header(b"content-length")
        return int(value) if value is not None and value.strip().isdigit() else None

    async def read(self) -> bytes:
        """The next piece of the body as it arrives; b"" at its end. Raises an UpstreamError on failure."""
        return await self._connection.read()

    @property
    def at_eof(self) -> bool:
        """The whole body has been read."""
        return self._connection.at_eof

    def release(self) -> None:
        """Done with the answer: the connection goes back to the pool if the exchange ended cleanly."""
        self._pool.put_back(self._connection)

    def close(self) -> None:
        """Abandon the answer: the connection is closed."""
        self._connection.abort()


class ConnectionPool:
    """Keep-alive connections to one origin; `request` sends one request on one of them.

    The caller bounds concurrency (the forwarder's in-flight slots): the pool opens a connection
    whenever none is idle and keeps at most `size` idle ones.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        host_header: str,
        tls: ssl.SSLContext | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        size: int = 100,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.size = size
        self._host_line = f"Host: {host_header}\r\n"
        self._idle: list[_Connection] = []
        self._closed = False

    @property
    def idle(self) -> int:
        """Idle connections kept for reuse (closed ones are dropped as they are found)."""
        return sum(1 for connection in self._idle if not connection.closed)

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None = None,
    ) -> Response:
        """Send the request and wait for the answer's head; the body is then read from the Response."""
        if self._closed:
            raise UpstreamClosed("the connection pool is closed")
        chunked = body is not None and not isinstance(body, bytes) and not _has_length(headers)
        head = self._head(method, target, headers, chunked)
        connection = self._take() or await self._connect()
        connection.begin(method == "HEAD", self.read_timeout_s)
        try:
            await connection.send(head, body, chunked)
            await connection.wait_head()
        except BaseException:
            connection.abort()
            raise
        return Response(self, connection)

    def put_back(self, connection: _Connection) -> None:
        connection.finish()
        if connection.reusable and not self._closed and len(self._idle) < self.size:
            connection.idle_since = connection.loop.time()
            self._idle.append(connection)
        else:
            connection.abort()

    async def aclose(self) -> None:
        """Close the idle connections; those in use close when released."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.abort()

    def _take(self) -> _Connection | None:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.closed:
                continue
            if connection.loop.time() - connection.idle_since > KEEPALIVE_S:
                connection.abort()
                continue
            return connection
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop),
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls is not None else None,
                )
        except TimeoutError:
            raise ConnectTimeout("connecting to the upstream timed out") from None
        except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            raise ConnectFailed(f"could not connect to the upstream ({type(exc).__name__})") from None
        return connection

    def _head(self, method: str, target: str, headers: Sequence[tuple[str, str]], chunked: bool) -> bytes:
        lines = [f"{method} {target} HTTP/1.1\r\n", self._host_line]
        lines.extend([f"{name}: {value}\r\n" for name, value in headers])
        if chunked:
            lines.append("Transfer-Encoding: chunked\r\n")
        lines.append("\r\n")
        try:
            head = "".join(lines).encode("latin-1")
        except UnicodeEncodeError:
            raise InvalidRequest("a request header is not Latin-1") from None
        # Every line ends in exactly one CR LF: any other CR, LF or NUL would split the head.
        if head.count(b"\n") != len(lines) or head.count(b"\r") != len(lines) or b"\x00" in head:
            raise InvalidRequest("a request header contains CR, LF or NUL")
        return head


def _has_length(headers: Sequence[tuple[str, str]]) -> bool:
    return any(name.lower() == "content-length" for name, _ in headers)
