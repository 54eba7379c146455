"""An in-process stand-in for SMSGate's 3rdparty/v1 API with made-up data, for `gateway demo` and tests.

Like a provider's test keys it accepts real request shapes and answers real response shapes, but sends
nothing: messages move Pending → Sent → Delivered on a clock (computed lazily, no background tasks), and
devices, inbox and logs are invented (`state.py`; the endpoints are in `handlers.py`). A Starlette app
(`create_sandbox`), served on a loopback port by uvicorn inside the caller's event loop (`Sandbox`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import hmac
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.sandbox.handlers import ROUTES, Handler, error
from gateway.sandbox.state import (
    BASE_PATH,
    MAX_BODY_BYTES,
    Clock,
    Failure,
    Received,
    SandboxState,
    new_state,
)

__all__ = [
    "BASE_PATH",
    "MAX_BODY_BYTES",
    "Received",
    "Sandbox",
    "create_sandbox",
]

log = logging.getLogger(__name__)

_PUBLIC = frozenset(f"{BASE_PATH}/health{suffix}" for suffix in ("", "/live", "/ready", "/startup"))
# Recorded per request so tests can see what a proxy forwarded (credentials swapped, hop-by-hop dropped).
_RECORDED_HEADERS = (
    "authorization",
    "connection",
    "content-length",
    "content-type",
    "cookie",
    "forwarded",
    "host",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-request-id",
)


# --- middlewares (outermost first) ------------------------------------------------------------------------


class _Record:
    """Remember every request, even refused ones, so tests can assert what did or did not arrive."""

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            headers = {name: request.headers[name] for name in _RECORDED_HEADERS if name in request.headers}
            raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
            query: bytes = scope.get("query_string", b"")
            received = Received(scope["method"], raw_path.decode("latin-1"), query.decode("latin-1"), headers)
            self.state.received.append(received)
        await self.app(scope, receive, send)


class _BasicAuth:
    """HTTP Basic with exactly the configured pair on everything but health; checked before any body is read."""

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"] in ("GET", "HEAD") and scope["path"] in _PUBLIC):
            await self.app(scope, receive, send)
            return
        header = Request(scope).headers.get("Authorization", "")
        if not _credentials_match(header, self.state.username, self.state.password):
            refusal = error(401, "Unauthorized", {"WWW-Authenticate": 'Basic realm="sandbox"'})
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _credentials_match(header: str, username: bytes, password: bytes) -> bool:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    user, sep, pwd = decoded.partition(b":")
    # Both comparisons always run: neither which half was wrong nor how much matched leaks through timing.
    user_ok = hmac.compare_digest(user, username)
    pwd_ok = hmac.compare_digest(pwd, password)
    return bool(sep) and user_ok and pwd_ok


# --- errors: every failure answers SMSGate's {"message": ...} shape ---------------------------------------


async def _http_error(request: Request, exc: Exception) -> Response:
    """The router's own refusals (404, 405) in SMSGate's shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error(404, "not found")
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        methods = ",".join(sorted(method.strip() for method in allow.split(",") if method.strip()))
        return error(405, f"method {request.method} not allowed", {"Allow": methods})
    if exc.status_code == 413:
        return error(413, f"request body too large (limit {MAX_BODY_BYTES} bytes)")
    return error(exc.status_code, (exc.detail or "error").lower())


def _endpoint(state: SandboxState, handlers: Mapping[str, Handler]) -> Callable[[Request], Awaitable[Response]]:
    """One path's handlers by method (HEAD by GET's) as a Starlette endpoint, refusals answered as errors."""

    async def endpoint(request: Request) -> Response:
        handler = handlers["GET" if request.method == "HEAD" else request.method]
        try:
            return await handler(state, request)
        except Failure as exc:
            return error(exc.status, exc.message)
        except Exception:
            log.exception("sandbox handler failed: %s %s", request.method, request.url.path)
            return error(500, "internal server error")

    return endpoint


def create_sandbox(
    username: str, password: str, *, clock: Clock = time.monotonic, delivery_step_s: float = 2.0
) -> Starlette:
    """The sandbox app; routes live under /3rdparty/v1 and each message advances a state every `delivery_step_s`."""
    state = new_state(username, password, clock=clock, delivery_step_s=delivery_step_s)
    by_path: dict[str, dict[str, Handler]] = {}
    for method, path, handler in ROUTES:
        by_path.setdefault(BASE_PATH + path, {})[method] = handler
    routes = [Route(path, _endpoint(state, handlers), methods=list(handlers)) for path, handlers in by_path.items()]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_Record, state=state), Middleware(_BasicAuth, state=state)],
        exception_handlers={HTTPException: _http_error},
    )
    app.router.redirect_slashes = False  # /messages/ is unknown (404), as SMSGate has it
    app.state.sandbox = state
    return app


# --- the runner -------------------------------------------------------------------------------------------


class _EmbeddedServer(uvicorn.Server):
    """uvicorn's server without its SIGINT/SIGTERM handlers: the sandbox lives in its host's process and loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Sandbox:
    """Runs `create_sandbox` on a loopback port inside the current event loop; `async with` starts and stops it."""

    def __init__(
        self,
        username: str,
        password: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        delivery_step_s: float = 2.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.app = create_sandbox(username, password, clock=clock, delivery_step_s=delivery_step_s)
        state: SandboxState = self.app.state.sandbox
        self.received: collections.deque[Received] = state.received
        self._host = host
        self._port = port
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.base_url = ""

    async def start(self) -> str:
        """Binds and serves; returns the base URL, e.g. http://127.0.0.1:41234/3rdparty/v1."""
        if self._server is not None:
            raise RuntimeError("sandbox already started")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.create_server((self._host, self._port), family=family)  # errors here, not in the task
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            ws="none",
            proxy_headers=False,
            server_header=False,
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=1,
        )
        server = self._server = _EmbeddedServer(config)
        task = self._task = asyncio.create_task(server.serve(sockets=[sock]), name="smsguard sandbox")
        while not server.started:
            if task.done():
                sock.close()
                self._server = self._task = None
                task.result()  # its exception, if any
                raise RuntimeError("the sandbox server stopped while starting")
            await asyncio.sleep(0.005)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{shown}:{port}{BASE_PATH}"
        return self.base_url

    async def stop(self) -> None:
        """Closes the listener and open connections; safe to call twice."""
        server, task = self._server, self._task
        self._server = self._task = None
        if server is not None and task is not None:
            server.should_exit = True
            await task

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
