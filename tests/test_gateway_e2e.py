"""app.py end to end: the real gateway under uvicorn in front of a recording upstream on loopback."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jwt
import pytest
from fakes import RecordingUpstream, Reply, UvicornServer
from gatewayconfig import CANARIES, OPS_PASSWORD, UPSTREAM_PASSWORD, UPSTREAM_USER, GatewayConfig

from gateway.app import Gateway, create_app
from gateway.errors import LoadError
from gateway.observe.logs import NullSink

INJECTED = "Basic " + base64.b64encode(f"{UPSTREAM_USER}:{UPSTREAM_PASSWORD}".encode()).decode()


class Env:
    def __init__(self, upstream: RecordingUpstream, gateway: Gateway, client: httpx.AsyncClient, url: str) -> None:
        self.upstream = upstream
        self.gateway = gateway
        self.client = client
        self.url = url

    async def token(self, *scopes: str) -> str:
        pair = await self.gateway.tokens.issue("app-1", list(scopes), 300, caller=None)
        return pair.access.token


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with RecordingUpstream(Reply(200, body=b'{"ok":true}', headers=[("Content-Type", "application/json")])) as up:
        gateway = create_app(GatewayConfig(tmp_path, up.url + "/3rdparty/v1").settings())
        async with UvicornServer(gateway, lifespan="on") as server, httpx.AsyncClient(base_url=server.url) as client:
            yield Env(up, gateway, client, server.url)


async def test_allowed_request_is_forwarded_sanitized_with_one_injected_credential(env: Env) -> None:
    """The upstream receives method, canonical path, query and body exactly, plus only our credential."""
    token = await env.token("messages:send")
    body = b'{"textMessage":{"text":"hi"},"phoneNumbers":["+15555550100"]}'
    response = await env.client.post(
        "/3rdparty/v1/%6Dessages?skipPhoneValidation=true",
        content=body,
        headers={
            "authorization": f"Bearer {token}",
            "content-type": "application/json",
            "x-api-key": "client-sent",
            "connection": "x-secret-hop",
            "x-secret-hop": "1",
            "keep-alive": "timeout=5",
            "x-http-method-override": "DELETE",
            "x-forwarded-for": "6.6.6.6",
            "host": "evil.example",
        },
    )
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    seen = env.upstream.last
    assert seen.method == "POST"
    assert seen.path == "/3rdparty/v1/messages"
    assert seen.query == "skipPhoneValidation=true"
    assert seen.body == body
    assert seen.values("authorization") == [INJECTED]
    names = seen.names()
    for dropped in ("x-secret-hop", "keep-alive", "x-http-method-override"):
        assert dropped not in names
    assert seen.values("x-forwarded-for") == ["127.0.0.1"]
    assert seen.values("host") != ["evil.example"]
    assert seen.values("x-api-key") == ["client-sent"]  # not a credential of this upstream: passed through


@pytest.mark.parametrize(
    ("method", "path", "scopes", "status"),
    [
        ("POST", "/3rdparty/v1/messages", None, 401),
        ("POST", "/3rdparty/v1/messages", ("messages:read",), 403),
        ("GET", "/3rdparty/v1/nowhere", ("all:any",), 404),
        ("HEAD", "/3rdparty/v1/messages", ("all:any",), 404),
        ("GET", "/3rdparty/v1/messages/a%2Fb", ("all:any",), 400),
        ("GET", "/3rdparty/v1//messages", ("all:any",), 400),
        ("GET", "/3rdparty/v1/messages/%2e%2e/devices", ("all:any",), 400),
        ("GET", "/3rdparty/v1/messages?access_token=abc", ("messages:list",), 400),
        ("POST", "/3rdparty/v1/auth/token/refresh", ("all:any",), 401),
    ],
)
async def test_refused_requests_never_reach_the_upstream(
    env: Env, method: str, path: str, scopes: tuple[str, ...] | None, status: int
) -> None:
    """401, 403, 404 and 400 answers are JSON {"message"} and the upstream receives nothing."""
    headers = {"authorization": f"Bearer {await env.token(*scopes)}"} if scopes else {}
    response = await env.client.request(method, path, headers=headers)
    assert response.status_code == status
    if method != "HEAD":
        assert list(response.json()) == ["message"]
    assert env.upstream.requests == []


async def test_public_health_is_forwarded_without_a_token(env: Env) -> None:
    """GET /health is public in the SMSGate policy: forwarded, still with our credential."""
    response = await env.client.get("/3rdparty/v1/health")
    assert response.status_code == 200
    assert env.upstream.last.values("authorization") == [INJECTED]


async def test_location_of_a_202_points_at_the_gateway(env: Env) -> None:
    """SMSGate's 202 Location into the upstream base is rewritten to the gateway mount."""
    env.upstream.reply(Reply(202, headers=[("Location", env.upstream.url + "/3rdparty/v1/messages/abc")]))
    token = await env.token("messages:send")
    response = await env.client.post(
        "/3rdparty/v1/messages", content=b"{}", headers={"authorization": f"Bearer {token}"}
    )
    assert response.status_code == 202
    assert response.headers["location"] == "/3rdparty/v1/messages/abc"


async def test_health_and_readiness(env: Env) -> None:
    """/healthz answers while alive; /readyz checks config, upstream pools and the store."""
    assert (await env.client.get("/healthz")).json() == {"status": "ok"}
    ready = await env.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"config": True, "upstreams": True, "store": True}


async def test_basic_user_is_authorized_by_scopes(env: Env) -> None:
    """Legacy Basic auth works against the policy; the client's Authorization never reaches the upstream."""
    response = await env.client.get("/3rdparty/v1/devices", auth=("ops", OPS_PASSWORD))
    assert response.status_code == 200
    assert env.upstream.last.values("authorization") == [INJECTED]


async def test_no_canary_secret_in_any_response(env: Env) -> None:
    """Upstream credentials, passwords and signing secrets never appear in what clients receive."""
    token = await env.token("messages:send")
    responses = [
        await env.client.post("/3rdparty/v1/messages", content=b"{}", headers={"authorization": f"Bearer {token}"}),
        await env.client.get("/3rdparty/v1/devices", headers={"authorization": f"Bearer {token}"}),
        await env.client.get("/3rdparty/v1/devices", auth=("ops", "wrong")),
        await env.client.get("/readyz"),
    ]
    for response in responses:
        text = response.text + str(response.headers)
        for canary in CANARIES:
            assert canary not in text


async def test_serve_refuses_a_policy_without_a_configured_upstream(tmp_path: Path) -> None:
    """A policy naming an unconfigured upstream fails at start with the policy file named."""
    config = GatewayConfig(tmp_path, "http://127.0.0.1:9/3rdparty/v1")
    settings = config.settings()
    import dataclasses

    with pytest.raises(LoadError, match="upstream 'smsgate' is not configured"):
        create_app(dataclasses.replace(settings, upstreams={}))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_upstream_refused_is_a_502(tmp_path: Path) -> None:
    """An upstream that refuses connections yields 502 {"message"} without leaking its address."""
    url = f"http://127.0.0.1:{_free_port()}/3rdparty/v1"
    gateway = create_app(GatewayConfig(tmp_path, url).settings())
    async with UvicornServer(gateway, lifespan="on") as server, httpx.AsyncClient(base_url=server.url) as client:
        pair = await gateway.tokens.issue("a", ["messages:list"], 60, caller=None)
        response = await client.get("/3rdparty/v1/messages", headers={"authorization": f"Bearer {pair.access.token}"})
    assert response.status_code == 502
    assert list(response.json()) == ["message"]
    assert "127.0.0.1" not in response.text


async def test_readiness_reports_each_upstreams_reachability(tmp_path: Path) -> None:
    """/readyz connects to each upstream (TCP only, cached a few seconds, one check for concurrent probes):
    reachable ones with their connect time, an unreachable one with why, the status degraded but still 200."""
    from gateway.config.settings import parse_settings

    connections = 0

    def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    listening = await asyncio.start_server(accepted, "127.0.0.1", 0)
    up_port = listening.sockets[0].getsockname()[1]
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        down_port = closed.getsockname()[1]  # bound, never listening: connections are refused
        secret = "a" * 40
        settings = parse_settings(
            f"upstreams:\n  up: {{url: 'http://127.0.0.1:{up_port}/v1'}}\n"
            f"  down: {{url: 'http://127.0.0.1:{down_port}/v1'}}\n"
            "auth:\n  issuers:\n    - {name: ops, issuer: ops-idp, audience: sms-api, algorithms: [HS256], "
            f"secret: {secret}}}\n"
            "admin: {issuer: ops, scope: settings:read}\n",
            env={},
        )
        now = int(time.time())
        claims = {"iss": "ops-idp", "aud": "sms-api", "sub": "ops", "iat": now, "exp": now + 60}
        claims["scope"] = "settings:read"
        admin = {"authorization": "Bearer " + jwt.encode(claims, secret, algorithm="HS256")}  # details: admins only
        gateway = create_app(settings, log_sink=NullSink())
        async with UvicornServer(gateway, lifespan="on") as server, httpx.AsyncClient(base_url=server.url) as client:
            answers = await asyncio.gather(*(client.get("/readyz", headers=admin) for _ in range(5)))
            await asyncio.sleep(0.05)
            again = await client.get("/readyz", headers=admin)
            anonymous = await client.get("/readyz")
    listening.close()
    await listening.wait_closed()
    for answer in (*answers, again):
        assert answer.status_code == 200
        body = answer.json()
        assert body["status"] == "degraded"
        assert body["checks"]["upstreams"] is True  # the pools are up: reachability degrades, never unreadies
        assert body["upstreams"]["up"]["reachable"] is True
        assert body["upstreams"]["up"]["connect_ms"] >= 0
        down = body["upstreams"]["down"]
        assert (down["reachable"], down["error"]) == (False, "connection refused")
        assert 0 <= down["age_s"] < 5
    assert connections == 1  # six probes, one connect: shared while in flight, then cached
    assert anonymous.json() == {"status": "degraded", "checks": {"config": True, "upstreams": True, "store": True}}
