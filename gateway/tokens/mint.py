"""Minting the gateway's own tokens.

Access tokens carry `typ: at+jwt` (RFC 9068) and refresh tokens `typ: refresh+jwt`, so the verifier can
never take one for the other. Both carry `fam`, the refresh family: rotating a refresh token keeps the
family, and revoking the family ends every token in it. Both also carry the grant claims (`idp`, `anc`,
`cap`: see lineage.py), and neither outlives `cap`. The first configured key signs; every key stays
trusted for verification, so keys rotate by adding a new one in front.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from jwt.algorithms import get_default_algorithms

from gateway.config.settings import SYMMETRIC, KeySettings, TokenSettings

__all__ = [
    "ACCESS_TYP",
    "REFRESH_SCOPE",
    "REFRESH_TYP",
    "MintedToken",
    "TokenIssuer",
    "TokenPair",
]

ACCESS_TYP = "at+jwt"
REFRESH_TYP = "refresh+jwt"
REFRESH_SCOPE = "tokens:refresh"
GRANT_CLAIM = "grant_scope"  # in a refresh token: the scopes the next access token gets


@dataclass(frozen=True, slots=True)
class MintedToken:
    token: str
    jti: str
    expires_at: int
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class TokenPair:
    access: MintedToken
    refresh: MintedToken
    family: str
    subject: str


def new_id() -> str:
    """A random, URL-safe token id (jti or family id)."""
    return secrets.token_urlsafe(16)


class TokenIssuer:
    """Signs access/refresh pairs with the newest configured key."""

    def __init__(self, settings: TokenSettings, *, clock: Callable[[], float] = time.time) -> None:
        if not settings.keys:
            raise ValueError("token issuing needs at least one signing key")
        self.settings = settings
        self._clock = clock
        self._signing = settings.keys[0]
        self._signing_key = _signing_material(self._signing)

    def mint_pair(
        self,
        subject: str,
        scopes: Iterable[str],
        ttl_s: int,
        *,
        family: str | None = None,
        grant: Mapping[str, Any] | None = None,
        cap: int | None = None,
    ) -> TokenPair:
        """An access token for `scopes` and the refresh token that can renew it.

        `grant` are claims both tokens carry (lineage.Grant.claims()); `cap` bounds both `exp`s.
        """
        granted = frozenset(scopes)
        family = family or new_id()
        now = int(self._clock())
        extra = dict(grant or {})
        access_ttl, refresh_ttl = ttl_s, self.settings.refresh_ttl_s
        if cap is not None:
            access_ttl, refresh_ttl = min(access_ttl, cap - now), min(refresh_ttl, cap - now)
        access = self._mint(
            subject, ACCESS_TYP, now, access_ttl, family, {**extra, "scope": " ".join(sorted(granted))}, granted
        )
        refresh = self._mint(
            subject,
            REFRESH_TYP,
            now,
            refresh_ttl,
            family,
            {**extra, "scope": REFRESH_SCOPE, GRANT_CLAIM: " ".join(sorted(granted)), "ttl": ttl_s},
            frozenset({REFRESH_SCOPE}),
        )
        return TokenPair(access, refresh, family, subject)

    def _mint(
        self,
        subject: str,
        typ: str,
        now: int,
        ttl_s: int,
        family: str,
        extra: dict[str, Any],
        scopes: frozenset[str],
    ) -> MintedToken:
        jti = new_id()
        claims: dict[str, Any] = {
            "iss": self.settings.issuer,
            "aud": self.settings.audience,
            "sub": subject,
            "iat": now,
            "exp": now + ttl_s,
            "jti": jti,
            "fam": family,
            **extra,
        }
        headers: dict[str, Any] = {"typ": typ}
        if self._signing.kid:
            headers["kid"] = self._signing.kid
        token = jwt.encode(claims, self._signing_key, algorithm=self._signing.algorithm, headers=headers)
        return MintedToken(token, jti, now + ttl_s, scopes)

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The public halves of the asymmetric keys, for `/.well-known/jwks.json` (HMAC keys never appear)."""
        return {"keys": [public_jwk(key) for key in self.settings.keys if key.algorithm not in SYMMETRIC]}


def _signing_material(key: KeySettings) -> Any:
    if key.algorithm in SYMMETRIC:
        return key.material.reveal().encode()
    return load_pem_private_key(key.material.reveal().encode(), password=None)


def public_jwk(key: KeySettings) -> dict[str, Any]:
    """The JWK of a signing key's public half, with `kid`, `alg` and `use`."""
    private = load_pem_private_key(key.material.reveal().encode(), password=None)
    algorithm = get_default_algorithms()[key.algorithm]
    jwk: dict[str, Any] = algorithm.to_jwk(private.public_key(), as_dict=True)
    jwk.update({"alg": key.algorithm, "use": "sig"})
    if key.kid:
        jwk["kid"] = key.kid
    return jwk
