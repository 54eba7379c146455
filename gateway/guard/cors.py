"""CORS for browser clients, answered by the gateway itself (`cors:` in config.yaml; off when absent).

A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered here and never
reaches the policy, the authenticator or an upstream: 204 with the `Access-Control-Allow-*` headers when
the origin, the method and every requested header are allowed, else 403 `{"message"}`. Every other
response, the gateway's own refusals (401/403/404) included, carries `Vary: Origin` and, for an allowed
origin, `Access-Control-Allow-Origin` with that exact origin (never `*`). Any `Access-Control-*` header an
upstream sends is dropped: the gateway alone speaks CORS for the APIs behind it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.config.sections import CorsSettings
from gateway.errors import HTTPError
from gateway.observe.events import RECORD_KEY, RequestRecord, route_label
from gateway.web.asgi import Message, Receive, Scope, Send
from gateway.web.responses import send_error

__all__ = ["PREFLIGHT_ROUTE", "Cors", "CorsRefused"]

PREFLIGHT_ROUTE = "cors-preflight"  # the route label of every preflight in the access event and metrics
_ORIGIN = b"origin"
_REQUEST_METHOD = b"access-control-request-method"
_REQUEST_HEADERS = b"access-control-request-headers"
_ACCESS_CONTROL = b"access-control-"
_VARY = (b"vary", b"origin")

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class CorsRefused(HTTPError):
    """403 for a preflight the `cors:` settings do not allow (no Bearer challenge: no token would help)."""

    status = 403
    code = "cors_refused"


class Cors:
    """Wraps the gateway's dispatch: answers preflights, adds CORS headers to every other response."""

    def __init__(self, settings: CorsSettings) -> None:
        self.settings = settings
        self._any = "*" in settings.origins
        self._origins = frozenset(o.encode("latin-1") for o in settings.origins if o != "*")
        self._methods = frozenset(settings.methods)
        self._headers = frozenset(settings.headers)
        allowed: list[tuple[bytes, bytes]] = []
        if settings.credentials:
            allowed.append((b"access-control-allow-credentials", b"true"))
        self._allowed = tuple(allowed)
        if settings.expose_headers:
            allowed.append((b"access-control-expose-headers", ", ".join(settings.expose_headers).encode("latin-1")))
        self._actual = tuple(allowed)
        self._preflight = (
            *self._allowed,
            (b"access-control-allow-methods", ", ".join(settings.methods).encode("latin-1")),
            (b"access-control-allow-headers", ", ".join(settings.headers).encode("latin-1")),
            (b"access-control-max-age", str(settings.max_age_s).encode()),
        )

    def allows(self, origin: bytes) -> bool:
        return self._any or origin in self._origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send, app: Handler) -> None:
        origin = _origin(scope["headers"])
        if origin is not None and scope["method"] == "OPTIONS" and _first(scope["headers"], _REQUEST_METHOD):
            await self._answer_preflight(scope, send, origin)
            return
        extra = [_VARY]
        if origin is not None and self.allows(origin):
            extra += [(b"access-control-allow-origin", origin), *self._actual]

        def send_with_cors(message: Message) -> Awaitable[None]:
            if message["type"] == "http.response.start":
                headers = [item for item in message.get("headers") or () if not item[0].startswith(_ACCESS_CONTROL)]
                message["headers"] = headers + extra
            return send(message)

        await app(scope, receive, send_with_cors)

    async def _answer_preflight(self, scope: Scope, send: Send, origin: bytes) -> None:
        record: RequestRecord | None = scope.get(RECORD_KEY)
        if record is not None:
            record.route = route_label("OPTIONS", PREFLIGHT_ROUTE)
        try:
            headers = self._check(scope["headers"], origin)
        except CorsRefused as exc:
            if record is not None:
                record.refuse(exc)
            await send_error(send, exc)  # no Access-Control-Allow-Origin: the browser refuses the request
            return
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    def _check(self, request: list[tuple[bytes, bytes]], origin: bytes) -> list[tuple[bytes, bytes]]:
        """The preflight's 204 headers, or CorsRefused naming what is not allowed."""
        if not self.allows(origin):
            raise CorsRefused(f"CORS: origin {origin.decode('latin-1')!r} is not allowed", code="cors_origin")
        method = (_first(request, _REQUEST_METHOD) or b"").decode("latin-1").strip()
        if method not in self._methods:
            raise CorsRefused(f"CORS: method {method!r} is not allowed", code="cors_method")
        asked = b",".join(value for name, value in request if name == _REQUEST_HEADERS).decode("latin-1")
        names = [name.strip().lower() for name in asked.split(",") if name.strip()]
        refused = [name for name in names if name not in self._headers]
        if refused:
            raise CorsRefused(f"CORS: header(s) {', '.join(refused)} not allowed", code="cors_headers")
        return [(b"access-control-allow-origin", origin), *self._preflight, _VARY]


def _first(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _origin(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The request's Origin, lowercased; `null` (an opaque origin) is never allowed, so treated as none."""
    value = _first(headers, _ORIGIN)
    if value is None or value == b"null":
        return None
    return value.strip().lower()
