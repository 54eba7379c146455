"""Redis Cluster and Redis Sentinel stores, on a real 3-node cluster and a real master + Sentinel that the
module starts on free ports (once each): real gateway processes issue, refresh and revoke through them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from fakes import RecordingUpstream, Reply
from gatewayconfig import OPS_PASSWORD, GatewayConfig
from processes import gateway_process
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redisserver import LocalCluster, LocalSentinel, local_cluster, local_sentinel

from gateway.store import RedisStore, open_store

TOKEN = "/3rdparty/v1/auth/token"
MESSAGES = "/3rdparty/v1/messages"
OPS = ("ops", OPS_PASSWORD)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("cluster")) as started:
        yield started


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSentinel]:
    with local_sentinel(tmp_path_factory.mktemp("sentinel")) as started:
        yield started


async def _eventually(condition: Callable[[], bool | Awaitable[bool]], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if await result if isinstance(result, Awaitable) else result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def _issue_refresh_revoke(a: str, b: str) -> None:
    """Issue on A, use and refresh on B, replay on A (the family dies), then revoke through B: refused on A."""
    async with httpx.AsyncClient() as client:

        async def get(base: str, token: str) -> httpx.Response:
            return await client.get(base + MESSAGES, headers={"authorization": f"Bearer {token}"})

        async def refresh(base: str, token: str) -> httpx.Response:
            return await client.post(base + TOKEN + "/refresh", headers={"authorization": f"Bearer {token}"})

        issued = await client.post(a + TOKEN, json={"scopes": ["messages:list"]}, auth=OPS)
        assert issued.status_code == 201, issued.text
        first = issued.json()
        assert (await get(b, first["access_token"])).status_code == 200
        rotated = await refresh(b, first["refresh_token"])
        assert rotated.status_code == 201, rotated.text
        second = rotated.json()
        assert (await get(a, second["access_token"])).status_code == 200
        replayed = await refresh(a, first["refresh_token"])  # a dead refresh token: the whole family is revoked
        assert replayed.status_code == 401
        assert (await refresh(b, second["refresh_token"])).status_code == 401

        other = (await client.post(b + TOKEN, json={"scopes": ["messages:list"]}, auth=OPS)).json()
        assert (await get(a, other["access_token"])).status_code == 200
        assert (await client.delete(f"{b}{TOKEN}/{other['id']}", auth=OPS)).status_code == 204
        after = await get(a, other["access_token"])
        assert after.status_code == 401
        assert "revoked" in after.json()["message"]
        assert (await refresh(a, other["refresh_token"])).status_code == 401


async def _through_two_gateways(directory: Path, store_url: str) -> None:
    async with RecordingUpstream(Reply(200, body=b"[]")) as upstream:
        cfg = GatewayConfig(directory, upstream.url + "/3rdparty/v1", store=store_url)
        path = cfg.write()
        with gateway_process(path, cfg.env) as first, gateway_process(path, cfg.env) as second:
            await _issue_refresh_revoke(first.url, second.url)
    assert len(upstream.requests) == 3


# ---------------------------------------------------------------------------------------------- cluster


async def _cluster_keys(cluster: LocalCluster, match: str) -> dict[int, list[str]]:
    """Every key matching `match`, per node port."""
    found: dict[int, list[str]] = {}
    for port in cluster.ports:
        node = cluster.node(port)
        try:
            found[port] = sorted([key.decode() async for key in node.scan_iter(match=match, count=1000)])
        finally:
            await node.aclose()
    return found


async def _per_node(cluster: LocalCluster, read: Callable[[aioredis.Redis], Awaitable[int]]) -> list[int]:
    values = []
    for port in cluster.ports:
        node = cluster.node(port)
        try:
            values.append(await read(node))
        finally:
            await node.aclose()
    return values


async def _exists_calls(node: aioredis.Redis) -> int:
    stats = await node.info("commandstats")
    return int(stats.get("cmdstat_exists", {}).get("calls", 0))


async def test_cluster_gateways_issue_refresh_and_revoke(cluster: LocalCluster, tmp_path: Path) -> None:
    """Two gateways on redis+cluster://: rotation, replay detection and revocation work across them, and
    every key they wrote is hash-tagged by its id (a family's live and revocation keys in one slot)."""
    await _through_two_gateways(tmp_path, cluster.url)
    keys = [key for per_node in (await _cluster_keys(cluster, "smsguard:*")).values() for key in per_node]
    assert "smsguard:epoch" in keys, "the store epoch record (a single key, no tag needed) is missing"
    keys.remove("smsguard:epoch")
    assert keys, "the gateways wrote nothing to the cluster"
    assert all(key.split(":", 2)[2].startswith("{") and key.endswith("}") for key in keys), keys
    families = {key.removeprefix("smsguard:fam:") for key in keys if key.startswith("smsguard:fam:")}
    revoked = {key.removeprefix("smsguard:rev:") for key in keys if key.startswith("smsguard:rev:")}
    assert families
    assert families <= revoked, "every family was revoked (replayed or deleted)"


@asynccontextmanager
async def _cluster_stores(cluster: LocalCluster) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    """(a, b): a writer without a mirror, and a mirrored store in sync; both on their own prefix."""
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    a = RedisStore(RedisCluster(host="127.0.0.1", port=cluster.ports[0]), prefix=prefix, mirror_revocations=False)
    b = open_store(cluster.url, prefix=prefix)
    assert isinstance(b, RedisStore)
    try:
        b.start()
        await _eventually(lambda: b.revocations_mirrored)
        yield a, b
    finally:
        await b.aclose()
        await a.aclose()


async def test_cluster_store_spreads_ids_and_mirrors_every_primary(cluster: LocalCluster) -> None:
    """Ids revoked together land in many slots on every node (one script per slot, no CROSSSLOT); the mirror
    subscribes on each primary, loads every primary's keys and answers without EXISTS; cutoffs, rotation,
    replay, values and locks work as on one server."""
    async with _cluster_stores(cluster) as (a, b):
        numsub = await _per_node(cluster, lambda node: _numsub(node, f"{b.prefix}revocations"))
        assert numsub == [1, 1, 1], "the mirror subscribes on every primary"
        now = time.time()
        ids = [f"id-{i}" for i in range(30)]
        assert len({key_slot(f"{a.prefix}rev:{{{id_}}}".encode()) for id_ in ids}) > 20
        await a.revoke(ids, now + 60, before=now)
        per_node = await _cluster_keys(cluster, f"{a.prefix}rev:*")
        assert all(per_node.values()), f"every node holds some revocations: {per_node}"
        assert sum(map(len, per_node.values())) == 30

        exists_before = await _per_node(cluster, _exists_calls)
        await _eventually(lambda: b.is_revoked(ids[-1], issued_at=now - 1))
        for id_ in ids:
            assert await b.is_revoked(id_, issued_at=now - 1)
            assert not await b.is_revoked(id_, issued_at=now + 1)  # issued after the cutoff
        late = open_store(cluster.url, prefix=a.prefix)  # starts after the revocations: loads them all
        assert isinstance(late, RedisStore)
        try:
            late.start()
            await _eventually(lambda: late.revocations_mirrored)
            assert all([await late.is_revoked(id_) for id_ in ids])
            assert not await late.is_revoked("never", "seen")
        finally:
            await late.aclose()
        assert await _per_node(cluster, _exists_calls) == exists_before, "an answer came from Redis, not a mirror"

        # without a mirror: EXISTS and MGET split per slot
        assert await a.is_revoked("never", ids[3], "seen", issued_at=now - 1)
        assert not await a.is_revoked("never", ids[3], "seen", issued_at=now + 1)

        await a.start_family("fam", "r1", now + 60)
        assert await a.rotate_refresh("fam", "r1", "r2", now + 60) == "rotated"
        assert await b.rotate_refresh("fam", "r1", "r3", now + 60) == "replayed"
        assert await a.rotate_refresh("fam", "r2", "r4", now + 60) == "revoked"
        await _eventually(lambda: b.is_revoked("fam"))

        await a.set("k", b"v", 60)
        assert await b.get("k") == b"v"
        async with a.lock("l"):
            with pytest.raises(TimeoutError):
                async with b.lock("l", wait_s=0.05):
                    pass
        assert await a.ping()
        assert await b.ping()


async def _numsub(node: aioredis.Redis, channel: str) -> int:
    [(_, count)] = await node.pubsub_numsub(channel)
    return int(count)


# --------------------------------------------------------------------------------------------- sentinel


async def test_sentinel_gateways_issue_refresh_and_revoke(sentinel: LocalSentinel, tmp_path: Path) -> None:
    """Two gateways on redis+sentinel://: the master the Sentinel names serves them, mirror included, with
    the single-server key names (no hash tags)."""
    store = open_store(sentinel.url, prefix="smsguard:")
    master = aioredis.Redis(host="127.0.0.1", port=sentinel.master_port)
    assert isinstance(store, RedisStore)
    try:
        store.start()
        await _eventually(lambda: store.revocations_mirrored)
        assert await _numsub(master, "smsguard:revocations") == 1, "the mirror subscribed on the master"
        await _through_two_gateways(tmp_path, sentinel.url)
        keys = sorted([key.decode() async for key in master.scan_iter(match="smsguard:*")])
        revoked = [key.removeprefix("smsguard:rev:") for key in keys if key.startswith("smsguard:rev:")]
        assert revoked
        assert not any("{" in key for key in keys), keys
        assert all([await store.is_revoked(id_) for id_ in revoked]), "the mirror saw the gateways' revocations"
    finally:
        await store.aclose()
        await master.aclose()
