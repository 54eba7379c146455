"""Token exchange: the gateway logs in to the upstream, caches the provider's token, and sends it.

    flow(request)
      token ← this process's copy, else the Store's, else one login per upstream
              (an asyncio lock in the process, then the Store's lock across processes; re-checked inside)
      yield request + `Authorization: Bearer {token}`                  ─► upstream status
      401 → the token is dropped (the Store's copy only while it is still that token), one fresh token,
            yield again: only for a replayable body; a streamed one gets a 502 and is never resent

Tokens are renewed `margin_s` before they expire (at half-life when they live less than twice the
margin): through the refresh request when one is configured (BSG `/api/auth/refresh`), else, or when
that fails, by logging in again. A failed login is remembered for `failure_cooldown_s`, so a burst of
requests against a provider that refuses the gateway's key costs one login, not one per request.

Login calls are control plane: httpx, no proxies from the environment, no redirects, a timeout, and a
bounded answer. Secrets and tokens never reach a log line or an error message; Store keys carry the
upstream's name only (`uptoken:{name}`, `login:{name}`).

Logged on the `smsguard.upstream` logger: `upstream.login` (kind login|refresh, expires_in_s),
`upstream.login_failed`, `upstream.credential_failure` (the upstream refused the gateway's token) and
`upstream.store_unavailable` (the store is down: this process logs in and caches on its own meanwhile,
never a 500); counted in `smsguard_upstream_token_logins_total` and
`smsguard_upstream_token_cache_hits_total` when the gateway's `Metrics` are given.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import re
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, cast
from urllib.parse import quote

import httpx
import jwt

from gateway.config.credentials import BasicPair, LoginRequest, RefreshRequest, TokenExchangeSettings, field_value
from gateway.config.fields import Secret, secrets_in
from gateway.errors import BadGateway, GatewayTimeout, HTTPError, StoreUnavailable
from gateway.observe.logs import Redactor, make_logger
from gateway.observe.tracing import SpanLike
from gateway.proxy.injector import Credentials, OutgoingRequest
from gateway.store import MemoryStore, Store
from gateway.store.base import backend_errors
from gateway.web import jsonbody

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from gateway.observe.metrics import Metrics

__all__ = ["MAX_LOGIN_ANSWER_BYTES", "ProviderToken", "TokenExchange"]

MAX_LOGIN_ANSWER_BYTES = 64 * 1024
_TOKEN_VALUE = re.compile(r"[\x21-\x7e]{1,8192}")  # visible ASCII: safe inside a header value


def _store_errors() -> tuple[type[BaseException], ...]:
    """A failed store call: the backend's errors (evaluated when matching) and StoreUnavailable."""
    return (*backend_errors(), StoreUnavailable)


@dataclass(frozen=True, slots=True)
class ProviderToken:
    """A provider token with its expiry and the moment it is due for renewal (unix seconds)."""

    value: str
    expires_at: float
    renew_at: float
    guessed: bool = False  # the lifetime is the configured fallback: a 401 means it expired
    ident: str | None = None  # the provider's id for it (SMSGate's jti), to revoke it
    from_exp: bool = False  # the expiry is the JWT's own `exp` (exact; not stored, known only at login)

    def usable(self, now: float) -> bool:
        return now < self.renew_at

    def alive(self, now: float) -> bool:
        return now < self.expires_at

    def dump(self) -> bytes:
        data = {"t": self.value, "e": self.expires_at, "r": self.renew_at, "g": self.guessed, "i": self.ident}
        return json.dumps(data).encode()

    @classmethod
    def load(cls, raw: bytes) -> ProviderToken | None:
        try:
            data = json.loads(raw)
            ident = data.get("i")
            return cls(
                str(data["t"]),
                float(data["e"]),
                float(data["r"]),
                bool(data.get("g", False)),
                ident if isinstance(ident, str) else None,
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None  # written by another version: treat as absent

    def __repr__(self) -> str:
        return f"ProviderToken(value='**********', expires_at={self.expires_at}, renew_at={self.renew_at})"


def _reveal(value: object) -> object:
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, Mapping):
        return {str(k): _reveal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_reveal(v) for v in value]
    return value


def _basic_value(pair: BasicPair) -> str:
    raw = f"{pair.username.reveal()}:{pair.password.reveal()}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


# -------------------------------------------------------------------------------------------- injector


class TokenExchange(Credentials):
    """`type: token_exchange` (and the bsg_v2, smsportal, smsgate_jwt presets); see the module docstring."""

    kind = "token_exchange"

    def __init__(
        self,
        settings: TokenExchangeSettings,
        *,
        name: str,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
        log: FilteringBoundLogger | None = None,
        metrics: Metrics | None = None,
        scopes: Sequence[str] = (),
    ) -> None:
        """`scopes` (derived from the policy) replace the login body's `scopes` when `settings.policy_scopes`."""
        self.settings = settings
        self.name = name
        self.header_names = frozenset({settings.header.lower()})
        self.refused = frozenset(settings.refused_statuses)
        self.mode = settings.mode
        self.notices = settings.notices
        self.scopes = tuple(scopes)
        self._revoking: set[asyncio.Task[None]] = set()
        login = settings.login
        secrets = secrets_in(login.json)
        if login.basic is not None:
            secrets += [*secrets_in(login.basic), _basic_value(login.basic).removeprefix("Basic ")]
        self.secret_values = tuple(dict.fromkeys(secrets))
        self.credential_error = settings.credential_error
        self._store: Store = store if store is not None else MemoryStore()
        self._key = f"uptoken:{name}"
        self._lock_name = f"login:{name}"
        self._lock_ttl_s = 2 * settings.timeout_s + 5  # a refresh and a login, with room to spare
        self._clock = clock
        self._client: httpx.AsyncClient | None = None
        self._local: ProviderToken | None = None
        self._mutex = asyncio.Lock()
        self._failure: tuple[float, HTTPError] | None = None
        self.logins = 0  # requests made by this process, for tests and metrics
        self.refreshes = 0
        if log is None:  # the stdlib logger smsguard.upstream, redacting this injector's secrets
            log = make_logger("smsguard.upstream", redactor=Redactor(self.secret_values, self.header_names))
        self._log = log
        self._metrics = metrics
        self._hits = metrics.token_cache_hits.labels(name) if metrics is not None else None

    # ---------------------------------------------------------------------------------------- the flow

    async def flow(self, request: OutgoingRequest) -> AsyncGenerator[OutgoingRequest, int]:
        token = await self.token()
        index = len(request.headers)
        request.headers.append((self.settings.header, self._render(token.value)))
        status = yield request
        if status != 401:
            return
        if token.guessed:  # its lifetime was assumed (BSG v2 bearers carry none): the provider says it is over
            self._log.info("upstream.token_expired", upstream=self.name, cause="lifetime_assumed", resent=True)
        if not request.replayable:
            await self.drop(token)
            self._log.error(
                "upstream.credential_failure",
                upstream=self.name,
                cause="token_refused",
                resent=False,
                upstream_status=401,
            )
            raise BadGateway(
                "the upstream refused the gateway's token and the streamed request body cannot be replayed; "
                "send the request again",
                code="upstream_credentials",
            )
        fresh = await self.token(stale=token.value)
        request.headers[index] = (self.settings.header, self._render(fresh.value))
        status = yield request
        if status == 401:
            await self.drop(fresh)
            self._log.error(
                "upstream.credential_failure", upstream=self.name, cause="fresh_token_refused", upstream_status=401
            )
            raise BadGateway("upstream rejected the gateway's credentials", code="upstream_credentials")

    def _render(self, token: str) -> str:
        return self.settings.format.replace("{token}", token)

    # --------------------------------------------------------------------------------------- the cache

    async def token(self, *, stale: str | None = None) -> ProviderToken:
        """A usable provider token; `stale` is one the upstream just refused, never handed out again."""
        local = self._local
        if local is not None and local.value != stale and local.usable(self._clock()):
            if self._hits is not None:
                self._hits.inc()
            return local
        async with self._mutex:  # one coroutine per process goes on; the others find its result
            now = self._clock()
            local = self._local
            if local is not None and local.value != stale and local.usable(now):
                if self._hits is not None:
                    self._hits.inc()
                return local
            if self._failure is not None and now < self._failure[0] + self.settings.failure_cooldown_s:
                error = self._failure[1]
                raise type(error)(error.message, code=error.code)
            cached = await self._load()
            if cached is not None and cached.value != stale and cached.usable(now):
                self._local = cached
                if self._hits is not None:
                    self._hits.inc()
                return cached
            token = await self._renew(stale)
            self._local = token
            return token

    async def drop(self, token: ProviderToken) -> None:
        """Forget a token the upstream refused: here, and in the Store if it still holds that very token."""
        if self._local is not None and self._local.value == token.value:
            self._local = None
        self.revoke_later(token, "refused")
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(
                    self._store.lock(self._lock_name, ttl_s=self._lock_ttl_s, wait_s=self._lock_ttl_s)
                )
            except TimeoutError:
                return  # the holder is renewing it anyway
            except _store_errors() as exc:
                self._store_unavailable("lock", exc)
            cached = await self._load()
            if cached is not None and cached.value == token.value:
                with contextlib.suppress(*_store_errors()):
                    await self._store.delete(self._key)

    async def _renew(self, stale: str | None) -> ProviderToken:
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(
                    self._store.lock(self._lock_name, ttl_s=self._lock_ttl_s, wait_s=self._lock_ttl_s)
                )
            except TimeoutError:
                self._log.error(
                    "upstream.login_failed",
                    upstream=self.name,
                    kind="login",
                    code="upstream_login_timeout",
                    cause="timed out waiting for another gateway's login",
                )
                raise GatewayTimeout(
                    "timed out waiting for the gateway's login to the upstream", code="upstream_login_timeout"
                ) from None
            except _store_errors() as exc:
                self._store_unavailable("lock", exc)
            cached = await self._load()  # another process may have renewed it while we waited
            now = self._clock()
            if cached is not None and cached.value != stale and cached.usable(now):
                return cached
            previous = next(
                (t for t in (cached, self._local) if t is not None and t.value != stale and t.alive(now)), None
            )
            token = await self._obtain(previous)
            await self._save(token)
            for old in (cached, self._local):
                if old is not None and old.value != token.value and old.alive(now):
                    self.revoke_later(old, "superseded")
                    break
            return token

    async def _load(self) -> ProviderToken | None:
        try:
            raw = await self._store.get(self._key)
        except _store_errors() as exc:
            self._store_unavailable("read", exc)
            return None
        return None if raw is None else ProviderToken.load(raw)

    async def _save(self, token: ProviderToken) -> None:
        ttl_s = token.expires_at - self._clock()
        if ttl_s <= 0:
            return
        try:
            await self._store.set(self._key, token.dump(), ttl_s)
        except _store_errors() as exc:
            self._store_unavailable("write", exc)

    # ----------------------------------------------------------------------------------- login, refresh

    async def _obtain(self, previous: ProviderToken | None) -> ProviderToken:
        refresh = self.settings.refresh
        if previous is not None and refresh is not None:
            try:
                self.refreshes += 1
                token = await self._call(refresh, "refresh", bearer=previous.value)
            except HTTPError as exc:
                self._login_failed("refresh", exc, "warning")  # then log in again
            else:
                self._logged_in("refresh", token)
                return token
        try:
            self.logins += 1
            token = await self._call(self.settings.login, "login")
            if self.settings.expiry.reissue_window_s is not None and not (token.guessed or token.from_exp):
                token = await self._reissued(token)
        except HTTPError as exc:
            self._login_failed("login", exc, "error")
            self._failure = (self._clock(), exc)
            raise
        self._failure = None
        self._logged_in("login", token)
        return token

    async def _reissued(self, token: ProviderToken) -> ProviderToken:
        """A token from a provider that hands back the same token for `reissue_window_s` after first issuing
        it (SMSPortal: 23 h of a 24 h life), with an expiry that never overestimates its life.

        Per token (a digest of it, never the token) the store keeps the earliest moment it can have been
        issued: the time of the last login that answered a *different* token (it was issued after that),
        else `reissue_window_s` ago (it may have been issued that long ago, by another client or before a
        restart). Every login answering it again raises that bound to now - window. A token whose expiry
        came from the JWT's own `exp` skips this (`_obtain` calls it only for field-based lifetimes).
        """
        window = cast(float, self.settings.expiry.reissue_window_s)
        now = self._clock()
        lifetime = token.expires_at - now
        digest = hashlib.sha256(token.value.encode()).hexdigest()[:32]
        record_key, last_key = f"upissued:{self.name}:{digest}", f"uplast:{self.name}"
        recorded = _number(await self._get(record_key))
        if recorded is None:
            last = await self._get(last_key)
            last_digest, _, last_at = (last or b"").decode("ascii", "replace").partition(" ")
            seen = _number(last_at.encode()) if last_digest and last_digest != digest else None
            recorded = seen if seen is not None else now - window
        issued_after = max(recorded, now - window)
        keep_s = lifetime + window
        await self._put(record_key, repr(issued_after).encode(), keep_s)
        await self._put(last_key, f"{digest} {now!r}".encode(), keep_s)
        expires_at = min(token.expires_at, issued_after + lifetime)
        remaining = expires_at - now
        renew_at = expires_at - min(self.settings.margin_s, remaining / 2)
        return ProviderToken(token.value, expires_at, renew_at, token.guessed, token.ident)

    async def _get(self, key: str) -> bytes | None:
        try:
            return await self._store.get(key)
        except _store_errors() as exc:
            self._store_unavailable("read", exc)
            return None

    async def _put(self, key: str, value: bytes, ttl_s: float) -> None:
        try:
            await self._store.set(key, value, ttl_s)
        except _store_errors() as exc:
            self._store_unavailable("write", exc)

    # ------------------------------------------------------------------------------------ revocation

    def revoke_later(self, token: ProviderToken, why: str) -> None:
        """Revoke a token the gateway stops using (superseded or refused), in the background, best-effort."""
        if self.settings.revoke is None or token.ident is None:
            return
        task = asyncio.get_running_loop().create_task(self._revoke(token.ident, why))
        self._revoking.add(task)
        task.add_done_callback(self._revoking.discard)

    async def _revoke(self, ident: str, why: str) -> None:
        spec = self.settings.revoke
        assert spec is not None
        headers = {"Authorization": _basic_value(spec.basic)} if spec.basic is not None else {}
        url = spec.url.replace("{id}", quote(ident, safe=""))
        try:
            response = await self._http().request(spec.method, url, headers=headers)
            status: int | str = response.status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        ok = isinstance(status, int) and (200 <= status < 300 or status == 404)
        log = self._log.info if ok else self._log.warning
        log(
            "upstream.token_revoked" if ok else "upstream.token_revoke_failed",
            upstream=self.name,
            why=why,
            upstream_status=status,
        )

    def _logged_in(self, kind: str, token: ProviderToken) -> None:
        if self._metrics is not None:
            self._metrics.upstream_login(self.name, kind, "ok")
        expires_in = round(token.expires_at - self._clock(), 1)
        self._log.info("upstream.login", upstream=self.name, kind=kind, expires_in_s=expires_in)

    def _login_failed(self, kind: str, exc: HTTPError, level: str) -> None:
        if self._metrics is not None:
            self._metrics.upstream_login(self.name, kind, "failed")
        log = self._log.warning if level == "warning" else self._log.error
        log("upstream.login_failed", upstream=self.name, kind=kind, code=exc.code, cause=exc.message)

    def _store_unavailable(self, what: str, exc: BaseException) -> None:
        self._log.warning("upstream.store_unavailable", upstream=self.name, operation=what, error=type(exc).__name__)

    async def _call(
        self, spec: LoginRequest | RefreshRequest, what: str, *, bearer: str | None = None
    ) -> ProviderToken:
        attributes = {"smsguard.upstream": self.name, "http.request.method": spec.method}
        with self.tracer.child(f"upstream {what}", attributes, client=True) as span:
            status, body = await self._send(spec, what, bearer, span)
            span.set_attribute("http.response.status_code", status)
        if not 200 <= status < 300:
            raise _failed(what, f"the upstream answered HTTP {status}")
        try:
            document = jsonbody.loads(body)
        except jsonbody.TooDeep as exc:
            raise _failed(what, f"its answer is {exc}") from None
        except ValueError:
            raise _failed(what, "its answer is not JSON") from None
        rule = self.settings.credential_error
        if rule is not None and rule.matches(status, document):
            raise _failed(what, f"the upstream rejected the gateway's credentials ({rule.describe()})")
        return self._token_of(document, what)

    def _request(self, spec: LoginRequest | RefreshRequest, bearer: str | None) -> tuple[dict[str, str], bytes | None]:
        """The headers and body of a login or refresh (the policy's scopes in place of the login's own)."""
        headers = {"Accept": "application/json"}
        if spec.basic is not None:
            headers["Authorization"] = _basic_value(spec.basic)
        if bearer is not None:
            headers[self.settings.header] = self._render(bearer)
        if spec.json is None:
            return headers, None
        payload = cast(dict[str, object], _reveal(spec.json))
        if self.settings.policy_scopes and isinstance(spec, LoginRequest):
            payload["scopes"] = list(self.scopes)
        headers["Content-Type"] = "application/json"
        return headers, json.dumps(payload).encode()

    async def _send(
        self, spec: LoginRequest | RefreshRequest, what: str, bearer: str | None, span: SpanLike
    ) -> tuple[int, bytes]:
        """The status and (bounded) body of the login or refresh answer; 504 on a timeout, 502 otherwise.
        The request carries the login's span as its traceparent (tracing on)."""
        headers, content = self._request(spec, bearer)
        headers.update(self.tracer.headers(span))
        try:
            async with self._http().stream(spec.method, spec.url, headers=headers, content=content) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_LOGIN_ANSWER_BYTES:
                        raise _failed(what, "its answer is too large")
                return response.status_code, bytes(body)
        except httpx.TimeoutException:
            raise GatewayTimeout(
                f"the upstream's {what} endpoint did not answer in time", code="upstream_login_timeout"
            ) from None
        except httpx.HTTPError as exc:
            raise _failed(what, f"the request failed ({type(exc).__name__})") from None

    def _token_of(self, document: object, what: str) -> ProviderToken:
        """The token in a login or refresh answer, with its expiry, renewal time and (to revoke it) its id."""
        value = field_value(document, self.settings.token_field)
        if not isinstance(value, str) or not _TOKEN_VALUE.fullmatch(value):
            raise _failed(what, f"its answer has no usable token in {self.settings.token_field!r}")
        now = self._clock()
        expires_at, source = self._expires_at(document, value, now, what)
        lifetime = expires_at - now
        if not 0 < lifetime < math.inf:
            raise _failed(what, "the upstream issued a token that has already expired")
        ident = None
        if self.settings.revoke is not None:
            found = field_value(document, self.settings.revoke.id_field)
            ident = found if isinstance(found, str) and found else None
        renew_at = expires_at - min(self.settings.margin_s, lifetime / 2)
        return ProviderToken(value, expires_at, renew_at, source == "guess", ident, source == "exp")

    def _expires_at(self, document: object, token: str, now: float, what: str) -> tuple[float, str]:
        """The token's expiry and where it came from: `exp`, `field`, `ttl`, or `guess` (the `ttl_s`
        fallback of `jwt_exp`: the provider said nothing)."""
        expiry = self.settings.expiry
        if expiry.jwt_exp:
            exp = _jwt_exp(token)
            if exp is not None:
                return exp, "exp"
            if expiry.ttl_s is not None:
                return now + expiry.ttl_s, "guess"
            if expiry.field is None:
                raise _failed(what, "the token is not a JWT or has no numeric exp claim")
        elif expiry.ttl_s is not None:
            return now + expiry.ttl_s, "ttl"
        return self._field_expiry(document, now, what), "field"

    def _field_expiry(self, document: object, now: float, what: str) -> float:
        expiry = self.settings.expiry
        field = cast(str, expiry.field)
        raw = field_value(document, field)
        if expiry.unit == "iso8601":
            try:
                moment = datetime.fromisoformat(cast(str, raw).replace("Z", "+00:00"))
            except (AttributeError, TypeError, ValueError):
                raise _failed(what, f"{field!r} is not an ISO 8601 time") from None
            if moment.tzinfo is None:
                raise _failed(what, f"{field!r} has no time zone")
            return moment.timestamp()
        try:
            number = float(cast(str, raw)) if isinstance(raw, int | float | str) and not isinstance(raw, bool) else None
        except ValueError:
            number = None
        if number is None or not math.isfinite(number):
            raise _failed(what, f"{field!r} is not a number")
        if expiry.unit == "unix":
            return number
        return now + number * (60 if expiry.unit == "minutes" else 1)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                trust_env=False, follow_redirects=False, timeout=httpx.Timeout(self.settings.timeout_s)
            )
        return self._client

    async def aclose(self) -> None:
        if self._revoking:  # best-effort revocations get their chance, bounded by the login timeout
            await asyncio.wait(set(self._revoking), timeout=self.settings.timeout_s)
            for task in self._revoking:
                task.cancel()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def _jwt_exp(token: str) -> float | None:
    """The numeric `exp` of a JWT, read without verifying it (the provider's own token); None otherwise."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool) or not math.isfinite(exp):
        return None
    return float(exp)


def _number(raw: bytes | None) -> float | None:
    try:
        value = float(raw) if raw else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _failed(what: str, reason: str) -> BadGateway:
    """The client-facing error: what failed and why, never a URL, a body, a secret or a token."""
    return BadGateway(
        f"the gateway could not {'log in to' if what == 'login' else what + ' its token at'} the upstream: {reason}",
        code="upstream_login_failed",
    )
