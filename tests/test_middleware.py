"""middleware.py: the pure-ASGI guard in front of a Starlette app, including Starlette's `@requires`."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.config.settings import parse_settings
from gateway.guard.authorize import Authorizer
from gateway.guard.middleware import GuardMiddleware
from gateway.policy.loader import parse_policy

SECRET = "m" * 40
POLICY = """\
mount: /api
scopes:
  messages:send: Send
  messages:read: Read
  admin:all: Admin
rules:
  - {method: GET, path: /health, public: true}
  - {method: POST, path: /messages, scope: messages:send}
  - {method: GET, path: "/messages/{id}", any_of: [messages:read, messages:send]}
  - {method: GET, path: /admin, scope: admin:all, exact: true}
  - {method: GET, path: /both, all_of: [messages:read, messages:send]}
"""
CONFIG = f"""\
auth:
  issuers:
    - name: corp
      issuer: https://idp.example.com/
      audience: sms-api
      algorithms: [HS256]
      secret: "{SECRET}"
"""


def token(scopes: str, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": "https://idp.example.com/", "aud": "sms-api", "sub": "alice", "iat": now, "exp": now + 300}
    payload.update(scope=scopes, **claims)
    return jwt.encode(payload, SECRET, algorithm="HS256")


async def send_message(request: Request) -> JSONResponse:
    return JSONResponse({"user": request.user.display_name, "scopes": request.auth.scopes})


@requires("messages:read")
async def read_message(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.path_params["id"], "guard": request.scope["smsguard"].rule.path})


async def anything(request: Request) -> JSONResponse:
    return JSONResponse({"authenticated": request.user.is_authenticated})


def build_app() -> GuardMiddleware:
    settings = parse_settings(CONFIG, env={})
    authorizer = Authorizer.from_settings(settings, policies=[parse_policy(POLICY, "app.yaml")])
    inner = Starlette(
        routes=[
            Route("/api/health", anything),
            Route("/api/messages", send_message, methods=["POST"]),
            Route("/api/messages/{id}", read_message),
            Route("/api/admin", anything),
            Route("/api/both", anything),
            Route("/api/unlisted", anything),
        ]
    )
    return GuardMiddleware(inner, authorizer=authorizer)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = build_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        yield client
    await app.aclose()


def bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}


async def test_allowed_request_reaches_app_with_user_and_scopes(client: httpx.AsyncClient) -> None:
    """An allowed request reaches the app with scope["user"] and scope["auth"] set like Starlette's."""
    response = await client.post("/api/messages", headers=bearer(token("messages:send")))
    assert response.status_code == 200
    assert response.json() == {"user": "alice", "scopes": ["messages:send"]}


async def test_starlette_requires_keeps_working(client: httpx.AsyncClient) -> None:
    """The guard allows any_of; Starlette's own @requires then checks its scope on top."""
    ok = await client.get("/api/messages/42", headers=bearer(token("messages:read")))
    assert ok.status_code == 200
    assert ok.json() == {"id": "42", "guard": "/messages/{id}"}
    refused_by_app = await client.get("/api/messages/42", headers=bearer(token("messages:send")))
    assert refused_by_app.status_code == 403  # guard allowed (any_of), @requires did not


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "challenge"),
    [
        ("POST", "/api/messages", {}, 401, 'Bearer realm="smsguard"'),
        ("POST", "/api/messages", bearer("not-a-jwt"), 401, 'error="invalid_token"'),
        ("POST", "/api/messages", bearer(token("messages:read")), 403, 'scope="messages:send"'),
        ("GET", "/api/admin", bearer(token("all:any")), 403, 'error="insufficient_scope"'),
        ("GET", "/api/both", bearer(token("messages:read")), 403, 'scope="messages:read messages:send"'),
        ("GET", "/api/unlisted", bearer(token("all:any")), 404, None),
        ("GET", "/api/%2e%2e/admin", bearer(token("all:any")), 400, None),
        ("GET", "/api//messages/1", bearer(token("all:any")), 400, None),
        ("HEAD", "/api/health", {}, 404, None),
    ],
)
async def test_refusals_have_smsgate_shape_and_rfc6750_headers(
    client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str], status: int, challenge: str | None
) -> None:
    """Refusals answer {"message": ...} with the right status and WWW-Authenticate challenge."""
    response = await client.request(method, path, headers=headers)
    assert response.status_code == status
    if method != "HEAD":
        assert set(response.json()) == {"message"}
    if challenge is None:
        assert "www-authenticate" not in response.headers
    else:
        assert challenge in response.headers["www-authenticate"]
    if status == 401 and not headers:
        assert "error=" not in response.headers["www-authenticate"]


async def test_superuser_and_all_of(client: httpx.AsyncClient) -> None:
    """all:any satisfies non-exact rules; all_of needs every scope."""
    assert (await client.post("/api/messages", headers=bearer(token("all:any")))).status_code == 200
    both = bearer(token("messages:read messages:send"))
    assert (await client.get("/api/both", headers=both)).status_code == 200


async def test_public_route_needs_no_token(client: httpx.AsyncClient) -> None:
    """A public rule lets anonymous requests through, unauthenticated."""
    response = await client.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {"authenticated": False}


async def test_basic_auth_is_refused_when_user_unknown(client: httpx.AsyncClient) -> None:
    """Basic credentials of an unknown user are a 401, not a pass."""
    creds = base64.b64encode(b"nobody:secret").decode()
    response = await client.post("/api/messages", headers={"authorization": f"Basic {creds}"})
    assert response.status_code == 401


async def test_websocket_and_lifespan_scopes_pass_through_untouched() -> None:
    """Non-HTTP scopes reach the app unchanged, without authorization."""
    seen: list[dict[str, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(dict(scope))

    guard = GuardMiddleware(inner, authorizer=build_app().authorizer)
    for scope in ({"type": "websocket", "path": "/ws", "headers": []}, {"type": "lifespan"}):
        await guard(scope, None, None)  # type: ignore[arg-type]
    assert seen == [{"type": "websocket", "path": "/ws", "headers": []}, {"type": "lifespan"}]


def test_constructor_needs_settings_or_authorizer() -> None:
    """Building the guard without a policy source is a clear TypeError."""
    with pytest.raises(TypeError, match="settings= or authorizer="):
        GuardMiddleware(Starlette())


async def test_custom_on_error_is_used() -> None:
    """on_error replaces the default error response, like Starlette's AuthenticationMiddleware."""
    seen: list[int] = []

    async def on_error(scope: Any, receive: Any, send: Any, exc: Any) -> None:
        seen.append(exc.status)
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guard = build_app()
    guard.on_error = on_error
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://app") as http:
        assert (await http.post("/api/messages")).status_code == 418
    assert seen == [401]
