"""gateway/store/pipe.py against real redis-servers: the GCRA script's answers, reloading a flushed
script, a dropped or stalled connection, credentials and database, and which clients get a pipe.

Counts and connection numbers are asserted, never timings (the CPU figures are in bench/ABUSE.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redisserver import PrivateRedis, private_redis

from gateway.store.clients import redis_client
from gateway.store.gcra import RateCheck
from gateway.store.pipe import ScriptPipe
from gateway.store.redis import RedisStore
from gateway.store.scripts import GCRA

SECOND = 1_000_000


@pytest.fixture
async def server() -> AsyncIterator[PrivateRedis]:
    with private_redis() as running:
        yield running


async def connections_received(admin: aioredis.Redis) -> int:
    stats = await admin.info("stats")
    return int(stats["total_connections_received"])


async def test_a_redis_store_charges_through_the_pipe_all_or_nothing(server: PrivateRedis) -> None:
    store = RedisStore.from_url(server.url, mirror_revocations=False)
    admin = server.client()
    try:
        assert store._gcra_pipe is not None  # a plain redis:// client gets the pipe
        burst3 = RateCheck("t|burst3", SECOND, 3)
        verdicts = [(await store.rate_limit([burst3]))[0] for _ in range(4)]
        assert [v.allowed for v in verdicts] == [True, True, True, False]
        assert [v.remaining for v in verdicts[:3]] == [2, 1, 0]
        assert verdicts[3].retry_after_s > 0
        wide = RateCheck("t|wide", SECOND, 100)
        both = await store.rate_limit([wide, burst3])
        assert [r.allowed for r in both] == [True, False]
        assert (await store.rate_limit([wide]))[0].remaining == 99  # the denied pair charged nothing
        stats = await admin.info("commandstats")
        assert "cmdstat_evalsha" in stats
    finally:
        await store.aclose()
        await admin.aclose()


async def test_concurrent_calls_each_get_their_own_answer(server: PrivateRedis) -> None:
    pipe = ScriptPipe.for_client(aioredis.Redis.from_url(server.url), GCRA)
    assert pipe is not None
    try:
        keys = [f"rl:c{i}" for i in range(40)]
        answers = await asyncio.gather(
            *(pipe([key], [SECOND, burst, 1, 1]) for key, burst in zip(keys, range(1, 41), strict=True))
        )
        assert [int(answer[0][1]) for answer in answers] == list(range(40))  # remaining = burst - 1, in order
    finally:
        await pipe.aclose()


async def test_a_flushed_script_is_loaded_again(server: PrivateRedis) -> None:
    pipe = ScriptPipe.for_client(aioredis.Redis.from_url(server.url), GCRA)
    admin = server.client()
    assert pipe is not None
    try:
        await pipe(["rl:f"], [SECOND, 5, 1, 1])
        await admin.script_flush()
        answer = await pipe(["rl:f"], [SECOND, 5, 1, 1])
        assert int(answer[0][0]) == 1
        assert int(answer[0][1]) == 3
        assert (await admin.script_exists(ScriptPipe.sha(GCRA)))[0]
    finally:
        await pipe.aclose()
        await admin.aclose()


async def test_a_connection_redis_dropped_is_replaced_without_failing_the_call(server: PrivateRedis) -> None:
    pipe = ScriptPipe.for_client(aioredis.Redis.from_url(server.url), GCRA)
    admin = server.client()
    assert pipe is not None
    try:
        await pipe(["rl:d"], [SECOND, 5, 1, 1])
        before = await connections_received(admin)
        await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        await asyncio.sleep(0.05)  # the kill reaches the pipe's socket
        answer = await pipe(["rl:d"], [SECOND, 5, 1, 1])
        assert int(answer[0][1]) == 3
        assert await connections_received(admin) == before + 1
    finally:
        await pipe.aclose()
        await admin.aclose()


async def test_a_call_that_times_out_drops_the_connection(server: PrivateRedis) -> None:
    """Redis frozen: the call's deadline passes; once it answers again the next call uses a new connection
    (never one that may still be stuck behind the unanswered command)."""
    pipe = ScriptPipe.for_client(aioredis.Redis.from_url(server.url), GCRA)
    admin = server.client()
    assert pipe is not None
    try:
        await pipe(["rl:s"], [SECOND, 5, 1, 1])
        before = await connections_received(admin)
        server.freeze()
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await pipe(["rl:s"], [SECOND, 5, 1, 1])
        finally:
            server.thaw()
        await pipe(["rl:s"], [SECOND, 5, 1, 1])
        assert await connections_received(admin) == before + 1
    finally:
        await pipe.aclose()
        await admin.aclose()


async def test_credentials_and_database_come_from_the_url(server: PrivateRedis) -> None:
    admin = server.client()
    await admin.config_set("requirepass", "s3cret-pipe")
    await admin.aclose()
    port = server.port
    good = ScriptPipe.for_client(redis_client(f"redis://:s3cret-pipe@127.0.0.1:{port}/3"), GCRA)
    bad = ScriptPipe.for_client(redis_client(f"redis://:wrong@127.0.0.1:{port}/3"), GCRA)
    authed = aioredis.Redis.from_url(f"redis://:s3cret-pipe@127.0.0.1:{port}/3")
    assert good is not None
    assert bad is not None
    try:
        await good(["rl:db3"], [SECOND, 5, 1, 1])
        assert await authed.exists("rl:db3") == 1  # in database 3
        with pytest.raises(RedisConnectionError) as refused:
            await bad(["rl:db3"], [SECOND, 5, 1, 1])
        assert "wrong" not in str(refused.value)
    finally:
        await good.aclose()
        await bad.aclose()
        await authed.aclose()


@pytest.mark.parametrize(
    ("url", "piped"),
    [
        ("redis://127.0.0.1:6379/0", True),
        ("unix:///tmp/redis.sock?db=1", True),
        ("rediss://127.0.0.1:6380/0", False),
        ("redis+sentinel://127.0.0.1:26379/mymaster", False),
        ("redis+cluster://127.0.0.1:7000", False),
    ],
)
def test_only_plain_servers_get_a_pipe(url: str, piped: bool) -> None:
    """TLS, Sentinel and Cluster keep redis-py's own path (no connection is made here)."""
    assert (ScriptPipe.for_client(redis_client(url), GCRA) is not None) is piped


async def test_replies_split_anywhere_are_read_whole() -> None:
    """Replies arriving a byte at a time (or several in one read) resolve their waiters in order."""
    from gateway.store.pipe import _Link

    class Transport:
        def write(self, data: bytes) -> None:
            pass

    link = _Link()
    link.connection_made(Transport())  # type: ignore[arg-type]
    waiters = [link.send(b"x") for _ in range(3)]
    await asyncio.sleep(0)  # the batch is written
    replies = b"*2\r\n*4\r\n:1\r\n:9\r\n:1\r\n:0\r\n*0\r\n" + b"-NOSCRIPT no script\r\n" + b"+OK\r\n"
    for i in range(len(replies)):
        link.data_received(replies[i : i + 1])
    assert waiters[0].result() == [[1, 9, 1, 0], []]
    assert str(waiters[1].result()).startswith("NOSCRIPT")
    assert waiters[2].result() == b"OK"
    assert link.in_flight == 0
