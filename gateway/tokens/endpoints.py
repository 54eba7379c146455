"""The token endpoints, shaped like SMSGate's so its clients work against the gateway unchanged.

    POST   {mount}/auth/token          Basic, or Bearer holding tokens:manage   → 201 token pair
           body {"scopes": [...], "ttl": N, "sms": {"countries": [...], "max_recipients": N}} (ttl, sms optional;
           sms never wider than the caller's own: tokens/narrowing.py)
    POST   {mount}/auth/token/refresh  Bearer refresh token                     → 201 new pair
    DELETE {mount}/auth/token/{jti}    Bearer holding tokens:manage             → 204
    DELETE {mount}/auth/token?sub=S&issuer=NAME   the admin identity, or all:any → 204 (subject revocation)

Both SMSGate servers answer snake_case; the `android-sms-gateway` Python client reads camelCase; the
answer carries both spellings. With issuing disabled every endpoint answers 501.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qsl

from gateway.auth.authenticate import Authenticator
from gateway.auth.jwt import Principal
from gateway.config.settings import AdminSettings
from gateway.errors import BadRequest, Forbidden, HTTPError, NotFound, NotImplementedHTTP, Unauthorized
from gateway.observe.events import RECORD_KEY, RequestRecord, note_principal, note_refusal
from gateway.policy.scopes import SUPERUSER, satisfies
from gateway.tokens import narrowing
from gateway.tokens.lineage import BASIC_IDP
from gateway.tokens.mint import TokenPair
from gateway.tokens.narrowing import Narrowing
from gateway.tokens.service import MANAGE_SCOPE, TokenService
from gateway.web import jsonbody
from gateway.web.asgi import Receive, Scope, Send, read_body
from gateway.web.responses import send_error, send_json

__all__ = ["TokenEndpoints", "token_manager", "token_response"]

MAX_BODY = 16 * 1024
_NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def token_response(pair: TokenPair) -> dict[str, str]:
    """The 201 body in SMSGate's snake_case and the Python client's camelCase."""
    expires_at = rfc3339(pair.access.expires_at)
    return {
        "id": pair.access.jti,
        "token_type": "Bearer",
        "access_token": pair.access.token,
        "refresh_token": pair.refresh.token,
        "expires_at": expires_at,
        "tokenType": "Bearer",
        "accessToken": pair.access.token,
        "refreshToken": pair.refresh.token,
        "expiresAt": expires_at,
    }


class TokenEndpoints:
    """Answers the token endpoints under `mount`; `handles(method, path)` says whether a request is ours."""

    def __init__(
        self,
        mount: str,
        service: TokenService | None,
        authenticator: Authenticator,
        *,
        admin: AdminSettings | None = None,
    ) -> None:
        self.base = mount.rstrip("/") + "/auth/token"
        self.refresh_path = self.base + "/refresh"
        self.service = service
        self.authenticator = authenticator
        self.admin = admin

    def handles(self, path: str) -> bool:
        return path == self.base or path.startswith(self.base + "/")

    def template(self, path: str) -> str:
        """The endpoint `path` (canonical, handled) belongs to, as a bounded label: `{base}/{jti}` for revocations."""
        return path if path in (self.base, self.refresh_path) else self.base + "/{jti}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        try:
            await self._dispatch(scope, receive, send, path)
        except HTTPError as exc:
            note_refusal(scope, exc)
            await send_error(send, exc)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        method = scope["method"]
        tail = path[len(self.base) :]
        if self.service is None or self.service.issuer is None:
            raise NotImplementedHTTP("token issuing is disabled on this gateway")
        if path == self.base and method == "POST":
            await self._issue(scope, receive, send, self.service)
        elif path == self.refresh_path and method == "POST":
            await self._refresh(scope, send, self.service)
        elif path == self.base and method == "DELETE":
            await self._revoke_subject(scope, send, self.service)
        elif tail.count("/") == 1 and tail != "/refresh" and len(tail) > 1 and method == "DELETE":
            await self._revoke(scope, send, self.service, tail[1:])
        else:
            raise NotFound(f"no route for {method} {path}", code="no_route")

    async def _caller(self, scope: Scope) -> Principal:
        return await token_manager(self.authenticator, scope)

    async def _issue(self, scope: Scope, receive: Receive, send: Send, service: TokenService) -> None:
        caller = await self._caller(scope)
        body = await read_body(receive, MAX_BODY)
        record: RequestRecord | None = scope.get(RECORD_KEY)
        if record is not None:
            record.bytes_in = len(body)
        scopes, ttl, sms = _parse_request(body)
        pair = await service.issue(caller.subject, scopes, ttl, caller=caller, sms=sms)
        await send_json(send, 201, token_response(pair), _NO_STORE)

    async def _refresh(self, scope: Scope, send: Send, service: TokenService) -> None:
        token = _bearer(scope["headers"])
        principal = await self.authenticator.verify_refresh(token)
        note_principal(scope, principal)
        pair = await service.refresh(principal)
        await send_json(send, 201, token_response(pair), _NO_STORE)

    async def _revoke(self, scope: Scope, send: Send, service: TokenService, jti: str) -> None:
        caller = await self._caller(scope)
        await service.revoke(jti, caller=caller)
        await send_json(send, 204, None)

    async def _revoke_subject(self, scope: Scope, send: Send, service: TokenService) -> None:
        """`?sub=S&issuer=NAME` (issuer defaults to basic): only the admin identity or an all:any caller."""
        principal = await self.authenticator.authenticate(scope["headers"], peer=self.authenticator.peer(scope))
        note_principal(scope, principal)
        if principal is None:
            raise Unauthorized("authentication required")
        if SUPERUSER not in principal.scopes and not self._is_admin(principal):
            raise Forbidden("revoking a subject needs all:any or the configured admin identity", required=SUPERUSER)
        subject, idp = _parse_subject_query(scope.get("query_string", b""))
        await service.revoke_subject(idp, subject, caller=principal)
        await send_json(send, 204, None)

    def _is_admin(self, principal: Principal) -> bool:
        admin = self.admin
        return (
            admin is not None
            and admin.enabled
            and principal.issuer == admin.issuer
            and satisfies(principal.scopes, (admin.scope,), "any", False)
        )


def _parse_subject_query(query: bytes) -> tuple[str, str]:
    """(sub, issuer) from `sub=S&issuer=NAME`; anything missing, repeated or unknown is a 400."""
    try:
        pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True, strict_parsing=bool(query))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("malformed query: use ?sub=SUBJECT&issuer=NAME") from None
    names = [name for name, _ in pairs]
    unknown = sorted(set(names) - {"sub", "issuer"})
    if unknown:
        raise BadRequest(f"unknown parameter(s): {', '.join(unknown)}")
    if len(names) != len(set(names)):
        raise BadRequest("sub and issuer may be given once each")
    values = dict(pairs)
    if not values.get("sub"):
        raise BadRequest("sub is required: DELETE .../auth/token?sub=SUBJECT&issuer=NAME")
    return values["sub"], values.get("issuer") or BASIC_IDP


async def token_manager(authenticator: Authenticator, scope: Scope) -> Principal:
    """The caller of a token or key endpoint: a Basic user, or a bearer holding tokens:manage (401/403)."""
    principal = await authenticator.authenticate(scope["headers"], peer=authenticator.peer(scope))
    note_principal(scope, principal)
    if principal is None:
        raise Unauthorized("authentication required")
    if principal.kind != "basic" and not satisfies(principal.scopes, (MANAGE_SCOPE,), "any", False):
        raise Forbidden(f"insufficient scope: {MANAGE_SCOPE} required", required=MANAGE_SCOPE)
    return principal


def _bearer(headers: list[tuple[bytes, bytes]]) -> str:
    values = [value for name, value in headers if name == b"authorization"]
    if not values:
        raise Unauthorized("a refresh token is required")
    if len(values) > 1:
        raise BadRequest("more than one Authorization header", code="bad_request:duplicate_authorization")
    scheme, _, token = values[0].decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "a Bearer refresh token is required", code="invalid_token:unsupported_scheme", token_presented=True
        )
    return token.strip()


def _parse_request(body: bytes) -> tuple[list[str], int | None, Narrowing | None]:
    """Validate `{"scopes": [...], "ttl": N, "sms": {...}}`; anything else is a 400 naming the problem."""
    try:
        data = jsonbody.loads(body)
    except jsonbody.TooDeep as exc:
        raise BadRequest(f"body is {exc}", code="bad_request:json_depth") from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest('body must be JSON like {"scopes": ["messages:send"], "ttl": 900}') from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    unknown = sorted(set(data) - {"scopes", "ttl", "sms"})
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    scopes = data.get("scopes")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise BadRequest("scopes must be a list of strings")
    ttl = data.get("ttl")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool)):
        raise BadRequest("ttl must be an integer number of seconds")
    return scopes, ttl, narrowing.parse(data.get("sms"))
