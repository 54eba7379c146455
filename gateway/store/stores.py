"""The Store: the little shared state a gateway needs, in memory or in Redis.

It holds revocations (token and family ids, each until its token would have expired anyway; a revocation
may carry a cutoff, `before`, and then refuses only tokens issued before it: subject revocation), refresh-token
families (which refresh token is the live one), cached opaque values with a TTL (upstream tokens),
single-flight locks and counters. Everything expires, so the store never grows forever.

`MemoryStore` is the embedded default (one process). `RedisStore` shares the same state across processes
and hosts; its rotation is a Lua script, so two gateways rotating the same refresh token cannot both win.
It checks revocations (every request does) against a local mirror kept current by pub/sub, falling back
to Redis whenever the mirror might have missed something.
Callers pass ids and hashes as key names, never secrets; values are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import re
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

__all__ = ["MemoryStore", "RedisStore", "RotateResult", "Store", "open_store"]

RotateResult = Literal["rotated", "replayed", "revoked"]

_log = logging.getLogger(__name__)
_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})


@runtime_checkable
class Store(Protocol):
    """What the gateway needs from shared state; see `MemoryStore` and `RedisStore`."""

    async def revoke(self, ids: Iterable[str], until: float, *, before: float | None = None) -> None:
        """Mark token or family ids revoked until the unix time `until` (their exp); then forget them.

        With `before` (a unix time) the revocation refuses only tokens issued before it (`is_revoked`'s
        `issued_at`): a subject revocation. Revocations of one id merge: the later `until`, the later
        `before`, and one without `before` beats one with it.
        """
        ...

    async def is_revoked(self, *ids: str, issued_at: float | None = None) -> bool:
        """True if any of `ids` is revoked (for a revocation with `before`: if `issued_at` is before it, or unknown)."""
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
        self._cutoffs: dict[str, float] = {}  # id -> before, for revocations that carry one
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
        for id_ in [id_ for id_ in self._cutoffs if id_ not in self._revoked]:
            del self._cutoffs[id_]
        return dropped

    def _now(self) -> float:
        """The clock, sweeping first when the interval has passed (called by every mutation)."""
        now = self._clock()
        if now >= self._next_sweep:
            self.sweep()
        return now

    async def revoke(self, ids: Iterable[str], until: float, *, before: float | None = None) -> None:
        now = self._now()
        if until <= now:
            return  # already expired: nothing left to revoke
        for id_ in ids:
            current = self._revoked.get(id_)
            known = current is not None and current > now
            self._revoked[id_] = max(until, current) if known and current is not None else until
            merged = _merge_cutoff(known, self._cutoffs.get(id_), before)
            if merged is None:
                self._cutoffs.pop(id_, None)
            else:
                self._cutoffs[id_] = merged

    async def is_revoked(self, *ids: str, issued_at: float | None = None) -> bool:
        now = self._clock()
        return any(self._is_revoked(id_, now, issued_at) for id_ in ids)

    def _is_revoked(self, id_: str, now: float, issued_at: float | None) -> bool:
        until = self._revoked.get(id_)
        if until is None:
            return False
        if until <= now:
            del self._revoked[id_]
            self._cutoffs.pop(id_, None)
            return False
        return _refuses(self._cutoffs.get(id_), issued_at)

    async def start_family(self, family: str, jti: str, until: float) -> None:
        if until > self._now():
            self._families[family] = (jti, until)
        else:
            self._families.pop(family, None)

    async def rotate_refresh(self, family: str, presented: str, new: str, until: float) -> RotateResult:
        now = self._now()
        if self._is_revoked(family, now, None):
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
        self._cutoffs.pop(family, None)
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


def _merge_cutoff(known: bool, current: float | None, before: float | None) -> float | None:
    """The cutoff of an id revoked again: none (refuse every token) beats any cutoff, else the later one.

    `known` says whether the id was revoked already (then `current` None means "no cutoff").
    """
    if before is None or (known and current is None):
        return None
    return before if current is None else max(current, before)


def _refuses(cutoff: float | None, issued_at: float | None) -> bool:
    """Whether a live revocation with this cutoff refuses a token issued at `issued_at` (None: unknown)."""
    return cutoff is None or issued_at is None or issued_at < cutoff


# ----------------------------------------------------------------------------------------------- redis

# Revocations store their `until` (unix ms) as the value so a later, shorter revoke never shortens one;
# one with a cutoff stores `until:before` (both unix ms) and refuses only tokens issued before `before`.
# Merging follows `_merge_cutoff`: the later until, the later cutoff, no cutoff beats any.
# KEYS: revocation keys. ARGV: until (unix ms), the revocations channel, before (unix ms, or '' for none),
# then each key's id. What changed is published in the same script, atomically with the write: no mirror
# can see one without the other (mirrors merge the message the same way).
_REVOKE = """
local until_ms = tonumber(ARGV[1])
local before = tonumber(ARGV[3])
local changed = {}
for i, key in ipairs(KEYS) do
  local raw = redis.call('GET', key)
  local cur_until, cur_before, known = 0, nil, false
  if raw then
    local u, b = string.match(raw, '^(%d+):?(%d*)$')
    if u then
      known = true
      cur_until = tonumber(u)
      if b ~= '' then cur_before = tonumber(b) end
    end
  end
  local new_until = math.max(cur_until, until_ms)
  local new_before = nil
  if before and not (known and not cur_before) then
    new_before = before
    if cur_before and cur_before > before then new_before = cur_before end
  end
  if new_until ~= cur_until or not known or new_before ~= cur_before then
    local value = string.format('%d', new_until)
    if new_before then value = value .. ':' .. string.format('%d', new_before) end
    redis.call('SET', key, value)
    redis.call('PEXPIREAT', key, string.format('%d', new_until))
    changed[#changed + 1] = ARGV[i + 3]
  end
end
if #changed > 0 then
  local extra = ''
  if before then extra = ',"before":' .. ARGV[3] end
  redis.call('PUBLISH', ARGV[2], '{"until":' .. ARGV[1] .. extra .. ',"ids":' .. cjson.encode(changed) .. '}')
end
return 0
"""

# KEYS: family live-token key, family revocation key. ARGV: presented jti, new jti, until (unix ms),
# the revocations channel, the family id. A replay publishes the family's revocation and returns its until.
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
redis.call('PUBLISH', ARGV[4], '{"until":' .. s .. ',"ids":' .. cjson.encode({ARGV[5]}) .. '}')
return {'replayed', s}
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

_ROTATE_RESULTS: Mapping[bytes, RotateResult] = MappingProxyType({b"rotated": "rotated", b"revoked": "revoked"})


def _ms(seconds: float) -> int:
    """Whole milliseconds, at least 1 (Redis rejects a zero PX)."""
    return max(1, math.ceil(seconds * 1000))


def _unix_ms(until: float) -> str:
    return str(int(until * 1000))


def _glob_escape(text: str) -> str:
    """`text` matched literally by SCAN MATCH (a prefix may contain *, ?, [ or \\)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class _MirrorError(Exception):
    """The revocation channel said something the mirror cannot vouch for: resubscribe and reload."""


class _RevocationMirror:
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

    Entries expire at their until: a lookup drops the expired ones it meets and the session sweeps all of
    them every `sweep_interval_s`, so memory stays bounded by what Redis itself holds.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        *,
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
                    if _refuses(self._cutoffs.get(id_), issued_at):
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
            merged = _merge_cutoff(current is not None, self._cutoffs.get(id_), before)
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

    def _connection(self) -> AbstractConnection:
        """A connection outside the pool that never retries by itself (a retry would hide a gap).

        No socket_timeout either: redis-py then wraps writes in `asyncio.wait_for`, which on Python 3.11
        can swallow a cancellation (`aclose` would hang); the session sets its own deadlines instead.
        """
        pool = self._client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        kwargs.update(
            retry=Retry(NoBackoff(), 0),
            retry_on_error=[],
            health_check_interval=0,
            socket_timeout=None,
            socket_connect_timeout=kwargs.get("socket_connect_timeout") or self._handshake_s,
        )
        conn: AbstractConnection = pool.connection_class(**kwargs)
        set_handler = getattr(getattr(conn, "_parser", None), "set_pubsub_push_handler", None)
        if set_handler is not None:  # RESP3: the default handler logs every message at DEBUG
            set_handler(_returned)
        return conn

    async def _session(self) -> None:
        conn = self._connection()
        self._session_synced = False
        try:
            async with asyncio.timeout(self._handshake_s):
                await conn.connect()  # type: ignore[no-untyped-call]
                await conn.send_command("SUBSCRIBE", self.channel, check_health=False)
                reply = await conn.read_response(push_request=True)
            if not (isinstance(reply, list) and reply[:1] == [b"subscribe"]):
                raise _MirrorError("SUBSCRIBE was not confirmed")
            await self._load()
            await self._listen(conn)
        finally:
            self._fresh_until = -math.inf
            await conn.disconnect(nowait=True)

    async def _load(self) -> None:
        """Every revocation key with its until; ones that expire meanwhile are skipped."""
        cursor = 0
        while True:
            cursor, keys = await self._client.scan(cursor, match=self._match, count=1000)
            if keys:
                values = await self._client.mget(keys)
                for key, value in zip(keys, values, strict=True):
                    if value is not None:
                        await self._load_one(_bytes(key), _bytes(value))
            if cursor == 0:
                return

    async def _load_one(self, key: bytes, value: bytes) -> None:
        id_ = key[len(self._key_prefix) :].decode("utf-8", "surrogateescape")
        parsed = _parse_revocation(value)
        if parsed is None:  # not written by a store: keep it as long as Redis does, refusing every token
            pttl = await self._client.pttl(key)
            if pttl == -2:
                return
            parsed = (math.inf if pttl < 0 else self._clock() + pttl / 1000, None)
        self.note([id_], *parsed)

    async def _listen(self, conn: AbstractConnection) -> None:
        """Apply messages; PING every heartbeat; end the session when a PONG is overdue."""
        pings: deque[float] = deque()  # monotonic send times of unanswered PINGs
        next_ping = next_sweep = time.monotonic()
        while not self._closed:
            now = time.monotonic()
            if now >= next_ping:
                if pings and now - pings[0] > self._max_lag_s:
                    raise _MirrorError(f"no PONG for {now - pings[0]:.1f} s")
                async with asyncio.timeout(self._max_lag_s):
                    await conn.send_command("PING", check_health=False)
                pings.append(now)
                next_ping = now + self._heartbeat_s
            if now >= next_sweep:
                self.sweep()
                next_sweep = now + self._sweep_interval_s
            reply = await conn.read_response(timeout=max(next_ping - time.monotonic(), 0.001), push_request=True)
            if reply is not None:
                self._handle(reply, pings)

    def _handle(self, reply: object, pings: deque[float]) -> None:
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
            self._apply(reply[2])
        elif (isinstance(reply, list) and reply[:1] == [b"pong"]) or reply == b"PONG":  # RESP2, RESP3
            if not pings:
                raise _MirrorError("PONG without PING")
            self._fresh_until = pings.popleft() + self._max_lag_s
            if not self._session_synced:
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


def _parse_revocation(value: bytes) -> tuple[float, float | None] | None:
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


class RedisStore:
    """The shared store on Redis: every key under `prefix`, every key with a TTL.

    Keys: `{prefix}rev:{id}`, `{prefix}fam:{family}`, `{prefix}kv:{key}`, `{prefix}ctr:{key}`,
    `{prefix}lock:{name}`. Locks are `SET NX PX` with a random token, released by a compare-and-delete
    script, so a holder that outlived `ttl_s` cannot release its successor's lock; waiters poll with
    jittered backoff. The store owns `client` and closes it in `aclose`.

    Revocations are also published on `{prefix}revocations` by the scripts that write them, and (unless
    `mirror_revocations=False`) a local mirror fed by that channel answers `is_revoked` without a round
    trip while it is in sync, falling back to `EXISTS` otherwise (see `_RevocationMirror`). It starts on
    first use or with `start()` and stops in `aclose`.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "smsguard:",
        ping_timeout_s: float = 2.0,
        mirror_revocations: bool = True,
        mirror_heartbeat_s: float = 1.0,
        mirror_backoff_s: tuple[float, float] = (0.05, 5.0),
    ) -> None:
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
        self._channel = f"{prefix}revocations"
        self._mirror = (
            _RevocationMirror(client, prefix, heartbeat_s=mirror_heartbeat_s, backoff_s=mirror_backoff_s)
            if mirror_revocations
            else None
        )

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "smsguard:", mirror_revocations: bool = True) -> RedisStore:
        """A store on a new client for `redis://`, `rediss://` or `unix://` (connects lazily)."""
        client = aioredis.Redis.from_url(url, decode_responses=False)
        return cls(client, prefix=prefix, mirror_revocations=mirror_revocations)

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
        return f"{self._prefix}{kind}:{name}"

    async def revoke(self, ids: Iterable[str], until: float, *, before: float | None = None) -> None:
        listed = list(ids)
        if not listed:
            return
        until_ms = _unix_ms(until)
        before_ms = "" if before is None else _unix_ms(before)
        keys = [self._key("rev", id_) for id_ in listed]
        await self._revoke(keys=keys, args=[until_ms, self._channel, before_ms, *listed])
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
        for value in await self._client.mget(keys):
            if value is not None:
                parsed = _parse_revocation(_bytes(value))
                if parsed is None or _refuses(parsed[1], issued_at):
                    return True
        return False

    async def start_family(self, family: str, jti: str, until: float) -> None:
        key = self._key("fam", family)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(key, jti)
            pipe.pexpireat(key, int(until * 1000))
            await pipe.execute()

    async def rotate_refresh(self, family: str, presented: str, new: str, until: float) -> RotateResult:
        keys = [self._key("fam", family), self._key("rev", family)]
        raw = await self._rotate(keys=keys, args=[presented, new, _unix_ms(until), self._channel, family])
        if isinstance(raw, list):  # [b"replayed", until ms]: the family was revoked
            if self._mirror is not None:
                self._mirror.note([family], int(raw[1]) / 1000)
            return "replayed"
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
        if self._mirror is not None:
            await self._mirror.aclose()
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
