"""CORS (`cors:` in config.yaml): preflights answered by the gateway, CORS headers on every answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fakes import RecordingUpstream, Reply
from gatewayconfig import GatewayConfig

from gateway.app import Gateway, create_app
from gateway.config.settings import parse_settings
from gateway.errors import LoadError
from gateway.observe.logs import LogCapture

APP = "https://app.example.com"
EVIL = "https://evil.example.net"
CORS = (
    'cors: {origins: ["https://app.example.com"], methods: [GET, POST], headers: [authorization, content-type],'
    " max_age_s: 600, credentials: false}\n"
)
PREFLIGHT = {"origin": APP, "access-control-request-method": "POST", "access-control-request-headers": "content-type"}


class Env:
    def __init__(self, upstream: RecordingUpstream, gateway: Gateway, client: httpx.AsyncClient, capture: LogCapture):
        self.upstream = upstream
        self.gateway = gateway
        self.client = client
        self.capture = capture

    async def token(self, *scopes: str) -> str:
        pair = await self.gateway.tokens.issue("app-1", list(scopes), 300, caller=None)
        return pair.access.token

    async def access_events(self) -> list[dict[str, object]]:
        await asyncio.sleep(0)  # access events are written at the end of the loop iteration
        return self.capture.events("request")


@asynccontextmanager
async def gateway_env(tmp_path: Path, extra: str) -> AsyncIterator[Env]:
    async with RecordingUpstream(Reply(200, body=b'{"ok":true}', headers=[("Content-Type", "application/json")])) as up:
        capture = LogCapture()
        gateway = create_app(GatewayConfig(tmp_path, up.url + "/3rdparty/v1", extra=extra).settings(), log_sink=capture)
        await gateway.startup()
        try:
            transport = httpx.ASGITransport(app=gateway)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                yield Env(up, gateway, client, capture)
        finally:
            await gateway.shutdown()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with gateway_env(tmp_path, CORS) as env:
        yield env


def access_control(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.startswith("access-control-")}


async def test_preflight_from_an_allowed_origin_is_answered_by_the_gateway(env: Env) -> None:
    response = await env.client.options("/3rdparty/v1/messages", headers=PREFLIGHT)
    assert response.status_code == 204
    assert response.content == b""
    assert access_control(response) == {
        "access-control-allow-origin": APP,
        "access-control-allow-methods": "GET, POST",
        "access-control-allow-headers": "authorization, content-type",
        "access-control-max-age": "600",
    }
    assert "origin" in response.headers["vary"].lower()
    assert env.upstream.requests == []  # never forwarded, never authenticated
    (event,) = await env.access_events()
    assert event["route"] == "OPTIONS cors-preflight"
    assert event["status"] == 204


async def test_preflight_on_an_unknown_path_is_no_404(env: Env) -> None:
    response = await env.client.options("/nowhere/at/all", headers=PREFLIGHT)
    assert response.status_code == 204
    assert env.upstream.requests == []


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({**PREFLIGHT, "origin": EVIL}, "cors_origin"),
        ({**PREFLIGHT, "origin": "null"}, None),  # an opaque origin is no allowed origin: through the policy
        ({**PREFLIGHT, "access-control-request-method": "DELETE"}, "cors_method"),
        ({**PREFLIGHT, "access-control-request-headers": "content-type, x-secret"}, "cors_headers"),
    ],
)
async def test_preflight_that_is_not_allowed_is_refused_and_never_forwarded(
    env: Env, headers: dict[str, str], code: str | None
) -> None:
    response = await env.client.options("/3rdparty/v1/messages", headers=headers)
    assert "access-control-allow-origin" not in response.headers
    assert env.upstream.requests == []
    if code is None:
        assert response.status_code != 204
        return
    assert response.status_code == 403
    assert set(response.json()) == {"message"}
    (event,) = await env.access_events()
    assert event["route"] == "OPTIONS cors-preflight"
    assert event["reason"] == code


async def test_an_allowed_origin_gets_its_exact_origin_on_forwarded_answers(env: Env) -> None:
    token = await env.token("messages:list")
    response = await env.client.get(
        "/3rdparty/v1/messages", headers={"origin": APP, "authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP
    assert "access-control-allow-credentials" not in response.headers
    assert "origin" in response.headers["vary"].lower()
    assert len(env.upstream.requests) == 1


@pytest.mark.parametrize(("path", "status"), [("/3rdparty/v1/messages", 401), ("/not/a/route", 404)])
async def test_the_gateways_own_refusals_carry_the_cors_headers(env: Env, path: str, status: int) -> None:
    response = await env.client.get(path, headers={"origin": APP})
    assert response.status_code == status
    assert response.headers["access-control-allow-origin"] == APP
    assert "origin" in response.headers["vary"].lower()
    assert env.upstream.requests == []


async def test_a_disallowed_origin_gets_no_allow_origin_and_upstream_cors_headers_are_dropped(env: Env) -> None:
    env.upstream.reply(Reply(200, body=b"{}", headers=[("Access-Control-Allow-Origin", "*")]))
    token = await env.token("messages:list")
    response = await env.client.get(
        "/3rdparty/v1/messages", headers={"origin": EVIL, "authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200
    assert access_control(response) == {}
    assert "origin" in response.headers["vary"].lower()


async def test_credentials_are_allowed_with_the_exact_origin(tmp_path: Path) -> None:
    extra = 'cors: {origins: ["https://APP.example.com"], credentials: true}\n'
    async with gateway_env(tmp_path, extra) as env:
        preflight = await env.client.options("/3rdparty/v1/messages", headers=PREFLIGHT)
        actual = await env.client.get("/3rdparty/v1/messages", headers={"origin": APP})
    assert preflight.status_code == 204
    for response in (preflight, actual):
        assert response.headers["access-control-allow-origin"] == APP
        assert response.headers["access-control-allow-credentials"] == "true"
    assert actual.status_code == 401


async def test_without_a_cors_section_options_goes_through_the_policy(tmp_path: Path) -> None:
    async with gateway_env(tmp_path, "") as env:
        response = await env.client.options("/3rdparty/v1/messages", headers=PREFLIGHT)
        actual = await env.client.get("/3rdparty/v1/messages", headers={"origin": APP})
        (event, _) = await env.access_events()
    assert response.status_code in {401, 404, 405}
    assert event["route"] != "OPTIONS cors-preflight"
    for answer in (response, actual):
        assert access_control(answer) == {}
        assert "vary" not in answer.headers
    assert env.upstream.requests == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cors: {origins: []}\n", "origins"),
        ("cors: {origins: ['https://app.example.com/path']}\n", "not an origin"),
        ("cors: {origins: ['app.example.com']}\n", "not an origin"),
        ("cors: {origins: ['*'], credentials: true}\n", "cannot be *"),
        ("cors: {origins: ['*'], methods: ['GET POST']}\n", "not an HTTP method"),
        ("cors: {methods: [GET]}\n", "origins"),
    ],
)
def test_bad_cors_settings_are_refused(text: str, message: str) -> None:
    with pytest.raises(LoadError, match=None) as raised:
        parse_settings(text, env={})
    assert message in str(raised.value)


def test_cors_settings_normalise() -> None:
    settings = parse_settings("cors: {origins: ['HTTPS://App.Example.com:8443'], methods: [get], headers: [X-A]}\n")
    assert settings.cors is not None
    assert settings.cors.origins == ("https://app.example.com:8443",)
    assert settings.cors.methods == ("GET",)
    assert settings.cors.headers == ("x-a",)
