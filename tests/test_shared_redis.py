"""Two gateway processes sharing one Redis: a token revoked through one is refused by the other."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from fakes import RecordingUpstream, Reply, UvicornServer
from gatewayconfig import OPS_PASSWORD, GatewayConfig
from processes import gateway_process
from redisserver import exists_calls, mget_calls, private_redis

from gateway.app import create_app
from gateway.store import RedisStore

TOKEN = "/3rdparty/v1/auth/token"


async def test_revocation_through_one_instance_is_seen_by_the_other(tmp_path: Path) -> None:
    """Instance B rejects, on its very next request, a token that instance A revoked."""
    async with RecordingUpstream(Reply(200, body=b"[]")) as upstream:
        cfg = GatewayConfig(tmp_path, upstream.url + "/3rdparty/v1", store="redis://127.0.0.1:6379/0")
        path = cfg.write()
        with gateway_process(path, cfg.env) as first, gateway_process(path, cfg.env) as second:
            a, b = first.url, second.url
            async with httpx.AsyncClient() as client:
                issued = await client.post(a + TOKEN, json={"scopes": ["messages:list"]}, auth=("ops", OPS_PASSWORD))
                assert issued.status_code == 201
                pair = issued.json()
                bearer = {"authorization": f"Bearer {pair['access_token']}"}
                assert (await client.get(b + "/3rdparty/v1/messages", headers=bearer)).status_code == 200
                revoked = await client.delete(f"{a}{TOKEN}/{pair['id']}", auth=("ops", OPS_PASSWORD))
                assert revoked.status_code == 204
                after = await client.get(b + "/3rdparty/v1/messages", headers=bearer)
                assert after.status_code == 401
                assert "revoked" in after.json()["message"]
                # and a refresh through B of the family A revoked is refused too
                refresh = await client.post(
                    b + TOKEN + "/refresh", headers={"authorization": f"Bearer {pair['refresh_token']}"}
                )
                assert refresh.status_code == 401
    assert len(upstream.requests) == 1


async def test_the_other_instance_checks_revocation_from_its_mirror(tmp_path: Path) -> None:
    """The lifespan starts each instance's revocation mirror; B then checks tokens without asking Redis.

    On a private redis-server, so every EXISTS it runs is B's (a mirror that is not in sync would ask).
    """
    with private_redis() as server:
        async with RecordingUpstream(Reply(200, body=b"[]")) as upstream:
            settings = GatewayConfig(tmp_path, upstream.url + "/3rdparty/v1", store=server.url).settings()
            first, second = create_app(settings), create_app(settings)
            admin = server.client()
            try:
                async with (
                    UvicornServer(first, lifespan="on") as a,
                    UvicornServer(second, lifespan="on") as b,
                    httpx.AsyncClient() as client,
                ):
                    stores = [first.store.inner, second.store.inner]
                    assert all(isinstance(store, RedisStore) for store in stores)
                    deadline = time.monotonic() + 3
                    while not all(store.revocations_mirrored for store in stores if isinstance(store, RedisStore)):
                        assert time.monotonic() < deadline, "the lifespan did not start the mirrors"
                        await asyncio.sleep(0.005)
                    issued = await client.post(
                        a.url + TOKEN, json={"scopes": ["messages:list"]}, auth=("ops", OPS_PASSWORD)
                    )
                    assert issued.status_code == 201
                    pair = issued.json()
                    bearer = {"authorization": f"Bearer {pair['access_token']}"}
                    before, mgets = await exists_calls(admin), await mget_calls(admin)
                    assert (await client.get(b.url + "/3rdparty/v1/messages", headers=bearer)).status_code == 200
                    revoked = await client.delete(f"{a.url}{TOKEN}/{pair['id']}", auth=("ops", OPS_PASSWORD))
                    assert revoked.status_code == 204
                    after = await client.get(b.url + "/3rdparty/v1/messages", headers=bearer)
                    assert after.status_code == 401
                    assert "revoked" in after.json()["message"]
                    assert await exists_calls(admin) == before, "B asked Redis instead of its mirror"
                    assert await mget_calls(admin) == mgets, "B asked Redis instead of its mirror"
            finally:
                await admin.aclose()
    assert len(upstream.requests) == 1
