"""Shared state: the Store protocol, in memory and on Redis (revocations, refresh families, cached values, locks).

    base     the `Store` protocol every implementation satisfies
    memory   `MemoryStore`, the embedded default (one process)
    redis    `RedisStore`, shared across processes and hosts (Lua scripts in `scripts`, the pub/sub
             revocation mirror in `mirror`)
    url      `open_store(url)`, the store a config's `store:` URL names
    clients  the redis-py client a URL names: one server, a Redis Cluster (`redis+cluster://`) or the
             master a Sentinel watches (`redis+sentinel://`)
    guard    `StoreGuard`: deadlines, a circuit breaker and the store's epoch around any store

`RedisStore` is loaded on first use (PEP 562), so a memory-only gateway never imports redis-py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.store.base import Epoch, EpochSource, RotateResult, Store
from gateway.store.guard import StoreGuard
from gateway.store.memory import MemoryStore
from gateway.store.url import open_store

if TYPE_CHECKING:
    from gateway.store.redis import RedisStore

__all__ = ["Epoch", "EpochSource", "MemoryStore", "RedisStore", "RotateResult", "Store", "StoreGuard", "open_store"]


def __getattr__(name: str) -> object:
    if name == "RedisStore":
        from gateway.store.redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
