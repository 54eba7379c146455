"""Request smuggling attempts over raw sockets: ambiguous framing is a 400; what is forwarded is framed by us.

The upstream must never see a request the gateway did not authorize: conflicting `Content-Length` and
`Transfer-Encoding`, duplicate or odd lengths, obs-fold, bad chunking and control bytes in fields are
refused before the app; accepted variants reach the upstream once, with the body the gateway parsed
and a `Content-Length` the gateway computed. Pipelined requests are authorized one by one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from fakes import RecordingUpstream
from harness import MOUNT, Running, parse, recorded, status, statuses

pytestmark = pytest.mark.asyncio(loop_scope="module")

MESSAGES = MOUNT + "/messages"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Running, RecordingUpstream, bytes]]:
    async with recorded(tmp_path_factory.mktemp("smuggling")) as (gw, upstream):
        token = await gw.token("messages:send")
        yield gw, upstream, f"Authorization: Bearer {token}\r\n".encode()


@pytest.fixture(autouse=True)
def _fresh_upstream(env: tuple[Running, RecordingUpstream, bytes]) -> None:
    env[1].requests.clear()


def post(auth: bytes, fields: bytes, body: bytes = b"", *, close: bool = True, version: bytes = b"HTTP/1.1") -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return (
        b"POST "
        + MESSAGES.encode()
        + b" "
        + version
        + b"\r\nHost: gw\r\n"
        + auth
        + fields
        + connection
        + b"\r\n"
        + body
    )


CHUNKED_ABC = b"3\r\nabc\r\n0\r\n\r\n"

REFUSED = [
    pytest.param(b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n", id="CL.TE"),
    pytest.param(b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", b"0\r\n\r\n", id="TE.CL"),
    pytest.param(b"Content-Length: 3\r\nContent-Length: 4\r\n", b"abcd", id="two-different-lengths"),
    pytest.param(b"Content-Length: 3\r\nContent-Length: 3\r\n", b"abc", id="two-equal-lengths"),
    pytest.param(b"Content-Length: 3, 3\r\n", b"abc", id="length-list"),
    pytest.param(b"Content-Length: +3\r\n", b"abc", id="length-plus"),
    pytest.param(b"Content-Length: -1\r\n", b"abc", id="length-negative"),
    pytest.param(b"Content-Length: 0x3\r\n", b"abc", id="length-hex"),
    pytest.param(b"Content-Length: 3 3\r\n", b"abc", id="length-space"),
    pytest.param(b"Content-Length: 99999999999999999999999\r\n", b"abc", id="length-overflow"),
    pytest.param(b"Content-Length : 3\r\n", b"abc", id="space-before-colon"),
    pytest.param(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n", id="te-space-before-colon"),
    pytest.param(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", CHUNKED_ABC, id="two-te"),
    pytest.param(b"Transfer-Encoding: chunked, gzip\r\n", CHUNKED_ABC, id="te-chunked-not-last"),
    pytest.param(b"Transfer-Encoding: identity\r\nContent-Length: 3\r\n", b"abc", id="te-identity"),
    pytest.param(b"Transfer-Encoding: xchunked\r\n", b"abc", id="te-unknown"),
    pytest.param(b"X-A: a\r\nTransfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n", id="obs-fold-te"),
    pytest.param(b"X-A: one\r\n two\r\n", b"", id="obs-fold"),
    pytest.param(b"X-A: one\r\n\ttwo\r\n", b"", id="obs-fold-tab"),
    pytest.param(b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n", id="chunk-overflow"),
    pytest.param(b"Transfer-Encoding: chunked\r\n", b"3x\r\nabc\r\n0\r\n\r\n", id="chunk-size-junk"),
    pytest.param(b"Transfer-Encoding: chunked\r\n", b"3\nabc\n0\n\n", id="chunk-bare-lf"),
    pytest.param(b"Transfer-Encoding: chunked\r\n", b"3\r\nabcdef\r\n0\r\n\r\n", id="chunk-longer-than-size"),
    pytest.param(b"X-A: a\rInjected: yes\r\n", b"", id="bare-cr-in-value"),
    pytest.param(b"X-A: a\nInjected: yes\r\n", b"", id="bare-lf-in-value"),
    pytest.param(b"X-A: a\x00b\r\n", b"", id="nul-in-value"),
    pytest.param(b"X\x01A: b\r\n", b"", id="control-in-name"),
    pytest.param(b"X A: b\r\n", b"", id="space-in-name"),
]


@pytest.mark.parametrize(("fields", "body"), REFUSED)
async def test_ambiguous_framing_and_malformed_fields_are_a_400(
    env: tuple[Running, RecordingUpstream, bytes], fields: bytes, body: bytes
) -> None:
    """Every framing two parsers could read differently, and every field with CR/LF/NUL/CTL, is refused unforwarded."""
    gw, upstream, auth = env
    raw = await gw.raw(post(auth, fields, body))
    assert status(raw) == 400
    assert upstream.requests == []


ACCEPTED = [
    pytest.param(b"Content-Length: 3\r\n", b"abc", id="plain"),
    pytest.param(b"Content-Length: 003\r\n", b"abc", id="length-leading-zeros"),
    pytest.param(b"Transfer-Encoding: chunked\r\n", CHUNKED_ABC, id="chunked"),
    pytest.param(b"Transfer-Encoding: Chunked\r\n", CHUNKED_ABC, id="chunked-mixed-case"),
    pytest.param(b"Transfer-Encoding:\tchunked \r\n", CHUNKED_ABC, id="chunked-ows"),
    pytest.param(b"Transfer-Encoding: gzip, chunked\r\n", CHUNKED_ABC, id="gzip-then-chunked"),
    pytest.param(b"Transfer-Encoding: chunked\r\n", b"1;a=b\r\na\r\n2\r\nbc\r\n0\r\n\r\n", id="chunk-extensions"),
    pytest.param(
        b"Transfer-Encoding: chunked\r\n", b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\nX-Api-Key: t\r\n\r\n", id="trailers"
    ),
    pytest.param(b"Expect: 100-continue\r\nContent-Length: 3\r\n", b"abc", id="expect-continue"),
]


@pytest.mark.parametrize(("fields", "body"), ACCEPTED)
async def test_accepted_framing_reaches_the_upstream_once_reframed(
    env: tuple[Running, RecordingUpstream, bytes], fields: bytes, body: bytes
) -> None:
    """Unambiguous variants are forwarded once, with the parsed body, our Content-Length, and no trailer as a header."""
    gw, upstream, auth = env
    raw = await gw.raw(post(auth, fields, body))
    assert statuses(raw)[-1] == 200
    [seen] = upstream.requests
    assert seen.body == b"abc"
    assert seen.values("content-length") == ["3"]
    names = seen.names()
    for dropped in ("transfer-encoding", "expect", "x-trailer", "x-api-key"):
        assert dropped not in names


async def test_trailers_never_become_headers_even_when_they_arrive_late(
    env: tuple[Running, RecordingUpstream, bytes],
) -> None:
    """A trailer sent after the app started (a second packet) does not appear in the forwarded headers either."""
    gw, upstream, auth = env
    head = post(auth, b"Transfer-Encoding: chunked\r\n", b"3\r\nabc\r\n")
    raw = await gw.raw([head, b"0\r\nX-Late-Trailer: 1\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"], pause_s=0.2)
    assert status(raw) == 200
    [seen] = upstream.requests
    assert "x-late-trailer" not in seen.names()
    assert seen.values("x-forwarded-for") == ["127.0.0.1"]


async def test_pipelined_requests_are_authorized_one_by_one(env: tuple[Running, RecordingUpstream, bytes]) -> None:
    """An authorized request followed, in the same packet, by one without a token: 200 then 401, one forward."""
    gw, upstream, auth = env
    second = f"POST {MESSAGES} HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi".encode()
    raw = await gw.raw(post(auth, b"Content-Length: 3\r\n", b"abc", close=False) + second)
    assert statuses(raw) == [200, 401]
    assert [seen.body for seen in upstream.requests] == [b"abc"]


async def test_a_request_hidden_in_a_body_stays_a_body(env: tuple[Running, RecordingUpstream, bytes]) -> None:
    """Content-Length covers a whole embedded request: the upstream gets one POST whose body is those bytes."""
    gw, upstream, auth = env
    hidden = f"GET {MOUNT}/devices HTTP/1.1\r\nHost: gw\r\n\r\n".encode().ljust(60, b" ")
    raw = await gw.raw(post(auth, b"Content-Length: 60\r\n", hidden))
    assert status(raw) == 200
    [seen] = upstream.requests
    assert (seen.method, seen.path, seen.body) == ("POST", MESSAGES, hidden)


async def test_a_body_shorter_than_its_length_is_never_forwarded(env: tuple[Running, RecordingUpstream, bytes]) -> None:
    """The client promises 10 bytes, sends 3 and closes: nothing reaches the upstream, no half request."""
    gw, upstream, auth = env
    raw = await gw.raw(post(auth, b"Content-Length: 10\r\n", b"abc"), timeout_s=0.5)
    assert parse(raw).status in (0, 400)
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("request_line", "expected"),
    [
        pytest.param(b"POST " + MESSAGES.encode() + b" HTTP/1.1x", 400, id="version-junk"),
        pytest.param(b"POST " + MESSAGES.encode() + b" HTTP/1.1 extra", 400, id="trailing-junk"),
        pytest.param(b"POST " + MESSAGES.encode() + b"\tHTTP/1.1", 400, id="tab-separator"),
        pytest.param(b"POST " + MESSAGES.encode() + b" XTTP/1.1", 400, id="not-http"),
    ],
)
async def test_malformed_request_lines_are_a_400(
    env: tuple[Running, RecordingUpstream, bytes], request_line: bytes, expected: int
) -> None:
    """A request line that is not `METHOD SP target SP HTTP/x.y` is refused before anything is decided."""
    gw, upstream, auth = env
    raw = await gw.raw(request_line + b"\r\nHost: gw\r\n" + auth + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    assert status(raw) == expected
    assert upstream.requests == []
