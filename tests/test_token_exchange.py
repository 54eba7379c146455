"""Token exchange through the real gateway: single-flight logins, renewal, revocation, replay, shared Redis.

The fake BSG enforces the real rules (bearers expire, refresh needs a live bearer, revoked bearers get
401) and counts logins and refreshes, so each test asserts how many the gateway made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from fakes import FakeBSG, UvicornServer
from processes import gateway_process
from providersconfig import BSG_KEY, ProvidersConfig

from gateway.app import Gateway, create_app

BSG_V2 = "{type: bsg_v2, api_key: '${T_BSG_KEY}'}"
SEND = "/bsg/v2/api/campaigns/sms/send"
REDIS_URL = "redis://127.0.0.1:6379/0"


@contextlib.asynccontextmanager
async def serve(config: ProvidersConfig, connections: int = 100) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    gateway = create_app(config.settings())
    config.gateway = gateway
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with (
        UvicornServer(gateway, lifespan="on") as server,
        httpx.AsyncClient(base_url=server.url, timeout=20, limits=limits) as client,
    ):
        yield client, gateway


def bsg_config(tmp_path: Path, bsg: FakeBSG, credentials: str = BSG_V2, **kwargs: str) -> ProvidersConfig:
    return ProvidersConfig(tmp_path, **kwargs).add("bsg_v2", bsg.url + "/api", credentials)


async def send_many(client: httpx.AsyncClient, token: str, count: int, body: bytes = b"{}") -> list[httpx.Response]:
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    return await asyncio.gather(*(client.post(SEND, content=body, headers=headers) for _ in range(count)))


async def test_200_concurrent_requests_on_a_cold_cache_log_in_once(tmp_path: Path) -> None:
    """A burst of 200 requests before any token exists causes exactly one login, and all succeed."""
    async with FakeBSG([BSG_KEY], login_delay_s=0.2) as bsg:
        config = bsg_config(tmp_path, bsg)
        async with serve(config, connections=200) as (client, _):
            responses = await send_many(client, config.token("messages:send"), 200)
    assert [r.status_code for r in responses] == [200] * 200
    assert (bsg.logins, bsg.login_attempts, bsg.refreshes) == (1, 1, 0)
    assert len(bsg.received(SEND.replace("/bsg/v2/api", "/api"))) == 200


async def test_expiry_causes_one_renewal_through_refresh(tmp_path: Path) -> None:
    """When the token is due (margin before exp), one refresh renews it for a whole burst; no new login."""
    async with FakeBSG([BSG_KEY], lifetime_s=2.0) as bsg:
        config = bsg_config(tmp_path, bsg, "{type: bsg_v2, api_key: '${T_BSG_KEY}', margin_s: 1}")
        async with serve(config) as (client, _):
            token = config.token("messages:send")
            assert [r.status_code for r in await send_many(client, token, 5)] == [200] * 5
            await asyncio.sleep(1.1)  # past renew_at = exp - 1 s, before exp
            assert [r.status_code for r in await send_many(client, token, 20)] == [200] * 20
    assert (bsg.logins, bsg.refreshes) == (1, 1)
    (refresh,) = bsg.received("/api/auth/refresh")
    sends = bsg.received("/api/campaigns/sms/send")
    assert refresh.values("authorization") == sends[0].values("authorization")  # renewed with the live bearer
    assert {s.values("authorization")[0] for s in sends[5:]} != {sends[0].values("authorization")[0]}


async def test_expiry_without_refresh_logs_in_once_more(tmp_path: Path) -> None:
    """A generic token_exchange without a refresh request renews by one new login (fixed TTL here)."""
    async with FakeBSG([BSG_KEY]) as bsg:
        credentials = (
            "{type: token_exchange, login: {url: '" + bsg.url + "/api/auth/login', json: {api_key: '${T_BSG_KEY}'}}, "
            "token_field: bearer, expiry: {ttl_s: 2}, margin_s: 1}"
        )
        config = bsg_config(tmp_path, bsg, credentials)
        async with serve(config) as (client, _):
            token = config.token("messages:send")
            await send_many(client, token, 3)
            await asyncio.sleep(1.1)
            assert [r.status_code for r in await send_many(client, token, 20)] == [200] * 20
    assert (bsg.logins, bsg.refreshes) == (2, 0)


async def test_failed_refresh_falls_back_to_a_login(tmp_path: Path) -> None:
    """A refresh the provider refuses is followed by one login, and the client never notices."""
    async with FakeBSG([BSG_KEY], lifetime_s=2.0, refuse_refresh=True) as bsg:
        config = bsg_config(tmp_path, bsg, "{type: bsg_v2, api_key: '${T_BSG_KEY}', margin_s: 1}")
        async with serve(config) as (client, _):
            token = config.token("messages:send")
            await send_many(client, token, 1)
            await asyncio.sleep(1.1)
            assert [r.status_code for r in await send_many(client, token, 10)] == [200] * 10
    assert len(bsg.received("/api/auth/refresh")) == 1
    assert bsg.logins == 2


async def test_revocation_causes_one_relogin_and_the_requests_succeed(tmp_path: Path) -> None:
    """After the provider revokes the bearer (401), one re-login serves every retried request; bodies replay."""
    async with FakeBSG([BSG_KEY]) as bsg:
        config = bsg_config(tmp_path, bsg)
        async with serve(config) as (client, _):
            token = config.token("messages:send")
            await send_many(client, token, 1)
            bsg.revoke_all()
            body = json.dumps({"phones": [{"number": 380661231231}], "text": "after revocation"}).encode()
            responses = await send_many(client, token, 10, body)
    assert [r.status_code for r in responses] == [200] * 10
    assert bsg.logins == 2
    assert bsg.received("/api/auth/refresh") == []  # a refused token is never used to refresh
    first, *sends = bsg.received("/api/campaigns/sms/send")
    revoked = first.values("authorization")
    refused = [s for s in sends if s.values("authorization") == revoked]
    accepted = [s for s in sends if s.values("authorization") != revoked]
    assert len(accepted) == 10  # each request accepted once; those that met the revoked token were resent once
    assert 1 <= len(refused) <= 10
    assert {s.body for s in sends} == {body}
    assert len({s.values("authorization")[0] for s in accepted}) == 1


async def test_streamed_body_is_not_replayed_after_a_401(tmp_path: Path) -> None:
    """A body too big to buffer cannot be resent: the 401 becomes a 502 once, and the next request re-logs in."""
    async with FakeBSG([BSG_KEY]) as bsg:
        config = bsg_config(tmp_path, bsg, proxy="{retry_buffer_bytes: 16}")
        async with serve(config) as (client, _):
            token = config.token("messages:send")
            assert (await send_many(client, token, 1))[0].status_code == 200
            bsg.revoke_all()
            big = json.dumps({"text": "x" * 200}).encode()
            (streamed,) = await send_many(client, token, 1, big)
            sends_after_refusal = len(bsg.received("/api/campaigns/sms/send"))
            (later,) = await send_many(client, token, 1)
    assert streamed.status_code == 502
    assert streamed.json()["message"].startswith("the upstream refused the gateway's token")
    assert sends_after_refusal == 2  # the streamed request went out once, never twice
    assert later.status_code == 200
    assert bsg.logins == 2


@pytest.fixture
async def redis_cleanup() -> AsyncIterator[list[str]]:
    """Keys to delete from the shared Redis after the test (only ours: names carry a random suffix)."""
    keys: list[str] = []
    yield keys
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_two_gateway_processes_share_one_login_through_redis(tmp_path: Path, redis_cleanup: list[str]) -> None:
    """Two `gateway serve` processes on one Redis: a concurrent cold start on both makes one login in all."""
    name = f"bsg_v2_{uuid.uuid4().hex[:12]}"
    redis_cleanup += [f"smsguard:kv:uptoken:{name}", f"smsguard:lock:login:{name}"]
    async with FakeBSG([BSG_KEY], login_delay_s=0.3) as bsg:
        config = ProvidersConfig(tmp_path, store=REDIS_URL).add("bsg_v2", bsg.url + "/api", BSG_V2, name=name)
        path = config.write()
        token = config.token("messages:send")
        headers = {"authorization": f"Bearer {token}"}
        with gateway_process(path, config.env) as first, gateway_process(path, config.env) as second:
            async with httpx.AsyncClient(timeout=20) as client:
                responses = await asyncio.gather(
                    *(client.post(url + SEND, json={}, headers=headers) for url in [first.url, second.url] * 10)
                )
                assert [r.status_code for r in responses] == [200] * 20
                more = await asyncio.gather(
                    *(client.post(url + SEND, json={}, headers=headers) for url in (first.url, second.url))
                )
                assert [r.status_code for r in more] == [200, 200]
    assert (bsg.logins, bsg.login_attempts) == (1, 1)
    assert len({s.values("authorization")[0] for s in bsg.received("/api/campaigns/sms/send")}) == 1
