"""One Lua script on one Redis server, called over a dedicated connection with automatic pipelining.

Rate limits call the GCRA script on every limited request. Through redis-py a call costs ~100 µs of
CPU (connection-pool checkout, generic argument encoding, the response parser, the retry wrapper), half
a proxied request; the round trip itself is ~12 µs. `ScriptPipe` keeps only what that one call needs:

- one connection of its own (an asyncio Protocol), opened on first use and again after it drops, with
  the pool's credentials (AUTH) and database (SELECT);
- `EVALSHA` with the command's bytes prepared once: per call only the keys and numbers are encoded;
- every call made in the same event-loop iteration goes out in ONE write (replies come back in order,
  usually in one read): under load, concurrent requests share the syscalls; a caller that gives up on
  a reply (its deadline) drops the connection, so nothing waits behind a stuck one;
- `NOSCRIPT` (a restarted or flushed Redis) re-sends that call as `EVAL` with the script, which loads it.

It speaks RESP2 for the replies this script gives (integers, arrays, errors) and the handshake's
(`+OK`). Errors are redis-py's own (`ConnectionError`, `ResponseError`), so callers treat them like
any other Redis failure; a call's deadline is its caller's (a cancelled call's late reply is dropped).
`for_client` builds one for a plain `redis://` or `unix://` client and returns None for anything else
(TLS, Sentinel, Cluster, credential providers): those keep redis-py's path.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

__all__ = ["ScriptPipe"]

_CRLF = b"\r\n"


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(_bulk(part) for part in parts)


class _Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


def _parse(buffer: bytes, pos: int) -> tuple[Any, int]:
    """One RESP2 reply at `pos`: (value, position after it). Errors are returned as ResponseError values.

    Iterative (a stack of open arrays), not recursive: the GCRA reply is an array of arrays of integers,
    and this runs once per rate-limited request."""
    stack: list[tuple[list[Any], int]] = []  # open arrays: (items so far, items wanted)
    while True:
        end = buffer.find(_CRLF, pos)
        if end < 0:
            raise _Incomplete
        kind, line, pos = buffer[pos], buffer[pos + 1 : end], end + 2
        value: Any
        if kind == 58:  # ':' integer
            value = int(line)
        elif kind == 42:  # '*' array
            count = int(line)
            if count > 0:
                stack.append(([], count))
                continue
            value = [] if count == 0 else None
        elif kind == 36:  # '$' bulk string
            size = int(line)
            if size >= 0:
                if len(buffer) < pos + size + 2:
                    raise _Incomplete
                value, pos = buffer[pos : pos + size], pos + size + 2
            else:
                value = None
        elif kind == 43:  # '+' simple string
            value = line
        elif kind == 45:  # '-' error
            value = ResponseError(line.decode("utf-8", "replace"))
        else:
            raise RedisConnectionError(f"unexpected reply type {bytes([kind])!r} from Redis")
        while stack:
            items, wanted = stack[-1]
            items.append(value)
            if len(items) < wanted:
                break
            stack.pop()
            value = items
        else:
            return value, pos


class _Link(asyncio.Protocol):
    """The connection: replies matched to waiters in order; the commands asked for in one loop iteration
    leave in one write at its end. (Holding commands back while a batch is in flight, to batch more,
    measured slower: the added round trip costs the gateway more than the writes it saves.)"""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.lost: BaseException | None = None
        self.in_flight = 0  # commands written whose replies have not arrived
        self._buffer = b""
        self._out: list[bytes] = []
        self._flush_scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue `command`; its reply resolves the returned future (written at the end of this iteration)."""
        if self.lost is not None or self.transport is None:
            raise RedisConnectionError("the Redis connection is closed")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        self.waiters.append(waiter)
        self._out.append(command)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return waiter

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.transport is not None and self.lost is None:
            out, self._out = self._out, []
            self.in_flight += len(out)
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        pos = 0
        try:
            while pos < len(buffer):
                value, pos = _parse(buffer, pos)
                if not self.waiters:
                    raise RedisConnectionError("Redis sent a reply nobody asked for")
                waiter = self.waiters.popleft()
                self.in_flight -= 1
                if not waiter.done():  # a caller whose deadline passed has gone: drop its reply
                    waiter.set_result(value)
        except _Incomplete:
            pass
        except (RedisConnectionError, ValueError) as exc:
            self._fail(RedisConnectionError(f"unreadable reply from Redis: {exc}"))
            if self.transport is not None:
                self.transport.abort()
            return
        self._buffer = buffer[pos:]

    def stalled(self) -> None:
        """A caller gave up on a reply that never came: the connection may be stuck, so drop it (the next
        call opens a new one) rather than queue every later command behind a reply that may never come."""
        if self.transport is not None:
            self.transport.abort()
        self._fail(RedisConnectionError("no reply from Redis within the deadline"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(
            RedisConnectionError(f"the Redis connection was lost: {exc}" if exc else "Redis closed the connection")
        )

    def _fail(self, error: BaseException) -> None:
        self.lost = self.lost or error
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class ScriptPipe:
    """Calls one Lua script (`await pipe(keys, args)`) on one Redis server over a pipelined connection."""

    def __init__(
        self,
        script: str,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        connect_timeout_s: float | None = None,
    ) -> None:
        self._script = script.encode()
        sha = self.sha(script).encode()
        self._evalsha = (_bulk(b"EVALSHA") + _bulk(sha), _bulk(b"EVAL") + _bulk(self._script))
        self._address = (host, port, path)
        self._handshake: list[tuple[str, bytes]] = []
        if password is not None:
            auth = (username.encode(), password.encode()) if username else (password.encode(),)
            self._handshake.append(("AUTH", _command(b"AUTH", *auth)))
        if db:
            self._handshake.append(("SELECT", _command(b"SELECT", str(db).encode())))
        self.connect_timeout_s = connect_timeout_s
        self._link: _Link | None = None
        self._connecting: asyncio.Task[_Link] | None = None

    @staticmethod
    def sha(script: str) -> str:
        """The script's SHA1, as EVALSHA and SCRIPT EXISTS name it."""
        return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()

    @classmethod
    def for_client(cls, client: object, script: str) -> ScriptPipe | None:
        """A pipe to the server of a plain (no TLS, no Sentinel, no Cluster) redis-py asyncio client, or None."""
        if not isinstance(client, aioredis.Redis):
            return None
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        if pool.connection_class not in (Connection, UnixDomainSocketConnection) or kwargs.get("credential_provider"):
            return None
        return cls(
            script,
            host=str(kwargs.get("host", "127.0.0.1")),
            port=int(kwargs.get("port", 6379)),
            path=kwargs.get("path") if pool.connection_class is UnixDomainSocketConnection else None,
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            db=int(kwargs.get("db", 0) or 0),
            connect_timeout_s=kwargs.get("socket_connect_timeout"),
        )

    async def __call__(self, keys: Sequence[str], args: Sequence[int]) -> Any:
        """The script's reply for `keys` and `args`; redis-py's ConnectionError or ResponseError on failure."""
        tail = b"".join(_bulk(key.encode()) for key in keys) + b"".join(_bulk(b"%d" % arg) for arg in args)
        head = b"*%d\r\n" % (3 + len(keys) + len(args))
        numkeys = _bulk(b"%d" % len(keys))
        for retry in (False, True):
            link, fresh = await self._open()
            try:
                reply = await self._ask(link, head + self._evalsha[0] + numkeys + tail)
                if isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT"):
                    reply = await self._ask(link, head + self._evalsha[1] + numkeys + tail)  # EVAL loads it
            except RedisConnectionError:
                if fresh or retry:
                    raise
                continue  # a kept connection Redis dropped (a restart): once more on a new one, as redis-py does
            if isinstance(reply, ResponseError):
                raise reply
            return reply
        raise AssertionError("unreachable")

    @staticmethod
    async def _ask(link: _Link, command: bytes) -> Any:
        waiter = link.send(command)
        try:
            return await waiter
        except asyncio.CancelledError:
            if link.in_flight:  # written (or queued behind a write), never answered
                link.stalled()
            raise

    async def _open(self) -> tuple[_Link, bool]:
        """The connection, and whether it was opened for this call."""
        link = self._link
        if link is not None and link.lost is None:
            return link, False
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.shield(self._connecting), True
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from None

    async def _connect(self) -> _Link:
        loop = asyncio.get_running_loop()
        host, port, path = self._address
        async with asyncio.timeout(self.connect_timeout_s):
            if path is not None:
                _, link = await loop.create_unix_connection(_Link, path)
            else:
                _, link = await loop.create_connection(_Link, host, port)
            for name, command in self._handshake:
                reply = await link.send(command)
                if isinstance(reply, ResponseError):
                    link.close()
                    raise RedisConnectionError(f"Redis refused the connection's {name}: {reply}")
        self._link = link
        return link

    async def aclose(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._link is not None:
            self._link.close()
            self._link = None
