"""proxy.py: the upstream URL, what the upstream receives, what the client gets back, and streaming.

Forwarding tests run the real ProxyApp against a real loopback upstream (`fakes.RecordingUpstream`) and
assert what arrived there. Streaming and memory tests go through a real uvicorn server, since httpx's
ASGITransport buffers whole bodies.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from fakes import FaultServer, RecordingUpstream, Reply, UvicornServer
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from gateway.config.settings import (
    BasicCredentialSettings,
    CredentialSettings,
    HeaderCredentialSettings,
    NoneCredentialSettings,
    ProxySettings,
    Secret,
    UpstreamSettings,
)
from gateway.errors import BadRequest
from gateway.guard.authorize import Decision
from gateway.policy.model import Rule
from gateway.policy.paths import canonical_path
from gateway.proxy.credentials import Credentials, OutgoingRequest
from gateway.proxy.forward import ProxyApp, rewrite_location, upstream_url
from gateway.web.asgi import Message, Receive, Scope, Send

CANARY = "canary-s3cret-7d1e"
BASIC = BasicCredentialSettings(username=Secret("ops"), password=Secret(CANARY))
BASIC_VALUE = "Basic " + base64.b64encode(f"ops:{CANARY}".encode()).decode()
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})


# ------------------------------------------------------------------------------------------ helpers


def make_rule(mount: str = "/3rdparty/v1", upstream: str | None = "smsgate") -> Rule:
    return Rule(
        methods=METHODS, path="/{any}", full_path=f"{mount}/{{any}}", public=True, upstream=upstream, mount=mount
    )


class Guard:
    """Stands in for GuardMiddleware: canonicalizes the path and attaches a hand-built Decision."""

    def __init__(self, app: ProxyApp, rule: Rule) -> None:
        self.app = app
        self.rule = rule

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = canonical_path(scope.get("raw_path") or scope["path"].encode())
            scope["smsguard"] = Decision(path, self.rule, {}, None)
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def gateway(
    upstream_url_: str,
    *,
    base_path: str = "/3rdparty/v1",
    mount: str = "/3rdparty/v1",
    credentials: CredentialSettings = BASIC,
    injector: Credentials | None = None,
    proxy: ProxySettings | None = None,
    **upstream: Any,
) -> AsyncIterator[Guard]:
    """A started ProxyApp for one upstream named `smsgate`, behind the stand-in guard."""
    settings = UpstreamSettings(name="smsgate", url=upstream_url_ + base_path, credentials=credentials, **upstream)
    app = ProxyApp({"smsgate": settings}, proxy or ProxySettings(), {"smsgate": injector} if injector else None)
    await app.start()
    try:
        yield Guard(app, make_rule(mount))
    finally:
        await app.aclose()


def client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app, client=("203.0.113.7", 5000))
    return httpx.AsyncClient(transport=transport, base_url="http://gw.example")


async def call(
    app: Any,
    method: str = "GET",
    path: str = "/3rdparty/v1/messages",
    *,
    query: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
    body: Sequence[bytes] = (b"",),
) -> tuple[int, dict[str, str], bytes]:
    """Drive the ASGI app directly, with exact control over raw headers and body messages."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("203.0.113.7", 5000),
        "server": ("gw.example", 80),
    }
    messages = [{"type": "http.request", "body": c, "more_body": i < len(body) - 1} for i, c in enumerate(body)]
    done = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    await app(scope, receive, send)
    done.set()
    start = sent[0]
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], response_headers, b"".join(m.get("body", b"") for m in sent[1:])


# ------------------------------------------------------------------------------------- upstream URL

SMSGATE = URL("https://api.sms-gate.app/3rdparty/v1")


@pytest.mark.parametrize(
    ("base", "mount", "path", "query", "expected"),
    [
        (SMSGATE, "/3rdparty/v1", "/3rdparty/v1/messages", "", "https://api.sms-gate.app/3rdparty/v1/messages"),
        (
            SMSGATE,
            "/sms",
            "/sms/messages/abc",
            "a=1&b=%20x&c=+&d=%2B&e",
            "https://api.sms-gate.app/3rdparty/v1/messages/abc?a=1&b=%20x&c=+&d=%2B&e",
        ),
        (SMSGATE, "/sms", "/sms", "", "https://api.sms-gate.app/3rdparty/v1"),
        (SMSGATE, "/sms", "/sms/", "", "https://api.sms-gate.app/3rdparty/v1/"),
        (SMSGATE, "", "/messages", "", "https://api.sms-gate.app/3rdparty/v1/messages"),
        (URL("http://127.0.0.1:8080"), "", "/", "", "http://127.0.0.1:8080/"),
        (URL("http://127.0.0.1:8080"), "/a", "/a", "q", "http://127.0.0.1:8080/?q"),
        (URL("http://[::1]:9000/api"), "", "/x", "", "http://[::1]:9000/api/x"),
        (SMSGATE, "", "/@evil.example/x", "", "https://api.sms-gate.app/3rdparty/v1/@evil.example/x"),
        (SMSGATE, "", "/:80@evil.example", "", "https://api.sms-gate.app/3rdparty/v1/:80@evil.example"),
        (SMSGATE, "", "/messages/%20%F0%25", "", "https://api.sms-gate.app/3rdparty/v1/messages/%20%F0%25"),
    ],
)
def test_upstream_url(base: URL, mount: str, path: str, query: str, expected: str) -> None:
    """Base + canonical path without the mount + raw query, bytes untouched."""
    assert str(upstream_url(base, mount, path, query)) == expected


@pytest.mark.parametrize(
    ("mount", "path", "query"),
    [
        ("/sms", "/smsx/messages", ""),  # outside the mount (prefix is not a segment boundary)
        ("/sms", "/other", ""),
        ("", "//evil.example/x", ""),
        ("", "/a/../b", ""),
        ("", "/a/./b", ""),
        ("", "/..", ""),
        ("", "relative", ""),
        ("", "", ""),
        ("", "/a?b=1", ""),
        ("", "/a#b", ""),
        ("", "/a b", ""),
        ("", "/a;b", ""),
        ("", "/a\\b", ""),
        ("", "/%2e%2e", ""),
        ("", "/a/%2E", ""),
        ("", "/%41", ""),
        ("", "/a%2Fb", ""),
        ("", "/a%5Cb", ""),
        ("", "/a%3Bb", ""),
        ("", "/a%00b", ""),
        ("", "/a%f0", ""),
        ("", "/a", "a=1#frag"),
        ("", "/a", "a=b c"),
        ("", "/a", "a=\x7f"),
        ("", "/a", "a=\n"),
        ("", "/a", "a=\xe9"),
    ],
)
def test_upstream_url_refuses_non_canonical(mount: str, path: str, query: str) -> None:
    """Anything not canonical is a 400, never some other URL."""
    with pytest.raises(BadRequest):
        upstream_url(SMSGATE, mount, path, query)


_PCHAR = "abcXYZ019-._~!$&'()*+,=:@%"
_SEGMENTS = st.one_of(
    st.text(alphabet=_PCHAR, min_size=1, max_size=12),
    st.sampled_from(["@evil.example", "evil.example:80@x", ":80@x", "%2F", "%40evil", "..", ".", "%2e%2e", ""]),
)
_PATHS = st.one_of(
    st.lists(_SEGMENTS, min_size=1, max_size=6).map(lambda parts: "/" + "/".join(parts)),
    st.sampled_from(["//evil.example", "//evil.example:80/x", "@evil.example", "http://evil.example/x", "/\\evil"]),
    st.text(max_size=30),
)
_QUERIES = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40),
    st.sampled_from(["@evil.example", "x=//evil.example", "#@evil.example", "a=1&b=%23"]),
    st.text(max_size=20),
)
_BASES = st.sampled_from(
    [SMSGATE, URL("http://127.0.0.1:8080"), URL("http://[::1]:9000/api/v2"), URL("https://api.bsg.world:8443/rest")]
)


@settings(max_examples=400, deadline=None)
@given(base=_BASES, mount=st.sampled_from(["", "/sms", "/3rdparty/v1"]), path=_PATHS, query=_QUERIES)
def test_upstream_host_is_always_the_configured_one(base: URL, mount: str, path: str, query: str) -> None:
    """Property: for any path and query, the URL stays on the base's scheme, host and port (or it is a 400)."""
    try:
        url = upstream_url(base, mount, path if not mount else mount + path, query)
    except BadRequest:
        return
    for candidate in (url, URL(str(url))):  # as built, and as it reads back from the wire form
        assert (candidate.scheme, candidate.host, candidate.port) == (base.scheme, base.host, base.port)
        assert candidate.raw_path.startswith(base.raw_path.rstrip("/"))
        assert candidate.raw_user is None
        assert candidate.raw_password is None
    assert url.raw_query_string == query


@pytest.mark.parametrize(
    ("location", "mount", "expected"),
    [
        ("/3rdparty/v1/messages/abc", "/sms", "/sms/messages/abc"),
        ("https://api.sms-gate.app/3rdparty/v1/messages/abc?x=1", "/sms", "/sms/messages/abc?x=1"),
        ("https://api.sms-gate.app:443/3rdparty/v1/messages/abc", "/sms", "/sms/messages/abc"),
        ("HTTPS://API.SMS-GATE.APP/3rdparty/v1/m", "/sms", "/sms/m"),
        ("/3rdparty/v1/m#frag", "/sms", "/sms/m#frag"),
        ("/3rdparty/v1", "/sms", "/sms"),
        ("/3rdparty/v1/", "", "/"),
        ("/3rdparty/v1/messages/abc", "/3rdparty/v1", "/3rdparty/v1/messages/abc"),
        ("http://api.sms-gate.app/3rdparty/v1/m", "/sms", None),  # another scheme: another origin
        ("https://evil.example/3rdparty/v1/m", "/sms", None),
        ("https://api.sms-gate.app:8443/3rdparty/v1/m", "/sms", None),
        ("/3rdparty/v10/m", "/sms", None),  # outside the base path
        ("/other", "/sms", None),
        ("/internal/admin", "/sms", None),
        ("http://127.0.0.1:18481/internal/admin", "/sms", None),  # the leak
        ("//api.sms-gate.app/3rdparty/v1/x", "/sms", None),  # scheme-relative
        ("messages/abc", "/sms", None),  # relative: resolved against the gateway, no rule vouches for it
        ("https://api.sms-gate.app:bad/3rdparty/v1/m", "/sms", None),
    ],
)
def test_rewrite_location(location: str, mount: str, expected: str | None) -> None:
    """Locations into the upstream base point at the gateway mount; every other one is dropped (None)."""
    assert rewrite_location(location, SMSGATE, mount) == expected


# ----------------------------------------------------------------------------- what the upstream sees


async def test_forwards_exactly_what_was_authorized() -> None:
    """Method, path, raw query and body arrive unchanged, with exactly one credential, ours."""
    body = b'{"message":"hi","phoneNumbers":["+15550100"]}'
    async with RecordingUpstream(Reply(202, body=b'{"id":"1"}')) as upstream, gateway(upstream.url) as app:
        status, _, answer = await call(
            app,
            "POST",
            "/3rdparty/v1/messages",
            query=b"skipPhoneValidation=true&x=%20y&z=+&w",
            headers=[
                ("Host", "evil.example"),
                ("Authorization", "Bearer client-token"),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("User-Agent", "sms-client/1.0"),
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "1"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Upgrade", "h2c"),
                ("Proxy-Authorization", "Basic eA=="),
                ("Cookie", "session=1"),
                ("X-HTTP-Method-Override", "DELETE"),
                ("X-Forwarded-For", "1.2.3.4"),
                ("Forwarded", "for=1.2.3.4"),
                ("X-Request-Id", "r-1"),
            ],
            body=[body],
        )
        seen = upstream.last
    assert (status, answer) == (202, b'{"id":"1"}')
    assert seen.method == "POST"
    assert seen.raw_path == "/3rdparty/v1/messages?skipPhoneValidation=true&x=%20y&z=+&w"
    assert seen.body == body
    assert seen.values("authorization") == [BASIC_VALUE]
    assert seen.values("host") == [f"127.0.0.1:{upstream.port}"]
    assert seen.values("content-length") == [str(len(body))]
    assert seen.values("user-agent") == ["sms-client/1.0"]
    assert seen.values("x-request-id") == ["r-1"]
    assert seen.values("x-forwarded-for") == ["203.0.113.7"]
    assert seen.values("x-forwarded-host") == ["evil.example"]
    assert seen.values("x-forwarded-proto") == ["http"]
    forbidden = {"keep-alive", "te", "upgrade", "proxy-authorization", "cookie", "x-http-method-override"}
    forbidden |= {"x-hop", "forwarded", "transfer-encoding"}
    assert forbidden.isdisjoint(seen.names())


@pytest.mark.parametrize("alias", ["X-API-KEY", "x-api-key", "x_api_key", "X.Api.Key", "X_Api.KEY"])
async def test_header_credential_aliases_stripped(alias: str) -> None:
    """Whatever alias the client uses, the upstream receives one X-API-KEY: ours."""
    credentials = HeaderCredentialSettings(headers={"X-API-KEY": Secret(CANARY)})
    async with RecordingUpstream() as upstream, gateway(upstream.url, credentials=credentials) as app:
        await call(app, headers=[(alias, "client-key"), ("Authorization", "Bearer t"), ("apikey", "keep-me")])
        seen = upstream.last
    keys = [
        (name, value) for name, value in seen.headers if name.lower().replace("_", "-").replace(".", "-") == "x-api-key"
    ]
    assert keys == [("X-API-KEY", CANARY)]
    assert seen.values("authorization") == []
    assert seen.values("apikey") == ["keep-me"]  # a different name is not an alias


async def test_no_headers_of_aiohttps_own() -> None:
    """The upstream gets no Accept, Accept-Encoding, User-Agent or Content-Type the client did not send."""
    async with RecordingUpstream() as upstream, gateway(upstream.url, credentials=NoneCredentialSettings()) as app:
        await call(app, "POST", headers=[("Content-Length", "2")], body=[b"hi"])
        seen = upstream.last
    assert set(seen.names()) == {"host", "content-length", "x-forwarded-for", "x-forwarded-proto"}


async def test_get_and_head_forwarded_without_body() -> None:
    """GET and HEAD keep their method and get no framing headers they did not have."""
    async with RecordingUpstream(Reply(body=b"hello")) as upstream, gateway(upstream.url) as app:
        get = await call(app, "GET")
        head = await call(app, "HEAD")
        methods = [r.method for r in upstream.requests]
        framing = [r.values("content-length") + r.values("transfer-encoding") for r in upstream.requests]
    assert methods == ["GET", "HEAD"]
    assert framing == [[], []]
    assert get[2] == b"hello"
    assert head[2] == b""
    assert head[1]["content-length"] == "5"


@pytest.mark.parametrize("size", [100, 300_000])
async def test_content_length_preserved(size: int) -> None:
    """Small (buffered) and large (streamed) bodies keep the client's Content-Length; never chunked."""
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    async with RecordingUpstream() as upstream, gateway(upstream.url) as app:
        pieces = [payload[i : i + 65536] for i in range(0, size, 65536)]
        status, _, _ = await call(app, "POST", headers=[("Content-Length", str(size))], body=pieces)
        seen = upstream.last
    assert status == 200
    assert seen.values("content-length") == [str(size)]
    assert seen.values("transfer-encoding") == []
    assert seen.body == payload


async def test_small_chunked_body_sent_with_length() -> None:
    """A chunked body that fits the buffer is sent with a Content-Length (providers may refuse chunked)."""
    async with RecordingUpstream() as upstream, gateway(upstream.url) as app:
        await call(app, "POST", headers=[("Transfer-Encoding", "chunked")], body=[b"ab", b"cd", b"ef", b""])
        seen = upstream.last
    assert seen.values("content-length") == ["6"]
    assert seen.values("transfer-encoding") == []
    assert seen.body == b"abcdef"


async def test_large_chunked_body_stays_chunked() -> None:
    """A chunked body bigger than the buffer is streamed, still chunked."""
    chunks = [bytes([i]) * 100 for i in range(10)]
    proxy = ProxySettings(retry_buffer_bytes=16)
    async with RecordingUpstream() as upstream, gateway(upstream.url, proxy=proxy) as app:
        async with client(app) as http:

            async def stream() -> AsyncIterator[bytes]:
                for chunk in chunks:
                    yield chunk

            response = await http.post("/3rdparty/v1/messages", content=stream())
        seen = upstream.last
    assert response.status_code == 200
    assert seen.values("transfer-encoding") == ["chunked"]
    assert seen.values("content-length") == []
    assert seen.body == b"".join(chunks)


async def test_body_over_limit_by_content_length_never_sent() -> None:
    """A declared length over max_body_bytes is a 413 before the upstream is contacted."""
    proxy = ProxySettings(max_body_bytes=10)
    async with RecordingUpstream() as upstream, gateway(upstream.url, proxy=proxy) as app:
        status, _, body = await call(app, "POST", headers=[("Content-Length", "11")], body=[b"x" * 11])
        assert upstream.requests == []
    assert status == 413
    assert b"message" in body


@pytest.mark.parametrize("buffer", [65536, 16])
async def test_chunked_body_over_limit(buffer: int) -> None:
    """A chunked body growing past the maximum is a 413; the upstream never gets a complete request."""
    proxy = ProxySettings(max_body_bytes=1000, retry_buffer_bytes=buffer)
    async with RecordingUpstream() as upstream, gateway(upstream.url, proxy=proxy) as app:
        status, _, _ = await call(app, "POST", headers=[("Transfer-Encoding", "chunked")], body=[b"y" * 500] * 10)
        await asyncio.sleep(0.05)
        assert upstream.requests == []
    assert status == 413


@pytest.mark.parametrize(
    "headers",
    [
        [("Content-Length", "5"), ("Content-Length", "6")],
        [("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
        [("Content-Length", "-5")],
        [("Content-Length", "5x")],
    ],
)
async def test_ambiguous_framing_refused(headers: list[tuple[str, str]]) -> None:
    """Conflicting or malformed framing is a 400 and never forwarded (request smuggling)."""
    async with RecordingUpstream() as upstream, gateway(upstream.url) as app:
        status, _, _ = await call(app, "POST", headers=headers, body=[b"hello"])
        assert upstream.requests == []
    assert status == 400


async def test_connect_is_never_forwarded() -> None:
    """CONNECT would become a tunnel request to the upstream's host: refused even if a rule allowed it."""
    async with RecordingUpstream() as upstream, gateway(upstream.url) as app:
        status, _, _ = await call(app, "CONNECT")
        assert upstream.requests == []
    assert status == 400


async def test_bad_query_refused() -> None:
    """A query with spaces or non-ASCII bytes is a 400, never forwarded."""
    async with RecordingUpstream() as upstream, gateway(upstream.url) as app:
        statuses = [(await call(app, query=q))[0] for q in (b"a=b c", b"a=\xe9", b"a=1#x")]
        assert upstream.requests == []
    assert statuses == [400, 400, 400]


# --------------------------------------------------------------------------- what the client gets back


async def test_redirects_are_not_followed() -> None:
    """A 302 is relayed without following it; a Location outside the upstream's base is dropped, not passed on."""
    reply = Reply(302, headers=[("Location", "https://elsewhere.example/steal"), ("Content-Location", "/x")])
    async with RecordingUpstream(reply) as upstream, gateway(upstream.url) as app:
        status, headers, _ = await call(app, "POST", headers=[("Content-Length", "1")], body=[b"x"])
        assert len(upstream.requests) == 1
    assert status == 302
    assert "location" not in headers
    assert "content-location" not in headers


async def test_location_never_reveals_the_upstream_address() -> None:
    """An absolute Location on the upstream's own address but outside its base is dropped (issue 17)."""
    async with RecordingUpstream() as upstream:
        upstream.reply(Reply(201, headers=[("Location", upstream.url + "/internal/admin")]))
        async with gateway(upstream.url) as app:
            status, headers, body = await call(app, "POST", "/3rdparty/v1/messages", body=[b""])
    assert status == 201
    assert "location" not in headers
    assert upstream.url.encode() not in body


@pytest.mark.parametrize(
    ("location", "mount", "expected"),
    [
        ("/3rdparty/v1/messages/abc", "/sms", "/sms/messages/abc"),
        ("{base}/3rdparty/v1/messages/abc", "/sms", "/sms/messages/abc"),
        ("/3rdparty/v1/messages/abc", "/3rdparty/v1", "/3rdparty/v1/messages/abc"),
    ],
)
async def test_location_points_at_the_gateway(location: str, mount: str, expected: str) -> None:
    """SMSGate's `202 Location: /3rdparty/v1/messages/<id>` is rewritten onto the mount."""
    async with RecordingUpstream() as upstream:
        upstream.reply(Reply(202, headers=[("Location", location.format(base=upstream.url))]))
        async with gateway(upstream.url, mount=mount) as app:
            status, headers, _ = await call(app, "POST", f"{mount}/messages", body=[b""])
    assert status == 202
    assert headers["location"] == expected


async def test_response_bytes_and_headers_pass_through() -> None:
    """Compressed bodies pass undecoded; hop-by-hop headers are dropped; duplicates are kept (an upstream
    without gateway credentials: its cookies concern no secret of the gateway's)."""
    compressed = gzip.compress(b'{"state":"Pending"}' * 50)
    reply = Reply(
        200,
        headers=[
            ("Content-Encoding", "gzip"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
            ("X-Upstream", "yes"),
            ("Proxy-Authenticate", "Basic"),
        ],
        body=compressed,
    )
    async with (
        RecordingUpstream(reply) as upstream,
        gateway(upstream.url, credentials=NoneCredentialSettings()) as app,
        client(app) as http,
        http.stream("GET", "/3rdparty/v1/messages", headers={"accept-encoding": "gzip"}) as response,
    ):
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert raw == compressed
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["x-upstream"] == "yes"
    assert "proxy-authenticate" not in response.headers
    assert response.headers["content-length"] == str(len(compressed))


@pytest.mark.parametrize(
    ("credentials", "status", "dropped"),
    [
        (BASIC, 200, True),
        (HeaderCredentialSettings(headers={"X-API-KEY": Secret(CANARY)}), 404, True),
        (NoneCredentialSettings(), 401, False),
    ],
    ids=["basic", "header", "none"],
)
async def test_provider_cookies_and_challenges_stay_with_the_gateway(
    credentials: CredentialSettings, status: int, dropped: bool
) -> None:
    """Set-Cookie and WWW-Authenticate are dropped wherever the gateway injects credentials (a provider session
    or challenge belongs to the gateway's credential); an upstream without credentials passes them on."""
    reply = Reply(
        status,
        headers=[("Set-Cookie", "PHPSESSID=provider-session"), ("WWW-Authenticate", 'Basic realm="provider"')],
    )
    async with RecordingUpstream(reply) as upstream, gateway(upstream.url, credentials=credentials) as app:
        got, headers, _ = await call(app)
    assert got == status
    assert ("set-cookie" in headers, "www-authenticate" in headers) == (not dropped, not dropped)


# ---------------------------------------------------------------------------- lifecycle and routing


async def test_lifecycle_and_lifespan() -> None:
    """Not ready before start or after close; the ASGI lifespan opens and closes the pools."""
    app = ProxyApp({"smsgate": UpstreamSettings("smsgate", "http://127.0.0.1:9")}, ProxySettings())
    assert not app.ready()
    status, _, body = await call(Guard(app, make_rule()))
    assert status == 503
    assert b"not ready" in body
    queue = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []
    states: list[bool] = []

    async def receive() -> dict[str, Any]:
        states.append(app.ready())
        return queue.pop(0)

    async def send(message: Message) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert states == [False, True]
    assert not app.ready()


async def test_without_decision_nothing_is_forwarded() -> None:
    """ProxyApp without the guard in front fails closed (500), never forwards."""
    async with RecordingUpstream() as upstream, gateway(upstream.url) as app:
        status, _, _ = await call(app.app)
        assert upstream.requests == []
    assert status == 500


async def test_routes_to_the_rules_upstream() -> None:
    """Each rule's `upstream` picks the pool; an unknown one is a 502 and nothing is sent."""
    async with RecordingUpstream(Reply(body=b"a")) as first, RecordingUpstream(Reply(body=b"b")) as second:
        app = ProxyApp({"a": UpstreamSettings("a", first.url), "b": UpstreamSettings("b", second.url)}, ProxySettings())
        await app.start()
        try:
            answers = [(await call(Guard(app, make_rule("", name)), path="/x"))[:3:2] for name in ("b", "a", "zz")]
            no_upstream = (await call(Guard(app, make_rule("", None)), path="/x"))[0]
        finally:
            await app.aclose()
    assert answers[:2] == [(200, b"b"), (200, b"a")]
    assert answers[2][0] == 502
    assert no_upstream == 502
    assert len(first.requests) == len(second.requests) == 1


async def test_pool_exhausted_is_503_with_retry_after() -> None:
    """When every in-flight slot stays taken past pool_timeout_s, the answer is 503 + Retry-After."""
    async with (
        RecordingUpstream(Reply(body=b"slow", delay_s=0.5)) as upstream,
        gateway(upstream.url, pool_size=1, pool_timeout_s=0.1) as app,
    ):
        results = await asyncio.gather(call(app), call(app))
        assert len(upstream.requests) == 1
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200, 503]
    busy = next(headers for status, headers, _ in results if status == 503)
    assert busy["retry-after"] == "1"


# ------------------------------------------------------------------- the credentials flow contract


class QueryKey(Credentials):
    """A test injector in the shape of the coming `query` kind: strips the client's copy, adds ours."""

    kind = "query"
    query_names = frozenset({"apikey"})
    secret_values = (CANARY,)

    async def flow(self, request: OutgoingRequest) -> AsyncGenerator[OutgoingRequest, int]:
        request.query = [("apiKey", CANARY)]
        yield request


async def test_query_credentials_replace_the_clients() -> None:
    """Client copies of an injected query parameter are dropped (any case); the rest pass byte for byte."""
    async with RecordingUpstream() as upstream, gateway(upstream.url, injector=QueryKey()) as app:
        await call(app, query=b"apiKey=client&to=%2B1555&APIKEY=x&apikey&flag")
        seen = upstream.last
    assert seen.query == f"to=%2B1555&flag&apiKey={CANARY}"


@pytest.mark.parametrize(
    ("query", "kept"),
    [
        (b"x=1;apiKey=evil", "x=1"),
        (b"apiKey=evil;x=1", "x=1"),
        (b"a=1;b=2&apiKey=e;c=3", "a=1;b=2;c=3"),  # a kept parameter keeps the separator before it
        (b"x=1;%61piKey=evil", "x=1"),
    ],
)
async def test_semicolon_separates_parameters_when_stripping(query: bytes, kept: str) -> None:
    """`;` is a query separator when stripping credentials: `?x=1;apiKey=evil` never reaches the upstream."""
    async with RecordingUpstream() as upstream, gateway(upstream.url, injector=QueryKey()) as app:
        await call(app, query=query)
        seen = upstream.last
    assert seen.query == f"{kept}&apiKey={CANARY}"


class RefreshOn401(Credentials):
    """A test injector in the shape of the coming token exchange: one retry with a fresh token after 401."""

    kind = "token_exchange"
    header_names = frozenset({"authorization"})

    def __init__(self) -> None:
        self.statuses: list[int] = []

    async def flow(self, request: OutgoingRequest) -> AsyncGenerator[OutgoingRequest, int]:
        request.headers.append(("Authorization", "Bearer stale"))
        status = yield request
        self.statuses.append(status)
        if status == 401:
            request.headers[-1] = ("Authorization", "Bearer fresh")
            self.statuses.append((yield request))


async def test_retry_after_401_replays_a_buffered_body() -> None:
    """An injector's second yield resends once, with the same body bytes and the new credential."""
    injector = RefreshOn401()
    async with RecordingUpstream() as upstream, gateway(upstream.url, injector=injector) as app:
        upstream.queue(Reply(401, body=b"stale"), Reply(202, body=b"ok"))
        status, _, body = await call(app, "POST", headers=[("Content-Length", "4")], body=[b"ab", b"cd"])
        seen = upstream.requests
    assert (status, body) == (202, b"ok")
    assert [r.values("authorization") for r in seen] == [["Bearer stale"], ["Bearer fresh"]]
    assert [r.body for r in seen] == [b"abcd", b"abcd"]
    assert injector.statuses == [401, 202]


async def test_no_retry_when_the_body_was_streamed() -> None:
    """A streamed body cannot be replayed: nothing is resent, and the refusal of the gateway's credential is
    a 502, never the provider's 401 (the client's own token is fine)."""
    injector = RefreshOn401()
    proxy = ProxySettings(retry_buffer_bytes=2)
    async with RecordingUpstream() as upstream, gateway(upstream.url, injector=injector, proxy=proxy) as app:
        upstream.queue(Reply(401, body=b"stale"), Reply(202, body=b"ok"))
        status, _, body = await call(app, "POST", headers=[("Content-Length", "4")], body=[b"ab", b"cd"])
        assert len(upstream.requests) == 1
    assert status == 502
    assert b"stale" not in body


# ------------------------------------------------------------------------------ streaming, for real


async def test_response_streams_as_it_arrives() -> None:
    """The first bytes reach the client long before a slow upstream finishes."""
    reply = Reply(stream_bytes=5 * 1024, chunk_size=1024, chunk_delay_s=0.2)
    async with (
        RecordingUpstream(reply) as upstream,
        gateway(upstream.url) as app,
        UvicornServer(app) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        started = time.monotonic()
        async with http.stream("GET", "/3rdparty/v1/messages") as response:
            chunks = response.aiter_raw()
            first = await anext(chunks)
            first_at = time.monotonic() - started
            rest = b"".join([chunk async for chunk in chunks])
        total = time.monotonic() - started
    assert len(first) + len(rest) == 5 * 1024
    assert first_at < 0.5 < total


async def test_request_body_streams_as_it_arrives() -> None:
    """A large upload reaches the upstream while the client is still sending it, with its Content-Length."""
    head = b"POST /3rdparty/v1/messages HTTP/1.1\r\nHost: gw.example\r\nContent-Length: 100000\r\n\r\n"
    proxy = ProxySettings(retry_buffer_bytes=1024)
    async with (
        FaultServer("hang_before_headers") as upstream,
        gateway(upstream.url, proxy=proxy, read_timeout_s=30) as app,
        UvicornServer(app) as server,
    ):
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head + b"a" * 10_000)  # a tenth of the body, then the client pauses
        await writer.drain()
        try:
            async with asyncio.timeout(2):
                while not upstream.requests:
                    await asyncio.sleep(0.01)
        finally:
            writer.close()
            await writer.wait_closed()
    forwarded = upstream.heads[0].lower()
    assert b"content-length: 100000" in forwarded
    assert b"transfer-encoding" not in forwarded


_GATEWAY_PROCESS = """
import socket, sys
import uvicorn
from gateway.guard.authorize import Decision
from gateway.config.settings import ProxySettings, UpstreamSettings
from gateway.policy.model import Rule
from gateway.proxy.forward import ProxyApp

rule = Rule(methods=frozenset({"GET"}), path="/{x}", full_path="/{x}", public=True, upstream="up", mount="")
proxy = ProxyApp({"up": UpstreamSettings(name="up", url=sys.argv[1])}, ProxySettings())

async def app(scope, receive, send):
    if scope["type"] == "http":
        scope["smsguard"] = Decision(scope["path"], rule, {}, None)
    await proxy(scope, receive, send)

sock = socket.socket()
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
config = uvicorn.Config(app, lifespan="on", http="httptools", log_level="warning", access_log=False)
uvicorn.Server(config).run(sockets=[sock])
"""


class _RssSampler:
    """Samples a process's RSS from a thread (the peak is what matters, not the value at the end)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.002)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


@pytest.mark.slow
async def test_50mb_response_streams_in_bounded_memory() -> None:
    """A 50 MB response crosses the gateway (its own process, real uvicorn) with RSS growth well under 20 MB."""
    size = 50 * 1024 * 1024
    async with RecordingUpstream() as upstream:
        upstream.queue(Reply(stream_bytes=2 * 1024 * 1024), Reply(stream_bytes=size))
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _GATEWAY_PROCESS,
            upstream.url,
            stdout=asyncio.subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
        )
        try:
            assert process.stdout is not None
            port = int(await asyncio.wait_for(process.stdout.readline(), 20))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                for _ in range(100):  # wait for uvicorn to accept
                    with contextlib.suppress(httpx.ConnectError):
                        warmup = await http.get("/warmup")
                        break
                    await asyncio.sleep(0.05)
                assert len(warmup.content) == 2 * 1024 * 1024
                baseline = psutil.Process(process.pid).memory_info().rss
                received = 0
                with _RssSampler(process.pid) as sampler:
                    async with http.stream("GET", "/big") as response:
                        async for chunk in response.aiter_raw():
                            received += len(chunk)
        finally:
            process.terminate()
            await process.wait()
    growth = sampler.peak - baseline
    print(f"\ngateway RSS growth while streaming 50 MB: {growth / 1024 / 1024:.1f} MB")
    assert received == size
    assert growth < 20 * 1024 * 1024
