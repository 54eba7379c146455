"""proxy.py: a provider's "bad credentials" answer inside a success (BSG's 200 `error: 2`) becomes a 502.

Only upstreams whose injector has a `credential_error` rule are inspected, only answers with the rule's
status and a JSON type, and only up to `INSPECT_BYTES`; everything else streams through untouched.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from fakes import RecordingUpstream, Reply

from gateway.config.settings import (
    CredentialErrorRule,
    HeaderCredentialSettings,
    ProxySettings,
    Secret,
    UpstreamSettings,
)
from gateway.guard.authorize import Decision
from gateway.policy.model import Rule
from gateway.policy.paths import canonical_path
from gateway.proxy.forward import INSPECT_BYTES, ProxyApp
from gateway.web.asgi import Receive, Scope, Send

CANARY = "live_canaryInspectKey5b1"
BSG_RULE = CredentialErrorRule(status=200, field="error", equals=2)
INVALID = json.dumps({"error": 2, "errorDescription": "Invalid API key"}).encode()
JSON = ("Content-Type", "application/json; charset=utf-8")


class Guard:
    """Stands in for GuardMiddleware: canonical path and a hand-built Decision for a catch-all rule."""

    def __init__(self, app: ProxyApp) -> None:
        self.app = app
        self.rule = Rule(
            methods=frozenset({"GET", "POST"}),
            path="/{any}",
            full_path="/bsg/v1/{any}",
            public=True,
            upstream="bsg",
            mount="/bsg/v1",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["smsguard"] = Decision(canonical_path(scope["raw_path"]), self.rule, {}, None)
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def client(upstream: RecordingUpstream, *, checked: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    credentials = HeaderCredentialSettings(
        headers={"X-API-KEY": Secret(CANARY)}, credential_error=BSG_RULE if checked else None
    )
    settings = UpstreamSettings(name="bsg", url=upstream.url + "/rest", credentials=credentials)
    app = ProxyApp({"bsg": settings}, ProxySettings())
    await app.start()
    try:
        transport = httpx.ASGITransport(Guard(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.example") as http:
            yield http
    finally:
        await app.aclose()


async def test_error_2_in_a_200_is_a_logged_502(caplog: pytest.LogCaptureFixture) -> None:
    """The provider's 200 {"error": 2} never reaches the client as a success; it is logged without the key."""
    caplog.set_level(logging.DEBUG)
    async with RecordingUpstream(Reply(200, headers=[JSON], body=INVALID)) as upstream, client(upstream) as http:
        response = await http.get("/bsg/v1/common/balance")
    assert response.status_code == 502
    assert response.json() == {"message": "upstream rejected the gateway's credentials"}
    (record,) = [r for r in caplog.records if r.name == "smsguard.upstream"]
    assert record.levelno == logging.ERROR
    assert "'bsg'" in record.getMessage()
    assert CANARY not in response.text + "".join(r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, headers=[JSON], body=b'{"error":0,"amount":"12.34"}'),
        Reply(200, headers=[JSON], body=b'{"error":2'),  # not JSON after all
        Reply(200, headers=[("Content-Type", "text/plain")], body=INVALID),  # not JSON by type
        Reply(403, headers=[JSON], body=INVALID),  # another status: not this rule's (401 is a refusal: 502)
        Reply(200, headers=[JSON], body=b'{"error":2,"pad":"' + b"x" * INSPECT_BYTES + b'"}'),  # too big to read
        Reply(200, headers=[JSON], stream_bytes=3 * INSPECT_BYTES, content_length=False, fill=b" "),
    ],
    ids=["success", "truncated-json", "text", "other-status", "large", "large-chunked"],
)
async def test_other_answers_pass_through_byte_for_byte(reply: Reply) -> None:
    """Successes, non-JSON, other statuses and large answers are relayed exactly as the provider sent them."""
    async with RecordingUpstream(reply) as upstream, client(upstream) as http:
        response = await http.get("/bsg/v1/common/balance")
    assert response.status_code == reply.status
    expected = reply.body if not reply.stream_bytes else reply.fill * reply.stream_bytes
    assert response.content == expected


async def test_small_chunked_and_gzipped_answers_are_still_inspected() -> None:
    """Without a Content-Length, or compressed despite `Accept-Encoding: identity`, the error is still found."""
    replies = [
        Reply(200, headers=[JSON], stream_bytes=len(INVALID), content_length=False, fill=INVALID),
        Reply(200, headers=[JSON, ("Content-Encoding", "gzip")], body=gzip.compress(INVALID)),
    ]
    for reply in replies:
        async with RecordingUpstream(reply) as upstream, client(upstream) as http:
            response = await http.get("/bsg/v1/common/balance", headers={"accept-encoding": "gzip"})
        assert response.status_code == 502
        assert upstream.last.values("accept-encoding") == ["identity"]


async def test_unchecked_upstreams_keep_the_clients_accept_encoding() -> None:
    """Without a credential_error rule nothing is read and the client's Accept-Encoding is forwarded."""
    reply = Reply(200, headers=[JSON], body=INVALID)
    async with RecordingUpstream(reply) as upstream, client(upstream, checked=False) as http:
        response = await http.get("/bsg/v1/common/balance", headers={"accept-encoding": "br"})
    assert (response.status_code, response.content) == (200, INVALID)
    assert upstream.last.values("accept-encoding") == ["br"]
