"""`RedisStore`: the shared store on Redis, for several processes and hosts.

Its rotation is a Lua script (`gateway.store.scripts`), so two gateways rotating the same refresh token
cannot both win. It checks revocations (every request does) against a local mirror kept current by pub/sub
(`gateway.store.mirror`), falling back to Redis whenever the mirror might have missed something.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisError

from gateway.store.base import Epoch, check_ttl, refuses
from gateway.store.clients import redis_client
from gateway.store.gcra import US, RateCheck, RateResult
from gateway.store.mirror import RevocationMirror, parse_revocation
from gateway.store.pipe import ScriptPipe
from gateway.store.scripts import GCRA, REVOKE, ROTATE, UNLOCK

if TYPE_CHECKING:
    from gateway.store.base import RotateResult

__all__ = ["RedisStore"]

_log = logging.getLogger(__name__)

_ROTATE_RESULTS: Mapping[bytes, RotateResult] = MappingProxyType({b"rotated": "rotated", b"revoked": "revoked"})


def _ms(seconds: float) -> int:
    """Whole milliseconds, at least 1 (Redis rejects a zero PX)."""
    return max(1, math.ceil(seconds * 1000))


def _unix_ms(until: float) -> str:
    return str(int(until * 1000))


class RedisStore:
    """The shared store on Redis: every key under `prefix`, every key with a TTL.

    Keys: `{prefix}rev:{id}`, `{prefix}fam:{family}`, `{prefix}kv:{key}`,
    `{prefix}lock:{name}`; on a Redis Cluster the name is a hash tag, `{prefix}rev:{{id}}`, so a family's
    live key and its revocation key share a slot (the rotation script needs both) while different ids
    spread over the cluster. A revoke of several ids runs one script per slot there: each id's revocation
    is atomic, the set of them is not (a failure part-way leaves some revoked; retrying is safe).
    Locks are `SET NX PX` with a random token, released by a compare-and-delete
    script, so a holder that outlived `ttl_s` cannot release its successor's lock; waiters poll with
    jittered backoff. The store owns `client` and closes it in `aclose`.

    Revocations are also published on `{prefix}revocations` by the scripts that write them, and (unless
    `mirror_revocations=False`) a local mirror fed by that channel answers `is_revoked` without a round
    trip while it is in sync, falling back to `EXISTS` otherwise (see `RevocationMirror`). It starts on
    first use or with `start()` and stops in `aclose`.
    """

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        *,
        prefix: str = "smsguard:",
        ping_timeout_s: float = 2.0,
        mirror_revocations: bool = True,
        mirror_heartbeat_s: float = 1.0,
        mirror_backoff_s: tuple[float, float] = (0.05, 5.0),
    ) -> None:
        if not prefix:
            raise ValueError("prefix must not be empty: every key lives under it")
        if _connection_kwargs(client).get("decode_responses"):
            raise ValueError("the Redis client must use decode_responses=False: values are bytes")
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._prefix = prefix
        self._ping_timeout_s = ping_timeout_s
        self._revoke = client.register_script(REVOKE)
        self._rotate = client.register_script(ROTATE)
        self._unlock = client.register_script(UNLOCK)
        self._gcra = client.register_script(GCRA)
        self._gcra_pipe = ScriptPipe.for_client(client, GCRA)  # None: TLS, Sentinel or Cluster use redis-py
        self._channel = f"{prefix}revocations"
        self._mirror = (
            RevocationMirror(
                client, prefix, heartbeat_s=mirror_heartbeat_s, backoff_s=mirror_backoff_s, hash_tags=self._cluster
            )
            if mirror_revocations
            else None
        )

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "smsguard:", mirror_revocations: bool = True) -> RedisStore:
        """A store on a new client (connects lazily) for one server (`redis://`, `rediss://`, `unix://`), a
        cluster (`redis+cluster://`) or a Sentinel-watched master (`redis+sentinel://`): see `clients`."""
        return cls(redis_client(url), prefix=prefix, mirror_revocations=mirror_revocations)

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def revocations_mirrored(self) -> bool:
        """True while `is_revoked` answers from the local mirror (subscribed, loaded, heartbeat current)."""
        return self._mirror is not None and self._mirror.in_sync

    def start(self) -> None:
        """Start syncing the revocation mirror in the running loop, so the first requests need not wait.

        Optional (the first `is_revoked` starts it too) and idempotent; the app's lifespan calls it.
        """
        if self._mirror is not None:
            self._mirror.start()

    def _key(self, kind: str, name: str) -> str:
        if self._cluster:
            return f"{self._prefix}{kind}:{{{name}}}"
        return f"{self._prefix}{kind}:{name}"

    def _by_slot(self, keys: list[str]) -> list[list[int]]:
        """Indexes of `keys` grouped so each group's keys share a cluster slot (one group on one server)."""
        if not self._cluster:
            return [list(range(len(keys)))]
        groups: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            groups.setdefault(key_slot(key.encode()), []).append(index)
        return list(groups.values())

    async def _mget(self, keys: list[str]) -> list[bytes | str | None]:
        if isinstance(self._client, RedisCluster):
            return await self._client.mget_nonatomic(keys)
        return await self._client.mget(keys)

    async def revoke(self, ids: Iterable[str], until: float, *, before: float | None = None) -> None:
        listed = list(ids)
        if not listed:
            return
        until_ms = _unix_ms(until)
        before_ms = "" if before is None else _unix_ms(before)
        keys = [self._key("rev", id_) for id_ in listed]
        await asyncio.gather(
            *(
                self._revoke(
                    keys=[keys[i] for i in group],
                    args=[until_ms, self._channel, before_ms, *(listed[i] for i in group)],
                )
                for group in self._by_slot(keys)
            )
        )
        if self._mirror is not None:  # this process refuses them at once, before its own message arrives
            self._mirror.note(listed, int(until_ms) / 1000, None if before is None else int(before_ms) / 1000)

    async def is_revoked(self, *ids: str, issued_at: float | None = None) -> bool:
        if not ids:
            return False
        if self._mirror is not None:
            known = self._mirror.lookup(ids, issued_at)
            if known is not None:
                return known
        keys = [self._key("rev", id_) for id_ in ids]
        found = await self._client.exists(*keys)
        if not found or issued_at is None:
            return bool(found)
        # something is revoked: a cutoff may still let this token through (values are read only now)
        for value in await self._mget(keys):
            if value is not None:
                parsed = parse_revocation(value if isinstance(value, bytes) else value.encode())
                if parsed is None or refuses(parsed[1], issued_at):
                    return True
        return False

    async def start_family(self, family: str, jti: str, until: float) -> None:
        # one command (an until in the past deletes the key), so no MULTI: cluster pipelines lack it
        await self._client.set(self._key("fam", family), jti, pxat=int(until * 1000))

    async def rotate_refresh(self, family: str, presented: str, new: str, until: float) -> RotateResult:
        keys = [self._key("fam", family), self._key("rev", family)]
        raw = await self._rotate(keys=keys, args=[presented, new, _unix_ms(until), self._channel, family])
        if isinstance(raw, list):  # [b"replayed", until ms]: the family was revoked
            if self._mirror is not None:
                self._mirror.note([family], int(raw[1]) / 1000)
            return "replayed"
        return _ROTATE_RESULTS[raw]

    async def rate_limit(self, checks: Sequence[RateCheck]) -> list[RateResult]:
        """GCRA buckets `{prefix}rl:{key}`: one script call for all of them on one server.

        On a Redis Cluster each key is its own hash tag (buckets spread over the cluster), so the keys are
        grouped by slot and each group is one atomic call; when one group denies, the groups that charged
        are refunded by a second call (all or nothing, but not isolated: a concurrent request may see the
        charge in between). Most requests have one or two limits.
        """
        if not checks:
            return []
        keys = [self._key("rl", check.key) for check in checks]
        groups = self._by_slot(keys)
        if len(groups) == 1:  # one server: no task per group
            answers = [await self._gcra_call(keys, checks, groups[0], 1)]
        else:
            answers = await asyncio.gather(*(self._gcra_call(keys, checks, group, 1) for group in groups))
        results: list[RateResult] = [RateResult(True, 0, 0.0)] * len(checks)
        for group, answer in zip(groups, answers, strict=True):
            for index, row in zip(group, answer, strict=True):
                allowed, remaining, reset_us, retry_us = (int(value) for value in row)
                results[index] = RateResult(bool(allowed), remaining, reset_us / US, retry_us / US)
        if len(groups) > 1 and not all(result.allowed for result in results):
            charged = [group for group in groups if all(results[i].allowed for i in group)]
            await asyncio.gather(*(self._gcra_call(keys, checks, group, 0) for group in charged))
        return results

    async def _gcra_call(self, keys: list[str], checks: Sequence[RateCheck], group: list[int], mode: int) -> Any:
        args: list[int] = []
        for index in group:
            check = checks[index]
            args += [check.interval_us, check.burst, check.cost]
        if self._gcra_pipe is not None:
            return await self._gcra_pipe([keys[i] for i in group], [*args, mode])
        return await self._gcra(keys=[keys[i] for i in group], args=[*args, mode])

    async def get(self, key: str) -> bytes | None:
        value = await self._client.get(self._key("kv", key))
        return value.encode() if isinstance(value, str) else value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        check_ttl(ttl_s)
        await self._client.set(self._key("kv", key), value, px=_ms(ttl_s))

    async def delete(self, key: str) -> None:
        await self._client.delete(self._key("kv", key))

    def lock(self, name: str, *, ttl_s: float = 10.0, wait_s: float = 10.0) -> AbstractAsyncContextManager[None]:
        check_ttl(ttl_s)
        return self._hold(name, ttl_s, wait_s)

    @contextlib.asynccontextmanager
    async def _hold(self, name: str, ttl_s: float, wait_s: float) -> AsyncIterator[None]:
        key = self._key("lock", name)
        token = secrets.token_hex(16)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        delay = 0.005
        while True:
            try:
                acquired = await self._client.set(key, token, nx=True, px=_ms(ttl_s))
            except BaseException:
                # the SET may have landed before we were interrupted: give back what may be ours
                with contextlib.suppress(RedisError, OSError):
                    await self._unlock(keys=[key], args=[token])
                raise
            if acquired:
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"lock {name!r} still held after {wait_s} s")
            await asyncio.sleep(min(remaining, delay * random.uniform(0.5, 1.0)))
            delay = min(delay * 2, 0.1)
        try:
            yield
        finally:
            try:
                released = await self._unlock(keys=[key], args=[token])
            except (RedisError, OSError) as exc:
                _log.warning("could not release lock %r (it expires in %s s): %s", name, ttl_s, type(exc).__name__)
            else:
                if not released:
                    _log.warning("lock %r expired before release: hold it for less than ttl_s=%s", name, ttl_s)

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self._ping_timeout_s):
                return bool(await self._client.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def aclose(self) -> None:
        if self._gcra_pipe is not None:
            await self._gcra_pipe.aclose()
        if self._mirror is not None:
            await self._mirror.aclose()
        await self._client.aclose()
        pool = getattr(self._client, "connection_pool", None)
        if isinstance(pool, SentinelConnectionPool):  # the Sentinels' own clients came with the master's
            for sentinel in pool.sentinel_manager.sentinels:
                await sentinel.aclose()

    # -- epochs and faults (issue 14): used by gateway.store.guard.StoreGuard -------------------------

    def bound_calls(self, timeout_s: float) -> None:
        """Give every pooled command a socket deadline and at most one immediate retry, on a fresh
        connection and only after a connection error (a pooled connection Redis closed when it restarted).

        Call before the first command. The mirror's connection keeps its own deadlines.
        """
        from redis.asyncio.retry import Retry as AsyncRetry
        from redis.exceptions import ConnectionError as RedisConnectionError

        self._client.set_retry(AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
        kwargs = _connection_kwargs(self._client)
        assert isinstance(kwargs, dict)
        kwargs.update(socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        if self._gcra_pipe is not None:
            self._gcra_pipe.connect_timeout_s = timeout_s

    @property
    def epoch_key(self) -> str:
        """`{prefix}epoch`: the store's epoch record (no TTL)."""
        return f"{self._prefix}epoch"

    async def ensure_epoch(self) -> Epoch:
        """The epoch record, written now with SET NX when missing (another instance's, if it won)."""
        raw = await self._client.get(self.epoch_key)
        if raw is None:
            await self._client.set(self.epoch_key, Epoch.new().dump(), nx=True)
            raw = await self._client.get(self.epoch_key)
        epoch = None if raw is None else Epoch.load(raw)
        if epoch is None:
            raise RedisError(f"the epoch record {self.epoch_key} is missing or malformed")
        return epoch

    async def is_revoked_with_epoch(self, ids: Iterable[str], issued_at: float | None) -> tuple[bool, bytes | None]:
        """`is_revoked` for the fallback path: the revocation keys and the epoch record in one round trip
        (a pipeline), so a Redis restarted empty is seen as such before it answers "not revoked"."""
        keys = [self._key("rev", id_) for id_ in ids]
        if self._cluster:  # keys on several shards: no single round trip; the epoch is read after them
            values = await self._mget(keys)
            epoch = await self._client.get(self.epoch_key)
        else:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.mget(keys)
                pipe.get(self.epoch_key)
                values, epoch = await pipe.execute()
        revoked = False
        for value in values:
            if value is not None:
                parsed = parse_revocation(value if isinstance(value, bytes) else value.encode())
                if parsed is None or refuses(parsed[1], issued_at):
                    revoked = True
                    break
        return revoked, (epoch.encode() if isinstance(epoch, str) else epoch)

    def mirror_lookup(self, ids: Iterable[str], issued_at: float | None) -> bool | None:
        """The mirror's answer without a round trip: True (revoked), False (in sync, not revoked), None."""
        if self._mirror is None:
            return None
        return self._mirror.lookup(ids, issued_at)

    def on_resubscribe(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Await `callback` each time the mirror has subscribed again, before it loads and trusts anything."""
        if self._mirror is not None:
            self._mirror.on_session = callback

    async def persistence(self) -> str:
        """How the connected Redis persists: `aof`, `rdb`, `aof+rdb`, `none`, or `unknown` (not permitted)."""
        try:
            info = await self._client.info("persistence")
        except RedisError:
            return "unknown"
        aof = str(info.get("aof_enabled", "")) == "1"
        try:
            save = await self._client.config_get("save")
        except RedisError:
            return "aof" if aof else "unknown"
        values = {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in dict(save).items()}
        value = values.get("save") or b""
        rdb = bool(value.decode() if isinstance(value, bytes) else str(value))
        return "aof+rdb" if aof and rdb else "aof" if aof else "rdb" if rdb else "none"


def _connection_kwargs(client: aioredis.Redis | RedisCluster) -> Mapping[str, object]:
    if isinstance(client, RedisCluster):
        return client.get_connection_kwargs()
    return client.connection_pool.connection_kwargs
