"""verify.py: only well-formed, correctly signed, currently valid tokens of a configured issuer pass."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from keys import (
    b64,
    ec_key,
    ed_key,
    forge,
    loopback_server,
    private_pem,
    public_der,
    public_jwk,
    public_pem,
    rsa_key,
    sign,
)

from gateway.auth.jwt import MAX_TOKEN_CHARS, TokenVerifier
from gateway.config.settings import IssuerSettings, KeySettings, Secret
from gateway.errors import LoadError, Unauthorized

NOW = 1_700_000_000.0
HS_SECRET = "h" * 64
HS = "https://hs.example.com"
RS = "https://idp.example.com/"
ES = "https://es.example.com"
ED = "https://ed.example.com"
OWN = "smsguard"
AUD = "sms-api"


def issuers() -> tuple[IssuerSettings, ...]:
    return (
        IssuerSettings("hs", HS, (AUD,), ("HS256",), keys=(KeySettings("HS256", Secret(HS_SECRET)),)),
        IssuerSettings(
            "corp",
            RS,
            (AUD, "other-api"),
            ("RS256",),
            keys=(KeySettings("RS256", Secret(public_pem(rsa_key())), kid="rsa-1"),),
            scope_claim="scp",
        ),
        IssuerSettings(
            "ec", ES, (AUD,), ("ES256",), keys=(KeySettings("ES256", Secret(public_pem(ec_key())), "ec-1"),)
        ),
        IssuerSettings("ed", ED, (AUD,), ("EdDSA",), keys=(KeySettings("EdDSA", Secret(public_pem(ed_key()))),)),
        IssuerSettings(
            "self",
            OWN,
            (AUD,),
            ("EdDSA",),
            keys=(KeySettings("EdDSA", Secret(private_pem(ed_key(1))), kid="self-1"),),
            own=True,
        ),
    )


def claims(iss: str = HS, **changes: Any) -> dict[str, Any]:
    """Valid claims for `iss`; a change to None removes the claim."""
    base: dict[str, Any] = {
        "iss": iss,
        "sub": "alice",
        "aud": AUD,
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        "jti": "jti-1",
        "scope": "messages:send messages:read",
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def hs(**changes: Any) -> str:
    return sign(claims(**{"iss": HS, **changes}), HS_SECRET, "HS256")


def rs(kid: str | None = "rsa-1", **changes: Any) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return sign(claims(**{"iss": RS, **changes}), rsa_key(), "RS256", **headers)


def own(typ: str = "at+jwt", **changes: Any) -> str:
    return sign(claims(**{"iss": OWN, **changes}), ed_key(1), "EdDSA", kid="self-1", typ=typ)


def swap_signature(token: str, donor: str) -> str:
    return token.rsplit(".", 1)[0] + "." + donor.rsplit(".", 1)[1]


@pytest.fixture
async def verifier() -> AsyncIterator[TokenVerifier]:
    v = TokenVerifier(issuers(), leeway_s=30, max_token_lifetime_s=3600, clock=lambda: NOW)
    yield v
    await v.aclose()


async def rejected(v: TokenVerifier, token: str, *, refresh: bool = False) -> Unauthorized:
    with pytest.raises(Unauthorized) as caught:
        await v.verify(token, refresh=refresh)
    return caught.value


# ------------------------------------------------------------------------------------ happy paths

HAPPY: list[Any] = [
    pytest.param(lambda: hs(), "hs", id="HS256"),
    pytest.param(lambda: rs(), "corp", id="RS256-kid"),
    pytest.param(lambda: sign(claims(ES), ec_key(), "ES256", kid="ec-1"), "ec", id="ES256-kid"),
    pytest.param(lambda: sign(claims(ED), ed_key(), "EdDSA"), "ed", id="EdDSA-no-kid"),
    pytest.param(lambda: sign(claims(ED), ed_key(), "EdDSA", kid="any"), "ed", id="EdDSA-kidless-key-any-kid"),
    pytest.param(lambda: own(), "self", id="own-EdDSA-from-private-pem"),
    pytest.param(lambda: own(typ="application/AT+JWT"), "self", id="own-typ-media-type"),
    pytest.param(lambda: hs(exp=int(NOW) - 10), "hs", id="expired-within-leeway"),
    pytest.param(lambda: hs(nbf=int(NOW) + 10, iat=int(NOW) + 10), "hs", id="nbf-iat-within-leeway"),
    pytest.param(lambda: hs(exp=NOW + 299.5, iat=NOW - 0.5), "hs", id="float-dates"),
    pytest.param(lambda: rs(aud=["x", "other-api"]), "corp", id="aud-list-intersects"),
    pytest.param(lambda: hs(jti=None), "hs", id="external-without-jti"),
]


@pytest.mark.parametrize(("make", "issuer"), HAPPY)
async def test_valid_tokens_verify(verifier: TokenVerifier, make: Callable[[], str], issuer: str) -> None:
    """A correctly signed, current token of a configured issuer yields its Principal."""
    principal = await verifier.verify(make())
    assert principal.subject == "alice"
    assert principal.issuer == issuer
    assert principal.kind == "access"
    assert principal.claims["sub"] == "alice"
    assert principal.expires_at is not None


async def test_principal_fields(verifier: TokenVerifier) -> None:
    """The Principal carries subject, configured issuer name, jti, exp and the scopes."""
    principal = await verifier.verify(own())
    assert (principal.subject, principal.issuer, principal.token_id) == ("alice", "self", "jti-1")
    assert principal.expires_at == NOW + 300
    assert principal.scopes == {"messages:send", "messages:read"}


async def test_claims_are_read_only(verifier: TokenVerifier) -> None:
    """The claims mapping cannot be changed by whoever receives the Principal."""
    principal = await verifier.verify(hs())
    with pytest.raises(TypeError):
        principal.claims["sub"] = "mallory"  # type: ignore[index]


SCOPES: list[Any] = [
    pytest.param(None, {"scope": "a:b c:d"}, {"a:b", "c:d"}, id="scope-string"),
    pytest.param(None, {"scp": ["a:b", "c:d"]}, {"a:b", "c:d"}, id="scp-array"),
    pytest.param(None, {"scopes": ["a:b"]}, {"a:b"}, id="scopes-array"),
    pytest.param("scp", {"scope": "x:y", "scp": ["a:b"]}, {"a:b"}, id="configured-claim"),
    pytest.param("realm_access.roles", {"realm_access": {"roles": ["a:b", "c:d"]}}, {"a:b", "c:d"}, id="dotted-path"),
    pytest.param(None, {}, set(), id="no-scopes"),
]


@pytest.mark.parametrize(("claim_path", "extra", "expected"), SCOPES)
async def test_scopes_from_claims(claim_path: str | None, extra: dict[str, Any], expected: set[str]) -> None:
    """Scopes come from `scope`, `scp`/`scopes`, or the issuer's configured claim path."""
    issuer = IssuerSettings("hs", HS, (AUD,), ("HS256",), keys=(KeySettings("HS256", Secret(HS_SECRET)),))
    issuer = IssuerSettings(**{**issuer.__dict__, "scope_claim": claim_path})
    v = TokenVerifier([issuer], leeway_s=0, max_token_lifetime_s=3600, clock=lambda: NOW)
    token = sign({**claims(HS, scope=None), **extra}, HS_SECRET, "HS256")
    assert (await v.verify(token)).scopes == expected


# -------------------------------------------------------------------------------------- rejections

ALG_NONE = [
    pytest.param(lambda a=alg: forge({"alg": a, "typ": "JWT"}, claims()), "alg_not_allowed", id=f"alg-{alg}")
    for alg in ("none", "None", "NONE", "nOnE")
]

CONFUSION = [
    pytest.param(
        lambda f=form: forge({"alg": "HS256", "kid": "rsa-1"}, claims(RS), hmac_key=f()),
        "alg_not_allowed",
        id=f"rs256-to-hs256-{name}",
    )
    for name, form in (
        ("pem", lambda: public_pem(rsa_key()).encode()),
        ("jwk", lambda: json.dumps(public_jwk(rsa_key(), "rsa-1")).encode()),
        ("der", lambda: public_der(rsa_key())),
    )
]

KID_TRICKS = [
    pytest.param(lambda k=kid: rs(kid=k), "unknown_kid", id=f"kid-{label}")
    for label, kid in (
        ("traversal", "../../etc/passwd"),
        ("absolute", "/dev/null"),
        ("sql", "' OR 1=1 --"),
        ("nul", "rsa-1\x00"),
        ("case", "RSA-1"),
        ("space", "rsa-1 "),
        ("empty", ""),
    )
]

REJECTED: list[Any] = [
    *ALG_NONE,
    pytest.param(
        lambda: forge({"alg": "none"}, claims(), hmac_key=HS_SECRET.encode()), "alg_not_allowed", id="alg-none-signed"
    ),
    pytest.param(lambda: forge({"typ": "JWT"}, claims()), "alg_not_allowed", id="alg-missing"),
    pytest.param(lambda: sign(claims(), HS_SECRET, "HS512"), "alg_not_allowed", id="alg-outside-allowlist-same-family"),
    pytest.param(lambda: sign(claims(RS), ec_key(), "ES256", kid="rsa-1"), "alg_not_allowed", id="alg-other-family"),
    *CONFUSION,
    *KID_TRICKS,
    pytest.param(lambda: hs(exp=int(NOW) - 31), "expired", id="expired"),
    pytest.param(lambda: hs(nbf=int(NOW) + 60), "not_yet_valid", id="nbf-future"),
    pytest.param(lambda: hs(iat=int(NOW) + 60), "not_yet_valid", id="iat-future"),
    pytest.param(lambda: hs(exp=None), "missing_claim", id="missing-exp"),
    pytest.param(lambda: hs(iat=None), "missing_claim", id="missing-iat"),
    pytest.param(lambda: hs(sub=None), "missing_claim", id="missing-sub"),
    pytest.param(lambda: hs(aud=None), "missing_claim", id="missing-aud"),
    pytest.param(lambda: hs(iss=None), "missing_claim", id="missing-iss"),
    pytest.param(lambda: own(jti=None), "missing_claim", id="own-token-missing-jti"),
    pytest.param(lambda: hs(exp=str(int(NOW) + 300)), "bad_claim_type", id="exp-string"),
    pytest.param(lambda: hs(exp=True), "bad_claim_type", id="exp-bool"),
    pytest.param(lambda: hs(exp=[int(NOW) + 300]), "bad_claim_type", id="exp-list"),
    pytest.param(lambda: hs(iat=str(int(NOW))), "bad_claim_type", id="iat-string"),
    pytest.param(lambda: hs(nbf="0"), "bad_claim_type", id="nbf-string"),
    pytest.param(lambda: _raw_exp("1e999"), "bad_claim_type", id="exp-infinite"),
    pytest.param(lambda: hs(sub=""), "bad_claim_type", id="sub-empty"),
    pytest.param(lambda: hs(sub=42), "bad_claim_type", id="sub-number"),
    pytest.param(
        lambda: forge({"alg": "HS256"}, claims(iss=7), hmac_key=HS_SECRET.encode()), "bad_claim_type", id="iss-number"
    ),
    pytest.param(lambda: hs(aud=7), "bad_claim_type", id="aud-number"),
    pytest.param(lambda: hs(aud=[AUD, 7]), "bad_claim_type", id="aud-list-with-number"),
    pytest.param(lambda: hs(jti=5), "bad_claim_type", id="jti-number"),
    pytest.param(lambda: hs(exp=int(NOW) + 10**9), "lifetime_too_long", id="absurd-exp"),
    pytest.param(lambda: hs(iat=int(NOW) - 3000, exp=int(NOW) + 1000), "lifetime_too_long", id="exp-minus-iat"),
    pytest.param(lambda: hs(iss="https://evil.example.com"), "unknown_issuer", id="iss-unknown"),
    pytest.param(lambda: rs(iss="https://idp.example.com"), "unknown_issuer", id="iss-without-trailing-slash"),
    pytest.param(lambda: rs(iss="https://idp.example.com/evil"), "unknown_issuer", id="iss-with-suffix"),
    pytest.param(lambda: rs(iss="HTTPS://IDP.EXAMPLE.COM/"), "unknown_issuer", id="iss-other-case"),
    pytest.param(lambda: hs(iss=HS + " "), "unknown_issuer", id="iss-trailing-space"),
    pytest.param(lambda: hs(aud="other-api"), "bad_audience", id="aud-wrong"),
    pytest.param(lambda: hs(aud=["x", "y"]), "bad_audience", id="aud-list-disjoint"),
    pytest.param(lambda: hs(aud=[]), "bad_audience", id="aud-empty-list"),
    pytest.param(lambda: hs(aud="sms-api-evil"), "bad_audience", id="aud-prefix"),
    pytest.param(
        lambda: sign(claims(), HS_SECRET, "HS256", crit=["exp"], exp=1), "crit_unsupported", id="crit-unknown"
    ),
    pytest.param(
        lambda: forge({"alg": "HS256", "crit": []}, claims(), hmac_key=HS_SECRET.encode()),
        "crit_unsupported",
        id="crit-empty",
    ),
    pytest.param(
        lambda: forge({"alg": "HS256", "b64": False, "crit": ["b64"]}, claims(), hmac_key=HS_SECRET.encode()),
        "crit_unsupported",
        id="crit-b64",
    ),
    pytest.param(lambda: hs().rsplit(".", 1)[0] + ".", "bad_signature", id="signature-stripped-dot"),
    pytest.param(lambda: hs().rsplit(".", 1)[0], "malformed", id="signature-stripped-two-segments"),
    pytest.param(lambda: swap_signature(hs(), hs(sub="bob")), "bad_signature", id="signature-swapped-hs"),
    pytest.param(lambda: swap_signature(rs(), rs(sub="bob")), "bad_signature", id="signature-swapped-rs"),
    pytest.param(lambda: sign(claims(RS), rsa_key(1), "RS256", kid="rsa-1"), "bad_signature", id="signed-by-other-key"),
    pytest.param(
        lambda: forge({"alg": "HS256"}, claims(), hmac_key=b"x" * 64), "bad_signature", id="wrong-hmac-secret"
    ),
    pytest.param(lambda: _tamper(hs()), "bad_signature", id="payload-tampered"),
    pytest.param(lambda: "", "malformed", id="empty"),
    pytest.param(lambda: "not-a-token", "malformed", id="one-segment"),
    pytest.param(lambda: hs() + ".extra", "malformed", id="four-segments"),
    pytest.param(lambda: "!!!." + hs().split(".", 1)[1], "malformed", id="header-not-base64url"),
    pytest.param(lambda: hs().replace(".", "=.", 1), "malformed", id="padded-segment"),
    pytest.param(lambda: " " + hs(), "malformed", id="leading-space"),
    pytest.param(lambda: hs() + "\u00e9", "malformed", id="non-ascii"),
    pytest.param(lambda: _noncanonical(hs()), "malformed", id="non-canonical-base64"),
    pytest.param(lambda: forge(b"not json", claims()), "malformed", id="header-not-json"),
    pytest.param(
        lambda: forge({"alg": "HS256"}, b"[1, 2]", hmac_key=HS_SECRET.encode()), "malformed", id="payload-array"
    ),
    pytest.param(lambda: forge({"alg": "HS256"}, b'{"exp": NaN}'), "malformed", id="payload-nan"),
    pytest.param(lambda: forge({"alg": "HS256"}, b"{" * 5000), "malformed", id="payload-deep-nesting"),
    pytest.param(lambda: forge({"alg": "HS256"}, b"\xff\xfe"), "malformed", id="payload-not-utf8"),
    pytest.param(lambda: forge({"alg": "HS256", "kid": 5}, claims()), "malformed", id="kid-not-string"),
    pytest.param(lambda: forge({"alg": "HS256", "typ": 5}, claims()), "malformed", id="typ-not-string"),
    pytest.param(lambda: _duplicate_payload(), "duplicate_claim", id="duplicate-payload-claim"),
    pytest.param(lambda: _duplicate_nested(), "duplicate_claim", id="duplicate-nested-member"),
    pytest.param(
        lambda: forge(b'{"alg":"HS256","alg":"none"}', claims(), hmac_key=HS_SECRET.encode()),
        "duplicate_claim",
        id="duplicate-header-member",
    ),
    pytest.param(lambda: "a" * (MAX_TOKEN_CHARS + 1), "too_large", id="too-large"),
    pytest.param(lambda: own(typ="refresh+jwt"), "wrong_token_type", id="refresh-used-as-access"),
    pytest.param(lambda: own(typ="JWT"), "wrong_token_type", id="own-token-without-at-typ"),
    pytest.param(
        lambda: sign(claims(ED), ed_key(), "EdDSA", typ="Refresh+JWT"), "wrong_token_type", id="external-refresh-typ"
    ),
]


def _raw_exp(literal: str) -> str:
    body = json.dumps(claims(exp=None))[:-1] + f', "exp": {literal}}}'
    return forge({"alg": "HS256"}, body.encode(), hmac_key=HS_SECRET.encode())


def _tamper(token: str) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{b64(json.dumps(claims(sub='admin')).encode())}.{signature}"


def _noncanonical(token: str) -> str:
    """Change the last base64 character so only its unused low bits differ (same bytes, other text)."""
    header, payload, signature = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(signature) % 4 == 3  # 32 bytes: the last character carries 2 unused bits
    last = alphabet.index(signature[-1])
    return f"{header}.{payload}.{signature[:-1]}{alphabet[last ^ 1]}"


def _duplicate_payload() -> str:
    body = json.dumps(claims())[:-1] + ', "sub": "admin"}'
    return forge({"alg": "HS256", "typ": "JWT"}, body.encode(), hmac_key=HS_SECRET.encode())


def _duplicate_nested() -> str:
    body = json.dumps(claims())[:-1] + ', "ctx": {"role": "user", "role": "admin"}}'
    return forge({"alg": "HS256", "typ": "JWT"}, body.encode(), hmac_key=HS_SECRET.encode())


@pytest.mark.parametrize(("make", "why"), REJECTED)
async def test_rejected_tokens(verifier: TokenVerifier, make: Callable[[], str], why: str) -> None:
    """Each flawed token is refused with its own stable code, a 401 challenge, and no token in the message."""
    token = make()
    error = await rejected(verifier, token)
    assert error.code == f"invalid_token:{why}"
    assert error.status == 401
    assert 'error="invalid_token"' in error.headers["www-authenticate"]
    for segment in token.split("."):
        if len(segment) > 8:
            assert segment not in error.message
            assert segment not in error.headers["www-authenticate"]
    assert HS_SECRET not in error.message


REFRESH_REJECTED: list[Any] = [
    pytest.param(lambda: own(), id="access-used-as-refresh"),
    pytest.param(lambda: own(typ="JWT"), id="untyped-own-token"),
    pytest.param(lambda: sign(claims(ED), ed_key(), "EdDSA", typ="refresh+jwt"), id="external-refresh-typ"),
    pytest.param(lambda: hs(), id="external-token"),
]


@pytest.mark.parametrize("make", REFRESH_REJECTED)
async def test_refresh_requires_own_refresh_token(verifier: TokenVerifier, make: Callable[[], str]) -> None:
    """verify(refresh=True) accepts only the gateway's own `refresh+jwt` tokens."""
    assert (await rejected(verifier, make(), refresh=True)).code == "invalid_token:wrong_token_type"


async def test_refresh_token_verifies_as_refresh(verifier: TokenVerifier) -> None:
    """An own `refresh+jwt` token verifies with refresh=True and is marked kind=refresh."""
    principal = await verifier.verify(own(typ="refresh+jwt"), refresh=True)
    assert principal.kind == "refresh"


async def test_refresh_tokens_have_their_own_lifetime_cap(verifier: TokenVerifier) -> None:
    """A 30-day refresh token passes with refresh=True; the same lifetime as an access token does not."""
    month = int(NOW) + 30 * 86400
    assert (await verifier.verify(own(typ="refresh+jwt", exp=month), refresh=True)).kind == "refresh"
    assert (await rejected(verifier, own(exp=month))).code == "invalid_token:lifetime_too_long"
    absurd = own(typ="refresh+jwt", exp=int(NOW) + 10**9)
    assert (await rejected(verifier, absurd, refresh=True)).code == "invalid_token:lifetime_too_long"


async def test_refresh_token_still_checks_claims(verifier: TokenVerifier) -> None:
    """A refresh token gets the same signature and claim checks (an expired one is refused)."""
    error = await rejected(verifier, own(typ="refresh+jwt", exp=int(NOW) - 100), refresh=True)
    assert error.code == "invalid_token:expired"


@pytest.mark.parametrize("header", ["jku", "x5u", "jwk", "x5c"])
async def test_embedded_or_remote_keys_are_refused_without_fetching(verifier: TokenVerifier, header: str) -> None:
    """A token naming its own key (jku/x5u URL, embedded jwk/x5c) is refused and nothing is fetched."""
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
            token = sign(claims(RS), attacker, "RS256", kid=kid, **{header: value})
            assert (await rejected(verifier, token)).code == "invalid_token:embedded_key"
        assert server.hits == 0


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param(lambda: public_pem(rsa_key()).encode(), id="pem"),
        pytest.param(lambda: json.dumps(public_jwk(rsa_key(), "rsa-1")).encode(), id="jwk"),
        pytest.param(lambda: public_der(rsa_key()), id="der"),
    ],
)
async def test_public_key_never_becomes_an_hmac_secret(secret: Callable[[], bytes]) -> None:
    """Even an issuer allowing both RS256 and HS256 never uses its RSA key as an HMAC secret."""
    issuer = IssuerSettings(
        "mixed", RS, (AUD,), ("RS256", "HS256"), keys=(KeySettings("RS256", Secret(public_pem(rsa_key())), "rsa-1"),)
    )
    v = TokenVerifier([issuer], leeway_s=0, max_token_lifetime_s=3600, clock=lambda: NOW)
    for header in ({"alg": "HS256", "kid": "rsa-1"}, {"alg": "HS256"}):
        token = forge(header, claims(RS), hmac_key=secret())
        assert (await rejected(v, token)).code == "invalid_token:unknown_kid"
    assert (await v.verify(rs())).subject == "alice"


async def test_kid_on_kidless_key_still_needs_the_signature(verifier: TokenVerifier) -> None:
    """A traversal kid against a kid-less configured key is just tried as that key and fails the signature."""
    token = sign(claims(ED), ed_key(3), "EdDSA", kid="../../etc/passwd")
    assert (await rejected(verifier, token)).code == "invalid_token:bad_signature"


async def test_own_issuer_uses_private_key_public_half() -> None:
    """The gateway's own issuer may be given its private signing key; verification uses the public half."""
    issuer = IssuerSettings(
        "self", OWN, (AUD,), ("ES256",), keys=(KeySettings("ES256", Secret(private_pem(ec_key(1))), "k"),), own=True
    )
    v = TokenVerifier([issuer], leeway_s=0, max_token_lifetime_s=3600, clock=lambda: NOW)
    token = sign(claims(OWN), ec_key(1), "ES256", kid="k", typ="at+jwt")
    assert (await v.verify(token)).issuer == "self"


async def test_rsa_pss_shares_the_rsa_key() -> None:
    """An RSA key serves every RSA algorithm the issuer allows (RS256 and PS256)."""
    issuer = IssuerSettings(
        "corp", RS, (AUD,), ("RS256", "PS256"), keys=(KeySettings("RS256", Secret(public_pem(rsa_key())), "rsa-1"),)
    )
    v = TokenVerifier([issuer], leeway_s=0, max_token_lifetime_s=3600, clock=lambda: NOW)
    for alg in ("RS256", "PS256"):
        assert (await v.verify(sign(claims(RS), rsa_key(), alg, kid="rsa-1"))).issuer == "corp"


def _hs512_issuer(secret: str) -> IssuerSettings:
    return IssuerSettings("hs", HS, (AUD,), ("HS256", "HS512"), keys=(KeySettings("HS256", Secret(secret)),))


BAD_CONFIG: list[Any] = [
    pytest.param(lambda: [_hs512_issuer("s" * 40)], "HS512 needs", id="hmac-too-short-for-hs512"),
    pytest.param(
        lambda: [
            IssuerSettings(
                "r", RS, (AUD,), ("RS256",), keys=(KeySettings("RS256", Secret(public_pem(rsa_key(0, 1024)))),)
            )
        ],
        "2048 bits",
        id="rsa-1024",
    ),
    pytest.param(
        lambda: [IssuerSettings("r", RS, (AUD,), ("RS256",), keys=(KeySettings("RS256", Secret("-----BEGIN junk")),))],
        "not a usable PEM",
        id="pem-garbage",
    ),
    pytest.param(
        lambda: [
            IssuerSettings("r", RS, (AUD,), ("RS256",), keys=(KeySettings("RS256", Secret(public_pem(ec_key()))),))
        ],
        "fits none",
        id="ec-key-for-rs256",
    ),
    pytest.param(
        lambda: [
            IssuerSettings("h", HS, (AUD,), ("HS256",), keys=(KeySettings("HS256", Secret(public_pem(rsa_key()))),))
        ],
        "must not be a PEM",
        id="pem-as-hmac-secret",
    ),
    pytest.param(lambda: [_hs512_issuer("s" * 64), _hs512_issuer("t" * 64)], "share the iss", id="duplicate-iss"),
]


@pytest.mark.parametrize(("make", "fragment"), BAD_CONFIG)
def test_unusable_keys_fail_at_construction(make: Callable[[], list[IssuerSettings]], fragment: str) -> None:
    """Keys that are weak, unparsable or of the wrong family fail when the verifier is built, not per request."""
    with pytest.raises(LoadError) as caught:
        TokenVerifier(make(), leeway_s=0, max_token_lifetime_s=3600)
    assert fragment in str(caught.value)
    assert "BEGIN" not in str(caught.value)


async def test_no_http_client_without_jwks() -> None:
    """A verifier with only static keys creates no HTTP client (nothing to close, nothing to leak)."""
    v = TokenVerifier(issuers(), leeway_s=0, max_token_lifetime_s=3600)
    assert v._http is None
    await v.aclose()
