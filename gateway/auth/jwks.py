"""A JWKS issuer's keys: fetched over HTTP, parsed into verification keys, cached and refreshed.

`parse_jwks` turns a JWK Set document into the signing keys usable for an issuer's algorithms;
`JwksCache` holds one issuer's set and decides when to fetch it. `Key` (and its family tables) is
shared with `jwt.py`, which prepares configured keys the same way.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from sys import intern
from typing import Any, NoReturn, Protocol, TypeAlias

import httpx
import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.config.settings import IssuerSettings
from gateway.errors import Unauthorized
from gateway.web import jsonbody

__all__ = [
    "MAX_JWKS_BYTES",
    "MAX_JWKS_KEYS",
    "DuplicateKid",
    "JwksCache",
    "JwksMetrics",
    "Key",
    "KeyRef",
    "KeySet",
    "parse_jwks",
    "thumbprint",
]

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 512 * 1024
MAX_JWKS_KEYS = 100
DEFAULT_MAX_STALE_TTLS = 3  # jwks_max_stale_s defaults to this many jwks_cache_ttl_s
PARSE_INLINE_BYTES = 64 * 1024  # a larger document is parsed in a worker thread, off the event loop

PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
KeyObject: TypeAlias = bytes | PublicKey

FAMILY = {
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
HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
RSA_MIN_BITS = 2048


def reject(why: str, message: str) -> NoReturn:
    raise Unauthorized(message, code=f"invalid_token:{why}", token_presented=True)


@dataclass(frozen=True, slots=True)
class Key:
    """A verification key ready for PyJWT: bytes for HMAC, a public-key object otherwise."""

    obj: KeyObject
    kid: str | None
    alg: str | None = None  # a JWKS key's own `alg`: then the only algorithm it may verify
    thumbprint: str | None = None  # RFC 7638, for JWKS keys (configured keys never leave)

    def accepts(self, alg: str) -> bool:
        """Whether this key may verify `alg`: same family, right curve, long enough, and its own alg if set."""
        if self.alg is not None and self.alg != alg:
            return False
        family = FAMILY.get(alg)
        key = self.obj
        if family == "oct":
            return isinstance(key, bytes) and len(key) >= HMAC_MIN_BYTES[alg]
        if family == "RSA":
            return isinstance(key, rsa.RSAPublicKey) and key.key_size >= RSA_MIN_BITS
        if family == "EC":
            return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _CURVE[alg])
        if family == "OKP":
            return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
        return False


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


_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}


def thumbprint(obj: PublicKey) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public key, from its canonical JWK (not the IdP's spelling)."""
    if isinstance(obj, rsa.RSAPublicKey):
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(obj, as_dict=True)
    elif isinstance(obj, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(obj, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(obj, as_dict=True)
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class KeySet:
    """One fetched JWKS: its usable signing keys by kid, all of them, and their thumbprints."""

    by_kid: Mapping[str, tuple[Key, ...]]
    all: tuple[Key, ...]
    thumbprints: frozenset[str]


class DuplicateKid(ValueError):
    """A JWKS names two different keys that could verify the same algorithm with one kid."""


def parse_jwks(document: bytes, algorithms: Sequence[str]) -> KeySet:
    """Parse a JWKS document into the signing keys usable for `algorithms`.

    Keys for encryption (`use` other than `sig`), with `key_ops` lacking `verify`, of a `kty` or `alg`
    the issuer does not allow, or that do not parse, are skipped: a set with none left is a valid,
    empty set (the IdP has withdrawn every key). A document that is not a JWKS (not a JSON object, no
    `keys` list, an entry that is not an object) raises ValueError. The same key listed twice counts
    once; one kid naming two different keys that could verify one algorithm raises DuplicateKid.
    """
    data = json_object(document)
    if data is None:
        raise ValueError("the JWKS is not a JSON object")
    entries = data.get("keys")
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ValueError("the JWKS has no list of JWK objects under keys")
    by_kid: dict[str, list[Key]] = {}
    keys: list[Key] = []
    seen: set[tuple[str | None, str, str | None]] = set()
    for entry in entries[:MAX_JWKS_KEYS]:
        key = _signing_key(entry, algorithms)
        if key is None or (key.kid, key.thumbprint or "", key.alg) in seen:
            continue
        seen.add((key.kid, key.thumbprint or "", key.alg))
        if key.kid is not None:
            _refuse_duplicate(key, by_kid.get(key.kid, ()), algorithms)
            by_kid.setdefault(key.kid, []).append(key)
        keys.append(key)
    return KeySet(
        {kid: tuple(found) for kid, found in by_kid.items()},
        tuple(keys),
        frozenset(key.thumbprint for key in keys if key.thumbprint),
    )


def _signing_key(entry: dict[str, Any], algorithms: Sequence[str]) -> Key | None:
    """The JWK as a verification key for one of `algorithms`, or None when it is not one (skipped)."""
    use, ops, kid, alg = entry.get("use"), entry.get("key_ops"), entry.get("kid"), entry.get("alg")
    if use not in (None, "sig") or (ops is not None and (not isinstance(ops, list) or "verify" not in ops)):
        return None
    if (kid is not None and not isinstance(kid, str)) or (alg is not None and alg not in algorithms):
        return None
    obj = _jwk_key(entry)
    if obj is None or isinstance(obj, bytes):
        return None
    key = Key(obj, kid, alg, thumbprint(obj))
    return key if any(key.accepts(a) for a in algorithms) else None


def _refuse_duplicate(key: Key, others: Sequence[Key], algorithms: Sequence[str]) -> None:
    """DuplicateKid when another key with the same kid could verify an algorithm this one verifies."""
    for other in others:
        if other.thumbprint != key.thumbprint and any(key.accepts(a) and other.accepts(a) for a in algorithms):
            raise DuplicateKid(f"the JWKS names two different keys with kid {key.kid!r}")


class JwksMetrics(Protocol):
    """Where a JwksCache reports (gateway.observe.metrics.Metrics implements it)."""

    def jwks_fetch(self, issuer: str, outcome: str) -> None: ...

    def jwks_keys(self, issuer: str, keys: int, fetched_at: float) -> None: ...


class FetchFailed(Exception):
    """A JWKS fetch that got an answer the gateway will not use; `outcome` is its metrics label."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, FetchFailed):
        return exc.outcome
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.TransportError | OSError):
        return "unreachable"
    if isinstance(exc, DuplicateKid):
        return "duplicate_kid"
    if isinstance(exc, ValueError):
        return "invalid"
    return "error"


class JwksCache:
    """One issuer's JWKS: fetched asynchronously, cached for a TTL, refetched on an unknown kid.

    At most one fetch is in flight per issuer (concurrent callers share it; other issuers never wait on
    it), and a fetch is attempted at most once per cooldown, successful or not. A fetched set replaces
    the previous one entirely, an empty one included. A failed fetch keeps the previous keys, but only
    while they are at most `max_stale_s` old (`jwks_max_stale_s`, default 3 x `jwks_cache_ttl_s`);
    past that the issuer fails closed with jwks_stale (one log line), as it does with jwks_unavailable
    before its first successful fetch.

    A fetch sends `Accept-Encoding: identity` and refuses any other content coding unread, so the
    512 KiB cap is on the bytes parsed; connect, headers, body and parse together are bounded by
    `jwks_timeout_s`, and a large document is parsed in a worker thread.
    """

    def __init__(
        self,
        issuer: IssuerSettings,
        url: str,
        http: httpx.AsyncClient,
        clock: Callable[[], float],
        metrics: JwksMetrics | None = None,
    ) -> None:
        self._issuer = issuer
        self._url = url
        self._http = http
        self._clock = clock
        self._metrics = metrics
        self._ttl = issuer.jwks_cache_ttl_s
        configured = issuer.jwks_max_stale_s
        self.max_stale_s: float = DEFAULT_MAX_STALE_TTLS * self._ttl if configured is None else configured
        self._keys: KeySet | None = None
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._failing = False  # the last attempt failed
        self._told_stale = False  # the one log line for "past jwks_max_stale_s" was written
        self._inflight: asyncio.Task[None] | None = None

    async def candidates(self, kid: str | None) -> tuple[Key, ...]:
        """Keys for `kid` (exact match), or every key when the token names none."""
        if self._refresh_due(self._clock()):
            await self._refresh()
        keys = self._usable()
        if kid is None:
            return keys.all
        found = keys.by_kid.get(kid, ())
        if not found and self._may_fetch(self._clock()):
            await self._refresh()
            found = self._usable().by_kid.get(kid, ())
        return found

    def holds(self, thumbprint: str) -> bool:
        """Whether a verification made with this key still stands without asking the IdP again.

        True while the key is in the current set, the set is within its staleness bound, and no refresh
        is due; otherwise the caller verifies the token again (which refreshes, or fails closed).
        """
        now = self._clock()
        keys = self._keys
        return (
            keys is not None
            and thumbprint in keys.thumbprints
            and now - self._fetched_at <= self.max_stale_s
            and not self._refresh_due(now)
        )

    def status(self) -> dict[str, object]:
        """For /readyz: `state` (pending, ok, serving_stale, expired, unavailable), key count, set age."""
        now = self._clock()
        if self._keys is None:
            state = "unavailable" if self._failing else "pending"
        elif now - self._fetched_at > self.max_stale_s:
            state = "expired" if self._failing else "ok"  # not failing: idle, the next request refreshes
        else:
            state = "serving_stale" if self._failing else "ok"
        age = None if self._keys is None else round(now - self._fetched_at, 3)
        return {"state": state, "keys": 0 if self._keys is None else len(self._keys.all), "age_s": age}

    def _refresh_due(self, now: float) -> bool:
        age = now - self._fetched_at
        return (self._keys is None or age >= min(self._ttl, self.max_stale_s)) and self._may_fetch(now)

    def _may_fetch(self, now: float) -> bool:
        return self._inflight is not None or now - self._attempted_at >= self._issuer.jwks_refetch_cooldown_s

    def _usable(self) -> KeySet:
        """The current keys, or a 401: none fetched yet (jwks_unavailable), or past the bound (jwks_stale)."""
        keys = self._keys
        if keys is None:
            reject("jwks_unavailable", "the issuer's signing keys are unavailable")
        age = self._clock() - self._fetched_at
        if age > self.max_stale_s:
            if not self._told_stale:
                self._told_stale = True
                log.warning(
                    "jwks keys past jwks_max_stale_s and not refreshable: failing closed",
                    extra={"issuer": self._issuer.name, "age_s": round(age, 3), "max_stale_s": self.max_stale_s},
                )
                if self._metrics is not None:
                    self._metrics.jwks_keys(self._issuer.name, 0, self._fetched_at)
            reject("jwks_stale", "the issuer's signing keys are too old and could not be refreshed")
        return keys

    async def _refresh(self) -> None:
        if self._inflight is None:
            self._attempted_at = self._clock()
            self._inflight = asyncio.create_task(self._fetch())
        # shield: a caller that goes away (client disconnect) must not cancel the fetch others wait on
        await asyncio.shield(self._inflight)

    async def _fetch(self) -> None:
        name = self._issuer.name
        try:
            async with asyncio.timeout(self._issuer.jwks_timeout_s):  # connect, headers, body and parse
                document = await self._download()
                if len(document) > PARSE_INLINE_BYTES:
                    keys = await asyncio.to_thread(parse_jwks, document, self._issuer.algorithms)
                else:
                    keys = parse_jwks(document, self._issuer.algorithms)
        except Exception as exc:  # any failure keeps the old keys (within the bound): never crash the task
            self._failing = True
            outcome = _outcome(exc)
            known = isinstance(exc, FetchFailed | DuplicateKid)
            log.warning(
                "jwks fetch failed",
                # our own messages only: a transport error's text may carry the URL (and whatever is in it)
                extra={"issuer": name, "outcome": outcome, "error": str(exc) if known else type(exc).__name__},
            )
            if self._metrics is not None:
                self._metrics.jwks_fetch(name, outcome)
        else:
            self._keys, self._fetched_at = keys, self._clock()
            self._failing = self._told_stale = False
            if self._metrics is not None:
                self._metrics.jwks_fetch(name, "ok")
                self._metrics.jwks_keys(name, len(keys.all), self._fetched_at)
        finally:
            self._inflight = None

    async def _download(self) -> bytes:
        headers = {"accept": "application/jwk-set+json, application/json", "accept-encoding": "identity"}
        timeout = self._issuer.jwks_timeout_s
        async with self._http.stream(
            "GET", self._url, headers=headers, timeout=timeout, follow_redirects=False
        ) as response:
            if response.status_code != 200:
                raise FetchFailed("http_error", f"JWKS answered HTTP {response.status_code}")
            coding = response.headers.get("content-encoding", "").strip().lower()
            if coding not in ("", "identity"):
                raise FetchFailed("compressed", f"JWKS answered with Content-Encoding {coding[:40]!r}")
            length = response.headers.get("content-length", "")
            if length.isdigit() and int(length) > MAX_JWKS_BYTES:
                raise FetchFailed("too_large", "JWKS document too large")
            body = bytearray()
            async for chunk in response.aiter_raw():  # raw: nothing is ever decoded here
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise FetchFailed("too_large", "JWKS document too large")
        return bytes(body)

    async def aclose(self) -> None:
        task = self._inflight
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class KeyRef:
    """The JWKS key a token was verified with: a cached verification asks it whether it still stands."""

    source: JwksCache
    thumbprint: str

    def current(self) -> bool:
        return self.source.holds(self.thumbprint)


class Duplicate(ValueError):
    pass


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The object of `pairs`, its member names interned: every cached token's claims share "iss", "sub", ..."""
    result = {intern(name): value for name, value in pairs}
    if len(result) != len(pairs):
        raise Duplicate
    return result


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def json_object(data: bytes) -> dict[str, Any] | None:
    """A JSON object, or None; duplicate member names raise Duplicate, NaN/Infinity are not JSON."""
    try:
        value = jsonbody.loads(data, object_pairs_hook=_unique_members, parse_constant=_no_constants)
    except Duplicate:
        raise
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
