"""Upstream credential injectors, built from the typed credential settings (`gateway/config/credentials.py`).

    Credentials                (injector.py: the flow contract)
    ├── NoCredentials          `type: none`            nothing added
    ├── QueryCredentials       `type: query`           e.g. ?userId=...&password=... (replacing the client's)
    ├── StaticHeaders          fixed headers, computed once
    │   ├── BasicCredentials   `type: basic`           Authorization: Basic base64(user:password)
    │   └── HeaderCredentials  `type: header`          e.g. X-API-KEY: live_...
    └── TokenExchange          `type: token_exchange`  login → cached provider token (exchange.py)

The settings are checked when they are built (names, values, their shape); an injector only adds what
it must know of upstreams: header spellings that alias-folding upstreams read as one are refused.
`credential_error` (any kind) names the 200 answer with which a provider says "bad credentials" in
its body (BSG's `{"error": 2}`), so the forwarder reports it as a 502 instead of a success.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import TYPE_CHECKING

from gateway.config.credentials import (
    BasicCredentialSettings,
    CredentialErrorRule,
    CredentialSettings,
    HeaderCredentialSettings,
    NoneCredentialSettings,
    QueryCredentialSettings,
    TokenExchangeSettings,
    field_value,
)
from gateway.errors import LoadError
from gateway.proxy.exchange import TokenExchange
from gateway.proxy.headers import normalize_header_name
from gateway.proxy.injector import Credentials, OutgoingRequest
from gateway.proxy.params import append_params, param_names

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from gateway.observe.metrics import Metrics
    from gateway.store import Store

__all__ = [
    "BasicCredentials",
    "CredentialErrorRule",
    "Credentials",
    "HeaderCredentials",
    "NoCredentials",
    "OutgoingRequest",
    "QueryCredentials",
    "StaticHeaders",
    "build_credentials",
    "field_value",
]


class NoCredentials(Credentials):
    """`type: none`: the upstream needs no authentication (a sandbox, a LAN device)."""

    kind = "none"
    refused: frozenset[int] = frozenset()  # no credential of the gateway's: the upstream's 401 is the client's
    response_drop: frozenset[bytes] = frozenset()  # nothing of the gateway's to protect: pass everything

    async def flow(self, request: OutgoingRequest) -> AsyncGenerator[OutgoingRequest, int]:
        yield request


class StaticHeaders(Credentials):
    """Headers fixed at startup (names and values already checked by the settings), appended to every request."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        seen: dict[str, str] = {}
        for name in headers:
            alias = normalize_header_name(name)
            if alias in seen:
                raise LoadError(
                    f"headers {seen[alias]!r} and {name!r} are the same header to many upstreams",
                    key="credentials.headers",
                    hint="keep one spelling",
                )
            seen[alias] = name
        self._headers: tuple[tuple[str, str], ...] = tuple(headers.items())
        self.header_names = frozenset(name.lower() for name in headers)
        self.secret_values = tuple(value for _, value in self._headers)

    async def flow(self, request: OutgoingRequest) -> AsyncGenerator[OutgoingRequest, int]:
        request.headers.extend(self._headers)
        yield request


class BasicCredentials(StaticHeaders):
    """`type: basic`: RFC 7617 Basic with UTF-8 (SMSGate cloud and Local Server, SMSPortal)."""

    kind = "basic"

    def __init__(self, settings: BasicCredentialSettings) -> None:
        username, password = settings.username.reveal(), settings.password.reveal()
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        super().__init__({"Authorization": f"Basic {token}"})
        self.secret_values = tuple(v for v in (password, username, token) if v)


def _add_params(request: OutgoingRequest, params: list[tuple[str, str]], *, in_form: bool) -> None:
    """Append `params` to the form body (when `in_form` and the request carries a form) or else the query."""
    if not params:
        return
    if in_form and request.form is not None:
        request.form = append_params(request.form, params)
    else:
        request.query = [*(request.query or ()), *params]


def _missing_defaults(request: OutgoingRequest, defaults: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """The `defaults` whose name (any case) the client gave neither in the query nor in a form body."""
    if not defaults:
        return []
    given = param_names(request.raw_query) | param_names(request.form or "")
    return [(name, value) for name, value in defaults if name.lower() not in given]


class HeaderCredentials(StaticHeaders):
    """`type: header`: static API-key headers (BSG `X-API-KEY`, SMSGatewayCenter `apiKey`).

    `strip_params` are dropped from the client's query and form body too (SMSGatewayCenter's `userId` and
    `password`: one credential at a time); `defaults` fill in parameters the client left out (`format`).
    """

    kind = "header"

    def __init__(self, settings: HeaderCredentialSettings) -> None:
        super().__init__({name: value.reveal() for name, value in settings.headers.items()})
        self.query_names = frozenset(name.lower() for name in settings.strip_params)
        self._defaults = tuple(settings.defaults.items())
        self.mode = settings.mode
        self.notices = settings.notices

    async def flow(self, request: OutgoingRequest) -> AsyncGenerator[OutgoingRequest, int]:
        request.headers.extend(self._headers)
        _add_params(request, _missing_defaults(request, self._defaults), in_form=True)
        yield request


class QueryCredentials(Credentials):
    """`type: query`: static parameters (SMSGatewayCenter `userId`/`password`).

    The forwarder drops the client's own copies of these names and of `strip_params` (any case, from the
    query and from a form body) before the injected ones are added, so the upstream sees each exactly
    once, ours; `strip_headers` (SMSGatewayCenter's `apiKey`) are dropped from the client's headers. With
    `form_body` the parameters (and `defaults`) go into a form-encoded body when the request has one,
    where the provider's POST samples put them, else into the query.
    """

    kind = "query"

    def __init__(self, settings: QueryCredentialSettings) -> None:
        self._params: tuple[tuple[str, str], ...] = tuple((k, v.reveal()) for k, v in settings.params.items())
        self.query_names = frozenset(name.lower() for name in (*settings.params, *settings.strip_params))
        self.header_names = frozenset(name.lower() for name in settings.strip_headers)
        self.secret_values = tuple(value for _, value in self._params)
        self._defaults = tuple(settings.defaults.items())
        self._in_form = settings.form_body

    async def flow(self, request: OutgoingRequest) -> AsyncGenerator[OutgoingRequest, int]:
        _add_params(request, [*self._params, *_missing_defaults(request, self._defaults)], in_form=self._in_form)
        yield request


def build_credentials(
    settings: CredentialSettings,
    *,
    name: str = "upstream",
    store: Store | None = None,
    log: FilteringBoundLogger | None = None,
    metrics: Metrics | None = None,
    scopes: Sequence[str] | None = None,
) -> Credentials:
    """The injector for `settings`' kind (LoadError for header spellings upstreams would confuse).

    `name` (the upstream's) keys a token exchange's cache and login lock in `store`, which is shared by
    every gateway process on the same Redis; without a store a token exchange keeps a private one.
    A token exchange reports logins on `log` (the gateway's `smsguard.upstream` logger) and `metrics`;
    `scopes` are the provider scopes the policy needs (the smsgate_jwt preset's login asks for them; None:
    no policy is known, and such a login asks for SMSGate's `all:any`).
    """
    credentials: Credentials
    if isinstance(settings, TokenExchangeSettings):
        if settings.policy_scopes and scopes is not None and not scopes:
            raise LoadError(
                f"upstream {name!r}: no policy rule for it requires a scope, so there is nothing to ask the "
                "provider's token for",
                key="credentials.scopes",
                hint="give scopes: [...] explicitly",
            )
        asked = ("all:any",) if scopes is None else scopes
        return TokenExchange(settings, name=name, store=store, log=log, metrics=metrics, scopes=asked)
    if isinstance(settings, BasicCredentialSettings):
        credentials = BasicCredentials(settings)
    elif isinstance(settings, HeaderCredentialSettings):
        credentials = HeaderCredentials(settings)
    elif isinstance(settings, QueryCredentialSettings):
        credentials = QueryCredentials(settings)
    else:
        assert isinstance(settings, NoneCredentialSettings)
        credentials = NoCredentials()
    credentials.credential_error = settings.credential_error
    return credentials
