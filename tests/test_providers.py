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
from fakes.bsg_one_api import FakeBsgOneApi
from providersconfig import (
    BSG_KEY,
    ENV,
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
from gateway.config.credentials import TokenExchangeSettings
from gateway.config.settings import parse_settings
from gateway.errors import BadGateway
from gateway.proxy.exchange import TokenExchange
from gateway.store import MemoryStore


def read_credentials(block: str, url: str) -> TokenExchangeSettings:
    """A preset's settings as the config loader expands them against `url`."""
    settings = parse_settings(f"store: memory://\nupstreams:\n  p:\n    url: {url}\n    credentials: {block}\n", env={})
    credentials = settings.upstreams["p"].credentials
    assert isinstance(credentials, TokenExchangeSettings)
    return credentials


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
    assert portal_send.values("authorization") == [f"Bearer {portal.current[0] if portal.current else ''}"]

    (sgc_send,) = sgc.received("/SMSApi/rest/send")
    assert credentials_in(sgc_send) == {"apikey": [SGC_KEY]}
    assert sgc_send.body == b"mobile=919999999999&msg=hi&format=json"

    (smsgate_send,) = smsgate.received("/3rdparty/v1/messages")
    assert credentials_in(smsgate_send) == {"authorization": [basic(SMSGATE_USER, SMSGATE_PASSWORD)]}


# BSG's documented send bodies (v1 "Send SMS", single and batch; v2 CampaignSMSApi.smsSend): international
# numbers without the `+`, Ukraine allowed, Great Britain not.
BSG_SENDS = [
    ("/bsg/v1/sms/create", "/rest/sms/create", lambda n: {
        "destination": "phone", "originator": "alpha name", "body": "message text", "msisdn": n, "reference": "e16"}),
    ("/bsg/v1/sms/create", "/rest/sms/create", lambda n: {
        "destination": "phones", "originator": "alpha_name", "body": "message text",
        "phones": [{"msisdn": "380972000001", "reference": "e17"}, {"msisdn": n, "reference": "e18"}]}),
    ("/bsg/v2/api/campaigns/sms/send", "/api/campaigns/sms/send", lambda n: {
        "phones": [{"number": int(n)}], "sender": "Vet klinika", "text": "test"}),
]  # fmt: skip


async def test_shipped_bsg_policies_read_the_recipients_of_bsgs_documented_send_bodies(tmp_path: Path) -> None:
    """With `destinations` added to the shipped BSG policies, each documented send body reaches the strict fakes
    when its numbers are allowed, and is refused whole (403, nothing forwarded) when one is not."""
    destinations = "  destinations:\n    countries: [UA]\n"
    async with FakeBSG([BSG_KEY]) as bsg, FakeBsgOneApi((BSG_KEY,)) as bsg2:
        config = (
            ProvidersConfig(tmp_path)
            .add("bsg_v1", bsg.url + "/rest", BSG_V1, append=destinations)
            .add("bsg_v2", bsg2.url + "/api", BSG_V2, append=destinations)
        )
        async with serve(config) as (client, _):
            token = config.token("messages:send")
            for path, _, body in BSG_SENDS:
                sent = await client.post(path, json=body("380661231231"), headers=bearer(token))
                assert sent.status_code == 200, (path, sent.text)
                assert sent.json().get("error", 0) == 0, (path, sent.text)  # v1 answers its errors with 200
                refused = await client.post(path, json=body("447700900123"), headers=bearer(token))
                assert refused.status_code == 403, (path, refused.text)
                assert refused.json()["code"] == "destination_not_allowed"
    received = [json.loads(seen.body) for seen in bsg.received("/rest/sms/create") + bsg2.received(BSG_SENDS[2][1])]
    assert received == [body("380661231231") for *_, body in BSG_SENDS]


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
    """BSG v2: one login for several calls, and the bearer goes out as `Bearer x` or BSG's `Bearer: x` (the
    fake takes exactly one of them)."""
    async with FakeBSG([BSG_KEY], bearer_format=sent) as bsg:
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
            # a token the store never saw issued may be 23 h old already: at most an hour left, asked again
            # at half of it (test_smsportal_* below follow it through a day)
            assert cached.expires_at - cached.renew_at == pytest.approx(1800, abs=5)
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
    assert credentials_in(seen) == {"userid": [SGC_USER], "password": [SGC_PASSWORD]}  # the client's apiKey too
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


# ------------------------------------------------------------------- issue 17: providers as their documents say


class Clock:
    """A shared, movable clock for the gateway's token exchange and a fake provider."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("shape", ["opaque", "jwt_no_exp"])
async def test_bsg_v2_bearer_without_a_lifetime_works_and_401_means_expired(
    tmp_path: Path, shape: str, caplog: pytest.LogCaptureFixture
) -> None:
    """BSG v2's bearer is "string": without a JWT `exp` the gateway assumes ttl_s, and a 401 is its expiry
    (one new login, the request resent), never a 502 for every request."""
    caplog.set_level(logging.INFO)
    async with FakeBSG([BSG_KEY], bearer=shape, lifetime_s=1.0) as bsg:
        config = ProvidersConfig(tmp_path).add("bsg_v2", bsg.url + "/api", BSG_V2)
        async with serve(config) as (client, _):
            token = config.token("messages:send")
            first = await client.post("/bsg/v2/api/campaigns/sms/send", json={}, headers=bearer(token))
            await asyncio.sleep(1.2)  # the provider's bearer died; the gateway assumed an hour
            second = await client.post("/bsg/v2/api/campaigns/sms/send", json={}, headers=bearer(token))
    assert (first.status_code, second.status_code) == (200, 200), second.text
    assert bsg.logins == 2
    assert len(bsg.received("/api/campaigns/sms/send")) == 3  # the refused one, resent once
    assert [r for r in caplog.records if "upstream.token_expired" in r.getMessage()]


async def test_bsg_v2_in_the_wrong_bearer_format_is_a_502(tmp_path: Path) -> None:
    """A provider that refuses the gateway's bearer (here: BSG taking only its documented `Bearer: x`) is a
    502 naming the gateway's credentials, never the provider's 401 passed to the client."""
    async with FakeBSG([BSG_KEY], bearer_format="Bearer: {token}") as bsg:
        config = ProvidersConfig(tmp_path).add("bsg_v2", bsg.url + "/api", BSG_V2)
        async with serve(config) as (client, _):
            response = await client.post(
                "/bsg/v2/api/campaigns/sms/send", json={}, headers=bearer(config.token("messages:send"))
            )
    assert response.status_code == 502
    assert "gateway's credentials" in response.json()["message"]


async def test_refused_static_credentials_are_a_502_not_the_clients_401(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SMSGate answering 401 to the gateway's Basic: the client gets a 502 saying the provider refused the
    gateway's credentials (so it does not re-mint gateway tokens in a loop), logged as such, no canary."""
    caplog.set_level(logging.DEBUG)
    async with FakeSMSGate(SMSGATE_USER, "not-the-password") as smsgate:
        config = ProvidersConfig(tmp_path).add("smsgate", smsgate.url + "/3rdparty/v1", SMSGATE_BASIC)
        async with serve(config) as (client, _):
            response = await client.post(
                "/3rdparty/v1/messages", json={}, headers=bearer(config.token("messages:send"))
            )
    assert response.status_code == 502
    assert response.json()["message"].startswith("the upstream refused the gateway's own credentials (HTTP 401)")
    assert "www-authenticate" not in response.headers
    failures = [r for r in caplog.records if "upstream.credential_failure" in r.getMessage()]
    assert failures
    assert failures[0].levelno == logging.ERROR
    assert "credentials_refused" in failures[0].getMessage()
    assert_no_canary(response.text, str(response.headers), log_text(caplog))


# SMSGatewayCenter: "use either one to authenticate"

FORM = {"content-type": "application/x-www-form-urlencoded"}


def form_of(seen: Recorded) -> list[tuple[str, str]]:
    return parse_qsl(seen.body.decode(), keep_blank_values=True)


async def sgc(tmp_path: Path, credentials: str) -> AsyncIterator[tuple[httpx.AsyncClient, str, FakeSMSGatewayCenter]]:
    async with FakeSMSGatewayCenter(api_key=SGC_KEY, user_id=SGC_USER, password=SGC_PASSWORD) as fake:
        config = ProvidersConfig(tmp_path).add("smsgatewaycenter", fake.url + "/SMSApi", credentials)
        async with serve(config) as (client, _):
            yield client, config.token("messages:send", "balance:read"), fake


sgc_gateway = contextlib.asynccontextmanager(sgc)


async def test_smsgatewaycenter_api_key_mode_strips_the_clients_user_and_password(tmp_path: Path) -> None:
    """api_key mode: the client's userId/password (query, `;`-separated, form body) never reach the provider."""
    async with sgc_gateway(tmp_path, SGC_API_KEY) as (client, token, fake):
        by_query = await client.get(
            "/smsgatewaycenter/rest/send?mobile=91999&userId=intruder;password=guess&apiKey=k", headers=bearer(token)
        )
        by_form = await client.post(
            "/smsgatewaycenter/rest/send",
            content=b"mobile=91999&msg=hi&userId=intruder&password=guess&format=json",
            headers={**bearer(token), **FORM},
        )
    assert by_query.json()["status"] == "success"
    assert by_form.json()["status"] == "success"
    query_seen, form_seen = fake.received("/SMSApi/rest/send")
    assert credentials_in(query_seen) == {"apikey": [SGC_KEY]}
    assert form_of(form_seen) == [("mobile", "91999"), ("msg", "hi"), ("format", "json")]


async def test_smsgatewaycenter_password_mode_posts_credentials_in_the_form(tmp_path: Path) -> None:
    """Password mode: a form POST carries userId/password in its body (the document's POST samples), once, ours;
    the client's body copies and apiKey header are dropped; a GET carries them in the query."""
    async with sgc_gateway(tmp_path, SGC_PASSWORD_LOGIN) as (client, token, fake):
        posted = await client.post(
            "/smsgatewaycenter/rest/send",
            content=b"mobile=91999&userId=intruder&PASSWORD=guess&msg=a+b",
            headers={**bearer(token), **FORM, "apiKey": "clients-own"},
        )
        got = await client.get("/smsgatewaycenter/rest/balance", headers=bearer(token))
    assert posted.json()["status"] == "success", posted.text
    assert got.json()["status"] == "success", got.text
    sent, balance = fake.requests
    assert sent.query == ""
    assert form_of(sent) == [
        ("mobile", "91999"),
        ("msg", "a b"),
        ("userId", SGC_USER),
        ("password", SGC_PASSWORD),
        ("format", "json"),
    ]
    assert sent.values("content-length") == [str(len(sent.body))]
    assert sent.values("apikey") == []
    assert credentials_in(balance) == {"userid": [SGC_USER], "password": [SGC_PASSWORD]}


async def test_smsgatewaycenter_defaults_format_to_json_and_keeps_the_clients(tmp_path: Path) -> None:
    """`format` is added (json) when the client names none; a client's own `format` is kept as it is."""
    async with sgc_gateway(tmp_path, SGC_API_KEY) as (client, token, fake):
        defaulted = await client.get("/smsgatewaycenter/rest/balance", headers=bearer(token))
        chosen = await client.get("/smsgatewaycenter/rest/balance?format=xml", headers=bearer(token))
    assert defaulted.json()["status"] == "success"
    assert chosen.text.startswith("<?xml")
    assert [seen.query for seen in fake.requests] == ["format=json", "format=xml"]


@pytest.mark.parametrize("credentials", [SGC_API_KEY, SGC_PASSWORD_LOGIN], ids=["api_key", "password"])
async def test_smsgatewaycenter_bad_credentials_answer_is_a_502(tmp_path: Path, credentials: str) -> None:
    """SMSGatewayCenter's HTTP 200 login failure becomes a 502; its other failures pass to the client."""
    async with FakeSMSGatewayCenter(api_key="other-key", user_id=SGC_USER, password="other") as fake:
        config = ProvidersConfig(tmp_path).add("smsgatewaycenter", fake.url + "/SMSApi", credentials)
        async with serve(config) as (client, _):
            response = await client.get("/smsgatewaycenter/rest/balance", headers=bearer(config.token("balance:read")))
    assert response.status_code == 502
    assert response.json() == {"message": "upstream rejected the gateway's credentials"}
    (tmp_path / "ok").mkdir()
    async with sgc_gateway(tmp_path / "ok", credentials) as (client, token, _):
        failed = await client.get("/smsgatewaycenter/rest/send?msg=hi", headers=bearer(token))  # no mobile
    assert (failed.status_code, failed.json()["reason"]) == (200, "Invalid mobile number")


async def test_smsgatewaycenter_refuses_multipart_bodies(tmp_path: Path) -> None:
    """A multipart body could carry credentials the gateway cannot strip: refused (400), never forwarded."""
    async with sgc_gateway(tmp_path, SGC_API_KEY) as (client, token, fake):
        response = await client.post(
            "/smsgatewaycenter/rest/send", files={"userId": ("u", b"intruder")}, headers=bearer(token)
        )
    assert response.status_code == 400
    assert fake.requests == []


# SMSGate: minimal scopes, revocation


SMSGATE_JWT = "{type: smsgate_jwt, username: '${T_SMSGATE_USER}', password: '${T_SMSGATE_PASSWORD}'}"
POLICY_SCOPES = [
    "devices:delete",
    "devices:list",
    "inbox:list",
    "inbox:refresh",
    "logs:read",
    "messages:cancel",
    "messages:export",
    "messages:list",
    "messages:read",
    "messages:send",
    "settings:read",
    "settings:write",
    "webhooks:delete",
    "webhooks:list",
    "webhooks:write",
]


async def test_smsgate_jwt_asks_for_the_scopes_the_policy_needs(tmp_path: Path) -> None:
    """Without `scopes`, the provider token asks for exactly the scopes of the forwarded rules (not all:any, not
    the gateway's own token endpoints' tokens:manage/tokens:refresh)."""
    async with FakeSMSGate(SMSGATE_USER, SMSGATE_PASSWORD) as smsgate:
        config = ProvidersConfig(tmp_path).add("smsgate", smsgate.url + "/3rdparty/v1", SMSGATE_JWT)
        async with serve(config) as (client, _):
            response = await client.post(
                "/3rdparty/v1/messages", json={}, headers=bearer(config.token("messages:send"))
            )
    (login,) = smsgate.received("/3rdparty/v1/auth/token")
    assert json.loads(login.body)["scopes"] == POLICY_SCOPES
    assert response.status_code == 202


async def test_smsgate_jwt_token_lacking_a_scope_is_a_502(tmp_path: Path) -> None:
    """A 403 to the gateway's SMSGate token (it lacks the endpoint's scope) is a refusal of the gateway's
    credential: a 502, not the client's 403."""
    async with FakeSMSGate(SMSGATE_USER, SMSGATE_PASSWORD) as smsgate:
        narrow = SMSGATE_JWT[:-1] + ", scopes: [messages:send]}"
        config = ProvidersConfig(tmp_path).add("smsgate", smsgate.url + "/3rdparty/v1", narrow)
        async with serve(config) as (client, _):
            response = await client.get("/3rdparty/v1/messages/m-1", headers=bearer(config.token("messages:read")))
    assert response.status_code == 502
    assert "(HTTP 403)" in response.json()["message"]


async def test_smsgate_jwt_revokes_a_refused_token(tmp_path: Path) -> None:
    """A provider token refused with 401 is dropped, replaced, and revoked (DELETE /auth/token/{jti}, Basic)."""
    async with FakeSMSGate(SMSGATE_USER, SMSGATE_PASSWORD) as smsgate:
        config = ProvidersConfig(tmp_path).add("smsgate", smsgate.url + "/3rdparty/v1", SMSGATE_JWT)
        async with serve(config) as (client, _):
            token = config.token("messages:send")
            assert (await client.post("/3rdparty/v1/messages", json={}, headers=bearer(token))).status_code == 202
            smsgate.revoke_all()  # the provider forgets it (the id is still known)
            assert (await client.post("/3rdparty/v1/messages", json={}, headers=bearer(token))).status_code == 202
            for _ in range(50):
                if smsgate.received("/3rdparty/v1/auth/token/j1"):
                    break
                await asyncio.sleep(0.02)
    (revoke,) = smsgate.received("/3rdparty/v1/auth/token/j1")
    assert revoke.method == "DELETE"
    assert revoke.values("authorization") == [basic(SMSGATE_USER, SMSGATE_PASSWORD)]
    assert smsgate.logins == 2


async def test_smsgate_jwt_revokes_a_superseded_token() -> None:
    """A provider token renewed before it expired is revoked once the new one is in use."""
    clock = Clock()
    async with FakeSMSGate(SMSGATE_USER, SMSGATE_PASSWORD, clock=clock) as smsgate:
        settings = read_credentials(
            f"{{type: smsgate_jwt, username: {SMSGATE_USER}, password: {SMSGATE_PASSWORD}}}",
            smsgate.url + "/3rdparty/v1",
        )
        exchange = TokenExchange(settings, name="smsgate", clock=clock, scopes=("messages:send",))
        first = await exchange.token()
        clock.now = first.renew_at + 1
        second = await exchange.token()
        await exchange.aclose()
    assert first.value != second.value
    assert smsgate.revoked == ["j1"]


# BSG: key prefixes


@pytest.mark.parametrize(
    ("key", "mode", "warning"),
    [
        ("live_canaryBsgKey3f9a1c", "live", None),
        ("test_canaryKey", "test", "made-up data"),
        ("canaryKey", "unknown", "neither live_ nor test_"),
    ],
)
async def test_bsg_key_mode_is_logged_at_start_up_and_shown_in_readyz(
    tmp_path: Path,
    key: str,
    mode: str,
    warning: str | None,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A BSG key's prefix sets the mode (a test_ key answers made-up data); a missing prefix is a warning at
    start-up and in /readyz (admin view), never the key itself."""
    caplog.set_level(logging.INFO)
    config = ProvidersConfig(tmp_path, extra="admin: {issuer: self}\n").add(
        "bsg_v1", "http://127.0.0.1:9/rest", "{type: bsg_v1, api_key: '${T_KEY}'}"
    )
    monkeypatch.setitem(ENV, "T_KEY", key)
    settings = config.settings()
    gateway = create_app(settings)
    config.gateway = gateway
    async with (
        UvicornServer(gateway, lifespan="on") as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
    ):
        anonymous = (await client.get("/readyz")).json()
        admin = (await client.get("/readyz", headers=bearer(config.token("settings:read")))).json()
    assert set(anonymous) == {"status", "checks"}
    described = admin["upstreams"]["bsg_v1"]
    assert described["mode"] == mode
    notices = [r.getMessage() for r in caplog.records if "upstream.credential_notice" in r.getMessage()]
    if warning is None:
        assert "warnings" not in described
        assert notices == []
    else:
        assert warning in described["warnings"][0]
        assert len(notices) == 1
        assert warning in notices[0]
    assert key not in json.dumps(admin) + "".join(notices)


# SMSPortal: the same token for 23 h


async def test_smsportal_token_from_another_client_is_renewed_before_it_dies() -> None:
    """Another client got the account's token 22 h ago: SMSPortal hands the gateway that same token. The
    gateway never takes it for a fresh 24 h one: it asks again until SMSPortal issues a new token, and never
    holds a dead one; the new token then lives (and is renewed) on SMSPortal's own schedule."""
    clock = Clock()
    async with FakeSMSPortal(SMSPORTAL_ID, SMSPORTAL_SECRET, clock=clock) as portal:
        clock.now -= 22 * 3600
        portal.outside_login()
        clock.now += 22 * 3600
        settings = read_credentials(
            f"{{type: smsportal, client_id: {SMSPORTAL_ID}, api_secret: {SMSPORTAL_SECRET}}}", portal.url + "/v1"
        )
        exchange = TokenExchange(settings, name="smsportal", clock=clock)
        start = clock.now
        while clock.now < start + 40 * 3600:
            held = await exchange.token()
            assert portal.live(held.value), f"a dead token held {(clock.now - start) / 3600:.1f} h in"
            clock.now += 600
        await exchange.aclose()
    assert portal.issued == 3  # the outside client's, the one after its 23 h, and the next a day later
    assert portal.logins < 12  # a few extra asks while the first token's age was unknown, then daily


async def test_smsportal_first_issue_is_shared_through_the_store() -> None:
    """Two gateways on one store: the second, getting the token the first saw issued, knows its real age."""
    clock = Clock()
    store = MemoryStore()
    async with FakeSMSPortal(SMSPORTAL_ID, SMSPORTAL_SECRET, clock=clock) as portal:
        settings = read_credentials(
            f"{{type: smsportal, client_id: {SMSPORTAL_ID}, api_secret: {SMSPORTAL_SECRET}}}", portal.url + "/v1"
        )
        first = TokenExchange(settings, name="smsportal", store=store, clock=clock)
        await first.token()  # T1 (unknown age: short)
        clock.now += 20 * 60
        await store.delete("uptoken:smsportal")  # the cached token is lost; the issue record is not
        second = TokenExchange(settings, name="smsportal", store=store, clock=clock)
        held = await second.token()  # T1 again
        await first.aclose()
        await second.aclose()
    assert portal.issued == 1
    assert portal.current is not None
    assert held.expires_at <= portal.current[1] + 24 * 3600  # never beyond the real expiry


async def test_smsportal_jwt_expiry_is_read_from_the_token() -> None:
    """When SMSPortal's token is a JWT with `exp`, that exact expiry is used (no guessing)."""
    clock = Clock()
    async with FakeSMSPortal(SMSPORTAL_ID, SMSPORTAL_SECRET, clock=clock, jwt=True) as portal:
        clock.now -= 22 * 3600
        portal.outside_login()
        clock.now += 22 * 3600
        settings = read_credentials(
            f"{{type: smsportal, client_id: {SMSPORTAL_ID}, api_secret: {SMSPORTAL_SECRET}}}", portal.url + "/v1"
        )
        exchange = TokenExchange(settings, name="smsportal", clock=clock)
        held = await exchange.token()
        await exchange.aclose()
    assert held.expires_at == pytest.approx(clock.now + 2 * 3600)
