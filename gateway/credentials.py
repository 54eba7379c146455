"""Upstream credential injectors, shaped like httpx's auth flows.

An injector's `flow` is an async generator: it yields the request to send with its credentials
added, and receives the upstream's status code back. Static injectors yield once. A token exchange
(a later kind) yields a second time after a 401 to ask for one retry with a fresh token; the
forwarder honours that only when the request body can be replayed.

    Credentials
    ├── NoCredentials          `type: none`    nothing added
    └── StaticHeaders          fixed headers, computed once
        ├── BasicCredentials   `type: basic`   Authorization: Basic base64(user:password)
        └── HeaderCredentials  `type: header`  e.g. X-API-KEY: live_...

`header_names` and `query_names` tell the forwarder what to strip from the client's request (with
aliases) so the upstream receives exactly one credential, ours; `secret_values` feed log redaction.
"""

from __future__ import annotations

import base64
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

from .config import CredentialSettings, Secret
from .errors import LoadError
from .headers import normalize_header_name

__all__ = [
    "BasicCredentials",
    "Credentials",
    "HeaderCredentials",
    "NoCredentials",
    "OutgoingRequest",
    "StaticHeaders",
    "build_credentials",
]

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_UNSAFE_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(slots=True)
class OutgoingRequest:
    """What the forwarder is about to send; an injector edits it in place and yields it.

    `raw_query` is the client's query string, validated, minus the client's copies of `query_names`;
    `query` (None unless an injector adds parameters) is appended to it, percent-encoded.
    """

    method: str
    headers: list[tuple[str, str]]
    query: list[tuple[str, str]] | None = None
    raw_query: str = ""


class Credentials(ABC):
    """One upstream's way of authenticating; see the module docstring for the flow contract."""

    kind: ClassVar[str] = ""
    header_names: frozenset[str] = frozenset()
    query_names: frozenset[str] = frozenset()
    secret_values: tuple[str, ...] = ()

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


def _reveal(options: Mapping[str, object], key: str) -> str:
    value = options.get(key)
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, str):
        return value
    raise LoadError(f"credentials.{key} is required", key=f"credentials.{key}")


def _none(options: Mapping[str, object]) -> Credentials:
    return NoCredentials()


def _basic(options: Mapping[str, object]) -> Credentials:
    return BasicCredentials(_reveal(options, "username"), _reveal(options, "password"))


def _header(options: Mapping[str, object]) -> Credentials:
    headers = options.get("headers")
    if not isinstance(headers, Mapping):
        raise LoadError("credentials.headers must map header names to values", key="credentials.headers")
    return HeaderCredentials({str(name): _reveal(headers, name) for name in headers})


_BUILDERS: Mapping[str, Callable[[Mapping[str, object]], Credentials]] = MappingProxyType(
    {"none": _none, "basic": _basic, "header": _header}
)


def build_credentials(settings: CredentialSettings) -> Credentials:
    """The injector that `settings.kind` names, or LoadError for an unknown kind or bad options."""
    builder = _BUILDERS.get(settings.kind)
    if builder is None:
        raise LoadError(
            f"unknown credentials type {settings.kind!r}",
            key="credentials.type",
            hint="one of: " + ", ".join(_BUILDERS),
        )
    return builder(settings.options)
