"""Header attacks against the real gateway: what the upstream receives is exactly the sanitized request.

The client's credentials and every alias of an injected credential are replaced by exactly one, ours;
`Connection`-nominated and hop-by-hop headers go; `Host` and `X-Forwarded-*`/`Forwarded` are the
gateway's own unless the peer is a configured trusted proxy; heads over the limit are a 431 and bodies
over `max_body_bytes` a 413, neither forwarded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, urlsplit

import pytest
import pytest_asyncio
from fakes import Recorded, RecordingUpstream, Reply
from harness import API_KEY, INJECTED, MOUNT, Running, parse, recorded, status
from harness import request as http_request

pytestmark = pytest.mark.asyncio(loop_scope="module")

MESSAGES = MOUNT + "/messages"
Env = tuple[Running, RecordingUpstream, str]
LIMITS = "{max_body_bytes: 4096, retry_buffer_bytes: 1024}"
SMALL_CHUNKS = (b"200\r\n" + b"x" * 512 + b"\r\n") * 9 + b"0\r\n\r\n"  # 4608 bytes in 512-byte chunks


async def _env(tmp: pytest.TempPathFactory, name: str, **options: str) -> AsyncIterator[Env]:
    async with recorded(tmp.mktemp(name), **options) as (gw, upstream):
        yield gw, upstream, await gw.token("all:any")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def basic_env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    """Basic credentials upstream, body limit 4096, buffered up to 1024."""
    async for env in _env(tmp_path_factory, "basic", proxy=LIMITS):
        yield env


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def header_env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    """An upstream whose credential is the header X-API-KEY."""
    async for env in _env(
        tmp_path_factory, "header", credentials='{type: header, headers: {X-API-KEY: "${T_API_KEY}"}}'
    ):
        yield env


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def query_env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    """An upstream whose credential is the query parameter apiKey."""
    async for env in _env(tmp_path_factory, "query", credentials='{type: query, params: {apiKey: "${T_API_KEY}"}}'):
        yield env


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def trusting_env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    """A gateway configured to trust 127.0.0.1 as a proxy in front of it."""
    async for env in _env(tmp_path_factory, "trusting", proxy="{trusted_proxies: [127.0.0.1/32]}"):
        yield env


@pytest.fixture(autouse=True)
def _fresh_upstreams(request: pytest.FixtureRequest) -> None:
    for name in ("basic_env", "header_env", "query_env", "trusting_env"):
        if name in request.fixturenames:
            upstream = request.getfixturevalue(name)[1]
            upstream.requests.clear()
            upstream.reply(Reply(200, body=b'{"ok":true}', headers=[("Content-Type", "application/json")]))


async def forward(env: Env, *fields: str, target: str = MESSAGES, body: bytes = b"") -> Recorded:
    """GET (or POST with a body) through the gateway with these extra header lines; the one request upstream."""
    gw, upstream, token = env
    method = "POST" if body else "GET"
    length = [f"Content-Length: {len(body)}"] if body else []
    raw = await gw.raw(http_request(method, target, f"Authorization: Bearer {token}", *fields, *length, body=body))
    assert status(raw) == 200, raw[:300]
    [seen] = upstream.requests
    return seen


def normalized(seen: Recorded) -> list[str]:
    return [name.lower().replace("_", "-").replace(".", "-") for name, _ in seen.headers]


# ------------------------------------------------------------------------------------- credentials


async def test_client_credentials_never_reach_the_upstream(basic_env: Env) -> None:
    """The client's Authorization, Proxy-Authorization and Cookie go; the upstream gets exactly one credential, ours."""
    seen = await forward(basic_env, "Proxy-Authorization: Basic Zm9vOmJhcg==", "Cookie: session=client")
    assert seen.values("authorization") == [INJECTED]
    assert {"proxy-authorization", "cookie"}.isdisjoint(seen.names())


@pytest.mark.parametrize(
    "aliases",
    [
        ["X-API-KEY: client"],
        ["x-api-key: client"],
        ["X_API_KEY: client"],
        ["x.api.key: client"],
        ["X-Api_Key: client"],
        ["X-API-KEY: one", "X-API-KEY: two"],
        ["x_api_key: a", "X.API.KEY: b", "x-Api-kEY: c"],
        ["Connection: X-API-KEY", "X-API-KEY: client"],
    ],
)
async def test_every_alias_of_an_injected_header_is_replaced(header_env: Env, aliases: list[str]) -> None:
    """Case, `_` and `.` variants of X-API-KEY (which many frameworks fold together) never reach the upstream."""
    seen = await forward(header_env, *aliases)
    assert normalized(seen).count("x-api-key") == 1
    assert seen.values("x-api-key") == [API_KEY]


@pytest.mark.parametrize(
    "query",
    ["apiKey=mine", "APIKEY=mine", "api%4Bey=mine", "apikey=a&apiKey=b", "api+Key=x&apiKey=mine", "limit=1&apiKey="],
)
async def test_every_spelling_of_an_injected_query_credential_is_replaced(query_env: Env, query: str) -> None:
    """A client's own apiKey (any case, percent-encoded name) is dropped; exactly one apiKey, ours, is sent."""
    seen = await forward(query_env, target=f"{MESSAGES}?{query}")
    params = parse_qsl(seen.query, keep_blank_values=True)
    assert [value for name, value in params if name.lower() == "apikey"] == [API_KEY]
    assert "mine" not in seen.query


# ---------------------------------------------------------------------------------- hop-by-hop


async def test_connection_nominated_and_hop_by_hop_headers_are_dropped(basic_env: Env) -> None:
    """Everything `Connection` names (aliases included) and every hop-by-hop header stays at the gateway."""
    seen = await forward(
        basic_env,
        "Connection: keep-alive, X-Hop-A, x_hop_b, X-Kept-Not",
        "X-Hop-A: 1",
        "X-Hop-B: 2",
        "X-Kept-Not: 3",
        "Keep-Alive: timeout=5",
        "TE: trailers",
        "Upgrade: h2c",
        "Proxy-Connection: keep-alive",
        "Trailer: X-Checksum",
        "X-Kept: yes",
    )
    names = normalized(seen)
    for dropped in ("x-hop-a", "x-hop-b", "x-kept-not", "keep-alive", "te", "upgrade", "proxy-connection", "trailer"):
        assert dropped not in names
    assert seen.values("connection") in ([], ["keep-alive"], ["close"])  # aiohttp's own, never the client's
    assert seen.values("x-kept") == ["yes"]


async def test_connection_nominated_response_headers_are_dropped(basic_env: Env) -> None:
    """The upstream's hop-by-hop answer headers (and the ones its Connection names) do not reach the client."""
    gw, upstream, token = basic_env
    upstream.reply(
        Reply(200, body=b"{}", headers=[("Connection", "X-Upstream-Hop"), ("X-Upstream-Hop", "1"), ("X-Kept", "1")])
    )
    response = parse(await gw.raw(http_request("GET", MESSAGES, f"Authorization: Bearer {token}")))
    assert response.status == 200
    assert "x-upstream-hop" not in response.headers
    assert response.headers["x-kept"] == "1"


# ----------------------------------------------------------------------------- Host and forwarding


SPOOFED = [
    "X-Forwarded-For: 6.6.6.6",
    "X-Forwarded-Host: evil.example",
    "X-Forwarded-Proto: https",
    "X-Forwarded-Port: 443",
    "X-Forwarded-Prefix: /admin",
    "X_Forwarded_For: 7.7.7.7",
    "x.forwarded.for: 8.8.8.8",
    "Forwarded: for=6.6.6.6;host=evil.example;proto=https",
    "X-Real-IP: 6.6.6.6",
]


async def test_host_and_forwarding_claims_of_the_client_are_replaced(basic_env: Env) -> None:
    """The upstream's Host is its own; X-Forwarded-* describe the real connection; Forwarded/X-Real-IP go."""
    gw, upstream, token = basic_env
    raw = await gw.raw(
        http_request("GET", MESSAGES, f"Authorization: Bearer {token}", *SPOOFED, host="evil.example:666")
    )
    assert status(raw) == 200
    [seen] = upstream.requests
    assert seen.values("host") == [urlsplit(upstream.url).netloc]
    assert seen.values("x-forwarded-for") == ["127.0.0.1"]
    assert seen.values("x-forwarded-proto") == ["http"]
    assert seen.values("x-forwarded-host") == ["evil.example:666"]  # the Host the client asked for, as a claim
    names = normalized(seen)
    assert {"forwarded", "x-real-ip", "x-forwarded-port", "x-forwarded-prefix"}.isdisjoint(names)
    assert names.count("x-forwarded-for") == 1
    for value in ("6.6.6.6", "7.7.7.7", "8.8.8.8", "/admin", "https"):
        assert value not in str(seen.headers)


async def test_two_host_headers_do_not_reach_the_upstream(basic_env: Env) -> None:
    """Two Host fields: the upstream still gets exactly one Host, its own."""
    gw, upstream, token = basic_env
    raw = await gw.raw(http_request("GET", MESSAGES, f"Authorization: Bearer {token}", "Host: evil.example"))
    assert status(raw) in (200, 400)
    for seen in upstream.requests:
        assert seen.values("host") == [urlsplit(upstream.url).netloc]


async def test_a_trusted_proxy_extends_the_chain(trusting_env: Env) -> None:
    """Control: with 127.0.0.1 configured as a trusted proxy, its X-Forwarded-For is kept and extended."""
    seen = await forward(trusting_env, "X-Forwarded-For: 203.0.113.9", "X-Forwarded-Proto: https")
    assert seen.values("x-forwarded-for") == ["203.0.113.9, 127.0.0.1"]
    assert seen.values("x-forwarded-proto") == ["https"]


# ---------------------------------------------------------------------------------------- sizes


async def test_a_head_over_the_limit_is_a_431_never_forwarded(basic_env: Env) -> None:
    """Many headers adding up to more than 64 KiB: 431 with a JSON message, nothing forwarded."""
    gw, upstream, token = basic_env
    many = [f"X-Filler-{i}: {'v' * 60}" for i in range(1200)]
    response = parse(await gw.raw(http_request("GET", MESSAGES, f"Authorization: Bearer {token}", *many)))
    assert response.status == 431
    assert response.json()["message"] == "the request head is too large"
    assert upstream.requests == []


async def test_one_huge_header_is_cut_off_without_being_buffered(basic_env: Env) -> None:
    """A 4 MB header line: the gateway answers 431 after 64 KiB and closes, instead of buffering it whole."""
    gw, upstream, token = basic_env
    head = http_request("GET", MESSAGES, f"Authorization: Bearer {token}").removesuffix(b"\r\n")
    pieces = [head, b"X-Huge: ", *([b"h" * 65536] * 64), b"\r\n\r\n"]
    raw = await gw.raw(pieces, timeout_s=5)
    assert status(raw) == 431
    assert upstream.requests == []


async def test_a_head_just_under_the_limit_is_forwarded(basic_env: Env) -> None:
    """Control: 60 KB of headers is a normal request."""
    seen = await forward(basic_env, *(f"X-Filler-{i}: {'v' * 2000}" for i in range(30)))
    assert seen.values("x-filler-29") == ["v" * 2000]


@pytest.mark.parametrize(
    ("fields", "body"),
    [
        pytest.param(["Content-Length: 4097"], b"x" * 4097, id="declared-too-large"),
        pytest.param(["Content-Length: 999999999999"], b"", id="declared-absurd"),
        pytest.param(
            ["Transfer-Encoding: chunked"], b"1000\r\n" + b"x" * 4096 + b"\r\n1\r\nx\r\n0\r\n\r\n", id="chunked"
        ),
        pytest.param(["Transfer-Encoding: chunked"], SMALL_CHUNKS, id="chunked-in-small-chunks"),
    ],
)
async def test_a_body_over_the_limit_is_a_413_never_forwarded(basic_env: Env, fields: list[str], body: bytes) -> None:
    """Declared or chunked past max_body_bytes (buffered or streamed): 413, and the upstream gets no request."""
    gw, upstream, token = basic_env
    raw = await gw.raw(http_request("POST", MESSAGES, f"Authorization: Bearer {token}", *fields, body=body))
    assert status(raw) == 413
    assert upstream.requests == []


@pytest.mark.parametrize(
    "fields",
    [pytest.param(["Content-Length: 3000"], id="length"), pytest.param(["Transfer-Encoding: chunked"], id="chunked")],
)
async def test_a_body_within_the_limit_streams_through_intact(basic_env: Env, fields: list[str]) -> None:
    """Control: 3000 bytes (over the 1024 buffer, under the 4096 limit) reach the upstream byte for byte."""
    gw, upstream, token = basic_env
    payload = bytes(range(256)) * 11 + b"x" * 184
    body = payload if "Content-Length" in fields[0] else b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    raw = await gw.raw(http_request("POST", MESSAGES, f"Authorization: Bearer {token}", *fields, body=body))
    assert status(raw) == 200
    [seen] = upstream.requests
    assert seen.body == payload
