"""`StoreGuard`: every store call with a deadline, a circuit breaker, and the store's epoch.

    request ── StoreGuard ──┬─ up:   the call, bounded by `timeout_s`  ── error/deadline ─► down (one log line)
                            └─ down: StoreUnavailable (503) at once, except a revocation the mirror knows
    heartbeat task ── every `heartbeat_s`: GET the epoch (bounded) ── fails ─► down; succeeds ─► up (one line)

The gateway wraps its store in one (`Gateway` does it for any store it is given), so a Redis that is down,
frozen or unreachable costs a request at most `timeout_s`, and after the first failure nothing at all:
requests that need the store get a 503 with `Retry-After` (`gateway.errors.StoreUnavailable`) until the
heartbeat, which keeps probing, sees it answer again. In-flight calls are expired the moment the breaker
opens. Logged on the given logger: `store.unavailable` once when it goes, `store.available` once when it
is back, `store.epoch` at the first contact and `store.reset` when the epoch changed (once per change).

What is answered while the store is down (or, for "not revoked", while this instance cannot vouch that it
sees every revocation):
- a token the local revocation mirror knows is revoked: "revoked" (401), store or no store;
- "not revoked" comes from the mirror only while the breaker is closed (the heartbeat and this instance's
  own calls succeed) and the mirror is in sync (its subscription confirmed complete within 3 heartbeats);
  otherwise from Redis, and with the breaker open not at all (503): an instance cut off from Redis could
  otherwise accept a token that another instance, still connected, has just revoked;
- everything else that touches the store (minting, refresh, revoke, the exchange cache) fails fast.

Epochs (`gateway.store.base.Epoch`): the first contact reads `{prefix}epoch` (SET NX when missing); the
heartbeat, every resubscription of the mirror and every fallback `is_revoked` (in the same round trip)
read it again. A different or missing epoch means Redis lost its data: the guard adopts the new one,
and every token minted in an earlier epoch is refused (`TokenService`). A `MemoryStore` is its own epoch
and is never guarded (it cannot fail or block).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from gateway.errors import StoreUnavailable
from gateway.store.base import Epoch, EpochSource, Store, check_ttl
from gateway.store.gcra import RateCheck, RateLimiting, RateResult

if TYPE_CHECKING:
    from gateway.store.base import RotateResult

__all__ = ["DEFAULT_STORE_TIMEOUT_S", "GuardEvents", "SharedBackend", "Spans", "StoreGuard"]

DEFAULT_STORE_TIMEOUT_S = 0.5
T = TypeVar("T")


@runtime_checkable
class SharedBackend(Protocol):
    """What the guard needs beyond `Store` from a shared store (`RedisStore`)."""

    def bound_calls(self, timeout_s: float) -> None: ...
    async def ensure_epoch(self) -> Epoch: ...
    async def is_revoked_with_epoch(self, ids: Iterable[str], issued_at: float | None) -> tuple[bool, bytes | None]: ...
    def mirror_lookup(self, ids: Iterable[str], issued_at: float | None) -> bool | None: ...
    def on_resubscribe(self, callback: Callable[[], Awaitable[None]]) -> None: ...
    async def persistence(self) -> str: ...
    def start(self) -> None: ...


class GuardEvents(Protocol):
    """Where the guard counts (the gateway's `Metrics`)."""

    def store_error(self, reason: str) -> None: ...
    def store_state(self, up: bool) -> None: ...
    def store_reset(self) -> None: ...


class Spans(Protocol):
    """Tracing as the guard uses it (gateway.observe.tracing.Tracer, which the store layer cannot import):
    a span around each store call made under a traced request."""

    enabled: bool

    def child(
        self, name: str, attributes: Mapping[str, str] | None = None, *, client: bool = False
    ) -> AbstractContextManager[object]: ...


class _Log(Protocol):
    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...


class StoreGuard:
    """A `Store` around another one: deadlines, a circuit breaker, epochs (see the module docstring)."""

    def __init__(
        self,
        inner: Store,
        *,
        timeout_s: float = DEFAULT_STORE_TIMEOUT_S,
        heartbeat_s: float = 0.5,
        log: _Log | None = None,
        events: GuardEvents | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not timeout_s > 0 or not heartbeat_s > 0:
            raise ValueError("timeout_s and heartbeat_s must be positive")
        self.inner = inner
        self.timeout_s = timeout_s
        self._heartbeat_s = heartbeat_s
        self._log = log
        self._events = events
        self._clock = clock
        self._shared: SharedBackend | None = inner if isinstance(inner, SharedBackend) else None
        # a runtime Protocol isinstance costs ~10 µs: checked once here, not per rate-limited request
        self._rates: RateLimiting | None = inner if isinstance(inner, RateLimiting) else None
        self._errors: tuple[type[BaseException], ...] = (OSError,)  # TimeoutError included
        self.epoch: Epoch | None = None
        self.persistence = "unknown"
        if self._shared is not None:
            from redis.exceptions import RedisError

            self._errors = (OSError, RedisError)
            self._shared.bound_calls(timeout_s)
            self._shared.on_resubscribe(self._resubscribed)
        elif isinstance(inner, EpochSource):
            self.epoch = inner.current_epoch()
            self.persistence = "memory"
        self.up = True
        self.down_since: float | None = None
        self.resets = 0
        self.failures = 0
        self._deadlines: set[asyncio.Timeout] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.spans: Spans | None = None  # the app's tracer, when tracing is on (`trace_with`)
        self._system = "redis" if self._shared is not None else "memory"

    @property
    def shared(self) -> bool:
        """True for a store shared between processes (Redis)."""
        return self._shared is not None

    # -------------------------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """Read the epoch (bounded), start the mirror and the heartbeat; never raises for an outage."""
        shared = self._shared
        if shared is None or self._closed:
            return
        shared.start()
        try:
            await self._check_epoch("startup")
            self.persistence = await self._bounded(shared.persistence())
        except self._errors as exc:
            self._failed("startup", exc)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._heartbeat(), name="store heartbeat")

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.inner.aclose()

    def health(self) -> dict[str, object]:
        """The store's part of /readyz."""
        now = self._clock()
        epoch = self.epoch
        return {
            "up": self.up,
            "shared": self.shared,
            "epoch": epoch.id if epoch else None,
            "epoch_started_at": epoch.started_at if epoch else None,
            "epoch_age_s": round(now - epoch.started_at, 1) if epoch else None,
            "resets": self.resets,
            "persistence": self.persistence,
            "persistent": {"aof": True, "aof+rdb": True, "rdb": False, "none": False, "memory": False}.get(
                self.persistence, "unknown"
            ),
            "down_for_s": None if self.down_since is None else round(now - self.down_since, 1),
            "timeout_s": self.timeout_s,
        }

    # ---------------------------------------------------------------------------------- epochs

    def current_epoch(self) -> Epoch | None:
        return self.epoch

    async def confirm_epoch(self) -> Epoch:
        """The epoch read now (for minting): 503 when the store cannot say."""
        if self._shared is None:
            if self.epoch is None:
                raise StoreUnavailable("this store has no epoch")
            return self.epoch
        self._require_up()
        try:
            return await self._check_epoch("mint")
        except self._errors as exc:
            self._failed("epoch", exc)
            raise StoreUnavailable() from None

    async def _check_epoch(self, source: str) -> Epoch:
        assert self._shared is not None
        epoch = await self._bounded(self._shared.ensure_epoch())
        self._adopt(epoch, source)
        return epoch

    def _adopt(self, epoch: Epoch, source: str) -> None:
        known = self.epoch
        if known is not None and known.id == epoch.id:
            return
        self.epoch = epoch
        if known is None:
            if self._log is not None:
                self._log.info("store.epoch", epoch=epoch.id, started_at=epoch.started_at)
            return
        self.resets += 1
        if self._events is not None:
            self._events.store_reset()
        if self._log is not None:
            self._log.warning(
                "store.reset",
                previous=known.id,
                epoch=epoch.id,
                detected_by=source,
                consequence="the token store lost its data: every token minted before is refused (log in again)",
            )

    async def _resubscribed(self) -> None:
        """The mirror subscribed again: check the epoch before it loads (errors end its session); the
        store answered, so the breaker closes too."""
        await self._check_epoch("resubscribe")
        self._recovered()

    # ------------------------------------------------------------------------------ the breaker

    def _require_up(self) -> None:
        if not self.up:
            self._count("unavailable")
            raise StoreUnavailable()

    def _count(self, reason: str) -> None:
        if self._events is not None:
            self._events.store_error(reason)

    def _failed(self, operation: str, exc: BaseException) -> None:
        """A call failed or missed its deadline: open the breaker (logged once) and expire the others."""
        self.failures += 1
        self._count("timeout" if isinstance(exc, TimeoutError) else "error")
        if not self.up:
            return
        self.up = False
        self.down_since = self._clock()
        if self._events is not None:
            self._events.store_state(False)
        if self._log is not None:
            self._log.warning(
                "store.unavailable",
                operation=operation,
                error=_describe(exc),
                consequence="requests that need the store get 503 until it answers again",
            )
        now = asyncio.get_running_loop().time()
        for deadline in list(self._deadlines):
            if not deadline.expired():
                deadline.reschedule(now)

    def _recovered(self) -> None:
        if self.up:
            return
        down_for = self._clock() - (self.down_since or self._clock())
        self.up = True
        self.down_since = None
        if self._events is not None:
            self._events.store_state(True)
        if self._log is not None:
            self._log.info("store.available", down_for_s=round(down_for, 2))

    async def _heartbeat(self) -> None:
        """While up: read the epoch every heartbeat (an outage or a reset is seen even without traffic).
        While down: probe with jittered backoff; the first success closes the breaker."""
        assert self._shared is not None
        delay = self._heartbeat_s
        while not self._closed:
            await asyncio.sleep(delay * random.uniform(0.8, 1.0))
            was_up = self.up
            try:
                await self._check_epoch("heartbeat" if was_up else "probe")
                if not was_up:
                    self.persistence = await self._bounded(self._shared.persistence())
            except self._errors as exc:
                self._failed("heartbeat", exc)
                delay = self._heartbeat_s if was_up else min(delay * 1.5, 2.0)
                continue
            self._recovered()
            delay = self._heartbeat_s

    async def _bounded(self, awaitable: Awaitable[T], seconds: float | None = None) -> T:
        """Await within the deadline; the breaker opening expires it at once (TimeoutError)."""
        async with asyncio.timeout(self.timeout_s if seconds is None else seconds) as deadline:
            self._deadlines.add(deadline)
            try:
                return await awaitable
            finally:
                self._deadlines.discard(deadline)

    def trace_with(self, spans: Spans) -> None:
        """Make every store call a span (when `spans` is on): `_call` and `is_revoked` are replaced on this
        instance by traced versions, so with tracing off the calls cost not even a check."""
        if not spans.enabled:
            return
        self.spans = spans
        self._call = self._traced_call  # type: ignore[method-assign]
        self.is_revoked = self._traced_is_revoked  # type: ignore[method-assign]

    def _span(self, operation: str) -> AbstractContextManager[object]:
        assert self.spans is not None
        attributes = {"db.system.name": self._system, "db.operation.name": operation}
        return self.spans.child(f"store {operation}", attributes)

    async def _traced_call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        with self._span(operation):
            return await StoreGuard._call(self, operation, call)

    async def _traced_is_revoked(self, *ids: str, issued_at: float | None = None) -> bool:
        with self._span("is_revoked"):
            return await StoreGuard.is_revoked(self, *ids, issued_at=issued_at)

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        if self._shared is None:
            return await call()
        self._require_up()
        try:
            return await self._bounded(call())
        except self._errors as exc:
            self._failed(operation, exc)
            raise StoreUnavailable() from None

    # ------------------------------------------------------------------------------- the Store

    async def revoke(self, ids: Iterable[str], until: float, *, before: float | None = None) -> None:
        listed = list(ids)
        await self._call("revoke", lambda: self.inner.revoke(listed, until, before=before))

    async def is_revoked(self, *ids: str, issued_at: float | None = None) -> bool:
        shared = self._shared
        if shared is None:
            return await self.inner.is_revoked(*ids, issued_at=issued_at)
        if not ids:
            return False
        known = shared.mirror_lookup(ids, issued_at)
        if known:
            return True  # a revocation the mirror holds is always right, store or no store
        self._require_up()
        if known is False:
            return False
        try:
            revoked, raw = await self._bounded(shared.is_revoked_with_epoch(ids, issued_at))
            seen = None if raw is None else Epoch.load(raw)
            if seen is None or self.epoch is None or seen.id != self.epoch.id:
                await self._check_epoch("fallback")  # missing (creates one), changed, or first contact
        except self._errors as exc:
            self._failed("is_revoked", exc)
            raise StoreUnavailable() from None
        return revoked

    async def start_family(self, family: str, jti: str, until: float) -> None:
        await self._call("start_family", lambda: self.inner.start_family(family, jti, until))

    async def rotate_refresh(self, family: str, presented: str, new: str, until: float) -> RotateResult:
        return await self._call("rotate_refresh", lambda: self.inner.rotate_refresh(family, presented, new, until))

    async def rate_limit(self, checks: Sequence[RateCheck]) -> list[RateResult]:
        """The inner store's GCRA buckets within the deadline; 503 (StoreUnavailable) when it is down: fail closed."""
        inner = self._rates
        if inner is None:
            raise StoreUnavailable("the store keeps no rate limits")
        if self._shared is None:
            return await inner.rate_limit(checks)
        self._require_up()
        try:
            return await self._bounded(inner.rate_limit(checks))
        except self._errors as exc:
            self._failed("rate_limit", exc)
            raise StoreUnavailable() from None

    async def get(self, key: str) -> bytes | None:
        return await self._call("get", lambda: self.inner.get(key))

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        check_ttl(ttl_s)
        await self._call("set", lambda: self.inner.set(key, value, ttl_s))

    async def delete(self, key: str) -> None:
        await self._call("delete", lambda: self.inner.delete(key))

    def lock(self, name: str, *, ttl_s: float = 10.0, wait_s: float = 10.0) -> AbstractAsyncContextManager[None]:
        if self._shared is None:
            return self.inner.lock(name, ttl_s=ttl_s, wait_s=wait_s)
        check_ttl(ttl_s)
        return self._hold(name, ttl_s, wait_s)

    @contextlib.asynccontextmanager
    async def _hold(self, name: str, ttl_s: float, wait_s: float) -> AsyncIterator[None]:
        """The inner lock; waiting for a live holder may take `wait_s` (TimeoutError after), a store that
        stops answering ends the wait at once (StoreUnavailable)."""
        self._require_up()
        held = self.inner.lock(name, ttl_s=ttl_s, wait_s=wait_s)
        deadline = asyncio.timeout(max(wait_s, 0) + self.timeout_s)
        try:
            async with deadline:
                self._deadlines.add(deadline)
                try:
                    await held.__aenter__()
                finally:
                    self._deadlines.discard(deadline)
        except TimeoutError as exc:
            if not deadline.expired():
                raise  # the inner lock's own wait ran out: another holder, not an outage
            self._failed("lock", exc)
            raise StoreUnavailable() from None
        except self._errors as exc:
            self._failed("lock", exc)
            raise StoreUnavailable() from None
        try:
            yield
        finally:
            try:
                await self._bounded(held.__aexit__(None, None, None))
            except self._errors as exc:  # the lock expires after ttl_s anyway
                self._failed("unlock", exc)

    async def ping(self) -> bool:
        if self._shared is None:
            return await self.inner.ping()
        if not self.up:
            return False
        try:
            return await self._bounded(self.inner.ping())
        except self._errors as exc:
            self._failed("ping", exc)
            return False


def _describe(exc: BaseException) -> str:
    """An error for a log line, by type (a message may name hosts); a deadline as such."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "deadline exceeded"
    return type(exc).__name__


if TYPE_CHECKING:

    def _implements_store(guard: StoreGuard) -> tuple[Store, EpochSource]:
        return guard, guard
