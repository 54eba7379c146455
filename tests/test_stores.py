"""gateway.store: one suite run on MemoryStore and on RedisStore against the real Redis (never skipped)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from redisserver import PrivateRedis, exists_calls, private_redis

from gateway.store import MemoryStore, RedisStore, Store, open_store

REDIS_URL = "redis://127.0.0.1:6379/0"
DAY = 86400.0


class FakeClock:
    """Unix time that only moves when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class StoreEnv:
    """A store plus its notion of time: a fake clock for memory, real time (and sleeps) for Redis."""

    kind: str
    store: Store
    now: Callable[[], float]
    advance: Callable[[float], Awaitable[None]]
    prefix: str = ""
    admin: aioredis.Redis | None = None  # a raw client on the same Redis, to look at keys


@asynccontextmanager
async def _redis_admin() -> AsyncIterator[tuple[aioredis.Redis, str]]:
    """A raw client and a unique key prefix whose keys are deleted afterwards.

    An unreachable Redis fails the test here, loudly: the Redis half of the suite is never skipped.
    """
    client = aioredis.Redis.from_url(REDIS_URL)
    prefix = f"smsguard-test:{uuid.uuid4().hex}:"
    try:
        assert await client.ping()
        yield client, prefix
    finally:
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


@pytest.fixture
async def redis_admin() -> AsyncIterator[tuple[aioredis.Redis, str]]:
    async with _redis_admin() as pair:
        yield pair


@pytest.fixture
def admin(redis_admin: tuple[aioredis.Redis, str]) -> aioredis.Redis:
    return redis_admin[0]


@pytest.fixture
def redis_prefix(redis_admin: tuple[aioredis.Redis, str]) -> str:
    return redis_admin[1]


@pytest.fixture(params=["memory", "redis"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[StoreEnv]:
    if request.param == "memory":
        clock = FakeClock()

        async def advance_clock(seconds: float) -> None:
            clock.now += seconds

        memory = MemoryStore(clock=clock)
        yield StoreEnv("memory", memory, clock, advance_clock)
        await memory.aclose()
        return
    async with _redis_admin() as (admin_client, prefix):
        store = RedisStore.from_url(REDIS_URL, prefix=prefix)
        try:
            yield StoreEnv("redis", store, time.time, asyncio.sleep, prefix, admin_client)
        finally:
            await store.aclose()


@pytest.fixture
def store(env: StoreEnv) -> Store:
    return env.store


# ------------------------------------------------------------------------------------------ revocations


async def test_both_stores_satisfy_the_protocol(store: Store) -> None:
    """Each implementation is a Store (runtime check of the Protocol)."""
    assert isinstance(store, Store)


async def test_revoke_marks_every_id(env: StoreEnv) -> None:
    """Revoking several ids marks each; is_revoked is true when any of the given ids is revoked."""
    store = env.store
    await store.revoke(["jti-a", "fam-b"], env.now() + 60)
    assert await store.is_revoked("jti-a")
    assert await store.is_revoked("fam-b")
    assert await store.is_revoked("jti-c", "fam-b")
    assert not await store.is_revoked("jti-c")
    assert not await store.is_revoked("jti-c", "fam-d")
    assert not await store.is_revoked()


async def test_revoke_accepts_any_iterable_and_nothing(env: StoreEnv) -> None:
    """ids may be a generator; an empty one is a no-op."""
    await env.store.revoke((f"id-{i}" for i in range(3)), env.now() + 60)
    await env.store.revoke([], env.now() + 60)
    assert await env.store.is_revoked("id-2")


async def test_revocation_is_forgotten_at_until(env: StoreEnv) -> None:
    """A revocation lasts until `until` (the token's exp) and is gone afterwards."""
    await env.store.revoke(["jti"], env.now() + 1.0)  # room for a loaded machine's stalls (Redis runs on real time)
    assert await env.store.is_revoked("jti")
    await env.advance(1.1)
    assert not await env.store.is_revoked("jti")


async def test_revoke_in_the_past_is_a_no_op(env: StoreEnv) -> None:
    """A token that already expired needs no revocation entry."""
    await env.store.revoke(["jti"], env.now() - 1)
    assert not await env.store.is_revoked("jti")


async def test_a_shorter_revoke_never_shortens_a_longer_one(env: StoreEnv) -> None:
    """Revoking again with an earlier `until` keeps the later one."""
    await env.store.revoke(["fam"], env.now() + 60)
    await env.store.revoke(["fam"], env.now() + 0.2)
    await env.advance(0.3)
    assert await env.store.is_revoked("fam")


async def test_a_revocation_with_a_cutoff_refuses_only_tokens_issued_before_it(env: StoreEnv) -> None:
    """`before`: tokens issued earlier (or of unknown age) are refused, later ones pass (subject revocation)."""
    store, now = env.store, env.now()
    await store.revoke(["sub:basic:ops"], now + 60, before=now)
    assert await store.is_revoked("sub:basic:ops", issued_at=now - 1)
    assert await store.is_revoked("sub:basic:ops")  # no issued_at: refused, fail closed
    assert not await store.is_revoked("sub:basic:ops", issued_at=now)
    assert not await store.is_revoked("jti", "sub:basic:ops", issued_at=now + 1)
    await store.revoke(["jti"], now + 60)
    assert await store.is_revoked("jti", "sub:basic:ops", issued_at=now + 1)  # any one id refuses


async def test_cutoffs_merge_later_wins_and_none_beats_any(env: StoreEnv) -> None:
    """A later cutoff replaces an earlier one, never the reverse; a plain revocation beats any cutoff."""
    store, now = env.store, env.now()
    await store.revoke(["s"], now + 60, before=now)
    await store.revoke(["s"], now + 60, before=now + 10)
    await store.revoke(["s"], now + 30, before=now + 5)
    assert await store.is_revoked("s", issued_at=now + 9)
    assert not await store.is_revoked("s", issued_at=now + 10)
    await store.revoke(["p"], now + 60)
    await store.revoke(["p"], now + 90, before=now)
    assert await store.is_revoked("p", issued_at=now + 20)
    await store.revoke(["s"], now + 60)
    assert await store.is_revoked("s", issued_at=now + 20)


# ------------------------------------------------------------------------------------- refresh families


async def test_rotation_happy_path(env: StoreEnv) -> None:
    """Each rotation presents the live refresh token and makes the new one live."""
    store, until = env.store, env.now() + 60
    await store.start_family("fam", "r1", until)
    assert await store.rotate_refresh("fam", "r1", "r2", until) == "rotated"
    assert await store.rotate_refresh("fam", "r2", "r3", until) == "rotated"
    assert not await store.is_revoked("fam")


async def test_replay_revokes_the_family(env: StoreEnv) -> None:
    """A dead refresh token presented again is a replay: the family is revoked and nothing rotates after."""
    store, until = env.store, env.now() + 60
    await store.start_family("fam", "r1", until)
    assert await store.rotate_refresh("fam", "r1", "r2", until) == "rotated"
    assert await store.rotate_refresh("fam", "r1", "x1", until) == "replayed"
    assert await store.is_revoked("fam")
    assert await store.rotate_refresh("fam", "r2", "x2", until) == "revoked"  # even the live one
    assert await store.rotate_refresh("fam", "r1", "x3", until) == "revoked"


async def test_unknown_family_is_revoked(env: StoreEnv) -> None:
    """Rotating in a family the store never saw (or forgot) fails closed, without revoking anything."""
    assert await env.store.rotate_refresh("nope", "r1", "r2", env.now() + 60) == "revoked"
    assert not await env.store.is_revoked("nope")


async def test_revoked_family_cannot_rotate(env: StoreEnv) -> None:
    """Revoking a family id (DELETE /auth/token) stops its live refresh token too."""
    until = env.now() + 60
    await env.store.start_family("fam", "r1", until)
    await env.store.revoke(["fam"], until)
    assert await env.store.rotate_refresh("fam", "r1", "r2", until) == "revoked"


async def test_family_expires(env: StoreEnv) -> None:
    """A family whose live refresh token expired is forgotten: rotation says revoked."""
    await env.store.start_family("fam", "r1", env.now() + 0.3)
    await env.advance(0.4)
    assert await env.store.rotate_refresh("fam", "r1", "r2", env.now() + 60) == "revoked"


async def test_replay_revocation_outlives_the_live_token(env: StoreEnv) -> None:
    """On replay the family stays revoked at least as long as its live refresh token would have lived."""
    await env.store.start_family("fam", "r1", env.now() + 60)
    assert await env.store.rotate_refresh("fam", "dead", "x", env.now() + 0.2) == "replayed"
    await env.advance(0.3)
    assert await env.store.is_revoked("fam")


async def test_concurrent_rotations_exactly_one_wins(env: StoreEnv) -> None:
    """20 simultaneous rotations of one refresh token: one rotates, the next detects the replay, the rest fail."""
    until = env.now() + 60
    await env.store.start_family("fam", "r1", until)
    results = await asyncio.gather(*(env.store.rotate_refresh("fam", "r1", f"n{i}", until) for i in range(20)))
    assert Counter(results) == {"rotated": 1, "replayed": 1, "revoked": 18}
    assert await env.store.is_revoked("fam")


# ------------------------------------------------------------------------------------------------ values


async def test_get_set_delete(store: Store) -> None:
    """Values round-trip as bytes; delete is idempotent; a missing key is None."""
    assert await store.get("upstream:smsportal") is None
    await store.set("upstream:smsportal", b"\x00tok\xff", 60)
    assert await store.get("upstream:smsportal") == b"\x00tok\xff"
    await store.set("upstream:smsportal", b"newer", 60)
    assert await store.get("upstream:smsportal") == b"newer"
    await store.delete("upstream:smsportal")
    await store.delete("upstream:smsportal")
    assert await store.get("upstream:smsportal") is None


async def test_value_expires(env: StoreEnv) -> None:
    """A cached value is gone after its TTL."""
    await env.store.set("k", b"v", 1.0)
    assert await env.store.get("k") == b"v"
    await env.advance(1.1)
    assert await env.store.get("k") is None


@pytest.mark.parametrize("ttl", [0, -1, math.nan])
async def test_a_non_positive_ttl_is_refused(store: Store, ttl: float) -> None:
    """A value, counter or lock without a real TTL would live forever: refused."""
    with pytest.raises(ValueError, match="ttl_s"):
        await store.set("k", b"v", ttl)
    with pytest.raises(ValueError, match="ttl_s"):
        store.lock("k", ttl_s=ttl)


# ------------------------------------------------------------------------------------------------- locks


async def _max_concurrency(locks: list[Store], holders: int) -> int:
    active = peak = 0

    async def hold(i: int) -> None:
        nonlocal active, peak
        async with locks[i % len(locks)].lock("login:smsportal", wait_s=10):
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.002)
            active -= 1

    await asyncio.gather(*(hold(i) for i in range(holders)))
    return peak


async def test_lock_mutual_exclusion(store: Store) -> None:
    """Many concurrent holders of one name: never more than one inside at a time, and all get in."""
    assert await _max_concurrency([store], 20) == 1


async def test_lock_times_out(store: Store) -> None:
    """A waiter gives up with TimeoutError after wait_s while another holds the lock."""
    async with store.lock("x"):
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="'x'"):
            async with store.lock("x", wait_s=0.15):
                pytest.fail("acquired a held lock")
        assert 0.14 <= time.monotonic() - started < 1.0


async def test_lock_is_released_on_error_and_names_are_independent(store: Store) -> None:
    """An exception inside releases the lock; other names are never blocked."""

    async def fail_inside() -> None:
        async with store.lock("x"):
            async with store.lock("y", wait_s=0.1):
                pass
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fail_inside()
    async with store.lock("x", wait_s=0.1):
        pass


async def test_cancelled_waiter_leaves_the_lock_usable(store: Store) -> None:
    """Cancelling a task that waits for a lock neither takes nor breaks it."""
    entered = asyncio.Event()

    async def waiter() -> None:
        entered.set()
        async with store.lock("x"):
            pytest.fail("acquired a held lock")

    async with store.lock("x"):
        task = asyncio.create_task(waiter())
        await entered.wait()
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    async with store.lock("x", wait_s=0.1):
        pass


# ------------------------------------------------------------------------------------------------- ping


async def test_ping(store: Store) -> None:
    """A working store answers ping."""
    assert await store.ping() is True


# ------------------------------------------------------------------------------------------ memory only


async def test_memory_sweep_drops_expired_entries() -> None:
    """Expired entries nobody reads again are dropped by a sweep, so the store never grows forever."""
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    await store.revoke([f"jti-{i}" for i in range(100)], clock.now + 10)
    await store.start_family("fam", "r1", clock.now + 10)
    await store.set("k", b"v", 10)
    await store.revoke(["long"], clock.now + DAY)
    assert store.size() == 103
    clock.now += 11
    assert store.sweep() == 102
    assert store.size() == 1
    assert await store.is_revoked("long")


async def test_memory_mutations_sweep_periodically() -> None:
    """Without an explicit sweep, a write after sweep_interval_s drops what expired."""
    clock = FakeClock()
    store = MemoryStore(clock=clock, sweep_interval_s=60)
    await store.revoke([f"jti-{i}" for i in range(50)], clock.now + 10)
    clock.now += 30
    await store.revoke(["a"], clock.now + 100)
    assert store.size() == 51  # interval not reached yet
    clock.now += 31
    await store.revoke(["b"], clock.now + 100)
    assert store.size() == 2


async def test_memory_reads_drop_expired_entries_lazily() -> None:
    """Reading an expired revocation or value removes it at once."""
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    await store.revoke(["jti"], clock.now + 1)
    await store.set("k", b"v", 1)
    clock.now += 2
    assert not await store.is_revoked("jti")
    assert await store.get("k") is None
    assert store.size() == 0


async def test_memory_lock_slots_are_dropped_when_free() -> None:
    """Per-name asyncio locks disappear once nobody holds or waits, also after timeouts and cancellations."""
    store = MemoryStore()
    assert await _max_concurrency([store], 10) == 1
    async with store.lock("x"):
        with pytest.raises(TimeoutError):
            async with store.lock("x", wait_s=0.01):
                pass
    task = asyncio.create_task(_max_concurrency([store], 3))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store._locks == {}


# ------------------------------------------------------------------------------------------- redis only


@pytest.fixture
async def redis_store(redis_prefix: str) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(REDIS_URL, prefix=redis_prefix)
    try:
        yield store
    finally:
        await store.aclose()


async def test_redis_every_key_is_prefixed_and_expires(
    redis_store: RedisStore, admin: aioredis.Redis, redis_prefix: str
) -> None:
    """Every key the store writes lives under its prefix and carries a TTL."""
    now = time.time()
    await redis_store.revoke(["jti"], now + 60)
    await redis_store.start_family("f1", "r1", now + 60)
    await redis_store.rotate_refresh("f1", "r1", "r2", now + 60)
    await redis_store.start_family("f2", "r1", now + 60)
    await redis_store.rotate_refresh("f2", "dead", "r2", now + 60)
    await redis_store.set("k", b"v", 60)
    async with redis_store.lock("l"):
        keys = sorted([key.decode() async for key in admin.scan_iter(match=f"{redis_prefix}*")])
        ttls = [await admin.pttl(key) for key in keys]
    names = [key.removeprefix(redis_prefix) for key in keys]
    assert names == ["fam:f1", "kv:k", "lock:l", "rev:f2", "rev:jti"]
    assert all(ttl > 0 for ttl in ttls), dict(zip(names, ttls, strict=True))


async def test_redis_revocation_ttl_matches_until(
    redis_store: RedisStore, admin: aioredis.Redis, redis_prefix: str
) -> None:
    """A revocation's key expires at `until` (PEXPIREAT), so Redis forgets it by itself."""
    await redis_store.revoke(["jti"], time.time() + 100)
    await redis_store.start_family("fam", "r1", time.time() + 200)
    assert 98_000 < await admin.pttl(f"{redis_prefix}rev:jti") <= 100_000
    assert 198_000 < await admin.pttl(f"{redis_prefix}fam:fam") <= 200_000


async def test_redis_lock_across_two_instances(redis_store: RedisStore, redis_prefix: str) -> None:
    """Two stores on separate connections (like two processes) share locks and rotations."""
    other = RedisStore.from_url(REDIS_URL, prefix=redis_prefix)
    try:
        assert await _max_concurrency([redis_store, other], 12) == 1
        async with redis_store.lock("x"):
            with pytest.raises(TimeoutError):
                async with other.lock("x", wait_s=0.1):
                    pass
        async with other.lock("x", wait_s=0.1):
            pass
        until = time.time() + 60
        await redis_store.start_family("fam", "r1", until)
        results = await asyncio.gather(
            *((redis_store, other)[i % 2].rotate_refresh("fam", "r1", f"n{i}", until) for i in range(10))
        )
        assert Counter(results) == {"rotated": 1, "replayed": 1, "revoked": 8}
        assert await other.is_revoked("fam")
    finally:
        await other.aclose()


async def test_redis_expired_holder_cannot_release_its_successor(
    redis_store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A holder that outlives ttl_s loses the lock; its release leaves the next holder's lock alone."""
    successor_in = asyncio.Event()
    successor_out = asyncio.Event()

    async def successor() -> None:
        async with redis_store.lock("x", ttl_s=5, wait_s=2):
            successor_in.set()
            await successor_out.wait()

    with caplog.at_level(logging.WARNING, logger="gateway.store.redis"):
        async with redis_store.lock("x", ttl_s=0.15):
            task = asyncio.create_task(successor())
            await asyncio.wait_for(successor_in.wait(), 2)
        with pytest.raises(TimeoutError):  # the successor still holds it
            async with redis_store.lock("x", wait_s=0.05):
                pass
    successor_out.set()
    await task
    assert "expired before release" in caplog.text


async def test_redis_ping_is_false_when_unreachable() -> None:
    """Readiness reports an unreachable Redis as False instead of raising."""
    store = RedisStore.from_url("redis://127.0.0.1:1/0")
    try:
        assert await store.ping() is False
    finally:
        await store.aclose()


def test_redis_prefix_must_not_be_empty() -> None:
    """An empty prefix would mix the gateway's keys with everything else in the database."""
    with pytest.raises(ValueError, match="prefix"):
        RedisStore.from_url(REDIS_URL, prefix="")


async def test_redis_client_must_return_bytes() -> None:
    """A client that decodes responses would corrupt binary values: refused up front."""
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses=False"):
            RedisStore(client)
    finally:
        await client.aclose()


# ---------------------------------------------------------------------------- redis: the revocation mirror
# On a private redis-server, so EXISTS can be counted (INFO commandstats) and connections killed or the
# server restarted without disturbing anyone else. "b" is the mirrored store under test; "a" plays another
# gateway instance (mirror off, so it only writes).


@pytest.fixture
def private() -> Iterator[PrivateRedis]:
    with private_redis() as server:
        yield server


@asynccontextmanager
async def _stores(
    server: PrivateRedis, protocol: int = 3, **mirror: Any
) -> AsyncIterator[tuple[RedisStore, RedisStore, aioredis.Redis]]:
    """(a, b, admin): a writer, a mirrored store (started, in sync) and a raw client, all closed afterwards."""
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    a = RedisStore(server.client(), prefix=prefix, mirror_revocations=False)
    b = RedisStore(aioredis.Redis.from_url(f"{server.url}?protocol={protocol}"), prefix=prefix, **mirror)
    admin = server.client()
    try:
        b.start()
        await _eventually(lambda: b.revocations_mirrored)
        yield a, b, admin
    finally:
        await b.aclose()
        await a.aclose()
        await admin.aclose()


async def _eventually(condition: Callable[[], bool | Awaitable[bool]], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if await result if isinstance(result, Awaitable) else result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def _mirror_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("revocation mirror")]


@pytest.mark.parametrize("protocol", [2, 3])
async def test_mirror_sees_revocations_from_another_store_without_a_round_trip(
    private: PrivateRedis, protocol: int
) -> None:
    """Existing revocations are loaded, new ones arrive by pub/sub: b answers both ways with no EXISTS.

    Under RESP2 and RESP3, whose pub/sub messages and PING answers differ.
    """
    async with _stores(private, protocol) as (a, b, admin):
        assert await admin.pubsub_numsub(f"{b.prefix}revocations") == [(f"{b.prefix}revocations".encode(), 1)]
        await a.revoke(["old"], time.time() + 60)
        late_client = aioredis.Redis.from_url(f"{private.url}?protocol={protocol}")
        late = RedisStore(late_client, prefix=b.prefix)  # starts after "old": knows it from its load
        try:
            late.start()
            await _eventually(lambda: late.revocations_mirrored)
            before = await exists_calls(admin)
            assert await late.is_revoked("old")
            assert not await late.is_revoked("never", "seen")
            await a.revoke(["new"], time.time() + 60)
            await _eventually(lambda: b.is_revoked("new"))
            await _eventually(lambda: late.is_revoked("new"))
            assert not await b.is_revoked("never")
            assert await exists_calls(admin) == before, "an answer came from Redis, not the mirror"
            # the counter does see a store without a mirror asking Redis
            assert await a.is_revoked("new")
            assert await exists_calls(admin) == before + 1
        finally:
            await late.aclose()


async def test_mirror_refuses_its_own_revocations_at_once(private: PrivateRedis) -> None:
    """A revoke through b is seen by b on the very next call, without waiting for its own message."""
    async with _stores(private) as (_, b, admin):
        before = await exists_calls(admin)
        await b.revoke(["mine"], time.time() + 60)
        assert await b.is_revoked("mine")
        assert await exists_calls(admin) == before


async def test_mirror_sees_a_family_revoked_by_a_replay(private: PrivateRedis) -> None:
    """A refresh replay on a revokes the family; b learns it, for as long as the live refresh token lives."""
    async with _stores(private) as (a, b, admin):
        await a.start_family("fam", "r1", time.time() + 60)
        assert await a.rotate_refresh("fam", "r1", "r2", time.time() + 60) == "rotated"
        before = await exists_calls(admin)
        assert await a.rotate_refresh("fam", "r1", "x", time.time() + 0.2) == "replayed"
        await _eventually(lambda: b.is_revoked("fam"))
        await asyncio.sleep(0.3)  # past the replayed token's until, not the live one's
        assert await b.is_revoked("fam")
        assert await exists_calls(admin) == before + 1  # only the one inside a's rotation script


async def test_mirror_answers_cutoffs_from_memory(private: PrivateRedis) -> None:
    """A revocation with a cutoff, loaded or published, is answered by b's mirror both ways with no EXISTS."""
    async with _stores(private) as (a, b, admin):
        now = time.time()
        await a.revoke(["sub:corp:x"], now + 60, before=now)
        late = RedisStore(private.client(), prefix=b.prefix)  # knows the first one from its load
        try:
            late.start()
            await _eventually(lambda: late.revocations_mirrored)
            await a.revoke(["sub:basic:y"], now + 60, before=now)
            await _eventually(lambda: b.is_revoked("sub:basic:y", issued_at=now - 1))
            await _eventually(lambda: late.is_revoked("sub:basic:y", issued_at=now - 1))
            before = await exists_calls(admin)
            for store in (b, late):
                assert await store.is_revoked("sub:corp:x", issued_at=now - 1)
                assert not await store.is_revoked("sub:corp:x", issued_at=now)
                assert not await store.is_revoked("sub:basic:y", issued_at=now + 1)
            assert await exists_calls(admin) == before
            # without a mirror: EXISTS, then the values only because something is revoked
            assert not await a.is_revoked("sub:corp:x", issued_at=now + 1)
            assert await a.is_revoked("sub:corp:x", issued_at=now - 1)
            assert await a.is_revoked("sub:corp:x")
            assert await exists_calls(admin) == before + 3
        finally:
            await late.aclose()


async def test_mirror_entries_expire_at_until(private: PrivateRedis) -> None:
    """A mirrored revocation is forgotten at its until, read or not (sweep), without asking Redis."""
    async with _stores(private) as (a, b, admin):
        await a.revoke(["short"], time.time() + 1.0)
        await a.revoke(["unread"], time.time() + 1.0)
        await a.revoke(["long"], time.time() + 60)
        await _eventually(lambda: b.is_revoked("short"))
        await _eventually(lambda: b.is_revoked("unread"))
        before = await exists_calls(admin)
        await asyncio.sleep(1.05)
        assert not await b.is_revoked("short")
        assert await b.is_revoked("long")
        assert await exists_calls(admin) == before
        mirror = b._mirror
        assert mirror is not None
        assert (mirror.size(), mirror.sweep(), mirror.size()) == (2, 1, 1)


async def test_mirror_falls_back_to_redis_while_unsubscribed_then_resyncs(private: PrivateRedis) -> None:
    """Pub/sub connection killed: b asks Redis (a revoke made meanwhile is seen), then resubscribes and reloads."""
    async with _stores(private, mirror_backoff_s=(0.3, 0.3)) as (a, b, admin):
        assert await admin.client_kill_filter(_type="pubsub") == 1
        await _eventually(lambda: not b.revocations_mirrored)
        await a.revoke(["during"], time.time() + 60)  # published to nobody: b is not subscribed
        before = await exists_calls(admin)
        assert await b.is_revoked("during")
        assert not await b.is_revoked("other")
        assert await exists_calls(admin) == before + 2, "a mirror that may have missed messages answered"
        await _eventually(lambda: b.revocations_mirrored)
        before = await exists_calls(admin)
        assert await b.is_revoked("during")  # from the reload
        assert not await b.is_revoked("other")
        assert await exists_calls(admin) == before


async def test_mirror_survives_a_redis_restart(private: PrivateRedis) -> None:
    """Redis restarts empty: b stops answering from memory, then resyncs with the new server."""
    async with _stores(private, mirror_backoff_s=(0.3, 0.3)) as (a, b, _):
        await a.revoke(["before"], time.time() + 60)
        await _eventually(lambda: b.is_revoked("before"))
        private.stop()
        await _eventually(lambda: not b.revocations_mirrored)
        private.start()
        admin = private.client()
        try:
            # each pooled connection fails once after a restart (from_url clients do not retry): warm up
            await _eventually(a.ping)
            await _eventually(b.ping)
            await a.revoke(["after"], time.time() + 60)  # b's mirror is still backing off: not subscribed
            before = await exists_calls(admin)
            assert await b.is_revoked("after")
            assert await exists_calls(admin) == before + 1
            await _eventually(lambda: b.revocations_mirrored)
            before = await exists_calls(admin)
            assert await b.is_revoked("after")
            assert await b.is_revoked("before"), "revocations are only ever added: b keeps what Redis lost"
            assert not await b.is_revoked("other")
            assert await exists_calls(admin) == before
        finally:
            await admin.aclose()


async def test_mirror_resyncs_after_a_message_it_cannot_read(private: PrivateRedis) -> None:
    """Anything unreadable on the channel might have been a revocation: the mirror resubscribes and reloads."""
    async with _stores(private, mirror_backoff_s=(0.05, 0.05)) as (a, b, admin):
        mirror = b._mirror
        assert mirror is not None
        assert mirror.syncs == 1
        await admin.publish(f"{b.prefix}revocations", b"not json")
        await a.revoke(["x"], time.time() + 60)
        await _eventually(lambda: mirror.syncs == 2 and b.revocations_mirrored)
        before = await exists_calls(admin)
        assert await b.is_revoked("x")
        assert await exists_calls(admin) == before


async def test_mirror_heartbeat_bounds_how_stale_it_can_be(private: PrivateRedis) -> None:
    """A connection that stays open but stops answering (CLIENT PAUSE) is out of sync within 3 heartbeats."""
    async with _stores(private, mirror_heartbeat_s=0.05, mirror_backoff_s=(0.05, 0.05)) as (_, b, admin):
        mirror = b._mirror
        assert mirror is not None
        await admin.client_pause(300)
        paused = time.monotonic()
        await _eventually(lambda: not b.revocations_mirrored, timeout_s=0.4)
        assert time.monotonic() - paused < 0.4
        await _eventually(lambda: mirror.syncs == 2 and b.revocations_mirrored)


async def test_mirror_starts_lazily_and_stops_with_the_store(private: PrivateRedis) -> None:
    """The first is_revoked asks Redis and starts the mirror; aclose leaves no task or subscription behind."""
    admin = private.client()
    store = RedisStore(private.client(), prefix="lazy:")
    try:
        assert _mirror_tasks() == []
        before = await exists_calls(admin)
        assert not await store.is_revoked("x")
        assert await exists_calls(admin) == before + 1
        assert len(_mirror_tasks()) == 1
        await _eventually(lambda: store.revocations_mirrored)
        await store.aclose()
        assert _mirror_tasks() == []
        assert not store.revocations_mirrored
        await _eventually(lambda: _numsub(admin, "lazy:revocations", 0))
    finally:
        await store.aclose()
        await admin.aclose()


async def test_mirror_can_be_switched_off(private: PrivateRedis) -> None:
    """mirror_revocations=False: no subscription, every check asks Redis (as before the mirror)."""
    admin = private.client()
    store = RedisStore(private.client(), prefix="off:", mirror_revocations=False)
    try:
        store.start()
        await store.revoke(["x"], time.time() + 60)
        before = await exists_calls(admin)
        assert await store.is_revoked("x")
        assert not await store.is_revoked("y")
        assert await exists_calls(admin) == before + 2
        assert _mirror_tasks() == []
        assert not store.revocations_mirrored
        assert await _numsub(admin, "off:revocations", 0)
    finally:
        await store.aclose()
        await admin.aclose()


async def _numsub(admin: aioredis.Redis, channel: str, expected: int) -> bool:
    return bool(await admin.pubsub_numsub(channel) == [(channel.encode(), expected)])


# -------------------------------------------------------------------------------------------- open_store


async def test_open_store_memory() -> None:
    """memory:// is the embedded store."""
    store = open_store("memory://")
    assert isinstance(store, MemoryStore)
    assert store, "an empty store is still truthy (callers write `store or open_store(url)`)"
    await store.aclose()


async def test_open_store_redis_uses_prefix(redis_prefix: str, admin: aioredis.Redis) -> None:
    """redis:// opens a RedisStore under the given prefix."""
    store = open_store(REDIS_URL, prefix=redis_prefix)
    try:
        assert isinstance(store, RedisStore)
        assert await store.ping()
        await store.set("k", b"v", 60)
        assert await admin.get(f"{redis_prefix}kv:k") == b"v"
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "redis://localhost:6379/2",
        "rediss://u:p@redis.example:6380/0",
        "unix:///tmp/r.sock",
        "redis+cluster://10.0.0.1:7000,10.0.0.2:7001,[::1]:7002",
        "rediss+cluster://u:p@redis.example/0?socket_timeout=1",
        "redis+sentinel://10.0.0.1,10.0.0.2:26380/mymaster",
        "rediss+sentinel://:p@10.0.0.1/mymaster/3?sentinel_password=s&socket_timeout=2",
    ],
)
async def test_open_store_redis_schemes(url: str) -> None:
    """redis://, rediss://, unix://, redis+cluster:// and redis+sentinel:// open a RedisStore without connecting yet."""
    store = open_store(url)
    assert isinstance(store, RedisStore)
    assert store.prefix == "smsguard:"
    await store.aclose()


async def test_open_store_cluster_and_sentinel_urls_name_their_nodes() -> None:
    """Every listed host is a seed node or a Sentinel (default ports 6379 and 26379); the Sentinel's own
    password comes from `sentinel_password`, the master's from the URL's userinfo, the database from the path."""
    cluster = open_store("redis+cluster://u:pw@10.0.0.1:7000,10.0.0.2")
    sentinel = open_store("redis+sentinel://:pw@10.0.0.3,10.0.0.4:26380/mymaster/3?sentinel_password=sp")
    assert isinstance(cluster, RedisStore)
    assert isinstance(sentinel, RedisStore)
    try:
        nodes = cluster._client.nodes_manager.startup_nodes  # type: ignore[union-attr]
        assert sorted(nodes) == ["10.0.0.1:7000", "10.0.0.2:6379"]
        assert cluster._client.get_connection_kwargs()["password"] == "pw"  # type: ignore[union-attr]
        pool = sentinel._client.connection_pool  # type: ignore[union-attr]
        assert (pool.service_name, pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (
            "mymaster",
            3,
            "pw",
        )
        sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
        assert [(s["host"], s["port"], s["password"]) for s in sentinels] == [
            ("10.0.0.3", 26379, "sp"),
            ("10.0.0.4", 26380, "sp"),
        ]
    finally:
        await cluster.aclose()
        await sentinel.aclose()


CANARY = "hunter2canary"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "unsupported store URL"),
        ("localhost:6379", "unsupported store URL"),
        (f"http://u:{CANARY}@example.com", "unsupported store URL 'http://u:\\*\\*\\*@example.com'"),
        ("memory://somewhere", "memory:// takes no host"),
        ("memory://?size=3", "memory:// takes no host"),
        (f"redis://:{CANARY}@localhost/abc", "must be a database number"),
        (f"redis://u:{CANARY}@localhost:notaport/0", "the port is not a number"),
        (f"redis://u:{CANARY}/x@localhost", "the port is not a number"),  # an unescaped / in the password
        (f"redis://u:{CANARY}@localhost:99999", "Port out of range"),
        (f"redis://localhost/0?password={CANARY}&nope=1", "unknown option 'nope'"),
        (f"redis://localhost/0?db=x&password={CANARY}", "Invalid value for 'db'"),
        (f"redis://u:{CANARY}@[::1", "Invalid IPv6 URL"),
        (f"redis+cluster://u:{CANARY}@h1:7000,,h2", "every host in the list needs a name"),
        (f"redis+cluster://u:{CANARY}@h1:7000,h2:x", "the port is not a number"),
        (f"redis+cluster://u:{CANARY}@h1:7000/1", "a cluster has one database"),
        (f"redis+cluster://h1?password={CANARY}&db=2", "a cluster has one database"),
        (f"redis+cluster://h1?password={CANARY}&nope=1", "unknown option 'nope'"),
        (f"redis+sentinel://:{CANARY}@h1:26379", "name the monitored service"),
        (f"redis+sentinel://:{CANARY}@h1:26379/mymaster/zero", "the path must be /service or /service/db"),
        (f"redis+sentinel://h1/m?sentinel_password={CANARY}&nope=1", "unknown option 'nope'"),
        (f"redis+sentinel://h1/m?nope=1&SENTINEL_PASSWORD={CANARY}", "unknown option 'nope'"),
    ],
)
def test_open_store_rejects_bad_urls_without_echoing_passwords(url: str, reason: str) -> None:
    """A bad store URL is a ValueError saying what is wrong, with any password masked."""
    with pytest.raises(ValueError, match=reason) as caught:
        open_store(url)
    assert "store URL" in str(caught.value)
    assert CANARY not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__  # no chained parser message
