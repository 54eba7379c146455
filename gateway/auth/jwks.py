"""A JWKS issuer's keys: fetched over HTTP, parsed into verification keys, cached and refreshed.

`parse_jwks` turns a JWK Set document into the signing keys usable for an issuer's algorithms;
`JwksCache` holds one issuer's set and decides when to fetch it. `Key` (and its family tables) is
shared with `jwt.py`, which prepares configured keys the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias

import httpx
import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.config.settings import IssuerSettings
from gateway.errors import Unauthorized

__all__ = ["MAX_JWKS_BYTES", "MAX_JWKS_KEYS", "JwksCache", "Key", "KeySet", "parse_jwks"]

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 512 * 1024
MAX_JWKS_KEYS = 100

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


@dataclass(frozen=True, slots=True)
class KeySet:
    by_kid: Mapping[str, tuple[Key, ...]]
    all: tuple[Key, ...]


def parse_jwks(document: bytes, algorithms: Sequence[str]) -> KeySet:
    """Parse a JWKS document into the signing keys usable for `algorithms`.

    Keys for encryption (`use` other than `sig`), with `key_ops` lacking `verify`, of a `kty` or `alg`
    the issuer does not allow, or that do not parse, are skipped. A document that is not a JWKS, or
    that holds no usable key, raises ValueError: the caller keeps its previous keys.
    """
    data = json_object(document)
    if data is None:
        raise ValueError("the JWKS is not a JSON object")
    entries = data.get("keys")
    if not isinstance(entries, list):
        raise ValueError("the JWKS has no keys list")
    by_kid: dict[str, list[Key]] = {}
    keys: list[Key] = []
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
        key = Key(obj, kid, alg)
        if not any(key.accepts(a) for a in algorithms):
            continue
        keys.append(key)
        if kid is not None:
            by_kid.setdefault(kid, []).append(key)
    if not keys:
        raise ValueError("the JWKS holds no usable signing key")
    return KeySet({kid: tuple(found) for kid, found in by_kid.items()}, tuple(keys))


class JwksCache:
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
        self._keys: KeySet | None = None
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._inflight: asyncio.Task[None] | None = None

    async def candidates(self, kid: str | None) -> tuple[Key, ...]:
        """Keys for `kid` (exact match), or every key when the token names none."""
        now = self._clock()
        if (self._keys is None or now - self._fetched_at >= self._issuer.jwks_cache_ttl_s) and self._may_fetch(now):
            await self._refresh()
        if self._keys is None:
            reject("jwks_unavailable", "the issuer's signing keys are unavailable")
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


class Duplicate(ValueError):
    pass


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise Duplicate
    return result


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def json_object(data: bytes) -> dict[str, Any] | None:
    """A JSON object, or None; duplicate member names raise Duplicate, NaN/Infinity are not JSON."""
    try:
        value = json.loads(data, object_pairs_hook=_unique_members, parse_constant=_no_constants)
    except Duplicate:
        raise
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
