"""The key API under the token mount, and the provider-shaped logins on mounts with a key slot.

    POST   {tokens.mount}/auth/keys               {"name", "scopes", "mode": live|test, "ttl"}  → 201 + the key
           optional "sms": {"countries": [...], "max_recipients": N}, never wider than the caller's
    GET    {tokens.mount}/auth/keys               → 200 {"keys": [...]} (the caller's own; never a secret)
    POST   {tokens.mount}/auth/keys/{id}/rotate   {"overlap_s": N}                              → 201 + the key
    DELETE {tokens.mount}/auth/keys/{id}          → 204 (the key and every token minted from it end)

The API takes Basic, or a Bearer (a token or a key) holding `tokens:manage`; a caller sees and changes
its own identity's keys only (`all:any` any key). On mounts whose policy has `keys:`:

    bsg_v2            POST {mount}/auth/login {"api_key": "sgk_..."} → {"bearer": <gateway token>}
                      POST {mount}/auth/refresh (Bearer <that token>) → {"bearer": <new token>}
    smsportal         GET  {mount}/Authentication, Basic(key id:secret) → {"token", "schema", "expiresInMinutes"}
    smsgatewaycenter  GET|POST {mount}/rest/regenerateAPIKey (apiKey, or userId/password in the query or a
                      form body; `format` plain|json|xml) → the caller's own key rotated, never the provider's

Tokens from these logins are ordinary gateway access tokens minted from the key (their `anc` names it),
living `tokens.max_ttl_s`; a renewal mints again from the key, so lineage does not deepen.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Mapping
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from gateway.auth.authenticate import Authenticator
from gateway.auth.jwt import Principal
from gateway.errors import BadRequest, HTTPError, NotFound, NotImplementedHTTP, Unauthorized
from gateway.keys.errors import provider_error_body
from gateway.keys.service import KEY_ID_CLAIM, KeyService
from gateway.observe.events import note_principal, note_refusal
from gateway.tokens import narrowing
from gateway.tokens.endpoints import token_manager
from gateway.tokens.lineage import ancestors_of
from gateway.tokens.narrowing import Narrowing
from gateway.web.asgi import Receive, Scope, Send, read_body
from gateway.web.responses import send_json

__all__ = ["KeyEndpoints"]

MAX_BODY = 16 * 1024
_NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}
_KEY_ANCESTOR = "key:"

Handler = Callable[[Scope, Receive, Send, str], Coroutine[Any, Any, None]]


class KeyEndpoints:
    """Answers the key API and the provider logins; `handles(path)` says whether a request is ours."""

    def __init__(
        self, mount: str, service: KeyService | None, authenticator: Authenticator, styles: Mapping[str, str]
    ) -> None:
        self.base = mount.rstrip("/") + "/auth/keys"
        self.service = service
        self.authenticator = authenticator
        self.routes: dict[str, tuple[str, frozenset[str], Handler]] = {}
        for slot_mount, style in styles.items():
            if style == "bsg_v2":
                self.routes[slot_mount + "/auth/login"] = (style, frozenset({"POST"}), self._bsg_login)
                self.routes[slot_mount + "/auth/refresh"] = (style, frozenset({"POST"}), self._bsg_refresh)
            elif style == "smsportal":
                self.routes[slot_mount + "/Authentication"] = (style, frozenset({"GET"}), self._smsportal)
            elif style == "smsgatewaycenter":
                methods = frozenset({"GET", "POST"})
                self.routes[slot_mount + "/rest/regenerateAPIKey"] = (style, methods, self._regenerate)

    def handles(self, path: str) -> bool:
        return path == self.base or path.startswith(self.base + "/") or path in self.routes

    def template(self, path: str) -> str:
        """A bounded route label: `{base}/{id}` and `{base}/{id}/rotate` for a key's own endpoints."""
        if path == self.base or path in self.routes:
            return path
        return self.base + ("/{id}/rotate" if path.endswith("/rotate") else "/{id}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        route = self.routes.get(path)
        style = route[0] if route is not None else None
        try:
            if self.service is None:
                raise NotImplementedHTTP("gateway keys are not enabled on this gateway (keys: in config.yaml)")
            if route is not None:
                if scope["method"] not in route[1]:
                    raise NotFound(f"no route for {scope['method']} {path}", code="no_route")
                await route[2](scope, receive, send, path)
            else:
                await self._api(scope, receive, send, path, self.service)
        except HTTPError as exc:
            note_refusal(scope, exc)
            await send_json(send, exc.status, provider_error_body(style, exc), exc.headers)

    # ------------------------------------------------------------------------------------- the key API

    async def _api(self, scope: Scope, receive: Receive, send: Send, path: str, service: KeyService) -> None:
        method = scope["method"]
        tail = path[len(self.base) :].strip("/").split("/") if path != self.base else []
        if not tail and method == "POST":
            caller = await self._manager(scope)
            name, scopes, mode, ttl, sms = _parse_create(await read_body(receive, MAX_BODY))
            created = await service.create(caller, name=name, scopes=scopes, mode=mode, ttl_s=ttl, sms=sms)
            await send_json(send, 201, created.answer(), _NO_STORE)
        elif not tail and method == "GET":
            caller = await self._manager(scope)
            await send_json(send, 200, {"keys": await service.list_keys(caller)}, _NO_STORE)
        elif len(tail) == 1 and method == "DELETE":
            caller = await self._manager(scope)
            await service.revoke(caller, tail[0])
            await send_json(send, 204, None)
        elif len(tail) == 2 and tail[1] == "rotate" and method == "POST":
            caller = await self._manager(scope)
            overlap = _parse_rotate(await read_body(receive, MAX_BODY))
            rotated = await service.rotate(caller, tail[0], overlap)
            await send_json(send, 201, rotated.answer(), _NO_STORE)
        else:
            raise NotFound(f"no route for {method} {path}", code="no_route")

    async def _manager(self, scope: Scope) -> Principal:
        return await token_manager(self.authenticator, scope)

    # -------------------------------------------------------------------------------- provider logins

    def _key_service(self) -> KeyService:
        assert self.service is not None
        return self.service

    async def _mint(self, key: Principal) -> tuple[str, int]:
        """An access token minted from a key principal, for the key's own scopes: (token, ttl in seconds)."""
        tokens = self._key_service().tokens
        if tokens.issuer is None:
            raise NotImplementedHTTP("token issuing is disabled on this gateway")
        pair = await tokens.issue(key.subject, sorted(key.scopes), tokens.settings.max_ttl_s, caller=key)
        return pair.access.token, pair.access.expires_at - int(tokens._clock())

    async def _bsg_login(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        try:
            data = json.loads(await read_body(receive, MAX_BODY))
        except (ValueError, UnicodeDecodeError):
            data = None
        api_key = data.get("api_key") if isinstance(data, dict) else None
        if not isinstance(api_key, str) or not api_key:
            raise BadRequest('body must be JSON like {"api_key": "sgk_live_..."}')
        if not api_key.startswith("sgk_"):
            raise Unauthorized("api_key must be a gateway key (sgk_...)", code="invalid_key:not_a_key")
        key = await self.authenticator.key(api_key)
        note_principal(scope, key)
        token, _ = await self._mint(key)
        await send_json(send, 200, {"bearer": token}, _NO_STORE)

    async def _bsg_refresh(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        presented = await self.authenticator.authenticate(scope["headers"])
        note_principal(scope, presented)
        if presented is None:
            raise Unauthorized("the bearer from /auth/login is required")
        key = await self._key_behind(presented)
        token, _ = await self._mint(key)
        await send_json(send, 200, {"bearer": token}, _NO_STORE)

    async def _key_behind(self, principal: Principal) -> Principal:
        """The key a gateway token was minted from (a key itself stands for itself), revocation checked."""
        if KEY_ID_CLAIM in principal.claims:
            return principal
        service = self._key_service()
        keys = [item[len(_KEY_ANCESTOR) :] for item in ancestors_of(principal) if item.startswith(_KEY_ANCESTOR)]
        if principal.issuer != "self" or principal.kind != "access" or not keys:
            raise Unauthorized(
                "only a bearer from this mount's /auth/login can be refreshed",
                code="invalid_token:not_from_key",
                token_presented=True,
            )
        key = await service.principal_of(keys[-1])
        if await service.tokens.is_revoked(key):
            raise Unauthorized("the gateway key has been revoked", code="invalid_key:revoked", token_presented=True)
        return key

    async def _smsportal(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        key = await self.authenticator.authenticate(scope["headers"])
        note_principal(scope, key)
        if key is None:
            raise Unauthorized("Basic authentication with a gateway key id and secret is required")
        if KEY_ID_CLAIM not in key.claims:
            raise Unauthorized("use Basic with a gateway key id (sgk_...) and its secret", code="invalid_key:not_a_key")
        token, ttl = await self._mint(key)
        await send_json(send, 200, {"token": token, "schema": "JWT", "expiresInMinutes": max(ttl // 60, 1)}, _NO_STORE)

    async def _regenerate(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """SMSGatewayCenter's regenerateAPIKey: rotates the calling gateway key (default overlap)."""
        body = await read_body(receive, MAX_BODY) if scope["method"] == "POST" else b""
        params = _form(scope.get("query_string", b"")) | _form(body)
        key = await self._regenerate_caller(scope, params)
        note_principal(scope, key)
        rotated = await self._key_service().rotate(key, str(key.claims[KEY_ID_CLAIM]))
        await _send_sgc_key(send, rotated.key.full, params.get("format", "plain").lower())

    async def _regenerate_caller(self, scope: Scope, params: Mapping[str, str]) -> Principal:
        principal = await self.authenticator.authenticate(scope["headers"])
        if principal is None:
            api_key = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"apikey"), None)
            if api_key is not None:
                principal = await self.authenticator.key(api_key.strip())
            elif "userId" in params and "password" in params:
                principal = await self.authenticator.key_pair(params["userId"], params["password"])
        if principal is None or KEY_ID_CLAIM not in principal.claims:
            raise Unauthorized("a gateway key (apiKey, or userId and password) is required", code="invalid_key:missing")
        return principal


def _form(raw: bytes) -> dict[str, str]:
    try:
        return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))
    except ValueError:
        raise BadRequest("malformed form parameters") from None


async def _send_sgc_key(send: Send, key: str, fmt: str) -> None:
    if fmt == "json":
        body = {"status": "success", "apiKey": key, "statusCode": "900", "reason": "success"}
        await send_json(send, 200, body, _NO_STORE)
        return
    if fmt == "xml":
        text = (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<generateApiKeySuccessResponse>'
            f"<apiKey>{escape(key)}</apiKey><reason>success</reason><status>success</status>"
            "<statusCode>900</statusCode></generateApiKeySuccessResponse>"
        )
        content_type = b"application/xml"
    else:
        text = f"status=success | apiKey={key} | statusCode=900 | reason=success"
        content_type = b"text/plain; charset=utf-8"
    payload = text.encode()
    headers = [(b"content-type", content_type), (b"content-length", str(len(payload)).encode())]
    headers += [(b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _parse_create(body: bytes) -> tuple[str, list[str], str, int | None, Narrowing | None]:
    """Validate `{"name", "scopes", "mode", "ttl", "sms"}`; anything else is a 400 naming the problem."""
    data = _object(body, '{"name": "crm", "scopes": ["messages:send"], "mode": "live"}')
    unknown = sorted(set(data) - {"name", "scopes", "mode", "ttl", "sms"})
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    name, scopes, mode, ttl = data.get("name", ""), data.get("scopes"), data.get("mode", "live"), data.get("ttl")
    if not isinstance(name, str):
        raise BadRequest("name must be a string")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise BadRequest("scopes must be a list of strings")
    if mode not in ("live", "test"):
        raise BadRequest("mode must be live or test")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool)):
        raise BadRequest("ttl must be an integer number of seconds")
    return name, scopes, mode, ttl, narrowing.parse(data.get("sms"))


def _parse_rotate(body: bytes) -> int | None:
    if not body.strip():
        return None
    data = _object(body, '{"overlap_s": 3600}')
    unknown = sorted(set(data) - {"overlap_s"})
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    overlap = data.get("overlap_s")
    if overlap is not None and (not isinstance(overlap, int) or isinstance(overlap, bool)):
        raise BadRequest("overlap_s must be an integer number of seconds")
    return overlap


def _object(body: bytes, example: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(f"body must be JSON like {example}") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    return data
