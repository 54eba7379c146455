"""Load and validate `config.yaml` into frozen, typed settings.

Fail closed everywhere: an unknown key, a wrong type, a missing required key or an unset `${VAR}` is a
LoadError naming file:line:column and the key. Secrets (passwords, keys, provider credentials) come from
the environment through `${VAR}` and are held in `Secret`, whose repr never shows the value.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml

from gateway.yamlsource import Fields, Node, load_file, load_text

__all__ = [
    "AdminSettings",
    "AuthSettings",
    "BasicUser",
    "CredentialSettings",
    "IssuerSettings",
    "KeySettings",
    "ListenSettings",
    "LogSettings",
    "MetricsSettings",
    "ProxySettings",
    "ReloadSettings",
    "Secret",
    "Settings",
    "TokenSettings",
    "UpstreamSettings",
    "load_settings",
    "parse_settings",
]

ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
SYMMETRIC = frozenset({"HS256", "HS384", "HS512"})
MIN_HMAC_SECRET_BYTES = 32


class Secret:
    """A secret string: `repr`/`str` are masked so it cannot leak through logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class ListenSettings:
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True)
class KeySettings:
    """One verification (or signing) key: an HMAC secret or a PEM key, with an optional `kid`."""

    algorithm: str
    material: Secret  # HMAC secret, or PEM text (private for signing keys, public or private for verify)
    kid: str | None = None


@dataclass(frozen=True)
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
    jwks_max_stale_s: float | None = None  # None: 3 x jwks_cache_ttl_s; past it, unrefreshable keys are dropped
    scope_claim: str | None = None
    own: bool = False  # the gateway's own issuer (tokens minted by `tokens:`)


@dataclass(frozen=True)
class BasicUser:
    username: str
    password_hash: Secret
    scopes: frozenset[str]


@dataclass(frozen=True)
class AuthSettings:
    leeway_s: int = 30
    max_token_lifetime_s: int = 86400
    max_header_bytes: int = 8192
    issuers: tuple[IssuerSettings, ...] = ()
    basic_enabled: bool = True
    basic_users: tuple[BasicUser, ...] = ()


@dataclass(frozen=True)
class TokenSettings:
    """The token service: the gateway mints tokens as `issuer`, signed by the first key, verified by all."""

    enabled: bool = False
    mount: str = "/3rdparty/v1"  # the token endpoints live at {mount}/auth/token, where SMSGate clients look
    issuer: str = "smsguard"
    audience: str = "sms-api"
    keys: tuple[KeySettings, ...] = ()
    default_ttl_s: int = 900
    max_ttl_s: int = 3600
    refresh_ttl_s: int = 2592000


@dataclass(frozen=True)
class CredentialSettings:
    """How the gateway authenticates to an upstream; `kind` selects the injector, `options` its settings."""

    kind: str = "none"
    options: Mapping[str, object] = field(default_factory=dict)

    def secret_values(self) -> tuple[str, ...]:
        """Every secret value in these credentials, for redaction."""
        return tuple(_secrets_in(self.options))


def _secrets_in(value: object) -> list[str]:
    if isinstance(value, Secret):
        return [value.reveal()] if value.reveal() else []
    if isinstance(value, Mapping):
        return [s for item in value.values() for s in _secrets_in(item)]
    if isinstance(value, list | tuple):
        return [s for item in value for s in _secrets_in(item)]
    return []


@dataclass(frozen=True)
class UpstreamSettings:
    name: str
    url: str
    credentials: CredentialSettings = field(default_factory=CredentialSettings)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    pool_size: int = 100
    pool_timeout_s: float = 1.0


@dataclass(frozen=True)
class ProxySettings:
    max_body_bytes: int = 1_048_576
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    retry_buffer_bytes: int = 65_536


@dataclass(frozen=True)
class ReloadSettings:
    """Hot reload: watch the config and policy files (SIGHUP always reloads)."""

    watch: bool = True
    debounce_ms: int = 200


@dataclass(frozen=True)
class AdminSettings:
    """`GET /admin/policy`: off unless enabled, then only for `scope` from the issuer named `issuer`."""

    enabled: bool = False
    issuer: str = ""
    scope: str = "settings:read"


LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class LogSettings:
    """Structured logs: the access log (one event per request), the level, and whether probes are logged."""

    access: bool = True
    level: str = "info"
    health_checks: bool = False  # log /healthz, /readyz and metrics scrapes too


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus metrics at `path` on the main port, or on `host:port` (a separate listener `serve` runs)."""

    enabled: bool = True
    path: str = "/metrics"
    port: int | None = None
    host: str = "127.0.0.1"

    @property
    def served_path(self) -> str | None:
        """The path the gateway answers on its main port (None: metrics off, or on their own port)."""
        return self.path if self.enabled and self.port is None else None


@dataclass(frozen=True)
class Settings:
    """Everything `config.yaml` says, resolved: paths absolute, secrets read, defaults filled in."""

    file: str = "<defaults>"
    listen: ListenSettings = field(default_factory=ListenSettings)
    store: str = "memory://"
    policies: tuple[str, ...] = ()
    auth: AuthSettings = field(default_factory=AuthSettings)
    tokens: TokenSettings = field(default_factory=TokenSettings)
    upstreams: Mapping[str, UpstreamSettings] = field(default_factory=dict)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    reload: ReloadSettings = field(default_factory=ReloadSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)

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


# ---------------------------------------------------------------------------------------------- loading

_VAR = re.compile(r"\$\{([^}]*)\}|\$\$")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Reader:
    """Reads config nodes with `${VAR}` interpolation from `env` and paths relative to the config file."""

    def __init__(self, env: Mapping[str, str], base: Path) -> None:
        self.env = env
        self.base = base

    def text(self, node: Node) -> str:
        raw = node.string()

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name = match.group(1)
            if not _VAR_NAME.fullmatch(name):
                node.fail(f"invalid variable reference ${{{name}}}", hint="use ${NAME} with letters, digits, _")
            value = self.env.get(name)
            if value is None or value == "":
                node.fail(f"environment variable {name} is not set", hint=f"export {name}=... before starting")
            return value

        return _VAR.sub(substitute, raw)

    def texts(self, node: Node) -> tuple[str, ...]:
        """A list of strings, or one string as a one-element list, each interpolated."""
        items = [node] if isinstance(node.value_or_none(), str) else list(node.items())
        return tuple(self.text(item) for item in items)

    def secret(self, node: Node) -> Secret:
        return Secret(self.text(node))

    def path(self, node: Node) -> Path:
        path = Path(self.text(node))
        return path if path.is_absolute() else self.base / path

    def file_secret(self, node: Node) -> Secret:
        path = self.path(node)
        try:
            return Secret(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            node.fail(f"cannot read key file: {type(exc).__name__}")


def load_settings(path: str | Path, env: Mapping[str, str] | None = None) -> Settings:
    """Load `config.yaml`; `env` defaults to the process environment."""
    path = Path(path)
    return _parse(load_file(path), env if env is not None else os.environ, path.resolve().parent)


def parse_settings(
    text: str, file: str = "config.yaml", env: Mapping[str, str] | None = None, base: Path | None = None
) -> Settings:
    """Parse config text (tests, `policy validate --config`)."""
    return _parse(load_text(text, file), env if env is not None else os.environ, base or Path.cwd())


def _parse(root: Node, env: Mapping[str, str], base: Path) -> Settings:
    read = _Reader(env, base)
    top = root.fields()
    top.get("$schema")
    settings = Settings(
        file=root.file,
        listen=_listen(top.get("listen")),
        store=_store(read, top.get("store")),
        policies=tuple(str(read.path(item)) for item in _items(top.get("policies"))),
        auth=_auth(read, top.get("auth")),
        tokens=_tokens(read, top.get("tokens")),
        upstreams=_upstreams(read, top.get("upstreams")),
        proxy=_proxy(top.get("proxy")),
        reload=_reload(top.get("reload")),
        log=_log(top.get("log")),
        metrics=_metrics(top.get("metrics")),
    )
    settings = replace(settings, admin=_admin(top.get("admin"), settings))
    top.close()
    return settings


def _reload(node: Node | None) -> ReloadSettings:
    if node is None:
        return ReloadSettings()
    f = node.fields()
    result = ReloadSettings(
        watch=_bool(f, "watch", ReloadSettings.watch),
        debounce_ms=_int(f, "debounce_ms", ReloadSettings.debounce_ms, minimum=10),
    )
    f.close()
    return result


def _log(node: Node | None) -> LogSettings:
    if node is None:
        return LogSettings()
    f = node.fields()
    level_node = f.get("level")
    level = LogSettings.level
    if level_node is not None:
        level = level_node.string().lower()
        if level not in LOG_LEVELS:
            level_node.fail(f"unknown log level {level_node.string()!r}", hint="one of: " + ", ".join(LOG_LEVELS))
    result = LogSettings(
        access=_bool(f, "access", LogSettings.access),
        level=level,
        health_checks=_bool(f, "health_checks", LogSettings.health_checks),
    )
    f.close()
    return result


_METRICS_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")


def _metrics(node: Node | None) -> MetricsSettings:
    if node is None:
        return MetricsSettings()
    f = node.fields()
    path_node = f.get("path")
    path = MetricsSettings.path
    if path_node is not None:
        path = path_node.string()
        if not _METRICS_PATH.fullmatch(path) or "//" in path or (path.endswith("/") and path != "/"):
            path_node.fail(f"not a plain absolute path: {path!r}", hint="e.g. /metrics")
        if path in _GATEWAY_PATHS:
            path_node.fail(f"{path} is already answered by the gateway", hint="e.g. /metrics")
    port_node = f.get("port")
    host_node = f.get("host")
    result = MetricsSettings(
        enabled=_bool(f, "enabled", MetricsSettings.enabled),
        path=path,
        port=_port(port_node) if port_node is not None else None,
        host=host_node.string() if host_node is not None else MetricsSettings.host,
    )
    f.close()
    return result


_GATEWAY_PATHS = frozenset({"/", "/healthz", "/readyz", "/.well-known/jwks.json", "/admin/policy"})


def _admin(node: Node | None, settings: Settings) -> AdminSettings:
    from gateway.policy.scopes import is_valid_scope

    if node is None:
        return AdminSettings()
    f = node.fields()
    enabled = _bool(f, "enabled", True)
    issuer_node = f.get("issuer")
    issuer = issuer_node.string() if issuer_node else ""
    names = {item.name for item in settings.all_issuers()} | {"basic"}
    if enabled and issuer not in names:
        (issuer_node or node).fail(
            f"admin.issuer must name a configured issuer ({', '.join(sorted(names))})",
            hint="'self' is the gateway's own tokens, 'basic' the Basic users",
        )
    scope_node = f.get("scope")
    scope = scope_node.string() if scope_node else AdminSettings.scope
    if scope_node is not None and not is_valid_scope(scope):
        scope_node.fail(f"malformed scope {scope!r}")
    f.close()
    return AdminSettings(enabled=enabled, issuer=issuer, scope=scope)


def _items(node: Node | None) -> list[Node]:
    return [] if node is None else list(node.items())


def _listen(node: Node | None) -> ListenSettings:
    if node is None:
        return ListenSettings()
    f = node.fields()
    host = f.get("host")
    port = f.get("port")
    result = ListenSettings(
        host=host.string() if host else ListenSettings.host,
        port=_port(port) if port else ListenSettings.port,
    )
    f.close()
    return result


def _port(node: Node) -> int:
    port = node.integer(minimum=0)
    if port > 65535:
        node.fail(f"not a TCP port: {port}")
    return port


def _store(read: _Reader, node: Node | None) -> str:
    if node is None:
        return "memory://"
    url = read.text(node)
    scheme = urlsplit(url).scheme
    if scheme not in {"memory", "redis", "rediss", "unix"}:
        node.fail(f"unsupported store {scheme or url!r}", hint="use memory:// or redis://host:6379/0")
    return url


def _int(f: Fields, key: str, default: int, minimum: int = 0) -> int:
    node = f.get(key)
    return default if node is None else node.integer(minimum=minimum)


def _float(f: Fields, key: str, default: float, minimum: float = 0.0) -> float:
    node = f.get(key)
    return default if node is None else node.number(minimum=minimum)


def _bool(f: Fields, key: str, default: bool) -> bool:
    node = f.get(key)
    return default if node is None else node.boolean()


def _auth(read: _Reader, node: Node | None) -> AuthSettings:
    if node is None:
        return AuthSettings()
    f = node.fields()
    issuers = tuple(_issuer(read, item) for item in _items(f.get("issuers")))
    names = [issuer.name for issuer in issuers]
    for item, issuer in zip(_items(f.get("issuers")), issuers, strict=True):
        if names.count(issuer.name) > 1 or issuer.name == "self":
            item.fail(f"issuer name {issuer.name!r} is used twice or reserved", hint="give each issuer its own name")
    users = tuple(_basic_user(read, item) for item in _items(f.get("basic_users")))
    usernames = [user.username for user in users]
    for item, user in zip(_items(f.get("basic_users")), users, strict=True):
        if usernames.count(user.username) > 1:
            item.fail(f"basic user {user.username!r} is defined twice")
    result = AuthSettings(
        leeway_s=_int(f, "leeway_s", AuthSettings.leeway_s),
        max_token_lifetime_s=_int(f, "max_token_lifetime_s", AuthSettings.max_token_lifetime_s, minimum=1),
        max_header_bytes=_int(f, "max_header_bytes", AuthSettings.max_header_bytes, minimum=256),
        issuers=issuers,
        basic_enabled=_bool(f, "basic_enabled", True),
        basic_users=users,
    )
    f.close()
    return result


def _algorithms(node: Node) -> tuple[str, ...]:
    algorithms = tuple(node.strings())
    for name in algorithms:
        if name not in ASYMMETRIC | SYMMETRIC:
            node.fail(f"unsupported algorithm {name!r}", hint="one of " + ", ".join(sorted(ASYMMETRIC | SYMMETRIC)))
    if not algorithms:
        node.fail("at least one algorithm is required")
    if set(algorithms) & SYMMETRIC and set(algorithms) & ASYMMETRIC:
        node.fail(
            "do not mix HMAC and public-key algorithms in one issuer",
            hint="an HMAC secret must never be confused with a public key; use two issuers",
        )
    return algorithms


def _issuer(read: _Reader, node: Node) -> IssuerSettings:
    f = node.fields()
    name = f.require("name").string()
    algorithms = _algorithms(f.require("algorithms"))
    audience_node = f.require("audience")
    keys: list[KeySettings] = []
    secret_node = f.get("secret")
    if secret_node is not None:
        if not set(algorithms) <= SYMMETRIC:
            secret_node.fail("a secret is only for HS256/HS384/HS512 issuers")
        keys.append(KeySettings(algorithms[0], _hmac_secret(read, secret_node), _kid(f)))
    for key in ("public_key", "public_key_file"):
        pem_node = f.get(key)
        if pem_node is None:
            continue
        if not set(algorithms) <= ASYMMETRIC:
            pem_node.fail(f"{key} is only for public-key algorithms (RS*, PS*, ES*, EdDSA)")
        material = read.secret(pem_node) if key == "public_key" else read.file_secret(pem_node)
        if "-----BEGIN" not in material.reveal():
            pem_node.fail("expected a PEM-encoded key")
        keys.append(KeySettings(algorithms[0], material, _kid(f)))
    jwks = f.get("jwks_url")
    jwks_url = read.text(jwks) if jwks else None
    if jwks is not None and jwks_url is not None:
        if urlsplit(jwks_url).scheme not in {"http", "https"}:
            jwks.fail("jwks_url must be an http(s) URL")
        if not set(algorithms) <= ASYMMETRIC:
            jwks.fail("a JWKS is only for public-key algorithms")
    if not keys and jwks_url is None:
        node.fail("issuer has no keys", hint="set one of secret, public_key, public_key_file or jwks_url")
    f.get("kid")
    result = IssuerSettings(
        name=name,
        issuer=read.text(f.require("issuer")),
        audiences=read.texts(audience_node),
        algorithms=algorithms,
        keys=tuple(keys),
        jwks_url=jwks_url,
        jwks_cache_ttl_s=_float(f, "jwks_cache_ttl_s", IssuerSettings.jwks_cache_ttl_s),
        jwks_refetch_cooldown_s=_float(f, "jwks_refetch_cooldown_s", IssuerSettings.jwks_refetch_cooldown_s),
        jwks_timeout_s=_float(f, "jwks_timeout_s", IssuerSettings.jwks_timeout_s, minimum=0.1),
        jwks_max_stale_s=n.number(minimum=0.0) if (n := f.get("jwks_max_stale_s")) else None,  # None: 3 x TTL
        scope_claim=_optional_string(f, "scope_claim"),
    )
    f.close()
    return result


def _optional_string(f: Fields, key: str) -> str | None:
    node = f.get(key)
    return node.string() if node else None


def _kid(f: Fields) -> str | None:
    return _optional_string(f, "kid")


def _hmac_secret(read: _Reader, node: Node) -> Secret:
    secret = read.secret(node)
    if len(secret.reveal().encode()) < MIN_HMAC_SECRET_BYTES:
        node.fail(
            f"HMAC secret is shorter than {MIN_HMAC_SECRET_BYTES} bytes",
            hint="generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'",
        )
    return secret


def _basic_user(read: _Reader, node: Node) -> BasicUser:
    from gateway.policy.scopes import SUPERUSER, is_valid_scope

    f = node.fields()
    username = f.require("username").string()
    if ":" in username or not username:
        f.require("username").fail("a username must be non-empty and contain no ':'")
    hash_node = f.require("password_hash")
    password_hash = read.secret(hash_node)
    if not password_hash.reveal().startswith("$argon2id$"):
        hash_node.fail("expected an argon2id hash", hint="make one with: gateway hash-password")
    scopes_node = f.require("scopes")
    scopes = frozenset(scopes_node.strings())
    for scope in scopes:
        if scope != SUPERUSER and not is_valid_scope(scope):
            scopes_node.fail(f"malformed scope {scope!r}", hint="scopes look like resource:action")
    f.close()
    return BasicUser(username, password_hash, scopes)


def _tokens(read: _Reader, node: Node | None) -> TokenSettings:
    if node is None:
        return TokenSettings()
    f = node.fields()
    enabled = _bool(f, "enabled", True)
    keys_node = f.get("keys")
    keys = tuple(_signing_key(read, item) for item in _items(keys_node))
    if enabled and not keys:
        (keys_node or node).fail(
            "token issuing needs at least one signing key under tokens.keys", hint="or set tokens.enabled: false"
        )
    kids = [key.kid for key in keys]
    if len(keys) > 1 and (None in kids or len(set(kids)) != len(kids)):
        (keys_node or node).fail("with several keys each needs its own kid (rotation picks keys by kid)")
    result = TokenSettings(
        enabled=enabled,
        mount=_mount(f.get("mount")),
        issuer=read.text(f.require("issuer")) if "issuer" in f else TokenSettings.issuer,
        audience=read.text(f.require("audience")) if "audience" in f else TokenSettings.audience,
        keys=keys,
        default_ttl_s=_int(f, "default_ttl_s", TokenSettings.default_ttl_s, minimum=1),
        max_ttl_s=_int(f, "max_ttl_s", TokenSettings.max_ttl_s, minimum=1),
        refresh_ttl_s=_int(f, "refresh_ttl_s", TokenSettings.refresh_ttl_s, minimum=1),
    )
    if result.default_ttl_s > result.max_ttl_s:
        node.fail("default_ttl_s is greater than max_ttl_s")
    f.close()
    return result


def _mount(node: Node | None) -> str:
    if node is None:
        return TokenSettings.mount
    mount = node.string().rstrip("/")
    if mount and not mount.startswith("/"):
        node.fail("a mount must start with /")
    return mount


def _signing_key(read: _Reader, node: Node) -> KeySettings:
    f = node.fields()
    algorithm_node = f.require("algorithm")
    algorithm = _algorithms(algorithm_node)[0]
    secret_node, pem_node, file_node = f.get("secret"), f.get("private_key"), f.get("private_key_file")
    given = [n for n in (secret_node, pem_node, file_node) if n is not None]
    if len(given) != 1:
        node.fail("a signing key needs exactly one of secret, private_key, private_key_file")
    if algorithm in SYMMETRIC:
        if secret_node is None:
            node.fail(f"{algorithm} signs with a secret")
        material = _hmac_secret(read, secret_node)
    else:
        if secret_node is not None:
            secret_node.fail(f"{algorithm} signs with a private key, not a secret")
        material = read.secret(pem_node) if pem_node is not None else read.file_secret(given[0])
        if "PRIVATE KEY-----" not in material.reveal():
            given[0].fail("expected a PEM-encoded private key")
    key = KeySettings(algorithm, material, _kid(f))
    f.close()
    return key


def _upstreams(read: _Reader, node: Node | None) -> dict[str, UpstreamSettings]:
    if node is None:
        return {}
    result: dict[str, UpstreamSettings] = {}
    for name, item in node.entries():
        f = item.fields()
        url_node = f.require("url")
        url = read.text(url_node)
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            url_node.fail("upstream url must be an absolute http(s) URL")
        if parts.query or parts.fragment or parts.username or parts.password:
            url_node.fail(
                "upstream url must not carry a query, fragment or userinfo", hint="put credentials under credentials:"
            )
        result[name] = UpstreamSettings(
            name=name,
            url=url.rstrip("/"),
            credentials=_credentials(read, f.get("credentials"), url.rstrip("/")),
            connect_timeout_s=_float(f, "connect_timeout_s", UpstreamSettings.connect_timeout_s, minimum=0.01),
            read_timeout_s=_float(f, "read_timeout_s", UpstreamSettings.read_timeout_s, minimum=0.01),
            pool_size=_int(f, "pool_size", UpstreamSettings.pool_size, minimum=1),
            pool_timeout_s=_float(f, "pool_timeout_s", UpstreamSettings.pool_timeout_s, minimum=0.0),
        )
        f.close()
    return result


CredentialKind = Literal["none", "basic", "header", "query", "token_exchange"]
CREDENTIAL_KINDS: tuple[str, ...] = ("none", "basic", "header", "query", "token_exchange")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_JSON_PATH = re.compile(r"[^.]+(?:\.[^.]+)*")
_LOGIN_METHODS = ("GET", "POST", "PUT", "PATCH")
_EXPIRY_UNITS = ("seconds", "minutes", "unix", "iso8601")
# BSG answers a bad API key with HTTP 200 and {"error": 2, "errorDescription": "Invalid API key"}.
_BSG_CREDENTIAL_ERROR: Mapping[str, object] = {"status": 200, "field": "error", "equals": 2}


def _credentials(read: _Reader, node: Node | None, url: str = "") -> CredentialSettings:
    """Parse an upstream's `credentials:` block; each kind has its own keys.

    A provider preset (`bsg_v2`, `smsportal`, ...) expands into a generic kind, its endpoints relative to
    the upstream's `url`, so a user writes only the secrets.
    """
    if node is None:
        return CredentialSettings()
    f = node.fields()
    kind_node = f.require("type")
    kind = kind_node.string()
    options: dict[str, object] = {}
    if kind == "none":
        pass
    elif kind == "basic":
        options["username"] = read.secret(f.require("username"))
        options["password"] = read.secret(f.require("password"))
    elif kind == "header":
        options["headers"] = _secret_map(read, f.require("headers"), "header")
    elif kind == "query":
        options["params"] = _secret_map(read, f.require("params"), "parameter")
    elif kind == "token_exchange":
        options = _token_exchange(read, f)
    elif kind in _PRESETS:
        kind, options = _PRESETS[kind](read, f, node, url)
    else:
        kind_node.fail(
            f"unknown credentials type {kind!r}", hint="one of: " + ", ".join((*CREDENTIAL_KINDS, *_PRESETS))
        )
    if kind_node.string() in CREDENTIAL_KINDS and kind != "none":
        rule = f.get("credential_error")
        if rule is not None:
            options["credential_error"] = _credential_error(rule)
    f.close()
    return CredentialSettings(kind, options)


def _secret_map(read: _Reader, node: Node, what: str) -> dict[str, Secret]:
    """`{name: ${VAR}}` for static headers or query parameters; names are checked, values are secrets."""
    values: dict[str, Secret] = {}
    for name, value in node.entries():
        if not _HEADER_NAME.fullmatch(name):
            value.fail(f"not a valid {what} name: {name!r}")
        values[name] = read.secret(value)
    if not values:
        node.fail(f"{what} credentials need at least one {what}")
    return values


def _http_url(read: _Reader, node: Node) -> str:
    url = read.text(node)
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.username or parts.password:
        node.fail("expected an absolute http(s) URL without userinfo")
    return url


def _login_method(node: Node | None, default: str) -> str:
    if node is None:
        return default
    method = node.string()
    if method not in _LOGIN_METHODS:
        node.fail(f"unsupported method {method!r}", hint="one of " + ", ".join(_LOGIN_METHODS))
    return method


def _json_path(node: Node) -> str:
    path = node.string()
    if not _JSON_PATH.fullmatch(path):
        node.fail("expected a dotted JSON path such as token or data.access_token")
    return path


def _token_format(node: Node | None) -> str:
    if node is None:
        return "Bearer {token}"
    template = node.string()
    if template.count("{token}") != 1 or re.search(r"[\x00-\x1f\x7f]", template):
        node.fail("the format must contain {token} exactly once", hint='e.g. "Bearer {token}" or "Bearer: {token}"')
    return template


def _basic_pair(read: _Reader, node: Node) -> dict[str, Secret]:
    f = node.fields()
    pair = _basic_pair_from(read, f)
    f.close()
    return pair


def _basic_pair_from(read: _Reader, f: Fields) -> dict[str, Secret]:
    return {"username": _basic_username(read, f.require("username")), "password": read.secret(f.require("password"))}


def _basic_username(read: _Reader, node: Node) -> Secret:
    username = read.secret(node)
    if ":" in username.reveal():
        node.fail("a Basic username must contain no ':'")
    return username


def _json_body(read: _Reader, node: Node) -> dict[str, object]:
    """A login's JSON body: strings are secrets (`${VAR}`), numbers and booleans literal, lists of strings plain."""
    body: dict[str, object] = {}
    for key, value in node.entries():
        if isinstance(value.raw, yaml.SequenceNode):
            body[key] = [read.text(item) for item in value.items()]
            continue
        scalar = value.value_or_none()
        if isinstance(scalar, str):
            body[key] = read.secret(value)
        elif isinstance(scalar, bool | int | float):
            body[key] = scalar
        else:
            value.fail("expected a string, number, boolean or list of strings")
    return body


def _request_block(read: _Reader, node: Node, *, login: bool) -> dict[str, object]:
    f = node.fields()
    request: dict[str, object] = {
        "url": _http_url(read, f.require("url")),
        "method": _login_method(f.get("method"), "POST"),
    }
    if login:
        basic = f.get("basic")
        if basic is not None:
            request["basic"] = _basic_pair(read, basic)
        body = f.get("json")
        if body is not None:
            request["json"] = _json_body(read, body)
    f.close()
    return request


def _expiry_block(node: Node) -> dict[str, object]:
    f = node.fields()
    field_node, jwt_node, ttl_node, unit_node = f.get("field"), f.get("jwt_exp"), f.get("ttl_s"), f.get("unit")
    given = [n for n in (field_node, jwt_node, ttl_node) if n is not None]
    if len(given) != 1:
        node.fail("give exactly one of field (+ unit), jwt_exp: true, ttl_s")
    expiry: dict[str, object]
    if field_node is not None:
        unit = unit_node.string() if unit_node is not None else "seconds"
        if unit_node is not None and unit not in _EXPIRY_UNITS:
            unit_node.fail(f"unknown unit {unit!r}", hint="one of " + ", ".join(_EXPIRY_UNITS))
        expiry = {"field": _json_path(field_node), "unit": unit}
    elif unit_node is not None:
        unit_node.fail("unit goes with field")
    elif jwt_node is not None:
        if not jwt_node.boolean():
            jwt_node.fail("jwt_exp must be true when given")
        expiry = {"jwt_exp": True}
    else:
        assert ttl_node is not None
        ttl = ttl_node.number(minimum=0.001)
        expiry = {"ttl_s": ttl}
    f.close()
    return expiry


def _token_exchange(read: _Reader, f: Fields) -> dict[str, object]:
    options: dict[str, object] = {
        "login": _request_block(read, f.require("login"), login=True),
        "token_field": _json_path(f.require("token_field")),
        "expiry": _expiry_block(f.require("expiry")),
        "format": _token_format(f.get("format")),
        "margin_s": _float(f, "margin_s", 60.0),
        "timeout_s": _float(f, "timeout_s", 10.0, minimum=0.1),
    }
    header = f.get("header")
    if header is not None:
        if not _HEADER_NAME.fullmatch(header.string()):
            header.fail(f"not a valid header name: {header.string()!r}")
        options["header"] = header.string()
    refresh = f.get("refresh")
    if refresh is not None:
        options["refresh"] = _request_block(read, refresh, login=False)
    return options


def _credential_error(node: Node) -> dict[str, object]:
    f = node.fields()
    status_node = f.get("status")
    status = 200 if status_node is None else status_node.integer(minimum=100)
    if status_node is not None and status > 599:
        status_node.fail(f"not an HTTP status: {status}")
    equals_node = f.require("equals")
    equals = equals_node.value()
    if not isinstance(equals, str | int | bool):
        equals_node.fail("expected a string, integer or boolean")
    rule = {"status": status, "field": _json_path(f.require("field")), "equals": equals}
    f.close()
    return rule


# --- provider presets: (read, fields, node, upstream url) -> (generic kind, its options)


def _preset_url(read: _Reader, f: Fields, key: str, default: str) -> str:
    node = f.get(key)
    return default if node is None else _http_url(read, node)


def _preset_bsg_v1(read: _Reader, f: Fields, node: Node, url: str) -> tuple[str, dict[str, object]]:
    """BSG API v1: `X-API-KEY: live_...` on every request; its 200 `error: 2` answer is a credential failure."""
    return "header", {
        "headers": {"X-API-KEY": read.secret(f.require("api_key"))},
        "credential_error": dict(_BSG_CREDENTIAL_ERROR),
    }


def _preset_bsg_v2(read: _Reader, f: Fields, node: Node, url: str) -> tuple[str, dict[str, object]]:
    """BSG API v2: POST {url}/auth/login {"api_key"} → {"bearer": JWT}; renewed at {url}/auth/refresh."""
    return "token_exchange", {
        "login": {
            "url": _preset_url(read, f, "login_url", url + "/auth/login"),
            "method": "POST",
            "json": {"api_key": read.secret(f.require("api_key"))},
        },
        "token_field": "bearer",
        "expiry": {"jwt_exp": True},
        "format": _token_format(f.get("format")),
        "refresh": {"url": _preset_url(read, f, "refresh_url", url + "/auth/refresh"), "method": "POST"},
        "margin_s": _float(f, "margin_s", 60.0),
        "timeout_s": _float(f, "timeout_s", 10.0, minimum=0.1),
        "credential_error": dict(_BSG_CREDENTIAL_ERROR),
    }


def _preset_smsportal(read: _Reader, f: Fields, node: Node, url: str) -> tuple[str, dict[str, object]]:
    """SMSPortal: GET {url}/Authentication with Basic(client id:secret) → {"token", "expiresInMinutes"};
    renewed an hour early, as SMSPortal advises (23 h of 24 h)."""
    return "token_exchange", {
        "login": {
            "url": _preset_url(read, f, "login_url", url + "/Authentication"),
            "method": "GET",
            "basic": {
                "username": _basic_username(read, f.require("client_id")),
                "password": read.secret(f.require("api_secret")),
            },
        },
        "token_field": "token",
        "expiry": {"field": "expiresInMinutes", "unit": "minutes"},
        "format": "Bearer {token}",
        "margin_s": _float(f, "margin_s", 3600.0),
        "timeout_s": _float(f, "timeout_s", 10.0, minimum=0.1),
    }


def _preset_smsgatewaycenter(read: _Reader, f: Fields, node: Node, url: str) -> tuple[str, dict[str, object]]:
    """SMSGatewayCenter: the `apiKey` header, or `userId` and `password` request parameters."""
    api_key, user_id, password = f.get("api_key"), f.get("user_id"), f.get("password")
    if api_key is not None and (user_id is not None or password is not None):
        node.fail("give api_key, or user_id and password, not both")
    if api_key is not None:
        return "header", {"headers": {"apiKey": read.secret(api_key)}}
    if user_id is None or password is None:
        node.fail("smsgatewaycenter needs api_key, or user_id and password")
    return "query", {"params": {"userId": read.secret(user_id), "password": read.secret(password)}}


def _preset_smsgate_jwt(read: _Reader, f: Fields, node: Node, url: str) -> tuple[str, dict[str, object]]:
    """SMSGate cloud: POST {url}/auth/token with Basic and {"ttl", "scopes"} → {"access_token", "expires_at"}."""
    scopes_node = f.get("scopes")
    return "token_exchange", {
        "login": {
            "url": _preset_url(read, f, "login_url", url + "/auth/token"),
            "method": "POST",
            "basic": _basic_pair_from(read, f),
            "json": {
                "ttl": _int(f, "ttl_s", 3600, minimum=60),
                "scopes": ["all:any"] if scopes_node is None else list(read.texts(scopes_node)),
            },
        },
        "token_field": "access_token",
        "expiry": {"field": "expires_at", "unit": "iso8601"},
        "format": "Bearer {token}",
        "margin_s": _float(f, "margin_s", 300.0),
        "timeout_s": _float(f, "timeout_s", 10.0, minimum=0.1),
    }


_PRESETS = {
    "bsg_v1": _preset_bsg_v1,
    "bsg_v2": _preset_bsg_v2,
    "smsportal": _preset_smsportal,
    "smsgatewaycenter": _preset_smsgatewaycenter,
    "smsgate_jwt": _preset_smsgate_jwt,
}
PRESETS: tuple[str, ...] = tuple(_PRESETS)


def _proxy(node: Node | None) -> ProxySettings:
    if node is None:
        return ProxySettings()
    f = node.fields()
    networks = []
    for item in _items(f.get("trusted_proxies")):
        try:
            networks.append(ipaddress.ip_network(item.string(), strict=False))
        except ValueError:
            item.fail(f"not an IP address or CIDR network: {item.string()!r}")
    result = ProxySettings(
        max_body_bytes=_int(f, "max_body_bytes", ProxySettings.max_body_bytes, minimum=0),
        trusted_proxies=tuple(networks),
        retry_buffer_bytes=_int(f, "retry_buffer_bytes", ProxySettings.retry_buffer_bytes, minimum=0),
    )
    f.close()
    return result
