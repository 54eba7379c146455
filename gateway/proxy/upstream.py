"""One configured upstream as the forwarder uses it: base URL, credentials, timeouts, pool and in-flight limit.

The URL is checked once here (absolute http(s), no userinfo, query or fragment); the connection always
goes to its host and port. `start` opens the keep-alive pool (`http1.ConnectionPool`) inside the running
loop; `acquire` takes one of `pool_size` in-flight slots, waiting at most `pool_timeout_s`, else 503 +
Retry-After. The header and query names the credentials inject are kept normalized, ready to be
stripped from the client's request.
"""

from __future__ import annotations

import asyncio
import math
import ssl

from yarl import URL

from gateway.config.settings import UpstreamSettings
from gateway.errors import ServiceUnavailable
from gateway.proxy.credentials import Credentials
from gateway.proxy.headers import normalized_names
from gateway.proxy.http1 import ConnectionPool

__all__ = ["Upstream"]


class Upstream:
    """One configured upstream: base URL, credentials, timeouts, and (once started) its pool and in-flight limit."""

    __slots__ = (
        "base",
        "base_path",
        "connect_timeout_s",
        "credentials",
        "name",
        "pool",
        "pool_size",
        "pool_timeout_s",
        "read_timeout_s",
        "response_drop",
        "retry_after_s",
        "slots",
        "strip_headers",
        "strip_headers_observed",
        "strip_query",
        "tls",
    )

    def __init__(
        self, settings: UpstreamSettings, credentials: Credentials, *, tls: ssl.SSLContext | None = None
    ) -> None:
        """`tls` replaces the default context of an https upstream (the system's CAs, hostname checked)."""
        self.name = settings.name
        self.base = URL(settings.url)
        if self.base.scheme not in ("http", "https") or not self.base.raw_host:
            raise ValueError(f"upstream {settings.name!r}: url must be an absolute http(s) URL")
        if self.base.raw_user or self.base.raw_password or self.base.raw_query_string or self.base.raw_fragment:
            raise ValueError(f"upstream {settings.name!r}: url must not carry userinfo, a query or a fragment")
        self.credentials = credentials
        self.strip_headers = normalized_names(credentials.header_names)
        # Observed requests carry the gateway's request id upstream instead of the client's.
        self.strip_headers_observed = self.strip_headers | normalized_names({"X-Request-ID"})
        self.strip_query = frozenset(name.lower() for name in credentials.query_names)
        self.response_drop = credentials.response_drop
        self.base_path = self.base.raw_path
        self.tls = tls
        self.connect_timeout_s = settings.connect_timeout_s
        self.read_timeout_s = settings.read_timeout_s
        self.pool_size = settings.pool_size
        self.pool_timeout_s = settings.pool_timeout_s
        self.retry_after_s = max(1, math.ceil(settings.pool_timeout_s))
        self.pool: ConnectionPool | None = None
        self.slots: asyncio.Semaphore | None = None

    async def start(self) -> None:
        """Open the pool (inside the running loop); a second call does nothing."""
        if self.pool is not None:
            return
        base = self.base
        https = base.scheme == "https"
        self.pool = ConnectionPool(
            base.raw_host or "",
            base.port or (443 if https else 80),
            host_header=base.raw_authority,
            tls=(self.tls or ssl.create_default_context()) if https else None,
            connect_timeout_s=self.connect_timeout_s,
            read_timeout_s=self.read_timeout_s,
            size=self.pool_size,
        )
        self.slots = asyncio.Semaphore(self.pool_size)

    async def aclose(self) -> None:
        pool, self.pool, self.slots = self.pool, None, None
        if pool is not None:
            await pool.aclose()

    async def acquire(self) -> asyncio.Semaphore:
        """Take an in-flight slot, waiting at most `pool_timeout_s`; 503 + Retry-After when none frees."""
        slots = self.slots
        if slots is None:
            raise ServiceUnavailable("the gateway is not ready", code="not_ready")
        if slots.locked():
            try:
                async with asyncio.timeout(self.pool_timeout_s):
                    await slots.acquire()
            except TimeoutError:
                raise ServiceUnavailable(
                    "too many requests in flight to the upstream",
                    retry_after_s=self.retry_after_s,
                    code="upstream_busy",
                ) from None
        else:
            await slots.acquire()
        return slots
