"""The Store protocol: the little shared state a gateway needs, in memory or in Redis.

It holds revocations (token and family ids, each until its token would have expired anyway; a revocation
may carry a cutoff, `before`, and then refuses only tokens issued before it: subject revocation), refresh-token
families (which refresh token is the live one), cached opaque values with a TTL (upstream tokens),
and single-flight locks. Everything expires, so the store never grows forever.

`MemoryStore` (`gateway.store.memory`) is the embedded default (one process). `RedisStore`
(`gateway.store.redis`) shares the same state across processes and hosts. `open_store` (`gateway.store.url`)
picks one from a URL. Callers pass ids and hashes as key names, never secrets; values are never logged.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

__all__ = ["Epoch", "EpochSource", "RotateResult", "Store", "backend_errors", "check_ttl", "merge_cutoff", "refuses"]

RotateResult = Literal["rotated", "replayed", "revoked"]


def backend_errors() -> tuple[type[BaseException], ...]:
    """What a store call can raise when its backend fails: OSError, and RedisError once redis is loaded.

    Looked up when an exception is being matched (`except backend_errors():`), so a gateway on
    `memory://` never imports redis (and the OpenTelemetry SDK redis pulls in) just to name its error:
    a process that never loaded redis cannot be raising one.
    """
    module = sys.modules.get("redis.exceptions")
    return (OSError,) if module is None else (OSError, module.RedisError)


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

    async def ping(self) -> bool:
        """True when the store answers (readiness)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


@dataclass(frozen=True, slots=True)
class Epoch:
    """The store's epoch: a random id written once (no TTL) when the store is first used, with its start.

    Every token the gateway mints carries the id (claim `ep`). A store that lost its data loses its epoch
    too, gets a new one, and so refuses every token minted before: a lost revocation can never turn a
    revoked token valid again. `MemoryStore` starts a new epoch with every process.
    """

    id: str
    started_at: float  # unix seconds

    @classmethod
    def new(cls, clock: float | None = None) -> Epoch:
        return cls(secrets.token_hex(8), time.time() if clock is None else clock)

    def dump(self) -> bytes:
        return f"{self.id}:{int(self.started_at * 1000)}".encode()

    @classmethod
    def load(cls, raw: bytes | str) -> Epoch | None:
        """An epoch record as `dump` writes it; None for anything else."""
        text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
        ident, colon, started = text.partition(":")
        if not (colon and ident.isalnum() and started.isdigit()):
            return None
        return cls(ident, int(started) / 1000)


@runtime_checkable
class EpochSource(Protocol):
    """A store that knows its epoch (`MemoryStore`, and `StoreGuard` around any store)."""

    def current_epoch(self) -> Epoch | None:
        """The epoch as last confirmed (None: never reached the store yet)."""
        ...

    async def confirm_epoch(self) -> Epoch:
        """The epoch read from the store now (created if missing), for minting."""
        ...


def check_ttl(ttl_s: float) -> None:
    """Reject a TTL that is not a positive number of seconds (every store's `set` and `lock`)."""
    if not ttl_s > 0:  # also rejects NaN
        raise ValueError(f"ttl_s must be a positive number of seconds, not {ttl_s!r}")


def merge_cutoff(known: bool, current: float | None, before: float | None) -> float | None:
    """The cutoff of an id revoked again: none (refuse every token) beats any cutoff, else the later one.

    `known` says whether the id was revoked already (then `current` None means "no cutoff").
    """
    if before is None or (known and current is None):
        return None
    return before if current is None else max(current, before)


def refuses(cutoff: float | None, issued_at: float | None) -> bool:
    """Whether a live revocation with this cutoff refuses a token issued at `issued_at` (None: unknown)."""
    return cutoff is None or issued_at is None or issued_at < cutoff
