"""How the gateway authenticates to an upstream: one frozen settings class per credential kind.

    credentials: {type: none}                         NoneCredentialSettings
    credentials: {type: basic, username, password}    BasicCredentialSettings
    credentials: {type: header, headers: {...}}       HeaderCredentialSettings
    credentials: {type: query, params: {...}}         QueryCredentialSettings
    credentials: {type: token_exchange, login, ...}   TokenExchangeSettings

A provider preset (`gateway/config/presets.py`) expands into one of these. Names and values are checked
here, once, so the injectors in `gateway/proxy/` only read them. `credential_error` (any kind but none)
names the 200 answer with which a provider says "bad credentials" in its body.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Literal, TypeAlias
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo, WithJsonSchema, model_validator
from pydantic.dataclasses import dataclass
from pydantic.json_schema import SkipJsonSchema

from gateway.config.fields import (
    CONFIG,
    HEADER_NAME,
    Bool,
    Finite,
    Secret,
    SecretText,
    Str,
    Text,
    Texts,
    fail,
    interpolate,
    secrets_in,
)

__all__ = [
    "CREDENTIAL_KINDS",
    "BasicCredentialSettings",
    "BasicPair",
    "CredentialErrorRule",
    "CredentialSettings",
    "Expiry",
    "HeaderCredentialSettings",
    "LoginRequest",
    "NoneCredentialSettings",
    "QueryCredentialSettings",
    "RefreshRequest",
    "RevokeRequest",
    "TokenExchangeSettings",
    "field_value",
]

CREDENTIAL_KINDS: tuple[str, ...] = ("none", "basic", "header", "query", "token_exchange")
LOGIN_METHODS = ("GET", "POST", "PUT", "PATCH")
EXPIRY_UNITS = ("seconds", "minutes", "unix", "iso8601")
_JSON_PATH = re.compile(r"[^.]+(?:\.[^.]+)*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # a header value may hold a tab, nothing else
_MISSING = object()


def field_value(document: object, path: str) -> object:
    """The value at a dotted path (`result.token`) in decoded JSON; absent: a sentinel equal to no JSON value."""
    value = document
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _json_path(path: str) -> str:
    if not _JSON_PATH.fullmatch(path):
        raise fail("expected a dotted JSON path such as token or data.access_token")
    return path


def _http_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.username or parts.password:
        raise fail("expected an absolute http(s) URL without userinfo")
    if _CONTROL.search(url):
        raise fail("expected an absolute http(s) URL without control characters")
    return url


def _revoke_method(method: str) -> str:
    if method not in ("DELETE", "POST"):
        raise fail(f"unsupported method {method!r}", hint="DELETE or POST")
    return method


def _method(method: str) -> str:
    if method not in LOGIN_METHODS:
        raise fail(f"unsupported method {method!r}", hint="one of " + ", ".join(LOGIN_METHODS))
    return method


def _token_format(template: str) -> str:
    if template.count("{token}") != 1 or _CONTROL.search(template):
        raise fail("the format must contain {token} exactly once", hint='e.g. "Bearer {token}" or "Bearer: {token}"')
    return template


def _header_name(name: str) -> str:
    if not HEADER_NAME.fullmatch(name):
        raise fail(f"not a valid header name: {name!r}")
    return name


def _basic_username(username: Secret) -> Secret:
    if not username.reveal() or ":" in username.reveal():
        raise fail("a Basic username must be non-empty and contain no ':'")
    return username


def _status(status: int) -> int:
    if status > 599:
        raise fail(f"not an HTTP status: {status}")
    return status


def _regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise fail(f"not a regular expression: {exc}") from None
    return pattern


def _single_value(value: object) -> object:
    if isinstance(value, dict | list):
        raise fail(f"expected a single value, got {'a mapping' if isinstance(value, dict) else 'a list'}")
    if not isinstance(value, str | int | bool):
        raise fail("expected a string, integer or boolean")
    return value


def _json_value(value: object, info: ValidationInfo) -> object:
    """A login body value: strings are secrets (`${VAR}`), numbers and booleans literal, lists of strings plain."""
    if isinstance(value, Secret | bool | int | float):
        return value
    if isinstance(value, str):
        return Secret(str(interpolate(value, info)))
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [interpolate(item, info) for item in value]
    raise fail("expected a string, number, boolean or list of strings")


JsonPath = Annotated[Str, AfterValidator(_json_path)]
HttpUrl = Annotated[Text, AfterValidator(_http_url)]
Method = Annotated[Str, AfterValidator(_method)]
TokenFormat = Annotated[Str, AfterValidator(_token_format)]
HeaderName = Annotated[Str, AfterValidator(_header_name)]
BasicUsername = Annotated[SecretText, AfterValidator(_basic_username)]
JsonValue = Annotated[
    object,
    BeforeValidator(_json_value),
    WithJsonSchema(
        {"anyOf": [{"type": ["string", "number", "boolean"]}, {"type": "array", "items": {"type": "string"}}]}
    ),
]


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class CredentialErrorRule:
    """A provider's "bad credentials" answer hidden in a success: status `status`, JSON `field` == `equals`.

    BSG answers a bad API key with `200 {"error": 2, "errorDescription": "Invalid API key"}`; passing
    that on as a success would hide that the gateway's own credentials are broken.
    """

    status: Annotated[int, AfterValidator(_status)] = Field(default=200, ge=100, strict=True)
    field: JsonPath
    equals: Annotated[str | int | bool, BeforeValidator(_single_value)] | None = None
    pattern: (
        Annotated[
            Str,
            AfterValidator(_regex),
            Field(description="Instead of equals: a regular expression searched, ignoring case, in a string field."),
        ]
        | None
    ) = None

    @model_validator(mode="after")
    def _one_test(self) -> CredentialErrorRule:
        if (self.equals is None) == (self.pattern is None):
            raise fail("give exactly one of equals, pattern")
        return self

    def matches(self, status: int, document: object) -> bool:
        if status != self.status:
            return False
        value = field_value(document, self.field)
        if self.pattern is not None:
            return isinstance(value, str) and re.search(self.pattern, value, re.IGNORECASE) is not None
        # JSON true is not 1: compare types as well as values
        return type(value) is type(self.equals) and value == self.equals

    def describe(self) -> str:
        """The rule as a log or error detail (`error=2`, `reason~/invalid login/`): names, never a secret."""
        if self.pattern is not None:
            return f"{self.field}~/{self.pattern}/"
        return f"{self.field}={self.equals!r}"


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class NoneCredentialSettings:
    """`type: none`: the upstream needs no authentication (a sandbox, a LAN device)."""

    type: Literal["none"] = "none"
    credential_error: SkipJsonSchema[None] = None

    @property
    def kind(self) -> str:
        return self.type

    def secret_values(self) -> tuple[str, ...]:
        return ()


class _Kind:
    """What every credential kind offers: its `kind` and its secrets (for redaction)."""

    @property
    def kind(self) -> str:
        """The `type`, naming the injector."""
        return str(vars(self)["type"])

    def secret_values(self) -> tuple[str, ...]:
        """Every secret value in these credentials, for redaction."""
        return tuple(secrets_in(self))


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class BasicCredentialSettings(_Kind):
    """`type: basic`: RFC 7617 Basic with UTF-8 (SMSGate cloud and Local Server, SMSPortal)."""

    username: BasicUsername
    password: SecretText
    type: Literal["basic"] = "basic"
    credential_error: CredentialErrorRule | None = None


def _value_problem(value: str, *, header: bool) -> bool:
    if header:
        return not value or value != value.strip() or bool(_UNSAFE_VALUE.search(value))
    return not value or bool(_CONTROL.search(value))


def _headers(headers: Mapping[str, Secret]) -> Mapping[str, Secret]:
    if not headers:
        raise fail("header credentials need at least one header")
    for name, value in headers.items():
        if not HEADER_NAME.fullmatch(name):
            raise fail(f"not a valid header name: {name!r}", at=(name,))
        if _value_problem(value.reveal(), header=True):  # never echo the value: it is a secret
            raise fail(f"the value of header {name!r} is empty, padded or contains control characters", at=(name,))
    return headers


def _params(params: Mapping[str, Secret]) -> Mapping[str, Secret]:
    if not params:
        raise fail("query credentials need at least one parameter")
    seen: set[str] = set()
    for name, value in params.items():
        if not HEADER_NAME.fullmatch(name):
            raise fail(f"not a valid parameter name: {name!r}", at=(name,))
        if name.lower() in seen:
            raise fail(f"parameter {name!r} is given twice (names are compared without case)", at=(name,))
        seen.add(name.lower())
        if _value_problem(value.reveal(), header=False):
            raise fail(f"the value of parameter {name!r} is empty or contains control characters", at=(name,))
    return params


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class HeaderCredentialSettings(_Kind):
    """`type: header`: static API-key headers (BSG `X-API-KEY`, SMSGatewayCenter `apiKey`)."""

    headers: Annotated[Mapping[str, SecretText], AfterValidator(_headers)]
    type: Literal["header"] = "header"
    credential_error: CredentialErrorRule | None = None
    strip_params: Annotated[
        Texts,
        Field(description="Query (and form body) parameters dropped from the client's request (any case)."),
    ] = ()
    defaults: Mapping[str, Str] = Field(
        default_factory=dict,
        description="Parameters added to the query (or form body) when the client gave none of that name.",
    )
    mode: SkipJsonSchema[str] = ""  # set by presets: what the credential is ("live", "test"), shown in /readyz
    notices: SkipJsonSchema[tuple[str, ...]] = ()  # set by presets: warnings logged at start-up, shown in /readyz


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class QueryCredentialSettings(_Kind):
    """`type: query`: static query parameters (SMSGatewayCenter `userId`/`password`)."""

    params: Annotated[
        Mapping[str, SecretText],
        AfterValidator(_params),
        Field(description="Query parameters added to every request; the client's own copies (any case) are dropped."),
    ]
    type: Literal["query"] = "query"
    credential_error: CredentialErrorRule | None = None
    strip_params: Annotated[
        Texts,
        Field(description="More query (and form body) parameters dropped from the client's request (any case)."),
    ] = ()
    strip_headers: Annotated[
        tuple[HeaderName, ...], Field(description="Headers dropped from the client's request (with aliases).")
    ] = ()
    defaults: Mapping[str, Str] = Field(
        default_factory=dict,
        description="Parameters added to the query (or form body) when the client gave none of that name.",
    )
    form_body: Annotated[
        Bool,
        Field(description="Put the parameters in the body of form-encoded requests instead of the query."),
    ] = False


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class BasicPair:
    """Basic credentials a login sends."""

    username: BasicUsername
    password: SecretText


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class LoginRequest:
    """The login: where, how, and the secrets it sends (as Basic, or in a JSON body)."""

    url: HttpUrl
    method: Method = "POST"
    basic: BasicPair | None = None
    json: Mapping[str, JsonValue] | None = None  # strings are Secret, revealed only when sent


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class RefreshRequest:
    """The refresh: where and how; it sends the current provider token."""

    url: HttpUrl
    method: Method = "POST"
    basic: SkipJsonSchema[None] = None
    json: SkipJsonSchema[None] = None


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class RevokeRequest:
    """Revoking a provider token the gateway no longer uses (superseded or refused), best-effort.

    `url` holds `{id}`, replaced by the token's identifier read from `id_field` of the login answer
    (SMSGate: `DELETE {url}/auth/token/{id}` with the login's Basic credentials).
    """

    url: HttpUrl
    id_field: JsonPath = "id"
    method: Annotated[Str, AfterValidator(_revoke_method)] = "DELETE"
    basic: BasicPair | None = None


def _unit(unit: str) -> str:
    if unit not in EXPIRY_UNITS:
        raise fail(f"unknown unit {unit!r}", hint="one of " + ", ".join(EXPIRY_UNITS))
    return unit


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class Expiry:
    """Where a token's lifetime comes from: a JSON field (+ unit), the JWT's `exp`, or a fixed TTL.

    `jwt_exp: true` with a field or `ttl_s` reads `exp` when the token is a JWT that has one, else falls
    back (a lifetime from `ttl_s` is a guess: a 401 to such a token is read as its expiry).
    """

    field: JsonPath | None = None
    unit: Annotated[Str, AfterValidator(_unit)] | None = None  # with field; None is seconds
    jwt_exp: Bool | None = None
    ttl_s: Annotated[float, Finite(0.001)] | None = None
    reissue_window_s: (
        Annotated[
            float,
            Finite(0.0),
            Field(
                description="The provider hands back the same token for this long after first issuing it: a token is "
                "assumed to have been issued that long ago unless the store saw it issued (SMSPortal: 23 h)."
            ),
        ]
        | None
    ) = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Expiry:
        if self.field is not None and self.ttl_s is not None:
            raise fail("give field (+ unit) or ttl_s, not both")
        if self.field is None and self.ttl_s is None and not self.jwt_exp:
            raise fail("give one of field (+ unit), jwt_exp: true, ttl_s (jwt_exp may fall back to either)")
        if self.unit is not None and self.field is None:
            raise fail("unit goes with field", at=("unit",))
        if self.jwt_exp is False:
            raise fail("jwt_exp must be true when given", at=("jwt_exp",))
        return self


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class TokenExchangeSettings(_Kind):
    """`type: token_exchange`: log in, cache the provider's token, send it (`gateway/proxy/exchange.py`)."""

    login: LoginRequest
    token_field: JsonPath
    expiry: Expiry
    header: HeaderName = "Authorization"
    format: TokenFormat = "Bearer {token}"
    refresh: RefreshRequest | None = None
    margin_s: Annotated[float, Finite(0.0)] = 60.0
    timeout_s: Annotated[float, Finite(0.1)] = 10.0
    credential_error: CredentialErrorRule | None = None  # checked on login answers too
    type: Literal["token_exchange"] = "token_exchange"
    failure_cooldown_s: SkipJsonSchema[float] = 1.0  # set in code only (tests)
    refused_statuses: Annotated[
        tuple[Annotated[int, Field(ge=400, le=499)], ...],
        Field(description="Upstream statuses that mean the gateway's token was refused (a 502 for the client)."),
    ] = (401,)
    revoke: RevokeRequest | None = None
    policy_scopes: SkipJsonSchema[bool] = False  # smsgate_jwt: login.json's `scopes` filled from the policy
    mode: SkipJsonSchema[str] = ""
    notices: SkipJsonSchema[tuple[str, ...]] = ()


CredentialSettings: TypeAlias = (
    NoneCredentialSettings
    | BasicCredentialSettings
    | HeaderCredentialSettings
    | QueryCredentialSettings
    | TokenExchangeSettings
)
