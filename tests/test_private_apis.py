"""The undocumented parts of uvicorn and prometheus_client the gateway builds on, checked by name.

pyproject bounds both below their next major version; within it a minor release may still rename what
these modules use. Then this file fails first, naming the missing part and the module that needs it,
instead of the gateway failing in some request path:

- gateway/web/server.py subclasses uvicorn's `HttpToolsProtocol` (its parser callbacks, per-request
  state and `RequestResponseCycle`);
- gateway/sandbox/app.py runs uvicorn's `Server` without its signal handlers (`capture_signals`);
- gateway/observe/metrics.py adds to prometheus_client's sample values directly (`Histogram` children's
  `_upper_bounds`, `_buckets`, `_sum`, `Counter` children's `_value`).
"""

from __future__ import annotations

import asyncio
import inspect

import prometheus_client
import pytest
import uvicorn
from uvicorn.protocols.http import httptools_impl


def _missing(owner: object, names: list[str]) -> list[str]:
    return [name for name in names if not hasattr(owner, name)]


def _explain(library: str, module: str, what: str, missing: list[str]) -> str:
    return (
        f"{library} no longer has {what} {', '.join(missing)}, which {module} relies on: "
        f"adapt {module} to this {library} version, or pin it below this version in pyproject.toml"
    )


def test_uvicorn_httptools_protocol_keeps_what_the_gateway_protocol_overrides() -> None:
    """GatewayHttpProtocol (gateway/web/server.py) overrides and calls these HttpToolsProtocol methods."""
    protocol = getattr(httptools_impl, "HttpToolsProtocol", None)
    assert protocol is not None, _explain(
        "uvicorn", "gateway/web/server.py", "class", ["uvicorn.protocols.http.httptools_impl.HttpToolsProtocol"]
    )
    methods = [
        "connection_made",
        "connection_lost",
        "data_received",
        "on_message_begin",
        "on_url",
        "on_header",
        "on_headers_complete",
        "on_message_complete",
        "on_response_complete",
        "send_400_response",
    ]
    missing = _missing(protocol, methods)
    assert not missing, _explain("uvicorn", "gateway/web/server.py", "HttpToolsProtocol methods", missing)
    parameters = inspect.signature(protocol.__init__).parameters
    missing = [name for name in ("config", "server_state", "app_state") if name not in parameters]
    assert not missing, _explain("uvicorn", "gateway/web/server.py", "HttpToolsProtocol arguments", missing)


def test_uvicorn_protocol_state_the_gateway_reads() -> None:
    """Per-connection and per-request attributes read by GatewayHttpProtocol: transport, loop, url, scope, cycle."""
    config = uvicorn.Config(app=_app, lifespan="off", ws="none", log_config=None)
    config.load()
    state = uvicorn.server.ServerState()
    loop = asyncio.new_event_loop()
    try:
        protocol = httptools_impl.HttpToolsProtocol(config=config, server_state=state, app_state={}, _loop=loop)
        protocol.on_message_begin()  # starts a request: url and scope exist from here on
        missing = _missing(protocol, ["transport", "loop", "url", "scope", "cycle", "server_state"])
        assert not missing, _explain("uvicorn", "gateway/web/server.py", "HttpToolsProtocol attributes", missing)
        missing = _missing(state, ["default_headers", "connections", "tasks"])
        assert not missing, _explain("uvicorn", "gateway/web/server.py", "ServerState attributes", missing)
    finally:
        loop.close()
    cycle = getattr(httptools_impl, "RequestResponseCycle", None)
    assert cycle is not None, _explain("uvicorn", "gateway/web/server.py", "class", ["RequestResponseCycle"])
    parameters = inspect.signature(cycle.__init__).parameters
    missing = [name for name in ("scope", "transport") if name not in parameters]
    assert not missing, _explain("uvicorn", "gateway/web/server.py", "RequestResponseCycle arguments", missing)


def test_uvicorn_server_can_run_without_signal_handlers() -> None:
    """The sandbox overrides Server.capture_signals and stops the server with should_exit once started."""
    server = uvicorn.Server(uvicorn.Config(app=_app, log_config=None))
    missing = _missing(uvicorn.Server, ["capture_signals", "serve"]) + _missing(server, ["should_exit", "started"])
    assert not missing, _explain("uvicorn", "gateway/sandbox/app.py", "Server members", missing)
    assert "sockets" in inspect.signature(uvicorn.Server.serve).parameters, _explain(
        "uvicorn", "gateway/sandbox/app.py", "Server.serve argument", ["sockets"]
    )


@pytest.mark.parametrize("buckets", [(0.1, 1.0), (0.001, 0.01, 0.1)])
def test_prometheus_children_expose_the_values_metrics_adds_to(buckets: tuple[float, ...]) -> None:
    """Metrics batches observations and adds them to the children's values (gateway/observe/metrics.py)."""
    registry = prometheus_client.CollectorRegistry()
    histogram = prometheus_client.Histogram("t_seconds", "t", ["route"], buckets=buckets, registry=registry)
    counter = prometheus_client.Counter("t_requests", "t", ["route"], registry=registry)
    child = histogram.labels("r")
    missing = _missing(child, ["_upper_bounds", "_buckets", "_sum"])
    assert not missing, _explain(
        "prometheus_client", "gateway/observe/metrics.py", "Histogram child attributes", missing
    )
    counted = counter.labels("r")
    assert hasattr(counted, "_value"), _explain(
        "prometheus_client", "gateway/observe/metrics.py", "Counter child attribute", ["_value"]
    )
    bounds = list(child._upper_bounds)
    assert bounds == [*buckets, float("inf")], "Histogram._upper_bounds no longer lists the buckets then +Inf"
    assert len(child._buckets) == len(bounds), "Histogram._buckets no longer holds one value per bound"
    child._buckets[0].inc(2)
    child._sum.inc(0.5)
    counted._value.inc(3)
    assert registry.get_sample_value("t_seconds_bucket", {"route": "r", "le": str(buckets[0])}) == 2
    assert registry.get_sample_value("t_seconds_sum", {"route": "r"}) == 0.5
    assert registry.get_sample_value("t_requests_total", {"route": "r"}) == 3


async def _app(scope: object, receive: object, send: object) -> None:
    """An ASGI app for uvicorn's Config; never called."""
