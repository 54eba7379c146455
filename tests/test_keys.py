"""Gateway API keys end to end: the real gateway under uvicorn, fake providers on loopback, real clients.

Each provider test asserts what the fake received: only the gateway's own credential, never the client's
key; and what the client received: never the provider's credential.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fakes import FakeBSG, FakeSMSGatewayCenter, FakeSMSPortal, RecordingUpstream, UvicornServer
from fakes.bsg_one_api import FakeBsgOneApi
from gatewayconfig import cheap_hash

from gateway.app import Gateway, create_app
from gateway.config.settings import Settings, load_settings
from gateway.errors import BadRequest, Forbidden
from gateway.keys.endpoints import _parse_create
from gateway.keys.format import parse_key
from gateway.keys.service import KeyService

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
BSG_KEY = "live_canaryKeysBsg51c0e2"
BSG_TEST_KEY = "test_canaryKeysBsgTest7d"
SGC_KEY = "canary-keys-sgc-key-3e8a"
SGC_USER, SGC_PASSWORD = "canary-keys-sgc-user-5f", "canary-keys-sgc-password-6a"
PORTAL_ID, PORTAL_SECRET = "canary-keys-portal-id-11", "canary-keys-portal-secret-22"
OPS_PASSWORD = "canary-keys-ops-password"
APP_PASSWORD = "canary-keys-app-password"
KEY_SECRET = "canary-keys-server-secret-" + "k" * 16
CANARIES = (BSG_KEY, BSG_TEST_KEY, SGC_KEY, SGC_USER, SGC_PASSWORD, PORTAL_ID, PORTAL_SECRET, KEY_SECRET)
ENV = {
    "T_TOKEN_SECRET": "canary-keys-token-secret-" + "t" * 16,
    "T_KEY_SECRET": KEY_SECRET,
    "T_OPS_HASH": cheap_hash(OPS_PASSWORD),
    "T_APP_HASH": cheap_hash(APP_PASSWORD),
}
APP = ("app", APP_PASSWORD)
OPS = ("ops", OPS_PASSWORD)


@dataclass
class KeysConfig:
    """A config.yaml with Basic users ops (all:any) and app (send, read balance, manage), keys on."""

    directory: Path
    store: str = "memory://"
    keys: str = '{secret: "${T_KEY_SECRET}"}'
    upstreams: list[tuple[str, str, str]] = field(default_factory=list)  # (policy, url, credentials + extra)

    def add(self, policy: str, url: str, credentials: str, extra: str = "") -> KeysConfig:
        self.upstreams.append((policy, url, f"    credentials: {credentials}\n{extra}"))
        return self

    def settings(self) -> Settings:
        policies = ", ".join(str(POLICIES / f"{policy}.yaml") for policy, _, _ in self.upstreams)
        upstreams = "".join(f"  {policy}:\n    url: {url}\n{rest}" for policy, url, rest in self.upstreams)
        text = (
            "listen: {host: 127.0.0.1, port: 0}\n"
            f"store: {self.store}\n"
            f"policies: [{policies}]\n"
            "reload: {watch: false}\n"
            "auth:\n  basic_users:\n"
            '    - {username: ops, password_hash: "${T_OPS_HASH}", scopes: [all:any]}\n'
            '    - {username: app, password_hash: "${T_APP_HASH}", '
            "scopes: [messages:send, messages:read, balance:read, tokens:manage]}\n"
            'tokens:\n  keys:\n    - {kid: k1, algorithm: HS256, secret: "${T_TOKEN_SECRET}"}\n'
            f"keys: {self.keys}\n"
            f"upstreams:\n{upstreams}"
        )
        path = self.directory / "config.yaml"
        path.write_text(text)
        return load_settings(path, env=ENV)


@contextlib.asynccontextmanager
async def serve(config: KeysConfig) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    gateway = create_app(config.settings())
    async with (
        UvicornServer(gateway, lifespan="on") as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
    ):
        yield client, gateway


async def create_key(
    client: httpx.AsyncClient, scopes: list[str], *, auth: tuple[str, str] = APP, **extra: Any
) -> dict[str, Any]:
    response = await client.post("/3rdparty/v1/auth/keys", json={"name": "crm", "scopes": scopes, **extra}, auth=auth)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def assert_no_canary(text: str) -> None:
    for canary in CANARIES:
        assert canary not in text


# ------------------------------------------------------------------------------------------- the service


async def test_keys_are_stored_only_as_keyed_hashes(tmp_path: Path) -> None:
    """The store holds the key id and an HMAC, never the secret; the secret verifies, a wrong one is a 401."""
    config = KeysConfig(tmp_path).add("bsg_v1", "http://127.0.0.1:9/rest", "{type: bsg_v1, api_key: x}")
    gateway = create_app(config.settings())
    endpoints = gateway.runtime.key_endpoints
    assert endpoints is not None
    assert isinstance(endpoints.service, KeyService)
    service = endpoints.service
    created = await service.create(None, subject="crm-1", scopes=["messages:send"])
    key = created.key
    assert key.full.startswith("sgk_live_")
    assert parse_key(key.full) == key
    stored = await gateway.store.get("apikey:" + key.key_id)
    assert stored is not None
    assert key.secret.encode() not in stored
    principal = await service.verify(key.full)
    assert principal.scopes == {"messages:send"}
    assert principal.token_id == f"key:{key.key_id}"
    assert principal.identity == ("cli", "crm-1")
    for wrong in (key.key_id + "_" + "A" * 32, "sgk_live_short", key.full + "x"):
        with pytest.raises(Exception, match="gateway key"):
            await service.verify(wrong)
    listed = await service.list_keys(None, idp="cli", subject="crm-1")
    assert [item["id"] for item in listed] == [key.key_id]
    assert "secret" not in json.dumps(listed)
    assert key.secret not in json.dumps(listed)
    await gateway.shutdown()


async def test_a_key_carries_an_sms_narrowing_never_wider_than_its_creator(tmp_path: Path) -> None:
    """`sms` on key creation: on the key's principal as the `sms` claim the limiter reads; a key (or a token
    minted from it) creates narrower keys only, inherits the narrowing when it asks for none."""
    config = KeysConfig(tmp_path).add("bsg_v1", "http://127.0.0.1:9/rest", "{type: bsg_v1, api_key: x}")
    gateway = create_app(config.settings())
    endpoints = gateway.runtime.key_endpoints
    assert endpoints is not None
    service = endpoints.service
    narrowed = {"countries": ["GB"], "max_recipients": 5}
    created = await service.create(None, subject="crm-n", scopes=["messages:send"], sms=narrowed)
    assert created.answer()["sms"] == narrowed
    key = await service.verify(created.key.full)
    assert key.claims["sms"] == narrowed
    for wider in ({"countries": ["GB", "US"]}, {"max_recipients": 6}):
        with pytest.raises(Forbidden, match="cannot grant sms"):
            await service.create(key, scopes=["messages:send"], sms=wider)
    inherited = await service.create(key, scopes=["messages:send"])
    assert (await service.verify(inherited.key.full)).claims["sms"] == narrowed
    fewer = await service.create(key, scopes=["messages:send"], sms={"max_recipients": 1})
    assert fewer.record.sms == {"countries": ["GB"], "max_recipients": 1}
    pair = await service.tokens.issue("crm-n", ["messages:send"], None, caller=key)
    assert jwt.decode(pair.access.token, options={"verify_signature": False})["sms"] == narrowed
    with pytest.raises(BadRequest, match="unknown sms field"):
        _parse_create(json.dumps({"scopes": ["messages:send"], "sms": {"regions": ["EU"]}}).encode())
    assert _parse_create(json.dumps({"scopes": ["x:y"], "sms": {"countries": ["us"]}}).encode())[4] == {
        "countries": ["US"]
    }
    await gateway.shutdown()


# ---------------------------------------------------------------------------------------------- the API


async def test_api_creates_lists_rotates_and_revokes_without_widening(tmp_path: Path) -> None:
    """Keys never out-scope their creator; list shows no secret; rotation with no overlap ends the old secret
    at once; revocation ends the key in every slot, never forwarded."""
    async with FakeBSG([BSG_KEY]) as bsg:
        config = KeysConfig(tmp_path).add("bsg_v1", bsg.url + "/rest", "{type: bsg_v1, api_key: '" + BSG_KEY + "'}")
        async with serve(config) as (client, _):
            refused = await client.post("/3rdparty/v1/auth/keys", json={"scopes": ["all:any"]}, auth=APP)
            assert refused.status_code == 403
            unknown = await client.post("/3rdparty/v1/auth/keys", json={"scopes": ["nope:x"]}, auth=APP)
            assert unknown.status_code == 400
            assert (await client.post("/3rdparty/v1/auth/keys", json={"scopes": ["balance:read"]})).status_code == 401
            created = await create_key(client, ["messages:send", "balance:read"])
            key = created["key"]
            listed = (await client.get("/3rdparty/v1/auth/keys", auth=APP)).json()["keys"]
            assert [item["id"] for item in listed] == [created["id"]]
            assert created["secret"] not in json.dumps(listed)
            # ops (another identity) does not see app's keys: each identity lists its own
            assert (await client.get("/3rdparty/v1/auth/keys", auth=OPS)).json()["keys"] == []
            # a key may create a narrower key only with tokens:manage, which this one lacks
            as_key = {"authorization": f"Bearer {key}"}
            assert (
                await client.post("/3rdparty/v1/auth/keys", json={"scopes": ["balance:read"]}, headers=as_key)
            ).status_code == 403

            ok = await client.get("/bsg/v1/common/balance", headers={"X-API-KEY": key})
            assert ok.status_code == 200
            assert ok.json()["error"] == 0
            assert (await client.get("/bsg/v1/common/balance", headers=as_key)).status_code == 200
            rotated = await client.post(
                f"/3rdparty/v1/auth/keys/{created['id']}/rotate", json={"overlap_s": 0}, auth=APP
            )
            assert rotated.status_code == 201
            new_key = rotated.json()["key"]
            assert new_key != key
            assert new_key.startswith(created["id"] + "_")
            old = await client.get("/bsg/v1/common/balance", headers={"X-API-KEY": key})
            assert old.status_code == 401
            assert old.json()["error"] == 2
            assert (await client.get("/bsg/v1/common/balance", headers={"X-API-KEY": new_key})).status_code == 200

            assert (await client.delete(f"/3rdparty/v1/auth/keys/{created['id']}", auth=OPS)).status_code == 204
            for headers in ({"X-API-KEY": new_key}, {"authorization": f"Bearer {new_key}"}):
                gone = await client.get("/bsg/v1/common/balance", headers=headers)
                assert gone.status_code == 401
                assert gone.json()["errorDescription"] == "Invalid API key"
            assert (await client.delete(f"/3rdparty/v1/auth/keys/{created['id']}", auth=APP)).status_code == 404
    sent = [seen.values("x-api-key") for seen in bsg.requests]
    assert sent == [[BSG_KEY]] * 3


async def test_rotation_overlap_keeps_the_old_secret_only_that_long(tmp_path: Path) -> None:
    """Rotated with overlap_s=1: both secrets work, then only the new one."""
    async with FakeBSG([BSG_KEY]) as bsg:
        config = KeysConfig(tmp_path, keys='{secret: "${T_KEY_SECRET}", cache_s: 0.2}')
        config.add("bsg_v1", bsg.url + "/rest", "{type: bsg_v1, api_key: '" + BSG_KEY + "'}")
        async with serve(config) as (client, _):
            created = await create_key(client, ["balance:read"])
            rotated = await client.post(
                f"/3rdparty/v1/auth/keys/{created['id']}/rotate", json={"overlap_s": 1}, auth=APP
            )
            new_key = rotated.json()["key"]
            for key in (created["key"], new_key):
                assert (await client.get("/bsg/v1/common/balance", headers={"X-API-KEY": key})).status_code == 200
            listed = (await client.get("/3rdparty/v1/auth/keys", auth=APP)).json()["keys"]
            assert listed[0]["rotating_until"] is not None
            assert listed[0]["last_used_at"] is not None
            await asyncio.sleep(1.3)
            assert (
                await client.get("/bsg/v1/common/balance", headers={"X-API-KEY": created["key"]})
            ).status_code == 401
            assert (await client.get("/bsg/v1/common/balance", headers={"X-API-KEY": new_key})).status_code == 200


# ------------------------------------------------------------------------------------ provider slots


async def test_bsg_sdk_sends_a_campaign_and_reads_the_balance_with_a_gateway_key(tmp_path: Path) -> None:
    """bsg-sdk, unmodified, with only `host` and the key changed: login, send, balance, refresh; BSG sees only
    the gateway's key; revoking the key ends the bearer the SDK holds."""
    import bsg_api

    async with FakeBsgOneApi((BSG_KEY,)) as bsg:
        config = KeysConfig(tmp_path).add("bsg_v2", bsg.url + "/api", "{type: bsg_v2, api_key: '" + BSG_KEY + "'}")
        async with serve(config) as (client, _):
            created = await create_key(client, ["messages:send", "balance:read"])
            host = str(client.base_url).rstrip("/") + "/bsg/v2"

            def run_sdk() -> tuple[Any, Any, str, str]:
                configuration = bsg_api.Configuration(host=host)
                with bsg_api.ApiClient(configuration) as api_client:
                    token = bsg_api.AuthApi(api_client).login({"api_key": created["key"]}).bearer
                configuration.access_token = token
                with bsg_api.ApiClient(configuration) as api_client:
                    sent = bsg_api.CampaignSMSApi(api_client).sms_send(
                        {"phones": [{"number": 380661234567}], "sender": "BSG", "text": "Hello from BSG SDK!"}
                    )
                    balance = bsg_api.BalanceApi(api_client).account_balance()
                    renewed = bsg_api.AuthApi(api_client).refresh_token().bearer
                return sent, balance, token, renewed

            sent, balance, token, renewed = await asyncio.to_thread(run_sdk)
            assert sent.data.id is not None
            assert balance.data.currency == "EUR"
            assert token not in bsg.bearers_for
            assert renewed != token
            assert_no_canary(token + renewed + json.dumps(sent.to_dict(), default=str))
            assert (
                await client.get("/bsg/v2/api/accounts/balance", headers={"authorization": f"Bearer {renewed}"})
            ).status_code == 200

            assert (await client.delete(f"/3rdparty/v1/auth/keys/{created['id']}", auth=APP)).status_code == 204
            for bearer in (token, renewed):
                after = await client.get("/bsg/v2/api/accounts/balance", headers={"authorization": f"Bearer {bearer}"})
                assert after.status_code == 401  # minted from the key: revoked with it (lineage)
            login = await client.post("/bsg/v2/api/auth/login", json={"api_key": created["key"]})
            assert login.status_code == 401
            bad = await client.post("/bsg/v2/api/auth/login", json={"api_key": BSG_KEY})
            assert bad.status_code == 401
    assert bsg.used_keys == [BSG_KEY] * 3
    assert {seen.path for seen in bsg.requests} == {
        "/api/auth/login",
        "/api/campaigns/sms/send",
        "/api/accounts/balance",
    }
    assert len(bsg.received("/api/auth/login")) == 1


async def test_smsgatewaycenter_slots_and_regenerate(tmp_path: Path) -> None:
    """apiKey header and userId/password carry a gateway key; regenerateAPIKey rotates the caller's own key;
    the provider sees only the gateway's apiKey; a non-key or unknown key is a 401 in SMSGatewayCenter's shape."""
    async with FakeSMSGatewayCenter(api_key=SGC_KEY, user_id="u", password="p") as sgc:
        config = KeysConfig(tmp_path).add(
            "smsgatewaycenter", sgc.url + "/SMSApi", f"{{type: smsgatewaycenter, api_key: '{SGC_KEY}'}}"
        )
        async with serve(config) as (client, _):
            created = await create_key(client, ["messages:send", "balance:read"])
            key_id, secret = created["id"], created["secret"]
            by_header = await client.get("/smsgatewaycenter/rest/balance", headers={"apiKey": created["key"]})
            assert by_header.status_code == 200
            assert by_header.json()["status"] == "success"
            by_params = await client.post(
                f"/smsgatewaycenter/rest/send?userId={key_id}&password={secret}",
                data={"mobile": "919999999999", "msg": "hi"},
            )
            assert by_params.status_code == 200, by_params.text
            for headers in ({"apiKey": SGC_KEY}, {"apiKey": "sgk_live_" + "x" * 16 + "_" + "y" * 32}):
                refused = await client.get("/smsgatewaycenter/rest/balance", headers=headers)
                assert refused.status_code == 401
                assert refused.json()["status"] == "error"
                assert "reason" in refused.json()
            regenerated = await client.post(
                "/smsgatewaycenter/rest/regenerateAPIKey", data={"userId": key_id, "password": secret, "format": "json"}
            )
            assert regenerated.status_code == 200
            new_key = regenerated.json()["apiKey"]
            assert new_key.startswith(key_id + "_")
            assert regenerated.json()["statusCode"] == "900"
            assert (await client.get("/smsgatewaycenter/rest/balance", headers={"apiKey": new_key})).status_code == 200
            plain = await client.get("/smsgatewaycenter/rest/regenerateAPIKey", headers={"apiKey": new_key})
            assert plain.text.startswith("status=success | apiKey=" + key_id)
    assert all(seen.values("apikey") == [SGC_KEY] for seen in sgc.requests)
    assert all("userId" not in seen.query and "sgk_" not in seen.raw_path for seen in sgc.requests)
    assert len(sgc.requests) == 3  # regenerateAPIKey never reached the provider


@pytest.mark.parametrize("preset", ["api_key", "user_password"])
async def test_smsgatewaycenter_form_body_slot(tmp_path: Path, preset: str) -> None:
    """userId/password in a form POST body (SMSGatewayCenter's POST samples) carry a gateway key: the fake sees
    only the gateway's credential (its apiKey header, or its userId/password in the body); a wrong secret is a
    401 in SMSGatewayCenter's shape, nothing forwarded; multipart and oversize forms are clear 4xx."""
    async with FakeSMSGatewayCenter(api_key=SGC_KEY, user_id=SGC_USER, password=SGC_PASSWORD) as sgc:
        credentials = (
            f"{{type: smsgatewaycenter, api_key: '{SGC_KEY}'}}"
            if preset == "api_key"
            else f"{{type: smsgatewaycenter, user_id: '{SGC_USER}', password: '{SGC_PASSWORD}'}}"
        )
        config = KeysConfig(tmp_path).add("smsgatewaycenter", sgc.url + "/SMSApi", credentials)
        async with serve(config) as (client, _):
            created = await create_key(client, ["messages:send", "balance:read"])
            key_id, secret = created["id"], created["secret"]
            form = {"userId": key_id, "password": secret, "mobile": "919999999999", "msg": "hi", "format": "json"}
            sent = await client.post("/smsgatewaycenter/rest/send", data=form)
            assert sent.status_code == 200, sent.text
            assert sent.json()["status"] == "success"
            assert_no_canary(sent.text)
            forwarded = len(sgc.requests)
            assert forwarded == 1
            wrong = await client.post("/smsgatewaycenter/rest/send", data={**form, "password": secret[:-1] + "x"})
            assert wrong.status_code == 401
            assert wrong.json()["status"] == "error"
            assert "reason" in wrong.json()
            not_a_key = await client.post("/smsgatewaycenter/rest/send", data={**form, "userId": SGC_USER})
            assert not_a_key.status_code == 401
            half = await client.post("/smsgatewaycenter/rest/send", data={"userId": key_id, "mobile": "91999"})
            assert half.status_code == 401
            multipart = await client.post(
                "/smsgatewaycenter/rest/send", data=form, files={"file": ("a.txt", b"x", "text/plain")}
            )
            assert multipart.status_code == 400
            assert multipart.json()["status"] == "error"
            oversize = await client.post("/smsgatewaycenter/rest/send", data={**form, "msg": "x" * 70_000})
            assert oversize.status_code == 413
            assert oversize.json()["status"] == "error"
            # chunked (no Content-Length) and bigger than the buffer: read up to it, then refused
            chunked = await client.post(
                "/smsgatewaycenter/rest/send",
                content=_chunks(b"userId=" + key_id.encode() + b"&msg=" + b"x" * 70_000),
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
            assert chunked.status_code == 413
            # query credentials win; the form's copies are dropped all the same
            both = await client.post(f"/smsgatewaycenter/rest/balance?userId={key_id}&password={secret}", data=form)
            assert both.status_code == 200, both.text
            # a form without the slot's parameters is no credential
            bare = await client.post("/smsgatewaycenter/rest/send", data={"mobile": "91999", "msg": "hi"})
            assert bare.status_code == 401
    assert len(sgc.requests) == forwarded + 1
    for seen in sgc.requests:
        assert "sgk_" not in seen.raw_path
        assert key_id not in seen.body.decode()
        assert secret not in seen.body.decode()
        assert "userId" not in seen.query
        if preset == "api_key":
            assert seen.values("apikey") == [SGC_KEY]
            assert b"userId" not in seen.body
            assert b"password" not in seen.body
        else:
            assert seen.values("apikey") == []
            assert seen.body.count(b"userId=") == 1
            assert seen.body.count(b"password=") == 1
            assert SGC_PASSWORD.encode() in seen.body


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 8192):
        yield data[start : start + 8192]


async def test_test_key_in_a_form_body_reaches_the_test_url_without_it(tmp_path: Path) -> None:
    """A test key in a form body goes to the upstream's test_url (no test credentials): userId/password are
    dropped from the body there too, whatever the twin injects (nothing)."""
    async with (
        FakeSMSGatewayCenter(api_key=SGC_KEY, user_id="u", password="p") as sgc,
        RecordingUpstream() as sandbox,
    ):
        config = KeysConfig(tmp_path).add(
            "smsgatewaycenter",
            sgc.url + "/SMSApi",
            f"{{type: smsgatewaycenter, api_key: '{SGC_KEY}'}}",
            f"    test_url: {sandbox.url}/SMSApi\n",
        )
        async with serve(config) as (client, _):
            test = await create_key(client, ["messages:send"], mode="test")
            form = {"userId": test["id"], "password": test["secret"], "mobile": "919999999999", "msg": "hi"}
            sent = await client.post("/smsgatewaycenter/rest/send", data=form)
            assert sent.status_code == 200, sent.text
    assert sgc.requests == []
    assert [seen.body for seen in sandbox.requests] == [b"mobile=919999999999&msg=hi"]


async def test_smsportal_authentication_with_a_key(tmp_path: Path) -> None:
    """GET /Authentication with Basic(key id:secret) answers SMSPortal's token shape; the token works as Bearer."""
    async with FakeSMSPortal(PORTAL_ID, PORTAL_SECRET) as portal:
        credentials = f"{{type: smsportal, client_id: '{PORTAL_ID}', api_secret: '{PORTAL_SECRET}'}}"
        config = KeysConfig(tmp_path).add("smsportal", portal.url + "/v1", credentials)
        async with serve(config) as (client, _):
            created = await create_key(client, ["messages:send", "balance:read"])
            auth = await client.get(
                "/smsportal/v1/Authentication", headers={"authorization": basic(created["id"], created["secret"])}
            )
            assert auth.status_code == 200
            body = auth.json()
            assert body["schema"] == "JWT"
            assert body["expiresInMinutes"] >= 1
            sent = await client.post(
                "/smsportal/v1/bulkmessages",
                json={"messages": []},
                headers={"authorization": f"Bearer {body['token']}"},
            )
            assert sent.status_code == 200, sent.text
            direct = await client.get(
                "/smsportal/v1/Balance", headers={"authorization": basic(created["id"], created["secret"])}
            )
            assert direct.status_code == 200
            wrong = await client.get(
                "/smsportal/v1/Authentication", headers={"authorization": basic(created["id"], "z" * 32)}
            )
            assert wrong.status_code == 401
            assert_no_canary(auth.text + sent.text)
    forwarded = [seen for seen in portal.requests if seen.path != "/v1/Authentication"]
    assert len(forwarded) == 2
    assert all(seen.values("authorization")[0].startswith("Bearer ") for seen in forwarded)
    assert all("sgk_" not in " ".join(seen.values("authorization")) for seen in portal.requests)


async def test_test_keys_use_test_credentials_only(tmp_path: Path) -> None:
    """A test key goes out with BSG's own test_ key, a live key with the live key; on an upstream without
    test_url or test_credentials a test key is refused (403), never forwarded."""
    async with (
        FakeBSG([BSG_KEY, BSG_TEST_KEY]) as bsg,
        FakeSMSGatewayCenter(api_key=SGC_KEY, user_id="u", password="p") as sgc,
    ):
        config = KeysConfig(tmp_path)
        config.add(
            "bsg_v1",
            bsg.url + "/rest",
            f"{{type: bsg_v1, api_key: '{BSG_KEY}'}}",
            f"    test_credentials: {{type: bsg_v1, api_key: '{BSG_TEST_KEY}'}}\n",
        )
        config.add("smsgatewaycenter", sgc.url + "/SMSApi", f"{{type: smsgatewaycenter, api_key: '{SGC_KEY}'}}")
        async with serve(config) as (client, _):
            test = await create_key(client, ["messages:send", "balance:read"], mode="test")
            live = await create_key(client, ["balance:read"])
            assert test["key"].startswith("sgk_test_")
            assert test["mode"] == "test"
            assert (await client.get("/bsg/v1/common/balance", headers={"X-API-KEY": test["key"]})).status_code == 200
            assert (await client.get("/bsg/v1/common/balance", headers={"X-API-KEY": live["key"]})).status_code == 200
            refused = await client.get("/smsgatewaycenter/rest/balance", headers={"apiKey": test["key"]})
            assert refused.status_code == 403
            assert refused.json()["status"] == "error"
            # a test key cannot create a live key (tokens:manage is missing anyway: create as app, test mode only)
            as_test = {"authorization": f"Bearer {test['key']}"}
            assert (
                await client.post("/3rdparty/v1/auth/keys", json={"scopes": ["balance:read"]}, headers=as_test)
            ).status_code == 403
    assert [seen.values("x-api-key") for seen in bsg.requests] == [[BSG_TEST_KEY], [BSG_KEY]]
    assert sgc.requests == []


# ------------------------------------------------------------------------------- every instance, CLI

REDIS = "redis://127.0.0.1:6379/0"


async def test_a_key_revoked_through_one_instance_is_refused_by_the_other(tmp_path: Path) -> None:
    """Two gateways sharing Redis: B refuses, within a heartbeat, a key (and a token minted from it) A revoked."""
    async with FakeBSG([BSG_KEY]) as bsg, FakeBsgOneApi((BSG_KEY,)) as bsg2:
        config = KeysConfig(tmp_path, store=REDIS)
        config.add("bsg_v1", bsg.url + "/rest", f"{{type: bsg_v1, api_key: '{BSG_KEY}'}}")
        config.add("bsg_v2", bsg2.url + "/api", f"{{type: bsg_v2, api_key: '{BSG_KEY}'}}")
        settings = config.settings()
        first, second = create_app(settings), create_app(settings)
        async with (
            UvicornServer(first, lifespan="on") as a,
            UvicornServer(second, lifespan="on") as b,
            httpx.AsyncClient(timeout=10) as client,
        ):
            created = (
                await client.post(a.url + "/3rdparty/v1/auth/keys", json={"scopes": ["balance:read"]}, auth=APP)
            ).json()
            bearer = (await client.post(b.url + "/bsg/v2/api/auth/login", json={"api_key": created["key"]})).json()[
                "bearer"
            ]
            slot = {"X-API-KEY": created["key"]}
            assert (await client.get(b.url + "/bsg/v1/common/balance", headers=slot)).status_code == 200
            minted = {"authorization": f"Bearer {bearer}"}
            assert (await client.get(b.url + "/bsg/v2/api/accounts/balance", headers=minted)).status_code == 200
            assert (await client.delete(f"{a.url}/3rdparty/v1/auth/keys/{created['id']}", auth=APP)).status_code == 204
            deadline = time.monotonic() + 2
            while (await client.get(b.url + "/bsg/v1/common/balance", headers=slot)).status_code != 401:
                assert time.monotonic() < deadline, "instance B still accepts the revoked key"
                await asyncio.sleep(0.02)
            assert (await client.get(b.url + "/bsg/v2/api/accounts/balance", headers=minted)).status_code == 401
            assert (await client.post(b.url + "/bsg/v2/api/auth/refresh", headers=minted)).status_code == 401
    assert len(bsg.requests) == 1
    assert bsg2.used_keys == [BSG_KEY]  # (a provider bearer cached in Redis by an earlier run may cost a 401 first)


def test_cli_creates_lists_rotates_and_revokes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`gateway key create|list|rotate|revoke` against the shared store; the secret is printed once."""
    from gateway.cli import main

    config = KeysConfig(tmp_path, store=REDIS).add("bsg_v1", "http://127.0.0.1:9/rest", "{type: bsg_v1, api_key: x}")
    config.settings()
    path = str(tmp_path / "config.yaml")
    env = {"T_TOKEN_SECRET": ENV["T_TOKEN_SECRET"], "T_KEY_SECRET": KEY_SECRET}
    env |= {"T_OPS_HASH": ENV["T_OPS_HASH"], "T_APP_HASH": ENV["T_APP_HASH"]}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        subject = f"crm-{time.time_ns()}"
        assert (
            main(["key", "create", "--config", path, "--sub", subject, "--scope", "balance:read", "--test", "--json"])
            == 0
        )
        created = json.loads(capsys.readouterr().out)
        assert created["key"].startswith("sgk_test_")
        assert created["owner"] == {"issuer": "cli", "sub": subject}
        assert main(["key", "list", "--config", path, "--sub", subject]) == 0
        listed = capsys.readouterr().out
        assert created["id"] in listed
        assert created["secret"] not in listed
        assert main(["key", "rotate", "--config", path, created["id"], "--overlap-s", "0"]) == 0
        assert capsys.readouterr().out.strip().startswith(created["id"] + "_")
        assert main(["key", "revoke", "--config", path, created["id"]]) == 0
        assert "revoked" in capsys.readouterr().out
        assert main(["key", "revoke", "--config", path, created["id"]]) == 1
