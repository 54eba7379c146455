"""passwords.py: Basic credentials are checked against argon2id hashes, off the event loop, with a short cache."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from argon2 import PasswordHasher
from keys import Clock

from gateway.auth import basic as passwords
from gateway.auth.basic import BasicAuthenticator, hash_password
from gateway.auth.peer import Peer
from gateway.config.auth import BasicLimitSettings
from gateway.config.settings import BasicUser, Secret
from gateway.errors import TooManyRequests, Unauthorized

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def user(name: str, password: str, *scopes: str) -> BasicUser:
    return BasicUser(name, Secret(FAST.hash(password)), frozenset(scopes))


USERS = (user("ops", "correct horse", "all:any"), user("viewer", "s3cret", "messages:read"))


@pytest.fixture
def argon_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every argon2 verification, by the name of the thread it ran on."""
    calls: list[str] = []
    real = passwords._matches

    def counting(hasher: PasswordHasher, password_hash: str, password: str) -> bool:
        calls.append(threading.current_thread().name)
        return real(hasher, password_hash, password)

    monkeypatch.setattr(passwords, "_matches", counting)
    return calls


async def test_right_password(argon_calls: list[str]) -> None:
    """The right password yields a basic Principal with the user's scopes and no token id."""
    principal = await BasicAuthenticator(USERS).verify("viewer", "s3cret")
    assert principal.subject == "viewer"
    assert principal.scopes == {"messages:read"}
    assert (principal.issuer, principal.kind, principal.token_id, principal.expires_at) == (
        "basic",
        "basic",
        None,
        None,
    )


async def test_argon2_runs_off_the_event_loop(argon_calls: list[str]) -> None:
    """The argon2 check runs in a worker thread, never on the event loop's thread."""
    await BasicAuthenticator(USERS).verify("ops", "correct horse")
    assert argon_calls
    assert threading.main_thread().name not in argon_calls


REFUSED: list[Any] = [
    pytest.param("ops", "wrong", id="wrong-password"),
    pytest.param("ops", "", id="empty-password"),
    pytest.param("ops", "correct horse ", id="trailing-space"),
    pytest.param("OPS", "correct horse", id="username-case"),
    pytest.param("nobody", "correct horse", id="unknown-user"),
    pytest.param("", "", id="empty-user"),
    pytest.param("viewer", "correct horse", id="other-users-password"),
]


@pytest.mark.parametrize(("username", "password"), REFUSED)
async def test_wrong_credentials_are_refused_alike(username: str, password: str, argon_calls: list[str]) -> None:
    """Wrong password and unknown user get the same message, code and one argon2 check each."""
    with pytest.raises(Unauthorized) as caught:
        await BasicAuthenticator(USERS).verify(username, password)
    assert caught.value.message == "invalid username or password"
    assert caught.value.code == "invalid_credentials:basic"
    assert len(argon_calls) == 1


async def test_disabled_basic_is_refused(argon_calls: list[str]) -> None:
    """With Basic disabled even valid credentials are refused (code basic_disabled) without hashing."""
    with pytest.raises(Unauthorized) as caught:
        await BasicAuthenticator(USERS, enabled=False).verify("ops", "correct horse")
    assert caught.value.code == "basic_disabled"
    assert argon_calls == []


async def test_no_users_refuses_everyone() -> None:
    """With no users configured every attempt is refused."""
    with pytest.raises(Unauthorized):
        await BasicAuthenticator(()).verify("ops", "correct horse")


async def test_malformed_stored_hash_is_a_mismatch() -> None:
    """A broken hash in the config refuses the user instead of crashing the request."""
    broken = BasicUser("ops", Secret("$argon2id$garbage"), frozenset({"all:any"}))
    with pytest.raises(Unauthorized):
        await BasicAuthenticator((broken,)).verify("ops", "anything")


async def test_cache_hit_skips_argon2(argon_calls: list[str]) -> None:
    """A repeated successful login within the TTL is answered from the cache without argon2."""
    basic = BasicAuthenticator(USERS)
    first = await basic.verify("ops", "correct horse")
    second = await basic.verify("ops", "correct horse")
    assert first == second
    assert len(argon_calls) == 1


async def test_cache_does_not_serve_other_passwords(argon_calls: list[str]) -> None:
    """A cached success for one password does not let a different password in."""
    basic = BasicAuthenticator(USERS)
    await basic.verify("ops", "correct horse")
    with pytest.raises(Unauthorized):
        await basic.verify("ops", "correct horsE")
    assert len(argon_calls) == 2


async def test_cache_entries_expire(argon_calls: list[str]) -> None:
    """After the 60 s TTL the password is checked with argon2 again."""
    clock = Clock(0.0)
    basic = BasicAuthenticator(USERS, clock=clock)
    await basic.verify("ops", "correct horse")
    clock.now = 59.0
    await basic.verify("ops", "correct horse")
    clock.now = 60.0
    await basic.verify("ops", "correct horse")
    assert len(argon_calls) == 2


async def test_cache_is_bounded(argon_calls: list[str]) -> None:
    """The cache keeps at most cache_size entries, dropping the oldest."""
    basic = BasicAuthenticator(USERS, cache_size=1)
    await basic.verify("ops", "correct horse")
    await basic.verify("viewer", "s3cret")
    await basic.verify("ops", "correct horse")
    assert len(argon_calls) == 3


async def test_cache_never_holds_the_password() -> None:
    """The cache is keyed by a keyed digest: neither username nor password appear in it."""
    basic = BasicAuthenticator(USERS)
    await basic.verify("ops", "correct horse")
    for key, (_, principal) in basic._cache.items():
        assert b"correct horse" not in key
        assert "correct horse" not in repr(principal)


def test_hash_password_makes_argon2id() -> None:
    """`gateway hash-password` output is an argon2id hash that verifies the password."""
    hashed = hash_password("pa55word")
    assert hashed.startswith("$argon2id$")
    assert PasswordHasher().verify(hashed, "pa55word")


async def test_a_repeated_wrong_password_is_hashed_once(argon_calls: list[str]) -> None:
    """The same wrong credentials within the cache TTL fail alike without another argon2 check; after it, hashed."""
    clock = Clock(0.0)
    basic = BasicAuthenticator(USERS, clock=clock)
    for _ in range(5):
        with pytest.raises(Unauthorized) as caught:
            await basic.verify("ops", "stale password")
        assert caught.value.message == "invalid username or password"
        assert caught.value.code == "invalid_credentials:basic"
    assert len(argon_calls) == 1
    with pytest.raises(Unauthorized):
        await basic.verify("ops", "another wrong one")
    assert len(argon_calls) == 2
    assert (await basic.verify("ops", "correct horse")).subject == "ops"  # a failure never shadows the right one
    clock.now = 60.0
    with pytest.raises(Unauthorized):
        await basic.verify("ops", "stale password")
    assert len(argon_calls) == 4


async def test_repeated_failures_count_towards_the_failed_login_limit(argon_calls: list[str]) -> None:
    """Unhashed repeats still count: the client's fourth failure within the minute is a 429, not a 401."""
    limits = BasicLimitSettings(failures_per_client="3/m", failures_per_user="100/m", failure_delay_s=0)
    basic = BasicAuthenticator(USERS, limits=limits)
    peer = Peer("192.0.2.7")
    for _ in range(3):
        with pytest.raises(Unauthorized):
            await basic.verify("ops", "stale password", peer)
    with pytest.raises(TooManyRequests):
        await basic.verify("ops", "stale password", peer)
    with pytest.raises(TooManyRequests):
        await basic.verify("ops", "correct horse", peer)  # the limited address hashes nothing more
    assert len(argon_calls) == 1
    assert (await basic.verify("ops", "correct horse", Peer("192.0.2.8"))).subject == "ops"


async def test_logins_queued_for_a_slot_are_limited_before_they_hash(argon_calls: list[str]) -> None:
    """Ten distinct wrong passwords at once from one address, limit 3/m, one hashing slot: all ten pass the
    first limit check together, but only three hash; the rest are 429 once they get the slot."""
    limits = BasicLimitSettings(failures_per_client="3/m", hash_concurrency=1, failure_delay_s=0)
    basic = BasicAuthenticator(USERS, limits=limits)
    peer = Peer("192.0.2.9")
    outcomes = await asyncio.gather(
        *(basic.verify("ops", f"guess-{i}", peer) for i in range(10)), return_exceptions=True
    )
    assert sorted(type(outcome).__name__ for outcome in outcomes) == ["TooManyRequests"] * 7 + ["Unauthorized"] * 3
    assert len(argon_calls) == 3
