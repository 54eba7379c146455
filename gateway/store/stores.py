"""Deprecated alias of `gateway.store`, kept only while gateway/proxy/credentials.py and exchange.py still
import it (the proxy branch owns those files); removed when they import `gateway.store` instead."""

from __future__ import annotations

import gateway.store
from gateway.store import MemoryStore, RotateResult, Store, open_store

__all__ = ["MemoryStore", "RotateResult", "Store", "open_store"]


def __getattr__(name: str) -> object:
    return getattr(gateway.store, name)  # RedisStore, loaded on first use
