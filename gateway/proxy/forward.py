"""The forwarder: an ASGI app that sends an authorized request to its upstream and streams the answer back.

It runs behind `GuardMiddleware`, which leaves the `Decision` in `scope["smsguard"]`; a request without
one is never forwarded. Each request is one `_Forwarding` (its state as attributes, one short method per
step); the data plane is `http1.ConnectionPool`, one keep-alive pool per `Upstream` (`upstream.py`),
used as a plain pipe:

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
- an upstream whose credentials are parameters gets no client copy of them: they are dropped from the
  query (`;` read as a separator too) and from a form-encoded body (`params.py`; such a body must fit
  `retry_buffer_bytes`, else 413, and multipart is refused with 400), and the injector may put its own
  parameters in that body (SMSGatewayCenter's POST samples); the names in `scope[STRIP_PARAMS]` (a key
  slot's `userId`/`password`, set by `modes.KeyedProxy`) are dropped the same way, whatever the upstream;
- an upstream status the injector names in `refused` (401 wherever the gateway injects credentials; also
  403 for smsgate_jwt) is the provider refusing the gateway's own credentials: a logged 502
  `upstream_credentials`, never the client's 401 (`responses.credentials_refused`);
- a provider that reports bad credentials inside a success (BSG's `200 {"error": 2}`, the injector's
  `credential_error`) is caught: such upstreams are asked for uncompressed answers, and small JSON
  answers with the rule's status are read before relaying (`responses.inspect`); a match becomes a
  502 `upstream_credentials`, logged as `upstream.credential_failure`, never a success;
- faults become SMSGate-shaped errors before the response starts (`faults.py`: 502 refused/reset/garbled,
  504 timeout; 503 + Retry-After when the upstream's in-flight limit stays full, 413 too large); after it
  started, the client connection is dropped (`ResponseAborted`), never answered twice;
- a client that goes away closes the upstream request: once its body is read, a watcher waits for
  `http.disconnect` and cancels the exchange;
- when the request is observed (`observe.RequestRecord` in the scope), the upstream's name and the time
  to its response headers are recorded there, any refusal's code too, and the request id replaces the
  client's `X-Request-ID` towards the upstream; when it is traced (tracing on), each upstream attempt is
  a CLIENT span whose `traceparent` replaces the client's (`observe.tracing`).

Error messages name what failed, never a URL, header or credential.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from time import perf_counter
from typing import TYPE_CHECKING

from gateway.config.settings import ProxySettings, UpstreamSettings
from gateway.errors import BadGateway, BadRequest, HTTPError, PayloadTooLarge, ServiceUnavailable
from gateway.observe.events import RECORD_KEY, RequestRecord
from gateway.observe.logs import Redactor, make_logger
from gateway.observe.tracing import TRACE_HEADERS
from gateway.policy.forwarding import upstream_target, upstream_url
from gateway.proxy.body import Body, ClientBody, declared_length
from gateway.proxy.credentials import Credentials, OutgoingRequest, build_credentials
from gateway.proxy.faults import ClientGone, ResponseAborted, upstream_error
from gateway.proxy.headers import forwarded_headers, sanitize_request_headers
from gateway.proxy.http1 import ConnectionPool, Response, UpstreamError
from gateway.proxy.params import append_params, drop_params, form_kind
from gateway.proxy.responses import INSPECT_BYTES, credentials_refused, inspect, response_headers, rewrite_location
from gateway.proxy.upstream import Upstream
from gateway.web.asgi import Message, Receive, Scope, Send, run_lifespan
from gateway.web.responses import send_error
from gateway.web.server import DISCONNECT_EXTENSION, DisconnectSignal

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from gateway.guard.authorize import Decision
    from gateway.observe.metrics import Metrics

__all__ = [
    "INSPECT_BYTES",
    "STRIP_HEADERS",
    "STRIP_PARAMS",
    "ProxyApp",
    "ResponseAborted",
    "Upstream",
    "rewrite_location",
    "upstream_target",
    "upstream_url",
]

_NO_EXTENSIONS: Mapping[str, object] = {}
STRIP_PARAMS = "smsguard.strip_params"  # scope key: more parameter names (lowercase) to drop from query and form
STRIP_HEADERS = "smsguard.strip_headers"  # scope key: more header names (normalized_names) to drop, every spelling


class _Forwarding:
    """One request on its way through the forwarder: its state as attributes, one short method per step.

    `run` answers the client whatever happens; `forward` is the way through: `route` (decision, upstream,
    target), `request_headers`, the body (`body.ClientBody`), the credentials flow, then `exchange` (an
    in-flight slot, `attempt`, `inspect`, `relay`). Once the request body is consumed, `watch` listens for
    the client leaving and cancels the task running the request (`client_left`); `stop` ends that.
    """

    __slots__ = (
        "app",
        "body",
        "cancelled",
        "finished",
        "headers",
        "incoming",
        "mount",
        "raw_query",
        "receive",
        "record",
        "scope",
        "send",
        "signal",
        "started",
        "strip",
        "target",
        "task",
        "upstream",
        "watcher",
        "watching",
    )

    # Set by `route` and the request steps, before anything reads them.
    upstream: Upstream
    mount: str
    raw_query: str
    target: str
    headers: list[tuple[str, str]]
    body: Body
    strip: frozenset[str]

    def __init__(self, app: ProxyApp, scope: Scope, receive: Receive, send: Send) -> None:
        self.app = app
        self.scope = scope
        self.receive = receive
        self.send = send
        self.incoming = ClientBody(receive, app.max_body, app.buffer_bytes, self.watch)
        self.record: RequestRecord | None = scope.get(RECORD_KEY)
        # The server's disconnect callback, when it offers one (`gateway serve` does).
        signal = scope.get("extensions", _NO_EXTENSIONS).get(DISCONNECT_EXTENSION)
        self.signal = signal if isinstance(signal, DisconnectSignal) else None
        self.watching = False
        self.task: asyncio.Task[object] | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.cancelled = False  # the watcher cancelled `task` because the client left
        self.started = False  # http.response.start was sent
        self.finished = False  # the whole upstream body was read

    async def run(self) -> None:
        """Forward the request; an error before the response started is answered, one after it drops the
        connection (`ResponseAborted`), a client that left gets nothing. The record learns how it ended."""
        record = self.record
        try:
            await self.forward()
        except HTTPError as exc:
            if record is not None:
                record.refuse(exc)
            if self.started:  # never a second response start; errors after it are ResponseAborted
                raise ResponseAborted(exc.message) from None
            await send_error(self.send, exc)
        except ClientGone:
            if record is not None:
                record.reason = "client_disconnected"
        finally:
            if record is not None:
                record.bytes_in = self.incoming.received

    async def forward(self) -> None:
        method = self.route()
        length = declared_length(self.scope["headers"])
        if length is not None and length > self.app.max_body:
            raise self.incoming.too_large()
        self.headers = self.request_headers()
        self.body = await self.incoming.prepare(length, self.headers)
        form = self.form()
        credentials = self.upstream.credentials
        if credentials.credential_error is not None:  # the answer may have to be read: ask for it uncompressed
            self.headers = [(name, value) for name, value in self.headers if name.lower() != "accept-encoding"]
            self.headers.append(("Accept-Encoding", "identity"))
        self.task = asyncio.current_task()
        replayable = not isinstance(self.body, AsyncIterator)
        if replayable:
            self.watch()
        flow = credentials.flow(OutgoingRequest(method, self.headers, None, self.raw_query, replayable, form))
        try:
            outgoing = await anext(flow)  # before taking a slot: a token exchange may log in here
            await self.exchange(flow, outgoing)
        except asyncio.CancelledError:
            if not self.left():
                raise
        finally:
            await flow.aclose()
            self.stop()

    def route(self) -> str:
        """Settle the upstream, the mount, the query and the target (or refuse); returns the method."""
        decision: Decision | None = self.scope.get("smsguard")
        if decision is None:
            raise HTTPError("no authorization decision reached the proxy", code="no_decision")
        method: str = self.scope["method"]
        if method == "CONNECT":  # never a tunnel to the upstream's host
            raise BadRequest("CONNECT is never forwarded", code="bad_method")
        rule = decision.rule
        upstream = self.app.default if rule.upstream is None else self.app.upstreams.get(rule.upstream)
        if upstream is None:
            raise BadGateway("no upstream is configured for this route", code="no_upstream")
        if self.record is not None:
            self.record.upstream = upstream.name
        if upstream.pool is None:
            raise ServiceUnavailable("the gateway is not ready", code="not_ready")
        raw_query = self.scope.get("query_string", b"").decode("latin-1")
        self.strip = upstream.strip_query | self.scope.get(STRIP_PARAMS, frozenset())
        if self.strip:
            raw_query = drop_params(raw_query, self.strip)
        self.upstream, self.mount, self.raw_query = upstream, rule.mount, raw_query
        self.target = upstream_target(upstream.base_path, rule.mount, decision.path, raw_query)
        return method

    def form(self) -> str | None:
        """A form-encoded body, minus the client's copies of the credential parameters, when the upstream's
        credentials (or the mount's key slot) are parameters (else None: the body goes as it came). Such a
        body must fit the buffer (413 otherwise) and may not be multipart (400): neither could be cleaned."""
        strip = self.strip
        if not strip:
            return None
        kind = form_kind(self.headers)
        if kind is None:
            return None
        if kind == "multipart":
            raise BadRequest(
                "multipart bodies are not forwarded to this upstream (its credentials are request parameters)",
                code="bad_request:multipart",
            )
        if isinstance(self.body, AsyncIterator):
            raise PayloadTooLarge(
                f"a form body larger than {self.app.buffer_bytes} bytes cannot be checked for credentials"
            )
        return drop_params((self.body or b"").decode("latin-1"), strip)

    def request_headers(self) -> list[tuple[str, str]]:
        """The client's headers sanitized, then the request id (when observed) and `X-Forwarded-*`."""
        raw_headers: list[tuple[bytes, bytes]] = self.scope["headers"]
        record = self.record
        strip = self.upstream.strip_headers if record is None else self.upstream.strip_headers_observed
        more: frozenset[str] | None = self.scope.get(STRIP_HEADERS)
        if record is not None and record.trace is not None:  # ours replace the client's (`send_upstream`)
            strip = strip | TRACE_HEADERS
        headers = sanitize_request_headers(raw_headers, strip | more if more else strip)
        if record is not None:
            headers.append(("X-Request-ID", record.request_id))
        headers.extend(forwarded_headers(self.scope, self.app.trusted))
        return headers

    async def exchange(self, flow: AsyncGenerator[OutgoingRequest, int], outgoing: OutgoingRequest) -> None:
        """Take an in-flight slot, get the answer, check it for a credential error, relay it; then give
        the connection back (read whole) or close it, and free the slot."""
        upstream, record = self.upstream, self.record
        slots = await upstream.acquire()
        response: Response | None = None
        sent_at = perf_counter()
        try:
            try:
                response = await self.attempt(flow, outgoing)
            finally:
                if record is not None:
                    record.upstream_s = perf_counter() - sent_at
            credentials = upstream.credentials
            if response.status in credentials.refused:
                raise credentials_refused(response.status, self.app.log, upstream.name, credentials.kind)
            prefix, complete = b"", False
            check = credentials.credential_error
            if check is not None:
                prefix, complete = await inspect(response, check, self.app.log, upstream.name)
            await self.relay(response, prefix, complete)
        finally:
            if response is not None:
                if self.finished:
                    response.release()
                else:
                    response.close()
            slots.release()

    async def attempt(self, flow: AsyncGenerator[OutgoingRequest, int], outgoing: OutgoingRequest) -> Response:
        """Send the flow's request, report the status, and resend once if the flow asks and the body allows."""
        response = await self.send_upstream(outgoing)
        try:
            retry = await flow.asend(response.status)
        except StopAsyncIteration:
            return response
        except BaseException:
            response.close()
            raise
        if isinstance(self.body, AsyncIterator):
            return response  # the body is gone: the first answer stands
        response.close()
        response = await self.send_upstream(retry)
        try:
            await flow.asend(response.status)  # the flow learns the outcome; a third attempt is never made
        except StopAsyncIteration:
            pass
        except BaseException:
            response.close()
            raise
        return response

    async def send_upstream(self, request: OutgoingRequest) -> Response:
        """Send `request` (the target with the query the credentials flow chose) on the upstream's pool."""
        target = self.target
        if request.query is not None or request.raw_query != self.raw_query:
            query = append_params(request.raw_query, request.query or ())
            path = target.partition("?")[0]
            target = f"{path}?{query}" if query else path
        body = self.body
        if request.form is not None:  # the cleaned (and maybe credentialed) form replaces the client's body
            body = request.form.encode("latin-1")
            headers = [(name, value) for name, value in request.headers if name.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
            request.headers[:] = headers
        pool = self.upstream.pool
        if pool is None:
            raise ServiceUnavailable("the gateway is shutting down", code="not_ready")
        trace = None if self.record is None else self.record.trace
        if trace is None:
            return await _request(pool, request.method, target, request.headers, body)
        # Tracing on: a CLIENT span per attempt, until the upstream's response head; the upstream's parent.
        upstream = self.upstream
        attributes: dict[str, str | int] = {
            "http.request.method": request.method,
            "server.address": upstream.base.host or "",
            "server.port": upstream.base.port or 0,
            "url.path": target.partition("?")[0],  # never the query: credentials may travel in it
            "smsguard.upstream": upstream.name,
        }
        with trace.tracer.child(request.method, attributes, client=True) as span:
            headers = [*request.headers, *trace.tracer.headers(span)]
            response = await _request(pool, request.method, target, headers, body)
            span.set_attribute("http.response.status_code", response.status)
            return response

    async def relay(self, response: Response, prefix: bytes, complete: bool) -> None:
        """Stream the upstream's answer to the client as it arrives (after `prefix`, the bytes already read)."""
        upstream = self.upstream
        headers = response_headers(
            response, upstream.base, self.mount, observed=self.record is not None, drop=upstream.response_drop
        )
        send = self.send
        self.started = True
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        if complete:
            self.finished = True
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
                self.finished = True
                await send({"type": "http.response.body", "body": chunk, "more_body": False})
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        self.finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # ------------------------------------------------------------------ the client leaving

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
        message: Message = await self.receive()
        if message["type"] != "http.disconnect":
            return  # a non-compliant server: stop watching rather than spin on it
        self.client_left()

    def client_left(self) -> None:
        if not self.finished and self.task is not None:
            self.cancelled = True
            self.task.cancel()

    def left(self) -> bool:
        """Whether a cancellation came from the watcher alone (the client left): it ends the request quietly."""
        task = self.task
        if self.cancelled and task is not None and task.uncancel() == 0:
            if self.record is not None:
                self.record.reason = "client_disconnected"
            return True  # the upstream connection is closed
        return False

    def stop(self) -> None:
        if not self.watching:
            return
        if self.signal is not None:
            self.signal.remove(self.client_left)
        elif self.watcher is not None:
            self.watcher.cancel()


async def _request(
    pool: ConnectionPool, method: str, target: str, headers: list[tuple[str, str]], body: Body
) -> Response:
    """One request on the upstream's pool; its failures become the gateway's 502/503/504."""
    try:
        return await pool.request(method, target, headers, body)
    except UpstreamError as exc:
        raise upstream_error(exc) from None


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
        self.log = log
        self.upstreams: dict[str, Upstream] = {name: Upstream(upstreams[name], built[name]) for name in upstreams}
        # A policy without `upstream:` is served by the only upstream, if there is exactly one.
        self.default = next(iter(self.upstreams.values())) if len(self.upstreams) == 1 else None
        self.max_body = proxy.max_body_bytes
        self.buffer_bytes = min(proxy.retry_buffer_bytes, proxy.max_body_bytes)
        self.trusted = proxy.trusted_proxies
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

    def notices(self) -> dict[str, dict[str, object]]:
        """Per upstream: its credential kind, and the preset's mode and warnings when it has them (/readyz)."""
        described: dict[str, dict[str, object]] = {}
        for name, upstream in self.upstreams.items():
            credentials = upstream.credentials
            entry: dict[str, object] = {"credentials": credentials.kind}
            if credentials.mode:
                entry["mode"] = credentials.mode
            if credentials.notices:
                entry["warnings"] = list(credentials.notices)
            described[name] = entry
        return described

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
            await _Forwarding(self, scope, receive, send).run()
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await run_lifespan(receive, send, self.start, self.aclose)
