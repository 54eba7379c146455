"""The reference point: the same bare forwarder on httpx.AsyncClient, as a minimal ASGI app under uvicorn.

    python bench/baseline_httpx.py --upstream http://127.0.0.1:8081 --port 8091 [--client aiohttp]

uvicorn runs it as it runs smsguard (httptools, uvloop, one worker) but without an access log. It is
what DESIGN.md warns against for the data plane (httpx's object model per request: encode/httpx#3215);
smsguard's target is at least five times its throughput.

`--client aiohttp` swaps httpx for one pooled aiohttp ClientSession and keeps everything else: that is
smsguard's own stack (uvicorn + aiohttp's client) with nothing of the gateway in it, which separates
what the server side costs from what the gateway's work costs.
"""

from __future__ import annotations

import argparse

import aiohttp
import httpx
import uvicorn

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)
RESPONSE_DROP = frozenset({*HOP_BY_HOP, b"date", b"server"})


class Forwarder:
    """A pure ASGI app: read the body, send it upstream with httpx, relay the whole answer."""

    def __init__(self, upstream: str, pool_size: int) -> None:
        self.upstream = upstream.rstrip("/")
        self.pool_size = pool_size
        self.client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        limits = httpx.Limits(max_connections=self.pool_size, max_keepalive_connections=self.pool_size)
        self.client = httpx.AsyncClient(limits=limits, trust_env=False, follow_redirects=False)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def exchange(self, method: str, target: str, body: bytes, headers: list) -> tuple[int, list, bytes]:
        assert self.client is not None
        answer = await self.client.request(method, target, content=body, headers=headers)
        return answer.status_code, answer.headers.raw, answer.content

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before its body was in: forward nothing
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(name, value) for name, value in scope["headers"] if name not in HOP_BY_HOP]
        target = self.upstream + scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        status, raw_headers, content = await self.exchange(scope["method"], target, bytes(body), headers)
        out = [(name, value) for name, value in raw_headers if name.lower() not in RESPONSE_DROP]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": content})

    async def lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.open()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


class AiohttpForwarder(Forwarder):
    """The same app with aiohttp's ClientSession as the client (smsguard's data-plane client)."""

    session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.pool_size, keepalive_timeout=60)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def exchange(self, method: str, target: str, body: bytes, headers: list) -> tuple[int, list, bytes]:
        assert self.session is not None
        sent = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]
        async with self.session.request(
            method,
            target,
            data=body or None,
            headers=sent,
            allow_redirects=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        ) as answer:
            content = await answer.read()
            return answer.status, answer.raw_headers, content


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8081")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pool-size", type=int, default=100, help="upstream keep-alive connections (smsguard: 100)")
    parser.add_argument("--client", choices=("httpx", "aiohttp"), default="httpx", help="the upstream client")
    args = parser.parse_args()
    app = (AiohttpForwarder if args.client == "aiohttp" else Forwarder)(args.upstream, args.pool_size)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        http="httptools",
        loop="uvloop",
        lifespan="on",
        access_log=False,
        server_header=False,
        log_level="warning",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
