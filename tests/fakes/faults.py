"""FaultServer: a loopback upstream that misbehaves in one chosen way, at the byte level.

    async with FaultServer("hang_before_headers") as upstream:
        ...  # point the code under test at upstream.url; expect a 504
        assert upstream.requests == 1                # it was sent exactly once
        await upstream.wait_closed()                 # and the client closed the connection

Modes (every mode but `refuse` and `blackhole` first reads one request head and its Content-Length body):

    refuse                 nothing listens on the port: connect() is refused
    blackhole              connect() never completes (a full accept queue drops the SYN): connect timeout
    hang_before_headers    read the request, never answer
    close_before_headers   read the request, close cleanly (FIN) without answering
    reset_before_headers   read the request, reset the connection (RST)
    hang_mid_body          send headers and part of a Content-Length body, then hang
    reset_mid_body         send headers and part of the body, then RST (SO_LINGER 0)
    slow_trickle           send a valid response one byte every `interval_s`
    malformed_status_line  answer with a status line that is not HTTP
    huge_headers           answer with a header line longer than any client accepts
    huge_body              answer 200 with `body_bytes` bytes, streamed with backpressure
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from types import TracebackType

__all__ = ["MODES", "FaultServer"]

MODES = frozenset(
    {
        "refuse",
        "blackhole",
        "hang_before_headers",
        "close_before_headers",
        "reset_before_headers",
        "hang_mid_body",
        "reset_mid_body",
        "slow_trickle",
        "malformed_status_line",
        "huge_headers",
        "huge_body",
    }
)
_PARTIAL = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n" + b"p" * 100


class FaultServer:
    """A misbehaving upstream on 127.0.0.1; counts requests and notices when clients close."""

    def __init__(
        self,
        mode: str,
        *,
        body_bytes: int = 50 * 1024 * 1024,
        interval_s: float = 0.01,
        trickle_body: bytes = b"slow but alive",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {sorted(MODES)}")
        self.mode = mode
        self.body_bytes = body_bytes
        self.interval_s = interval_s
        self.trickle_body = trickle_body
        self.port = 0
        self.connections = 0  # connections accepted
        self.requests = 0  # request heads read
        self.heads: list[bytes] = []  # each request head as received
        self.closed_by_peer = 0  # connections the client closed while the server still held them
        self._closed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._listener: socket.socket | None = None
        self._fillers: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    async def wait_closed(self, timeout_s: float = 5.0) -> None:
        """Wait until a client closed a connection this server was holding open."""
        async with asyncio.timeout(timeout_s):
            await self._closed.wait()

    async def __aenter__(self) -> FaultServer:
        if self.mode == "refuse":
            with socket.socket() as probe:  # a port that was free a moment ago and has no listener now
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
        elif self.mode == "blackhole":
            self._blackhole()
        else:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for sock in self._fillers:
            sock.close()
        if self._listener is not None:
            self._listener.close()

    def _blackhole(self) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        self._listener = listener
        self.port = listener.getsockname()[1]
        for _ in range(4):  # fill the accept queue so the kernel drops further SYNs
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", self.port))
            self._fillers.append(filler)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self._misbehave(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self._peer_closed()
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    def _peer_closed(self) -> None:
        self.closed_by_peer += 1
        self._closed.set()

    async def _read_request(self, reader: asyncio.StreamReader) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        self.requests += 1
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                await reader.readexactly(int(value.strip()))

    async def _hold(self, reader: asyncio.StreamReader) -> None:
        """Keep the connection open until the client closes it."""
        while await reader.read(65536):
            pass
        self._peer_closed()

    async def _misbehave(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._read_request(reader)
        mode = self.mode
        if mode == "hang_before_headers":
            await self._hold(reader)
        elif mode == "close_before_headers":
            return
        elif mode == "reset_before_headers":
            _reset(writer)
        elif mode == "hang_mid_body":
            writer.write(_PARTIAL)
            await writer.drain()
            await self._hold(reader)
        elif mode == "reset_mid_body":
            writer.write(_PARTIAL)
            await writer.drain()
            await asyncio.sleep(0.05)
            _reset(writer)
        elif mode == "slow_trickle":
            body = self.trickle_body
            response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            for index in range(len(response)):
                writer.write(response[index : index + 1])
                await writer.drain()
                await asyncio.sleep(self.interval_s)
            await self._hold(reader)
        elif mode == "malformed_status_line":
            writer.write(b"HTCPCP/1.0 418-ish I'm a teapot\r\n\r\n")
            await writer.drain()
            await self._hold(reader)
        elif mode == "huge_headers":
            writer.write(b"HTTP/1.1 200 OK\r\nX-Huge: " + b"h" * 70000 + b"\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            await self._hold(reader)
        elif mode == "huge_body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n")
            writer.write(b"Content-Length: %d\r\n\r\n" % self.body_bytes)
            chunk = bytes(65536)
            left = self.body_bytes
            while left > 0:
                writer.write(chunk if left >= len(chunk) else chunk[:left])
                left -= len(chunk)
                await writer.drain()
            await self._hold(reader)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort with an RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
