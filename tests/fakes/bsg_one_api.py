"""BSG One-API (API v2) as its documentation and its official SDK (`bsg-sdk`) describe it, on loopback.

Written from reference/000 (BSG: API v2 login and refresh) and from what `bsg_api` 0.1.8 sends and
parses, never from the gateway's behaviour:

    POST /api/auth/login     {"api_key": "live_..."|"test_..."}  → 200 {"bearer": JWT}; any other key → 401
    POST /api/auth/refresh   Authorization: Bearer <live bearer> (or the docs' `Bearer: <token>`) → {"bearer"}
    POST /api/campaigns/sms/send   {"phones": [{"number": 380661231231}], "sender": ..., "text": ...}
                                   → 200 {"data": {"id", "name", "sender", "currency", "calculated_price"}};
                                   any other shape (no phones, a phone without its number, no text) → 422
    GET  /api/accounts/balance     → 200 {"data": {"balance", "currency", "credit"}}

Exactly one Authorization header is accepted, with a bearer this fake issued and that has not expired;
anything else is 401 {"message": "Unauthenticated."}. Each request is recorded; `bearers_for` tells
which API key each bearer was issued to, so a test can check which account key a request used.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from types import TracebackType
from typing import Any, Self

import jwt
from aiohttp import web

from .recording import Recorded, start_loopback

__all__ = ["FakeBsgOneApi"]

UNAUTHENTICATED = {"message": "Unauthenticated."}


def _json(status: int, body: object) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")


def _campaign(body: object) -> bool:
    """The SMS campaign shape of BSG's v2 API: phones[].number (international, digits only) and a text."""
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        return False
    phones = body.get("phones")
    if not isinstance(phones, list) or not phones:
        return False
    return all(isinstance(phone, dict) and str(phone.get("number", "")).isdigit() for phone in phones)


class FakeBsgOneApi:
    """A strict BSG API v2 on a free loopback port; `keys` are the account API keys it accepts."""

    def __init__(self, keys: tuple[str, ...], *, lifetime_s: float = 3600.0) -> None:
        self.keys = keys
        self.lifetime_s = lifetime_s
        self.requests: list[Recorded] = []
        self.bearers_for: dict[str, str] = {}  # bearer → the API key it was issued to
        self.used_keys: list[str] = []  # the API key behind each authenticated API call
        self.port = 0
        self._signing = secrets.token_bytes(32)
        self._serial = itertools.count(1)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def received(self, path: str) -> list[Recorded]:
        return [seen for seen in self.requests if seen.path == path]

    def _issue(self, api_key: str) -> str:
        now = time.time()
        claims = {"sub": "account", "jti": str(next(self._serial)), "iat": int(now), "exp": int(now + self.lifetime_s)}
        token = jwt.encode(claims, self._signing, algorithm="HS256")
        self.bearers_for[token] = api_key
        return token

    def _bearer(self, request: web.Request) -> str | None:
        values = request.headers.getall("Authorization", [])
        if len(values) != 1:
            return None
        value = values[0]
        for prefix in ("Bearer ", "Bearer: "):
            if value.startswith(prefix):
                token = value[len(prefix) :]
                try:
                    jwt.decode(token, self._signing, algorithms=["HS256"])
                except jwt.PyJWTError:
                    return None
                return token if token in self.bearers_for else None
        return None

    async def _login(self, request: web.Request) -> web.Response:
        try:
            data: Any = await request.json()
        except ValueError:
            data = None
        api_key = data.get("api_key") if isinstance(data, dict) else None
        if api_key not in self.keys:
            return _json(401, UNAUTHENTICATED)
        return _json(200, {"bearer": self._issue(api_key)})

    async def _refresh(self, request: web.Request) -> web.Response:
        token = self._bearer(request)
        if token is None:
            return _json(401, UNAUTHENTICATED)
        return _json(200, {"bearer": self._issue(self.bearers_for[token])})

    async def _api(self, request: web.Request) -> web.Response:
        token = self._bearer(request)
        if token is None:
            return _json(401, UNAUTHENTICATED)
        self.used_keys.append(self.bearers_for[token])
        if request.path == "/api/accounts/balance":
            return _json(200, {"data": {"balance": 12.5, "currency": "EUR", "credit": 0}})
        body = await request.json()
        if not _campaign(body):
            return _json(422, {"message": "The given data was invalid."})
        campaign = {"id": next(self._serial), "name": "sms campaign", "sender": body.get("sender"), "currency": "EUR"}
        return _json(200, {"data": {**campaign, "calculated_price": 0.01 * len(body.get("phones", []))}})

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
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
        response: web.StreamResponse = await handler(request)
        return response

    async def __aenter__(self) -> Self:
        app = web.Application(middlewares=[self._record])
        app.router.add_post("/api/auth/login", self._login)
        app.router.add_post("/api/auth/refresh", self._refresh)
        app.router.add_post("/api/campaigns/sms/send", self._api)
        app.router.add_get("/api/accounts/balance", self._api)
        self._runner, self.port = await start_loopback(app)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
