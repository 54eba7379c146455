"""The forwarder: an ASGI app that sends an authorized request to its upstream and streams the answer back.

It runs behind `GuardMiddleware`, which leaves the `Decision` in `scope["smsguard"]`; a request without
one is never forwarded. The data plane is `http1.ConnectionPool`, one keep-alive pool per
upstream, used as a plain pipe:

- the request target is the configured base path plus the *canonical* path (mount removed) plus the
  validated raw query (`upstream_target`); the connection always goes to the configured host and port
  and `Host` is the configured authority, so no path or query spelling can move the request elsewhere;
- headers are sanitized (`headers.py`), `X-Forwarded-*` rebuilt, the upstream's credentials injected
  by its `Credentials` flow; the client adds nothing of its own (no Accept, Accept-Encoding, User-Agent,
  Content-Type or cookies) and never follows redirects or reads proxy settings from the environment;
- bodies stream both ways without being held whole: a request body up to `retry_buffer_bytes` is read
  first (replayable, and sent with a Content-Length even when the client chunked it), a bigger one is
  streamed with the client's Content-Length (chunked only when the client chunked); the response is
  relayed chunk by chunk, bytes untouched (never decompressed);
- nothing is ever resent on its own, not even an idempotent request after a dropped connection: only
  an injector's explicit second attempt (a token exchange after a 401) is honoured, and only for a
  replayable body; the injector's first request is
  prepared (a token exchange may log in) before an in-flight slot is taken, so logins never hold the pool;
- a provider that reports bad credentials inside a success (BSG's `200 {"error": 2}`, the injector's
  `credential_error`) is caught: such upstreams are asked for uncompressed answers, and small JSON
  answers with the rule's status (at most `INSPECT_BYTES`) are read before relaying; a match becomes a
  502 `upstream_credentials`, logged as `upstream.credential_failure`, never a success;
- faults become SMSGate-shaped errors before the response starts (502 refused/reset/garbled, 504
  timeout, 503 + Retry-After when the upstream's in-flight limit stays full, 413 too large); after it
  started, the client connection is dropped (`ResponseAborted`), never answered twice;
- a client that goes away closes the upstream request: once its body is read, a watcher waits for
  `http.disconnect` and cancels the exchange;
- when the request is observed (`observe.RequestRecord` in the scope), the upstream's name and the time
  to its response headers are recorded there, any refusal's code too, and the request id replaces the
  client's `X-Request-ID` towards the upstream.

Error messages name what failed, never a URL, header or credential.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import ssl
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from time import perf_counter
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote_plus, urlencode

from yarl import URL

from gateway.config.settings import ProxySettings, UpstreamSettings
from gateway.errors import BadGateway, BadRequest, GatewayTimeout, HTTPError, PayloadTooLarge, ServiceUnavailable
from gateway.observe.events import RECORD_KEY, RequestRecord
from gateway.observe.logs import Redactor, make_logger
from gateway.policy.forwarding import upstream_target, upstream_url
from gateway.proxy.credentials import CredentialErrorRule, Credentials, OutgoingRequest, build_credentials
from gateway.proxy.headers import (
    forwarded_headers,
    normalized_names,
    sanitize_request_headers,
    sanitize_response_headers,
)
from gateway.proxy.http1 import (
    ConnectFailed,
    ConnectionPool,
    ConnectTimeout,
    InvalidRequest,
    ProtocolError,
    ReadTimeout,
    Response,
    UpstreamError,
)
from gateway.web.asgi import Receive, Scope, Send, run_lifespan
from gateway.web.responses import send_error
from gateway.web.server import DISCONNECT_EXTENSION, DisconnectSignal

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from gateway.guard.authorize import Decision
    from gateway.observe.metrics import Metrics

__all__ = [
    "INSPECT_BYTES",
    "ProxyApp",
    "ResponseAborted",
    "Upstream",
    "rewrite_location",
    "upstream_target",
    "upstream_url",
]

INSPECT_BYTES = 64 * 1024  # the largest answer read whole to look for a provider's credential error

_ABSOLUTE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.DOTALL)
_PATH_END = re.compile(r"[?#]")
_CONTENT_LENGTH = b"content-length"
_TRANSFER_ENCODING = b"transfer-encoding"
_NO_EXTENSIONS: Mapping[str, object] = {}
_JSON_TYPE = re.compile(r"\s*application/(?:[\w.+-]*\+)?json\s*(?:;.*)?", re.IGNORECASE | re.DOTALL)


class ResponseAborted(Exception):
    """The upstream failed after the response began: the client connection is dropped, not answered twice."""

    code = "upstream_aborted"


class _ClientGone(Exception):
    """The client disconnected; there is nobody to answer."""


def rewrite_location(location: str, base: URL, mount: str) -> str:
    """Point a `Location` into the upstream base (absolute URL on the same origin, or an absolute path) at the mount.

    SMSGate answers `202` with `Location: /3rdparty/v1/messages/<id>`; a client must follow it through the
    gateway. Locations elsewhere are left alone (the gateway never follows redirects itself).
    """
    match = _ABSOLUTE.fullmatch(location)
    if match is not None:
        scheme, authority, target = match.groups()
        try:
            origin = URL.build(scheme=scheme.lower(), authority=authority, encoded=True)
            same = (origin.scheme, origin.host, origin.port) == (base.scheme, base.host, base.port)
        except (ValueError, TypeError):
            return location
        if not same:
            return location
        target = target or "/"
    elif location.startswith("/") and not location.startswith("//"):
        target = location
    else:
        return location
    end = _PATH_END.search(target)
    path, rest = (target[: end.start()], target[end.start() :]) if end else (target, "")
    base_path = base.raw_path.rstrip("/")
    if path == base_path:
        relative = ""
    elif path.startswith(base_path + "/"):
        relative = path[len(base_path) :]
    else:
        return location
    return (mount + relative or "/") + rest


def _drop_query_params(raw_query: str, names: frozenset[str]) -> str:
    """The raw query without parameters whose decoded, lowercased name is in `names` (the rest byte for byte)."""
    if not raw_query:
        return raw_query
    return "&".join(p for p in raw_query.split("&") if unquote_plus(p.partition("=")[0]).lower() not in names)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The declared body length; conflicting or malformed framing is a 400 (request smuggling)."""
    value: bytes | None = None
    chunked = False
    for name, raw in headers:
        if name == _CONTENT_LENGTH:
            if value is not None and raw != value:
                raise BadRequest("conflicting Content-Length headers", code="bad_framing")
            value = raw
        elif name == _TRANSFER_ENCODING:
            chunked = True
    if value is None:
        return None
    if chunked:
        raise BadRequest("both Content-Length and Transfer-Encoding", code="bad_framing")
    if not value.isdigit() or len(value) > 15:
        raise BadRequest("invalid Content-Length", code="bad_framing")
    return int(value)


class Upstream:
    """One configured upstream: base URL, credentials, timeouts, and (once started) its pool and in-flight limit."""

    __slots__ = (
        "base",
        "base_path",
        "connect_timeout_s",
        "credentials",
        "name",
        "pool",
        "pool_size",
        "pool_timeout_s",
        "read_timeout_s",
        "retry_after_s",
        "slots",
        "strip_headers",
        "strip_headers_observed",
        "strip_query",
        "tls",
    )

    def __init__(
        self, settings: UpstreamSettings, credentials: Credentials, *, tls: ssl.SSLContext | None = None
    ) -> None:
        """`tls` replaces the default context of an https upstream (the system's CAs, hostname checked)."""
        self.name = settings.name
        self.base = URL(settings.url)
        if self.base.scheme not in ("http", "https") or not self.base.raw_host:
            raise ValueError(f"upstream {settings.name!r}: url must be an absolute http(s) URL")
        if self.base.raw_user or self.base.raw_password or self.base.raw_query_string or self.base.raw_fragment:
            raise ValueError(f"upstream {settings.name!r}: url must not carry userinfo, a query or a fragment")
        self.credentials = credentials
        self.strip_headers = normalized_names(credentials.header_names)
        # Observed requests carry the gateway's request id upstream instead of the client's.
        self.strip_headers_observed = self.strip_headers | normalized_names({"X-Request-ID"})
        self.strip_query = frozenset(name.lower() for name in credentials.query_names)
        self.base_path = self.base.raw_path
        self.tls = tls
        self.connect_timeout_s = settings.connect_timeout_s
        self.read_timeout_s = settings.read_timeout_s
        self.pool_size = settings.pool_size
        self.pool_timeout_s = settings.pool_timeout_s
        self.retry_after_s = max(1, math.ceil(settings.pool_timeout_s))
        self.pool: ConnectionPool | None = None
        self.slots: asyncio.Semaphore | None = None

    def target(self, mount: str, canonical_path: str, raw_query: str) -> str:
        return upstream_target(self.base_path, mount, canonical_path, raw_query)

    async def start(self) -> None:
        """Open the pool (inside the running loop); a second call does nothing."""
        if self.pool is not None:
            return
        base = self.base
        https = base.scheme == "https"
        self.pool = ConnectionPool(
            base.raw_host or "",
            base.port or (443 if https else 80),
            host_header=base.raw_authority,
            tls=(self.tls or ssl.create_default_context()) if https else None,
            connect_timeout_s=self.connect_timeout_s,
            read_timeout_s=self.read_timeout_s,
            size=self.pool_size,
        )
        self.slots = asyncio.Semaphore(self.pool_size)

    async def aclose(self) -> None:
        pool, self.pool, self.slots = self.pool, None, None
        if pool is not None:
            await pool.aclose()

    async def acquire(self) -> asyncio.Semaphore:
        """Take an in-flight slot, waiting at most `pool_timeout_s`; 503 + Retry-After when none frees."""
        slots = self.slots
        if slots is None:
            raise ServiceUnavailable("the gateway is not ready", code="not_ready")
        if slots.locked():
            try:
                async with asyncio.timeout(self.pool_timeout_s):
                    await slots.acquire()
            except TimeoutError:
                raise ServiceUnavailable(
                    "too many requests in flight to the upstream",
                    retry_after_s=self.retry_after_s,
                    code="upstream_busy",
                ) from None
        else:
            await slots.acquire()
        return slots


class _Exchange:
    """Per-request state shared by the forwarder, the body streamer and the disconnect watcher."""

    __slots__ = (
        "cancelled",
        "finished",
        "receive",
        "received",
        "signal",
        "started",
        "task",
        "watcher",
        "watching",
    )

    def __init__(self, receive: Receive, signal: object) -> None:
        self.receive = receive
        # The server's disconnect callback, when it offers one (`gateway serve` does).
        self.signal = signal if isinstance(signal, DisconnectSignal) else None
        self.watching = False
        self.task: asyncio.Task[object] | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.cancelled = False  # the watcher cancelled `task` because the client left
        self.received = 0  # request body bytes read from the client
        self.started = False  # http.response.start was sent
        self.finished = False  # the whole upstream body was read

    def watch(self) -> None:
        """The request body is consumed: from now on `http.disconnect` is the only thing `receive` can say."""
        if self.watching or self.task is None:
            return
        self.watching = True
        if self.signal is not None:
            self.signal.add(self.client_left)
        else:
            self.watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        if (await self.receive())["type"] != "http.disconnect":
            return  # a non-compliant server: stop watching rather than spin on it
        self.client_left()

    def client_left(self) -> None:
        if not self.finished and self.task is not None:
            self.cancelled = True
            self.task.cancel()

    def stop(self) -> None:
        if not self.watching:
            return
        if self.signal is not None:
            self.signal.remove(self.client_left)
        elif self.watcher is not None:
            self.watcher.cancel()


class ProxyApp:
    """The forwarding ASGI app; owns one `Upstream` per configured upstream and their credentials."""

    def __init__(
        self,
        upstreams: Mapping[str, UpstreamSettings],
        proxy: ProxySettings,
        credentials: Mapping[str, Credentials] | None = None,
        *,
        log: FilteringBoundLogger | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        given = credentials or {}
        built = {
            name: given[name]
            if name in given
            else build_credentials(settings.credentials, name=name, log=log, metrics=metrics)
            for name, settings in upstreams.items()
        }
        if log is None:  # the stdlib logger smsguard.upstream, redacting these credentials
            redactor = Redactor()
            for injector in built.values():
                redactor.add(injector.secret_values, injector.header_names | injector.query_names)
            log = make_logger("smsguard.upstream", redactor=redactor)
        self._log = log
        self.upstreams: dict[str, Upstream] = {name: Upstream(upstreams[name], built[name]) for name in upstreams}
        # A policy without `upstream:` is served by the only upstream, if there is exactly one.
        self._default = next(iter(self.upstreams.values())) if len(self.upstreams) == 1 else None
        self._max_body = proxy.max_body_bytes
        self._buffer_bytes = min(proxy.retry_buffer_bytes, proxy.max_body_bytes)
        self._trusted = proxy.trusted_proxies
        self._started = False
        self._closed = False

    async def start(self) -> None:
        """Open every upstream's pool; call inside the running loop (the lifespan does)."""
        for upstream in self.upstreams.values():
            await upstream.start()
        self._started = True
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        for upstream in self.upstreams.values():
            await upstream.aclose()
            await upstream.credentials.aclose()

    def ready(self) -> bool:
        """Pools are open and not closed."""
        return (
            self._started
            and not self._closed
            and all(upstream.pool is not None for upstream in self.upstreams.values())
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            exchange = _Exchange(receive, scope.get("extensions", _NO_EXTENSIONS).get(DISCONNECT_EXTENSION))
            record: RequestRecord | None = scope.get(RECORD_KEY)
            try:
                await self._forward(scope, send, exchange, record)
            except HTTPError as exc:
                if record is not None:
                    record.refuse(exc)
                if exchange.started:  # never a second response start; errors after it are ResponseAborted
                    raise ResponseAborted(exc.message) from None
                await send_error(send, exc)
            except _ClientGone:
                if record is not None:
                    record.reason = "client_disconnected"
                return
            finally:
                if record is not None:
                    record.bytes_in = exchange.received
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await run_lifespan(receive, send, self.start, self.aclose)

    async def _forward(self, scope: Scope, send: Send, exchange: _Exchange, record: RequestRecord | None) -> None:
        decision: Decision | None = scope.get("smsguard")
        if decision is None:
            raise HTTPError("no authorization decision reached the proxy", code="no_decision")
        method: str = scope["method"]
        if method == "CONNECT":  # aiohttp would turn it into a tunnel request to the upstream's host
            raise BadRequest("CONNECT is never forwarded", code="bad_method")
        rule = decision.rule
        upstream = self._default if rule.upstream is None else self.upstreams.get(rule.upstream)
        if upstream is None:
            raise BadGateway("no upstream is configured for this route", code="no_upstream")
        if record is not None:
            record.upstream = upstream.name
        if upstream.pool is None:
            raise ServiceUnavailable("the gateway is not ready", code="not_ready")
        raw_query = scope.get("query_string", b"").decode("latin-1")
        if upstream.strip_query:
            raw_query = _drop_query_params(raw_query, upstream.strip_query)
        target = upstream.target(rule.mount, decision.path, raw_query)
        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        length = _content_length(raw_headers)
        if length is not None and length > self._max_body:
            raise PayloadTooLarge(f"the request body is larger than {self._max_body} bytes")
        if record is None:
            headers = sanitize_request_headers(raw_headers, upstream.strip_headers)
        else:
            headers = sanitize_request_headers(raw_headers, upstream.strip_headers_observed)
            headers.append(("X-Request-ID", record.request_id))
        headers.extend(forwarded_headers(scope, self._trusted))

        body: bytes | AsyncIterator[bytes] | None
        if length is not None and length > self._buffer_bytes:
            headers.append(("Content-Length", str(length)))
            body = self._stream_body(b"", exchange)
        else:
            prefix, more = await self._read_prefix(exchange)
            if more:
                body = self._stream_body(prefix, exchange)  # chunked and bigger than the buffer: stays chunked
            else:
                if prefix or length is not None:
                    headers.append(("Content-Length", str(len(prefix))))
                body = prefix or None

        check = upstream.credentials.credential_error
        if check is not None:  # the answer may have to be read: ask for it uncompressed
            headers = [(name, value) for name, value in headers if name.lower() != "accept-encoding"]
            headers.append(("Accept-Encoding", "identity"))

        exchange.task = asyncio.current_task()
        replayable = not isinstance(body, AsyncIterator)
        if replayable:
            exchange.watch()
        request = OutgoingRequest(method, headers, None, raw_query, replayable)
        flow = upstream.credentials.flow(request)
        try:
            outgoing = await anext(flow)  # before taking a slot: a token exchange may log in here
            slots = await upstream.acquire()
            response: Response | None = None
            sent_at = perf_counter()
            try:
                try:
                    response = await self._exchange(upstream, target, raw_query, flow, outgoing, body)
                finally:
                    if record is not None:
                        record.upstream_s = perf_counter() - sent_at
                prefix, complete = b"", False
                if check is not None:
                    prefix, complete = await self._inspect(response, check, upstream)
                await self._relay(
                    response, send, exchange, upstream, rule.mount, prefix, complete, observed=record is not None
                )
            finally:
                if response is not None:
                    if exchange.finished:
                        response.release()
                    else:
                        response.close()
                slots.release()
        except asyncio.CancelledError:
            task = exchange.task
            if exchange.cancelled and task is not None and task.uncancel() == 0:
                if record is not None:
                    record.reason = "client_disconnected"
                return  # the client left; the upstream connection is closed
            raise
        finally:
            await flow.aclose()
            exchange.stop()

    async def _read_prefix(self, exchange: _Exchange) -> tuple[bytes, bool]:
        """Read the body up to the buffer size: (bytes read, whether more follows); 413 past the maximum."""
        receive = exchange.receive
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGone
            chunk: bytes = message.get("body", b"")
            more: bool = message.get("more_body", False)
            if chunk:
                size += len(chunk)
                exchange.received = size
                if size > self._max_body:
                    raise PayloadTooLarge(f"the request body is larger than {self._max_body} bytes")
                chunks.append(chunk)
            if not more or size > self._buffer_bytes:
                return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), more

    async def _stream_body(self, prefix: bytes, exchange: _Exchange) -> AsyncIterator[bytes]:
        """Feed the rest of the client's body to aiohttp as it arrives, enforcing the maximum size."""
        receive = exchange.receive
        size = len(prefix)
        if prefix:
            yield prefix
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGone
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            exchange.received = size
            if size > self._max_body:
                raise PayloadTooLarge(f"the request body is larger than {self._max_body} bytes")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                break
        exchange.watch()

    async def _exchange(
        self,
        upstream: Upstream,
        target: str,
        raw_query: str,
        flow: AsyncGenerator[OutgoingRequest, int],
        outgoing: OutgoingRequest,
        body: bytes | AsyncIterator[bytes] | None,
    ) -> Response:
        """Send the flow's request, report the status, and resend once if the flow asks and the body allows."""
        response = await self._send(upstream, target, raw_query, outgoing, body)
        try:
            retry = await flow.asend(response.status)
        except StopAsyncIteration:
            return response
        except BaseException:
            response.close()
            raise
        if isinstance(body, AsyncIterator):
            return response  # the body is gone: the first answer stands
        response.close()
        response = await self._send(upstream, target, raw_query, retry, body)
        try:
            await flow.asend(response.status)  # the flow learns the outcome; a third attempt is never made
        except StopAsyncIteration:
            pass
        except BaseException:
            response.close()
            raise
        return response

    async def _inspect(self, response: Response, check: CredentialErrorRule, upstream: Upstream) -> tuple[bytes, bool]:
        """Read a small JSON answer whole to look for the provider's credential error.

        Returns the bytes read and whether that is the whole body, for `_relay` to send on unchanged.
        Answers with another status, another type, or over `INSPECT_BYTES` pass through unread.
        """
        if response.status != check.status or not _JSON_TYPE.fullmatch(response.header(b"content-type") or ""):
            return b"", False
        if (response.content_length or 0) > INSPECT_BYTES:
            return b"", False
        chunks: list[bytes] = []
        size = 0
        try:
            while size <= INSPECT_BYTES:
                chunk = await response.read()
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except UpstreamError as exc:
            raise _upstream_error(exc) from None
        data = b"".join(chunks)
        if size > INSPECT_BYTES:
            return data, False
        try:
            document = json.loads(_decoded(data, response.header(b"content-encoding") or ""))
        except (ValueError, zlib.error):
            return data, True
        if check.matches(response.status, document):
            self._log.error(
                "upstream.credential_failure",
                upstream=upstream.name,
                cause="credential_error_answer",
                upstream_status=response.status,
                field=check.field,
                equals=check.equals,
            )
            raise BadGateway("upstream rejected the gateway's credentials", code="upstream_credentials")
        return data, True

    async def _send(
        self,
        upstream: Upstream,
        target: str,
        raw_query: str,
        request: OutgoingRequest,
        body: bytes | AsyncIterator[bytes] | None,
    ) -> Response:
        if request.query is not None or request.raw_query != raw_query:
            query = request.raw_query
            if request.query:
                added = urlencode(request.query, quote_via=quote, safe="")
                query = f"{query}&{added}" if query else added
            path = target.partition("?")[0]
            target = f"{path}?{query}" if query else path
        pool = upstream.pool
        if pool is None:
            raise ServiceUnavailable("the gateway is shutting down", code="not_ready")
        try:
            return await pool.request(request.method, target, request.headers, body)
        except UpstreamError as exc:
            raise _upstream_error(exc) from None

    async def _relay(
        self,
        response: Response,
        send: Send,
        exchange: _Exchange,
        upstream: Upstream,
        mount: str,
        prefix: bytes = b"",
        complete: bool = False,
        *,
        observed: bool = False,
    ) -> None:
        """Stream the upstream's answer to the client as it arrives (after `prefix`, the bytes already read)."""
        headers = sanitize_response_headers(response.raw_headers)
        upstream_id = False
        for index, (name, value) in enumerate(headers):
            if name == b"location":
                location = rewrite_location(value.decode("latin-1"), upstream.base, mount)
                headers[index] = (name, location.encode("latin-1"))
            elif name == b"x-request-id":
                upstream_id = True
        if upstream_id and observed:  # the observer adds the gateway's own
            headers = [header for header in headers if header[0] != b"x-request-id"]
        exchange.started = True
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        if complete:
            exchange.finished = True
            await send({"type": "http.response.body", "body": prefix, "more_body": False})
            return
        if prefix:
            await send({"type": "http.response.body", "body": prefix, "more_body": True})
        while True:
            try:
                chunk = await response.read()
            except UpstreamError as exc:
                raise ResponseAborted(f"the upstream failed mid-response ({type(exc).__name__})") from None
            if not chunk:
                break
            if response.at_eof:
                exchange.finished = True
                await send({"type": "http.response.body", "body": chunk, "more_body": False})
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        exchange.finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _decoded(data: bytes, encoding: str) -> bytes:
    """The body without a gzip/deflate Content-Encoding (for inspection only), at most `INSPECT_BYTES`."""
    coding = encoding.strip().lower()
    if coding in ("", "identity"):
        return data
    if coding not in ("gzip", "x-gzip", "deflate"):
        raise ValueError(f"cannot inspect {coding!r} content")
    wbits = 47 if coding != "deflate" else 15  # 47: gzip or zlib header, auto-detected
    inflater = zlib.decompressobj(wbits)
    plain = inflater.decompress(data, INSPECT_BYTES + 1)
    if len(plain) > INSPECT_BYTES:
        raise ValueError("too large to inspect")
    return plain


def _upstream_error(exc: UpstreamError) -> HTTPError:
    """The client-facing error for a failure before the response started (never the URL or a header)."""
    if isinstance(exc, ConnectTimeout):
        return GatewayTimeout("connecting to the upstream timed out", code="upstream_connect_timeout")
    if isinstance(exc, ReadTimeout):
        return GatewayTimeout("the upstream did not answer in time", code="upstream_read_timeout")
    if isinstance(exc, ConnectFailed):
        return BadGateway("could not connect to the upstream", code="upstream_unreachable")
    if isinstance(exc, ProtocolError):
        return BadGateway("the upstream sent an invalid response", code="upstream_protocol_error")
    if isinstance(exc, InvalidRequest):
        return BadGateway("the request could not be written to the upstream", code="upstream_bad_request")
    return BadGateway("the upstream closed the connection without answering", code="upstream_reset")
