"""middleware.py: the pure-ASGI guard in front of a Starlette app, including Starlette's `@requires`."""

from __future__ import annotations

import asyncio
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
from gateway.errors import NotFound
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


async def test_lifespan_passes_and_unknown_scope_types_are_refused() -> None:
    """Lifespan reaches the app (the guard closes itself at its end); a scope type it does not know never does."""
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        assert (await receive())["type"] == "lifespan.shutdown"
        await send({"type": "lifespan.shutdown.complete"})

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.shutdown"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    guard = GuardMiddleware(inner, authorizer=build_app().authorizer)
    await guard({"type": "lifespan"}, receive, send)
    assert seen == ["lifespan"]
    assert sent == [{"type": "lifespan.shutdown.complete"}]
    with pytest.raises(RuntimeError, match="unknown ASGI scope type 'webtransport'"):
        await guard({"type": "webtransport", "path": "/api/health", "headers": []}, receive, send)
    assert seen == ["lifespan"]


@pytest.mark.parametrize(
    ("extensions", "expected"),
    [
        ({}, [{"type": "websocket.close", "code": 1008}]),
        ({"websocket.http.response": {}}, ["websocket.http.response.start", "websocket.http.response.body"]),
    ],
)
async def test_a_websocket_is_refused_before_the_app_sees_it(extensions: dict[str, Any], expected: list[Any]) -> None:
    """No websocket rule: closed before accept, or, with the denial extension, the HTTP refusal itself."""
    called: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope)

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    guard = GuardMiddleware(inner, authorizer=build_app().authorizer, access_log="off")
    scope = {"type": "websocket", "path": "/api/health", "raw_path": b"/api/health", "headers": []}
    await guard({**scope, "extensions": extensions}, None, send)  # type: ignore[arg-type]
    assert called == []
    if expected and isinstance(expected[0], dict):
        assert sent == expected
        return
    assert [message["type"] for message in sent] == expected
    assert sent[0]["status"] == 404
    assert b"does not allow websockets" in sent[1]["body"]


async def test_head_on_a_get_route_says_how_to_allow_it(client: httpx.AsyncClient) -> None:
    """A refused HEAD where a GET rule matches names the fix (add HEAD to the rule)."""
    guard = build_app()
    with pytest.raises(NotFound) as refused:
        await guard.authorizer.authorize("HEAD", b"/api/health", [])
    assert "add HEAD to its methods" in str(refused.value)
    assert (await client.head("/api/health")).status_code == 404


async def test_outside_the_mounts_is_denied_with_the_mounts_and_the_option(client: httpx.AsyncClient) -> None:
    """outside="deny" (default): a path under no mount is a 404 naming the mounts and outside="pass"."""
    response = await client.get("/docs")
    assert response.status_code == 404
    message = response.json()["message"]
    assert "outside the policies' mounts: /api" in message
    assert 'outside="pass"' in message


async def test_outside_pass_lets_the_app_answer_outside_the_mounts_only() -> None:
    """outside="pass": the app answers outside the mounts, anonymously; inside, and non-canonical, still guarded."""
    guard = build_app()
    inner = guard.app
    assert isinstance(inner, Starlette)
    inner.router.routes.append(Route("/docs", anything))
    passing = GuardMiddleware(inner, authorizer=guard.authorizer, outside="pass")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=passing), base_url="http://app") as http:
        docs = await http.get("/docs", headers=bearer(token("all:any")))
        assert (docs.status_code, docs.json()) == (200, {"authenticated": False})
        assert (await http.post("/api/messages")).status_code == 401
        assert (await http.get("/api/unlisted")).status_code == 404
        assert (await http.get("/docs/..%2Fapi/admin")).status_code == 400
        assert (await http.get("/%61pi/admin")).status_code == 401  # %61 is "a": inside the mount


async def test_a_public_route_identifies_a_valid_caller_and_ignores_an_invalid_token(
    client: httpx.AsyncClient,
) -> None:
    """On a public route a valid token sets request.user; an invalid one leaves the request anonymous."""
    valid = await client.get("/api/health", headers=bearer(token("messages:read")))
    assert valid.json() == {"authenticated": True}
    invalid = await client.get("/api/health", headers=bearer("not-a-jwt"))
    assert (invalid.status_code, invalid.json()) == (200, {"authenticated": False})


async def test_request_state_carries_principal_and_decision() -> None:
    """request.state.principal and request.state.decision are set for the app."""

    async def state(request: Request) -> JSONResponse:
        decision = request.state.decision
        return JSONResponse({"sub": request.state.principal.subject, "rule": decision.rule.path})

    guard = build_app()
    inner = guard.app
    assert isinstance(inner, Starlette)
    inner.router.routes.insert(0, Route("/api/messages", state, methods=["POST"]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://app") as http:
        response = await http.post("/api/messages", headers=bearer(token("messages:send")))
    assert response.json() == {"sub": "alice", "rule": "/messages"}


@pytest.mark.parametrize("access_log", ["refusals", "all", "off"])
async def test_access_events_go_through_the_apps_logging(access_log: str, caplog: pytest.LogCaptureFixture) -> None:
    """The gateway's `request` event reaches stdlib logging `smsguard.access`: refusals by default, or all, or none."""
    guard = build_app()
    logged = GuardMiddleware(guard.app, authorizer=guard.authorizer, access_log=access_log)  # type: ignore[arg-type]
    caplog.set_level("INFO", logger="smsguard.access")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=logged), base_url="http://app") as http:
        await http.post("/api/messages", headers=bearer(token("messages:read")))
        await http.post("/api/messages", headers=bearer(token("messages:send")))
    await asyncio.sleep(0)  # events are written at the end of the loop iteration
    events = [record.msg for record in caplog.records if record.name == "smsguard.access"]
    decisions = [(event["decision"], event["status"]) for event in events]  # type: ignore[index]
    expected = {"refusals": [("deny", 403)], "all": [("deny", 403), ("allow", 200)], "off": []}
    assert decisions == expected[access_log]
    if events:
        assert events[0]["subject"] == "alice"  # type: ignore[index]
        assert events[0]["reason"] == "insufficient_scope"  # type: ignore[index]


async def test_metrics_land_on_the_apps_registry() -> None:
    """metrics_registry=: the gateway's request counter, by rule route and decision, on the app's registry."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    guard = build_app()
    counted = GuardMiddleware(guard.app, authorizer=guard.authorizer, access_log="off", metrics_registry=registry)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=counted), base_url="http://app") as http:
        await http.post("/api/messages")
    await asyncio.sleep(0)
    counted.observer.metrics.flush()  # type: ignore[union-attr]
    labels = {"method": "POST", "route": "/api/messages", "decision": "deny", "status": "401"}
    assert registry.get_sample_value("smsguard_requests_total", labels) == 1.0


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
