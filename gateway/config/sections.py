"""The settings of `config.yaml`, one frozen class per section, and `Settings` holding them all.

Each class is what the file says and what the code reads: field names are the file's keys, validators
hold the rules (with the messages users see), defaults are the documented ones. `auth:` and `tokens:`
live in `auth.py`. An upstream's `credentials` are read as a generic kind or a provider preset and
always hold the generic kind.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import field
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Discriminator, Field, ValidationInfo, model_validator
from pydantic.dataclasses import dataclass
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import core_schema

from gateway.config.apikeys import ApiKeySettings
from gateway.config.auth import (
    ASYMMETRIC,
    MIN_HMAC_SECRET_BYTES,
    SYMMETRIC,
    AuthSettings,
    BasicUser,
    IssuerSettings,
    KeySettings,
    TokenSettings,
)
from gateway.config.credentials import (
    BasicCredentialSettings,
    CredentialSettings,
    HeaderCredentialSettings,
    HttpUrl,
    NoneCredentialSettings,
    QueryCredentialSettings,
    TokenExchangeSettings,
)
from gateway.config.fields import (
    CONFIG,
    HEADER_NAME,
    ON_WHEN_PRESENT,
    Bool,
    Finite,
    Min,
    Str,
    Text,
    enabled_when_present,
    fail,
    read_path,
)
from gateway.config.presets import (
    BsgV1Preset,
    BsgV2Preset,
    SmsGateJwtPreset,
    SmsGatewayCenterPreset,
    SmsPortalPreset,
)
from gateway.config.storeurl import FORMS as STORE_FORMS
from gateway.config.storeurl import check_store_url

__all__ = [
    "ASYMMETRIC",
    "LOG_LEVELS",
    "MIN_HMAC_SECRET_BYTES",
    "SYMMETRIC",
    "TRACING_EXTRA",
    "AdminSettings",
    "ApiKeySettings",
    "AuthSettings",
    "BasicUser",
    "CorsSettings",
    "IssuerSettings",
    "KeySettings",
    "ListenSettings",
    "LogSettings",
    "MetricsSettings",
    "ProxySettings",
    "ReloadSettings",
    "Settings",
    "TokenSettings",
    "TracingSettings",
    "UpstreamSettings",
]

LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")
_GATEWAY_PATHS = frozenset({"/", "/healthz", "/readyz", "/.well-known/jwks.json", "/admin/policy"})
_METRICS_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")


def _port(port: int) -> int:
    if port > 65535:
        raise fail(f"not a TCP port: {port}")
    return port


Port = Annotated[int, Min(0), AfterValidator(_port)]


@dataclass(frozen=True, config=CONFIG)
class ListenSettings:
    host: Str = "127.0.0.1"
    port: Port = 8080


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


class _ReadTestCredentials:
    """`test_credentials:` like `credentials:`, a preset expanding against `test_url` when one is given."""

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        def expand(value: object, inner: core_schema.ValidatorFunctionWrapHandler, info: ValidationInfo) -> object:
            if value is None:
                return None
            result = inner(value)
            url = info.data.get("test_url") or info.data.get("url")
            if isinstance(result, _PRESET_TYPES) and url:
                return result.expand(url)
            return result

        return core_schema.with_info_wrap_validator_function(expand, handler.generate_schema(_CredentialInput | None))


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
    test_url: Annotated[Text, AfterValidator(_upstream_url)] | None = Field(
        default=None,
        description="Where requests made with a test gateway key (sgk_test_) go, e.g. a sandbox; "
        "without test_credentials the gateway injects none there.",
    )
    test_credentials: Annotated[CredentialSettings | None, _ReadTestCredentials()] = Field(
        default=None,
        description="What requests made with a test gateway key carry instead of `credentials` (e.g. BSG's "
        "own test_ key). Without test_url and test_credentials, test keys are refused on this upstream.",
    )

    @property
    def accepts_test_keys(self) -> bool:
        return self.test_url is not None or self.test_credentials is not None


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
    head_timeout_s: Annotated[float, Finite(0.01)] = Field(
        default=10.0,
        description="A request head (from the connection opening, or its first byte) must be in within this; "
        "else the connection is closed (slowloris, idle sockets).",
    )
    max_head_bytes: Annotated[int, Min(1024)] = Field(
        default=65_536, description="A larger request head is answered 431 and the connection closed."
    )
    body_timeout_s: Annotated[float, Finite(0.01)] = Field(
        default=15.0,
        description="The whole request body must arrive within this after its head; else the connection is "
        "closed and any upstream slot it held is freed.",
    )
    client_write_timeout_s: Annotated[float, Finite(0.01)] = Field(
        default=15.0,
        description="A response write that waits this long for a client that does not read closes the "
        "connection and frees the upstream slot.",
    )


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

    enabled: Bool = Field(default=False, json_schema_extra=ON_WHEN_PRESENT)
    issuer: Str = ""
    scope: Annotated[Str, AfterValidator(_scope)] = "settings:read"

    @model_validator(mode="before")
    @classmethod
    def _present(cls, data: Any) -> Any:
        return enabled_when_present(data)


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


_CORS_SCHEMES = ("http", "https")


def _cors_origin(origin: str) -> str:
    if origin == "*":
        return origin
    parts = urlsplit(origin.lower())
    bare = f"{parts.scheme}://{parts.netloc}"
    if parts.scheme not in _CORS_SCHEMES or not parts.hostname or "@" in parts.netloc or origin.lower() != bare:
        raise fail(f"not an origin: {origin!r}", hint="scheme://host[:port], e.g. https://app.example.com, or *")
    return bare


def _cors_method(method: str) -> str:
    if not HEADER_NAME.fullmatch(method):
        raise fail(f"not an HTTP method: {method!r}", hint="e.g. GET, POST")
    return method.upper()


def _cors_header(name: str) -> str:
    if not HEADER_NAME.fullmatch(name):
        raise fail(f"not a header name: {name!r}", hint="e.g. authorization, content-type")
    return name.lower()


@dataclass(frozen=True, config=CONFIG)
class CorsSettings:
    """CORS for browser clients, answered by the gateway itself: preflights are never forwarded."""

    origins: Annotated[tuple[Annotated[Str, AfterValidator(_cors_origin)], ...], Field(min_length=1)] = Field(
        description="Origins allowed to call the API from a browser (scheme://host[:port]); * allows any "
        "(not with credentials: true). The response names the caller's exact origin, never *."
    )
    methods: tuple[Annotated[Str, AfterValidator(_cors_method)], ...] = ("GET", "POST", "PUT", "PATCH", "DELETE")
    headers: tuple[Annotated[Str, AfterValidator(_cors_header)], ...] = ("authorization", "content-type")
    expose_headers: tuple[Annotated[Str, AfterValidator(_cors_header)], ...] = ("x-request-id", "retry-after")
    max_age_s: Annotated[int, Min(0)] = 600
    credentials: Bool = False

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsSettings:
        if self.credentials and "*" in self.origins:
            raise fail(
                "cors.origins cannot be * with credentials: true",
                hint="list the origins that may send credentials",
                at=("origins",),
            )
        return self


TRACING_EXTRA = "pip install 'smsguard[otel]'"


_OTEL_MODULES = {
    "sdk": "opentelemetry.sdk.trace",
    "otlp": "opentelemetry.exporter.otlp.proto.http.trace_exporter",
}


def _otel_installed(part: str) -> bool:
    """Whether that part of OpenTelemetry can be imported (looked up, not imported: config stays light)."""
    import importlib.util

    try:
        return importlib.util.find_spec(_OTEL_MODULES[part]) is not None
    except (ImportError, ValueError, AttributeError):  # a parent missing, or blocked (None) in sys.modules
        return False


def _ratio(value: float) -> float:
    if value > 1:
        raise fail(f"a share of traces is between 0 and 1, not {value}", hint="e.g. 0.1 records one trace in ten")
    return value


@dataclass(frozen=True, config=CONFIG)
class TracingSettings:
    """OpenTelemetry tracing (the `otel` extra): a server span per request, child spans, W3C traceparent."""

    enabled: Bool = Field(default=False, json_schema_extra=ON_WHEN_PRESENT)
    service_name: Str | None = Field(
        default=None,
        description="The resource's service.name; unset: OTEL_SERVICE_NAME, else smsguard.",
    )
    exporter: Literal["otlp", "console", "none"] = Field(
        default="otlp",
        description="otlp: OTLP/HTTP protobuf (batched); console: JSON spans on stdout; none: spans are "
        "built and sampled but not exported (for measuring).",
    )
    endpoint: HttpUrl | None = Field(
        default=None,
        description="otlp only: the traces URL (e.g. http://collector:4318/v1/traces); unset: "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318.",
    )
    sample_ratio: Annotated[float, Finite(0), AfterValidator(_ratio)] | None = Field(
        default=None,
        description="Share of new traces recorded (a client's sampled flag is followed); unset: "
        "OTEL_TRACES_SAMPLER, else every trace.",
    )

    @model_validator(mode="before")
    @classmethod
    def _present(cls, data: Any) -> Any:
        return enabled_when_present(data)

    @model_validator(mode="after")
    def _installed(self) -> TracingSettings:
        if not self.enabled:
            return self
        if not _otel_installed("sdk"):
            raise fail(
                "tracing is enabled but OpenTelemetry is not installed",
                hint=f"{TRACING_EXTRA}, or tracing: {{enabled: false}}",
                at=("enabled",),
            )
        if self.exporter == "otlp" and not _otel_installed("otlp"):
            raise fail(
                "the otlp exporter is not installed (opentelemetry-exporter-otlp-proto-http)",
                hint=f"{TRACING_EXTRA}, or exporter: console",
                at=("exporter",),
            )
        return self


def _store(url: str) -> str:
    try:
        check_store_url(url)
    except ValueError as exc:
        message = str(exc) if str(exc).startswith("unsupported") else f"invalid store URL: {exc}"
        raise fail(message, hint=f"use {STORE_FORMS}") from None
    return url


def _policy_path(path: str, info: ValidationInfo) -> str:
    return str(read_path(path, info))


@dataclass(frozen=True, config=CONFIG)
class Settings:
    """Everything `config.yaml` says, resolved: paths absolute, secrets read, defaults filled in."""

    file: SkipJsonSchema[str] = "<defaults>"
    listen: ListenSettings = field(default_factory=ListenSettings)
    store: Annotated[Text, AfterValidator(_store)] = Field(
        default="memory://",
        description="memory:// (one process), or shared between instances: redis://host:6379/0, "
        "redis+cluster://host:port,host:port (Redis Cluster) or redis+sentinel://host:26379,host:26379/service "
        "(the master Redis Sentinel names).",
    )
    store_timeout_s: Annotated[float, Finite(0.01)] = Field(
        default=0.5,
        description="Deadline of every store call; a request that needs a store that is down or frozen gets "
        "503 with Retry-After within it.",
    )
    store_max_records: Annotated[int, Min(1)] = Field(
        default=100_000,
        description="memory:// only: at most this many refresh families and token records; at the cap the "
        "soonest-expiring go first (revocations are never evicted).",
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
    keys: ApiKeySettings = Field(
        default_factory=ApiKeySettings,
        description="Gateway API keys (sgk_live_/sgk_test_), stored as keyed hashes; see README 'Gateway keys'.",
    )
    cors: CorsSettings | None = Field(
        default=None,
        description="CORS for browser clients, answered by the gateway (off unless present).",
    )
    tracing: TracingSettings = Field(
        default_factory=TracingSettings,
        description="OpenTelemetry tracing (needs the otel extra); off unless present.",
    )

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
            if upstream.test_credentials is not None:
                values += upstream.test_credentials.secret_values()
        if self.keys.secret is not None:
            values.append(self.keys.secret.reveal())
        return tuple(v for v in values if v)
