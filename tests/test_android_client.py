"""The real `android-sms-gateway` client (PyPI, 4.3.3) works against the gateway unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from android_sms_gateway import ahttp, client, domain, errors
from fakes import UvicornServer
from gatewayconfig import OPS_PASSWORD, UPSTREAM_PASSWORD, UPSTREAM_USER, GatewayConfig

from gateway.app import create_app
from gateway.sandbox.app import Sandbox


class RefreshableHttp(ahttp.HttpxAsyncHttpClient):  # type: ignore[misc]
    """The client's own httpx adapter, with `payload` optional.

    android-sms-gateway 4.3.3 calls `http.post(url, headers=...)` without a payload in `refresh_token`,
    which its adapters reject with a TypeError before anything is sent (a client bug, on any server).
    Defaulting the payload is the smallest change that lets the client's own `refresh_token` run.
    """

    async def post(self, url: str, payload: dict | None = None, **kwargs: object) -> dict:  # type: ignore[override]
        return await super().post(url, payload or {}, **kwargs)  # type: ignore[no-any-return]


@pytest.fixture
async def gateway_url(tmp_path: Path) -> AsyncIterator[str]:
    """The gateway in front of the SMSGate sandbox, which only accepts the gateway's injected Basic."""
    async with Sandbox(UPSTREAM_USER, UPSTREAM_PASSWORD, delivery_step_s=0.05) as sandbox:
        gateway = create_app(GatewayConfig(tmp_path, sandbox.base_url).settings())
        async with UvicornServer(gateway, lifespan="on") as server:
            yield server.url + "/3rdparty/v1"


async def test_client_generates_sends_reads_refreshes_and_revokes(gateway_url: str) -> None:
    """generate_token with Basic, send/get_state with the Bearer, refresh_token, revoke_token, ForbiddenError."""
    async with client.AsyncAPIClient("ops", OPS_PASSWORD, base_url=gateway_url) as admin:
        issued = await admin.generate_token(domain.TokenRequest(scopes=["messages:send", "messages:read"], ttl=300))
    assert issued.token_type == "Bearer"
    assert issued.refresh_token

    async with client.AsyncAPIClient(None, issued.access_token, base_url=gateway_url) as app:
        state = await app.send(domain.Message(phone_numbers=["+15555550100"], text_message=domain.TextMessage("hi")))
        assert state.state.value == "Pending"
        await asyncio.sleep(0.2)
        later = await app.get_state(state.id)
        assert later.id == state.id
        assert later.state.value in {"Sent", "Delivered"}
        with pytest.raises(errors.ForbiddenError):
            await app.list_devices()

    async with RefreshableHttp() as http:
        app = client.AsyncAPIClient(None, issued.access_token, base_url=gateway_url, http_client=http)
        renewed = await app.refresh_token(issued.refresh_token)
    assert renewed.access_token != issued.access_token

    async with client.AsyncAPIClient("ops", OPS_PASSWORD, base_url=gateway_url) as admin:
        await admin.revoke_token(renewed.id)
    async with client.AsyncAPIClient(None, renewed.access_token, base_url=gateway_url) as app:
        with pytest.raises(errors.UnauthorizedError):
            await app.get_state(state.id)
