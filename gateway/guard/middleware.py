"""The embeddable guard: a pure ASGI middleware (no BaseHTTPMiddleware, no Request objects).

Put it in front of any Starlette or FastAPI app. Every HTTP request and every websocket handshake is
decided by `Authorizer`; nothing else reaches the app unguarded:

    http        decided; refused with SMSGate's `{"message": ...}` and RFC 6750 headers (`on_error`)
    websocket   decided like a GET that needs a rule with `websocket: true`; refused before it is accepted
                (with the server's denial-response extension the client sees the same status, challenge
                and body as over HTTP, else the socket is closed and the server answers 403)
    lifespan    passed on; the guard's shutdown (its JWKS client) runs when the app's lifespan ends
    other       refused (RuntimeError): a scope type the guard does not know is never passed through

An allowed request reaches the app with `scope["auth"]` (`.scopes`) and `scope["user"]`
(`.is_authenticated`, `.display_name`) set the way Starlette's AuthenticationMiddleware sets them, so
`@requires(...)` keeps working, with `scope["smsguard"]` holding the `Decision`, and with
`request.state.principal` and `request.state.decision`. A public route identifies its caller too: a
valid credential sets the principal; an invalid one is ignored (the request stays anonymous).

The guard guards its policies' mounts. A path outside every mount is refused (`outside="deny"`, the
default: 404 naming the mounts and the option), or passed to the app unauthenticated (`outside="pass"`:
FastAPI's /docs, the app's own /health, CORS preflights). Either way a path must be canonical to be
placed at all: a non-canonical one is refused (400) wherever it points.

Refusals (`access_log="refusals"`, the default), or every request (`"all"`), write the gateway's own
`request` access event to the stdlib logger `smsguard.access`, i.e. through the app's logging;
`metrics_registry=` registers the gateway's Prometheus metrics on the app's registry. With `tracing:` on
in `settings` (the otel extra), or a `tracer=` from `gateway.observe.tracing.build_tracer`, every guarded
request is an OpenTelemetry SERVER span with the decision, and token verification its child; the guard
closes a tracer it built when the app's lifespan ends (one handed to it is the caller's).

A key slot that a form body may hold (SMSGatewayCenter's `userId`/`password`) is the one case where the
guard reads the body before deciding: only then, only up to the slot's limit, and the app receives the
same body afterwards (`gateway.web.body.BodyReplay`, which the limits reuse: the body is read once).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from gateway.auth.jwt import Principal
from gateway.config.settings import Settings
from gateway.errors import BadRequest, HTTPError, NotFound
from gateway.guard.authorize import Authorizer, Decision, inside
from gateway.observe.events import RECORD_KEY, RequestRecord
from gateway.observe.tracing import Tracer, build_tracer
from gateway.policy.paths import canonical_path
from gateway.web.asgi import ASGIApp, Message, Receive, Scope, Send
from gateway.web.body import body_replay
from gateway.web.responses import send_error, send_websocket_error

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from gateway.guard.observe import GuardObserver

__all__ = ["AccessLog", "AuthCredentials", "GuardMiddleware", "GuardUser", "OnError", "Outside"]

OnError = Callable[[Scope, Receive, Send, HTTPError], Awaitable[None]]
Outside = Literal["deny", "pass"]
AccessLog = Literal["off", "refusals", "all"]
OUTSIDE_HINT = '; GuardMiddleware(..., outside="pass") lets the app answer paths outside them'


@dataclass(frozen=True, slots=True)
class AuthCredentials:
    """What Starlette's `@requires` reads from `request.auth`."""

    scopes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class GuardUser:
    """What Starlette reads from `request.user`; `principal` is None for anonymous callers of public routes."""

    principal: Principal | None

    @property
    def is_authenticated(self) -> bool:
        return self.principal is not None

    @property
    def display_name(self) -> str:
        return self.principal.subject if self.principal else ""

    @property
    def identity(self) -> str:
        return self.display_name


async def _default_on_error(scope: Scope, receive: Receive, send: Send, exc: HTTPError) -> None:
    await send_error(send, exc)


class GuardMiddleware:
    """Authorize every HTTP request and websocket handshake against the policy before the wrapped app sees it."""

    outside_hint = OUTSIDE_HINT  # appended to the 404 of a path outside every mount (the gateway has no option)

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings | None = None,
        authorizer: Authorizer | None = None,
        on_error: OnError | None = None,
        outside: Outside = "deny",
        access_log: AccessLog = "refusals",
        metrics_registry: CollectorRegistry | None = None,
        on_startup: Callable[[], None] | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        """`on_startup` runs when the app's lifespan has started; if it raises, start-up fails."""
        if outside not in ("deny", "pass"):
            raise ValueError(f"outside must be 'deny' or 'pass', not {outside!r}")
        if access_log not in ("off", "refusals", "all"):
            raise ValueError(f"access_log must be 'off', 'refusals' or 'all', not {access_log!r}")
        self.app = app
        self.on_error = on_error or _default_on_error
        self.outside = outside
        self.on_startup = on_startup
        self.observer: GuardObserver | None = None
        self._own_tracer = tracer is None and settings is not None and settings.tracing.enabled
        if tracer is None and settings is not None:
            tracer = build_tracer(settings.tracing)
        if access_log != "off" or metrics_registry is not None or (tracer is not None and tracer.enabled):
            from gateway.guard.observe import GuardObserver

            self.observer = GuardObserver(self._guard, access_log=access_log, registry=metrics_registry, tracer=tracer)
        self.tracer = tracer
        if authorizer is None:
            if settings is None:
                raise TypeError("GuardMiddleware needs settings= or authorizer=")
            metrics = self.observer.metrics if self.observer is not None and metrics_registry is not None else None
            authorizer = Authorizer.from_settings(settings, metrics=metrics)
        self.authorizer = authorizer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        if kind not in ("http", "websocket"):
            raise RuntimeError(f"GuardMiddleware refuses the unknown ASGI scope type {kind!r}")
        if self.outside == "pass" and self.is_outside(scope):
            annotate(scope, None)
            await self.app(scope, receive, send)
            return
        observer = self.observer
        if observer is None:
            await self._guard(scope, scope, receive, send)
        elif kind == "http":
            await observer(observer.plan, scope, scope, receive, send)
        else:  # the access event reads a method: the handshake's, on a copy (the app gets the real scope)
            await observer(observer.plan, scope, {**scope, "method": "GET"}, receive, send)

    def is_outside(self, scope: Scope) -> bool:
        """Whether the request lies outside every mount, both as the guard reads it and as the app routes it.

        A path that is not canonical is never outside: the guard refuses it (400) wherever it points.
        """
        try:
            path = canonical_path(scope.get("raw_path") or scope["path"].encode())
        except BadRequest:
            return False
        routed: str = scope["path"]
        return not any(inside(path, mount) or inside(routed, mount) for mount in self.authorizer.mounts)

    async def _guard(self, scope: Scope, seen: Scope, receive: Receive, send: Send) -> None:
        """Decide and then call the app; `seen` is the scope the observer recorded into (or `scope`)."""
        record: RequestRecord | None = seen.get(RECORD_KEY)
        if seen is not scope and record is not None:
            scope[RECORD_KEY] = record
        websocket = scope["type"] == "websocket"
        # only a key slot may read the body (a form's userId/password); no slot, nothing to replay
        replay = None if websocket or self.authorizer.slot is None else body_replay(scope, receive)
        try:
            decision = await self.authorizer.authorize(
                "GET" if websocket else scope["method"],
                scope.get("raw_path") or scope["path"].encode(),
                scope["headers"],
                scope.get("query_string", b""),
                record=record,
                websocket=websocket,
                peer=self.authorizer.authenticator.peer(scope),
                body=None if replay is None else replay.read,
            )
        except HTTPError as exc:
            await self._refuse(scope, receive, send, self._explained(exc, scope), record)
            return
        annotate(scope, decision)
        if websocket and record is not None:
            send = _noting_handshake(send, record)
        if replay is not None and replay.body is not None:
            receive = replay.receive
        await self.app(scope, receive, send)

    def _explained(self, exc: HTTPError, scope: Scope) -> HTTPError:
        if isinstance(exc, NotFound) and self.outside == "deny" and self.outside_hint and self.is_outside(scope):
            explained = NotFound(exc.message + self.outside_hint, code="no_route:outside")
            explained.headers = exc.headers
            return explained
        return exc

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, exc: HTTPError, record: RequestRecord | None
    ) -> None:
        if record is not None:
            record.refuse(exc)
        if scope["type"] == "websocket":
            status = await send_websocket_error(scope, send, exc)
            if record is not None:
                record.status = status
            return
        await self.on_error(scope, receive, send, exc)

    def _lifespan_send(self, send: Send) -> Send:
        """The app's lifespan `send`: runs `on_startup` once it has started, closes the guard once it has stopped."""

        async def lifespan_send(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete" and self.on_startup is not None:
                try:
                    self.on_startup()
                except Exception as exc:
                    message = {"type": "lifespan.startup.failed", "message": f"smsguard: {exc}"}
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.aclose()
            await send(message)

        return lifespan_send

    async def aclose(self) -> None:
        """Close the JWKS client, if one was opened, and a tracer the guard built (done for you when the app's
        lifespan ends)."""
        await self.authorizer.aclose()
        if self._own_tracer and self.tracer is not None:
            await self.tracer.aclose()


def _noting_handshake(send: Send, record: RequestRecord) -> Send:
    """Record what the app answered a websocket handshake with (101 once accepted) for the access event."""

    async def noting(message: Message) -> None:
        kind = message["type"]
        if not record.status:
            if kind == "websocket.accept":
                record.status = 101
            elif kind == "websocket.close":
                record.status = 403
            elif kind == "websocket.http.response.start":
                record.status = message["status"]
        await send(message)

    return noting


def annotate(scope: Scope, decision: Decision | None) -> None:
    """Record the decision in the ASGI scope the way Starlette's authentication does (None: not guarded)."""
    principal = decision.principal if decision is not None else None
    scope["auth"] = AuthCredentials(sorted(principal.scopes) if principal else [])
    scope["user"] = GuardUser(principal)
    scope["smsguard"] = decision
    state: Any = scope.get("state")
    if state is None:
        state = scope["state"] = {}
    state["principal"] = principal
    state["decision"] = decision
