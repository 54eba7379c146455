"""The revocation mirror: this process's copy of the Redis revocation set, kept current by pub/sub."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.store.base import merge_cutoff, refuses

__all__ = ["RevocationMirror"]

_log = logging.getLogger(__name__)


def _glob_escape(text: str) -> str:
    """`text` matched literally by SCAN MATCH (a prefix may contain *, ?, [ or \\)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class _MirrorError(Exception):
    """The revocation channel said something the mirror cannot vouch for: resubscribe and reload."""


class RevocationMirror:
    """This process's copy of the revocation set, kept current by pub/sub so `is_revoked` skips Redis.

    Revocations only ever grow until they expire, so a "revoked" found here is always right; a "not
    revoked" is only given while the mirror is provably complete. A session, run as one task in the loop:
    its own connection (not the pool's, no retries: redis-py's PubSub would reconnect and resubscribe
    silently, hiding the gap), SUBSCRIBE to `{prefix}revocations` and wait for the confirmation, then load
    every `{prefix}rev:*` key with its until (SCAN + MGET: a revoke either committed before the
    subscription and is loaded, or after it and is delivered), then apply messages while sending a PING
    every `heartbeat_s`. The answer to a PING comes after every message published before it, so the
    mirror is complete as of that PING: "not revoked" is answered here for 3 x `heartbeat_s` after the
    last acknowledged PING, which also bounds the damage of a connection that died silently. Any error or
    overdue PONG ends the session; until the next one (jittered backoff) has resubscribed and reloaded,
    lookups say "don't know" and the caller asks Redis, exactly as without a mirror.

    On a Redis Cluster the revocation scripts publish on the primary that owns the key's slot, and a
    message reaches other nodes over the cluster bus with no ordering against a PING answered there. So a
    session subscribes on every primary (each delivers its own publications before answering a PING sent
    after them; the copies relayed from the other nodes are harmless duplicates), SCANs every primary,
    and is complete as of the oldest of the primaries' last acknowledged PINGs. A change in the set of
    primaries the client knows (failover, a new shard) ends the session, like any lost connection. With
    Sentinel the connection goes to the current master; a failover closes it and the next session finds
    the new master.

    Entries expire at their until: a lookup drops the expired ones it meets and the session sweeps all of
    them every `sweep_interval_s`, so memory stays bounded by what Redis itself holds.
    """

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        prefix: str,
        *,
        hash_tags: bool = False,
        heartbeat_s: float = 1.0,
        backoff_s: tuple[float, float] = (0.05, 5.0),
        sweep_interval_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not heartbeat_s > 0 or not 0 < backoff_s[0] <= backoff_s[1]:
            raise ValueError("heartbeat_s and backoff_s must be positive, backoff_s as (min, max)")
        self._client = client
        self.channel = f"{prefix}revocations"
        self._key_prefix = f"{prefix}rev:".encode()
        self._match = _glob_escape(f"{prefix}rev:") + "*"
        self._hash_tags = hash_tags  # keys name ids as `{id}` (cluster mode, see RedisStore)
        self._heartbeat_s = heartbeat_s
        self._max_lag_s = 3 * heartbeat_s
        self._handshake_s = max(5.0, self._max_lag_s)  # connect + SUBSCRIBE confirmed
        self._backoff_s = backoff_s
        self._sweep_interval_s = sweep_interval_s
        self._clock = clock
        self._entries: dict[str, float] = {}  # id -> until (unix seconds)
        self._cutoffs: dict[str, float] = {}  # id -> before (unix seconds), for revocations that carry one
        self._fresh_until = -math.inf  # monotonic time until which a "not revoked" may come from memory
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._warned = False
        self._session_synced = False
        self.syncs = 0  # sessions that reached sync: 1 after start, +1 per resync
        self.on_session: Callable[[], Awaitable[None]] | None = None  # awaited after SUBSCRIBE, before the load

    @property
    def in_sync(self) -> bool:
        """True while "not revoked" is answered from memory."""
        return time.monotonic() < self._fresh_until

    def size(self) -> int:
        """Entries held, expired or not."""
        return len(self._entries)

    def start(self) -> None:
        """Run the mirror in the running loop (idempotent; never after `aclose`)."""
        self._running_here()

    def _running_here(self) -> bool:
        """Start the task if needed; False when it cannot serve this loop (closed, or another loop's)."""
        if self._closed:
            return False
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._run(), name=f"revocation mirror {self.channel}")
        return self._task.get_loop() is loop

    def lookup(self, ids: Iterable[str], issued_at: float | None = None) -> bool | None:
        """True if any id is revoked; False only while in sync; None: ask Redis.

        A revocation with a cutoff that does not refuse `issued_at` is a "not revoked" like a missing
        one (cutoffs only move later, so it too is only trusted while in sync).
        """
        now = self._clock()
        for id_ in ids:
            until = self._entries.get(id_)
            if until is not None:
                if until > now:
                    if refuses(self._cutoffs.get(id_), issued_at):
                        return True
                else:
                    del self._entries[id_]
                    self._cutoffs.pop(id_, None)
        return False if self._running_here() and self.in_sync else None

    def note(self, ids: Iterable[str], until: float, before: float | None = None) -> None:
        """Record revocations (from a message, the load, or this process's own writes), merged as Redis does."""
        if until <= self._clock():
            return
        for id_ in ids:
            current = self._entries.get(id_)
            merged = merge_cutoff(current is not None, self._cutoffs.get(id_), before)
            if merged is None:
                self._cutoffs.pop(id_, None)
            else:
                self._cutoffs[id_] = merged
            if current is None or until > current:
                self._entries[id_] = until

    def sweep(self) -> int:
        """Drop every expired entry now; returns how many went."""
        now = self._clock()
        dead = [id_ for id_, until in self._entries.items() if until <= now]
        for id_ in dead:
            del self._entries[id_]
            self._cutoffs.pop(id_, None)
        return len(dead)

    async def aclose(self) -> None:
        """Stop the task and close its connection; the mirror answers "don't know" from then on."""
        self._closed = True
        self._fresh_until = -math.inf
        task, self._task = self._task, None
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            while not task.done():  # again if a library swallowed the cancellation (it then sees _closed)
                task.cancel()
                await asyncio.wait([task], timeout=0.1)

    async def _run(self) -> None:
        """Sessions forever, with jittered exponential backoff between failed ones."""
        low, high = self._backoff_s
        delay = low
        while not self._closed:
            syncs = self.syncs
            try:
                await self._session()
            except Exception as exc:
                if self.syncs > syncs:  # lost a working subscription
                    delay = low
                    _log.warning(
                        "revocation mirror lost its subscription (%s): checking Redis until it resyncs",
                        _describe(exc),
                    )
                elif not self._warned:
                    _log.warning("revocation mirror cannot sync (%s): checking Redis meanwhile", _describe(exc))
                else:
                    _log.debug("revocation mirror still cannot sync: %s", _describe(exc))
                self._warned = True
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, high)

    async def _endpoints(self) -> list[tuple[type[AbstractConnection], dict[str, Any]]]:
        """Where to subscribe, as (connection class, its kwargs): the server, or every cluster primary."""
        if isinstance(self._client, RedisCluster):
            await self._client.initialize()
            return [(node.connection_class, dict(node.connection_kwargs)) for node in self._client.get_primaries()]
        pool = self._client.connection_pool
        return [(pool.connection_class, dict(pool.connection_kwargs))]

    def _primaries(self) -> set[str] | None:
        """The cluster primaries the client knows now (None: not a cluster)."""
        if isinstance(self._client, RedisCluster):
            return {node.name for node in self._client.get_primaries()}
        return None

    def _connection(self, connection_class: type[AbstractConnection], kwargs: dict[str, Any]) -> AbstractConnection:
        """A connection outside the pool that never retries by itself (a retry would hide a gap).

        No socket_timeout either: redis-py then wraps writes in `asyncio.wait_for`, which on Python 3.11
        can swallow a cancellation (`aclose` would hang); the session sets its own deadlines instead.
        """
        kwargs.update(
            retry=Retry(NoBackoff(), 0),
            retry_on_error=[],
            health_check_interval=0,
            socket_timeout=None,
            socket_connect_timeout=kwargs.get("socket_connect_timeout") or self._handshake_s,
        )
        conn: AbstractConnection = connection_class(**kwargs)
        set_handler = getattr(getattr(conn, "_parser", None), "set_pubsub_push_handler", None)
        if set_handler is not None:  # RESP3: the default handler logs every message at DEBUG
            set_handler(_returned)
        return conn

    async def _session(self) -> None:
        self._session_synced = False
        conns: list[AbstractConnection] = []
        try:
            async with asyncio.timeout(self._handshake_s):
                conns.extend(self._connection(*endpoint) for endpoint in await self._endpoints())
                for conn in conns:
                    await conn.connect()  # type: ignore[no-untyped-call]
                    await conn.send_command("SUBSCRIBE", self.channel, check_health=False)
                    reply = await conn.read_response(push_request=True)
                    if not (isinstance(reply, list) and reply[:1] == [b"subscribe"]):
                        raise _MirrorError("SUBSCRIBE was not confirmed")
                primaries = self._primaries()  # as of the subscriptions (initialize may have changed it)
            if self.on_session is not None:  # e.g. the epoch check: a Redis restarted empty is noticed here
                await self.on_session()
            await self._load()
            await self._listen_all(conns, primaries)
        finally:
            self._fresh_until = -math.inf
            for conn in conns:
                await conn.disconnect(nowait=True)

    async def _listen_all(self, conns: list[AbstractConnection], primaries: set[str] | None) -> None:
        """`_listen` on each connection; the first to end (by error) ends them all."""
        fresh = [-math.inf] * len(conns)
        tasks = [asyncio.ensure_future(self._listen(conn, fresh, i, primaries)) for i, conn in enumerate(conns)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises the error that ended it
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _load(self) -> None:
        """Every revocation key with its until (every primary's, on a cluster); ones that expire meanwhile
        are skipped."""
        batch: list[bytes | str] = []
        async for key in self._scan():
            batch.append(key)
            if len(batch) >= 1000:
                await self._load_batch(batch)
                batch = []
        await self._load_batch(batch)

    def _scan(self) -> AsyncIterator[bytes | str]:
        if isinstance(self._client, RedisCluster):
            return self._client.scan_iter(match=self._match, count=1000, target_nodes=RedisCluster.PRIMARIES)
        return self._client.scan_iter(match=self._match, count=1000)

    async def _load_batch(self, keys: list[bytes | str]) -> None:
        if not keys:
            return
        if isinstance(self._client, RedisCluster):
            values = await self._client.mget_nonatomic(keys)
        else:
            values = await self._client.mget(keys)
        for key, value in zip(keys, values, strict=True):
            if value is not None:
                await self._load_one(_bytes(key), _bytes(value))

    async def _load_one(self, key: bytes, value: bytes) -> None:
        name = key[len(self._key_prefix) :]
        if self._hash_tags and name.startswith(b"{") and name.endswith(b"}"):
            name = name[1:-1]
        id_ = name.decode("utf-8", "surrogateescape")
        parsed = parse_revocation(value)
        if parsed is None:  # not written by a store: keep it as long as Redis does, refusing every token
            pttl = await self._client.pttl(key)
            if pttl == -2:
                return
            parsed = (math.inf if pttl < 0 else self._clock() + pttl / 1000, None)
        self.note([id_], *parsed)

    async def _listen(
        self, conn: AbstractConnection, fresh: list[float], index: int, primaries: set[str] | None
    ) -> None:
        """Apply messages; PING every heartbeat; end the session when a PONG is overdue (or, on a cluster,
        when the primaries changed). `fresh[index]` is how long this connection vouches for the mirror."""
        pings: deque[float] = deque()  # monotonic send times of unanswered PINGs
        next_ping = next_sweep = time.monotonic()
        while not self._closed:
            now = time.monotonic()
            if now >= next_ping:
                if pings and now - pings[0] > self._max_lag_s:
                    raise _MirrorError(f"no PONG for {now - pings[0]:.1f} s")
                if primaries is not None and self._primaries() != primaries:
                    raise _MirrorError("the cluster's primaries changed")
                async with asyncio.timeout(self._max_lag_s):
                    await conn.send_command("PING", check_health=False)
                pings.append(now)
                next_ping = now + self._heartbeat_s
            if now >= next_sweep and index == 0:
                self.sweep()
                next_sweep = now + self._sweep_interval_s
            reply = await conn.read_response(timeout=max(next_ping - time.monotonic(), 0.001), push_request=True)
            if reply is not None:
                self._handle(reply, pings, fresh, index)

    def _handle(self, reply: object, pings: deque[float], fresh: list[float], index: int) -> None:
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
            self._apply(reply[2])
        elif (isinstance(reply, list) and reply[:1] == [b"pong"]) or reply == b"PONG":  # RESP2, RESP3
            if not pings:
                raise _MirrorError("PONG without PING")
            fresh[index] = pings.popleft() + self._max_lag_s
            self._fresh_until = min(fresh)
            if not self._session_synced and self._fresh_until > -math.inf:
                self._session_synced = True
                self.syncs += 1
                _log.info("revocation mirror in sync (%d revocations)", len(self._entries))
        else:
            raise _MirrorError("unexpected reply on the revocation channel")

    def _apply(self, payload: object) -> None:
        """A published revocation: {"until": unix ms, "ids": [...]}; anything else means we may have missed one."""
        try:
            data = json.loads(payload) if isinstance(payload, bytes) else None
        except ValueError:
            data = None
        until_ms = data.get("until") if isinstance(data, dict) else None
        ids = data.get("ids") if isinstance(data, dict) else None
        before_ms = data.get("before") if isinstance(data, dict) else None
        if not (isinstance(until_ms, int) and isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            raise _MirrorError("malformed message on the revocation channel")
        if before_ms is not None and (not isinstance(before_ms, int) or isinstance(before_ms, bool)):
            raise _MirrorError("malformed message on the revocation channel")
        self.note(ids, until_ms / 1000, None if before_ms is None else before_ms / 1000)


async def _returned(response: object) -> object:
    return response


def parse_revocation(value: bytes) -> tuple[float, float | None] | None:
    """A revocation key's value, `until` or `until:before` in unix ms, as seconds; None if not a store's."""
    until, colon, before = value.partition(b":")
    if not until.isdigit() or (colon and not before.isdigit()):
        return None
    return int(until) / 1000, (int(before) / 1000 if colon else None)


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _describe(exc: BaseException) -> str:
    """An error for a log line: our own messages in full, others by type (they may name hosts, not secrets)."""
    return f"{exc}" if isinstance(exc, _MirrorError) else type(exc).__name__
