"""A real gateway under uvicorn in front of a recording upstream, with its log events captured.

    async with observed(tmp_path) as env:
        response = await env.client.post("/3rdparty/v1/messages", headers=env.bearer("messages:send"))
        (event,) = await env.requests(1)

`env.capture` holds every event the gateway logged, exactly as the JSON format writes it (`LogCapture`);
the access event is written after the response is sent, so `requests(n)` waits for the n-th one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fakes import RecordingUpstream, Reply, UvicornServer
from gatewayconfig import GatewayConfig

from gateway.app import Gateway, create_app
from gateway.observe.logs import LogCapture
from gateway.tokens.mint import TokenPair

JSON_REPLY = Reply(202, body=b'{"id":"m1","state":"Pending"}', headers=[("Content-Type", "application/json")])


@dataclass
class Env:
    upstream: RecordingUpstream
    gateway: Gateway
    client: httpx.AsyncClient
    capture: LogCapture
    config: GatewayConfig
    pairs: list[TokenPair] = field(default_factory=list)
    seen: int = 0  # access events already returned by next_request

    async def pair(self, *scopes: str, subject: str = "app-1") -> TokenPair:
        pair = await self.gateway.tokens.issue(subject, list(scopes), 300, caller=None)
        self.pairs.append(pair)
        return pair

    async def bearer(self, *scopes: str) -> dict[str, str]:
        return {"authorization": f"Bearer {(await self.pair(*scopes)).access.token}"}

    async def requests(self, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """The first `count` access events, once that many were written."""
        async with asyncio.timeout(timeout_s):
            while len(self.capture.events("request")) < count:
                await asyncio.sleep(0.005)
        return self.capture.events("request")[:count]

    async def next_request(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """The access event after the last one returned by this method (waits for it to be written)."""
        async with asyncio.timeout(timeout_s):
            while len(self.capture.events("request")) <= self.seen:
                await asyncio.sleep(0.005)
        self.seen += 1
        return self.capture.events("request")[self.seen - 1]


@contextlib.asynccontextmanager
async def observed(
    directory: Path, *, extra: str = "", reply: Reply = JSON_REPLY, upstream_url: str | None = None
) -> AsyncIterator[Env]:
    """The gateway (config `extra` appended) in front of a RecordingUpstream answering `reply`."""
    async with RecordingUpstream(reply) as upstream:
        config = GatewayConfig(directory, (upstream_url or upstream.url) + "/3rdparty/v1", extra=extra)
        capture = LogCapture()
        gateway = create_app(config.settings(), env=config.env, log_sink=capture)
        async with (
            UvicornServer(gateway, lifespan="on") as server,
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        ):
            yield Env(upstream, gateway, client, capture, config)
