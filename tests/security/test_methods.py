"""Method tricks against the real gateway: HEAD is not GET, no overrides, methods are case-sensitive.

A method no rule lists is a 404 that never reaches the upstream, whatever the token holds; a method
the parser does not know (or in the wrong case) is a 400; method and path override headers, in every
spelling an upstream framework might fold, are stripped, so the upstream acts on the method and path
that were authorized.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from fakes import RecordingUpstream
from harness import MOUNT, WATCH, Running, parse, recorded, status
from harness import request as http_request

pytestmark = pytest.mark.asyncio(loop_scope="module")

MESSAGES = MOUNT + "/messages"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Running, RecordingUpstream]]:
    async with recorded(tmp_path_factory.mktemp("methods")) as pair:
        yield pair


@pytest.fixture(autouse=True)
def _fresh_upstream(env: tuple[Running, RecordingUpstream]) -> None:
    env[1].requests.clear()


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "TRACE", "PUT", "PATCH", "PROPFIND", "PURGE", "LINK"])
async def test_methods_no_rule_lists_are_a_404_even_for_a_superuser(
    env: tuple[Running, RecordingUpstream], method: str
) -> None:
    """HEAD /messages is not GET /messages; OPTIONS, TRACE, WebDAV verbs: default deny, never forwarded."""
    gw, upstream = env
    token = await gw.token("all:any")
    raw = await gw.raw(http_request(method, MESSAGES, f"Authorization: Bearer {token}"))
    assert status(raw) == 404
    assert upstream.requests == []


@pytest.mark.parametrize("method", ["get", "Get", "pOST", "GETT", "FOO", "G\x00ET", "GET\t"])
async def test_unknown_or_lowercase_methods_are_a_400(env: tuple[Running, RecordingUpstream], method: str) -> None:
    """Methods are case-sensitive tokens: `get` is not GET, an unknown verb never reaches the policy."""
    gw, upstream = env
    token = await gw.token("all:any")
    assert status(await gw.raw(http_request(method, MESSAGES, f"Authorization: Bearer {token}"))) == 400
    assert upstream.requests == []


async def test_connect_is_never_forwarded(env: tuple[Running, RecordingUpstream]) -> None:
    """CONNECT (authority-form or a path) never becomes a tunnel to the upstream's host."""
    gw, upstream = env
    token = await gw.token("all:any")
    for target in ("127.0.0.1:6379", MESSAGES):
        raw = await gw.raw(http_request("CONNECT", target, f"Authorization: Bearer {token}"))
        assert status(raw) in (400, 404)
    assert upstream.requests == []


OVERRIDES = [
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
    "x_http_method_override",
    "X.HTTP.Method.Override",
    "X-Original-URL",
    "X-Rewrite-URL",
    "x_original_url",
]


@pytest.mark.parametrize("header", OVERRIDES)
async def test_override_headers_never_reach_the_upstream(env: tuple[Running, RecordingUpstream], header: str) -> None:
    """A messages:read token sending `X-HTTP-Method-Override: DELETE` or `X-Original-URL: /devices` only reads."""
    gw, upstream = env
    token = await gw.token("messages:read")
    value = "DELETE" if "method" in header.lower() else MOUNT + "/devices"
    raw = await gw.raw(http_request("GET", MESSAGES + "/abc", f"Authorization: Bearer {token}", f"{header}: {value}"))
    assert parse(raw).status == 200
    [seen] = upstream.requests
    assert (seen.method, seen.raw_path) == ("GET", MESSAGES + "/abc")
    normalized = {name.replace("_", "-").replace(".", "-") for name in seen.names()}
    assert normalized.isdisjoint(
        {"x-http-method-override", "x-http-method", "x-method-override", "x-original-url", "x-rewrite-url"}
    )
    assert value not in str(seen.headers)


async def test_an_override_cannot_turn_a_denied_method_into_an_allowed_one(
    env: tuple[Running, RecordingUpstream],
) -> None:
    """The method decided is the one on the request line: DELETE with `X-HTTP-Method-Override: GET` stays a 403."""
    gw, upstream = env
    token = await gw.token("messages:read")
    raw = await gw.raw(
        http_request("DELETE", MESSAGES + "/abc", f"Authorization: Bearer {token}", "X-HTTP-Method-Override: GET")
    )
    assert status(raw) == 403
    assert upstream.requests == []


async def test_head_is_forwarded_only_where_a_rule_lists_it(
    env: tuple[Running, RecordingUpstream],
) -> None:
    """Control: the same token and path with GET is forwarded, so the 404 for HEAD is the policy's word."""
    gw, upstream = env
    token = await gw.token("messages:list")
    assert status(await gw.raw(http_request("GET", MESSAGES, f"Authorization: Bearer {token}"))) == 200
    assert status(await gw.raw(http_request("HEAD", MESSAGES, f"Authorization: Bearer {token}"))) == 404
    assert [seen.method for seen in upstream.requests] == ["GET"]


async def test_a_websocket_upgrade_is_refused_cleanly(env: tuple[Running, RecordingUpstream]) -> None:
    """An `Upgrade: websocket` handshake on a proxied route: 403, nothing forwarded, no server error logged."""
    gw, upstream = env
    token = await gw.token("all:any")
    mark = WATCH.mark()
    handshake = http_request(
        "GET",
        MESSAGES,
        f"Authorization: Bearer {token}",
        "Upgrade: websocket",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ).replace(b"Connection: close", b"Connection: Upgrade")
    assert status(await gw.raw(handshake, timeout_s=1)) == 403
    assert upstream.requests == []
    assert not [record for record in WATCH.records[mark[1] :] if "ASGI callable returned" in record]
