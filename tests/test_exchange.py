"""exchange.py: the token-exchange injector on its own, against a recording login endpoint on loopback."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from fakes import FaultServer, RecordingUpstream, Reply

from gateway.config.settings import Secret, TokenExchangeSettings, read_credentials
from gateway.errors import BadGateway, GatewayTimeout, HTTPError, LoadError
from gateway.proxy.credentials import OutgoingRequest
from gateway.proxy.exchange import MAX_LOGIN_ANSWER_BYTES, ProviderToken, TokenExchange
from gateway.store import MemoryStore, Store

CANARY = "canary-exchange-secret-3e7b"
JSON = [("Content-Type", "application/json")]


def answer(document: object, status: int = 200) -> Reply:
    return Reply(status, headers=JSON, body=json.dumps(document).encode())


def exchange_settings(options: dict[str, Any]) -> TokenExchangeSettings:
    """`type: token_exchange` settings from data, checked as the loader checks config.yaml."""
    settings = read_credentials({"type": "token_exchange", **options})
    assert isinstance(settings, TokenExchangeSettings)
    return settings


def make(url: str, store: Store | None = None, failure_cooldown_s: float = 1.0, **options: Any) -> TokenExchange:
    settings: dict[str, Any] = {
        "login": {"url": url + "/login", "json": {"api_key": Secret(CANARY)}},
        "token_field": "token",
        "expiry": {"ttl_s": 600},
        **options,
    }
    typed = dataclasses.replace(exchange_settings(settings), failure_cooldown_s=failure_cooldown_s)  # code-only
    return TokenExchange(typed, name="prov", store=store or MemoryStore())


def unverified_jwt(lifetime_s: float) -> str:
    return jwt.encode({"exp": time.time() + lifetime_s}, "k" * 32, algorithm="HS256")


async def drive(injector: TokenExchange, statuses: list[int], *, replayable: bool = True) -> list[list[str]]:
    """Run one flow like the forwarder, answering each yield with the next status; the Authorization values sent."""
    request = OutgoingRequest("POST", [("content-type", "application/json")], replayable=replayable)
    flow: AsyncGenerator[OutgoingRequest, int] = injector.flow(request)
    sent = [[v for k, v in (await anext(flow)).headers if k.lower() == "authorization"]]
    try:
        for status in statuses:
            try:
                retry = await flow.asend(status)
            except StopAsyncIteration:
                break
            sent.append([v for k, v in retry.headers if k.lower() == "authorization"])
    finally:
        await flow.aclose()
    return sent


# ------------------------------------------------------------------------------------------- expiry


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("document", "expiry", "lifetime_s"),
    [
        (lambda: {"token": "abc", "expires_in": 120}, {"field": "expires_in"}, 120),
        (lambda: {"token": "abc", "data": {"ttl": "3"}}, {"field": "data.ttl", "unit": "minutes"}, 180),
        (lambda: {"token": "abc", "exp": time.time() + 100}, {"field": "exp", "unit": "unix"}, 100),
        (lambda: {"token": "abc", "at": iso(time.time() + 100)}, {"field": "at", "unit": "iso8601"}, 100),
        (lambda: {"token": unverified_jwt(100)}, {"jwt_exp": True}, 100),
        (lambda: {"token": "abc"}, {"ttl_s": 50}, 50),
    ],
    ids=["seconds", "minutes-string", "unix", "iso8601", "jwt-exp", "fixed-ttl"],
)
async def test_expiry_comes_from_the_configured_place(
    document: Callable[[], dict[str, Any]], expiry: dict[str, Any], lifetime_s: float
) -> None:
    """Expiry from a field (seconds, minutes, unix, ISO 8601), from the JWT's own exp, or a fixed TTL."""
    async with RecordingUpstream(answer(document())) as server:
        injector = make(server.url, expiry=expiry, margin_s=10)
        token = await injector.token()
        await injector.aclose()
    assert token.expires_at - time.time() == pytest.approx(lifetime_s, abs=2)
    assert token.expires_at - token.renew_at == pytest.approx(10)


async def test_short_tokens_renew_at_half_life() -> None:
    """A token living less than twice the margin is renewed at half its life, never already due."""
    async with RecordingUpstream(answer({"token": "abc", "expires_in": 60})) as server:
        injector = make(server.url, expiry={"field": "expires_in"}, margin_s=3600)
        token = await injector.token()
        await injector.aclose()
    assert token.renew_at - time.time() == pytest.approx(30, abs=2)


# ------------------------------------------------------------------------------------ what is sent


async def test_login_sends_basic_and_json_body_as_configured() -> None:
    """The login carries Basic from secrets and a JSON body (secrets revealed, numbers and lists kept)."""
    async with RecordingUpstream(answer({"access_token": "tok"})) as server:
        settings = exchange_settings(
            {
                "login": {
                    "url": server.url + "/auth/token",
                    "method": "PUT",
                    "basic": {"username": Secret("ops"), "password": Secret(CANARY)},
                    "json": {"ttl": 600, "scopes": ["messages:send"], "key": Secret(CANARY)},
                },
                "token_field": "access_token",
                "expiry": {"ttl_s": 60},
                "header": "X-Token",
                "format": "Token {token}",
            }
        )
        injector = TokenExchange(settings, name="p")
        sent = OutgoingRequest("GET", [])
        flow = injector.flow(sent)
        await anext(flow)
        await flow.aclose()
        await injector.aclose()
    (login,) = server.requests
    assert (login.method, login.path) == ("PUT", "/auth/token")
    assert login.values("authorization") == ["Basic " + base64.b64encode(f"ops:{CANARY}".encode()).decode()]
    assert login.values("content-type") == ["application/json"]
    assert json.loads(login.body) == {"ttl": 600, "scopes": ["messages:send"], "key": CANARY}
    assert sent.headers == [("X-Token", "Token tok")]
    assert injector.header_names == {"x-token"}
    assert {CANARY, "ops"} <= set(injector.secret_values)
    assert CANARY not in repr(injector) + repr(settings) + repr(ProviderToken(CANARY, 1.0, 1.0))


# ----------------------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (answer({"message": "no"}, 500), "the upstream answered HTTP 500"),
        (Reply(302, headers=[("Location", "http://elsewhere.example/")]), "the upstream answered HTTP 302"),
        (Reply(200, body=b"<html>"), "its answer is not JSON"),
        (answer({"bearer": "abc"}), "no usable token in 'token'"),
        (answer({"token": "two words"}), "no usable token in 'token'"),
        (answer({"token": 42}), "no usable token in 'token'"),
        (answer({"error": 2, "errorDescription": "Invalid API key"}), "rejected the gateway's credentials"),
        (answer({"token": "a" * MAX_LOGIN_ANSWER_BYTES}), "its answer is too large"),
    ],
    ids=["5xx", "redirect-not-followed", "not-json", "missing", "unsafe", "not-a-string", "bsg-error-2", "huge"],
)
async def test_bad_login_answers_are_502(reply: Reply, reason: str) -> None:
    """Whatever is wrong with the login answer, the client gets a 502 naming why, never the body or secret."""
    async with RecordingUpstream(reply) as server:
        injector = make(server.url, credential_error={"status": 200, "field": "error", "equals": 2})
        with pytest.raises(BadGateway) as caught:
            await injector.token()
        await injector.aclose()
    assert caught.value.code == "upstream_login_failed"
    assert caught.value.message.startswith("the gateway could not log in to the upstream: ")
    assert reason in caught.value.message
    assert len(server.requests) == 1
    assert CANARY not in str(caught.value)


@pytest.mark.parametrize(
    ("document", "expiry", "reason"),
    [
        ({"token": "abc", "expires_in": -5}, {"field": "expires_in"}, "already expired"),
        ({"token": "abc", "expires_in": "soon"}, {"field": "expires_in"}, "'expires_in' is not a number"),
        ({"token": "abc"}, {"field": "expires_in"}, "'expires_in' is not a number"),
        ({"token": "abc", "at": "2030-01-01T00:00:00"}, {"field": "at", "unit": "iso8601"}, "has no time zone"),
        ({"token": "abc"}, {"jwt_exp": True}, "the token is not a JWT"),
        ({"token": jwt.encode({"sub": "x"}, "k" * 32)}, {"jwt_exp": True}, "no numeric exp claim"),
    ],
)
async def test_bad_expiries_are_502(document: dict[str, Any], expiry: dict[str, Any], reason: str) -> None:
    """A token whose expiry cannot be read, or has passed, is refused rather than cached forever."""
    async with RecordingUpstream(answer(document)) as server:
        injector = make(server.url, expiry=expiry)
        with pytest.raises(BadGateway, match=reason):
            await injector.token()
        await injector.aclose()


async def test_login_timeout_is_504_and_unreachable_is_502() -> None:
    """A login that hangs is a 504 upstream_login_timeout; a refused connection a 502."""
    async with RecordingUpstream(Reply(200, delay_s=2)) as slow, FaultServer("refuse") as refused:
        hanging = make(slow.url, timeout_s=0.2)
        with pytest.raises(GatewayTimeout) as timed_out:
            await hanging.token()
        unreachable = make(refused.url)
        with pytest.raises(BadGateway, match=r"the request failed \(ConnectError\)"):
            await unreachable.token()
        await hanging.aclose()
        await unreachable.aclose()
    assert timed_out.value.code == "upstream_login_timeout"


async def test_a_failed_login_is_remembered_for_the_cooldown() -> None:
    """Within failure_cooldown_s the last failure is repeated without asking the provider again."""
    async with RecordingUpstream(answer({"no": "token"})) as server:
        injector = make(server.url, failure_cooldown_s=0.3)
        for _ in range(3):
            with pytest.raises(BadGateway):
                await injector.token()
        assert len(server.requests) == 1
        await asyncio.sleep(0.35)
        server.reply(answer({"token": "abc"}))
        assert (await injector.token()).value == "abc"
        await injector.aclose()
    assert len(server.requests) == 2


# ------------------------------------------------------------------------------------ cache sharing


async def test_instances_sharing_a_store_log_in_once() -> None:
    """Two injectors on one store (two gateways on one Redis, in miniature) share the provider token."""
    store = MemoryStore()
    async with RecordingUpstream(answer({"token": "shared"}, 200)) as server:
        server.queue(Reply(200, headers=JSON, body=b'{"token": "shared"}', delay_s=0.1))
        first, second = make(server.url, store), make(server.url, store)
        tokens = await asyncio.gather(*(injector.token() for injector in (first, second) for _ in range(10)))
        await first.aclose()
        await second.aclose()
    assert {t.value for t in tokens} == {"shared"}
    assert len(server.requests) == 1
    assert first.logins + second.logins == 1


async def test_drop_spares_a_newer_token_in_the_store() -> None:
    """Dropping a refused token deletes the store's copy only while it is still that token."""
    store = MemoryStore()
    async with RecordingUpstream() as server:
        server.queue(answer({"token": "old"}), answer({"token": "new"}))
        mine, other = make(server.url, store), make(server.url, store)
        old = await mine.token()
        await other.token(stale="old")  # another gateway already replaced it
        await mine.drop(old)
        assert (await mine.token()).value == "new"  # from the store, no third login
        await mine.aclose()
        await other.aclose()
    assert len(server.requests) == 2


# ------------------------------------------------------------------------------------------ the flow


async def test_flow_retries_once_with_a_fresh_token_after_401() -> None:
    """A 401 drops the token and the retry carries a new one; a 401 to that too is a 502, with no third try."""
    async with RecordingUpstream() as server:
        server.queue(*(answer({"token": name}) for name in ("one", "two", "three", "four")))
        injector = make(server.url)
        assert await drive(injector, [401, 200]) == [["Bearer one"], ["Bearer two"]]
        with pytest.raises(BadGateway) as caught:
            await drive(injector, [401, 401])
        assert await drive(injector, [200]) == [["Bearer four"]]
        await injector.aclose()
    assert caught.value.code == "upstream_credentials"
    assert caught.value.message == "upstream rejected the gateway's credentials"


async def test_flow_refuses_to_replay_a_streamed_body() -> None:
    """With a streamed body the 401 cannot be retried: 502, the token dropped, no login until next time."""
    async with RecordingUpstream() as server:
        server.queue(answer({"token": "one"}), answer({"token": "two"}))
        injector = make(server.url)
        with pytest.raises(BadGateway, match="cannot be replayed"):
            await drive(injector, [401], replayable=False)
        assert len(server.requests) == 1
        assert await drive(injector, [200]) == [["Bearer two"]]
        await injector.aclose()


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"format": "Bearer"}, "credentials.format"),
        ({"format": "{token} {token}"}, "credentials.format"),
        ({"header": "Bad Header"}, "credentials.header"),
        ({"expiry": {}}, "credentials.expiry"),
        ({"expiry": {"ttl_s": 5, "field": "e"}}, "credentials.expiry"),
        ({"expiry": {"field": "x", "unit": "hours"}}, "credentials.expiry.unit"),
        ({"expiry": {"ttl_s": -1}}, "credentials.expiry.ttl_s"),
        ({"login": {"url": "ftp://x"}}, "credentials.login.url"),
        ({"login": {"url": "https://x", "method": "DELETE"}}, "credentials.login.method"),
        ({"token_field": "a..b"}, "credentials.token_field"),
        ({"margin_s": -1}, "credentials.margin_s"),
        ({"refresh": {"url": "nope"}}, "credentials.refresh.url"),
    ],
)
def test_invalid_exchange_settings(options: dict[str, Any], key: str) -> None:
    """Settings built in code (not through config.yaml) are validated too, naming the key."""
    base: dict[str, Any] = {"login": {"url": "https://p.example/login"}, "token_field": "t", "expiry": {"ttl_s": 1}}
    with pytest.raises(LoadError) as caught:
        exchange_settings({**base, **options})
    assert caught.value.key == key


def test_http_errors_carry_stable_codes() -> None:
    """The codes clients and logs see for login trouble."""
    assert issubclass(GatewayTimeout, HTTPError)
    assert BadGateway("x", code="upstream_login_failed").status == 502
