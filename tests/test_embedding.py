"""The guard embedded in real Starlette and FastAPI apps under uvicorn, with a real websocket client.

One server per app for the module (uvicorn in a thread, websockets on); the lifespan tests start their own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from embedded import served
from fastapi import Depends, FastAPI, Request, Security, WebSocket
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket as StarletteWebSocket
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from gateway.auth.jwt import Principal
from gateway.config.settings import parse_settings
from gateway.guard.authorize import Authorizer
from gateway.guard.fastapi import check_scopes, install, optional_principal, principal
from gateway.guard.middleware import GuardMiddleware
from gateway.policy.loader import parse_policy

SECRET = "e" * 40
POLICY = """\
mount: /api
scopes:
  events:read: Read events
  messages:send: Send
  messages:read: Read
rules:
  - {method: GET, path: /health, public: true}
  - {method: POST, path: /messages, scope: messages:send}
  - {method: GET, path: "/messages/{id}", any_of: [messages:read, messages:send]}
  - {method: GET, path: /events, scope: events:read, websocket: true}
"""
CONFIG = f"""\
auth:
  issuers:
    - {{name: corp, issuer: "https://idp.example.com/", audience: sms-api, algorithms: [HS256], secret: "{SECRET}"}}
"""
JWKS_CONFIG = (
    CONFIG
    + """\
    - {name: idp, issuer: "https://jwks.example.com/", audience: sms-api, algorithms: [RS256],
       jwks_url: "https://127.0.0.1:9/jwks.json"}
"""
)


def token(scopes: str, sub: str = "alice") -> str:
    now = int(time.time())
    claims = {"iss": "https://idp.example.com/", "aud": "sms-api", "sub": sub, "iat": now, "exp": now + 300}
    return jwt.encode({**claims, "scope": scopes}, SECRET, algorithm="HS256")


def bearer(scopes: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(scopes)}"}


def authorizer(config: str = CONFIG) -> Authorizer:
    return Authorizer.from_settings(parse_settings(config, env={}), policies=[parse_policy(POLICY, "app.yaml")])


def refused_status(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    """Open a websocket that must be refused: the handshake's status, JSON body and WWW-Authenticate."""
    with pytest.raises(InvalidStatus) as refused, connect(url, additional_headers=headers, open_timeout=5):
        pass
    response = refused.value.response
    return response.status_code, json.loads(response.body or b"{}"), response.headers.get("www-authenticate", "")


# ------------------------------------------------------------------------------------------- Starlette


async def events(websocket: StarletteWebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"user": websocket.user.display_name, "scopes": websocket.auth.scopes})
    await websocket.close()


@pytest.fixture(scope="module")
def starlette_url() -> Iterator[str]:
    app = Starlette(routes=[WebSocketRoute("/api/events", events), WebSocketRoute("/api/health", events)])
    app.add_middleware(GuardMiddleware, authorizer=authorizer())
    with served(app) as url:
        yield url


@pytest.mark.parametrize(
    ("path", "scopes", "status", "challenge"),
    [
        ("/api/events", None, 401, 'Bearer realm="smsguard"'),
        ("/api/events", "messages:send", 403, 'error="insufficient_scope", scope="events:read"'),
        ("/api/health", None, 404, ""),  # a public GET rule, but not a websocket rule
        ("/elsewhere", "events:read", 404, ""),  # outside the mount (outside="deny")
    ],
)
def test_starlette_websocket_refusals(
    starlette_url: str, path: str, scopes: str | None, status: int, challenge: str
) -> None:
    """Without a token, with the wrong scope, or without a websocket rule: refused before the app sees it."""
    got, body, header = refused_status(f"ws://{starlette_url}{path}", bearer(scopes) if scopes else None)
    assert got == status
    assert set(body) == {"message"}
    assert challenge in header


def test_starlette_websocket_with_the_right_scope_reaches_the_app_with_its_principal(starlette_url: str) -> None:
    """The right scope opens the socket; the app sees websocket.user and websocket.auth as for HTTP."""
    with connect(f"ws://{starlette_url}/api/events", additional_headers=bearer("events:read")) as ws:
        assert json.loads(ws.recv(timeout=5)) == {"user": "alice", "scopes": ["events:read"]}


def test_the_lifespan_closes_the_jwks_client() -> None:
    """No aclose() for users: the guard closes its JWKS client when the app's lifespan ends."""
    guard = authorizer(JWKS_CONFIG)
    http = guard.authenticator.verifier._http
    assert http is not None
    app = Starlette()
    app.add_middleware(GuardMiddleware, authorizer=guard)
    with served(app):
        assert not http.is_closed
    assert http.is_closed


# --------------------------------------------------------------------------------------------- FastAPI


def fastapi_app(guard: Authorizer, **options: Any) -> FastAPI:
    app = FastAPI()
    install(app, authorizer=guard, **options)

    @app.get("/api/health")
    def health(caller: Principal | None = Depends(optional_principal)) -> dict[str, Any]:
        return {"caller": caller.subject if caller else None}

    @app.post("/api/messages")
    def send(caller: Principal = Security(principal, scopes=["messages:send"])) -> dict[str, Any]:
        return {"sender": caller.subject}

    @app.get("/api/messages/{id}")
    def read(id: str, request: Request, caller: Principal = Depends(principal)) -> dict[str, Any]:
        return {"id": id, "reader": caller.subject, "rule": request.state.decision.rule.path}

    @app.websocket("/api/events")
    async def events(websocket: WebSocket, caller: Principal = Depends(principal)) -> None:
        await websocket.accept()
        await websocket.send_json({"subscriber": caller.subject, "scopes": sorted(caller.scopes)})
        await websocket.close()

    @app.get("/health")
    def app_health() -> dict[str, bool]:
        return {"ok": True}

    return app


@pytest.fixture(scope="module")
def fastapi_url() -> Iterator[str]:
    with served(fastapi_app(authorizer(), outside="pass")) as url:
        yield url


def test_fastapi_websocket_refused_then_accepted_with_the_principal(fastapi_url: str) -> None:
    """FastAPI websocket route: 401 without a token, 403 with the wrong scope, open with the right one."""
    url = f"ws://{fastapi_url}/api/events"
    assert refused_status(url)[0] == 401
    assert refused_status(url, bearer("messages:read"))[0] == 403
    with connect(url, additional_headers=bearer("events:read messages:read")) as ws:
        assert json.loads(ws.recv(timeout=5)) == {"subscriber": "alice", "scopes": ["events:read", "messages:read"]}


def test_fastapi_http_routes_get_the_principal(fastapi_url: str) -> None:
    """Depends(principal), Security(principal, scopes=...), request.state, and public routes identifying callers."""
    with httpx.Client(base_url=f"http://{fastapi_url}") as http:
        sent = http.post("/api/messages", headers=bearer("messages:send"))
        assert (sent.status_code, sent.json()) == (200, {"sender": "alice"})
        read = http.get("/api/messages/7", headers=bearer("messages:read"))
        assert read.json() == {"id": "7", "reader": "alice", "rule": "/messages/{id}"}
        refused = http.post("/api/messages", headers=bearer("messages:read"))
        assert (refused.status_code, set(refused.json())) == (403, {"message"})
        assert http.get("/api/health").json() == {"caller": None}
        assert http.get("/api/health", headers=bearer("messages:read")).json() == {"caller": "alice"}
        assert http.get("/api/health", headers={"Authorization": "Bearer nope"}).json() == {"caller": None}
        assert http.get("/health").json() == {"ok": True}  # the app's own route, outside the mount


def test_fastapi_docs_and_openapi_are_served_and_list_the_policy(fastapi_url: str) -> None:
    """With outside="pass", /docs and /openapi.json are served; the document shows the bearer scheme and scopes."""
    with httpx.Client(base_url=f"http://{fastapi_url}") as http:
        assert http.get("/docs").status_code == 200
        document = http.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["smsguard"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "smsguard: a bearer token whose scopes the policy requires per operation",
    }
    paths = document["paths"]
    assert paths["/api/messages"]["post"]["security"] == [{"smsguard": ["messages:send"]}]
    assert paths["/api/messages/{id}"]["get"]["security"] == [
        {"smsguard": ["messages:read"]},
        {"smsguard": ["messages:send"]},
    ]
    assert paths["/api/messages/{id}"]["get"]["x-smsguard"]["mode"] == "any"
    assert "requires `messages:send`" in paths["/api/messages"]["post"]["description"]
    assert paths["/api/health"]["get"]["x-smsguard"]["public"] is True
    assert "security" not in paths["/health"]["get"]  # outside the mount: the app's own, unguarded


def test_check_scopes_names_every_disagreement_with_the_policy() -> None:
    """Declared scopes the rule does not require, routes without rules, websocket routes without websocket rules."""
    app = fastapi_app(authorizer())
    assert check_scopes(app, authorizer()) == []

    @app.get("/api/unlisted")
    def unlisted() -> None: ...

    @app.get("/api/messages/{id}/state")
    def state(caller: Principal = Security(principal, scopes=["messages:read"])) -> None: ...

    @app.websocket("/api/messages/{id}")
    async def live(websocket: WebSocket) -> None: ...

    @app.get("/api/health/deep")
    def deep(caller: Principal = Security(principal, scopes=["messages:read"])) -> None: ...

    problems = "\n".join(check_scopes(app, authorizer()))
    assert "GET /api/unlisted has no policy rule" in problems
    assert "websocket /api/messages/{id}: a websocket route, but its rule does not allow websockets" in problems
    assert problems.count("has no policy rule") == 3


def test_fastapi_startup_fails_when_the_app_disagrees_with_the_policy() -> None:
    """install() checks the routes at start-up: a route declaring scopes the policy does not require stops it."""
    app = fastapi_app(authorizer())

    @app.post("/api/messages/{id}")
    def wrong(caller: Principal = Security(principal, scopes=["events:read"])) -> None: ...

    with pytest.raises(RuntimeError, match="uvicorn exited during startup"), served(app):
        pass


# ------------------------------------------------------------------------------------------ gateway serve


def test_gateway_serve_refuses_policies_with_websocket_rules() -> None:
    """The proxy forwards no websockets, so a policy allowing one does not load there (the refusal stays)."""
    from gateway.app import check_policies_against_upstreams
    from gateway.errors import LoadError

    settings = parse_settings(CONFIG, env={})
    policy = parse_policy("upstream: up\n" + POLICY, "ws.yaml")
    with pytest.raises(LoadError, match="gateway serve does not proxy websockets") as refused:
        check_policies_against_upstreams(settings, [policy])
    assert (refused.value.key, refused.value.line) == ("websocket", 11)
