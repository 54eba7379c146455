"""Forged and malformed credentials against the real gateway: 401/400 to the client, nothing to the upstream.

The verifier's unit tables (`test_verify.REJECTED`, `HAPPY`) are replayed here over HTTP: the gateway
trusts the same issuers with the same keys, and its verifier's clock is set to the tables' `NOW`. Each
refusal must be the verifier's own answer (same message), and the upstream must receive nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
import test_verify as table
from fakes import RecordingUpstream
from harness import INJECTED, MOUNT, RawResponse, Running, basic, parse, recorded, status
from harness import request as http_request
from keys import b64, forge, loopback_server, public_der, public_jwk, rsa_key, sign

from gateway.auth.jwt import TokenVerifier
from gateway.errors import Unauthorized

MESSAGES = MOUNT + "/messages"
BODY = b'{"textMessage":{"text":"hi"},"phoneNumbers":["+15555550100"]}'
# HTTP trims optional whitespace around a field value, so " <token>" arrives as "<token>" and is valid.
TRIMMED_BY_HTTP = {"leading-space"}
# Refused one step earlier, by the Authenticator (header size, encoding, empty credentials): same 401.
REFUSED_BEFORE_THE_VERIFIER = {"empty", "too-large", "non-ascii"}


def _ids(params: list[Any]) -> list[Any]:
    return [p for p in params if p.id not in TRIMMED_BY_HTTP]


pytestmark = pytest.mark.asyncio(loop_scope="module")  # one gateway per module: ~150 requests, one start


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def frozen(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Running, RecordingUpstream]]:
    """The gateway and a recording upstream, the gateway's verifier living at the tables' NOW."""
    async with recorded(tmp_path_factory.mktemp("frozen")) as (gw, upstream):
        gw.gateway.authorizer.authenticator.verifier._clock = lambda: table.NOW
        yield gw, upstream


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Running, RecordingUpstream]]:
    """The gateway on the real clock."""
    async with recorded(tmp_path_factory.mktemp("live")) as pair:
        yield pair


@pytest.fixture(autouse=True)
def _fresh_upstream(request: pytest.FixtureRequest) -> None:
    """Each test starts with an upstream that has received nothing."""
    for name in ("frozen", "env"):
        if name in request.fixturenames:
            request.getfixturevalue(name)[1].requests.clear()


async def unit_refusal(token: str) -> Unauthorized:
    """What the verifier alone says about `token` (the tables' issuers and clock)."""
    verifier = TokenVerifier(table.issuers(), leeway_s=30, max_token_lifetime_s=3600, clock=lambda: table.NOW)
    try:
        await verifier.verify(token)
    except Unauthorized as exc:
        return exc
    finally:
        await verifier.aclose()
    raise AssertionError("the verifier accepted the token")


async def post_with(gw: Running, authorization: bytes) -> RawResponse:
    """POST a message with this Authorization value, byte for byte (over a raw socket: httpx refuses some)."""
    head = f"POST {MESSAGES} HTTP/1.1\r\nHost: gw\r\nContent-Length: {len(BODY)}\r\nConnection: close\r\n"
    data = head.encode() + b"Authorization: " + authorization + b"\r\n\r\n" + BODY
    return parse(await gw.raw(data))


@pytest.mark.parametrize(("make", "why"), _ids(table.REJECTED))
async def test_every_rejected_token_is_a_401_and_never_forwarded(
    frozen: tuple[Running, RecordingUpstream], make: Callable[[], str], why: str, request: pytest.FixtureRequest
) -> None:
    """alg none, key confusion, kid tricks, bad claims, bad signatures, bad encodings: 401, upstream untouched."""
    gw, upstream = frozen
    token = make()
    response = await post_with(gw, b"Bearer " + token.encode("utf-8"))
    assert response.status == 401
    assert list(response.json()) == ["message"]
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="smsguard", error="invalid_token"')
    if request.node.callspec.id not in REFUSED_BEFORE_THE_VERIFIER:
        assert response.json()["message"] == (await unit_refusal(token)).message
    assert upstream.requests == []


@pytest.mark.parametrize(("make", "issuer"), table.HAPPY)
async def test_every_valid_token_authenticates_end_to_end(
    frozen: tuple[Running, RecordingUpstream], make: Callable[[], str], issuer: str
) -> None:
    """The control group: the same gateway accepts the table's valid tokens (200, or 403 without the scope).

    Except its own: the table signs them without the store epoch (`ep`) the gateway mints into every token,
    so they are refused as minted before the store was reset (401); the verifier alone accepts them.
    """
    gw, upstream = frozen
    response = await post_with(gw, b"Bearer " + make().encode())
    if issuer == "self":
        assert response.status == 401
        assert "token store was reset" in response.json()["message"]
        assert upstream.requests == []
    elif issuer == "corp":  # corp reads scopes from `scp`, and these tokens carry `scope`: no scopes at all
        assert response.status == 403
        assert upstream.requests == []
    else:
        assert response.status == 200
        assert [seen.values("authorization") for seen in upstream.requests] == [[INJECTED]]


@pytest.mark.parametrize(
    "claim", [{"exp": 10**400}, {"exp": -(10**400)}, {"iat": 10**400}, {"nbf": -(10**400)}, {"exp": 2**1024}]
)
async def test_validly_signed_tokens_with_absurd_dates_are_a_401_not_a_crash(
    frozen: tuple[Running, RecordingUpstream], claim: dict[str, int]
) -> None:
    """A trusted issuer's signature over `exp: 1000...0` (400 digits): refused as a bad claim, never a 500."""
    gw, upstream = frozen
    token = forge({"alg": "HS256", "typ": "JWT"}, table.claims(**claim), hmac_key=table.HS_SECRET.encode())
    response = await post_with(gw, f"Bearer {token}".encode())
    assert response.status == 401
    assert "not a finite number" in response.json()["message"]
    assert upstream.requests == []


@pytest.mark.parametrize("header", ["jku", "x5u", "jwk", "x5c"])
async def test_tokens_naming_their_own_keys_are_refused_without_any_fetch(
    frozen: tuple[Running, RecordingUpstream], header: str
) -> None:
    """jku/x5u URLs and embedded jwk/x5c are refused end to end and the named URL is never fetched."""
    gw, upstream = frozen
    attacker = rsa_key(2)
    with loopback_server() as server:
        server.document = {"keys": [public_jwk(attacker, "evil")]}
        value: Any = {
            "jku": server.url,
            "x5u": server.url.replace("jwks.json", "cert.pem"),
            "jwk": public_jwk(attacker),
            "x5c": [b64(public_der(attacker))],
        }[header]
        for kid in ("evil", "rsa-1"):
            token = sign(table.claims(table.RS), attacker, "RS256", kid=kid, **{header: value})
            assert (await post_with(gw, f"Bearer {token}".encode())).status == 401
        assert server.hits == 0
    assert upstream.requests == []


# ------------------------------------------------------------------------------------ header-level tricks


async def test_two_authorization_headers_are_a_400(env: tuple[Running, RecordingUpstream]) -> None:
    """Two Authorization headers (any case, any mix of schemes) could be read differently upstream: 400."""
    gw, upstream = env
    token = await gw.token("messages:send")
    for second in (f"authorization: Bearer {token}", f"AUTHORIZATION: {basic('ops', 'x')}", "Authorization: "):
        raw = await gw.raw(
            http_request("POST", MESSAGES, f"Authorization: Bearer {token}", second, "Content-Length: 2", body=b"{}")
        )
        assert status(raw) == 400, second
    assert upstream.requests == []


async def test_an_authorization_header_over_8_kib_is_refused(env: tuple[Running, RecordingUpstream]) -> None:
    """The Authorization header is bounded (8 KiB) before any parsing: 401 invalid_token."""
    gw, upstream = env
    token = await gw.token("messages:send")
    response = await post_with(gw, f"Bearer {token}{'A' * 8192}".encode())
    assert response.status == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert upstream.requests == []


@pytest.mark.parametrize(
    "query",
    [
        "access_token={t}",
        "ACCESS_TOKEN={t}",
        "limit=1&access_token={t}",
        "access_token=",
        "%61ccess_token={t}",
        "access%5Ftoken={t}",
        "access%5ftoken={t}&x=1",
        "Access_Token={t}",
        "a=1;access_token=",  # `;` separates parameters for some upstreams (issue 17)
        "a=1;access_token={t}&b=2",
    ],
)
async def test_a_token_in_the_query_string_is_a_400(env: tuple[Running, RecordingUpstream], query: str) -> None:
    """RFC 6750 query tokens land in logs: refused in every spelling the upstream would decode, even with a header."""
    gw, upstream = env
    token = await gw.token("messages:list")
    for headers in ({}, {"authorization": f"Bearer {token}"}):
        response = await gw.client.get(MESSAGES + "?" + query.format(t=token), headers=headers)
        assert response.status_code == 400
        assert token not in response.text
    assert upstream.requests == []


async def test_a_query_parameter_merely_containing_the_name_is_forwarded(
    env: tuple[Running, RecordingUpstream],
) -> None:
    """Control: `my_access_token=` and `access_tokens=` are other parameters, forwarded byte for byte."""
    gw, upstream = env
    token = await gw.token("messages:list")
    response = await gw.client.get(
        MESSAGES + "?my_access_token=1&access_tokens=2", headers={"authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200
    assert upstream.last.query == "my_access_token=1&access_tokens=2"


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(b"Token abc.def.ghi", id="unknown-scheme"),
        pytest.param(b"Bearer", id="bearer-without-token"),
        pytest.param(b"Bearer    ", id="bearer-blank"),
        pytest.param(b"Basic !!!", id="basic-not-base64"),
        pytest.param(b"Basic " + b64(b"ops").encode(), id="basic-without-colon"),
        pytest.param(b"Basic b3BzOg", id="basic-unpadded"),
        pytest.param(basic("ops", "wrong").encode(), id="basic-wrong-password"),
        pytest.param(basic("nobody", "x").encode(), id="basic-unknown-user"),
        pytest.param(basic("ops", "canary-ops-password-91c2 ").encode(), id="basic-password-with-space"),
        pytest.param(b"Bearer \xff\xfe", id="bearer-not-ascii"),
    ],
)
async def test_malformed_credentials_are_a_401(env: tuple[Running, RecordingUpstream], authorization: bytes) -> None:
    """Malformed schemes and Basic credentials are a 401 challenge; nothing reaches the upstream."""
    gw, upstream = env
    response = await post_with(gw, authorization)
    assert response.status == 401
    assert response.headers["www-authenticate"].startswith('Bearer realm="smsguard"')
    assert upstream.requests == []


async def test_revoked_refresh_and_wrong_scope_tokens(env: tuple[Running, RecordingUpstream]) -> None:
    """A revoked access token, a refresh token used as access and a token lacking the scope never pass."""
    gw, upstream = env
    access, refresh, jti = await gw.pair("messages:send")
    assert (await post_with(gw, f"Bearer {access}".encode())).status == 200
    await gw.gateway.tokens.revoke(jti, caller=None)
    assert (await post_with(gw, f"Bearer {access}".encode())).status == 401
    assert (await post_with(gw, f"Bearer {refresh}".encode())).status == 401
    reader = await gw.token("messages:read")
    forbidden = await post_with(gw, f"Bearer {reader}".encode())
    assert forbidden.status == 403
    assert 'error="insufficient_scope", scope="messages:send"' in forbidden.headers["www-authenticate"]
    assert len(upstream.requests) == 1


async def test_a_public_route_forwards_only_the_gateway_credential(env: tuple[Running, RecordingUpstream]) -> None:
    """GET /health needs no token; a garbage one is dropped, never forwarded, and ours is the only one."""
    gw, upstream = env
    response = await gw.client.get(MOUNT + "/health", headers={"authorization": "Bearer garbage"})
    assert response.status_code == 200
    assert upstream.last.values("authorization") == [INJECTED]
