"""`MemoryStore`: the embedded store (one process), dicts with expiry timestamps."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.store.base import Epoch, check_ttl, merge_cutoff, refuses
from gateway.store.gcra import LocalGcra, RateCheck, RateResult

if TYPE_CHECKING:
    from gateway.store.base import RotateResult

__all__ = ["DEFAULT_MAX_RECORDS", "MemoryStore"]

_log = logging.getLogger(__name__)

DEFAULT_MAX_RECORDS = 100_000  # refresh families + cached values (token records): ~50 MiB of minted pairs


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

    At most `max_records` refresh families and cached values (token records, provider tokens) are held:
    at the cap, expired entries are swept, then the soonest-expiring families go first (their refresh
    tokens stop working: fail closed), then the soonest-expiring values (a token whose record went can
    still be revoked by subject). One warning per episode. Revocations are never evicted (that would
    un-revoke a token); they leave only when they expire.

    Every instance is its own epoch (`epoch`): a new process is a new store, and refuses older tokens.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        sweep_interval_s: float = 60.0,
        max_records: int = DEFAULT_MAX_RECORDS,
    ) -> None:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self._clock = clock
        self.epoch = Epoch.new(clock())
        self.max_records = max_records
        self.evicted = 0  # records dropped at the cap, for tests and readiness
        self._capped = False  # inside an eviction episode (logged once)
        self._sweep_interval_s = sweep_interval_s
        self._next_sweep = clock() + sweep_interval_s
        self._revoked: dict[str, float] = {}  # id -> until
        self._cutoffs: dict[str, float] = {}  # id -> before, for revocations that carry one
        self._families: dict[str, tuple[str, float]] = {}  # family -> (live jti, until)
        self._values: dict[str, tuple[bytes, float]] = {}  # key -> (value, expires)
        self._locks: dict[str, _LockSlot] = {}
        self._buckets = LocalGcra(max_keys=max_records, clock=clock)  # rate limits (per process)

    def size(self) -> int:
        """Entries held, expired or not (locks excluded): what a sweep can shrink.

        Not `__len__`: an empty store must stay truthy (`store or open_store(...)`).
        """
        return len(self._revoked) + len(self._families) + len(self._values)

    def current_epoch(self) -> Epoch:
        return self.epoch

    async def confirm_epoch(self) -> Epoch:
        return self.epoch

    def _make_room(self, now: float) -> None:
        """Called before adding a family or value: keep evictable records under `max_records`."""
        if len(self._families) + len(self._values) < self.max_records:
            if self._capped and len(self._families) + len(self._values) < self.max_records * 0.8:
                self._capped = False  # the episode is over: the next one is logged again
            return
        self.sweep()
        held = len(self._families) + len(self._values)
        if held < self.max_records:
            return
        excess = held - int(self.max_records * 0.95) + 1  # room for a batch, so eviction is not per insert
        if not self._capped:
            self._capped = True
            _log.warning(
                "memory store at its cap of %d records: evicting the soonest-expiring refresh families and "
                "token records (raise store_max_records, or use store: redis://...)",
                self.max_records,
            )
        families = heapq.nsmallest(excess, self._families.items(), key=lambda item: item[1][1])
        for family, _ in families:
            del self._families[family]
        excess -= len(families)
        if excess > 0:
            for key, _ in heapq.nsmallest(excess, self._values.items(), key=lambda item: item[1][1]):
                del self._values[key]
        self.evicted += held - (len(self._families) + len(self._values))

    def sweep(self) -> int:
        """Drop every expired entry now; returns how many went."""
        now = self._clock()
        self._next_sweep = now + self._sweep_interval_s
        dropped = 0
        for table in (self._revoked, self._families, self._values):
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
            merged = merge_cutoff(known, self._cutoffs.get(id_), before)
            if merged is None:
                self._cutoffs.pop(id_, None)
            else:
                self._cutoffs[id_] = merged

    async def is_revoked(self, *ids: str, issued_at: float | None = None) -> bool:
        if not self._revoked:  # the usual case: nothing revoked, nothing to look up (asked on every request)
            return False
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
        return refuses(self._cutoffs.get(id_), issued_at)

    async def start_family(self, family: str, jti: str, until: float) -> None:
        now = self._now()
        if until > now:
            if family not in self._families:
                self._make_room(now)
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

    async def rate_limit(self, checks: Sequence[RateCheck]) -> list[RateResult]:
        """GCRA buckets in this process (see `gateway.store.gcra`); at most `max_records` of them."""
        return self._buckets.check(checks)

    async def get(self, key: str) -> bytes | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._values[key]
            return None
        return entry[0]

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        check_ttl(ttl_s)
        now = self._now()
        if key not in self._values:
            self._make_room(now)
        self._values[key] = (value, now + ttl_s)

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)

    def lock(self, name: str, *, ttl_s: float = 10.0, wait_s: float = 10.0) -> AbstractAsyncContextManager[None]:
        check_ttl(ttl_s)
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

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


def _expiry(entry: float | tuple[object, float]) -> float:
    return entry if isinstance(entry, float | int) else entry[1]
