"""GCRA (the generic cell rate algorithm): rate limits without window edges, one timestamp per bucket.

A limit of `rate` units per `period` with a `burst` is an emission interval `T = period / rate` and a
tolerance of `burst * T`. Each bucket stores one number, its theoretical arrival time (TAT): the moment
the bucket would be full again if nothing else came. A request costing `c` units is allowed when

    max(TAT, now) + c*T - burst*T <= now

and then sets `TAT = max(TAT, now) + c*T`. So at most `burst` units pass at once, then one unit every
`T`: no fixed window, hence no double burst at a window's edge. A request costing more than `burst` can
never pass. Checking several limits for one request is all or nothing: if one denies, none is charged.

Times are integer microseconds (exact in Lua's doubles and in Python). `apply_gcra` is the arithmetic,
shared by `MemoryStore.rate_limit`, `LocalGcra` (per-process limits such as failed Basic logins) and
mirrored line by line by the Redis script `scripts.GCRA`, which reads the clock of the Redis server so
that every instance agrees on `now`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["LocalGcra", "RateCheck", "RateLimiting", "RateResult", "apply_gcra"]

US = 1_000_000


@dataclass(frozen=True, slots=True)
class RateCheck:
    """One bucket to charge: `key` (a name, never a secret), `interval_us` per unit, `burst` units, `cost`."""

    key: str
    interval_us: int
    burst: int
    cost: int = 1


@dataclass(frozen=True, slots=True)
class RateResult:
    """The verdict for one bucket: `remaining` units now, seconds until the bucket is full (`reset_s`)
    and, when denied, until this request could pass (`retry_after_s`)."""

    allowed: bool
    remaining: int
    reset_s: float
    retry_after_s: float = 0.0


@runtime_checkable
class RateLimiting(Protocol):
    """A store that keeps GCRA buckets (`MemoryStore`, `RedisStore`, `StoreGuard`)."""

    async def rate_limit(self, checks: Sequence[RateCheck]) -> list[RateResult]:
        """Charge every bucket or none: all results allowed, or the denying ones not allowed and nothing charged."""
        ...


def _one(tat: int, now: int, check: RateCheck) -> tuple[int, RateResult]:
    """(the new TAT, the verdict) for one bucket whose stored TAT is `tat`."""
    base = max(tat, now)
    new_tat = base + check.interval_us * check.cost
    allow_at = new_tat - check.interval_us * check.burst
    if allow_at > now:
        remaining = max(0, (now + check.interval_us * check.burst - base) // check.interval_us)
        return tat, RateResult(False, int(remaining), (base - now) / US, (allow_at - now) / US)
    remaining = (now + check.interval_us * check.burst - new_tat) // check.interval_us
    return new_tat, RateResult(True, int(remaining), (new_tat - now) / US)


def apply_gcra(tats: Sequence[int], now: int, checks: Sequence[RateCheck]) -> tuple[list[int] | None, list[RateResult]]:
    """The new TATs (None when any check denies: nothing is charged) and each check's verdict."""
    new: list[int] = []
    results: list[RateResult] = []
    for tat, check in zip(tats, checks, strict=True):
        after, result = _one(tat, now, check)
        new.append(after)
        results.append(result)
    return (new if all(r.allowed for r in results) else None), results


class LocalGcra:
    """GCRA buckets in this process: a bounded dict (least recently touched dropped first, which only forgets)."""

    def __init__(self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self._tats: OrderedDict[str, int] = OrderedDict()
        self._max_keys = max_keys
        self._clock = clock

    def __len__(self) -> int:
        return len(self._tats)

    def check(self, checks: Sequence[RateCheck], *, charge: bool = True) -> list[RateResult]:
        """Charge all or none (`charge=False` only looks: would they pass?)."""
        now = int(self._clock() * US)
        tats = [self._tats.get(check.key, now) for check in checks]
        new, results = apply_gcra(tats, now, checks)
        if new is not None and charge:
            for check, tat in zip(checks, new, strict=True):
                self._tats[check.key] = tat
                self._tats.move_to_end(check.key)
            while len(self._tats) > self._max_keys:
                self._tats.popitem(last=False)
        return results

    def full(self, key: str) -> bool:
        """Whether the bucket holds its whole burst (never charged, or refilled)."""
        tat = self._tats.get(key)
        return tat is None or tat <= int(self._clock() * US)
