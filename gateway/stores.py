"""The Store: the little shared state a gateway needs, in memory or in Redis.

It holds revocations (token and family ids, each until its token would have expired anyway), refresh-token
families (which refresh token is the live one), cached opaque values with a TTL (upstream tokens),
single-flight locks and counters. Everything expires, so the store never grows forever.

`MemoryStore` is the embedded default (one process). `RedisStore` shares the same state across processes
and hosts; its rotation is a Lua script, so two gateways rotating the same refresh token cannot both win.
Callers pass ids and hashes as key names, never secrets; values are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = ["MemoryStore", "RedisStore", "RotateResult", "Store", "open_store"]

RotateResult = Literal["rotated", "replayed", "revoked"]

_log = logging.getLogger(__name__)
_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})


@runtime_checkable
class Store(Protocol):
    """What the gateway needs from shared state; see `MemoryStore` and `RedisStore`."""

    async def revoke(self, ids: Iterable[str], until: float) -> None:
        """Mark token or family ids revoked until the unix time `until` (their exp); then forget them."""
        ...

    async def is_revoked(self, *ids: str) -> bool:
        """True if any of `ids` is revoked."""
        ...

    async def start_family(self, family: str, jti: str, until: float) -> None:
        """Begin a refresh-token family whose live refresh token is `jti`."""
        ...

    async def rotate_refresh(self, family: str, presented: str, new: str, until: float) -> RotateResult:
        """Atomically swap the live refresh token `presented` for `new`; a dead one presented revokes the family."""
        ...

    async def get(self, key: str) -> bytes | None:
        """The cached value, or None when absent or expired."""
        ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Cache `value` for `ttl_s` seconds (> 0)."""
        ...

    async def delete(self, key: str) -> None:
        """Drop a cached value (no error when absent)."""
        ...

    def lock(self, name: str, *, ttl_s: float = 10.0, wait_s: float = 10.0) -> AbstractAsyncContextManager[None]:
        """Single flight: one holder per name; TimeoutError after `wait_s`."""
        ...

    async def incr(self, key: str, ttl_s: float) -> int:
        """Increment a counter that expires `ttl_s` after its first increment."""
        ...

    async def ping(self) -> bool:
        """True when the store answers (readiness)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def _check_ttl(ttl_s: float) -> None:
    if not ttl_s > 0:  # also rejects NaN
        raise ValueError(f"ttl_s must be a positive number of seconds, not {ttl_s!r}")


# ---------------------------------------------------------------------------------------------- memory


@dataclass(slots=True)
class _LockSlot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holders + waiters; the slot is dropped when it falls to zero


class MemoryStore:
    """The embedded store: dicts with expiry timestamps, checked on access and swept now and then.

    `clock` gives unix time (inject a fake one in tests). Every mutation sweeps all expired entries once
    `sweep_interval_s` of clock time has passed since the last sweep, so entries nobody reads again are
    still dropped. Operations never await, so each one (notably `rotate_refresh`) is atomic on the loop.
    Locks are per-process asyncio locks; `ttl_s` is ignored (a holder cannot vanish without releasing).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time, sweep_interval_s: float = 60.0) -> None:
        self._clock = clock
        self._sweep_interval_s = sweep_interval_s
        self._next_sweep = clock() + sweep_interval_s
        self._revoked: dict[str, float] = {}  # id -> until
        self._families: dict[str, tuple[str, float]] = {}  # family -> (live jti, until)
        self._values: dict[str, tuple[bytes, float]] = {}  # key -> (value, expires)
        self._counters: dict[str, tuple[int, float]] = {}  # key -> (count, expires)
        self._locks: dict[str, _LockSlot] = {}

    def size(self) -> int:
        """Entries held, expired or not (locks excluded): what a sweep can shrink.

        Not `__len__`: an empty store must stay truthy (`store or open_store(...)`).
        """
        return len(self._revoked) + len(self._families) + len(self._values) + len(self._counters)

    def sweep(self) -> int:
        """Drop every expired entry now; returns how many went."""
        now = self._clock()
        self._next_sweep = now + self._sweep_interval_s
        dropped = 0
        for table in (self._revoked, self._families, self._values, self._counters):
            dead = [k for k, v in table.items() if _expiry(v) <= now]
            for k in dead:
                del table[k]
            dropped += len(dead)
        return dropped

    def _now(self) -> float:
        """The clock, sweeping first when the interval has passed (called by every mutation)."""
        now = self._clock()
        if now >= self._next_sweep:
            self.sweep()
        return now

    async def revoke(self, ids: Iterable[str], until: float) -> None:
        now = self._now()
        if until <= now:
            return  # already expired: nothing left to revoke
        for id_ in ids:
            self._revoked[id_] = max(until, self._revoked.get(id_, 0.0))

    async def is_revoked(self, *ids: str) -> bool:
        return any(self._is_revoked(id_, self._clock()) for id_ in ids)

    def _is_revoked(self, id_: str, now: float) -> bool:
        until = self._revoked.get(id_)
        if until is None:
            return False
        if until <= now:
            del self._revoked[id_]
            return False
        return True

    async def start_family(self, family: str, jti: str, until: float) -> None:
        if until > self._now():
            self._families[family] = (jti, until)
        else:
            self._families.pop(family, None)

    async def rotate_refresh(self, family: str, presented: str, new: str, until: float) -> RotateResult:
        now = self._now()
        if self._is_revoked(family, now):
            return "revoked"
        entry = self._families.get(family)
        if entry is None or entry[1] <= now:
            self._families.pop(family, None)
            return "revoked"
        live, live_until = entry
        if live == presented:
            if until > now:
                self._families[family] = (new, until)
            else:
                del self._families[family]
            return "rotated"
        del self._families[family]
        self._revoked[family] = max(until, live_until)  # outlive every token the family handed out
        return "replayed"

    async def get(self, key: str) -> bytes | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._values[key]
            return None
        return entry[0]

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        _check_ttl(ttl_s)
        self._values[key] = (value, self._now() + ttl_s)

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)

    def lock(self, name: str, *, ttl_s: float = 10.0, wait_s: float = 10.0) -> AbstractAsyncContextManager[None]:
        _check_ttl(ttl_s)
        return self._hold(name, wait_s)

    @contextlib.asynccontextmanager
    async def _hold(self, name: str, wait_s: float) -> AsyncIterator[None]:
        slot = self._locks.get(name)
        if slot is None:
            slot = self._locks[name] = _LockSlot()
        slot.users += 1
        try:
            try:
                async with asyncio.timeout(wait_s):
                    await slot.lock.acquire()
            except TimeoutError:
                raise TimeoutError(f"lock {name!r} still held after {wait_s} s") from None
            try:
                yield
            finally:
                slot.lock.release()
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._locks[name]

    async def incr(self, key: str, ttl_s: float) -> int:
        _check_ttl(ttl_s)
        now = self._now()
        count, expires = self._counters.get(key, (0, 0.0))
        if expires <= now:
            count, expires = 0, now + ttl_s
        self._counters[key] = (count + 1, expires)
        return count + 1

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


def _expiry(entry: float | tuple[object, float]) -> float:
    return entry if isinstance(entry, float | int) else entry[1]


# ----------------------------------------------------------------------------------------------- redis

# Revocations store their `until` (unix ms) as the value so a later, shorter revoke never shortens one.
_REVOKE = """
local until_ms = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  local current = tonumber(redis.call('GET', key) or '0') or 0
  if until_ms > current then
    redis.call('SET', key, ARGV[1])
    redis.call('PEXPIREAT', key, ARGV[1])
  end
end
return 0
"""

# KEYS: family live-token key, family revocation key. ARGV: presented jti, new jti, until (unix ms).
_ROTATE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 'revoked' end
local live = redis.call('GET', KEYS[1])
if not live then return 'revoked' end
if live == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('PEXPIREAT', KEYS[1], ARGV[3])
  return 'rotated'
end
local until_ms = tonumber(ARGV[3])
local pttl = redis.call('PTTL', KEYS[1])
if pttl > 0 then
  local t = redis.call('TIME')
  local live_until = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + pttl
  if live_until > until_ms then until_ms = live_until end
end
local s = string.format('%d', until_ms)
redis.call('SET', KEYS[2], s)
redis.call('PEXPIREAT', KEYS[2], s)
redis.call('DEL', KEYS[1])
return 'replayed'
"""

_INCR = """
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_ROTATE_RESULTS: Mapping[bytes, RotateResult] = MappingProxyType(
    {b"rotated": "rotated", b"replayed": "replayed", b"revoked": "revoked"}
)


def _ms(seconds: float) -> int:
    """Whole milliseconds, at least 1 (Redis rejects a zero PX)."""
    return max(1, math.ceil(seconds * 1000))


def _unix_ms(until: float) -> str:
    return str(int(until * 1000))


class RedisStore:
    """The shared store on Redis: every key under `prefix`, every key with a TTL.

    Keys: `{prefix}rev:{id}`, `{prefix}fam:{family}`, `{prefix}kv:{key}`, `{prefix}ctr:{key}`,
    `{prefix}lock:{name}`. Locks are `SET NX PX` with a random token, released by a compare-and-delete
    script, so a holder that outlived `ttl_s` cannot release its successor's lock; waiters poll with
    jittered backoff. The store owns `client` and closes it in `aclose`.
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str = "smsguard:", ping_timeout_s: float = 2.0) -> None:
        if not prefix:
            raise ValueError("prefix must not be empty: every key lives under it")
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("the Redis client must use decode_responses=False: values are bytes")
        self._client = client
        self._prefix = prefix
        self._ping_timeout_s = ping_timeout_s
        self._revoke = client.register_script(_REVOKE)
        self._rotate = client.register_script(_ROTATE)
        self._incr = client.register_script(_INCR)
        self._unlock = client.register_script(_UNLOCK)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "smsguard:") -> RedisStore:
        """A store on a new client for `redis://`, `rediss://` or `unix://` (connects lazily)."""
        return cls(aioredis.Redis.from_url(url, decode_responses=False), prefix=prefix)

    @property
    def prefix(self) -> str:
        return self._prefix

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}:{name}"

    async def revoke(self, ids: Iterable[str], until: float) -> None:
        keys = [self._key("rev", id_) for id_ in ids]
        if keys:
            await self._revoke(keys=keys, args=[_unix_ms(until)])

    async def is_revoked(self, *ids: str) -> bool:
        if not ids:
            return False
        found = await self._client.exists(*(self._key("rev", id_) for id_ in ids))
        return bool(found)

    async def start_family(self, family: str, jti: str, until: float) -> None:
        key = self._key("fam", family)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(key, jti)
            pipe.pexpireat(key, int(until * 1000))
            await pipe.execute()

    async def rotate_refresh(self, family: str, presented: str, new: str, until: float) -> RotateResult:
        keys = [self._key("fam", family), self._key("rev", family)]
        raw = await self._rotate(keys=keys, args=[presented, new, _unix_ms(until)])
        return _ROTATE_RESULTS[raw]

    async def get(self, key: str) -> bytes | None:
        value = await self._client.get(self._key("kv", key))
        return value.encode() if isinstance(value, str) else value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        _check_ttl(ttl_s)
        await self._client.set(self._key("kv", key), value, px=_ms(ttl_s))

    async def delete(self, key: str) -> None:
        await self._client.delete(self._key("kv", key))

    def lock(self, name: str, *, ttl_s: float = 10.0, wait_s: float = 10.0) -> AbstractAsyncContextManager[None]:
        _check_ttl(ttl_s)
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

    async def incr(self, key: str, ttl_s: float) -> int:
        _check_ttl(ttl_s)
        return int(await self._incr(keys=[self._key("ctr", key)], args=[_ms(ttl_s)]))

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self._ping_timeout_s):
                return bool(await self._client.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def aclose(self) -> None:
        await self._client.aclose()


# -------------------------------------------------------------------------------------------- open_store


def open_store(url: str, *, prefix: str = "smsguard:") -> Store:
    """The store a URL names: `memory://`, or `redis://`, `rediss://`, `unix://` (a RedisStore).

    Checked eagerly (no connection is made) so a typo fails at startup: a ValueError whose message
    shows the URL with any password masked.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"invalid store URL {_redact(url)!r}: {_reason(exc)}") from None
    scheme = parts.scheme.lower()
    if scheme == "memory":
        if parts.netloc or parts.path or parts.query or parts.fragment:
            raise ValueError(f"invalid store URL {_redact(url)!r}: memory:// takes no host, path or options")
        return MemoryStore()
    if scheme not in _REDIS_SCHEMES:
        raise ValueError(
            f"unsupported store URL {_redact(url)!r}: use memory://, redis://host:6379/0, rediss://... or unix:///path"
        )
    try:
        store = RedisStore.from_url(url, prefix=prefix)
        # builds a connection object without connecting: rejects unknown ?options now, not at first use
        store._client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid store URL {_redact(url)!r}: {_reason(exc)}") from None
    if scheme != "unix" and parts.path not in ("", "/") and not _DB_PATH.fullmatch(parts.path):
        raise ValueError(f"invalid store URL {_redact(url)!r}: the path must be a database number such as /0")
    return store


_DB_PATH = re.compile(r"/[0-9]+")
_PASSWORD_PARAM = re.compile(r"(?i)((?:^|[?&;])password=)[^&;#]*")


def _redact(url: str) -> str:
    """The URL with its userinfo password and any `password=` option masked, even when malformed."""
    masked = _PASSWORD_PARAM.sub(r"\1***", url)
    scheme, _, rest = masked.partition(":")
    if "@" not in rest:
        return masked
    userinfo, _, hostinfo = rest.rpartition("@")
    bare = userinfo.lstrip("/")
    user, colon, _ = bare.partition(":")
    return f"{scheme}:{userinfo[: len(userinfo) - len(bare)]}{user}{':***' if colon else ''}@{hostinfo}"


def _reason(exc: Exception) -> str:
    """The parser's complaint, unless it might quote part of the URL (a password, say)."""
    message = str(exc)
    if isinstance(exc, TypeError) and "unexpected keyword argument" in message:
        option = message.rpartition("argument")[2].strip()
        return f"unknown option {option}"
    if message.startswith("Port could not be cast"):
        return "the port is not a number"
    if message.startswith(("Port out of range", "Invalid IPv6 URL", "Invalid value for '")):
        return message
    return "malformed URL"


if TYPE_CHECKING:  # mypy proves both implementations satisfy the protocol

    def _implements_store(memory: MemoryStore, redis_store: RedisStore) -> tuple[Store, Store]:
        return memory, redis_store
