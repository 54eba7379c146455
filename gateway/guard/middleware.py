"""The embeddable guard: a pure ASGI middleware (no BaseHTTPMiddleware, no Request objects).

Put it in front of any Starlette or FastAPI app. Each HTTP request is decided by `Authorizer`; an allowed
request reaches the app with `scope["auth"]` (`.scopes`) and `scope["user"]` (`.is_authenticated`,
`.display_name`) set the way Starlette's AuthenticationMiddleware sets them, so `@requires(...)` keeps
working, and with `scope["smsguard"]` holding the `Decision`. A refused request is answered with
SMSGate's `{"message": ...}` and RFC 6750 headers. Websocket and lifespan scopes pass through untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.auth.jwt import Principal
from gateway.config.settings import Settings
from gateway.errors import HTTPError
from gateway.guard.authorize import Authorizer, Decision
from gateway.observe.events import RECORD_KEY, RequestRecord
from gateway.web.asgi import ASGIApp, Receive, Scope, Send
from gateway.web.responses import send_error

__all__ = ["AuthCredentials", "GuardMiddleware", "GuardUser", "OnError"]

OnError = Callable[[Scope, Receive, Send, HTTPError], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class AuthCredentials:
    """What Starlette's `@requires` reads from `request.auth`."""

    scopes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class GuardUser:
    """What Starlette reads from `request.user`; `principal` is None on public routes."""

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
    """Authorize every HTTP request against the policy before the wrapped app sees it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings | None = None,
        authorizer: Authorizer | None = None,
        on_error: OnError | None = None,
    ) -> None:
        if authorizer is None:
            if settings is None:
                raise TypeError("GuardMiddleware needs settings= or authorizer=")
            authorizer = Authorizer.from_settings(settings)
        self.app = app
        self.authorizer = authorizer
        self.on_error = on_error or _default_on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record: RequestRecord | None = scope.get(RECORD_KEY)
        try:
            decision = await self.authorizer.authorize(
                scope["method"],
                scope.get("raw_path") or scope["path"].encode(),
                scope["headers"],
                scope.get("query_string", b""),
                record=record,
            )
        except HTTPError as exc:
            if record is not None:
                record.refuse(exc)
            await self.on_error(scope, receive, send, exc)
            return
        annotate(scope, decision)
        await self.app(scope, receive, send)

    async def aclose(self) -> None:
        """Close the JWKS client, if one was opened."""
        await self.authorizer.aclose()


def annotate(scope: Scope, decision: Decision) -> None:
    """Record the decision in the ASGI scope the way Starlette's authentication does."""
    principal = decision.principal
    scope["auth"] = AuthCredentials(sorted(principal.scopes) if principal else [])
    scope["user"] = GuardUser(principal)
    scope["smsguard"] = decision
