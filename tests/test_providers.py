"""Every provider end to end: the real gateway under uvicorn, a client token, and a fake provider on loopback.

Each test asserts what the fake provider received: exactly one credential, the configured one, in the
right place, and nothing of the client's own credentials. Secrets are canaries (`providersconfig`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qsl

import httpx
import pytest
from fakes import FakeBSG, FakeSMSGate, FakeSMSGatewayCenter, FakeSMSPortal, Recorded, UvicornServer
from providersconfig import (
    BSG_KEY,
    PROVIDER_CANARIES,
    SGC_KEY,
    SGC_PASSWORD,
    SGC_USER,
    SMSGATE_PASSWORD,
    SMSGATE_USER,
    SMSPORTAL_ID,
    SMSPORTAL_SECRET,
    ProvidersConfig,
)

from gateway.app import Gateway, create_app
from gateway.errors import BadGateway
from gateway.proxy.exchange import TokenExchange

BSG_V1 = "{type: bsg_v1, api_key: '${T_BSG_KEY}'}"
BSG_V2 = "{type: bsg_v2, api_key: '${T_BSG_KEY}'}"
SMSPORTAL = "{type: smsportal, client_id: '${T_SMSPORTAL_ID}', api_secret: '${T_SMSPORTAL_SECRET}'}"
SGC_API_KEY = "{type: smsgatewaycenter, api_key: '${T_SGC_KEY}'}"
SGC_PASSWORD_LOGIN = "{type: smsgatewaycenter, user_id: '${T_SGC_USER}', password: '${T_SGC_PASSWORD}'}"
SMSGATE_BASIC = "{type: basic, username: '${T_SMSGATE_USER}', password: '${T_SMSGATE_PASSWORD}'}"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@contextlib.asynccontextmanager
async def serve(config: ProvidersConfig) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    gateway = create_app(config.settings())
    config.gateway = gateway
    async with (
        UvicornServer(gateway, lifespan="on") as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
    ):
        yield client, gateway


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def credentials_in(seen: Recorded) -> dict[str, list[str]]:
    """Every credential-looking header and query parameter the provider received, by lowercase name."""
    found: dict[str, list[str]] = {}
    for name, value in seen.headers:
        if name.lower() in {"authorization", "x-api-key", "apikey", "x_api_key"}:
            found.setdefault(name.lower(), []).append(value)
    for name, value in parse_qsl(seen.query, keep_blank_values=True):
        if name.lower() in {"userid", "password", "apikey", "api_key"}:
            found.setdefault(name.lower(), []).append(value)
    return found


def assert_no_canary(*texts: str) -> None:
    for text in texts:
        for canary in PROVIDER_CANARIES:
            assert canary not in text, "a provider secret leaked"


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)


# ----------------------------------------------------------------------------------- one token, every provider


async def test_one_token_sends_through_every_provider(tmp_path: Path) -> None:
    """One client token with messages:send sends through all four providers; each gets only its own credential."""
    async with (
        FakeBSG([BSG_KEY]) as bsg,
        FakeSMSPortal(SMSPORTAL_ID, SMSPORTAL_SECRET) as portal,
        FakeSMSGatewayCenter(api_key=SGC_KEY, user_id=SGC_USER, password=SGC_PASSWORD) as sgc,
        FakeSMSGate(SMSGATE_USER, SMSGATE_PASSWORD) as smsgate,
    ):
        config = (
            ProvidersConfig(tmp_path)
            .add("bsg_v1", bsg.url + "/rest", BSG_V1)
            .add("bsg_v2", bsg.url + "/api", BSG_V2)
            .add("smsportal", portal.url + "/v1", SMSPORTAL)
            .add("smsgatewaycenter", sgc.url + "/SMSApi", SGC_API_KEY)
            .add("smsgate", smsgate.url + "/3rdparty/v1", SMSGATE_BASIC)
        )
        async with serve(config) as (client, _):
            token = config.token("messages:send")
            # each client also tries to pass the provider's own credential header: it must be replaced
            sends = [
                ("/bsg/v1/sms/create", {"destination": "phone", "msisdn": "380972920000", "body": "hi"}, "x-api-key"),
                ("/bsg/v2/api/campaigns/sms/send", {"phones": [{"number": 380661231231}], "text": "hi"}, None),
                ("/smsportal/v1/bulkmessages", {"messages": [{"content": "hi", "destination": "27830000000"}]}, None),
                ("/3rdparty/v1/messages", {"textMessage": {"text": "hi"}, "phoneNumbers": ["+15555550100"]}, None),
            ]
            for path, body, header in sends:
                extra = {header: "live_clientsOwnKey"} if header else {}
                response = await client.post(path, json=body, headers={**bearer(token), **extra})
                assert response.status_code in (200, 202), (path, response.text)
            response = await client.post(
                "/smsgatewaycenter/rest/send",
                content=b"mobile=919999999999&msg=hi&format=json",
                headers={**bearer(token), "apikey": "clients-own", "content-type": "application/x-www-form-urlencoded"},
            )
            assert response.json()["status"] == "success"

    (v1,) = bsg.received("/rest/sms/create")
    assert credentials_in(v1) == {"x-api-key": [BSG_KEY]}
    assert json.loads(v1.body)["body"] == "hi"

    (login,) = bsg.received("/api/auth/login")
    assert json.loads(login.body) == {"api_key": BSG_KEY}
    assert credentials_in(login) == {}
    (v2,) = bsg.received("/api/campaigns/sms/send")
    assert credentials_in(v2) == {"authorization": [v2.values("authorization")[0]]}
    assert v2.values("authorization")[0].startswith("Bearer ey")
    assert bsg.logins == 1

    (portal_login,) = portal.received("/v1/Authentication")
    assert portal_login.method == "GET"
    assert portal_login.values("authorization") == [basic(SMSPORTAL_ID, SMSPORTAL_SECRET)]
    (portal_send,) = portal.received("/v1/bulkmessages")
    assert credentials_in(portal_send) == {"authorization": [portal_send.values("authorization")[0]]}
    assert portal_send.values("authorization")[0].startswith("Bearer ey")

    (sgc_send,) = sgc.received("/SMSApi/rest/send")
    assert credentials_in(sgc_send) == {"apikey": [SGC_KEY]}
    assert sgc_send.body == b"mobile=919999999999&msg=hi&format=json"

    (smsgate_send,) = smsgate.received("/3rdparty/v1/messages")
    assert credentials_in(smsgate_send) == {"authorization": [basic(SMSGATE_USER, SMSGATE_PASSWORD)]}


# ------------------------------------------------------------------------------------------- per provider


@pytest.mark.parametrize(
    ("credentials", "sent"),
    [
        (BSG_V2, "Bearer {token}"),
        ("{type: bsg_v2, api_key: '${T_BSG_KEY}', format: 'Bearer: {token}'}", "Bearer: {token}"),
    ],
    ids=["sdk-format", "documented-format"],
)
async def test_bsg_v2_sends_the_bearer_in_the_configured_format(tmp_path: Path, credentials: str, sent: str) -> None:
    """BSG v2: one login for several calls, and the bearer goes out as `Bearer x` or BSG's `Bearer: x`."""
    async with FakeBSG([BSG_KEY]) as bsg:
        config = ProvidersConfig(tmp_path).add("bsg_v2", bsg.url + "/api", credentials)
        async with serve(config) as (client, _):
            token = config.token("messages:send", "messages:read", "balance:read")
            for method, path in [
                ("POST", "/bsg/v2/api/campaigns/sms/send"),
                ("GET", "/bsg/v2/api/accounts/balance"),
                ("GET", "/bsg/v2/api/campaigns/7/detail"),
            ]:
                response = await client.request(
                    method, path, headers=bearer(token), json={} if method == "POST" else None
                )
                assert response.status_code == 200, response.text
    assert bsg.logins == 1
    assert bsg.formats == [sent] * 3
    tokens = {seen.values("authorization")[0] for seen in bsg.requests if seen.path != "/api/auth/login"}
    assert len(tokens) == 1


async def test_smsportal_caches_one_token_for_send_and_balance(tmp_path: Path) -> None:
    """SMSPortal: GET /Authentication with Basic once; bulkmessages and Balance carry that token as Bearer."""
    async with FakeSMSPortal(SMSPORTAL_ID, SMSPORTAL_SECRET) as portal:
        config = ProvidersConfig(tmp_path).add("smsportal", portal.url + "/v1", SMSPORTAL)
        async with serve(config) as (client, gateway):
            token = config.token("messages:send", "balance:read")
            assert (await client.post("/smsportal/v1/bulkmessages", json={}, headers=bearer(token))).status_code == 200
            assert (await client.get("/smsportal/v1/Balance", headers=bearer(token))).json() == {
                "balance": 99,
                "type": "credits",
            }
            exchange = gateway.runtime.proxy.upstreams["smsportal"].credentials
            assert isinstance(exchange, TokenExchange)
            cached = await exchange.token()
            # 24 h token, renewed an hour early as SMSPortal advises
            assert cached.expires_at - cached.renew_at == pytest.approx(3600)
    assert portal.logins == 1
    sent = [seen.values("authorization") for seen in portal.requests if seen.path != "/v1/Authentication"]
    assert sent == [[f"Bearer {cached.value}"]] * 2


async def test_smsgatewaycenter_password_parameters_replace_the_clients(tmp_path: Path) -> None:
    """SMSGatewayCenter by userId/password: ours are added once, the client's copies (any case) dropped, and
    its `apiKey` header too (the policy's key slot: a client's key never reaches the provider)."""
    async with FakeSMSGatewayCenter(api_key=SGC_KEY, user_id=SGC_USER, password=SGC_PASSWORD) as sgc:
        config = ProvidersConfig(tmp_path).add("smsgatewaycenter", sgc.url + "/SMSApi", SGC_PASSWORD_LOGIN)
        async with serve(config) as (client, _):
            token = config.token("messages:send")
            response = await client.get(
                "/smsgatewaycenter/rest/send?userId=intruder&PASSWORD=guess&mobile=919999999999&msg=hi",
                headers={**bearer(token), "apiKey": "clients-own"},
            )
            assert response.json()["status"] == "success"
    (seen,) = sgc.received("/SMSApi/rest/send")
    assert credentials_in(seen) == {"userid": [SGC_USER], "password": [SGC_PASSWORD]}
    assert seen.query.startswith("mobile=919999999999&msg=hi&")


async def test_smsgatewaycenter_api_key_header_replaces_the_clients(tmp_path: Path) -> None:
    """SMSGatewayCenter by apiKey: exactly one apiKey header, ours, whatever spelling the client used."""
    async with FakeSMSGatewayCenter(api_key=SGC_KEY, user_id=SGC_USER, password=SGC_PASSWORD) as sgc:
        config = ProvidersConfig(tmp_path).add("smsgatewaycenter", sgc.url + "/SMSApi", SGC_API_KEY)
        async with serve(config) as (client, _):
            token = config.token("balance:read")
            response = await client.get(
                "/smsgatewaycenter/rest/balance",
                headers=[*bearer(token).items(), ("APIKEY", "a"), ("ApiKey", "b")],
            )
            assert response.json()["status"] == "success"
    (seen,) = sgc.received("/SMSApi/rest/balance")
    assert [value for name, value in seen.headers if name.lower() == "apikey"] == [SGC_KEY]
    assert seen.values("authorization") == []


async def test_smsgate_jwt_logs_in_with_basic_and_sends_its_bearer(tmp_path: Path) -> None:
    """SMSGate cloud via its own token endpoint: Basic + {ttl, scopes} once, then Bearer on every call."""
    async with FakeSMSGate(SMSGATE_USER, SMSGATE_PASSWORD) as smsgate:
        credentials = (
            "{type: smsgate_jwt, username: '${T_SMSGATE_USER}', password: '${T_SMSGATE_PASSWORD}', "
            "scopes: [messages:send], ttl_s: 600}"
        )
        config = ProvidersConfig(tmp_path).add("smsgate", smsgate.url + "/3rdparty/v1", credentials)
        async with serve(config) as (client, _):
            token = config.token("messages:send")
            for _ in range(3):
                response = await client.post(
                    "/3rdparty/v1/messages", json={"textMessage": {"text": "hi"}}, headers=bearer(token)
                )
                assert response.status_code == 202
                assert response.headers["location"].startswith("/3rdparty/v1/messages/m-")
    (login,) = smsgate.received("/3rdparty/v1/auth/token")
    assert login.values("authorization") == [basic(SMSGATE_USER, SMSGATE_PASSWORD)]
    assert json.loads(login.body) == {"ttl": 600, "scopes": ["messages:send"]}
    sends = smsgate.received("/3rdparty/v1/messages")
    assert len({seen.values("authorization")[0] for seen in sends}) == 1
    assert all(credentials_in(seen) == {"authorization": [seen.values("authorization")[0]]} for seen in sends)
    assert sends[0].values("authorization")[0].startswith("Bearer ey")


async def test_nothing_reaches_a_provider_without_the_scope(tmp_path: Path) -> None:
    """A token without messages:send is refused before any login or forwarding; the auth endpoints are the
    gateway's own (its key logins: 501 while keys are off), never forwarded."""
    async with FakeBSG([BSG_KEY]) as bsg:
        config = ProvidersConfig(tmp_path).add("bsg_v2", bsg.url + "/api", BSG_V2)
        async with serve(config) as (client, _):
            reader = config.token("balance:read")
            superuser = config.token("all:any")
            assert (await client.post("/bsg/v2/api/campaigns/sms/send", headers=bearer(reader))).status_code == 403
            assert (await client.post("/bsg/v2/api/auth/login", headers=bearer(superuser))).status_code == 501
            assert (await client.post("/bsg/v2/api/auth/refresh", headers=bearer(superuser))).status_code == 501
    assert bsg.requests == []


# ---------------------------------------------------------------------------------- credential failures


async def test_bsg_bad_key_answer_is_a_502_never_a_success(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """BSG's 200 {"error": 2} to the gateway's key becomes a logged 502, with no secret anywhere."""
    caplog.set_level(logging.DEBUG)
    async with FakeBSG([BSG_KEY]) as bsg:
        wrong = "{type: bsg_v1, api_key: '${T_BSG_WRONG_KEY}'}"
        config = ProvidersConfig(tmp_path).add("bsg_v1", bsg.url + "/rest", wrong)
        async with serve(config) as (client, _):
            token = config.token("balance:read")
            response = await client.get("/bsg/v1/common/balance", headers=bearer(token))
    assert response.status_code == 502
    assert response.json() == {"message": "upstream rejected the gateway's credentials"}
    assert len(bsg.requests) == 1
    (record,) = [r for r in caplog.records if r.name == "smsguard.upstream"]
    assert record.levelno == logging.ERROR
    assert "bsg_v1" in record.getMessage()
    assert_no_canary(response.text, str(response.headers), log_text(caplog))


async def test_failed_login_is_one_502_for_a_burst(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A login the provider refuses (200 error 2) is a 502 upstream_login_failed, tried once for 20 requests."""
    caplog.set_level(logging.DEBUG)
    async with FakeBSG([BSG_KEY], login_delay_s=0.05) as bsg:
        wrong = "{type: bsg_v2, api_key: '${T_BSG_WRONG_KEY}'}"
        config = ProvidersConfig(tmp_path).add("bsg_v2", bsg.url + "/api", wrong)
        async with serve(config) as (client, _):
            token = config.token("messages:send")
            responses = await asyncio.gather(
                *(client.post("/bsg/v2/api/campaigns/sms/send", json={}, headers=bearer(token)) for _ in range(20))
            )
    assert {r.status_code for r in responses} == {502}
    message = responses[0].json()["message"]
    assert message.startswith("the gateway could not log in to the upstream")
    assert "rejected the gateway's credentials" in message
    assert bsg.login_attempts == 1
    assert bsg.received("/api/campaigns/sms/send") == []
    assert_no_canary(*(r.text + str(r.headers) for r in responses), log_text(caplog))


async def test_canary_secrets_never_leak(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A failing login and a credential-error answer: no canary in responses, log records or exception text."""
    caplog.set_level(logging.DEBUG)
    async with FakeBSG([BSG_KEY]) as bsg, FakeSMSPortal(SMSPORTAL_ID, "not-the-secret") as portal:
        config = (
            ProvidersConfig(tmp_path)
            .add("bsg_v1", bsg.url + "/rest", "{type: bsg_v1, api_key: '${T_BSG_WRONG_KEY}'}")
            .add("smsportal", portal.url + "/v1", SMSPORTAL)
        )
        async with serve(config) as (client, gateway):
            token = config.token("messages:send", "balance:read")
            responses = [
                await client.get("/bsg/v1/common/balance", headers=bearer(token)),
                await client.post("/smsportal/v1/bulkmessages", json={}, headers=bearer(token)),
            ]
            exchange = gateway.runtime.proxy.upstreams["smsportal"].credentials
            assert isinstance(exchange, TokenExchange)
            await asyncio.sleep(exchange.settings.failure_cooldown_s)
            with pytest.raises(BadGateway) as caught:
                await exchange.token()
            texts = [
                "".join(traceback.format_exception(caught.value)),
                repr(caught.value),
                repr(exchange),
                repr(exchange.settings),
                repr(gateway.settings),
            ]
    assert [r.status_code for r in responses] == [502, 502]
    assert responses[1].json()["message"] == (
        "the gateway could not log in to the upstream: the upstream answered HTTP 401"
    )
    assert portal.login_attempts == 2
    assert_no_canary(*(r.text + str(r.headers) for r in responses), log_text(caplog), *texts)
