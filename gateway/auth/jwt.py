"""Verify JWTs from the configured issuers and turn them into a Principal.

A `TokenVerifier` is configured once (issuers, keys, leeway, lifetime cap) and then answers
`verify(token)` with a Principal or one `Unauthorized` whose code names the single reason,
`invalid_token:<why>`. The order of checks is deliberate, cheapest and least trusting first:

    shape (3 base64url segments, JSON objects, no duplicate members)
    → header (no `none`, no embedded or remote keys, no `crit`)
    → issuer (exact `iss` match) → algorithm (the issuer's allowlist, never the token's word)
    → key (exact `kid` lookup in the issuer's own keys or its JWKS, of the algorithm's family)
    → signature (PyJWT's algorithm object for that one alg) → token type → claims

The token is parsed once, here: PyJWT's own `decode_complete` would split, base64-decode (character by
character) and JSON-parse it again, which cost more than the signature check itself. The signature is
still PyJWT's to judge, by the same steps `decode_complete` takes (`get_algorithm_by_name`, `prepare_key`,
`check_key_length`, `verify`) on the segments this module already split and checked strictly.

Keys are prepared per algorithm family when the verifier is built: an HMAC secret is only ever
bytes for HS*, a PEM becomes a public-key object for its own family, and a JWKS key is used only
for its `kty` (and its `alg`, if it states one). That makes RS256→HS256 confusion impossible:
there is no code path where a public key reaches HMAC. Nothing the token names is ever fetched.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from sys import intern
from types import MappingProxyType
from typing import Any, Literal

import httpx
import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from gateway.auth.jwks import (
    FAMILY,
    HMAC_MIN_BYTES,
    RSA_MIN_BITS,
    Duplicate,
    JwksCache,
    JwksMetrics,
    Key,
    KeyObject,
    KeyRef,
    PublicKey,
    json_object,
    reject,
)
from gateway.config.settings import IssuerSettings, KeySettings
from gateway.errors import LoadError, Unauthorized
from gateway.policy.scopes import parse_scopes

__all__ = ["DEFAULT_MAX_REFRESH_LIFETIME_S", "MAX_TOKEN_CHARS", "Principal", "TokenVerifier"]

log = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 16_384
DEFAULT_MAX_REFRESH_LIFETIME_S = 366 * 86400  # refresh tokens live for weeks (tokens.refresh_ttl_s)
MAX_CANDIDATE_KEYS = 3  # keys tried for one token, bounding the signature work a request can cause
EMBEDDED_KEY_HEADERS = ("jku", "x5u", "jwk", "x5c")

_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_SHARED_CLAIMS = ("iss", "aud", "scope", "scp", "idp")
_MAX_SCOPE_SETS = 4096  # distinct scope strings remembered; past it the memo starts over
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


# ------------------------------------------------------------------------------------------- keys


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


def _prepare_key(issuer: IssuerSettings, settings: KeySettings) -> Key:
    """Turn one configured key into a key object of its algorithm's family, or fail loading."""
    where = f"issuer {issuer.name!r}" + (f" key {settings.kid!r}" if settings.kid else "")
    family = FAMILY.get(settings.algorithm)
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
        if isinstance(obj, bytes) and FAMILY.get(alg) == "oct" and len(obj) < HMAC_MIN_BYTES[alg]:
            raise LoadError(f"{where}: {alg} needs an HMAC secret of at least {HMAC_MIN_BYTES[alg]} bytes")
        if isinstance(obj, rsa.RSAPublicKey) and FAMILY.get(alg) == "RSA" and obj.key_size < RSA_MIN_BITS:
            raise LoadError(f"{where}: {alg} needs an RSA key of at least {RSA_MIN_BITS} bits")
    key = Key(obj, settings.kid)
    if not any(key.accepts(alg) for alg in issuer.algorithms):
        raise LoadError(f"{where}: the key fits none of the issuer's algorithms {list(issuer.algorithms)}")
    return key


class _Issuer:
    """A configured issuer with its keys prepared once."""

    def __init__(self, settings: IssuerSettings, jwks: JwksCache | None) -> None:
        self.settings = settings
        self.algorithms = frozenset(settings.algorithms)
        self.audiences = frozenset(settings.audiences)
        keys = [_prepare_key(settings, key) for key in settings.keys]
        by_kid: dict[str, list[Key]] = {}
        for key in keys:
            if key.kid is not None:
                by_kid.setdefault(key.kid, []).append(key)
        self.by_kid = {kid: tuple(found) for kid, found in by_kid.items()}
        self.unnamed = tuple(key for key in keys if key.kid is None)
        self.keys = tuple(keys)
        self.jwks = jwks

    async def candidates(self, alg: str, kid: str | None) -> list[Key]:
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


def _usable(keys: Sequence[Key], alg: str) -> list[Key]:
    return [key for key in keys if key.accepts(alg)]


# ------------------------------------------------------------------------------------------ parsing


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


@dataclass(frozen=True, slots=True)
class _Parts:
    """A token split once: its decoded header and claims, the signed bytes and the signature segment."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature_b64: str


def _split(token: str) -> _Parts:
    """The parts of a token of the right size and shape (the signature segment is decoded only if needed)."""
    if len(token) > MAX_TOKEN_CHARS:
        reject("too_large", "token is too large")
    if not token.isascii() or _TOKEN_SHAPE.fullmatch(token) is None:
        reject("malformed", "token is not three base64url segments")
    header_b64, payload_b64, signature_b64 = token.split(".")
    header, claims = _decode_part(header_b64, "header"), _decode_part(payload_b64, "payload")
    signing_input = token[: len(header_b64) + 1 + len(payload_b64)].encode("ascii")
    return _Parts(header, claims, signing_input, signature_b64)


def _check_header(header: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """`alg`, `kid` and `typ` of a header that names a real algorithm and no keys, extensions or b64=false."""
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg or alg.lower() == "none":
        reject("alg_not_allowed", "unsigned tokens are not accepted")
    if any(name in header for name in EMBEDDED_KEY_HEADERS):
        reject("embedded_key", "keys named or embedded in the token are not accepted")
    if "crit" in header:
        reject("crit_unsupported", "token has critical header extensions")
    if header.get("b64", True) is not True:
        reject("malformed", "unencoded payloads are not accepted")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        reject("malformed", "token kid header is not a string")
    return alg, kid, _token_type(header)


def _decode_part(segment: str, what: str) -> dict[str, Any]:
    raw = _b64decode(segment)
    if raw is None:
        reject("malformed", f"token {what} is not valid base64url")
    try:
        value = json_object(raw)
    except Duplicate:
        reject("duplicate_claim", f"token {what} repeats a member name")
    if value is None:
        reject("malformed", f"token {what} is not a JSON object")
    return value


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim: a finite JSON number (not a bool, not a string), or None when absent."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        reject("bad_claim_type", f"token {name} claim is not a number")
    try:
        number = float(value)  # JSON integers are unbounded: 1e400 written out in digits overflows a float
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        reject("bad_claim_type", f"token {name} claim is not a finite number")
    return number


def _token_type(header: Mapping[str, Any]) -> str | None:
    """The `typ` header, lowercased (media types compare case-insensitively)."""
    typ = header.get("typ")
    if typ is None:
        return None
    if not isinstance(typ, str):
        reject("malformed", "token typ header is not a string")
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
        metrics: JwksMetrics | None = None,
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
        self._scope_sets: dict[str, frozenset[str]] = {}
        for settings in issuers:
            if settings.issuer in self._issuers:
                raise LoadError(f"two issuers share the iss value {settings.issuer!r}")
            jwks = None
            if settings.jwks_url and http is not None:
                jwks = JwksCache(settings, settings.jwks_url, http, clock, metrics)
            self._issuers[settings.issuer] = _Issuer(settings, jwks)
        algorithms = sorted({alg for issuer in issuers for alg in issuer.algorithms})
        self._jws = jwt.PyJWS(algorithms=algorithms, options={"enforce_minimum_key_length": True})

    async def verify(self, token: str, *, refresh: bool = False) -> Principal:
        """The Principal a valid token stands for; any flaw raises Unauthorized(`invalid_token:<why>`)."""
        principal, _ = await self.verify_with_key(token, refresh=refresh)
        return principal

    async def verify_with_key(self, token: str, *, refresh: bool = False) -> tuple[Principal, KeyRef | None]:
        """`verify`, plus the JWKS key that verified the token (None for a configured key, which never leaves).

        A cache of verified tokens keeps the KeyRef and asks `ref.current()` before trusting an entry again.
        """
        parts = _split(token)
        alg, kid, typ = _check_header(parts.header)
        issuer = self._issuer_of(parts.claims, alg)
        if not parts.signature_b64:
            reject("bad_signature", "token is not signed")
        signature = _b64decode(parts.signature_b64)
        if signature is None:
            reject("malformed", "token signature is not valid base64url")

        keys = await issuer.candidates(alg, kid)
        if not keys:
            reject("unknown_kid", "no key of this issuer matches the token")
        key = self._check_signature(parts.signing_input, signature, alg, keys)
        kind = self._check_type(issuer, typ, refresh=refresh)
        principal = self._principal(issuer, parts.claims, kind)
        if key.thumbprint is None or issuer.jwks is None:
            return principal, None
        return principal, KeyRef(issuer.jwks, key.thumbprint)

    def _issuer_of(self, claims: dict[str, Any], alg: str) -> _Issuer:
        """The trusted issuer the token names by its exact `iss`, if `alg` is on that issuer's allowlist."""
        iss = claims.get("iss")
        if iss is None:
            reject("missing_claim", "token has no iss claim")
        if not isinstance(iss, str):
            reject("bad_claim_type", "token iss claim is not a string")
        issuer = self._issuers.get(iss)
        if issuer is None:
            reject("unknown_issuer", "token issuer is not trusted")
        if alg not in issuer.algorithms:
            reject("alg_not_allowed", "token algorithm is not allowed for this issuer")
        return issuer

    def jwks_status(self) -> dict[str, dict[str, object]]:
        """Each JWKS issuer's key-set state by issuer name (see JwksCache.status), for /readyz."""
        return {i.settings.name: i.jwks.status() for i in self._issuers.values() if i.jwks is not None}

    def _check_signature(self, signing_input: bytes, signature: bytes, alg: str, keys: Sequence[Key]) -> Key:
        """PyJWT's algorithm object for exactly `alg` checks the signature with a key object of its family."""
        try:
            algorithm = self._jws.get_algorithm_by_name(alg)  # only the algorithms the issuers allow
        except NotImplementedError:
            reject("alg_not_allowed", "token algorithm is not allowed")
        for key in keys:
            try:
                prepared = algorithm.prepare_key(key.obj)
                if algorithm.check_key_length(prepared):
                    raise jwt.InvalidKeyError("the key is shorter than its algorithm requires")
                verified = algorithm.verify(signing_input, prepared, signature)
            except (jwt.PyJWTError, TypeError, ValueError):
                reject("malformed", "token could not be decoded")
            if verified:
                return key
        reject("bad_signature", "token signature does not verify")

    @staticmethod
    def _check_type(issuer: _Issuer, typ: str | None, *, refresh: bool) -> Literal["access", "refresh"]:
        """Access and refresh tokens are told apart by `typ`, so neither can stand in for the other."""
        own = issuer.settings.own
        if refresh:
            if not own or typ not in _REFRESH_TYPES:
                reject("wrong_token_type", "a refresh token is required")
            return "refresh"
        if (own and typ not in _ACCESS_TYPES) or typ in _REFRESH_TYPES:
            reject("wrong_token_type", "an access token is required")
        return "access"

    def _principal(self, issuer: _Issuer, claims: dict[str, Any], kind: Literal["access", "refresh"]) -> Principal:
        subject = claims.get("sub")
        if subject is None:
            reject("missing_claim", "token has no sub claim")
        if not isinstance(subject, str) or not subject:
            reject("bad_claim_type", "token sub claim is not a non-empty string")
        expires = _numeric_date(claims, "exp")
        issued = _numeric_date(claims, "iat")
        not_before = _numeric_date(claims, "nbf")
        if expires is None:
            reject("missing_claim", "token has no exp claim")
        if issued is None:
            reject("missing_claim", "token has no iat claim")
        now = self._clock()
        max_lifetime = self._max_refresh_lifetime if kind == "refresh" else self._max_lifetime
        if expires <= now - self._leeway:
            reject("expired", "token has expired")
        if issued > now + self._leeway or (not_before is not None and not_before > now + self._leeway):
            reject("not_yet_valid", "token is not valid yet")
        if expires - issued > max_lifetime or expires - now > max_lifetime + self._leeway:
            reject("lifetime_too_long", "token lifetime is longer than allowed")
        self._check_audience(issuer, claims)

        token_id = claims.get("jti")
        if token_id is not None and (not isinstance(token_id, str) or not token_id):
            reject("bad_claim_type", "token jti claim is not a non-empty string")
        if issuer.settings.own and token_id is None:
            reject("missing_claim", "token has no jti claim")
        return Principal(
            subject=subject,
            scopes=self._scopes(issuer, claims),
            issuer=issuer.settings.name,
            token_id=token_id,
            expires_at=expires,
            claims=MappingProxyType(claims),
            kind=kind,
        )

    def _scopes(self, issuer: _Issuer, claims: dict[str, Any]) -> frozenset[str]:
        """The token's scopes, shared between tokens that carry the same ones (verified tokens are cached by the
        100,000: one copy of "messages:send messages:read" and its set, not one per token). The claims'
        repeated string values (iss, aud, scope) are interned for the same reason."""
        for name in _SHARED_CLAIMS:
            value = claims.get(name)
            if isinstance(value, str):
                claims[name] = intern(value)
        scope = claims.get(issuer.settings.scope_claim or "scope")
        if not isinstance(scope, str):
            return parse_scopes(claims, issuer.settings.scope_claim)
        scopes = self._scope_sets.get(scope)
        if scopes is None:
            if len(self._scope_sets) >= _MAX_SCOPE_SETS:
                self._scope_sets.clear()
            scopes = self._scope_sets[scope] = frozenset(
                intern(name) for name in parse_scopes(claims, issuer.settings.scope_claim)
            )
        return scopes

    @staticmethod
    def _check_audience(issuer: _Issuer, claims: Mapping[str, Any]) -> None:
        aud = claims.get("aud")
        if aud is None:
            reject("missing_claim", "token has no aud claim")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(item, str) for item in audiences):
            reject("bad_claim_type", "token aud claim is not a string or list of strings")
        if issuer.audiences.isdisjoint(audiences):
            reject("bad_audience", "token audience is not accepted")

    async def aclose(self) -> None:
        """Stop JWKS fetches in flight and close the HTTP client if this verifier created it."""
        for issuer in self._issuers.values():
            if issuer.jwks is not None:
                await issuer.jwks.aclose()
        if self._owns_http and self._http is not None:
            await self._http.aclose()
