"""Fake SMS providers on loopback that enforce each provider's real authentication rules and count logins.

    FakeBSG                v1 (/rest): `X-API-KEY` live_/test_ keys; a bad key gets BSG's HTTP 200
                           {"error": 2, "errorDescription": "Invalid API key"}.
                           v2 (/api): POST /api/auth/login {"api_key"} → {"bearer": JWT with exp}, POST
                           /api/auth/refresh with a live bearer → a new one; bearers expire after `lifetime_s`,
                           `revoke_all()` makes the current ones 401.
    FakeSMSPortal          GET /v1/Authentication with Basic(client id:secret) → {"token", "schema": "JWT",
                           "expiresInMinutes"}; /v1/bulkmessages and /v1/Balance take that Bearer or Basic.
    FakeSMSGatewayCenter   /SMSApi/rest/*: the `apiKey` header, or `userId`/`password` parameters (query or form).
    FakeSMSGate            /3rdparty/v1: Basic, or a Bearer from POST /3rdparty/v1/auth/token (Basic).

Each records every request as a `Recorded` (the shape RecordingUpstream uses) before answering it;
`logins` / `refreshes` count successful token-endpoint calls, `login_attempts` every call. `login_delay_s`
slows the token endpoint down, to widen the window in which concurrent requests could race to log in.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import itertools
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import jwt
from aiohttp import web

from .recording import Recorded, start_loopback

__all__ = ["FakeBSG", "FakeProvider", "FakeSMSGate", "FakeSMSGatewayCenter", "FakeSMSPortal"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(status: int, body: object) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")


def _basic(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, colon, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if colon else None


def _bearer(header: str) -> tuple[str, str] | None:
    """(format, token) for `Bearer x` or BSG's documented `Bearer: x`."""
    for prefix, template in (("Bearer: ", "Bearer: {token}"), ("Bearer ", "Bearer {token}")):
        if header.startswith(prefix):
            return template, header[len(prefix) :]
    return None


class FakeProvider:
    """A loopback aiohttp server that records requests; subclasses add the provider's routes."""

    def __init__(self, *, lifetime_s: float = 3600.0, login_delay_s: float = 0.0) -> None:
        self.requests: list[Recorded] = []
        self.lifetime_s = lifetime_s
        self.login_delay_s = login_delay_s
        self.logins = 0
        self.login_attempts = 0
        self.refreshes = 0
        self.port = 0
        self._signing = secrets.token_bytes(32)
        self._bearers: dict[str, float] = {}  # token -> expires_at
        self._serial = itertools.count(1)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def received(self, path: str) -> list[Recorded]:
        """The requests that arrived for `path` (without the query)."""
        return [seen for seen in self.requests if seen.path == path]

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    # --- bearer tokens the provider hands out

    def issue(self) -> tuple[str, float]:
        """A new JWT bearer (HS256 with the fake's own key) and its expiry."""
        expires_at = time.time() + self.lifetime_s
        claims = {"sub": "account", "jti": str(next(self._serial)), "iat": int(time.time()), "exp": expires_at}
        token = jwt.encode(claims, self._signing, algorithm="HS256")
        self._bearers[token] = expires_at
        return token, expires_at

    def live(self, token: str) -> bool:
        expires_at = self._bearers.get(token)
        return expires_at is not None and time.time() < expires_at

    def revoke_all(self) -> None:
        """Every bearer handed out so far stops working (401), as after a provider-side revocation."""
        self._bearers.clear()

    async def _slow_login(self) -> None:
        self.login_attempts += 1
        if self.login_delay_s:
            await asyncio.sleep(self.login_delay_s)

    # --- server lifecycle

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Recorded(
                method=request.method,
                raw_path=request.raw_path,
                headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
                body=body,
                version=f"{request.version.major}.{request.version.minor}",
            )
        )
        return await handler(request)

    async def __aenter__(self) -> Self:
        app = web.Application(middlewares=[self._record])
        self.routes(app)
        self._runner, self.port = await start_loopback(app)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _equal(given: str | None, expected: Iterable[str]) -> bool:
    return given is not None and any(hmac.compare_digest(given.encode(), key.encode()) for key in expected)


INVALID_KEY = {"error": 2, "errorDescription": "Invalid API key"}


class FakeBSG(FakeProvider):
    """BSG: API v1 under /rest (X-API-KEY) and API v2 under /api (login, refresh, bearer)."""

    def __init__(self, keys: Iterable[str], *, refuse_refresh: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.keys = tuple(keys)
        for key in self.keys:
            if not key.startswith(("live_", "test_")):
                raise ValueError("BSG keys start with live_ or test_")
        self.refuse_refresh = refuse_refresh
        self.formats: list[str] = []  # the Authorization format of each v2 request that carried a bearer

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/rest/sms/create", self._v1)
        app.router.add_get("/rest/sms/{id}", self._v1)
        app.router.add_get("/rest/sms/reference/{reference}", self._v1)
        app.router.add_get("/rest/common/balance", self._v1)
        app.router.add_post("/api/auth/login", self._login)
        app.router.add_post("/api/auth/refresh", self._refresh)
        app.router.add_post("/api/campaigns/sms/send", self._v2)
        app.router.add_get("/api/campaigns/{id}/detail", self._v2)
        app.router.add_get("/api/accounts/balance", self._v2)

    async def _v1(self, request: web.Request) -> web.Response:
        if not _equal(request.headers.get("X-API-KEY"), self.keys):
            return _json(200, INVALID_KEY)  # BSG's way: a success status with an error code
        if request.path == "/rest/common/balance":
            return _json(200, {"error": 0, "amount": "12.34", "currency": "EUR", "limit": "0"})
        return _json(200, {"error": 0, "errorDescription": "No errors", "id": next(self._serial), "price": 0.01})

    async def _login(self, request: web.Request) -> web.Response:
        await self._slow_login()
        try:
            key = (await request.json()).get("api_key")
        except (ValueError, AttributeError):
            key = None
        if not isinstance(key, str) or not _equal(key, self.keys):
            return _json(200, INVALID_KEY)
        self.logins += 1
        token, _ = self.issue()
        return _json(200, {"bearer": token})

    def _authorized(self, request: web.Request) -> str | None:
        parsed = _bearer(request.headers.get("Authorization", ""))
        if parsed is None or not self.live(parsed[1]):
            return None
        self.formats.append(parsed[0])
        return parsed[1]

    async def _refresh(self, request: web.Request) -> web.Response:
        await self._slow_login()
        token = self._authorized(request)
        if token is None or self.refuse_refresh:
            return _json(401, {"message": "Unauthenticated."})
        self.refreshes += 1
        fresh, _ = self.issue()
        return _json(200, {"bearer": fresh})

    async def _v2(self, request: web.Request) -> web.Response:
        if self._authorized(request) is None:
            return _json(401, {"message": "Unauthenticated."})
        if request.path == "/api/accounts/balance":
            return _json(200, {"amount": 12.34, "currency": "EUR", "limit": 0})
        return _json(200, {"id": next(self._serial), "status": "created"})


class FakeSMSPortal(FakeProvider):
    """SMSPortal: GET /v1/Authentication (Basic) → token; the API takes that Bearer or Basic itself."""

    def __init__(self, client_id: str, secret: str, *, expires_in_minutes: int = 1440, **kwargs: Any) -> None:
        super().__init__(lifetime_s=expires_in_minutes * 60.0, **kwargs)
        self.client_id = client_id
        self.secret = secret
        self.expires_in_minutes = expires_in_minutes

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/Authentication", self._authentication)
        app.router.add_post("/v1/bulkmessages", self._api)
        app.router.add_get("/v1/Balance", self._api)

    def _basic_ok(self, header: str) -> bool:
        pair = _basic(header)
        return pair is not None and _equal(pair[0], [self.client_id]) and _equal(pair[1], [self.secret])

    async def _authentication(self, request: web.Request) -> web.Response:
        await self._slow_login()
        if not self._basic_ok(request.headers.get("Authorization", "")):
            return _json(401, {"errorCode": 401, "errorMessage": "Invalid credentials"})
        self.logins += 1
        token, _ = self.issue()
        return _json(200, {"token": token, "schema": "JWT", "expiresInMinutes": self.expires_in_minutes})

    async def _api(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        bearer = _bearer(header)
        by_token = bearer is not None and bearer[0] == "Bearer {token}" and self.live(bearer[1])
        if not (by_token or self._basic_ok(header)):
            return _json(401, {"errorCode": 401, "errorMessage": "Unauthorized"})
        if request.path == "/v1/Balance":
            return _json(200, {"balance": 99, "type": "credits"})
        return _json(200, {"cost": 1, "remainingBalance": 99, "eventId": next(self._serial), "messages": 1})


class FakeSMSGatewayCenter(FakeProvider):
    """SMSGatewayCenter: the apiKey header, or userId/password as query or form parameters."""

    def __init__(self, *, api_key: str, user_id: str, password: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.api_key = api_key
        self.user_id = user_id
        self.password = password

    def routes(self, app: web.Application) -> None:
        for name in ("send", "status", "balance"):
            app.router.add_route("GET", f"/SMSApi/rest/{name}", self._api)
            app.router.add_route("POST", f"/SMSApi/rest/{name}", self._api)

    async def _api(self, request: web.Request) -> web.Response:
        form = await request.post() if request.method == "POST" else {}
        user = request.query.get("userId") or form.get("userId")
        password = request.query.get("password") or form.get("password")
        by_key = _equal(request.headers.get("apiKey"), [self.api_key])
        by_password = isinstance(user, str) and isinstance(password, str)
        by_password = by_password and _equal(str(user), [self.user_id]) and _equal(str(password), [self.password])
        if not (by_key or by_password):
            return _json(200, {"status": "error", "statusCode": "101", "reason": "Invalid Login Credentials"})
        return _json(200, {"status": "success", "statusCode": "200", "reason": "success", "transactionId": "t-1"})


class FakeSMSGate(FakeProvider):
    """SMSGate's 3rdparty API: Basic, or a Bearer from its token endpoint (cloud mode)."""

    def __init__(self, username: str, password: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.username = username
        self.password = password

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/3rdparty/v1/auth/token", self._token)
        app.router.add_post("/3rdparty/v1/messages", self._messages)

    def _basic_ok(self, header: str) -> bool:
        pair = _basic(header)
        return pair is not None and _equal(pair[0], [self.username]) and _equal(pair[1], [self.password])

    async def _token(self, request: web.Request) -> web.Response:
        await self._slow_login()
        if not self._basic_ok(request.headers.get("Authorization", "")):
            return _json(401, {"message": "Unauthorized"})
        body = await request.json()
        if not isinstance(body.get("scopes"), list) or not body["scopes"]:
            return _json(400, {"message": "scopes are required"})
        self.logins += 1
        token, expires_at = self.issue()
        expires = datetime.fromtimestamp(expires_at, UTC).isoformat().replace("+00:00", "Z")
        return _json(201, {"id": "j1", "token_type": "Bearer", "access_token": token, "expires_at": expires})

    async def _messages(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        bearer = _bearer(header)
        if not (self._basic_ok(header) or (bearer is not None and self.live(bearer[1]))):
            return _json(401, {"message": "Unauthorized"})
        message_id = f"m-{next(self._serial)}"
        response = _json(202, {"id": message_id, "state": "Pending", "recipients": []})
        response.headers["Location"] = f"/3rdparty/v1/messages/{message_id}"
        return response
