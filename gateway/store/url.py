"""`open_store`: the store a URL names, checked at start-up, with any password masked in errors."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from gateway.config.storeurl import FORMS, check_store_url
from gateway.store.memory import MemoryStore

if TYPE_CHECKING:
    from gateway.store.base import Store
    from gateway.store.redis import RedisStore

__all__ = ["open_store"]


def open_store(url: str, *, prefix: str = "smsguard:") -> Store:
    """The store a URL names: `memory://`, or a RedisStore on one server (`redis://`, `rediss://`, `unix://`),
    a Redis Cluster (`redis+cluster://host:port,host:port`) or a Sentinel-watched master
    (`redis+sentinel://host:26379,host:26379/service`); see `gateway.store.clients` for the forms.

    Checked eagerly (no connection is made) so a typo fails at startup: a ValueError whose message
    shows the URL with any password masked.
    """
    try:
        scheme = check_store_url(url)  # the shape, as the config loader checks it (no redis-py needed)
    except ValueError as exc:
        if str(exc).startswith("unsupported"):
            raise ValueError(f"unsupported store URL {_redact(url)!r}: use {FORMS}") from None
        raise ValueError(f"invalid store URL {_redact(url)!r}: {exc}") from None
    if scheme == "memory":
        return MemoryStore()
    try:
        from gateway.store.redis import RedisStore  # only now: redis-py is a heavy import

        store = RedisStore.from_url(url, prefix=prefix)
        pool = getattr(store._client, "connection_pool", None)  # a cluster checked its options on creation
        if pool is not None:
            # builds a connection object without connecting: rejects unknown ?options now, not at first use
            pool.make_connection()
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid store URL {_redact(url)!r}: {_reason(exc)}") from None
    return store


_PASSWORD_PARAM = re.compile(r"(?i)((?:^|[?&;])(?:sentinel_)?password=)[^&;#]*")


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


_OUR_MESSAGES = ("a cluster has", "name the monitored", "the path must be", "every host in")  # gateway.store.clients


def _reason(exc: Exception) -> str:
    """The parser's complaint, unless it might quote part of the URL (a password, say)."""
    message = str(exc)
    if isinstance(exc, TypeError) and "unexpected keyword argument" in message:
        option = message.rpartition("argument")[2].strip()
        return f"unknown option {option}"
    if message.startswith("Port could not be cast"):
        return "the port is not a number"
    if message.startswith(("Port out of range", "Invalid IPv6 URL", "Invalid value for '", *_OUR_MESSAGES)):
        return message
    return "malformed URL"


if TYPE_CHECKING:  # mypy proves both implementations satisfy the protocol

    def _implements_store(memory: MemoryStore, redis_store: RedisStore) -> tuple[Store, Store]:
        return memory, redis_store
