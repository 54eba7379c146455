"""verify.py JWKS: keys fetched from a real loopback server, cached, refetched once per cooldown, failing closed."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from keys import Clock, LoopbackServer, ec_key, ed_key, loopback_server, public_jwk, rsa_key, sign

from gateway.auth.jwks import parse_jwks
from gateway.auth.jwt import TokenVerifier
from gateway.config.settings import IssuerSettings
from gateway.errors import Unauthorized

NOW = 1_700_000_000.0
ISS = "https://idp.example.com/"
AUD = "sms-api"
TIMEOUT = 0.5
COOLDOWN = 30.0
TTL = 300.0


def issuer(url: str, algorithms: tuple[str, ...] = ("RS256", "ES256")) -> IssuerSettings:
    return IssuerSettings(
        "corp",
        ISS,
        (AUD,),
        algorithms,
        jwks_url=url,
        jwks_cache_ttl_s=TTL,
        jwks_refetch_cooldown_s=COOLDOWN,
        jwks_timeout_s=TIMEOUT,
        scope_claim="scp",
    )


def token(kid: str | None = "k1", key: Any = None, alg: str = "RS256", **changes: Any) -> str:
    claims = {"iss": ISS, "sub": "svc", "aud": AUD, "iat": int(NOW), "exp": int(NOW) + 600, "scp": ["messages:send"]}
    claims.update(changes)
    headers = {"kid": kid} if kid is not None else {}
    return sign(claims, key if key is not None else rsa_key(), alg, **headers)


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with loopback_server() as running:
        running.document = {"keys": [public_jwk(rsa_key(), "k1")]}
        yield running


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
async def verifier(server: LoopbackServer, clock: Clock) -> AsyncIterator[TokenVerifier]:
    v = TokenVerifier([issuer(server.url)], leeway_s=30, max_token_lifetime_s=3600, clock=clock)
    yield v
    await v.aclose()


async def code_of(v: TokenVerifier, jwt: str) -> str:
    with pytest.raises(Unauthorized) as caught:
        await v.verify(jwt)
    return caught.value.code


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_jwks_key_verifies_and_is_cached(verifier: TokenVerifier, server: LoopbackServer) -> None:
    """A token signed by a JWKS key verifies; later tokens reuse the cached set (one fetch)."""
    for _ in range(3):
        principal = await verifier.verify(token())
        assert (principal.issuer, principal.scopes) == ("corp", frozenset({"messages:send"}))
    assert server.hits == 1


async def test_jwks_ec_and_kidless_tokens(verifier: TokenVerifier, server: LoopbackServer) -> None:
    """JWKS EC keys verify ES256; a token without kid is tried against the set's keys of its family."""
    server.document = {"keys": [public_jwk(ec_key(), "e1"), public_jwk(rsa_key(), "k1")]}
    assert (await verifier.verify(token("e1", ec_key(), "ES256"))).subject == "svc"
    assert (await verifier.verify(token(None))).subject == "svc"


async def test_key_rotation_refetches_on_unknown_kid(
    verifier: TokenVerifier, server: LoopbackServer, clock: Clock
) -> None:
    """A new kid is refused within the cooldown, then accepted after one refetch once the IdP publishes it."""
    await verifier.verify(token())
    server.document = {"keys": [public_jwk(rsa_key(), "k1"), public_jwk(rsa_key(1), "k2")]}
    assert await code_of(verifier, token("k2", rsa_key(1))) == "invalid_token:unknown_kid"
    assert server.hits == 1
    clock.now += COOLDOWN
    assert (await verifier.verify(token("k2", rsa_key(1)))).subject == "svc"
    assert server.hits == 2


async def test_cache_expires_after_ttl(verifier: TokenVerifier, server: LoopbackServer, clock: Clock) -> None:
    """After the TTL the set is fetched again, so a removed key stops working."""
    await verifier.verify(token())
    server.document = {"keys": [public_jwk(rsa_key(1), "k2")]}
    clock.now += TTL
    assert await code_of(verifier, token(iat=int(clock.now), exp=int(clock.now) + 60)) == "invalid_token:unknown_kid"
    assert server.hits == 2


async def test_unknown_kid_flood_costs_one_refetch(
    verifier: TokenVerifier, server: LoopbackServer, clock: Clock
) -> None:
    """50 concurrent tokens with random unknown kids share a single refetch within the cooldown."""
    await verifier.verify(token())
    clock.now += COOLDOWN
    flood = [token(secrets.token_hex(8)) for _ in range(50)]
    results = await asyncio.gather(*(verifier.verify(t) for t in flood), return_exceptions=True)
    assert all(isinstance(r, Unauthorized) and r.code == "invalid_token:unknown_kid" for r in results)
    assert server.hits == 2
    await asyncio.gather(*(verifier.verify(t) for t in flood), return_exceptions=True)
    assert server.hits == 2


async def test_cold_cache_concurrent_requests_share_one_fetch(verifier: TokenVerifier, server: LoopbackServer) -> None:
    """Concurrent first requests wait for the same fetch instead of each fetching the JWKS."""
    results = await asyncio.gather(*(verifier.verify(token()) for _ in range(20)))
    assert len(results) == 20
    assert server.hits == 1


@pytest.mark.parametrize("mode", ["error", "garbage", "redirect"])
async def test_bad_jwks_fails_closed(verifier: TokenVerifier, server: LoopbackServer, mode: str) -> None:
    """A 500, a non-JSON body or a redirect (never followed) → 401 jwks_unavailable."""
    server.mode = mode
    assert await code_of(verifier, token()) == "invalid_token:jwks_unavailable"
    assert server.paths == ["/jwks.json"]


async def test_jwks_without_usable_keys_is_an_empty_set(verifier: TokenVerifier, server: LoopbackServer) -> None:
    """A valid JWKS holding only unusable keys (here `oct`) is honoured as an empty set: 401 unknown_kid."""
    server.document = {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k1"}]}
    assert await code_of(verifier, token()) == "invalid_token:unknown_kid"
    assert server.paths == ["/jwks.json"]


async def test_jwks_server_down_fails_fast(clock: Clock) -> None:
    """Nothing listening on the JWKS port → 401 jwks_unavailable well within the timeout."""
    v = TokenVerifier(
        [issuer(f"http://127.0.0.1:{free_port()}/jwks.json")], leeway_s=30, max_token_lifetime_s=3600, clock=clock
    )
    started = time.monotonic()
    assert await code_of(v, token()) == "invalid_token:jwks_unavailable"
    assert time.monotonic() - started < TIMEOUT + 1
    await v.aclose()


async def test_hanging_jwks_times_out_without_blocking_the_loop(
    verifier: TokenVerifier, server: LoopbackServer
) -> None:
    """A JWKS server that never answers costs one timeout (shared by concurrent requests); the loop keeps running."""
    server.mode = "hang"
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    background = asyncio.create_task(ticker())
    started = time.monotonic()
    results = await asyncio.gather(*(verifier.verify(token()) for _ in range(10)), return_exceptions=True)
    elapsed = time.monotonic() - started
    background.cancel()
    assert all(isinstance(r, Unauthorized) and r.code == "invalid_token:jwks_unavailable" for r in results)
    assert TIMEOUT * 0.8 < elapsed < TIMEOUT + 1.5
    assert ticks > 10
    assert server.hits == 1


async def test_outage_fails_fast_until_cooldown(verifier: TokenVerifier, server: LoopbackServer, clock: Clock) -> None:
    """After a failed fetch, requests within the cooldown fail at once instead of waiting on the IdP again."""
    server.mode = "error"
    assert await code_of(verifier, token()) == "invalid_token:jwks_unavailable"
    assert await code_of(verifier, token()) == "invalid_token:jwks_unavailable"
    assert server.hits == 1
    server.mode = "ok"
    clock.now += COOLDOWN
    assert (await verifier.verify(token())).subject == "svc"
    assert server.hits == 2


async def test_stale_keys_survive_a_failed_refresh(
    verifier: TokenVerifier, server: LoopbackServer, clock: Clock
) -> None:
    """When the refresh after the TTL fails, the cached keys keep verifying tokens."""
    await verifier.verify(token())
    server.mode = "error"
    clock.now += TTL
    assert (await verifier.verify(token(iat=int(clock.now), exp=int(clock.now) + 60))).subject == "svc"
    assert server.hits == 2


async def test_proxy_environment_is_ignored(
    server: LoopbackServer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verifier's own HTTP client ignores HTTP(S)_PROXY (trust_env=False)."""
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    v = TokenVerifier([issuer(server.url)], leeway_s=30, max_token_lifetime_s=3600, clock=clock)
    assert (await v.verify(token())).subject == "svc"
    await v.aclose()


async def test_injected_client_is_not_closed(server: LoopbackServer, clock: Clock) -> None:
    """A caller-supplied httpx client is used for the JWKS and left open by aclose()."""
    async with httpx.AsyncClient(trust_env=False) as http:
        v = TokenVerifier([issuer(server.url)], leeway_s=30, max_token_lifetime_s=3600, http=http, clock=clock)
        await v.verify(token())
        await v.aclose()
        assert not http.is_closed


def jwks(*keys: dict[str, Any]) -> bytes:
    import json

    return json.dumps({"keys": list(keys)}).encode()


PARSE: list[Any] = [
    pytest.param(lambda: public_jwk(rsa_key(), "k", use="sig"), True, id="use-sig"),
    pytest.param(lambda: public_jwk(rsa_key(), "k"), True, id="no-use"),
    pytest.param(lambda: public_jwk(rsa_key(), "k", use="enc"), False, id="use-enc"),
    pytest.param(lambda: public_jwk(rsa_key(), "k", key_ops=["encrypt"]), False, id="key-ops-without-verify"),
    pytest.param(lambda: public_jwk(rsa_key(), "k", alg="RS256"), True, id="alg-allowed"),
    pytest.param(lambda: public_jwk(rsa_key(), "k", alg="PS256"), False, id="alg-not-allowed"),
    pytest.param(lambda: public_jwk(rsa_key(0, 1024), "k"), False, id="rsa-too-short"),
    pytest.param(lambda: public_jwk(ed_key(), "k"), False, id="kty-not-allowed"),
    pytest.param(lambda: {"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "kid": "k"}, False, id="oct"),
    pytest.param(lambda: {"kty": "RSA", "kid": "k", "n": "!!", "e": "AQAB"}, False, id="unparsable"),
    pytest.param(lambda: public_jwk(rsa_key(), 5), False, id="kid-not-string"),
]


@pytest.mark.parametrize(("make", "usable"), PARSE)
def test_parse_jwks_keeps_only_signing_keys(make: Any, usable: bool) -> None:
    """Only signature keys of an allowed kty/alg, of adequate strength, that parse, are kept."""
    document = jwks(make(), public_jwk(ec_key(), "other"))
    keys = parse_jwks(document, ["RS256", "ES256"])
    assert ("k" in keys.by_kid) is usable


async def test_jwks_key_alg_pins_the_algorithm(server: LoopbackServer, clock: Clock) -> None:
    """A JWKS key that states `alg: RS384` does not verify an RS256 token signed with the same key."""
    server.document = {"keys": [public_jwk(rsa_key(), "k1", alg="RS384")]}
    v = TokenVerifier([issuer(server.url, ("RS256", "RS384"))], leeway_s=30, max_token_lifetime_s=3600, clock=clock)
    assert await code_of(v, token()) == "invalid_token:unknown_kid"
    assert (await v.verify(token(alg="RS384"))).subject == "svc"
    await v.aclose()


@pytest.mark.parametrize(
    "document",
    [b"[]", b"{}", b'{"keys": {}}', b"not json", b'{"keys": [1, "x"]}', b'{"keys": [], "keys": []}'],
)
def test_parse_jwks_rejects_non_documents(document: bytes) -> None:
    """Something that is not a JWKS raises ValueError (old keys are kept, within jwks_max_stale_s)."""
    with pytest.raises(ValueError):
        parse_jwks(document, ["RS256"])
