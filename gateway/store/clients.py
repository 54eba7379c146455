"""The redis-py client a store URL names: one server, a Redis Cluster, or the master a Sentinel watches.

    redis://[user:pass@]host[:port][/db][?options]             one server (also rediss://, unix:///path)
    redis+cluster://[user:pass@]host[:port][,host[:port]...][?options]
                                                                a Redis Cluster (rediss+cluster:// for TLS);
                                                                the hosts are seeds, the rest is discovered
    redis+sentinel://[user:pass@]host[:port][,host[:port]...]/service[/db][?options]
                                                                the master of `service` as the Sentinels
                                                                name it (rediss+sentinel:// for TLS)

Options are redis-py's connection options (`?socket_timeout=1`); the user and password are the data
servers'. Sentinel URLs also take `sentinel_username` and `sentinel_password` for the Sentinels themselves.
Ports default to 6379 (servers, cluster nodes) and 26379 (Sentinels). A cluster has one database, 0.
Every client returns bytes (`decode_responses=False`). Loaded only when a Redis store is opened.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel

__all__ = ["CLUSTER_SCHEMES", "SENTINEL_SCHEMES", "redis_client"]

CLUSTER_SCHEMES = frozenset({"redis+cluster", "rediss+cluster"})
SENTINEL_SCHEMES = frozenset({"redis+sentinel", "rediss+sentinel"})
_SENTINEL_OPTIONS = frozenset({"sentinel_username", "sentinel_password"})


def redis_client(url: str) -> aioredis.Redis | RedisCluster:
    """A new client (it connects lazily); ValueError or TypeError for a URL it cannot use."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in CLUSTER_SCHEMES:
        return _cluster(parts, scheme)
    if scheme in SENTINEL_SCHEMES:
        return _sentinel_master(parts, scheme)
    return aioredis.Redis.from_url(url, decode_responses=False)


def _cluster(parts: SplitResult, scheme: str) -> RedisCluster:
    if parts.path not in ("", "/", "/0"):
        raise ValueError("a cluster has one database: leave the path empty (or /0)")
    kwargs = _connection_kwargs(parts, scheme, parts.query)
    if kwargs.pop("db", 0) != 0:
        raise ValueError("a cluster has one database: db must be 0")
    nodes = [ClusterNode(host, port) for host, port in _hosts(parts.netloc, 6379)]
    return RedisCluster(startup_nodes=nodes, decode_responses=False, **kwargs)


def _sentinel_master(parts: SplitResult, scheme: str) -> aioredis.Redis:
    service, _, db = parts.path.lstrip("/").partition("/")
    if not service:
        raise ValueError("name the monitored service in the path: redis+sentinel://host:26379/mymaster")
    if db and not db.isdigit():
        raise ValueError("the path must be /service or /service/db, with a database number")
    query = parse_qsl(parts.query, keep_blank_values=True)
    own = {name: value for name, value in query if name in _SENTINEL_OPTIONS}
    rest = urlencode([(name, value) for name, value in query if name not in _SENTINEL_OPTIONS])
    kwargs = _connection_kwargs(parts, scheme, rest)
    if db:
        kwargs.setdefault("db", int(db))
    sentinel_kwargs: dict[str, Any] = {key.removeprefix("sentinel_"): value for key, value in own.items()}
    sentinel_kwargs.update({k: v for k, v in kwargs.items() if k.startswith("socket_")})
    if kwargs.get("ssl"):
        sentinel_kwargs["ssl"] = True
    sentinel = Sentinel(_hosts(parts.netloc, 26379), sentinel_kwargs=sentinel_kwargs)
    client: aioredis.Redis = sentinel.master_for(service, decode_responses=False, **kwargs)
    return client


def _connection_kwargs(parts: SplitResult, scheme: str, query: str) -> dict[str, Any]:
    """redis-py's own parse of the options and credentials (typed as it types them), minus host and port."""
    userinfo, at, _ = parts.netloc.rpartition("@")
    base = "rediss" if scheme.startswith("rediss") else "redis"
    kwargs: dict[str, Any] = dict(parse_url(f"{base}://{userinfo}{at}placeholder/{'?' if query else ''}{query}"))
    kwargs.pop("host", None)
    kwargs.pop("port", None)
    if kwargs.pop("connection_class", None) is SSLConnection:
        kwargs["ssl"] = True
    return kwargs


def _hosts(netloc: str, default_port: int) -> list[tuple[str, int]]:
    """`host[:port],host[:port]...` after any userinfo; IPv6 hosts in brackets."""
    hosts = []
    for item in netloc.rpartition("@")[2].split(","):
        parsed = urlsplit(f"//{item}")
        if not parsed.hostname:
            raise ValueError("every host in the list needs a name: host:port,host:port")
        hosts.append((unquote(parsed.hostname), parsed.port or default_port))
    return hosts
