"""tokens.py + tokens_api.py: issue, refresh, revoke through the real gateway, on the memory and Redis stores."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from fakes import RecordingUpstream, Reply, UvicornServer
from gatewayconfig import OPS_PASSWORD, SENDER_PASSWORD, TOKEN_SECRET, GatewayConfig

from gateway.app import Gateway, create_app
from gateway.auth.jwt import Principal
from gateway.cli import main as cli_main
from gateway.config.settings import parse_settings
from gateway.errors import NotFound
from gateway.store import MemoryStore, open_store
from gateway.tokens.mint import TokenIssuer
from gateway.tokens.service import TokenService

TOKEN = "/3rdparty/v1/auth/token"
OPS = ("ops", OPS_PASSWORD)
SENDER = ("sender", SENDER_PASSWORD)


class Env:
    def __init__(self, gateway: Gateway, client: httpx.AsyncClient, upstream: RecordingUpstream) -> None:
        self.gateway = gateway
        self.client = client
        self.upstream = upstream

    async def issue(self, scopes: list[str], auth: Any = OPS, ttl: int | None = None, **kw: Any) -> httpx.Response:
        body: dict[str, Any] = {"scopes": scopes}
        if ttl is not None:
            body["ttl"] = ttl
        return await self.client.post(TOKEN, json=body, auth=auth, **kw)

    async def mint(self, scopes: list[str], auth: Any = OPS) -> dict[str, Any]:
        response = await self.issue(scopes, auth)
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    async def call(self, method: str, path: str, token: str) -> httpx.Response:
        return await self.client.request(method, path, headers={"authorization": f"Bearer {token}"})

    async def refresh(self, refresh_token: str) -> httpx.Response:
        return await self.client.post(TOKEN + "/refresh", headers={"authorization": f"Bearer {refresh_token}"})


@pytest.fixture(params=["memory", "redis"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    store = "memory://" if request.param == "memory" else "redis://127.0.0.1:6379/0"
    async with RecordingUpstream(Reply(200, body=b"[]")) as up:
        settings = GatewayConfig(tmp_path, up.url + "/3rdparty/v1", store=store).settings()
        prefixed = open_store(settings.store, prefix=f"smsguard-test:{secrets.token_hex(6)}:")
        gateway = create_app(settings, store=prefixed)
        async with UvicornServer(gateway, lifespan="on") as server, httpx.AsyncClient(base_url=server.url) as client:
            yield Env(gateway, client, up)


def claims(token: str) -> dict[str, Any]:
    payload: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return payload


async def test_basic_user_gets_a_token_pair_in_both_spellings(env: Env) -> None:
    """201 with id, token_type, access/refresh tokens and RFC 3339 expires_at, snake_case and camelCase."""
    response = await env.issue(["messages:send"], ttl=120)
    assert response.status_code == 201
    assert response.headers["cache-control"] == "no-store"
    data = response.json()
    assert data["token_type"] == data["tokenType"] == "Bearer"
    assert data["access_token"] == data["accessToken"]
    assert data["refresh_token"] == data["refreshToken"]
    assert data["expires_at"] == data["expiresAt"]
    access = claims(data["access_token"])
    assert data["id"] == access["jti"]
    assert access["scope"] == "messages:send"
    assert access["sub"] == "ops"
    assert {"iss", "aud", "sub", "iat", "exp", "jti"} <= set(access)
    assert access["exp"] - access["iat"] == 120
    assert datetime.strptime(data["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp() == access["exp"]
    assert jwt.get_unverified_header(data["access_token"])["typ"] == "at+jwt"
    assert jwt.get_unverified_header(data["refresh_token"])["typ"] == "refresh+jwt"
    assert (await env.call("POST", "/3rdparty/v1/messages", data["access_token"])).status_code == 200


@pytest.mark.parametrize(("asked", "expected"), [(None, 600), (30, 30), (99_999, 3600)])
async def test_ttl_defaults_to_and_is_capped_by_config(env: Env, asked: int | None, expected: int) -> None:
    """ttl defaults to tokens.default_ttl_s and never exceeds tokens.max_ttl_s."""
    data = (await env.issue(["messages:send"], ttl=asked)).json()
    access = claims(data["access_token"])
    assert access["exp"] - access["iat"] == expected


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"scopes": []}, 400, "non-empty"),
        ({"scopes": ["messages:teleport"]}, 400, "unknown scope messages:teleport"),
        ({"scopes": ["Messages Send"]}, 400, "malformed scope"),
        ({"scopes": ["tokens:refresh"]}, 400, "cannot be requested"),
        ({"scopes": "messages:send"}, 400, "list of strings"),
        ({"scopes": ["messages:send"], "ttl": "60"}, 400, "integer"),
        ({"scopes": ["messages:send"], "ttl": 0}, 400, "positive"),
        ({"scopes": ["messages:send"], "admin": True}, 400, "unknown field(s): admin"),
    ],
)
async def test_bad_token_requests_are_400(env: Env, body: Any, status: int, needle: str) -> None:
    """Malformed requests get 400 with a message naming the problem."""
    response = await env.client.post(TOKEN, json=body, auth=OPS)
    assert response.status_code == status
    assert needle in response.json()["message"]


async def test_non_json_body_is_400(env: Env) -> None:
    """A body that is not JSON is a clear 400."""
    response = await env.client.post(TOKEN, content=b"scopes=all", auth=OPS)
    assert response.status_code == 400


@pytest.mark.parametrize("body", [b"[" * 8000 + b"]" * 8000, b'{"scopes": ' + b"[" * 40 + b"]" * 40 + b"}"])
async def test_deeply_nested_json_is_400_not_a_traceback(env: Env, body: bytes) -> None:
    """JSON nested past the depth limit (8,000 brackets is under the size cap) is a 400, never a RecursionError."""
    response = await env.client.post(TOKEN, content=body, auth=OPS)
    assert response.status_code == 400
    assert "nested deeper than" in response.json()["message"]


@pytest.mark.parametrize(
    ("caller_scopes", "requested", "status", "offending"),
    [
        (["messages:send"], ["messages:send"], 403, "tokens:manage"),  # Bearer without tokens:manage
        (["tokens:manage", "messages:send"], ["messages:read"], 403, "messages:read"),
        (["tokens:manage", "messages:send"], ["all:any"], 403, "all:any"),
        (["tokens:manage", "messages:send"], ["messages:send", "devices:list"], 403, "devices:list"),
        (["tokens:manage", "messages:send"], ["messages:send"], 201, None),
        (["tokens:manage", "messages:send"], ["tokens:manage"], 201, None),
        (["all:any"], ["devices:delete", "all:any"], 201, None),
    ],
)
async def test_no_caller_can_mint_a_scope_it_does_not_hold(
    env: Env, caller_scopes: list[str], requested: list[str], status: int, offending: str | None
) -> None:
    """Privilege escalation through the token endpoint is refused with 403 naming the scope (SMSGate's gap)."""
    caller = (await env.mint(caller_scopes))["access_token"]
    response = await env.issue(requested, auth=None, headers={"authorization": f"Bearer {caller}"})
    assert response.status_code == status
    if offending:
        assert offending in response.json()["message"]
        assert f'scope="{offending}"' in response.headers["www-authenticate"]


async def test_basic_user_cannot_mint_beyond_its_own_scopes(env: Env) -> None:
    """A Basic user holding messages:send/read cannot mint devices:list."""
    assert (await env.issue(["messages:read"], auth=SENDER)).status_code == 201
    response = await env.issue(["devices:list"], auth=SENDER)
    assert response.status_code == 403
    assert "devices:list" in response.json()["message"]


async def test_unauthenticated_token_request_is_401(env: Env) -> None:
    """No credentials, or a wrong password, is 401."""
    assert (await env.issue(["messages:send"], auth=None)).status_code == 401
    assert (await env.issue(["messages:send"], auth=("ops", "nope"))).status_code == 401


async def test_refresh_rotates_and_keeps_scopes(env: Env) -> None:
    """A refresh gives a new pair with the original scopes; the old refresh token is dead."""
    first = await env.mint(["messages:send", "messages:read"])
    response = await env.refresh(first["refresh_token"])
    assert response.status_code == 201
    second = response.json()
    assert claims(second["access_token"])["scope"] == "messages:read messages:send"
    assert second["refresh_token"] != first["refresh_token"]
    assert (await env.call("POST", "/3rdparty/v1/messages", second["access_token"])).status_code == 200
    replay = await env.refresh(first["refresh_token"])
    assert replay.status_code == 401
    assert "reuse" in replay.json()["message"]
    # replay detection revoked the whole family, including the pair the legitimate refresh produced
    assert (await env.call("POST", "/3rdparty/v1/messages", second["access_token"])).status_code == 401
    assert (await env.refresh(second["refresh_token"])).status_code == 401


async def test_concurrent_refreshes_of_one_token_have_exactly_one_winner(env: Env) -> None:
    """Two refreshes of the same token at once: one 201, the other 401."""
    first = await env.mint(["messages:send"])
    responses = await asyncio.gather(*(env.refresh(first["refresh_token"]) for _ in range(2)))
    assert sorted(r.status_code for r in responses) == [201, 401]


async def test_refresh_and_access_tokens_are_not_interchangeable(env: Env) -> None:
    """A refresh token is never accepted as an access token, and an access token never refreshes."""
    pair = await env.mint(["all:any"])
    assert (await env.call("GET", "/3rdparty/v1/devices", pair["refresh_token"])).status_code == 401
    assert (await env.refresh(pair["access_token"])).status_code == 401
    basic = base64.b64encode(f"ops:{OPS_PASSWORD}".encode()).decode()
    no_bearer = await env.client.post(TOKEN + "/refresh", headers={"authorization": f"Basic {basic}"})
    assert no_bearer.status_code == 401


async def test_revocation_takes_effect_on_the_next_request(env: Env) -> None:
    """DELETE /auth/token/{jti} → 204; the token and its refresh child are rejected right after."""
    pair = await env.mint(["messages:send"])
    assert (await env.call("POST", "/3rdparty/v1/messages", pair["access_token"])).status_code == 200
    response = await env.client.delete(f"{TOKEN}/{pair['id']}", auth=OPS)
    assert response.status_code == 204
    assert response.content == b""
    denied = await env.call("POST", "/3rdparty/v1/messages", pair["access_token"])
    assert denied.status_code == 401
    assert "revoked" in denied.json()["message"]
    assert (await env.refresh(pair["refresh_token"])).status_code == 401


async def test_only_the_subject_or_superuser_may_revoke(env: Env) -> None:
    """Another subject gets 403; the subject itself (with tokens:manage) may; unknown jti is 404."""
    victim = await env.mint(["messages:send"], auth=SENDER)
    ops_manager = (await env.mint(["tokens:manage"]))["access_token"]  # subject "ops", no all:any
    sender_manage = await env.client.post(TOKEN, json={"scopes": ["messages:send"]}, auth=SENDER)
    assert sender_manage.status_code == 201
    other = await env.client.delete(f"{TOKEN}/{victim['id']}", headers={"authorization": f"Bearer {ops_manager}"})
    assert other.status_code == 403
    own = await env.client.delete(f"{TOKEN}/{victim['id']}", auth=SENDER)
    assert own.status_code == 204
    assert (await env.client.delete(f"{TOKEN}/no-such-jti", auth=OPS)).status_code == 404


async def test_no_upstream_request_for_token_endpoints(env: Env) -> None:
    """The token endpoints are answered by the gateway; nothing reaches the upstream."""
    pair = await env.mint(["messages:send"])
    await env.refresh(pair["refresh_token"])
    await env.client.delete(f"{TOKEN}/{pair['id']}", auth=OPS)
    assert env.upstream.requests == []


async def test_disabled_issuing_answers_501(tmp_path: Path) -> None:
    """tokens.enabled: false → every token endpoint answers 501 {"message"}."""
    async with RecordingUpstream() as up:
        gateway = create_app(GatewayConfig(tmp_path, up.url, tokens_enabled=False).settings())
        async with UvicornServer(gateway, lifespan="on") as server, httpx.AsyncClient(base_url=server.url) as client:
            responses = [
                await client.post(TOKEN, json={"scopes": ["messages:send"]}, auth=OPS),
                await client.post(TOKEN + "/refresh", headers={"authorization": "Bearer x"}),
                await client.delete(TOKEN + "/abc", auth=OPS),
            ]
    assert [r.status_code for r in responses] == [501, 501, 501]
    assert all(list(r.json()) == ["message"] for r in responses)
    assert up.requests == []


def ed25519_pem() -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


async def test_rotation_newest_key_signs_all_verify_and_jwks_is_public(tmp_path: Path) -> None:
    """With keys [new, old] the new one signs, tokens of the old still verify, and JWKS has no private part."""
    new_pem, old_pem = ed25519_pem(), ed25519_pem()
    env = {"NEW": new_pem, "OLD": old_pem, "HS": TOKEN_SECRET}
    text = """\
tokens:
  keys:
    - {kid: new, algorithm: EdDSA, private_key: "${NEW}"}
    - {kid: old, algorithm: EdDSA, private_key: "${OLD}"}
"""
    settings = parse_settings(text, env=env)
    old_only = parse_settings(text.replace('    - {kid: new, algorithm: EdDSA, private_key: "${NEW}"}\n', ""), env=env)
    async with RecordingUpstream() as up:
        cfg = GatewayConfig(tmp_path, up.url + "/3rdparty/v1")
        base = cfg.settings()
        import dataclasses

        gateway = create_app(dataclasses.replace(base, tokens=dataclasses.replace(settings.tokens, max_ttl_s=3600)))
        epoch = gateway.store.current_epoch()  # a token of this store's epoch, signed with the old key only
        assert epoch is not None
        old_token = TokenIssuer(old_only.tokens).mint_pair("legacy", ["messages:send"], 60, grant={"ep": epoch.id})
        old_token = old_token.access.token
        async with UvicornServer(gateway, lifespan="on") as server, httpx.AsyncClient(base_url=server.url) as client:
            minted = (await client.post(TOKEN, json={"scopes": ["messages:send"]}, auth=OPS)).json()
            jwks = (await client.get("/.well-known/jwks.json")).json()
            old_ok = await client.post(
                "/3rdparty/v1/messages", content=b"{}", headers={"authorization": f"Bearer {old_token}"}
            )
    assert jwt.get_unverified_header(minted["access_token"])["kid"] == "new"
    assert old_ok.status_code == 200
    assert [key["kid"] for key in jwks["keys"]] == ["new", "old"]
    for key in jwks["keys"]:
        assert (key["kty"], key["alg"], "d" in key) == ("OKP", "EdDSA", False)
    published = jwt.PyJWK(jwks["keys"][0]).key
    assert jwt.decode(minted["access_token"], published, algorithms=["EdDSA"], audience="sms-api")["sub"] == "ops"


def test_cli_issue_and_revoke_share_the_configured_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`gateway token issue` prints a JWT and `token revoke` revokes it in the same (Redis) store."""
    cfg = GatewayConfig(tmp_path, "http://127.0.0.1:9/3rdparty/v1", store="redis://127.0.0.1:6379/0")
    path = cfg.write()
    import os

    old = {key: os.environ.get(key) for key in cfg.env}
    os.environ.update(cfg.env)
    try:
        assert (
            cli_main(["token", "issue", "--config", str(path), "--sub", "svc", "--scope", "messages:send", "--json"])
            == 0
        )
        issued = json.loads(capsys.readouterr().out)
        assert claims(issued["access_token"])["sub"] == "svc"
        assert cli_main(["token", "revoke", "--config", str(path), issued["id"]]) == 0
        assert "revoked" in capsys.readouterr().out
        assert cli_main(["token", "revoke", "--config", str(path), "unknown-jti"]) == 1
        assert "no such token" in capsys.readouterr().err
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    async def revoked() -> tuple[bool, bool]:
        store = open_store("redis://127.0.0.1:6379/0")
        try:
            fam = claims(issued["access_token"])["fam"]
            return await store.is_revoked(issued["id"]), await store.is_revoked(fam)
        finally:
            await store.aclose()

    assert asyncio.run(revoked()) == (True, True)


def test_cli_issue_narrows_sms_by_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--country` (repeatable) and `--max-recipients` become the token's `sms` claim; a bad value is refused."""
    cfg = GatewayConfig(tmp_path, "http://127.0.0.1:9/3rdparty/v1", store="redis://127.0.0.1:6379/0")
    path = cfg.write()
    base = ["token", "issue", "--config", str(path), "--sub", "svc", "--scope", "messages:send", "--json"]
    with pytest.MonkeyPatch.context() as patch:
        for key, value in cfg.env.items():
            patch.setenv(key, value)
        assert cli_main([*base, "--country", "gb", "--country", "US", "--max-recipients", "3"]) == 0
        issued = json.loads(capsys.readouterr().out)
        assert claims(issued["access_token"])["sms"] == {"countries": ["GB", "US"], "max_recipients": 3}
        assert cli_main(base) == 0
        assert "sms" not in claims(json.loads(capsys.readouterr().out)["access_token"])
        assert cli_main([*base, "--country", "GBR"]) == 1
        assert "sms.countries" in capsys.readouterr().err
        assert cli_main([*base, "--max-recipients", "0"]) == 1
        assert "sms.max_recipients" in capsys.readouterr().err


@pytest.mark.parametrize("grace_s", [0.0, 30.0])
async def test_a_revocation_outlives_exp_by_the_verifiers_leeway(grace_s: float) -> None:
    """Verifiers accept a token until exp + leeway: its revocation must hold (and be revocable) that long too."""
    now = [1_800_000_000.0]
    settings = parse_settings(
        "tokens:\n  enabled: true\n  default_ttl_s: 600\n  max_ttl_s: 600\n  keys:\n"
        f"    - {{kid: k1, algorithm: HS256, secret: {TOKEN_SECRET}}}\n",
        env={},
    ).tokens
    store = MemoryStore(clock=lambda: now[0])
    service = TokenService(settings, store, ["messages:send"], clock=lambda: now[0], grace_s=grace_s)
    pair = await service.issue("alice", ["messages:send"], 600, caller=None)
    access = Principal(
        "alice",
        frozenset({"messages:send"}),
        "self",
        pair.access.jti,
        pair.access.expires_at,
        {"fam": pair.family, "ep": store.epoch.id},
        "access",
    )
    now[0] = pair.access.expires_at + 15  # past exp, inside a 30 s leeway: still accepted by the verifier
    if not grace_s:
        with pytest.raises(NotFound):  # its record is gone: nobody could revoke a token that still works
            await service.revoke(pair.access.jti, caller=None)
        return
    await service.revoke(pair.access.jti, caller=None)
    now[0] = pair.access.expires_at + 29
    assert await service.is_revoked(access)
    assert await store.is_revoked(pair.access.jti)  # the token itself, not only its family
