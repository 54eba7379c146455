"""RecordingUpstream: a real HTTP server on loopback that records exactly what it was sent.

    async with RecordingUpstream(Reply(202, headers=[("Location", "/3rdparty/v1/messages/1")])) as upstream:
        ...  # point the code under test at upstream.url
        seen = upstream.last
        assert seen.method == "POST" and seen.path == "/3rdparty/v1/messages"
        assert seen.values("authorization") == ["Basic ..."]

Each request is recorded (method, undecoded path and query, headers as a list with their original case
and duplicates, body bytes) before it is answered. The answer is a `Reply`: a fixed one, one per
request from a queue (`queue(...)`), or computed by a handler (`handle(fn)`). Replies can wait before
the status line, stream a large or slow body, and notice when the peer goes away (`Recorded.aborted`).
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

__all__ = ["Recorded", "RecordingUpstream", "Reply"]


@dataclass(frozen=True)
class Reply:
    """What the upstream answers.

    `stream_bytes` > 0 sends that many bytes (`fill` repeated) in `chunk_size` pieces with `chunk_delay_s`
    between them instead of `body`, with a Content-Length unless `content_length=False` (then chunked).
    `delay_s` waits before the status line.
    """

    status: int = 200
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    delay_s: float = 0.0
    stream_bytes: int = 0
    chunk_size: int = 65536
    chunk_delay_s: float = 0.0
    content_length: bool = True
    fill: bytes = b"x"


@dataclass
class Recorded:
    """One request as the upstream received it."""

    method: str
    raw_path: str  # the request target exactly as sent: path and query, undecoded
    headers: list[tuple[str, str]]  # original case, original order, duplicates kept
    body: bytes
    version: str
    aborted: asyncio.Event = field(default_factory=asyncio.Event)  # the peer left before the reply was sent
    completed: asyncio.Event = field(default_factory=asyncio.Event)  # the whole reply was written

    @property
    def path(self) -> str:
        return self.raw_path.partition("?")[0]

    @property
    def query(self) -> str:
        return self.raw_path.partition("?")[2]

    def values(self, name: str) -> list[str]:
        """Every value of header `name`, compared case-insensitively."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def names(self) -> list[str]:
        """Every header name as sent, lowercased."""
        return [key.lower() for key, _ in self.headers]


Handler = Callable[[Recorded], "Reply | Awaitable[Reply]"]


async def start_loopback(app: web.Application, **runner_options: Any) -> tuple[web.AppRunner, int]:
    """Serve an aiohttp app on 127.0.0.1:<free port>; returns the runner (to `cleanup()`) and the port."""
    runner = web.AppRunner(app, access_log=None, **runner_options)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port: int = runner.addresses[0][1]
    return runner, port


class RecordingUpstream:
    """A loopback HTTP/1.1 server (aiohttp.web) that records requests and answers with `Reply`s."""

    def __init__(self, reply: Reply | None = None, *, max_body_bytes: int = 256 * 1024 * 1024) -> None:
        self.requests: list[Recorded] = []
        self._default = reply or Reply()
        self._queue: deque[Reply] = deque()
        self._handler: Handler | None = None
        self._max_body_bytes = max_body_bytes
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Condition()
        self.port = 0

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def last(self) -> Recorded:
        assert self.requests, "the upstream received no request"
        return self.requests[-1]

    def reply(self, reply: Reply) -> None:
        """Answer every later request with `reply` (after any queued replies)."""
        self._default = reply

    def queue(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order, then fall back to the default."""
        self._queue.extend(replies)

    def handle(self, handler: Handler | None) -> None:
        """Compute each reply from the recorded request (sync or async); None restores fixed replies."""
        self._handler = handler

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> list[Recorded]:
        """Wait until at least `count` requests arrived."""
        async with asyncio.timeout(timeout_s), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)
        return self.requests

    async def __aenter__(self) -> RecordingUpstream:
        app = web.Application(client_max_size=self._max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self._serve)
        # handler_cancellation: a client that leaves cancels the handler, so `aborted` fires even while waiting.
        self._runner, self.port = await start_loopback(app, handler_cancellation=True)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _next_reply(self, seen: Recorded) -> Reply:
        if self._handler is not None:
            result = self._handler(seen)
            return await result if inspect.isawaitable(result) else result
        return self._queue.popleft() if self._queue else self._default

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = Recorded(
            method=request.method,
            raw_path=request.raw_path,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            body=body,
            version=f"{request.version.major}.{request.version.minor}",
        )
        self.requests.append(seen)
        async with self._arrived:
            self._arrived.notify_all()
        try:
            reply = await self._next_reply(seen)
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            response = await self._respond(request, reply)
        except (asyncio.CancelledError, ConnectionResetError):
            seen.aborted.set()
            raise
        seen.completed.set()
        return response

    async def _respond(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        if not reply.stream_bytes:
            response = web.Response(status=reply.status, body=reply.body)
            for name, value in reply.headers:
                response.headers.add(name, value)
            await response.prepare(request)
            await response.write_eof()
            return response
        stream = web.StreamResponse(status=reply.status)
        for name, value in reply.headers:
            stream.headers.add(name, value)
        if reply.content_length:
            stream.content_length = reply.stream_bytes
        else:
            stream.enable_chunked_encoding()
        await stream.prepare(request)
        chunk = (reply.fill * (reply.chunk_size // len(reply.fill) + 1))[: reply.chunk_size]
        left = reply.stream_bytes
        while left > 0:
            piece = chunk if left >= len(chunk) else chunk[:left]
            await stream.write(piece)
            left -= len(piece)
            if reply.chunk_delay_s:
                await asyncio.sleep(reply.chunk_delay_s)
        await stream.write_eof()
        return stream
