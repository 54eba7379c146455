"""JWKS defences (issue 22), each attacked through a real JWKS server on loopback (`fakes.jwks`).

Compressed answers (a gzip bomb, single and nested), stale keys past `jwks_max_stale_s`, verified tokens
cached past their key's removal, duplicate kids. Memory is measured as the peak RSS of this process
while the fetch runs; "other issuers still answer" is a generous bound on their verifications, never
a latency percentile (the machine is shared): bench/jwks_bomb.py has the precise figures.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from fakes import RecordingUpstream, Reply, UvicornServer
from fakes.jwks import JwksServer, gzip_bomb, jwks_server
from gatewayconfig import ADMIN_BY_BASIC, OPS_AUTH, GatewayConfig
from keys import Clock, ed_key, public_jwk, public_pem, rsa_key, sign

from gateway.app import create_app
from gateway.auth.authenticate import Authenticator
from gateway.auth.jwks import MAX_JWKS_BYTES, PARSE_INLINE_BYTES
from gateway.auth.jwt import TokenVerifier
from gateway.config.settings import IssuerSettings, KeySettings, Secret, load_settings, parse_settings
from gateway.errors import LoadError, Unauthorized

NOW = 1_700_000_000.0
ISS = "https://idp.example.com/"
OTHER = "https://other.example.com/"
AUD = "sms-api"
TTL = 60.0
COOLDOWN = 10.0
MAX_STALE = 180.0
TIMEOUT = 1.0
MIB = 1 << 20


def corp(url: str, **changes: Any) -> IssuerSettings:
    settings: dict[str, Any] = {
        "jwks_url": url,
        "jwks_cache_ttl_s": TTL,
        "jwks_refetch_cooldown_s": COOLDOWN,
        "jwks_timeout_s": TIMEOUT,
        "jwks_max_stale_s": MAX_STALE,
        "scope_claim": "scp",
    }
    settings.update(changes)
    return IssuerSettings("corp", ISS, (AUD,), ("RS256",), **settings)


def other_issuer() -> IssuerSettings:
    """An issuer with a configured EdDSA key: it never waits on anybody's JWKS."""
    key = KeySettings("EdDSA", Secret(public_pem(ed_key())), "e1")
    return IssuerSettings("other", OTHER, (AUD,), ("EdDSA",), keys=(key,))


def token(kid: str | None = "k1", key: Any = None, *, at: float = NOW, iss: str = ISS, alg: str = "RS256") -> str:
    claims = {"iss": iss, "sub": "svc", "aud": AUD, "iat": int(at), "exp": int(at) + 3000, "scp": "messages:send"}
    return sign(claims, key if key is not None else rsa_key(), alg, **({"kid": kid} if kid else {}))


def other_token(at: float = NOW) -> str:
    return token("e1", ed_key(), at=at, iss=OTHER, alg="EdDSA")


async def code_of(verifier: TokenVerifier | Authenticator, jwt: str) -> str:
    """The 401 code for `jwt`, through the verifier, or through the Authenticator (and its cache)."""
    if isinstance(verifier, Authenticator):
        attempt = verifier.authenticate([(b"authorization", f"Bearer {jwt}".encode())])
    else:
        attempt = verifier.verify(jwt)
    with pytest.raises(Unauthorized) as caught:
        await attempt
    return caught.value.code


@pytest.fixture
def server() -> Iterator[JwksServer]:
    with jwks_server() as running:
        running.document = {"keys": [public_jwk(rsa_key(), "k1")]}
        yield running


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
async def verifier(server: JwksServer, clock: Clock) -> AsyncIterator[TokenVerifier]:
    v = TokenVerifier([corp(server.url), other_issuer()], leeway_s=30, max_token_lifetime_s=3600, clock=clock)
    yield v
    await v.aclose()


class PeakRss:
    """The highest RSS of this process while the block runs, sampled by a thread every 2 ms."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._stop = threading.Event()
        self.baseline = self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


# ------------------------------------------------------------------------------ decompression bomb

BOMBS = [
    pytest.param(64 * MIB, ("gzip",), id="gzip-64MiB"),
    pytest.param(1024 * MIB, ("gzip", "gzip"), id="gzip-gzip-1GiB"),
]


@pytest.mark.parametrize(("size", "encoding"), BOMBS)
async def test_compressed_jwks_is_refused_without_decoding(
    verifier: TokenVerifier, server: JwksServer, size: int, encoding: tuple[str, ...]
) -> None:
    """A gzip bomb (one layer, or nested) is refused undecoded: 401 jwks_unavailable, RSS grows < 32 MiB."""
    server.body = gzip_bomb(size, len(encoding))
    server.encoding = encoding
    with PeakRss() as rss:
        assert await code_of(verifier, token()) == "invalid_token:jwks_unavailable"
    assert rss.growth < 32 * MIB, f"RSS grew {rss.growth / MIB:.1f} MiB"
    assert server.request_headers[0]["accept-encoding"] == "identity"


async def test_other_issuers_answer_while_a_bomb_is_fetched(verifier: TokenVerifier, server: JwksServer) -> None:
    """While one issuer's JWKS fetch meets a nested gzip bomb, another issuer's tokens keep verifying at once."""
    server.body = gzip_bomb(1024 * MIB, 2)
    server.encoding = ("gzip", "gzip")
    slowest = 0.0
    done = asyncio.Event()

    async def others() -> int:
        nonlocal slowest
        count = 0
        while not done.is_set() or count < 20:
            started = time.monotonic()  # one round: a short sleep (as between requests), then a verification
            await asyncio.sleep(0.005)
            assert (await verifier.verify(other_token())).issuer == "other"
            slowest = max(slowest, time.monotonic() - started)
            count += 1
        return count

    async def bombed() -> str:
        try:
            return await code_of(verifier, token())
        finally:
            done.set()

    code, count = await asyncio.gather(bombed(), others())
    assert code == "invalid_token:jwks_unavailable"
    assert count >= 20
    assert slowest < 1.0, f"an other-issuer round took {slowest:.2f} s"  # a generous bound (seconds before)


async def test_identity_jwks_is_still_accepted(verifier: TokenVerifier, server: JwksServer) -> None:
    """`Content-Encoding: identity` (or none) is a plain answer and verifies as before."""
    server.body = json.dumps({"keys": [public_jwk(rsa_key(), "k1")]}).encode()
    server.encoding = ()
    assert (await verifier.verify(token())).subject == "svc"


@pytest.mark.parametrize("coding", ["deflate", "br", "zstd", "gzip, identity", "x-unknown"])
async def test_any_content_coding_is_refused(verifier: TokenVerifier, server: JwksServer, coding: str) -> None:
    """Whatever coding the server claims (even one the client could not decode), the answer is refused unread."""
    server.body = json.dumps({"keys": [public_jwk(rsa_key(), "k1")]}).encode()
    server.headers = {"content-encoding": coding}
    assert await code_of(verifier, token()) == "invalid_token:jwks_unavailable"


async def test_declared_oversize_body_is_refused_before_reading(verifier: TokenVerifier, server: JwksServer) -> None:
    """A Content-Length over the 512 KiB cap is refused from the headers; the body is never read."""
    server.body = b" " * (MAX_JWKS_BYTES + 1)
    assert await code_of(verifier, token()) == "invalid_token:jwks_unavailable"


async def test_trickled_body_is_bounded_by_the_timeout(verifier: TokenVerifier, server: JwksServer) -> None:
    """Headers at once, then a byte every 50 ms: the whole fetch still ends at jwks_timeout_s (generous bound)."""
    server.mode = "trickle"
    started = time.monotonic()
    assert await code_of(verifier, token()) == "invalid_token:jwks_unavailable"
    assert time.monotonic() - started < TIMEOUT + 3


async def test_large_valid_jwks_is_parsed(server: JwksServer, clock: Clock) -> None:
    """A JWKS near the cap (parsed in a worker thread) still yields its keys."""
    padding = [{"kty": "oct", "k": "A" * 4000, "kid": f"pad{i}"} for i in range(100)]
    server.document = {"keys": [public_jwk(rsa_key(), "k1"), *padding]}
    assert len(json.dumps(server.document)) > PARSE_INLINE_BYTES
    v = TokenVerifier([corp(server.url)], leeway_s=30, max_token_lifetime_s=3600, clock=clock)
    assert (await v.verify(token())).subject == "svc"
    await v.aclose()


# ------------------------------------------------------------------------------------- staleness

FAILURES = ["error", "hang", "garbage", "down"]


def fail(server: JwksServer, how: str) -> None:
    if how == "down":
        server.stop()
    else:
        server.mode = how


@pytest.mark.parametrize("how", FAILURES)
async def test_keys_past_max_stale_fail_closed(
    verifier: TokenVerifier, server: JwksServer, clock: Clock, how: str
) -> None:
    """Refresh failing (500, hang, garbage, refused): old keys serve until jwks_max_stale_s, then 401 jwks_stale."""
    assert (await verifier.verify(token())).subject == "svc"
    fail(server, how)
    clock.now += TTL
    assert (await verifier.verify(token(at=clock.now))).subject == "svc"  # stale but within the bound
    clock.now = NOW + MAX_STALE + 1
    assert await code_of(verifier, token(at=clock.now)) == "invalid_token:jwks_stale"
    assert (await verifier.verify(other_token(clock.now))).issuer == "other"  # other issuers are unaffected


async def test_stale_issuer_logs_once(verifier: TokenVerifier, server: JwksServer, clock: Clock, caplog: Any) -> None:
    """Fifty requests to an issuer past its staleness bound: fifty 401s, one log line saying why."""
    await verifier.verify(token())
    server.mode = "error"
    clock.now = NOW + MAX_STALE + 1
    caplog.set_level(logging.WARNING, logger="gateway.auth")
    for _ in range(50):
        assert await code_of(verifier, token(at=clock.now)) == "invalid_token:jwks_stale"
    stale = [r for r in caplog.records if "past jwks_max_stale_s" in r.getMessage()]
    assert len(stale) == 1
    assert stale[0].__dict__["issuer"] == "corp"


@pytest.mark.parametrize(
    ("document", "kidless"),
    [
        pytest.param({"keys": []}, "unknown_kid", id="empty"),
        pytest.param({"keys": [{"kty": "oct", "k": "c2VjcmV0" * 4, "kid": "k1"}]}, "unknown_kid", id="unusable"),
        pytest.param({"keys": [public_jwk(rsa_key(1), "k2")]}, "bad_signature", id="rotated"),
    ],
)
async def test_published_set_replaces_the_old_one(
    verifier: TokenVerifier, server: JwksServer, clock: Clock, document: dict[str, Any], kidless: str
) -> None:
    """An IdP that publishes an empty, unusable-only or rotated set has spoken: the old key stops at the next fetch."""
    await verifier.verify(token())
    server.document = document
    clock.now += TTL
    assert await code_of(verifier, token(at=clock.now)) == "invalid_token:unknown_kid"
    assert await code_of(verifier, token(None, at=clock.now)) == f"invalid_token:{kidless}"


# ------------------------------------------------------------------------------- cached verifications


async def test_cached_token_stops_when_its_key_leaves_the_set(
    verifier: TokenVerifier, server: JwksServer, clock: Clock
) -> None:
    """A token verified (and cached) under k1 is refused once a fetch no longer lists k1, well before its exp."""
    auth = Authenticator(verifier, None, clock=clock)
    jwt = token()
    assert (await auth.authenticate([(b"authorization", f"Bearer {jwt}".encode())])) is not None
    server.document = {"keys": [public_jwk(rsa_key(1), "k2")]}
    clock.now += TTL
    assert await code_of(auth, jwt) == "invalid_token:unknown_kid"
    assert server.hits == 2


async def test_cached_token_fails_closed_past_max_stale(
    verifier: TokenVerifier, server: JwksServer, clock: Clock
) -> None:
    """A cached token whose issuer's keys are past jwks_max_stale_s (JWKS failing) is refused like a fresh one."""
    auth = Authenticator(verifier, None, clock=clock)
    jwt = token()
    await auth.authenticate([(b"authorization", f"Bearer {jwt}".encode())])
    server.mode = "error"
    clock.now += TTL
    assert (await auth.authenticate([(b"authorization", f"Bearer {jwt}".encode())])) is not None  # within bound
    clock.now = NOW + MAX_STALE + 1
    assert await code_of(auth, jwt) == "invalid_token:jwks_stale"


async def test_cached_token_survives_a_refresh_that_keeps_its_key(
    verifier: TokenVerifier, server: JwksServer, clock: Clock
) -> None:
    """A refetch that still lists the key keeps the cached verification (the key is matched by thumbprint)."""
    auth = Authenticator(verifier, None, clock=clock)
    jwt = token()
    await auth.authenticate([(b"authorization", f"Bearer {jwt}".encode())])
    server.document = {"keys": [public_jwk(rsa_key(1), "k2"), public_jwk(rsa_key(), "k1")]}
    clock.now += TTL
    assert (await auth.authenticate([(b"authorization", f"Bearer {jwt}".encode())])) is not None
    assert server.hits == 2


# ------------------------------------------------------------------------------------ duplicate kids


def decoys(count: int) -> list[dict[str, Any]]:
    return [public_jwk(rsa_key(10 + i), "k1") for i in range(count)]


async def test_duplicate_kid_set_is_refused(verifier: TokenVerifier, server: JwksServer) -> None:
    """A JWKS naming two different keys with one kid is refused as a whole: no key of it is used."""
    server.document = {"keys": [*decoys(3), public_jwk(rsa_key(), "k1")]}
    assert await code_of(verifier, token()) == "invalid_token:jwks_unavailable"


async def test_duplicate_kid_refresh_keeps_the_previous_set(
    verifier: TokenVerifier, server: JwksServer, clock: Clock
) -> None:
    """A refresh that brings duplicate kids is a failed fetch: the previous set serves, within the staleness bound."""
    await verifier.verify(token())
    server.document = {"keys": [*decoys(4), public_jwk(rsa_key(), "k1")]}
    clock.now += TTL
    assert (await verifier.verify(token(at=clock.now))).subject == "svc"
    clock.now = NOW + MAX_STALE + 1
    assert await code_of(verifier, token(at=clock.now)) == "invalid_token:jwks_stale"


async def test_same_key_listed_twice_is_one_key(verifier: TokenVerifier, server: JwksServer) -> None:
    """The same key listed twice under one kid (same thumbprint) is not a conflict."""
    server.document = {"keys": [public_jwk(rsa_key(), "k1"), public_jwk(rsa_key(), "k1", use="sig")]}
    assert (await verifier.verify(token())).subject == "svc"


# ---------------------------------------------------------------------------------------- config


def test_max_stale_config_key() -> None:
    """`jwks_max_stale_s` is read per issuer; absent means 3 x jwks_cache_ttl_s; negative is a load error."""
    base = "auth:\n  issuers:\n    - {name: c, issuer: i, audience: a, algorithms: [RS256], jwks_url: 'http://x'"
    assert parse_settings(base + "}\n").auth.issuers[0].jwks_max_stale_s is None
    assert parse_settings(base + ", jwks_max_stale_s: 120}\n").auth.issuers[0].jwks_max_stale_s == 120
    with pytest.raises(LoadError, match="jwks_max_stale_s"):
        parse_settings(base + ", jwks_max_stale_s: -1}\n")


async def test_default_max_stale_is_three_cache_lifetimes(server: JwksServer, clock: Clock) -> None:
    """Without jwks_max_stale_s, keys whose refresh fails are used up to 3 x jwks_cache_ttl_s, then refused."""
    v = TokenVerifier([corp(server.url, jwks_max_stale_s=None)], leeway_s=30, max_token_lifetime_s=3600, clock=clock)
    await v.verify(token())
    server.mode = "error"
    clock.now = NOW + 3 * TTL
    assert (await v.verify(token(at=clock.now))).subject == "svc"
    clock.now += COOLDOWN + 1
    assert await code_of(v, token(at=clock.now)) == "invalid_token:jwks_stale"
    await v.aclose()


# ------------------------------------------------------------------------- the gateway: readyz, metrics


async def test_gateway_reports_stale_jwks_in_readyz_and_metrics(tmp_path: Path, server: JwksServer) -> None:
    """Through `create_app` under uvicorn: a stale issuer is a 401 jwks_stale, /readyz says degraded, metrics count."""
    issuer = (
        f"  issuers:\n    - {{name: corp, issuer: '{ISS}', audience: {AUD}, algorithms: [RS256], jwks_url: "
        f"'{server.url}', jwks_cache_ttl_s: 0.2, jwks_refetch_cooldown_s: 0, jwks_max_stale_s: 0.4}}\n"
    )
    async with RecordingUpstream(Reply(200, body=b"{}")) as upstream:
        config = GatewayConfig(tmp_path, upstream.url + "/3rdparty/v1", extra=ADMIN_BY_BASIC)
        path = config.write()
        path.write_text(path.read_text().replace("auth:\n", "auth:\n" + issuer, 1))
        gateway = create_app(load_settings(path, env=config.env))
        async with UvicornServer(gateway, lifespan="on") as running, httpx.AsyncClient(base_url=running.url) as client:

            async def send() -> httpx.Response:
                bearer = {"authorization": f"Bearer {token(at=time.time())}"}
                return await client.post("/3rdparty/v1/messages", content=b"{}", headers=bearer)

            async def metric(line: str) -> float | None:
                for row in (await client.get("/metrics")).text.splitlines():
                    if row.startswith(line + " "):
                        return float(row.rsplit(" ", 1)[1])
                return None

            assert (await send()).status_code == 200
            ready = (await client.get("/readyz", auth=OPS_AUTH)).json()
            assert (ready["status"], ready["jwks"]["corp"]["state"], ready["jwks"]["corp"]["keys"]) == (
                "ready",
                "ok",
                1,
            )
            assert await metric('smsguard_jwks_fetches_total{issuer="corp",outcome="ok"}') == 1
            assert await metric('smsguard_jwks_keys{issuer="corp"}') == 1
            assert (await metric('smsguard_jwks_fetched_timestamp_seconds{issuer="corp"}') or 0) > NOW

            server.mode = "error"
            await asyncio.sleep(0.6)  # past jwks_max_stale_s
            refused = await send()
            assert refused.status_code == 401
            assert 'error="invalid_token"' in refused.headers["www-authenticate"]
            assert "too old" in refused.json()["message"]
            ready_response = await client.get("/readyz", auth=OPS_AUTH)
            ready = ready_response.json()
            assert ready_response.status_code == 200
            assert (ready["status"], ready["jwks"]["corp"]["state"]) == ("degraded", "expired")
            assert await metric('smsguard_jwks_fetches_total{issuer="corp",outcome="http_error"}') == 1
            assert await metric('smsguard_jwks_keys{issuer="corp"}') == 0
            assert await metric('smsguard_token_verification_failures_total{reason="invalid_token:jwks_stale"}') == 1

            server.mode = "ok"
            assert (await send()).status_code == 200
            assert (await client.get("/readyz", auth=OPS_AUTH)).json()["status"] == "ready"
