"""Turn a request's Authorization header into a Principal (Bearer JWT or Basic).

Credentials are read from the `Authorization` header only: the Authenticator is handed the raw ASGI
headers and never sees the query string, so a token in a URL (where it would land in access logs,
browser history and Referer headers) is never honoured. Exactly one Authorization header is allowed:
two could be read differently by the gateway and the upstream.

Verified access tokens are cached until their `exp` (bounded by `auth.token_cache_size`, least recently
used evicted first), so a busy client costs one dict lookup instead of a signature check. The cache is keyed
by a 128-bit BLAKE2b digest of the exact token string, not the string itself: a third of the memory per
entry, and finding another token with the same digest is a second-preimage attack on BLAKE2b. The
revocation hook is still awaited on every request, cache hit or not. An entry verified with a JWKS
key remembers that key (a `KeyRef`): once the key leaves the issuer's set, its keys are past
`jwks_max_stale_s`, or a refresh is due, the entry is dropped and the token verified again, so a
cached verification never outlives its key nor skips a refresh a fresh token would trigger.

Gateway API keys (`sgk_live_...`, `sgk_test_...`, gateway/keys/) are accepted wherever a bearer token is,
and as Basic credentials whose user name is a key id (SMSPortal's client id:secret slot); the `keys` hook
verifies them (a keyed hash, cached there) and the revocation hook is awaited for them too. `Bearer:`
(with a colon, as BSG's API v2 documentation writes it) is read as `Bearer`.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from hashlib import blake2b
from typing import Any

from gateway.auth.basic import BasicAuthenticator
from gateway.auth.jwks import KeyRef
from gateway.auth.jwt import Principal, TokenVerifier
from gateway.auth.peer import Network, Peer, peer_of
from gateway.errors import BadRequest, Unauthorized

__all__ = ["Authenticator"]

_AUTHORIZATION = b"authorization"
KEY_PREFIX = "sgk_"

KeyVerifier = Callable[[str], Awaitable[Principal]]
KeyPairVerifier = Callable[[str, str], Awaitable[Principal]]


def _malformed(message: str, code: str = "invalid_token:malformed") -> Unauthorized:
    return Unauthorized(message, code=code, token_presented=True)


class Authenticator:
    """Authenticates requests from their headers; build once, share across requests."""

    def __init__(
        self,
        verifier: TokenVerifier,
        basic: BasicAuthenticator | None,
        *,
        max_header_bytes: int = 8192,
        is_revoked: Callable[[Principal], Awaitable[bool]] | None = None,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        keys: KeyVerifier | None = None,
        key_pairs: KeyPairVerifier | None = None,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        """`keys` verifies a whole gateway key and `key_pairs` one given as (key id, secret); without them
        a gateway key is an invalid token."""
        self.verifier = verifier
        self.trusted_proxies = tuple(trusted_proxies)
        self.basic = basic
        self._max_header_bytes = max_header_bytes
        self._is_revoked = is_revoked
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, tuple[Principal, KeyRef | None]] = OrderedDict()
        self._clock = clock
        self.keys = keys
        self.key_pairs = key_pairs

    def peer(self, scope: Mapping[str, Any]) -> Peer:
        """The request's client address (after `trusted_proxies`) and disconnect signal, for Basic's limits."""
        return peer_of(scope, self.trusted_proxies)

    async def authenticate(
        self, headers: Sequence[tuple[bytes, bytes]], *, peer: Peer | None = None
    ) -> Principal | None:
        """The caller's Principal, None when no credentials were sent; invalid credentials raise.

        `peer` (see `peer`) lets Basic auth limit failed logins per client address and drop work for
        clients that have gone; without it only the per-username limit applies."""
        value = None
        for name, raw in headers:
            if len(name) == len(_AUTHORIZATION) and name.lower() == _AUTHORIZATION:
                if value is not None:
                    raise BadRequest(
                        "send exactly one Authorization header", code="bad_request:duplicate_authorization"
                    )
                value = raw
        if value is None:
            return None
        if len(value) > self._max_header_bytes:
            raise _malformed("the Authorization header is too large", "invalid_token:too_large")
        try:
            text = value.decode("ascii").strip(" \t")
        except UnicodeDecodeError:
            raise _malformed("the Authorization header is not ASCII") from None
        scheme, _, credentials = text.partition(" ")
        credentials = credentials.strip(" \t")
        scheme = scheme.lower()
        if scheme in ("bearer", "bearer:"):
            if not credentials:
                raise _malformed("the bearer token is empty")
            if credentials.startswith(KEY_PREFIX):
                return await self.key(credentials)
            return await self._bearer(credentials)
        if scheme == "basic":
            return await self._basic(credentials, peer)
        raise _malformed("use the Bearer or Basic authorization scheme", "invalid_token:unsupported_scheme")

    async def key(self, key: str) -> Principal:
        """The principal of a whole gateway key, revocation checked (401 for anything else)."""
        if self.keys is None:
            raise _malformed("gateway keys are not enabled on this gateway", "invalid_key:disabled")
        principal = await self.keys(key)
        await self._check_revoked(principal)
        return principal

    async def key_pair(self, key_id: str, secret: str) -> Principal:
        """The principal of a gateway key given as key id and secret, revocation checked."""
        if self.key_pairs is None:
            raise _malformed("gateway keys are not enabled on this gateway", "invalid_key:disabled")
        principal = await self.key_pairs(key_id, secret)
        await self._check_revoked(principal)
        return principal

    async def verify_refresh(self, token: str) -> Principal:
        """A refresh token's Principal for the refresh endpoint: never cached, revocation checked."""
        principal = await self.verifier.verify(token, refresh=True)
        await self._check_revoked(principal)
        return principal

    async def _bearer(self, token: str) -> Principal:
        digest = blake2b(token.encode(), digest_size=16).digest()
        entry = self._cache.get(digest)
        if entry is not None:
            principal, key = entry
            if (principal.expires_at or 0.0) > self._clock() and (key is None or key.current()):
                self._cache.move_to_end(digest)
                await self._check_revoked(principal, digest)
                return principal
            del self._cache[digest]
        principal, key = await self.verifier.verify_with_key(token)
        self._remember(digest, principal, key)
        await self._check_revoked(principal, digest)
        return principal

    async def _basic(self, credentials: str, peer: Peer | None) -> Principal:
        if self.basic is None and self.key_pairs is None:
            raise Unauthorized("basic authentication is disabled", code="basic_disabled", token_presented=True)
        try:
            raw = binascii.a2b_base64(credentials, strict_mode=True)
            if base64.b64encode(raw).decode() != credentials:  # canonical only: no stray padding or bits
                raise ValueError("non-canonical base64")
            decoded = raw.decode("utf-8")
        except (binascii.Error, ValueError):
            raise _malformed("malformed basic credentials", "invalid_credentials:malformed") from None
        username, colon, password = decoded.partition(":")
        if not colon:
            raise _malformed("malformed basic credentials", "invalid_credentials:malformed")
        if username.startswith(KEY_PREFIX):  # a gateway key as client id:secret (user names sgk_... are keys)
            return await self.key_pair(username, password)
        if self.basic is None:
            raise Unauthorized("basic authentication is disabled", code="basic_disabled", token_presented=True)
        return await self.basic.verify(username, password, peer)

    async def _check_revoked(self, principal: Principal, digest: bytes | None = None) -> None:
        if self._is_revoked is None or principal.kind == "basic":
            return
        if await self._is_revoked(principal):
            if digest is not None:
                self._cache.pop(digest, None)
            raise Unauthorized("token has been revoked", code="invalid_token:revoked", token_presented=True)

    def _remember(self, digest: bytes, principal: Principal, key: KeyRef | None) -> None:
        if self._cache_size <= 0 or principal.expires_at is None:
            return
        self._cache[digest] = (principal, key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
