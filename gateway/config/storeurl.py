"""The shape of a `store:` URL, checked without redis-py (the config loader and `open_store` both use it).

    memory://                                                   one process
    redis://[user:pass@]host[:port][/db][?options]              one server (also rediss://)
    unix://[user:pass@]/path/to/socket[?options]                one server on a Unix socket
    redis+cluster://[user:pass@]host[:port][,host[:port]...]    a Redis Cluster (rediss+cluster:// for TLS)
    redis+sentinel://[user:pass@]host[:port][,...]/service[/db] a Sentinel-watched master (rediss+sentinel://)

`check_store_url` raises ValueError with a message that never quotes the URL (it may hold a password);
what only redis-py can judge (the names and values of `?options`) is left to `gateway.store.url.open_store`.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

__all__ = ["CLUSTER_SCHEMES", "REDIS_SCHEMES", "SENTINEL_SCHEMES", "STORE_SCHEMES", "check_store_url"]

REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
CLUSTER_SCHEMES = frozenset({"redis+cluster", "rediss+cluster"})
SENTINEL_SCHEMES = frozenset({"redis+sentinel", "rediss+sentinel"})
STORE_SCHEMES = frozenset({"memory"}) | REDIS_SCHEMES | CLUSTER_SCHEMES | SENTINEL_SCHEMES
FORMS = (
    "memory://, redis://host:6379/0, rediss://..., unix:///path, redis+cluster://host:port,host:port "
    "or redis+sentinel://host:26379/service"
)
_DB_PATH = re.compile(r"/[0-9]+")


def check_store_url(url: str) -> str:
    """The URL's scheme (lower case) if `url` has the shape of a store URL, else ValueError saying why."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(_parser_reason(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in STORE_SCHEMES:
        raise ValueError(f"unsupported store {scheme or 'URL'!r}")
    if not url[len(scheme) + 1 :].startswith("//"):
        raise ValueError(f"write two slashes after the scheme: {scheme}://...")
    if parts.fragment:
        raise ValueError("a store URL has no #fragment")
    if scheme == "memory":
        if parts.netloc or parts.path or parts.query:
            raise ValueError("memory:// takes no host, path or options")
    elif scheme == "unix":
        if parts.path in ("", "/"):
            raise ValueError("name the socket: unix:///path/to/redis.sock")
    elif scheme in CLUSTER_SCHEMES:
        _hosts(parts)
        if parts.path not in ("", "/", "/0"):
            raise ValueError("a cluster has one database: leave the path empty (or /0)")
    elif scheme in SENTINEL_SCHEMES:
        _hosts(parts)
        _sentinel_path(parts.path)
    else:
        _hosts(parts, several=False)
        if parts.path not in ("", "/") and not _DB_PATH.fullmatch(parts.path):
            raise ValueError("the path must be a database number such as /0")
    return scheme


def _hosts(parts: SplitResult, *, several: bool = True) -> None:
    hostinfo = parts.netloc.rpartition("@")[2]
    if not hostinfo:
        raise ValueError("the URL names no host: redis://host:6379/0")
    items = hostinfo.split(",") if several else [hostinfo]
    for item in items:
        try:
            parsed = urlsplit(f"//{item}")
            parsed.port  # noqa: B018 -- raises ValueError for a port that is not a number or out of range
        except ValueError as exc:
            raise ValueError(_parser_reason(exc)) from None
        if not parsed.hostname:
            raise ValueError("every host in the list needs a name: host:port,host:port")


def _sentinel_path(path: str) -> None:
    service, _, db = path.lstrip("/").partition("/")
    if not service:
        raise ValueError("name the monitored service in the path: redis+sentinel://host:26379/mymaster")
    if db and not db.isdigit():
        raise ValueError("the path must be /service or /service/db, with a database number")


def _parser_reason(exc: ValueError) -> str:
    """urllib's complaint, unless it might quote part of the URL (a password, say)."""
    message = str(exc)
    if message.startswith("Port could not be cast"):
        return "the port is not a number"
    if message.startswith(("Port out of range", "Invalid IPv6 URL")):
        return message
    return "malformed URL"
