"""The settings of `config.yaml`, one frozen class per section, and `Settings` holding them all.

Each class is what the file says and what the code reads: field names are the file's keys, validators
hold the rules (with the messages users see), defaults are the documented ones. Two shapes differ
between file and code, and are read through an entry class (`ReadAs`): an issuer (`secret`,
`public_key`, `public_key_file` become its `keys`) and a token signing key. An upstream's `credentials`
are read as a generic kind or a provider preset and always hold the generic kind.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass as plain_dataclass
from dataclasses import field
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Discriminator, Field, JsonValue, ValidationInfo, model_validator
from pydantic.dataclasses import dataclass
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import core_schema

from gateway.config.credentials import (
    BasicCredentialSettings,
    CredentialSettings,
    HeaderCredentialSettings,
    NoneCredentialSettings,
    QueryCredentialSettings,
    TokenExchangeSettings,
)
from gateway.config.fields import (
    CONFIG,
    STRING_OR_LIST,
    Bool,
    Finite,
    Min,
    ReadAs,
    Secret,
    SecretText,
    Str,
    Strings,
    Text,
    Texts,
    fail,
    interpolate,
    one_or_many,
    read_path,
)
from gateway.config.presets import (
    BsgV1Preset,
    BsgV2Preset,
    SmsGateJwtPreset,
    SmsGatewayCenterPreset,
    SmsPortalPreset,
)

__all__ = [
    "ASYMMETRIC",
    "LOG_LEVELS",
    "MIN_HMAC_SECRET_BYTES",
    "SYMMETRIC",
    "AdminSettings",
    "AuthSettings",
    "BasicUser",
    "IssuerSettings",
    "KeySettings",
    "ListenSettings",
    "LogSettings",
    "MetricsSettings",
    "ProxySettings",
    "ReloadSettings",
    "Settings",
    "TokenSettings",
    "UpstreamSettings",
]

ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
SYMMETRIC = frozenset({"HS256", "HS384", "HS512"})
MIN_HMAC_SECRET_BYTES = 32
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")
_GATEWAY_PATHS = frozenset({"/", "/healthz", "/readyz", "/.well-known/jwks.json", "/admin/policy"})
_METRICS_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")


def _port(port: int) -> int:
    if port > 65535:
        raise fail(f"not a TCP port: {port}")
    return port


Port = Annotated[int, Min(0), AfterValidator(_port)]


def _enabled_when_present(data: Any) -> Any:
    """A section that is written (`tokens: {...}`, `admin: {...}`) is on unless it says `enabled: false`."""
    if isinstance(data, dict) and "enabled" not in data:
        return {**data, "enabled": True}
    return data


_ON_WHEN_PRESENT: dict[str, JsonValue] = {
    "description": "On when the section is present, unless enabled: false.",
    "default": True,
}


@dataclass(frozen=True, config=CONFIG)
class ListenSettings:
    host: Str = "127.0.0.1"
    port: Port = 8080


# --------------------------------------------------------------------------------------------- auth


@plain_dataclass(frozen=True)
class KeySettings:
    """One verification (or signing) key: an HMAC secret or a PEM key, with an optional `kid`."""

    algorithm: str
    material: Secret  # HMAC secret, or PEM text (private for signing keys, public or private for verify)
    kid: str | None = None


@plain_dataclass(frozen=True)
class IssuerSettings:
    """A token issuer the gateway trusts: exact `iss`, audience, algorithm allowlist and where keys live."""

    name: str
    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...]
    keys: tuple[KeySettings, ...] = ()
    jwks_url: str | None = None
    jwks_cache_ttl_s: float = 300.0
    jwks_refetch_cooldown_s: float = 30.0
    jwks_timeout_s: float = 3.0
    scope_claim: str | None = None
    own: bool = False  # the gateway's own issuer (tokens minted by `tokens:`)


def _algorithms(algorithms: tuple[str, ...]) -> tuple[str, ...]:
    for name in algorithms:
        if name not in ASYMMETRIC | SYMMETRIC:
            raise fail(f"unsupported algorithm {name!r}", hint="one of " + ", ".join(sorted(ASYMMETRIC | SYMMETRIC)))
    if not algorithms:
        raise fail("at least one algorithm is required")
    if set(algorithms) & SYMMETRIC and set(algorithms) & ASYMMETRIC:
        raise fail(
            "do not mix HMAC and public-key algorithms in one issuer",
            hint="an HMAC secret must never be confused with a public key; use two issuers",
        )
    return algorithms


def _check_hmac_secret(secret: Secret) -> None:
    if len(secret.reveal().encode()) < MIN_HMAC_SECRET_BYTES:
        raise fail(
            f"HMAC secret is shorter than {MIN_HMAC_SECRET_BYTES} bytes",
            hint="generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'",
            at=("secret",),
        )


def _key_file(value: object, info: ValidationInfo) -> object:
    """`*_file: path` (relative to the config file): the file's text, as a Secret."""
    value = interpolate(value, info)
    if not isinstance(value, str):
        return value
    try:
        return Secret(read_path(value, info).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read key file: {type(exc).__name__}") from None


Algorithms = Annotated[Strings, AfterValidator(_algorithms)]
KeyFile = Annotated[Secret, BeforeValidator(_key_file), Field(description="A PEM file, relative to this file.")]


def _algorithms_of(info: ValidationInfo) -> frozenset[str]:
    return frozenset(info.data.get("algorithms", ()))


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class IssuerEntry:
    """An issuer as `auth.issuers` writes it; `settings()` gives the IssuerSettings the verifier reads."""

    name: Str
    issuer: Text
    audience: Texts
    algorithms: Algorithms
    secret: SecretText | None = None
    public_key: SecretText | None = None
    public_key_file: KeyFile | None = None
    kid: Str | None = None
    jwks_url: Text | None = None
    jwks_cache_ttl_s: Annotated[float, Finite(0.0)] = 300.0
    jwks_refetch_cooldown_s: Annotated[float, Finite(0.0)] = 30.0
    jwks_timeout_s: Annotated[float, Finite(0.1)] = 3.0
    scope_claim: Str | None = None

    @model_validator(mode="after")
    def _keys_fit_algorithms(self) -> IssuerEntry:
        algorithms = set(self.algorithms)
        if self.secret is not None:
            if not algorithms <= SYMMETRIC:
                raise fail("a secret is only for HS256/HS384/HS512 issuers", at=("secret",))
            _check_hmac_secret(self.secret)
        for key in ("public_key", "public_key_file"):
            material: Secret | None = getattr(self, key)
            if material is not None and not algorithms <= ASYMMETRIC:
                raise fail(f"{key} is only for public-key algorithms (RS*, PS*, ES*, EdDSA)", at=(key,))
            if material is not None and "-----BEGIN" not in material.reveal():
                raise fail("expected a PEM-encoded key", at=(key,))
        if self.jwks_url is not None:
            if urlsplit(self.jwks_url).scheme not in {"http", "https"}:
                raise fail("jwks_url must be an http(s) URL", at=("jwks_url",))
            if not algorithms <= ASYMMETRIC:
                raise fail("a JWKS is only for public-key algorithms", at=("jwks_url",))
        if not self._materials() and self.jwks_url is None:
            raise fail("issuer has no keys", hint="set one of secret, public_key, public_key_file or jwks_url")
        return self

    def _materials(self) -> list[Secret]:
        return [m for m in (self.secret, self.public_key, self.public_key_file) if m is not None]

    def settings(self, info: ValidationInfo) -> IssuerSettings:
        return IssuerSettings(
            name=self.name,
            issuer=self.issuer,
            audiences=self.audience,
            algorithms=self.algorithms,
            keys=tuple(KeySettings(self.algorithms[0], material, self.kid) for material in self._materials()),
            jwks_url=self.jwks_url,
            jwks_cache_ttl_s=self.jwks_cache_ttl_s,
            jwks_refetch_cooldown_s=self.jwks_refetch_cooldown_s,
            jwks_timeout_s=self.jwks_timeout_s,
            scope_claim=self.scope_claim,
        )


def _username(username: str) -> str:
    if not username or ":" in username:
        raise fail("a username must be non-empty and contain no ':'")
    return username


def _argon2id(password_hash: Secret) -> Secret:
    if not password_hash.reveal().startswith("$argon2id$"):
        raise fail("expected an argon2id hash", hint="make one with: gateway hash-password")
    return password_hash


def _user_scopes(scopes: frozenset[str]) -> frozenset[str]:
    from gateway.policy.scopes import SUPERUSER, is_valid_scope

    for scope in sorted(scopes):
        if scope != SUPERUSER and not is_valid_scope(scope):
            raise fail(f"malformed scope {scope!r}", hint="scopes look like resource:action")
    return scopes


@dataclass(frozen=True, config=CONFIG)
class BasicUser:
    username: Annotated[Str, AfterValidator(_username)]
    password_hash: Annotated[SecretText, AfterValidator(_argon2id)]
    scopes: Annotated[frozenset[Str], BeforeValidator(one_or_many), AfterValidator(_user_scopes), STRING_OR_LIST]


@dataclass(frozen=True, config=CONFIG)
class AuthSettings:
    leeway_s: Annotated[int, Min(0)] = 30
    max_token_lifetime_s: Annotated[int, Min(1)] = 86400
    max_header_bytes: Annotated[int, Min(256)] = 8192
    issuers: tuple[Annotated[IssuerSettings, ReadAs(IssuerEntry)], ...] = ()
    basic_enabled: Bool = True
    basic_users: tuple[BasicUser, ...] = ()

    @model_validator(mode="after")
    def _unique_names(self) -> AuthSettings:
        names = [issuer.name for issuer in self.issuers]
        for index, name in enumerate(names):
            if names.count(name) > 1 or name == "self":
                raise fail(
                    f"issuer name {name!r} is used twice or reserved",
                    hint="give each issuer its own name",
                    at=("issuers", index),
                )
        usernames = [user.username for user in self.basic_users]
        for index, username in enumerate(usernames):
            if usernames.count(username) > 1:
                raise fail(f"basic user {username!r} is defined twice", at=("basic_users", index))
        return self


# ------------------------------------------------------------------------------------------- tokens


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class SigningKeyEntry:
    """A key under `tokens.keys`: the algorithm and exactly one of secret, private_key, private_key_file."""

    algorithm: Algorithms
    secret: SecretText | None = None
    private_key: SecretText | None = None
    private_key_file: KeyFile | None = None
    kid: Str | None = None

    @model_validator(mode="after")
    def _one_material(self) -> SigningKeyEntry:
        given = [k for k in ("secret", "private_key", "private_key_file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise fail("a signing key needs exactly one of secret, private_key, private_key_file")
        algorithm, material = self.algorithm[0], self.material()
        if algorithm in SYMMETRIC:
            if self.secret is None:
                raise fail(f"{algorithm} signs with a secret")
            _check_hmac_secret(material)
        elif self.secret is not None:
            raise fail(f"{algorithm} signs with a private key, not a secret", at=("secret",))
        elif "PRIVATE KEY-----" not in material.reveal():
            raise fail("expected a PEM-encoded private key", at=(given[0],))
        return self

    def material(self) -> Secret:
        return next(m for m in (self.secret, self.private_key, self.private_key_file) if m is not None)

    def settings(self, info: ValidationInfo) -> KeySettings:
        return KeySettings(self.algorithm[0], self.material(), self.kid)


def _mount(mount: str) -> str:
    mount = mount.rstrip("/")
    if mount and not mount.startswith("/"):
        raise fail("a mount must start with /")
    return mount


@dataclass(frozen=True, config=CONFIG)
class TokenSettings:
    """The token service: the gateway mints tokens as `issuer`, signed by the first key, verified by all."""

    enabled: Bool = Field(default=False, json_schema_extra=_ON_WHEN_PRESENT)
    mount: Annotated[Str, AfterValidator(_mount)] = "/3rdparty/v1"  # SMSGate clients look at {mount}/auth/token
    issuer: Text = "smsguard"
    audience: Text = "sms-api"
    keys: tuple[Annotated[KeySettings, ReadAs(SigningKeyEntry)], ...] = Field(
        default=(), description="The first key signs, all keys verify (rotation)."
    )
    default_ttl_s: Annotated[int, Min(1)] = 900
    max_ttl_s: Annotated[int, Min(1)] = 3600
    refresh_ttl_s: Annotated[int, Min(1)] = 2592000

    @model_validator(mode="before")
    @classmethod
    def _present(cls, data: Any) -> Any:
        return _enabled_when_present(data)

    @model_validator(mode="after")
    def _usable(self) -> TokenSettings:
        if self.enabled and not self.keys:
            raise fail(
                "token issuing needs at least one signing key under tokens.keys", hint="or set tokens.enabled: false"
            )
        kids = [key.kid for key in self.keys]
        if len(self.keys) > 1 and (None in kids or len(set(kids)) != len(kids)):
            raise fail("with several keys each needs its own kid (rotation picks keys by kid)", at=("keys",))
        if self.default_ttl_s > self.max_ttl_s:
            raise fail("default_ttl_s is greater than max_ttl_s")
        return self


# ---------------------------------------------------------------------------------------- upstreams

_CredentialInput = Annotated[
    NoneCredentialSettings
    | BasicCredentialSettings
    | HeaderCredentialSettings
    | QueryCredentialSettings
    | TokenExchangeSettings
    | BsgV1Preset
    | BsgV2Preset
    | SmsPortalPreset
    | SmsGatewayCenterPreset
    | SmsGateJwtPreset,
    Discriminator("type"),
    Field(
        description="How the gateway authenticates to the upstream; the client's own Authorization is never "
        "forwarded. Generic kinds: none, basic, header, query, token_exchange; provider presets (only the "
        "secrets to write): bsg_v1, bsg_v2, smsportal, smsgatewaycenter, smsgate_jwt."
    ),
]
_PRESET_TYPES = (BsgV1Preset, BsgV2Preset, SmsPortalPreset, SmsGatewayCenterPreset, SmsGateJwtPreset)


class _ReadCredentials:
    """Read `credentials:` as a generic kind or a preset; a preset expands against the upstream's url."""

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        def expand(value: object, inner: core_schema.ValidatorFunctionWrapHandler, info: ValidationInfo) -> object:
            result = inner(value)
            if isinstance(result, _PRESET_TYPES) and "url" in info.data:
                return result.expand(info.data["url"])
            return result

        return core_schema.with_info_wrap_validator_function(expand, handler.generate_schema(_CredentialInput))


def _upstream_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise fail("upstream url must be an absolute http(s) URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise fail(
            "upstream url must not carry a query, fragment or userinfo", hint="put credentials under credentials:"
        )
    return url.rstrip("/")


@dataclass(frozen=True, config=CONFIG)
class UpstreamSettings:
    name: SkipJsonSchema[str]  # the key under `upstreams:`
    url: Annotated[Text, AfterValidator(_upstream_url)]
    credentials: Annotated[CredentialSettings, _ReadCredentials()] = field(default_factory=NoneCredentialSettings)
    connect_timeout_s: Annotated[float, Finite(0.01)] = 5.0
    read_timeout_s: Annotated[float, Finite(0.01)] = 30.0
    pool_size: Annotated[int, Min(1)] = 100
    pool_timeout_s: Annotated[float, Finite(0.0)] = 1.0


# ------------------------------------------------------------------------------------------- the rest


def _network(value: object) -> object:
    if not isinstance(value, str):
        return value
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise fail(f"not an IP address or CIDR network: {value!r}") from None


@dataclass(frozen=True, config=CONFIG)
class ProxySettings:
    max_body_bytes: Annotated[int, Min(0)] = 1_048_576
    trusted_proxies: tuple[
        Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_network)], ...
    ] = ()
    retry_buffer_bytes: Annotated[int, Min(0)] = 65_536


@dataclass(frozen=True, config=CONFIG)
class ReloadSettings:
    """Hot reload: watch the config and policy files (SIGHUP always reloads)."""

    watch: Bool = True
    debounce_ms: Annotated[int, Min(10)] = 200


def _scope(scope: str) -> str:
    from gateway.policy.scopes import is_valid_scope

    if not is_valid_scope(scope):
        raise fail(f"malformed scope {scope!r}")
    return scope


@dataclass(frozen=True, config=CONFIG)
class AdminSettings:
    """`GET /admin/policy`: off unless enabled, then only for `scope` from the issuer named `issuer`."""

    enabled: Bool = Field(default=False, json_schema_extra=_ON_WHEN_PRESENT)
    issuer: Str = ""
    scope: Annotated[Str, AfterValidator(_scope)] = "settings:read"

    @model_validator(mode="before")
    @classmethod
    def _present(cls, data: Any) -> Any:
        return _enabled_when_present(data)


def _log_level(level: str) -> str:
    if level.lower() not in LOG_LEVELS:
        raise fail(f"unknown log level {level!r}", hint="one of: " + ", ".join(LOG_LEVELS))
    return level.lower()


@dataclass(frozen=True, config=CONFIG)
class LogSettings:
    """Structured logs: the access log (one event per request), the level, and whether probes are logged."""

    access: Bool = True
    level: Annotated[Str, AfterValidator(_log_level)] = "info"
    health_checks: Bool = False  # log /healthz, /readyz and metrics scrapes too


def _metrics_path(path: str) -> str:
    if not _METRICS_PATH.fullmatch(path) or "//" in path or (path.endswith("/") and path != "/"):
        raise fail(f"not a plain absolute path: {path!r}", hint="e.g. /metrics")
    if path in _GATEWAY_PATHS:
        raise fail(f"{path} is already answered by the gateway", hint="e.g. /metrics")
    return path


@dataclass(frozen=True, config=CONFIG)
class MetricsSettings:
    """Prometheus metrics at `path` on the main port, or on `host:port` (a separate listener `serve` runs)."""

    enabled: Bool = True
    path: Annotated[Str, AfterValidator(_metrics_path)] = "/metrics"
    port: Port | None = None
    host: Str = "127.0.0.1"

    @property
    def served_path(self) -> str | None:
        """The path the gateway answers on its main port (None: metrics off, or on their own port)."""
        return self.path if self.enabled and self.port is None else None


def _store(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme not in {"memory", "redis", "rediss", "unix"}:
        raise fail(f"unsupported store {scheme or url!r}", hint="use memory:// or redis://host:6379/0")
    return url


def _policy_path(path: str, info: ValidationInfo) -> str:
    return str(read_path(path, info))


@dataclass(frozen=True, config=CONFIG)
class Settings:
    """Everything `config.yaml` says, resolved: paths absolute, secrets read, defaults filled in."""

    file: SkipJsonSchema[str] = "<defaults>"
    listen: ListenSettings = field(default_factory=ListenSettings)
    store: Annotated[Text, AfterValidator(_store)] = Field(
        default="memory://", description="memory:// (one process) or redis://host:6379/0 (shared between instances)."
    )
    policies: tuple[Annotated[Text, AfterValidator(_policy_path)], ...] = Field(
        default=(), description="Policy files, relative to this file."
    )
    auth: AuthSettings = field(default_factory=AuthSettings)
    tokens: TokenSettings = Field(
        default_factory=TokenSettings,
        description="The gateway mints its own short-lived scoped tokens at {mount}/auth/token.",
    )
    upstreams: Mapping[str, UpstreamSettings] = field(default_factory=dict)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    reload: ReloadSettings = field(default_factory=ReloadSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)

    @model_validator(mode="after")
    def _admin_issuer(self) -> Settings:
        names = {item.name for item in self.all_issuers()} | {"basic"}
        if self.admin.enabled and self.admin.issuer not in names:
            raise fail(
                f"admin.issuer must name a configured issuer ({', '.join(sorted(names))})",
                hint="'self' is the gateway's own tokens, 'basic' the Basic users",
                at=("admin", "issuer"),
            )
        return self

    def all_issuers(self) -> tuple[IssuerSettings, ...]:
        """Configured issuers plus, when issuing is on, the gateway's own."""
        own = self.own_issuer()
        return (own, *self.auth.issuers) if own else self.auth.issuers

    def own_issuer(self) -> IssuerSettings | None:
        if not self.tokens.enabled:
            return None
        return IssuerSettings(
            name="self",
            issuer=self.tokens.issuer,
            audiences=(self.tokens.audience,),
            algorithms=tuple(sorted({key.algorithm for key in self.tokens.keys})),
            keys=self.tokens.keys,
            own=True,
        )

    def secret_values(self) -> tuple[str, ...]:
        """Every configured secret value (for log redaction and leak tests)."""
        values: list[str] = []
        for issuer in self.all_issuers():
            values += [key.material.reveal() for key in issuer.keys if key.algorithm in SYMMETRIC]
        values += [key.material.reveal() for key in self.tokens.keys]
        for upstream in self.upstreams.values():
            values += upstream.credentials.secret_values()
        return tuple(v for v in values if v)
