"""Verify JWTs from the configured issuers and turn them into a Principal.

A `TokenVerifier` is configured once (issuers, keys, leeway, lifetime cap) and then answers
`verify(token)` with a Principal or one `Unauthorized` whose code names the single reason,
`invalid_token:<why>`. The order of checks is deliberate, cheapest and least trusting first:

    shape (3 base64url segments, JSON objects, no duplicate members)
    → header (no `none`, no embedded or remote keys, no `crit`)
    → issuer (exact `iss` match) → algorithm (the issuer's allowlist, never the token's word)
    → key (exact `kid` lookup in the issuer's own keys or its JWKS, of the algorithm's family)
    → signature (PyJWT, with `algorithms=[that one alg]`) → token type → claims

Keys are prepared per algorithm family when the verifier is built: an HMAC secret is only ever
bytes for HS*, a PEM becomes a public-key object for its own family, and a JWKS key is used only
for its `kty` (and its `alg`, if it states one). That makes RS256→HS256 confusion impossible:
there is no code path where a public key reaches HMAC. Nothing the token names is ever fetched.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, NoReturn, TypeAlias

import httpx
import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.config.settings import IssuerSettings, KeySettings
from gateway.errors import LoadError, Unauthorized
from gateway.policy.scopes import parse_scopes

__all__ = ["DEFAULT_MAX_REFRESH_LIFETIME_S", "MAX_TOKEN_CHARS", "Principal", "TokenVerifier", "parse_jwks"]

log = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 16_384
MAX_JWKS_BYTES = 512 * 1024
MAX_JWKS_KEYS = 100
DEFAULT_MAX_REFRESH_LIFETIME_S = 366 * 86400  # refresh tokens live for weeks (tokens.refresh_ttl_s)
MAX_CANDIDATE_KEYS = 3  # keys tried for one token, bounding the signature work a request can cause
EMBEDDED_KEY_HEADERS = ("jku", "x5u", "jwk", "x5c")

PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
KeyObject: TypeAlias = bytes | PublicKey

_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_FAMILY = {
    "HS256": "oct",
    "HS384": "oct",
    "HS512": "oct",
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
    "EdDSA": "OKP",
}
_CURVE: dict[str, type[ec.EllipticCurve]] = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_RSA_MIN_BITS = 2048
_ACCESS_TYPES = frozenset({"at+jwt", "application/at+jwt"})
_REFRESH_TYPES = frozenset({"refresh+jwt", "application/refresh+jwt"})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling and what they may do, however they proved it."""

    subject: str
    scopes: frozenset[str]
    issuer: str  # configured issuer name ("self" for the gateway's own), "basic" for Basic auth
    token_id: str | None  # jti
    expires_at: float | None
    claims: Mapping[str, Any]
    kind: Literal["access", "refresh", "basic"]

    @property
    def identity(self) -> tuple[str, str]:
        """(idp, subject), what ownership compares: the issuer name ("basic" for Basic), or for the gateway's
        own tokens the `idp` claim naming the identity they were minted for (gateway/tokens/lineage.py)."""
        if self.issuer == "self" and self.kind != "basic":  # "self" is reserved for the gateway's own issuer
            idp = self.claims.get("idp")
            if isinstance(idp, str) and idp:
                return idp, self.subject
        return self.issuer, self.subject


def _reject(why: str, message: str) -> NoReturn:
    raise Unauthorized(message, code=f"invalid_token:{why}", token_presented=True)


# ------------------------------------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class _Key:
    """A verification key ready for PyJWT: bytes for HMAC, a public-key object otherwise."""

    obj: KeyObject
    kid: str | None
    alg: str | None = None  # a JWKS key's own `alg`: then the only algorithm it may verify

    def accepts(self, alg: str) -> bool:
        """Whether this key may verify `alg`: same family, right curve, long enough, and its own alg if set."""
        if self.alg is not None and self.alg != alg:
            return False
        family = _FAMILY.get(alg)
        key = self.obj
        if family == "oct":
            return isinstance(key, bytes) and len(key) >= _HMAC_MIN_BYTES[alg]
        if family == "RSA":
            return isinstance(key, rsa.RSAPublicKey) and key.key_size >= _RSA_MIN_BITS
        if family == "EC":
            return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _CURVE[alg])
        if family == "OKP":
            return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
        return False


def _public_key(loaded: object) -> PublicKey | None:
    """The public half of a loaded PEM object, if it is a kind JWS can use."""
    if isinstance(
        loaded,
        rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey,
    ):
        loaded = loaded.public_key()
    if isinstance(loaded, x509.Certificate):
        loaded = loaded.public_key()
    if isinstance(
        loaded, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
    ):
        return loaded
    return None


def _load_pem(pem: str) -> PublicKey | None:
    """A public key from PEM text: a public key, a private key (its public half) or a certificate."""
    data = pem.encode()
    try:
        if "PRIVATE KEY-----" in pem:
            return _public_key(load_pem_private_key(data, password=None))
        if "CERTIFICATE-----" in pem:
            return _public_key(x509.load_pem_x509_certificate(data))
        return _public_key(load_pem_public_key(data))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


def _prepare_key(issuer: IssuerSettings, settings: KeySettings) -> _Key:
    """Turn one configured key into a key object of its algorithm's family, or fail loading."""
    where = f"issuer {issuer.name!r}" + (f" key {settings.kid!r}" if settings.kid else "")
    family = _FAMILY.get(settings.algorithm)
    if family is None:
        raise LoadError(f"{where}: unsupported algorithm {settings.algorithm!r}")
    material = settings.material.reveal()
    obj: KeyObject | None
    if family == "oct":
        if "-----BEGIN" in material:
            raise LoadError(f"{where}: an HMAC secret must not be a PEM key")
        obj = material.encode()
    else:
        obj = _load_pem(material)
        if obj is None:
            raise LoadError(f"{where}: not a usable PEM public key, private key or certificate")
    # A key too weak for one of the issuer's algorithms fails loading rather than surfacing as 401s later.
    for alg in issuer.algorithms:
        if isinstance(obj, bytes) and _FAMILY.get(alg) == "oct" and len(obj) < _HMAC_MIN_BYTES[alg]:
            raise LoadError(f"{where}: {alg} needs an HMAC secret of at least {_HMAC_MIN_BYTES[alg]} bytes")
        if isinstance(obj, rsa.RSAPublicKey) and _FAMILY.get(alg) == "RSA" and obj.key_size < _RSA_MIN_BITS:
            raise LoadError(f"{where}: {alg} needs an RSA key of at least {_RSA_MIN_BITS} bits")
    key = _Key(obj, settings.kid)
    if not any(key.accepts(alg) for alg in issuer.algorithms):
        raise LoadError(f"{where}: the key fits none of the issuer's algorithms {list(issuer.algorithms)}")
    return key


def _jwk_key(jwk: Mapping[str, object]) -> KeyObject | None:
    """A public-key object from the public members of a JWK (private members are never read)."""
    kty = jwk.get("kty")
    try:
        if kty == "RSA":
            return RSAAlgorithm.from_jwk({"kty": "RSA", "n": jwk["n"], "e": jwk["e"]})  # type: ignore[return-value]
        if kty == "EC":
            return ECAlgorithm.from_jwk(  # type: ignore[return-value]
                {"kty": "EC", "crv": jwk["crv"], "x": jwk["x"], "y": jwk["y"]}
            )
        if kty == "OKP":
            return OKPAlgorithm.from_jwk({"kty": "OKP", "crv": jwk["crv"], "x": jwk["x"]})  # type: ignore[return-value]
    except (KeyError, TypeError, ValueError, jwt.PyJWTError, UnsupportedAlgorithm):
        return None
    return None  # `oct` and unknown types: a JWKS never supplies HMAC secrets


@dataclass(frozen=True, slots=True)
class _KeySet:
    by_kid: Mapping[str, tuple[_Key, ...]]
    all: tuple[_Key, ...]


def parse_jwks(document: bytes, algorithms: Sequence[str]) -> _KeySet:
    """Parse a JWKS document into the signing keys usable for `algorithms`.

    Keys for encryption (`use` other than `sig`), with `key_ops` lacking `verify`, of a `kty` or `alg`
    the issuer does not allow, or that do not parse, are skipped. A document that is not a JWKS, or
    that holds no usable key, raises ValueError: the caller keeps its previous keys.
    """
    data = _json_object(document)
    if data is None:
        raise ValueError("the JWKS is not a JSON object")
    entries = data.get("keys")
    if not isinstance(entries, list):
        raise ValueError("the JWKS has no keys list")
    by_kid: dict[str, list[_Key]] = {}
    keys: list[_Key] = []
    for entry in entries[:MAX_JWKS_KEYS]:
        if not isinstance(entry, dict):
            continue
        use, ops, kid, alg = entry.get("use"), entry.get("key_ops"), entry.get("kid"), entry.get("alg")
        if use not in (None, "sig") or (ops is not None and (not isinstance(ops, list) or "verify" not in ops)):
            continue
        if (kid is not None and not isinstance(kid, str)) or (alg is not None and alg not in algorithms):
            continue
        obj = _jwk_key(entry)
        if obj is None:
            continue
        key = _Key(obj, kid, alg)
        if not any(key.accepts(a) for a in algorithms):
            continue
        keys.append(key)
        if kid is not None:
            by_kid.setdefault(kid, []).append(key)
    if not keys:
        raise ValueError("the JWKS holds no usable signing key")
    return _KeySet({kid: tuple(found) for kid, found in by_kid.items()}, tuple(keys))


class _JwksCache:
    """One issuer's JWKS: fetched asynchronously, cached for a TTL, refetched on an unknown kid.

    At most one fetch is in flight (concurrent callers share it), a fetch is attempted at most once
    per cooldown (successful or not), and a failed fetch keeps the previous keys. With no keys at
    all the issuer fails closed with jwks_unavailable instead of waiting on every request.
    """

    def __init__(self, issuer: IssuerSettings, url: str, http: httpx.AsyncClient, clock: Callable[[], float]) -> None:
        self._issuer = issuer
        self._url = url
        self._http = http
        self._clock = clock
        self._keys: _KeySet | None = None
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._inflight: asyncio.Task[None] | None = None

    async def candidates(self, kid: str | None) -> tuple[_Key, ...]:
        """Keys for `kid` (exact match), or every key when the token names none."""
        now = self._clock()
        if (self._keys is None or now - self._fetched_at >= self._issuer.jwks_cache_ttl_s) and self._may_fetch(now):
            await self._refresh()
        if self._keys is None:
            _reject("jwks_unavailable", "the issuer's signing keys are unavailable")
        if kid is None:
            return self._keys.all
        found = self._keys.by_kid.get(kid, ())
        if not found and self._may_fetch(self._clock()):
            await self._refresh()
            found = self._keys.by_kid.get(kid, ())
        return found

    def _may_fetch(self, now: float) -> bool:
        return self._inflight is not None or now - self._attempted_at >= self._issuer.jwks_refetch_cooldown_s

    async def _refresh(self) -> None:
        if self._inflight is None:
            self._attempted_at = self._clock()
            self._inflight = asyncio.create_task(self._fetch())
        # shield: a caller that goes away (client disconnect) must not cancel the fetch others wait on
        await asyncio.shield(self._inflight)

    async def _fetch(self) -> None:
        try:
            async with asyncio.timeout(self._issuer.jwks_timeout_s):
                document = await self._download()
            self._keys = parse_jwks(document, self._issuer.algorithms)
            self._fetched_at = self._clock()
        except Exception as exc:  # any failure keeps the old keys: fail closed, never crash the task
            log.warning(
                "jwks fetch failed",
                extra={"issuer": self._issuer.name, "error": type(exc).__name__, "stale": self._keys is not None},
            )
        finally:
            self._inflight = None

    async def _download(self) -> bytes:
        headers = {"accept": "application/jwk-set+json, application/json"}
        timeout = self._issuer.jwks_timeout_s
        async with self._http.stream(
            "GET", self._url, headers=headers, timeout=timeout, follow_redirects=False
        ) as response:
            if response.status_code != 200:
                raise ValueError(f"JWKS answered HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("JWKS document too large")
        return bytes(body)

    async def aclose(self) -> None:
        task = self._inflight
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class _Issuer:
    """A configured issuer with its keys prepared once."""

    def __init__(self, settings: IssuerSettings, jwks: _JwksCache | None) -> None:
        self.settings = settings
        self.algorithms = frozenset(settings.algorithms)
        self.audiences = frozenset(settings.audiences)
        keys = [_prepare_key(settings, key) for key in settings.keys]
        by_kid: dict[str, list[_Key]] = {}
        for key in keys:
            if key.kid is not None:
                by_kid.setdefault(key.kid, []).append(key)
        self.by_kid = {kid: tuple(found) for kid, found in by_kid.items()}
        self.unnamed = tuple(key for key in keys if key.kid is None)
        self.keys = tuple(keys)
        self.jwks = jwks

    async def candidates(self, alg: str, kid: str | None) -> list[_Key]:
        """The keys to try: exact kid among configured keys, else the JWKS, else configured kid-less keys.

        A configured key without a kid stands for "whatever kid the issuer writes". A kid is only ever
        looked up by exact dict lookup, so path or SQL strings simply miss.
        """
        if kid is None:
            found = _usable(self.keys, alg)
            if self.jwks is not None and len(found) < MAX_CANDIDATE_KEYS:
                try:
                    found += _usable(await self.jwks.candidates(None), alg)
                except Unauthorized:
                    if not found:
                        raise
        else:
            found = _usable(self.by_kid.get(kid, ()), alg)
            if not found and self.jwks is not None:
                found = _usable(await self.jwks.candidates(kid), alg)
            if not found:
                found = _usable(self.unnamed, alg)
        return found[:MAX_CANDIDATE_KEYS]


def _usable(keys: Sequence[_Key], alg: str) -> list[_Key]:
    return [key for key in keys if key.accepts(alg)]


# ------------------------------------------------------------------------------------------ parsing


class _Duplicate(ValueError):
    pass


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _Duplicate
    return result


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _json_object(data: bytes) -> dict[str, Any] | None:
    """A JSON object, or None; duplicate member names raise _Duplicate, NaN/Infinity are not JSON."""
    try:
        value = json.loads(data, object_pairs_hook=_unique_members, parse_constant=_no_constants)
    except _Duplicate:
        raise
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _b64decode(segment: str) -> bytes | None:
    """Strict base64url without padding; non-canonical encodings (stray trailing bits) are refused."""
    if len(segment) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None
    if base64.urlsafe_b64encode(data).rstrip(b"=") != segment.encode():
        return None
    return data


def _decode_part(segment: str, what: str) -> dict[str, Any]:
    raw = _b64decode(segment)
    if raw is None:
        _reject("malformed", f"token {what} is not valid base64url")
    try:
        value = _json_object(raw)
    except _Duplicate:
        _reject("duplicate_claim", f"token {what} repeats a member name")
    if value is None:
        _reject("malformed", f"token {what} is not a JSON object")
    return value


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim: a finite JSON number (not a bool, not a string), or None when absent."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        _reject("bad_claim_type", f"token {name} claim is not a number")
    try:
        number = float(value)  # JSON integers are unbounded: 1e400 written out in digits overflows a float
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        _reject("bad_claim_type", f"token {name} claim is not a finite number")
    return number


def _token_type(header: Mapping[str, Any]) -> str | None:
    """The `typ` header, lowercased (media types compare case-insensitively)."""
    typ = header.get("typ")
    if typ is None:
        return None
    if not isinstance(typ, str):
        _reject("malformed", "token typ header is not a string")
    return typ.lower()


# ----------------------------------------------------------------------------------------- verifier


class TokenVerifier:
    """Verifies bearer JWTs for a fixed set of issuers; build once, share across requests.

    `max_token_lifetime_s` caps access tokens; the gateway's own refresh tokens (verified with
    `refresh=True` only) are capped by `max_refresh_lifetime_s` instead, since they are meant to
    outlive access tokens by far (and are tracked, rotated and revocable in the store).
    """

    def __init__(
        self,
        issuers: Sequence[IssuerSettings],
        *,
        leeway_s: int,
        max_token_lifetime_s: int,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        max_refresh_lifetime_s: int = DEFAULT_MAX_REFRESH_LIFETIME_S,
    ) -> None:
        self._leeway = float(leeway_s)
        self._max_lifetime = float(max_token_lifetime_s)
        self._max_refresh_lifetime = float(max(max_refresh_lifetime_s, max_token_lifetime_s))
        self._clock = clock
        self._owns_http = http is None and any(issuer.jwks_url for issuer in issuers)
        if http is None and self._owns_http:
            http = httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=5.0)
        self._http = http
        self._issuers: dict[str, _Issuer] = {}
        for settings in issuers:
            if settings.issuer in self._issuers:
                raise LoadError(f"two issuers share the iss value {settings.issuer!r}")
            jwks = None
            if settings.jwks_url and http is not None:
                jwks = _JwksCache(settings, settings.jwks_url, http, clock)
            self._issuers[settings.issuer] = _Issuer(settings, jwks)
        algorithms = sorted({alg for issuer in issuers for alg in issuer.algorithms})
        self._jws = jwt.PyJWS(algorithms=algorithms, options={"enforce_minimum_key_length": True})

    async def verify(self, token: str, *, refresh: bool = False) -> Principal:
        """The Principal a valid token stands for; any flaw raises Unauthorized(`invalid_token:<why>`)."""
        if len(token) > MAX_TOKEN_CHARS:
            _reject("too_large", "token is too large")
        if not token.isascii() or _TOKEN_SHAPE.fullmatch(token) is None:
            _reject("malformed", "token is not three base64url segments")
        header_b64, payload_b64, signature_b64 = token.split(".")
        header = _decode_part(header_b64, "header")
        claims = _decode_part(payload_b64, "payload")

        alg = header.get("alg")
        if not isinstance(alg, str) or not alg or alg.lower() == "none":
            _reject("alg_not_allowed", "unsigned tokens are not accepted")
        if any(name in header for name in EMBEDDED_KEY_HEADERS):
            _reject("embedded_key", "keys named or embedded in the token are not accepted")
        if "crit" in header:
            _reject("crit_unsupported", "token has critical header extensions")
        if header.get("b64", True) is not True:
            _reject("malformed", "unencoded payloads are not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            _reject("malformed", "token kid header is not a string")
        typ = _token_type(header)

        iss = claims.get("iss")
        if iss is None:
            _reject("missing_claim", "token has no iss claim")
        if not isinstance(iss, str):
            _reject("bad_claim_type", "token iss claim is not a string")
        issuer = self._issuers.get(iss)
        if issuer is None:
            _reject("unknown_issuer", "token issuer is not trusted")
        if alg not in issuer.algorithms:
            _reject("alg_not_allowed", "token algorithm is not allowed for this issuer")
        if not signature_b64:
            _reject("bad_signature", "token is not signed")

        keys = await issuer.candidates(alg, kid)
        if not keys:
            _reject("unknown_kid", "no key of this issuer matches the token")
        self._check_signature(token, alg, keys)
        kind = self._check_type(issuer, typ, refresh=refresh)
        return self._principal(issuer, claims, kind)

    def _check_signature(self, token: str, alg: str, keys: Sequence[_Key]) -> None:
        """PyJWT checks the signature with exactly one algorithm and a key object of its family."""
        for key in keys:
            try:
                self._jws.decode_complete(token, key.obj, algorithms=[alg])
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidAlgorithmError:
                _reject("alg_not_allowed", "token algorithm is not allowed")
            except jwt.PyJWTError:
                _reject("malformed", "token could not be decoded")
            return
        _reject("bad_signature", "token signature does not verify")

    @staticmethod
    def _check_type(issuer: _Issuer, typ: str | None, *, refresh: bool) -> Literal["access", "refresh"]:
        """Access and refresh tokens are told apart by `typ`, so neither can stand in for the other."""
        own = issuer.settings.own
        if refresh:
            if not own or typ not in _REFRESH_TYPES:
                _reject("wrong_token_type", "a refresh token is required")
            return "refresh"
        if (own and typ not in _ACCESS_TYPES) or typ in _REFRESH_TYPES:
            _reject("wrong_token_type", "an access token is required")
        return "access"

    def _principal(self, issuer: _Issuer, claims: dict[str, Any], kind: Literal["access", "refresh"]) -> Principal:
        subject = claims.get("sub")
        if subject is None:
            _reject("missing_claim", "token has no sub claim")
        if not isinstance(subject, str) or not subject:
            _reject("bad_claim_type", "token sub claim is not a non-empty string")
        expires = _numeric_date(claims, "exp")
        issued = _numeric_date(claims, "iat")
        not_before = _numeric_date(claims, "nbf")
        if expires is None:
            _reject("missing_claim", "token has no exp claim")
        if issued is None:
            _reject("missing_claim", "token has no iat claim")
        now = self._clock()
        max_lifetime = self._max_refresh_lifetime if kind == "refresh" else self._max_lifetime
        if expires <= now - self._leeway:
            _reject("expired", "token has expired")
        if issued > now + self._leeway or (not_before is not None and not_before > now + self._leeway):
            _reject("not_yet_valid", "token is not valid yet")
        if expires - issued > max_lifetime or expires - now > max_lifetime + self._leeway:
            _reject("lifetime_too_long", "token lifetime is longer than allowed")
        self._check_audience(issuer, claims)

        token_id = claims.get("jti")
        if token_id is not None and (not isinstance(token_id, str) or not token_id):
            _reject("bad_claim_type", "token jti claim is not a non-empty string")
        if issuer.settings.own and token_id is None:
            _reject("missing_claim", "token has no jti claim")
        return Principal(
            subject=subject,
            scopes=parse_scopes(claims, issuer.settings.scope_claim),
            issuer=issuer.settings.name,
            token_id=token_id,
            expires_at=expires,
            claims=MappingProxyType(claims),
            kind=kind,
        )

    @staticmethod
    def _check_audience(issuer: _Issuer, claims: Mapping[str, Any]) -> None:
        aud = claims.get("aud")
        if aud is None:
            _reject("missing_claim", "token has no aud claim")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(item, str) for item in audiences):
            _reject("bad_claim_type", "token aud claim is not a string or list of strings")
        if issuer.audiences.isdisjoint(audiences):
            _reject("bad_audience", "token audience is not accepted")

    async def aclose(self) -> None:
        """Stop JWKS fetches in flight and close the HTTP client if this verifier created it."""
        for issuer in self._issuers.values():
            if issuer.jwks is not None:
                await issuer.jwks.aclose()
        if self._owns_http and self._http is not None:
            await self._http.aclose()
