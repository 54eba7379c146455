"""Basic auth against argon2id hashes from `config.yaml`.

argon2 is deliberately slow (tens of milliseconds, tens of MiB), so verification runs in a worker
thread and never blocks the event loop. An unknown username is checked against a dummy hash made
with the same parameters as a real user's, so response time does not reveal which usernames exist.
Successful checks are remembered for a minute under an HMAC of username and password (a random key
per instance; the password itself is never stored), so steady Basic traffic costs one hash a minute
instead of one per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from types import MappingProxyType

from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError

from gateway.auth.jwt import Principal
from gateway.config.settings import BasicUser
from gateway.errors import Unauthorized

__all__ = ["BasicAuthenticator", "hash_password"]

BAD_CREDENTIALS = "invalid username or password"


def hash_password(password: str) -> str:
    """An argon2id hash (argon2-cffi's default parameters) for `basic_users[].password_hash`."""
    return PasswordHasher().hash(password)


def _matches(hasher: PasswordHasher, password_hash: str, password: str) -> bool:
    """Whether `password` matches; a malformed hash or unencodable password is simply a mismatch."""
    try:
        return hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError, ValueError, UnicodeError):
        return False


def _dummy_hash(users: Sequence[BasicUser]) -> str | None:
    """A hash of a random password with the parameters of a real user's hash (None without users)."""
    if not users:
        return None
    try:
        hasher = PasswordHasher.from_parameters(extract_parameters(users[0].password_hash.reveal()))
    except (InvalidHashError, ValueError):
        hasher = PasswordHasher()
    return hasher.hash(secrets.token_urlsafe(16))


class BasicAuthenticator:
    """Checks Basic credentials against the configured users; build once, share across requests."""

    def __init__(
        self,
        users: Sequence[BasicUser],
        *,
        enabled: bool = True,
        cache_ttl_s: float = 60.0,
        cache_size: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._users = {user.username: user for user in users}
        self._enabled = enabled
        self._hasher = PasswordHasher()  # verify() reads the parameters from each hash
        self._dummy = _dummy_hash(users) if enabled else None
        self._cache_key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()
        self._cache_ttl = cache_ttl_s
        self._cache_size = cache_size
        self._clock = clock

    async def verify(self, username: str, password: str) -> Principal:
        """The Principal for valid credentials; anything else raises Unauthorized with one message."""
        if not self._enabled:
            raise Unauthorized(BAD_CREDENTIALS, code="basic_disabled", token_presented=True)
        key = self._fingerprint(username, password)
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > self._clock():
                return cached[1]
            del self._cache[key]
        user = self._users.get(username)
        password_hash = user.password_hash.reveal() if user is not None else self._dummy
        ok = password_hash is not None and await asyncio.to_thread(_matches, self._hasher, password_hash, password)
        if user is None or not ok:
            raise Unauthorized(BAD_CREDENTIALS, code="invalid_credentials:basic", token_presented=True)
        principal = Principal(
            subject=username,
            scopes=user.scopes,
            issuer="basic",
            token_id=None,
            expires_at=None,
            claims=MappingProxyType({}),
            kind="basic",
        )
        self._remember(key, principal)
        return principal

    def _fingerprint(self, username: str, password: str) -> bytes:
        """A keyed digest of the credentials: a cache key that cannot be reversed or precomputed."""
        user = username.encode("utf-8", "surrogatepass")
        data = len(user).to_bytes(4, "big") + user + password.encode("utf-8", "surrogatepass")
        return hmac.new(self._cache_key, data, hashlib.sha256).digest()

    def _remember(self, key: bytes, principal: Principal) -> None:
        if self._cache_size <= 0:
            return
        self._cache[key] = (self._clock() + self._cache_ttl, principal)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
