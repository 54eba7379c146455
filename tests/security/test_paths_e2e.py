"""Path tricks over raw sockets against the real gateway: 400/404 and nothing forwarded, or the canonical bytes.

httpx normalizes paths (it removes dot segments), so every request here is written byte for byte on a
socket. The canonicalizer's own table (`test_paths.REJECTED`) is replayed under the mount, then the
DESIGN checklist's spellings: percent-encoded and mixed-case dots and slashes, absolute-form targets,
overlong UTF-8. A hypothesis property sends arbitrary paths and checks that whatever reached the
upstream is the canonical spelling of what was sent, under the mount, on the configured host.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
import test_paths as table
from fakes import RecordingUpstream
from harness import INJECTED, MOUNT, Running, exchange, recorded, status
from harness import request as http_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import BadRequest
from gateway.policy.paths import canonical_path

pytestmark = pytest.mark.asyncio(loop_scope="module")

MESSAGES = MOUNT + "/messages"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Running, RecordingUpstream, str]]:
    async with recorded(tmp_path_factory.mktemp("paths")) as (gw, upstream):
        yield gw, upstream, await gw.token("all:any")


@pytest.fixture(autouse=True)
def _fresh_upstream(env: tuple[Running, RecordingUpstream, str]) -> None:
    env[1].requests.clear()


async def send(env: tuple[Running, RecordingUpstream, str], method: str, target: str) -> int:
    gw, _, token = env
    data = http_request(method, target, f"Authorization: Bearer {token}").replace(
        target.encode("latin-1"), target.encode("utf-8"), 1
    )
    return status(await gw.raw(data))


def _under_the_mount(raw: str) -> str:
    """A canonicalizer table entry as a request target: paths go under /3rdparty/v1/messages, the rest as is."""
    return MESSAGES + raw if raw.startswith("/") else raw


# `?` and `#` end the path on the wire (they are the query and fragment delimiters), so those entries
# name a different, canonical path there; they are covered where paths are strings (test_paths).
TABLE = [pytest.param(raw, id=repr(raw)) for raw, _ in table.REJECTED if "?" not in raw and "#" not in raw]


@pytest.mark.parametrize("raw", TABLE)
async def test_every_non_canonical_path_of_the_table_is_a_400(
    env: tuple[Running, RecordingUpstream, str], raw: str
) -> None:
    """Dot segments, `//`, encoded `/` `\\` `;`, control bytes, bad escapes, non-ASCII: 400, upstream untouched."""
    assert await send(env, "GET", _under_the_mount(raw)) == 400
    assert env[1].requests == []


CHECKLIST = [
    "/3rdparty/v1/messages/%2e%2e/devices",
    "/3rdparty/v1/messages/%2E%2e/devices",
    "/3rdparty/v1/messages/.%2E/devices",
    "/3rdparty/v1/messages/%2e./devices",
    "/3rdparty/v1/messages/../devices",
    "/3rdparty/v1/messages/..;/devices",
    "/3rdparty/v1/%2e%2e/v1/devices",
    "/3rdparty/v1/messages/a%2Fb",
    "/3rdparty/v1/messages/a%2fb",
    "/3rdparty/v1/messages/..%2F..%2Fdevices",
    "/3rdparty/v1/messages/a%5Cb",
    "/3rdparty/v1/messages/a%5cb",
    "/3rdparty/v1/messages/a\\b",
    "/3rdparty/v1/messages/a%00",
    "/3rdparty/v1/messages/a%0d%0aX-Injected:%20yes",
    "/3rdparty/v1/messages/a;b",
    "/3rdparty/v1/messages/a%3Bb",
    "/3rdparty/v1/messages/a%3bb",
    "/3rdparty/v1//messages",
    "//3rdparty/v1/messages",
    "/3rdparty/v1/messages/%C0%AE%C0%AE",  # overlong UTF-8 '..' (a '.' to lax decoders)
    "/3rdparty/v1/messages/%E0%80%AE",  # overlong '.' in three bytes
    "/3rdparty/v1/messages/%C0%AF",  # overlong '/'
    "/3rdparty/v1/messages/%ff",
    "/3rdparty/v1/messages/%",
    "/3rdparty/v1/messages/%g0",
]
ABSOLUTE_FORM = [
    "http://evil.example/3rdparty/v1/messages",
    "HTTP://EVIL.EXAMPLE/3rdparty/v1/messages",
    "http://user:pass@evil.example:8080/3rdparty/v1/messages?limit=1",
    "https://127.0.0.1/3rdparty/v1/messages",
    "http://127.0.0.1:1/3rdparty/v1/health",
    "//evil.example/3rdparty/v1/messages",
    "evil.example:443",
    "3rdparty/v1/messages",
    "*",
]


@pytest.mark.parametrize("target", CHECKLIST + ABSOLUTE_FORM)
async def test_checklist_path_tricks_are_a_400(env: tuple[Running, RecordingUpstream, str], target: str) -> None:
    """DESIGN's list: encoded and mixed-case dots, slashes, backslashes, NUL, `;`, overlong UTF-8, absolute-form."""
    assert await send(env, "GET", target) == 400
    assert env[1].requests == []


async def test_absolute_form_is_refused_even_for_a_public_route(env: tuple[Running, RecordingUpstream, str]) -> None:
    """`GET http://evil/.../health` is not `GET /.../health`: the whole target is refused, with JSON."""
    gw, upstream, _ = env
    raw = await gw.raw(http_request("GET", "http://evil.example" + MOUNT + "/health"))
    assert status(raw) == 400
    assert b'{"message":' in raw
    assert upstream.requests == []


ACCEPTED = [
    ("/3rdparty/v1/%6Dessages", "/3rdparty/v1/messages"),
    ("/3rdparty/v1/%6d%65ssages?limit=1", "/3rdparty/v1/messages?limit=1"),
    ("/%33rdparty/v1/messages", "/3rdparty/v1/messages"),
    ("/3rdparty/v1/messages/%41b%7e", "/3rdparty/v1/messages/Ab~"),
    ("/3rdparty/v1/messages/a%c3%a9", "/3rdparty/v1/messages/a%C3%A9"),
    ("/3rdparty/v1/messages/@evil.example", "/3rdparty/v1/messages/@evil.example"),
    ("/3rdparty/v1/messages/x@evil.example:80", "/3rdparty/v1/messages/x@evil.example:80"),
    ("/3rdparty/v1/messages/%40evil.example", "/3rdparty/v1/messages/%40evil.example"),
    ("/3rdparty/v1/messages/%25%32%65", "/3rdparty/v1/messages/%252e"),  # decoded once, never twice
    ("/3rdparty/v1/messages/...", "/3rdparty/v1/messages/..."),
    (
        "/3rdparty/v1/messages?next=http://evil.example/&x=%0d%0a",
        "/3rdparty/v1/messages?next=http://evil.example/&x=%0d%0a",
    ),
]


@pytest.mark.parametrize(("target", "forwarded"), ACCEPTED)
async def test_the_canonical_spelling_is_what_is_authorized_and_forwarded(
    env: tuple[Running, RecordingUpstream, str], target: str, forwarded: str
) -> None:
    """Escaped unreserved characters decode, other escapes stay (uppercased); `@` tricks never move the host."""
    upstream = env[1]
    assert await send(env, "GET", target) == 200
    [seen] = upstream.requests
    assert seen.raw_path == forwarded
    assert seen.values("host") == [urlsplit(upstream.url).netloc]
    assert seen.values("authorization") == [INJECTED]


@pytest.mark.parametrize(
    "target",
    [
        "/3RDPARTY/v1/messages",
        "/3rdparty/V1/messages",
        "/3rdparty/v1/Messages",
        "/3rdparty/v1/MESSAGES",
        "/3rdparty/v1/messages/",
        "/3rdparty/v1/messages/a/b",
        "/3rdparty/v1",
        "/3rdparty/v1/",
        "/3rdparty/v2/messages",
        "/",
        "/admin",
    ],
)
async def test_paths_no_rule_matches_are_a_404(env: tuple[Running, RecordingUpstream, str], target: str) -> None:
    """Mixed case, trailing slashes and extra segments are other paths: default deny, never forwarded."""
    assert await send(env, "GET", target) == 404
    assert env[1].requests == []


_PIECES = [
    "/",
    "/",
    "a",
    "Z",
    "0",
    ".",
    "..",
    "%",
    "%2e",
    "%2E",
    "%2f",
    "%5c",
    "%00",
    "%6D",
    "%c3%a9",
    "%C0%AE",
    ";",
    "\\",
]
_PIECES += ["@", ":", "~", "-", "_", "!", "$", "'", "(", "*", "+", ",", "=", "%25", "%41", "messages", "devices"]
_ALPHABET = st.sampled_from(_PIECES)


async def test_property_whatever_reaches_the_upstream_is_the_canonical_sent_path(
    env: tuple[Running, RecordingUpstream, str],
) -> None:
    """Arbitrary paths over the wire: each is refused, or forwarded exactly as its canonical form, under the mount."""
    gw, upstream, token = env

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.lists(_ALPHABET, max_size=8).map("".join), st.booleans())
    def check(tail: str, under_mount: bool) -> None:
        target = (MESSAGES + "/" + tail) if under_mount else ("/" + tail)
        before = len(upstream.requests)
        answer = status(exchange(gw.port, http_request("GET", target, f"Authorization: Bearer {token}")))
        received = upstream.requests[before:]
        try:
            canonical = canonical_path(target.encode("latin-1"))
        except BadRequest:
            assert answer == 400
            assert received == []
            return
        if received:
            assert answer == 200
            [seen] = received
            assert seen.raw_path == canonical
            assert seen.path.startswith(MOUNT + "/")
        else:
            assert answer in (400, 404)

    await asyncio.to_thread(check)
