"""authenticate.py: one Authorization header becomes a Principal; cached tokens are still revocation-checked."""

from __future__ import annotations

import base64
import inspect
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from gatewayconfig import GatewayConfig
from keys import Clock, sign

from gateway.auth.authenticate import Authenticator
from gateway.auth.basic import BasicAuthenticator
from gateway.auth.jwks import KeyRef
from gateway.auth.jwt import Principal, TokenVerifier
from gateway.config.settings import BasicUser, IssuerSettings, KeySettings, Secret
from gateway.errors import BadRequest, Unauthorized
from gateway.guard.authorize import Authorizer

NOW = 1_700_000_000.0
SECRET = "k" * 64
OWN = "smsguard"
AUD = "sms-api"
PASSWORD_HASH = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("pw")


def token(typ: str = "at+jwt", jti: str = "jti-1", exp: float = NOW + 300, sub: str = "alice") -> str:
    claims = {"iss": OWN, "sub": sub, "aud": AUD, "iat": int(NOW), "exp": exp, "jti": jti, "scope": "messages:send"}
    return sign(claims, SECRET, "HS256", typ=typ)


class Spy:
    """Counts verifier calls and holds the revoked jtis."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verify_calls = 0
        self.revoked: set[str] = set()
        self.revocation_checks = 0
        real = verifier.verify_with_key

        async def verify_with_key(token: str, *, refresh: bool = False) -> tuple[Principal, KeyRef | None]:
            self.verify_calls += 1
            return await real(token, refresh=refresh)

        verifier.verify_with_key = verify_with_key  # type: ignore[method-assign]

    async def is_revoked(self, principal: Principal) -> bool:
        self.revocation_checks += 1
        return principal.token_id in self.revoked


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
async def verifier(clock: Clock) -> AsyncIterator[TokenVerifier]:
    own = IssuerSettings("self", OWN, (AUD,), ("HS256",), keys=(KeySettings("HS256", Secret(SECRET)),), own=True)
    v = TokenVerifier([own], leeway_s=30, max_token_lifetime_s=3600, clock=clock)
    yield v
    await v.aclose()


@pytest.fixture
def spy(verifier: TokenVerifier) -> Spy:
    return Spy(verifier)


@pytest.fixture
def auth(verifier: TokenVerifier, spy: Spy, clock: Clock) -> Authenticator:
    basic = BasicAuthenticator([BasicUser("ops", Secret(PASSWORD_HASH), frozenset({"all:any"}))])
    return Authenticator(verifier, basic, is_revoked=spy.is_revoked, clock=clock)


def bearer(value: str, scheme: str = "Bearer") -> list[tuple[bytes, bytes]]:
    return [(b"host", b"gw"), (b"authorization", f"{scheme} {value}".encode())]


def basic(userpass: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Basic " + base64.b64encode(userpass))]


async def refused(auth: Authenticator, headers: list[tuple[bytes, bytes]]) -> Unauthorized:
    with pytest.raises(Unauthorized) as caught:
        await auth.authenticate(headers)
    return caught.value


@pytest.mark.parametrize("headers", [[], [(b"host", b"gw"), (b"x-authorization", b"Bearer x")]])
async def test_no_authorization_header_is_anonymous(auth: Authenticator, headers: list[tuple[bytes, bytes]]) -> None:
    """Without an Authorization header the result is None (the caller answers 401 without error=)."""
    assert await auth.authenticate(headers) is None


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_bearer_scheme_is_case_insensitive(auth: Authenticator, scheme: str) -> None:
    """The scheme name matches in any case; the token is verified."""
    principal = await auth.authenticate(bearer(token(), scheme))
    assert principal is not None
    assert principal.subject == "alice"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")], id="two-bearer"),
        pytest.param([(b"authorization", b"Basic b3BzOnB3"), (b"authorization", b"Bearer b")], id="basic-and-bearer"),
        pytest.param([(b"Authorization", b"Bearer a"), (b"authorization", b"Bearer a")], id="differing-case"),
        pytest.param([(b"authorization", b""), (b"authorization", b"")], id="two-empty"),
    ],
)
async def test_two_authorization_headers_are_a_bad_request(
    auth: Authenticator, headers: list[tuple[bytes, bytes]]
) -> None:
    """Two Authorization headers are refused with 400 before anything is verified."""
    with pytest.raises(BadRequest) as caught:
        await auth.authenticate(headers)
    assert caught.value.code == "bad_request:duplicate_authorization"


REFUSED: list[Any] = [
    pytest.param([(b"authorization", b"Bearer " + b"a" * 8200)], "invalid_token:too_large", id="oversized-bearer"),
    pytest.param([(b"authorization", b"Basic " + b"A" * 8200)], "invalid_token:too_large", id="oversized-basic"),
    pytest.param([(b"authorization", b"Bearer")], "invalid_token:malformed", id="bearer-without-token"),
    pytest.param([(b"authorization", b"Bearer   ")], "invalid_token:malformed", id="bearer-blank-token"),
    pytest.param([(b"authorization", "Bearer é".encode())], "invalid_token:malformed", id="non-ascii"),
    pytest.param([(b"authorization", b"Bearer a.b c.d")], "invalid_token:malformed", id="token-with-space"),
    pytest.param([(b"authorization", b"Token abc")], "invalid_token:unsupported_scheme", id="other-scheme"),
    pytest.param([(b"authorization", b"Digest x=1")], "invalid_token:unsupported_scheme", id="digest"),
    pytest.param([(b"authorization", b"")], "invalid_token:unsupported_scheme", id="empty-value"),
    pytest.param([(b"authorization", b"BearerX abc")], "invalid_token:unsupported_scheme", id="scheme-prefix"),
    pytest.param([(b"authorization", b"Basic !!!!")], "invalid_credentials:malformed", id="basic-not-base64"),
    pytest.param([(b"authorization", b"Basic b3BzOnB3=")], "invalid_credentials:malformed", id="basic-bad-padding"),
    pytest.param([(b"authorization", b"Basic b3BzOnB=")], "invalid_credentials:malformed", id="basic-noncanonical"),
    pytest.param([(b"authorization", b"Basic b3Bz OnB3")], "invalid_credentials:malformed", id="basic-inner-space"),
    pytest.param(basic(b"ops-pw"), "invalid_credentials:malformed", id="basic-without-colon"),
    pytest.param(basic(b"ops:\xff\xfe"), "invalid_credentials:malformed", id="basic-not-utf8"),
    pytest.param([(b"authorization", b"Basic ")], "invalid_credentials:malformed", id="basic-empty"),
    pytest.param(basic(b"ops:wrong"), "invalid_credentials:basic", id="basic-wrong-password"),
    pytest.param(basic(b"nobody:pw"), "invalid_credentials:basic", id="basic-unknown-user"),
    pytest.param(bearer(token(typ="refresh+jwt")), "invalid_token:wrong_token_type", id="refresh-token-as-bearer"),
]


@pytest.mark.parametrize(("headers", "code"), REFUSED)
async def test_refused_credentials(auth: Authenticator, headers: list[tuple[bytes, bytes]], code: str) -> None:
    """Each bad Authorization value is a 401 with its own code and an invalid_token challenge."""
    error = await refused(auth, headers)
    assert error.code == code
    assert 'error="invalid_token"' in error.headers["www-authenticate"]


async def test_header_limit_is_configurable(verifier: TokenVerifier) -> None:
    """max_header_bytes sets the limit on the Authorization value."""
    auth = Authenticator(verifier, None, max_header_bytes=256)
    assert (await refused(auth, bearer("a" * 300))).code == "invalid_token:too_large"


async def test_basic_login(auth: Authenticator) -> None:
    """Valid Basic credentials authenticate as that user."""
    principal = await auth.authenticate(basic(b"ops:pw"))
    assert principal is not None
    assert (principal.subject, principal.kind, principal.scopes) == ("ops", "basic", frozenset({"all:any"}))


async def test_basic_password_may_contain_colons(verifier: TokenVerifier) -> None:
    """Only the first colon separates username from password."""
    users = [BasicUser("ops", Secret(PasswordHasher(time_cost=1, memory_cost=1024).hash("a:b:c")), frozenset())]
    auth = Authenticator(verifier, BasicAuthenticator(users))
    assert await auth.authenticate(basic(b"ops:a:b:c")) is not None


async def test_basic_without_authenticator_is_disabled(verifier: TokenVerifier) -> None:
    """With no BasicAuthenticator, Basic credentials are refused as basic_disabled."""
    auth = Authenticator(verifier, None)
    assert (await refused(auth, basic(b"ops:pw"))).code == "basic_disabled"


async def test_verified_token_is_cached(auth: Authenticator, spy: Spy) -> None:
    """The same token twice is verified once; the revocation hook runs both times."""
    for _ in range(2):
        assert await auth.authenticate(bearer(token())) is not None
    assert spy.verify_calls == 1
    assert spy.revocation_checks == 2


async def test_revoked_after_first_use_is_refused_from_cache(auth: Authenticator, spy: Spy) -> None:
    """A token revoked after it was cached is refused on its next use."""
    await auth.authenticate(bearer(token()))
    spy.revoked.add("jti-1")
    error = await refused(auth, bearer(token()))
    assert (error.code, error.message) == ("invalid_token:revoked", "token has been revoked")
    assert spy.verify_calls == 1


async def test_cache_entry_expires_at_exp(auth: Authenticator, spy: Spy, clock: Clock) -> None:
    """A cached token is re-verified once its exp is reached (here still within leeway, so it passes again)."""
    jwt = token(exp=NOW + 300)
    await auth.authenticate(bearer(jwt))
    clock.now = NOW + 299
    await auth.authenticate(bearer(jwt))
    assert spy.verify_calls == 1
    clock.now = NOW + 300
    await auth.authenticate(bearer(jwt))
    assert spy.verify_calls == 2
    clock.now = NOW + 331
    assert (await refused(auth, bearer(jwt))).code == "invalid_token:expired"


async def test_cache_is_bounded(verifier: TokenVerifier, spy: Spy, clock: Clock) -> None:
    """The cache holds at most cache_size tokens, evicting the least recently used."""
    auth = Authenticator(verifier, None, cache_size=2, clock=clock)
    a, b, c = (token(sub=name) for name in ("a", "b", "c"))
    for jwt in (a, b, a, c, a, b):
        await auth.authenticate(bearer(jwt))
    assert spy.verify_calls == 4  # a, b, c verified; b evicted by c; a kept warm


async def test_cache_holds_digests_not_tokens_and_shares_scope_sets(auth: Authenticator) -> None:
    """Entries are keyed by a 16-byte digest (no bearer token kept in memory); tokens with the same scope string
    share one scope set and interned claim values, which is what lets 100,000 entries fit (bench/token_cache.py)."""
    first = await auth.authenticate(bearer(token(sub="a", jti="j-a")))
    second = await auth.authenticate(bearer(token(sub="b", jti="j-b")))
    assert first is not None
    assert second is not None
    assert all(isinstance(key, bytes) and len(key) == 16 for key in auth._cache)
    assert len(auth._cache) == 2
    assert first.scopes is second.scopes
    assert first.claims["scope"] is second.claims["scope"]
    assert first.claims["iss"] is second.claims["iss"]


async def test_cache_size_comes_from_config(tmp_path: Path) -> None:
    """`auth.token_cache_size` reaches the authenticator; 0 turns the cache off."""
    for size in (0, 7):
        folder = tmp_path / str(size)
        folder.mkdir()
        cfg = GatewayConfig(folder, "http://127.0.0.1:9/3rdparty/v1", auth_extra=f"  token_cache_size: {size}\n")
        authorizer = Authorizer.from_settings(cfg.settings())
        assert authorizer.authenticator._cache_size == size
        await authorizer.aclose()


async def test_failed_verification_is_not_cached(auth: Authenticator, spy: Spy) -> None:
    """A refused token is verified (and refused) again every time."""
    bad = token()[:-2] + "AA"
    for _ in range(2):
        await refused(auth, bearer(bad))
    assert spy.verify_calls == 2


async def test_verify_refresh(auth: Authenticator, spy: Spy) -> None:
    """verify_refresh accepts refresh tokens only, never from the cache, and checks revocation."""
    refresh = token(typ="refresh+jwt", jti="r-1")
    assert (await auth.verify_refresh(refresh)).kind == "refresh"
    assert (await auth.verify_refresh(refresh)).kind == "refresh"
    assert spy.verify_calls == 2
    spy.revoked.add("r-1")
    with pytest.raises(Unauthorized) as caught:
        await auth.verify_refresh(refresh)
    assert caught.value.code == "invalid_token:revoked"
    with pytest.raises(Unauthorized) as caught:
        await auth.verify_refresh(token())
    assert caught.value.code == "invalid_token:wrong_token_type"


async def test_cached_access_token_is_not_a_refresh_token(auth: Authenticator) -> None:
    """An access token in the cache does not pass verify_refresh."""
    await auth.authenticate(bearer(token()))
    with pytest.raises(Unauthorized):
        await auth.verify_refresh(token())


def test_only_headers_are_read() -> None:
    """The Authenticator takes headers only (and the peer's address, keyword-only, for Basic's failed-login
    limits): a token in the query string can never be honoured."""
    parameters = inspect.signature(Authenticator.authenticate).parameters
    assert list(parameters) == ["self", "headers", "peer"]
    assert parameters["peer"].kind is inspect.Parameter.KEYWORD_ONLY
