"""UvicornServer: run an ASGI app under a real uvicorn server on a free loopback port, inside the test's loop.

    async with UvicornServer(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            ...

httpx's ASGITransport buffers whole bodies and never disconnects; streaming, disconnect and memory
tests need a real server. The lifespan is off by default (start the app yourself) and signal handlers
are left alone so pytest keeps its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from types import TracebackType
from typing import Any, Literal

import uvicorn

__all__ = ["UvicornServer"]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class UvicornServer:
    """A uvicorn server bound to 127.0.0.1:<free port> for the duration of an `async with`."""

    def __init__(
        self,
        app: Any,
        *,
        http: Literal["httptools", "h11"] = "httptools",
        lifespan: Literal["on", "off"] = "off",
    ) -> None:
        self._config = uvicorn.Config(
            app,
            http=http,
            lifespan=lifespan,
            ws="none",
            log_config=None,
            log_level="critical",
            access_log=False,
            server_header=False,
            proxy_headers=False,  # as `gateway serve` runs it: X-Forwarded-* from clients is not trusted
            timeout_graceful_shutdown=2,
        )
        self._server = _Server(self._config)
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> UvicornServer:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._socket = sock
        self.port = sock.getsockname()[1]
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        async with asyncio.timeout(5):
            while not self._server.started:
                if self._task.done():
                    await self._task
                    raise RuntimeError("uvicorn exited during startup")
                await asyncio.sleep(0.01)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        if self._socket is not None:
            self._socket.close()
