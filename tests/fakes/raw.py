"""RawServer: a loopback TCP (or TLS) server answering scripted raw bytes, for client-side HTTP tests.

It records every connection and every byte it received, and answers each request with the next
scripted reply, or runs a handler that misbehaves at the byte level (trickles, hangs, hangs up, floods).
`self_signed` and `server_context` make a throwaway certificate and a TLS server context for it.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import re
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.proxy.http1 import ConnectionPool

__all__ = ["RawConnection", "RawServer", "self_signed", "server_context"]


class RawConnection:
    """One accepted connection: what arrived on it, and helpers to answer with raw bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received = bytearray()
        self.requests: list[bytes] = []
        self.sent = 0
        self.hung_up = False
        self.client_closed = asyncio.Event()  # the client closed (EOF or reset) while the server held it

    async def read_request(self) -> bytes | None:
        """One request head and its body (by Content-Length, or chunked) as received; None at EOF."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            self.received += exc.partial
            return None
        self.received += head
        lowered = head.lower()
        body = bytearray()
        length = re.search(rb"\r\ncontent-length: *(\d+)\r\n", lowered)
        if length:
            body += await self.reader.readexactly(int(length[1]))
        elif b"\r\ntransfer-encoding: chunked\r\n" in lowered:
            while True:
                line = await self.reader.readuntil(b"\r\n")
                size = int(line.split(b";")[0], 16)
                body += line + await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        self.received += body
        self.requests.append(head + body)
        return head + bytes(body)

    async def read_head(self) -> bytes:
        head = await self.reader.readuntil(b"\r\n\r\n")
        self.received += head
        return head

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        self.sent += len(data)
        await self.writer.drain()

    def stop_reading(self) -> None:
        cast(asyncio.Transport, self.writer.transport).pause_reading()  # uvloop's is no asyncio.ReadTransport

    def hang_up(self) -> None:
        self.hung_up = True
        self.writer.close()

    async def read_until_eof(self) -> None:
        """Keep reading (recording) until the client closes; then mark it closed."""
        try:
            while data := await self.reader.read(65536):
                self.received += data
        except ConnectionError:
            pass
        self.client_closed.set()

    async def wait_client_closed(self, timeout_s: float = 2.0) -> None:
        await asyncio.wait_for(self.client_closed.wait(), timeout_s)


Handler = Callable[[RawConnection], Awaitable[None]]


class RawServer:
    """A TCP (or TLS) server on 127.0.0.1 answering requests with scripted raw bytes, in order.

    After the script (or the handler) ends, each connection is read until the client closes it.
    """

    def __init__(self, *replies: bytes, handler: Handler | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.replies = deque(replies)
        self.handler = handler
        self.tls = tls
        self.port = 0
        self.accepted = 0  # TCP accepts, counted before any TLS handshake
        self.connections: list[RawConnection] = []
        self.errors: list[BaseException] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def pool(self, **options: Any) -> ConnectionPool:
        options.setdefault("host_header", "upstream.test")
        options.setdefault("read_timeout_s", 2.0)
        return ConnectionPool(options.pop("host", "127.0.0.1"), self.port, **options)

    async def __aenter__(self) -> RawServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for connection in self.connections:
            connection.writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _protocol(self) -> asyncio.Protocol:
        self.accepted += 1
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=1 << 20), self._connected)

    def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(RawConnection(reader, writer)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, connection: RawConnection) -> None:
        self.connections.append(connection)
        try:
            await (self.handler or self._scripted)(connection)
            if not connection.hung_up:
                await connection.read_until_eof()
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            self.errors.append(exc)
            connection.client_closed.set()
        finally:
            connection.writer.close()

    async def _scripted(self, connection: RawConnection) -> None:
        while self.replies:
            if await connection.read_request() is None:
                return
            await connection.send(self.replies.popleft())


def self_signed(directory: Path, names: Iterable[str] = ("localhost",), ips: Iterable[str] = ("127.0.0.1",)) -> Path:
    """A self-signed certificate and its key, in one PEM file; returns its path."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smsguard test")])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"cert-{len(list(directory.iterdir()))}.pem"
    path.write_bytes(
        certificate.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def server_context(pem: Path, sni_seen: list[str | None] | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    if sni_seen is not None:

        def record(_: Any, name: str | None, __: Any) -> None:
            sni_seen.append(name)

        context.sni_callback = record
    return context
