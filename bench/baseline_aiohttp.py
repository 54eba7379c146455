"""The baseline: a bare forwarder on aiohttp (server and client), no policy, no credentials, no logging.

    python bench/baseline_aiohttp.py --upstream http://127.0.0.1:8081 --port 8090 [--hs256 SECRET]

Every request is forwarded as it came (method, path and query, body, end-to-end headers minus `Host`)
to `--upstream` through one pooled `aiohttp.ClientSession`, and the answer is relayed whole. This is
the "raw aiohttp forwarder" of DESIGN.md's performance facts: the floor a Python gateway built on
aiohttp's client can reach, and what smsguard is compared against. `--hs256 SECRET` adds what the
DESIGN.md figure also had: an HS256 bearer token verified with PyJWT on every request (401 otherwise).
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from aiohttp import web

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
RESPONSE_DROP = frozenset({*HOP_BY_HOP, "date", "server"})


def build_app(upstream: str, hs256_secret: str | None, pool_size: int) -> web.Application:
    upstream = upstream.rstrip("/")
    app = web.Application()
    verify = None
    if hs256_secret is not None:
        import jwt

        verifier = jwt.PyJWT()

        def verify(request: web.Request) -> bool:
            header = request.headers.get("Authorization", "")
            if not header.startswith("Bearer "):
                return False
            try:
                verifier.decode(header[7:], hs256_secret, algorithms=["HS256"], options={"require": ["exp"]})
            except jwt.InvalidTokenError:
                return False
            return True

    async def open_session(app: web.Application):
        connector = aiohttp.TCPConnector(limit=pool_size, keepalive_timeout=60)
        app["session"] = aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False)
        yield
        await app["session"].close()

    app.cleanup_ctx.append(open_session)

    async def forward(request: web.Request) -> web.StreamResponse:
        if verify is not None and not verify(request):
            return web.json_response({"message": "invalid token"}, status=401)
        try:
            body = await request.read()
        except ConnectionResetError:  # the client left mid-body (the slow-client test does): nothing to answer
            return web.Response(status=499)
        headers = {name: value for name, value in request.headers.items() if name.lower() not in HOP_BY_HOP}
        session: aiohttp.ClientSession = request.app["session"]
        async with session.request(
            request.method,
            upstream + request.path_qs,
            data=body or None,
            headers=headers,
            allow_redirects=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        ) as answer:
            payload = await answer.read()
            out = {name: value for name, value in answer.headers.items() if name.lower() not in RESPONSE_DROP}
            return web.Response(status=answer.status, body=payload, headers=out)

    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8081")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hs256", metavar="SECRET", help="verify an HS256 bearer token on every request")
    parser.add_argument("--pool-size", type=int, default=100, help="upstream keep-alive connections (smsguard: 100)")
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's own event loop")
    args = parser.parse_args()
    if not args.no_uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = build_app(args.upstream, args.hs256, args.pool_size)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, backlog=4096)


if __name__ == "__main__":
    main()
