"""Fake SMS providers on loopback, written from the provider documents (`../shared/reference/`), strictly.

A fake accepts only what its document says (one header spelling, one credential at a time, the document's
token lifetime rules), never what this project happens to send: a fake that took anything could not
catch a mismatch. Where a document is silent, the fake's choice is named in its docstring.

    FakeBSG                v1 (/rest): `X-API-KEY` live_/test_ keys; a bad key gets BSG's HTTP 200
                           {"error": 2, "errorDescription": "Invalid API key"}. POST /rest/sms/create takes
                           only BSG's "Send SMS" shapes (`msisdn` or `phones[].msisdn`, and `body`); any
                           other gets HTTP 200 {"error": 1} (the code is the fake's choice).
                           v2 (/api): POST /api/auth/login {"api_key"} → {"bearer": string}, POST
                           /api/auth/refresh with a live bearer → a new one. The bearer is sent in exactly one
                           `bearer_format` (the document's `Bearer: {token}`, or the SDKs' `Bearer {token}`);
                           `bearer` picks its shape: a JWT with `exp`, a JWT without, or an opaque string (the
                           document only says "string"); bearers die after `lifetime_s` either way.
    FakeSMSPortal          GET /v1/Authentication with Basic(client id:secret) → {"token", "schema", "expiresInMinutes":
                           1440}: tokens live 24 h, and "any new token request within 23 hours of your original
                           request will result in the same token being returned". Opaque tokens ("a secure
                           internal format") unless `jwt=True`. /v1/bulkmessages and /v1/Balance take that Bearer
                           or Basic.
    FakeSMSGatewayCenter   /SMSApi/rest/*: the `apiKey` header, or `userId` and `password` parameters (query or form
                           body) — "either one": two credentials, or a parameter given twice, is a login failure.
                           Answers HTTP 200 in the requested `format` (plain, the system default; json; xml) with
                           status/statusCode/reason; the failure reason text is this fake's (undocumented).
    FakeSMSGate            /3rdparty/v1: Basic, or a Bearer from POST /3rdparty/v1/auth/token (Basic; {"ttl",
                           "scopes"} with the document's scopes) → {"id", "token_type", "access_token", "expires_at"};
                           each endpoint needs its documented scope (403 without); DELETE /auth/token/{jti} revokes.

Each records every request as a `Recorded` (the shape RecordingUpstream uses) before answering it;
`logins` / `refreshes` count successful token-endpoint calls, `login_attempts` every call. `login_delay_s`
slows the token endpoint down, to widen the window in which concurrent requests could race to log in.
`clock` (default `time.time`) is the fake's time, so tests can move a day on.
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

    def __init__(
        self, *, lifetime_s: float = 3600.0, login_delay_s: float = 0.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.requests: list[Recorded] = []
        self.lifetime_s = lifetime_s
        self.login_delay_s = login_delay_s
        self.clock = clock
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

    def issue(self, shape: str = "jwt", **claims: object) -> tuple[str, float]:
        """A new bearer and its expiry: `jwt` (HS256 with the fake's own key, with `exp`), `jwt_no_exp`, or
        `opaque` (random text); `claims` go into a JWT."""
        now = self.clock()
        expires_at = now + self.lifetime_s
        if shape == "opaque":
            token = secrets.token_urlsafe(24)
        else:
            body: dict[str, object] = {"sub": "account", "jti": str(next(self._serial)), "iat": int(now), **claims}
            if shape == "jwt":
                body["exp"] = expires_at
            token = jwt.encode(body, self._signing, algorithm="HS256")
        self._bearers[token] = expires_at
        return token, expires_at

    def live(self, token: str) -> bool:
        expires_at = self._bearers.get(token)
        return expires_at is not None and self.clock() < expires_at

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


def _bsg_v1_send(raw: bytes) -> bool:
    """BSG v1 "Send SMS": destination `phone` with `msisdn`, or `phones` with `phones[].msisdn`; and a `body`."""
    try:
        body = json.loads(raw)
    except ValueError:
        return False
    if not isinstance(body, dict) or not isinstance(body.get("body"), str):
        return False
    if body.get("destination") == "phone":
        return str(body.get("msisdn", "")).isdigit()
    phones = body.get("phones")
    if body.get("destination") != "phones" or not isinstance(phones, list) or not phones:
        return False
    return all(isinstance(phone, dict) and str(phone.get("msisdn", "")).isdigit() for phone in phones)


class FakeBSG(FakeProvider):
    """BSG: API v1 under /rest (X-API-KEY) and API v2 under /api (login, refresh, bearer)."""

    def __init__(
        self,
        keys: Iterable[str],
        *,
        refuse_refresh: bool = False,
        bearer_format: str = "Bearer {token}",
        bearer: str = "jwt",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.keys = tuple(keys)
        for key in self.keys:
            if not key.startswith(("live_", "test_")):
                raise ValueError("BSG keys start with live_ or test_")
        self.refuse_refresh = refuse_refresh
        if bearer_format not in ("Bearer {token}", "Bearer: {token}"):
            raise ValueError("BSG v2 bearers go as `Bearer: {token}` (its document) or `Bearer {token}` (its SDKs)")
        self.bearer_format = bearer_format
        self.bearer = bearer
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
        if request.path == "/rest/sms/create" and not _bsg_v1_send(await request.read()):
            return _json(200, {"error": 1, "errorDescription": "Invalid request"})
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
        token, _ = self.issue(self.bearer)
        return _json(200, {"bearer": token})

    def _authorized(self, request: web.Request) -> str | None:
        """The live bearer of a v2 request sent in exactly the configured format (any other: None → 401)."""
        values = request.headers.getall("Authorization", [])
        parsed = _bearer(values[0]) if len(values) == 1 else None
        if parsed is None or parsed[0] != self.bearer_format or not self.live(parsed[1]):
            return None
        self.formats.append(parsed[0])
        return parsed[1]

    async def _refresh(self, request: web.Request) -> web.Response:
        await self._slow_login()
        token = self._authorized(request)
        if token is None or self.refuse_refresh:
            return _json(401, {"message": "Unauthenticated."})
        self.refreshes += 1
        fresh, _ = self.issue(self.bearer)
        return _json(200, {"bearer": fresh})

    async def _v2(self, request: web.Request) -> web.Response:
        if self._authorized(request) is None:
            return _json(401, {"message": "Unauthenticated."})
        if request.path == "/api/accounts/balance":
            return _json(200, {"amount": 12.34, "currency": "EUR", "limit": 0})
        return _json(200, {"id": next(self._serial), "status": "created"})


class FakeSMSPortal(FakeProvider):
    """SMSPortal: GET /v1/Authentication (Basic) → token; the API takes that Bearer or Basic itself.

    "Generated tokens are valid for 24 hours ... any new token request within 23 hours of your original
    request will result in the same token being returned": `token_s` (24 h) and `reissue_s` (23 h) of
    the fake's `clock`. The answer always says `expiresInMinutes: 1440`, as the document's sample does.
    `outside_login()` is another client of the account asking for a token (the gateway does not see it).
    """

    def __init__(
        self,
        client_id: str,
        secret: str,
        *,
        expires_in_minutes: int = 1440,
        reissue_s: float = 23 * 3600.0,
        jwt: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(lifetime_s=expires_in_minutes * 60.0, **kwargs)
        self.client_id = client_id
        self.secret = secret
        self.expires_in_minutes = expires_in_minutes
        self.reissue_s = reissue_s
        self.jwt = jwt
        self.current: tuple[str, float] | None = None  # the token and when it was first issued
        self.issued = 0  # distinct tokens generated

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/Authentication", self._authentication)
        app.router.add_post("/v1/bulkmessages", self._api)
        app.router.add_get("/v1/Balance", self._api)

    def _basic_ok(self, header: str) -> bool:
        pair = _basic(header)
        return pair is not None and _equal(pair[0], [self.client_id]) and _equal(pair[1], [self.secret])

    def outside_login(self) -> str:
        """The token any caller of /Authentication gets now (the same one for 23 h after its first issue)."""
        now = self.clock()
        if self.current is None or now >= self.current[1] + self.reissue_s:
            token, _ = self.issue("jwt" if self.jwt else "opaque")
            self.current = (token, now)
            self.issued += 1
        return self.current[0]

    async def _authentication(self, request: web.Request) -> web.Response:
        await self._slow_login()
        if not self._basic_ok(request.headers.get("Authorization", "")):
            return _json(401, {"errorCode": 401, "errorMessage": "Invalid credentials"})
        self.logins += 1
        token = self.outside_login()
        return _json(200, {"token": token, "schema": "JWT", "expiresInMinutes": self.expires_in_minutes})

    async def _api(self, request: web.Request) -> web.Response:
        values = request.headers.getall("Authorization", [])
        header = values[0] if len(values) == 1 else ""
        bearer = _bearer(header)
        by_token = bearer is not None and bearer[0] == "Bearer {token}" and self.live(bearer[1])
        if not (by_token or self._basic_ok(header)):
            return _json(401, {"errorCode": 401, "errorMessage": "Unauthorized"})
        if request.path == "/v1/Balance":
            return _json(200, {"balance": 99, "type": "credits"})
        return _json(200, {"cost": 1, "remainingBalance": 99, "eventId": next(self._serial), "messages": 1})


SGC_LOGIN_FAILED = ("error", "101", "Invalid Login Credentials")  # not in the document: this fake's wording


class FakeSMSGatewayCenter(FakeProvider):
    """SMSGatewayCenter: the apiKey header, or userId/password as query or form parameters — "either one".

    A request carrying both, neither, or a credential parameter twice (query and body, or repeated) fails
    the login. Every answer is HTTP 200 in the requested `format` (plain when absent: "System default is
    plain") with status/statusCode/reason; a send without `mobile` fails for that reason instead.
    """

    def __init__(self, *, api_key: str, user_id: str, password: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.api_key = api_key
        self.user_id = user_id
        self.password = password

    def routes(self, app: web.Application) -> None:
        for name in ("send", "status", "balance"):
            app.router.add_route("GET", f"/SMSApi/rest/{name}", self._api)
            app.router.add_route("POST", f"/SMSApi/rest/{name}", self._api)

    def _logged_in(self, request: web.Request, params: list[tuple[str, str]]) -> bool:
        keys = request.headers.getall("apiKey", [])
        users = [value for name, value in params if name == "userId"]
        passwords = [value for name, value in params if name == "password"]
        stray = [name for name, _ in params if name.lower() in ("userid", "password", "apikey")]
        if keys:  # the apiKey header, and nothing else
            return len(keys) == 1 and not stray and _equal(keys[0], [self.api_key])
        if len(users) != 1 or len(passwords) != 1 or len(stray) != 2:
            return False
        return _equal(users[0], [self.user_id]) and _equal(passwords[0], [self.password])

    async def _api(self, request: web.Request) -> web.Response:
        params = list(request.query.items())
        if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
            params += [(name, str(value)) for name, value in (await request.post()).items()]
        formats = [value.lower() for name, value in params if name == "format"]
        answer_format = formats[0] if formats else "plain"
        if not self._logged_in(request, params):
            return _sgc_answer(answer_format, *SGC_LOGIN_FAILED)
        if request.path.endswith("/send") and not any(name == "mobile" for name, _ in params):
            return _sgc_answer(answer_format, "error", "102", "Invalid mobile number")
        return _sgc_answer(answer_format, "success", "900", "success", transactionId="t-1")


def _sgc_answer(answer_format: str, status: str, code: str, reason: str, **extra: str) -> web.Response:
    fields = {"status": status, "statusCode": code, "reason": reason, **extra}
    if answer_format == "json":
        return _json(200, fields)
    if answer_format == "xml":
        inner = "".join(f"<{name}>{value}</{name}>" for name, value in fields.items())
        body = f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><response>{inner}</response>'
        return web.Response(status=200, text=body, content_type="application/xml")
    return web.Response(status=200, text=" | ".join(f"{k}={v}" for k, v in fields.items()), content_type="text/plain")


SMSGATE_SCOPES = frozenset(
    {
        "all:any",
        "messages:send",
        "messages:read",
        "messages:list",
        "messages:export",
        "devices:list",
        "devices:delete",
        "webhooks:list",
        "webhooks:write",
        "webhooks:delete",
        "settings:read",
        "settings:write",
        "logs:read",
        "tokens:manage",
        # not in the document's list, but its implementation has them (DESIGN.md, "The SMSGate API as implemented")
        "messages:cancel",
        "inbox:list",
        "inbox:refresh",
    }
)  # the document's "Available Scopes" (and messages:export from its endpoint table)


class FakeSMSGate(FakeProvider):
    """SMSGate's 3rdparty API: Basic, or a Bearer from its token endpoint (cloud mode), scope per endpoint.

    POST /auth/token needs Basic and {"ttl", "scopes"} (scopes required, each a documented one) → 201;
    POST /messages needs messages:send, GET /messages/{id} messages:read (or all:any; 403 otherwise);
    DELETE /auth/token/{jti} (Basic, or a Bearer with tokens:manage) revokes the token (204).
    """

    def __init__(self, username: str, password: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.username = username
        self.password = password
        self.scopes: dict[str, frozenset[str]] = {}  # token -> its scopes
        self.ids: dict[str, str] = {}  # jti -> token
        self.revoked: list[str] = []  # jtis revoked through DELETE /auth/token/{jti}

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/3rdparty/v1/auth/token", self._token)
        app.router.add_delete("/3rdparty/v1/auth/token/{jti}", self._revoke)
        app.router.add_post("/3rdparty/v1/messages", self._messages)
        app.router.add_get("/3rdparty/v1/messages/{id}", self._message)

    def _basic_ok(self, header: str) -> bool:
        pair = _basic(header)
        return pair is not None and _equal(pair[0], [self.username]) and _equal(pair[1], [self.password])

    def _granted(self, request: web.Request) -> frozenset[str] | None:
        """The caller's scopes: everything for Basic, the token's for a live Bearer, None when unauthenticated."""
        values = request.headers.getall("Authorization", [])
        header = values[0] if len(values) == 1 else ""
        if self._basic_ok(header):
            return SMSGATE_SCOPES
        bearer = _bearer(header)
        if bearer is None or bearer[0] != "Bearer {token}" or not self.live(bearer[1]):
            return None
        return self.scopes.get(bearer[1], frozenset())

    async def _token(self, request: web.Request) -> web.Response:
        await self._slow_login()
        if not self._basic_ok(request.headers.get("Authorization", "")):
            return _json(401, {"message": "Unauthorized"})
        body = await request.json()
        scopes = body.get("scopes")
        if not isinstance(scopes, list) or not scopes or not all(scope in SMSGATE_SCOPES for scope in scopes):
            return _json(400, {"message": "scopes are required and must be known scopes"})
        self.logins += 1
        token, expires_at = self.issue()
        jti = f"j{len(self.ids) + 1}"
        self.scopes[token] = frozenset(scopes)
        self.ids[jti] = token
        expires = datetime.fromtimestamp(expires_at, UTC).isoformat().replace("+00:00", "Z")
        return _json(201, {"id": jti, "token_type": "Bearer", "access_token": token, "expires_at": expires})

    async def _revoke(self, request: web.Request) -> web.Response:
        granted = self._granted(request)
        if granted is None:
            return _json(401, {"message": "Unauthorized"})
        if not granted & {"tokens:manage", "all:any"}:
            return _json(403, {"message": "Forbidden"})
        token = self.ids.get(request.match_info["jti"])
        if token is None:
            return _json(404, {"message": "Not found"})
        self._bearers.pop(token, None)
        self.revoked.append(request.match_info["jti"])
        return web.Response(status=204)

    def _allowed(self, request: web.Request, scope: str) -> web.Response | None:
        granted = self._granted(request)
        if granted is None:
            return _json(401, {"message": "Unauthorized"})
        if not granted & {scope, "all:any"}:
            return _json(403, {"message": "Forbidden"})
        return None

    async def _messages(self, request: web.Request) -> web.Response:
        refused = self._allowed(request, "messages:send")
        if refused is not None:
            return refused
        message_id = f"m-{next(self._serial)}"
        response = _json(202, {"id": message_id, "state": "Pending", "recipients": []})
        response.headers["Location"] = f"/3rdparty/v1/messages/{message_id}"
        return response

    async def _message(self, request: web.Request) -> web.Response:
        refused = self._allowed(request, "messages:read")
        return refused or _json(200, {"id": request.match_info["id"], "state": "Sent", "recipients": []})
