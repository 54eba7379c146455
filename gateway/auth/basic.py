"""Basic auth against argon2id hashes from `config.yaml`, built so that it cannot knock the gateway over.

argon2 is deliberately slow (~190 ms of CPU and 64 MiB per check with argon2-cffi's defaults), so a
wrong-password flood is a denial of service unless the work is bounded. In order, a login:

1. is answered from the cache when the same credentials were verified within `cache_ttl_s`: the
   cache key is an HMAC of username and password under a random per-instance key (the password
   itself is never stored), so a legitimate Basic client pays argon2 once, not per request;
2. joins a check already running for the same credentials (single flight: 32 concurrent cold
   requests run one hash, not 32);
   and credentials that failed within `cache_ttl_s` fail again without hashing (same keyed digest,
   same limits and tarpit as a hashed failure): a client repeating a wrong or stale password costs
   one argon2 check, not one per attempt;
3. is refused with 429 (no hashing) when its client address or its username is over its failed-login
   limit (GCRA, per process: `failures_per_client`, `failures_per_user`; refused attempts do not count,
   so one flooding address cannot lock a user out on its own);
4. waits for one of `hash_concurrency` hashing slots (never more than the cores), or gets 503 with
   Retry-After when `max_waiting` logins already wait; the limits of 3. are checked again once it has
   the slot (the failures of the logins ahead of it have counted by then);
5. is dropped before hashing when every client waiting for that check has disconnected;
6. when it fails, or is refused by a limit, is answered only after `failure_delay_s` (a tarpit: the
   flooder's connection idles instead of asking again at once, and idling costs no CPU).

An unknown username is checked against a dummy hash made with the same parameters as a real user's,
so response time does not reveal which usernames exist. Failures count per process: they protect this
process's CPU, and keep working when the shared store is down.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from gateway.auth.jwt import Principal
from gateway.auth.peer import Peer
from gateway.config.auth import BasicLimitSettings
from gateway.config.settings import BasicUser
from gateway.errors import HTTPError, ServiceUnavailable, TooManyRequests, Unauthorized
from gateway.policy.rates import parse_rate
from gateway.store.gcra import LocalGcra, RateCheck

if TYPE_CHECKING:
    from argon2 import PasswordHasher

__all__ = ["BasicAuthenticator", "BasicMetrics", "hash_password"]

BAD_CREDENTIALS = "invalid username or password"


def hash_password(password: str) -> str:
    """An argon2id hash (argon2-cffi's default parameters) for `basic_users[].password_hash`."""
    from argon2 import PasswordHasher  # argon2 loads only where passwords are hashed or checked

    return PasswordHasher().hash(password)


def _matches(hasher: PasswordHasher, password_hash: str, password: str) -> bool:
    """Whether `password` matches; a malformed hash or unencodable password is simply a mismatch."""
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError, ValueError, UnicodeError):
        return False


def _dummy_hash(users: Sequence[BasicUser]) -> str | None:
    """A hash of a random password with the parameters of a real user's hash (None without users)."""
    if not users:
        return None
    from argon2 import PasswordHasher, extract_parameters
    from argon2.exceptions import InvalidHashError

    try:
        hasher = PasswordHasher.from_parameters(extract_parameters(users[0].password_hash.reveal()))
    except (InvalidHashError, ValueError):
        hasher = PasswordHasher()
    return hasher.hash(secrets.token_urlsafe(16))


def _new_hasher() -> PasswordHasher:
    from argon2 import PasswordHasher

    return PasswordHasher()


class BasicMetrics(Protocol):
    """What the authenticator reports (the gateway's Metrics implements it)."""

    def basic_login(self, outcome: str) -> None:
        """One login by outcome: cached, verified, failed, repeated (a recent failure, not hashed again),
        limited_client, limited_user, busy, abandoned."""


class _NoMetrics:
    def basic_login(self, outcome: str) -> None:
        pass


def hash_slots(configured: int, cores: int | None = None) -> int:
    """Hashing slots: `configured` (0 = half the cores, at least 1), never more than the cores."""
    cores = max(1, cores or os.cpu_count() or 1)
    wanted = configured or max(1, cores // 2)
    return max(1, min(wanted, cores))


class _Flight:
    """One argon2 check in progress, shared by every request presenting the same credentials."""

    __slots__ = ("future", "peers")

    def __init__(self, future: asyncio.Future[bool], peer: Peer | None) -> None:
        self.future = future
        self.peers: list[Peer | None] = [peer]

    def abandoned(self) -> bool:
        """Every waiting client has gone (a request without a known connection never counts as gone)."""
        return all(peer is not None and peer.gone() for peer in self.peers)


class _Abandoned(ServiceUnavailable):
    """Nobody is waiting for this check any more: it was dropped before hashing."""

    def __init__(self) -> None:
        super().__init__("the client went away before its login was checked", code="basic_abandoned")


class BasicAuthenticator:
    """Checks Basic credentials against the configured users; build once, share across requests."""

    def __init__(
        self,
        users: Sequence[BasicUser],
        *,
        enabled: bool = True,
        cache_ttl_s: float | None = None,
        cache_size: int = 1024,
        limits: BasicLimitSettings | None = None,
        metrics: BasicMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        limits = limits or BasicLimitSettings()
        self._users = {user.username: user for user in users}
        self._enabled = enabled
        # verify() reads the parameters from each hash; without users nothing is ever verified (nor argon2 loaded)
        self._hasher = _new_hasher() if users else None
        self._dummy = _dummy_hash(users) if enabled else None
        self._cache_key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()
        self._failed: OrderedDict[bytes, float] = OrderedDict()  # keyed digest -> until when it fails unhashed
        self._cache_ttl = limits.cache_ttl_s if cache_ttl_s is None else cache_ttl_s
        self._cache_size = cache_size
        self._clock = clock
        self._metrics: BasicMetrics = metrics or _NoMetrics()
        self._flights: dict[bytes, _Flight] = {}
        self._slots = asyncio.Semaphore(hash_slots(limits.hash_concurrency))
        self._max_waiting = limits.max_waiting
        self._waiting = 0
        self._failure_delay = limits.failure_delay_s
        self._failures = LocalGcra(max_keys=50_000, clock=time.time)
        per_client, per_user = parse_rate(limits.failures_per_client), parse_rate(limits.failures_per_user)
        self._per_client = (per_client.interval_us, per_client.count)
        self._per_user = (per_user.interval_us, per_user.count)

    async def verify(self, username: str, password: str, peer: Peer | None = None) -> Principal:
        """The Principal for valid credentials; anything else raises Unauthorized with one message.

        `peer` (the client's address and disconnect signal) keys the failed-login limit per address and
        lets a check be dropped once its client has gone. Over a limit: 429; no hashing slot: 503.
        """
        if not self._enabled:
            raise Unauthorized(BAD_CREDENTIALS, code="basic_disabled", token_presented=True)
        key = self._fingerprint(username, password)
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > self._clock():
                self._metrics.basic_login("cached")
                return cached[1]
            del self._cache[key]
        if self._failed_recently(key):
            await self._fail_again(username, peer)
        flight = self._flights.get(key)
        if flight is not None:  # the same credentials are being checked: share that answer
            flight.peers.append(peer)
            ok = await asyncio.shield(flight.future)
        else:
            ok = await self._check(key, username, password, peer)
        user = self._users.get(username)
        if user is None or not ok:
            raise Unauthorized(BAD_CREDENTIALS, code="invalid_credentials:basic", token_presented=True)
        return self._principal(key, user)

    def _principal(self, key: bytes, user: BasicUser) -> Principal:
        cached = self._cache.get(key)
        if cached is not None:
            return cached[1]
        claims: Mapping[str, object] = {}
        if user.sms is not None:
            claims = {
                "sms": {
                    k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(user.sms).items() if v is not None
                }
            }
        principal = Principal(
            subject=user.username,
            scopes=user.scopes,
            issuer="basic",
            token_id=None,
            expires_at=None,
            claims=MappingProxyType(dict(claims)),
            kind="basic",
        )
        self._remember(key, principal)
        return principal

    def _limit_checks(self, username: str, peer: Peer | None) -> list[RateCheck]:
        checks = [RateCheck("u:" + username, *self._per_user)]
        if peer is not None and peer.address:
            checks.append(RateCheck("c:" + peer.address, *self._per_client))
        return checks

    def _limited(self, username: str, peer: Peer | None) -> TooManyRequests | None:
        """The 429 for an address or username that has failed too often lately (None: not limited)."""
        checks = self._limit_checks(username, peer)
        results = self._failures.check(checks, charge=False)
        for check, result in zip(checks, results, strict=True):
            if not result.allowed:
                which = "user" if check.key.startswith("u:") else "client"
                self._metrics.basic_login(f"limited_{which}")
                return TooManyRequests(
                    "too many failed logins; retry later",
                    retry_after_s=int(result.retry_after_s) + 1,
                    code=f"basic_limited:{which}",
                )
        return None

    async def _refuse_limited(self, username: str, peer: Peer | None) -> None:
        """429 without hashing when the address or the username has failed too often lately (after the tarpit)."""
        refused = self._limited(username, peer)
        if refused is not None:
            await self._tarpit(peer)
            raise refused

    async def _check(self, key: bytes, username: str, password: str, peer: Peer | None) -> bool:
        """Run one bounded argon2 check as the leader of its flight; failures are counted here."""
        await self._refuse_limited(username, peer)
        if self._waiting >= self._max_waiting and self._slots.locked():
            self._metrics.basic_login("busy")
            raise ServiceUnavailable("too many logins in progress; retry shortly", code="basic_busy")
        user = self._users.get(username)
        password_hash = user.password_hash.reveal() if user is not None else self._dummy
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        flight = self._flights[key] = _Flight(future, peer)
        try:
            recheck = functools.partial(self._limited, username, peer)
            ok = password_hash is not None and await self._hash(flight, password_hash, password, recheck)
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, HTTPError) else _Abandoned())
            future.exception()  # retrieved: nobody else may be waiting
            if isinstance(exc, TooManyRequests):
                del self._flights[key]
                await self._tarpit(peer)
            raise
        finally:
            self._flights.pop(key, None)
        future.set_result(ok)
        if ok and user is not None:
            self._metrics.basic_login("verified")
        else:
            self._metrics.basic_login("failed")
            self._remember_failure(key)
            self._count_failure(username, peer)
            await self._tarpit(peer)
        return ok and user is not None

    def _count_failure(self, username: str, peer: Peer | None) -> None:
        self._failures.check([RateCheck(c.key, c.interval_us, c.burst, 1) for c in self._limit_checks(username, peer)])

    def _failed_recently(self, key: bytes) -> bool:
        until = self._failed.get(key)
        if until is None:
            return False
        if until > self._clock():
            return True
        del self._failed[key]
        return False

    def _remember_failure(self, key: bytes) -> None:
        if self._cache_size <= 0 or self._cache_ttl <= 0:
            return
        self._failed[key] = self._clock() + self._cache_ttl
        self._failed.move_to_end(key)
        while len(self._failed) > self._cache_size:
            self._failed.popitem(last=False)

    async def _fail_again(self, username: str, peer: Peer | None) -> None:
        """Credentials that failed lately fail again, unhashed: limited (429) or counted, tarpitted, 401."""
        await self._refuse_limited(username, peer)
        self._metrics.basic_login("repeated")
        self._count_failure(username, peer)
        await self._tarpit(peer)
        raise Unauthorized(BAD_CREDENTIALS, code="invalid_credentials:basic", token_presented=True)

    async def _tarpit(self, peer: Peer | None) -> None:
        """Answer a failed or refused login late: the flooder's connection idles (costing nothing) instead of
        asking again at once. Only requests with a known connection wait (not embedded or in-process calls)."""
        if self._failure_delay > 0 and peer is not None and peer.address:
            await asyncio.sleep(self._failure_delay)

    async def _hash(
        self, flight: _Flight, password_hash: str, password: str, limited: Callable[[], TooManyRequests | None]
    ) -> bool:
        """argon2 in a hashing slot. The failed-login limits are checked again once the slot is ours: the
        logins that queued meanwhile passed the first check before the failures ahead of them counted, so
        without this a flood of distinct passwords would hash its whole queue past the limit."""
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            if flight.abandoned():
                self._metrics.basic_login("abandoned")
                raise _Abandoned
            refused = limited()
            if refused is not None:
                raise refused
            if self._hasher is None:  # no users: there is no hash to check against
                return False
            return await asyncio.to_thread(_matches, self._hasher, password_hash, password)
        finally:
            self._slots.release()

    def _fingerprint(self, username: str, password: str) -> bytes:
        """A keyed digest of the credentials: a cache key that cannot be reversed or precomputed."""
        user = username.encode("utf-8", "surrogatepass")
        data = len(user).to_bytes(4, "big") + user + password.encode("utf-8", "surrogatepass")
        return hmac.new(self._cache_key, data, hashlib.sha256).digest()

    def _remember(self, key: bytes, principal: Principal) -> None:
        if self._cache_size <= 0 or self._cache_ttl <= 0:
            return
        self._cache[key] = (self._clock() + self._cache_ttl, principal)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
