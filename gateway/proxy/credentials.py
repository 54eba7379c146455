"""Upstream credential injectors, shaped like httpx's auth flows.

An injector's `flow` is an async generator: it yields the request to send with its credentials
added, and receives the upstream's status code back. Static injectors yield once. A token exchange
(`exchange.TokenExchange`) yields a second time after a 401 to ask for one retry with a fresh token;
the forwarder honours that only when the request body can be replayed (`OutgoingRequest.replayable`).

    Credentials
    ├── NoCredentials          `type: none`            nothing added
    ├── QueryCredentials       `type: query`           e.g. ?userId=...&password=... (replacing the client's)
    ├── StaticHeaders          fixed headers, computed once
    │   ├── BasicCredentials   `type: basic`           Authorization: Basic base64(user:password)
    │   └── HeaderCredentials  `type: header`          e.g. X-API-KEY: live_...
    └── TokenExchange          `type: token_exchange`  login → cached provider token (exchange.py)

`header_names` and `query_names` tell the forwarder what to strip from the client's request (with
aliases) so the upstream receives exactly one credential, ours; `secret_values` feed log redaction.
`credential_error` (any kind) names the 200 answer with which a provider says "bad credentials" in
its body (BSG's `{"error": 2}`), so the forwarder reports it as a 502 instead of a success.
"""

from __future__ import annotations

import base64
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar

from gateway.config.settings import CredentialSettings, Secret
from gateway.errors import LoadError
from gateway.proxy.headers import normalize_header_name

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from gateway.observe.metrics import Metrics
    from gateway.store.stores import Store

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

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_UNSAFE_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_MISSING = object()


@dataclass(slots=True)
class OutgoingRequest:
    """What the forwarder is about to send; an injector edits it in place and yields it.

    `raw_query` is the client's query string, validated, minus the client's copies of `query_names`;
    `query` (None unless an injector adds parameters) is appended to it, percent-encoded.
    `replayable` is False when the body is streamed: a retry after a 401 is then impossible.
    """

    method: str
    headers: list[tuple[str, str]]
    query: list[tuple[str, str]] | None = None
    raw_query: str = ""
    replayable: bool = True


def field_value(document: object, path: str) -> object:
    """The value at a dotted path (`result.token`) in decoded JSON; absent: a sentinel equal to no JSON value."""
    value = document
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


@dataclass(frozen=True, slots=True)
class CredentialErrorRule:
    """A provider's "bad credentials" answer hidden in a success: status `status`, JSON `field` == `equals`.

    BSG answers a bad API key with `200 {"error": 2, "errorDescription": "Invalid API key"}`; passing
    that on as a success would hide that the gateway's own credentials are broken.
    """

    status: int
    field: str
    equals: str | int | bool

    def matches(self, status: int, document: object) -> bool:
        if status != self.status:
            return False
        value = field_value(document, self.field)
        # JSON true is not 1: compare types as well as values
        return type(value) is type(self.equals) and value == self.equals

    @classmethod
    def from_options(cls, options: object) -> CredentialErrorRule | None:
        if options is None:
            return None
        if isinstance(options, CredentialErrorRule):
            return options
        key = "credentials.credential_error"
        if not isinstance(options, Mapping):
            raise LoadError("must map status, field and equals", key=key)
        status, field, equals = options.get("status", 200), options.get("field"), options.get("equals")
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise LoadError("status must be an HTTP status code", key=f"{key}.status")
        if not isinstance(field, str) or not field or "" in field.split("."):
            raise LoadError("field must be a dotted JSON path such as error or result.code", key=f"{key}.field")
        if not isinstance(equals, str | int | bool):
            raise LoadError("equals must be a string, integer or boolean", key=f"{key}.equals")
        return cls(status, field, equals)


class Credentials(ABC):
    """One upstream's way of authenticating; see the module docstring for the flow contract."""

    kind: ClassVar[str] = ""
    header_names: frozenset[str] = frozenset()
    query_names: frozenset[str] = frozenset()
    secret_values: tuple[str, ...] = ()
    credential_error: CredentialErrorRule | None = None

    @abstractmethod
    def flow(self, request: OutgoingRequest) -> AsyncGenerator[OutgoingRequest, int]:
        """Yield `request` with credentials added; receive the upstream status; maybe yield once more."""

    async def aclose(self) -> None:
        """Release what the injector holds (HTTP clients of a token exchange); static ones hold nothing."""
        return None

    def __repr__(self) -> str:
        names = ", ".join(sorted(self.header_names | self.query_names))
        return f"<{type(self).__name__} kind={self.kind!r} injects=[{names}]>"


class NoCredentials(Credentials):
    """`type: none`: the upstream needs no authentication (a sandbox, a LAN device)."""

    kind = "none"

    async def flow(self, request: OutgoingRequest) -> AsyncGenerator[OutgoingRequest, int]:
        yield request


class StaticHeaders(Credentials):
    """Headers fixed at startup, appended to every request."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        if not headers:
            raise LoadError("credentials need at least one header", key="credentials.headers")
        seen: dict[str, str] = {}
        for name, value in headers.items():
            if not _TOKEN.fullmatch(name):
                raise LoadError(f"not a valid header name: {name!r}", key="credentials.headers")
            if _UNSAFE_VALUE.search(value) or value != value.strip() or not value:
                # Never echo the value: it is a secret.
                raise LoadError(
                    f"the value of header {name!r} is empty, padded or contains control characters",
                    key=f"credentials.headers.{name}",
                )
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

    def __init__(self, username: str, password: str) -> None:
        if not username or ":" in username:
            raise LoadError("a Basic username must be non-empty and contain no ':'", key="credentials.username")
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        super().__init__({"Authorization": f"Basic {token}"})
        self.secret_values = tuple(v for v in (password, username, token) if v)


class HeaderCredentials(StaticHeaders):
    """`type: header`: static API-key headers (BSG `X-API-KEY`, SMSGatewayCenter `apiKey`)."""

    kind = "header"


class QueryCredentials(Credentials):
    """`type: query`: static query parameters (SMSGatewayCenter `userId`/`password`).

    The forwarder drops the client's own copies of these names (any case) before the injected ones are
    appended, so the upstream sees each exactly once, ours.
    """

    kind = "query"

    def __init__(self, params: Mapping[str, str]) -> None:
        if not params:
            raise LoadError("query credentials need at least one parameter", key="credentials.params")
        seen: set[str] = set()
        for name, value in params.items():
            if not _TOKEN.fullmatch(name):
                raise LoadError(f"not a valid parameter name: {name!r}", key="credentials.params")
            if name.lower() in seen:
                raise LoadError(
                    f"parameter {name!r} is given twice (names are compared without case)", key="credentials.params"
                )
            seen.add(name.lower())
            if not value or _UNSAFE_VALUE.search(value):
                raise LoadError(
                    f"the value of parameter {name!r} is empty or contains control characters",
                    key=f"credentials.params.{name}",
                )
        self._params: tuple[tuple[str, str], ...] = tuple(params.items())
        self.query_names = frozenset(seen)
        self.secret_values = tuple(value for _, value in self._params)

    async def flow(self, request: OutgoingRequest) -> AsyncGenerator[OutgoingRequest, int]:
        request.query = [*(request.query or ()), *self._params]
        yield request


def _reveal(options: Mapping[str, object], key: str) -> str:
    """A secret (or plain string) option's value; LoadError when it is missing."""
    value = options.get(key)
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, str):
        return value
    raise LoadError(f"credentials.{key} is required", key=f"credentials.{key}")


@dataclass(frozen=True, slots=True)
class _Context:
    """What some injectors need beyond their options: the upstream's name, the shared Store, logs, metrics."""

    name: str
    store: Store | None
    log: FilteringBoundLogger | None = None
    metrics: Metrics | None = None


def _none(options: Mapping[str, object], context: _Context) -> Credentials:
    return NoCredentials()


def _basic(options: Mapping[str, object], context: _Context) -> Credentials:
    return BasicCredentials(_reveal(options, "username"), _reveal(options, "password"))


def _header(options: Mapping[str, object], context: _Context) -> Credentials:
    headers = options.get("headers")
    if not isinstance(headers, Mapping):
        raise LoadError("credentials.headers must map header names to values", key="credentials.headers")
    return HeaderCredentials({str(name): _reveal(headers, name) for name in headers})


def _query(options: Mapping[str, object], context: _Context) -> Credentials:
    params = options.get("params")
    if not isinstance(params, Mapping):
        raise LoadError("credentials.params must map parameter names to values", key="credentials.params")
    return QueryCredentials({str(name): _reveal(params, name) for name in params})


def _token_exchange(options: Mapping[str, object], context: _Context) -> Credentials:
    from gateway.proxy.exchange import TokenExchange, exchange_settings

    return TokenExchange(
        exchange_settings(options), name=context.name, store=context.store, log=context.log, metrics=context.metrics
    )


_BUILDERS: Mapping[str, Callable[[Mapping[str, object], _Context], Credentials]] = MappingProxyType(
    {"none": _none, "basic": _basic, "header": _header, "query": _query, "token_exchange": _token_exchange}
)


def build_credentials(
    settings: CredentialSettings,
    *,
    name: str = "upstream",
    store: Store | None = None,
    log: FilteringBoundLogger | None = None,
    metrics: Metrics | None = None,
) -> Credentials:
    """The injector that `settings.kind` names, or LoadError for an unknown kind or bad options.

    `name` (the upstream's) keys a token exchange's cache and login lock in `store`, which is shared by
    every gateway process on the same Redis; without a store a token exchange keeps a private one.
    A token exchange reports logins on `log` (the gateway's `smsguard.upstream` logger) and `metrics`.
    """
    builder = _BUILDERS.get(settings.kind)
    if builder is None:
        raise LoadError(
            f"unknown credentials type {settings.kind!r}",
            key="credentials.type",
            hint="one of: " + ", ".join(_BUILDERS),
        )
    credentials = builder(settings.options, _Context(name, store, log, metrics))
    credentials.credential_error = CredentialErrorRule.from_options(settings.options.get("credential_error"))
    return credentials
