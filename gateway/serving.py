"""How the gateway is served, shared by `gateway serve` (cli.py) and `gateway demo` (demo.py).

The uvicorn settings (httptools with the gateway's request-head limits, uvloop, no proxy-header trust, a
graceful drain longer than any upstream timeout) and the Prometheus listener. Nothing heavy is imported at
module level: prometheus_client must not be imported before `serve` has set its multiprocess directory.
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING, Any

from gateway.errors import LoadError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from gateway.config.settings import Settings

__all__ = ["StartupError", "bind_listener", "check_listener", "start_metrics_listener", "uvicorn_options"]


class StartupError(Exception):
    """The gateway cannot start (the CLI prints it alone, in words, and exits 1)."""


def bind_listener(host: str, port: int) -> socket.socket:
    """The listening socket `serve` and `demo` will use, bound now (as uvicorn binds it: SO_REUSEADDR, IPv6 when
    the host has a colon), so a port in use is an error before anything claims the gateway is running."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        reason = (exc.strerror or str(exc)).lower()
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = " (another process holds the port: stop it, or choose another with --port)"
        elif exc.errno == errno.EACCES:
            hint = " (ports below 1024 need privileges: choose another with --port)"
        raise StartupError(f"cannot listen on {where}: {reason}{hint}") from None
    sock.set_inheritable(True)
    return sock


def check_listener(host: str, port: int) -> None:
    """Fail now, with `bind_listener`'s message, when `host:port` cannot be bound (the socket is released)."""
    bind_listener(host, port).close()


def start_metrics_listener(settings: Settings, registry: CollectorRegistry) -> None:
    """Serve `registry` on `metrics.host:metrics.port` from a daemon thread (every path answers the metrics)."""
    from prometheus_client import start_http_server

    metrics = settings.metrics
    assert metrics.port is not None
    try:
        start_http_server(metrics.port, addr=metrics.host, registry=registry)
    except OSError as exc:
        raise LoadError(f"cannot listen on {metrics.host}:{metrics.port}: {exc.strerror}", key="metrics.port") from None


def uvicorn_options(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    head_timeout_s: float | None = None,
    max_head_bytes: int | None = None,
) -> dict[str, Any]:
    """The server settings: httptools + uvloop, no proxy-header trust, a drain longer than any upstream timeout.

    The protocol is httptools with a deadline and a size limit for request heads and origin-form targets
    only, and deadlines for slow bodies and clients that do not read (`gateway.web.server.GatewayHttpProtocol`;
    the limits are the `proxy:` section's `head_timeout_s`, `max_head_bytes`, `body_timeout_s` and
    `client_write_timeout_s`).
    """
    from gateway.web.server import protocol_factory

    proxy = settings.proxy
    protocol = protocol_factory(
        head_timeout_s=proxy.head_timeout_s if head_timeout_s is None else head_timeout_s,
        max_head_bytes=proxy.max_head_bytes if max_head_bytes is None else max_head_bytes,
        body_timeout_s=proxy.body_timeout_s,
        client_write_timeout_s=proxy.client_write_timeout_s,
    )
    longest = max((up.read_timeout_s + up.connect_timeout_s for up in settings.upstreams.values()), default=30.0)
    return {
        "host": host or settings.listen.host,
        "port": port if port is not None else settings.listen.port,
        "http": protocol,
        "loop": "uvloop",
        "lifespan": "on",
        "proxy_headers": False,
        "server_header": False,
        "timeout_graceful_shutdown": int(longest) + 5,
        "log_level": settings.log.level,
        "log_config": None,  # stdlib logging is routed by logs.configure_stdlib_logging
        "access_log": False,  # the gateway writes its own access events (observe.py)
    }
