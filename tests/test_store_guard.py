"""gateway.store.guard and the store epoch: deadlines, the circuit breaker, what is answered while the store
is down, epochs and resets, the bounded memory store, and the CLI refusing processes that share nothing.

The breaker is driven by a fake shared store (calls that hang, fail or answer on command), so nothing here
depends on timing except the issue's bound: a call never takes longer than the deadline + 1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from fakes import RecordingUpstream, Reply
from gatewayconfig import GatewayConfig

from gateway.auth.jwt import Principal
from gateway.config.settings import Secret, TokenExchangeSettings, parse_settings, read_credentials
from gateway.errors import StoreUnavailable, Unauthorized
from gateway.proxy.exchange import TokenExchange
from gateway.store import Epoch, MemoryStore, StoreGuard
from gateway.tokens.service import TokenService

TIMEOUT_S = 0.2
BOUND_S = TIMEOUT_S + 1.0  # the issue's bound for any one call
SECRET = "canary-guard-token-secret-" + "g" * 16


class FakeShared:
    """A shared store on command: `mode` is ok | hang | fail; counts the calls that reached it."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.epoch = Epoch("e1", 1_700_000_000.0)
        self.fallback_epoch: bytes | None = self.epoch.dump()
        self.mirror: dict[str, bool | None] = {}
        self.calls = 0
        self.values: dict[str, bytes] = {}
        self.resubscribed: Callable[[], Awaitable[None]] | None = None

    async def _io(self) -> None:
        self.calls += 1
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "fail":
            raise ConnectionRefusedError("refused")

    # SharedBackend
    def bound_calls(self, timeout_s: float) -> None:
        pass

    async def ensure_epoch(self) -> Epoch:
        await self._io()
        return self.epoch

    async def is_revoked_with_epoch(self, ids: Iterable[str], issued_at: float | None) -> tuple[bool, bytes | None]:
        await self._io()
        return any(i == "revoked-in-redis" for i in ids), self.fallback_epoch

    def mirror_lookup(self, ids: Iterable[str], issued_at: float | None) -> bool | None:
        answers = [self.mirror.get(i) for i in ids]
        return True if True in answers else (False if answers and all(a is False for a in answers) else None)

    def on_resubscribe(self, callback: Callable[[], Awaitable[None]]) -> None:
        self.resubscribed = callback

    async def persistence(self) -> str:
        await self._io()
        return "aof"

    def start(self) -> None:
        pass

    # Store
    async def revoke(self, ids: Iterable[str], until: float, *, before: float | None = None) -> None:
        await self._io()

    async def is_revoked(self, *ids: str, issued_at: float | None = None) -> bool:
        await self._io()
        return False

    async def start_family(self, family: str, jti: str, until: float) -> None:
        await self._io()

    async def rotate_refresh(self, family: str, presented: str, new: str, until: float) -> Any:
        await self._io()
        return "rotated"

    async def get(self, key: str) -> bytes | None:
        await self._io()
        return self.values.get(key)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._io()
        self.values[key] = value

    async def delete(self, key: str) -> None:
        await self._io()
        self.values.pop(key, None)

    def lock(self, name: str, *, ttl_s: float = 10.0, wait_s: float = 10.0) -> Any:
        @contextlib.asynccontextmanager
        async def hold() -> AsyncIterator[None]:
            await self._io()
            yield

        return hold()

    async def ping(self) -> bool:
        await self._io()
        return True

    async def aclose(self) -> None:
        pass


class Events:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.states: list[bool] = []
        self.resets = 0

    def store_error(self, reason: str) -> None:
        self.errors.append(reason)

    def store_state(self, up: bool) -> None:
        self.states.append(up)

    def store_reset(self) -> None:
        self.resets += 1


class Lines:
    """A logger that keeps (level, event) pairs."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append(("info", event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.lines.append(("warning", event, kw))

    def events(self) -> list[str]:
        return [event for _, event, _ in self.lines]


@contextlib.asynccontextmanager
async def guarded(heartbeat_s: float = 3600.0) -> AsyncIterator[tuple[StoreGuard, FakeShared, Events, Lines]]:
    fake, events, lines = FakeShared(), Events(), Lines()
    guard = StoreGuard(fake, timeout_s=TIMEOUT_S, heartbeat_s=heartbeat_s, log=lines, events=events)  # type: ignore[arg-type]
    await guard.start()
    try:
        yield guard, fake, events, lines
    finally:
        await guard.aclose()


async def timed(call: Awaitable[Any]) -> tuple[float, BaseException | None]:
    start = time.monotonic()
    try:
        await call
    except Exception as exc:
        return time.monotonic() - start, exc
    return time.monotonic() - start, None


async def test_a_frozen_store_costs_one_deadline_then_nothing() -> None:
    """Frozen: calls in flight end with 503 within the deadline; later ones are refused without reaching it."""
    async with guarded() as (guard, fake, events, lines):
        assert guard.epoch == fake.epoch
        fake.mode = "hang"
        results = await asyncio.gather(*(timed(guard.get(f"k{i}")) for i in range(5)))
        assert all(isinstance(exc, StoreUnavailable) for _, exc in results)
        assert max(elapsed for elapsed, _ in results) < BOUND_S
        reached = fake.calls
        for call in (guard.get("k"), guard.set("k", b"v", 5), guard.revoke(["x"], time.time() + 60)):
            elapsed, exc = await timed(call)
            assert isinstance(exc, StoreUnavailable)
            assert elapsed < BOUND_S
        async with contextlib.AsyncExitStack() as stack:
            with pytest.raises(StoreUnavailable):
                await stack.enter_async_context(guard.lock("login:x"))
        assert fake.calls == reached, "an open breaker must not wait on the store again"
        assert not guard.up
        assert not await guard.ping()
        assert lines.events() == ["store.epoch", "store.unavailable"]
        assert events.states == [False]
        assert "timeout" in events.errors
        assert "unavailable" in events.errors
        assert guard.health()["up"] is False


async def test_the_heartbeat_closes_the_breaker_with_one_line_each_way() -> None:
    """Down (refused connections) → one store.unavailable; back → one store.available; calls reach it again."""
    async with guarded(heartbeat_s=0.02) as (guard, fake, events, lines):
        fake.mode = "fail"
        for _ in range(20):
            with pytest.raises(StoreUnavailable):
                await guard.get("k")
        await asyncio.sleep(0.2)  # several failed probes
        fake.mode = "ok"
        for _ in range(200):
            if guard.up:
                break
            await asyncio.sleep(0.02)
        assert guard.up
        assert await guard.get("k") is None
        assert lines.events().count("store.unavailable") == 1
        assert lines.events().count("store.available") == 1
        assert events.states == [False, True]


async def test_while_down_only_a_known_revocation_is_answered() -> None:
    """Down: the mirror's "revoked" is still a 401; its "not revoked" is not trusted (503)."""
    async with guarded() as (guard, fake, _, _):
        fake.mirror = {"gone": True, "fine": False}
        assert await guard.is_revoked("fine") is False  # up and in sync: the mirror answers
        fake.mode = "fail"
        with pytest.raises(StoreUnavailable):
            await guard.get("k")
        assert await guard.is_revoked("gone", "other") is True
        with pytest.raises(StoreUnavailable):
            await guard.is_revoked("fine")
        with pytest.raises(StoreUnavailable):
            await guard.is_revoked("unknown")


async def test_the_fallback_lookup_sees_a_reset_in_the_same_round_trip() -> None:
    """Mirror not in sync, Redis answers "not revoked" but its epoch is gone → the reset is adopted first."""
    async with guarded() as (guard, fake, events, lines):
        calls = fake.calls
        assert await guard.is_revoked("t1") is False
        assert fake.calls == calls + 1  # revocations and epoch: one round trip
        fake.fallback_epoch = None  # restarted empty
        fake.epoch = Epoch("e2", 1_700_000_100.0)  # what SET NX writes (or another instance did)
        assert await guard.is_revoked("t1") is False
        assert guard.epoch == fake.epoch
        assert guard.resets == 1
        assert events.resets == 1
        assert [e for e in lines.events() if e == "store.reset"] == ["store.reset"]
        assert await guard.is_revoked("revoked-in-redis") is True


async def test_the_heartbeat_and_the_mirror_resubscription_check_the_epoch() -> None:
    """An epoch changed behind the gateway's back is adopted by the next heartbeat or resubscription, once."""
    async with guarded(heartbeat_s=0.02) as (guard, fake, events, lines):
        fake.epoch = Epoch("e3", 1_700_000_200.0)
        for _ in range(200):
            if guard.epoch == fake.epoch:
                break
            await asyncio.sleep(0.02)
        assert guard.epoch == fake.epoch
        assert fake.resubscribed is not None
        await fake.resubscribed()
        assert events.resets == 1
        assert lines.events().count("store.reset") == 1


async def test_a_store_down_at_start_is_a_503_not_a_crash() -> None:
    """Started with the store down: no epoch yet, minting and bearer checks answer 503; startup logs once."""
    fake, lines = FakeShared(), Lines()
    fake.mode = "fail"
    guard = StoreGuard(fake, timeout_s=TIMEOUT_S, heartbeat_s=3600, log=lines)  # type: ignore[arg-type]
    await guard.start()
    try:
        assert guard.epoch is None
        assert not guard.up
        with pytest.raises(StoreUnavailable):
            await guard.confirm_epoch()
        assert lines.events() == ["store.unavailable"]
    finally:
        await guard.aclose()


async def test_the_token_exchange_logs_in_alone_while_the_store_is_down() -> None:
    """Exchange cache on a store that is down: the process logs in itself, the request is sent (no 500)."""
    reply = Reply(200, headers=[("Content-Type", "application/json")], body=b'{"token": "abc"}')
    async with guarded() as (guard, fake, _, _), RecordingUpstream(reply) as server:
        fake.mode = "fail"
        settings = read_credentials(
            {
                "type": "token_exchange",
                "login": {"url": server.url + "/login", "json": {"api_key": Secret("k")}},
                "token_field": "token",
                "expiry": {"ttl_s": 600},
            }
        )
        assert isinstance(settings, TokenExchangeSettings)
        injector = TokenExchange(settings, name="prov", store=guard)
        try:
            token = await injector.token()
        finally:
            await injector.aclose()
        assert token.value == "abc"
        assert injector.logins == 1


# ---------------------------------------------------------------------------------------- epochs and tokens

TOKENS = parse_settings(
    f"tokens:\n  enabled: true\n  keys:\n    - {{kid: k1, algorithm: HS256, secret: {SECRET}}}\n", env={}
).tokens


def access(pair: Any, claims: dict[str, Any]) -> Principal:
    return Principal(
        "alice", frozenset({"messages:send"}), "self", pair.access.jti, pair.access.expires_at, claims, "access"
    )


async def test_a_token_of_another_epoch_or_of_none_is_refused() -> None:
    """Minted in one store epoch: accepted there; 401 store_reset in another (a new process) or without `ep`."""
    first = TokenService(TOKENS, MemoryStore(), ["messages:send"])
    second = TokenService(TOKENS, MemoryStore(), ["messages:send"])
    pair = await first.issue("alice", ["messages:send"], 600, caller=None)
    import jwt

    claims = jwt.decode(pair.access.token, options={"verify_signature": False})
    assert claims["ep"] == first.epochs.current_epoch().id  # type: ignore[union-attr]
    assert not await first.is_revoked(access(pair, claims))
    for service, presented in ((second, claims), (first, {k: v for k, v in claims.items() if k != "ep"})):
        with pytest.raises(Unauthorized, match="token store was reset") as refused:
            await service.is_revoked(access(pair, presented))
        assert refused.value.code == "invalid_token:store_reset"
        assert 'error="invalid_token"' in refused.value.headers["www-authenticate"]


# ------------------------------------------------------------------------------------------ memory cap


async def test_the_memory_store_is_bounded_and_never_evicts_a_revocation(caplog: pytest.LogCaptureFixture) -> None:
    """At the cap the soonest-expiring families go first, then records; revocations stay; one warning per episode."""
    now = [1_800_000_000.0]
    store = MemoryStore(clock=lambda: now[0], max_records=100)
    await store.revoke([f"rev-{i}" for i in range(500)], now[0] + 10)  # not counted, never evicted
    with caplog.at_level(logging.WARNING, logger="gateway.store.memory"):
        for i in range(100):
            await store.start_family(f"fam-{i}", "jti", now[0] + 1000 + i)
        for i in range(300):
            await store.set(f"tok:{i}", b"{}", 5000 + i)
    assert store.size() - 500 <= 100
    assert store.evicted >= 300
    assert not [f for f in range(100) if f"fam-{f}" in store._families]  # families went first
    assert await store.get("tok:299") == b"{}"  # the latest-expiring record is kept
    assert all([await store.is_revoked(f"rev-{i}") for i in range(500)])
    assert len([r for r in caplog.records if "cap" in r.getMessage()]) == 1
    now[0] += 6000  # everything expired: the next episode is logged again
    store.sweep()
    with caplog.at_level(logging.WARNING, logger="gateway.store.memory"):
        for i in range(150):
            await store.set(f"again:{i}", b"{}", 60)
    assert len([r for r in caplog.records if "cap" in r.getMessage()]) == 2


def test_the_record_cap_comes_from_config(tmp_path: Path) -> None:
    """store_max_records and store_timeout_s are read (defaults 100000 and 0.5) and reach the memory store."""
    from gateway.app import create_app

    defaults = GatewayConfig(tmp_path, "http://127.0.0.1:9/3rdparty/v1").settings()
    assert (defaults.store_max_records, defaults.store_timeout_s) == (100_000, 0.5)
    settings = GatewayConfig(
        tmp_path, "http://127.0.0.1:9/3rdparty/v1", extra="store_max_records: 7\nstore_timeout_s: 0.25\n"
    ).settings()
    gateway = create_app(settings)
    assert isinstance(gateway.store.inner, MemoryStore)
    assert gateway.store.inner.max_records == 7
    assert gateway.store.timeout_s == 0.25


# ------------------------------------------------------------------------------------------------ the CLI


def run_cli(cfg: GatewayConfig, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env={**os.environ, **cfg.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_workers_with_a_memory_store_refuse_to_start(tmp_path: Path) -> None:
    """`serve --workers 2` with memory:// exits 2 with one line naming the fix, before anything else is printed."""
    cfg = GatewayConfig(tmp_path, "http://127.0.0.1:9/3rdparty/v1")
    path = cfg.write()
    result = run_cli(cfg, "serve", "--config", str(path), "--workers", "2", "--port", "0")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "store: redis://" in lines[0]
    assert "--workers 2" in lines[0]
    issued = run_cli(cfg, "token", "issue", "--config", str(path), "--sub", "svc", "--scope", "messages:send")
    assert issued.returncode == 1
    assert issued.stdout == ""
    assert "store: redis://" in issued.stderr
