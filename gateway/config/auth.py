"""The `auth:` and `tokens:` sections: trusted issuers, Basic users, and the gateway's own signing keys.

Issuers and signing keys are written differently from how the verifier and the minter read them: an
issuer's `secret`, `public_key` or `public_key_file` becomes one of its `keys`, a signing key's material
is whichever of `secret`, `private_key`, `private_key_file` is given. Their entry classes (`IssuerEntry`,
`SigningKeyEntry`) are what the file says; `ReadAs` turns them into `IssuerSettings` and `KeySettings`.
"""

from __future__ import annotations

from dataclasses import dataclass as plain_dataclass
from dataclasses import field
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo, model_validator
from pydantic.dataclasses import dataclass

from gateway.config.fields import (
    CONFIG,
    ON_WHEN_PRESENT,
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
    enabled_when_present,
    fail,
    interpolate,
    one_or_many,
    read_path,
)

__all__ = [
    "ASYMMETRIC",
    "MIN_HMAC_SECRET_BYTES",
    "SYMMETRIC",
    "AuthSettings",
    "BasicLimitSettings",
    "BasicUser",
    "IssuerEntry",
    "IssuerSettings",
    "KeySettings",
    "SigningKeyEntry",
    "SmsNarrowing",
    "TokenSettings",
]

ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
SYMMETRIC = frozenset({"HS256", "HS384", "HS512"})
MIN_HMAC_SECRET_BYTES = 32


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
    jwks_max_stale_s: float | None = None  # None: 3 x jwks_cache_ttl_s; past it, unrefreshable keys are dropped
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
    jwks_max_stale_s: Annotated[float, Finite(0.0)] | None = None  # None: 3 x jwks_cache_ttl_s
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
            jwks_max_stale_s=self.jwks_max_stale_s,
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


def _rate(text: str) -> str:
    from gateway.policy.rates import parse_rate

    try:
        parse_rate(text)
    except ValueError as exc:
        raise fail(str(exc)) from None
    return text.strip()


def _country(code: str) -> str:
    if len(code) != 2 or not code.isascii() or not code.isalpha():
        raise fail(f"not an ISO 3166-1 alpha-2 country code: {code!r}", hint="e.g. GB, US")
    return code.upper()


RateText = Annotated[Str, AfterValidator(_rate)]
Country = Annotated[Str, AfterValidator(_country)]


@dataclass(frozen=True, config=CONFIG)
class SmsNarrowing:
    """What a Basic user (or a token) may send at most: destination countries and recipients per request.

    Absent keys narrow nothing; the policy's `sms.destinations` still apply on top."""

    countries: tuple[Country, ...] | None = None
    max_recipients: Annotated[int, Min(1)] | None = None


@dataclass(frozen=True, config=CONFIG)
class BasicLimitSettings:
    """Basic auth cannot knock the gateway over: failed logins are limited, argon2 work is bounded."""

    failures_per_client: RateText = Field(
        default="10/m", description="Failed Basic logins per client address (burst = N); over it: 429, no hashing."
    )
    failures_per_user: RateText = Field(
        default="30/m", description="Failed Basic logins per username from all addresses; over it: 429, no hashing."
    )
    hash_concurrency: Annotated[int, Min(0)] = Field(
        default=0,
        description="argon2 verifications at once; 0 = half the cores (at least 1), never more than the cores.",
    )
    max_waiting: Annotated[int, Min(0)] = Field(
        default=32, description="Logins waiting for a hashing slot; beyond that: 503 with Retry-After."
    )
    failure_delay_s: Annotated[float, Finite(0.0)] = Field(
        default=0.25, description="A failed or limited Basic login is answered after this delay (a tarpit for floods)."
    )
    cache_ttl_s: Annotated[float, Finite(0.0)] = Field(
        default=60.0,
        description="A verified credential is remembered this long (under a keyed hash, never the password).",
    )


@dataclass(frozen=True, config=CONFIG)
class BasicUser:
    username: Annotated[Str, AfterValidator(_username)]
    password_hash: Annotated[SecretText, AfterValidator(_argon2id)]
    scopes: Annotated[frozenset[Str], BeforeValidator(one_or_many), AfterValidator(_user_scopes), STRING_OR_LIST]
    sms: SmsNarrowing | None = None


# Verified bearer tokens kept per worker: ~0.8 KB each (bench/token_cache.py), so at most ~80 MB, and 100,000
# clients each reusing a token never fall back to a signature check per request (issue 20's "no cliff").
DEFAULT_TOKEN_CACHE_SIZE = 100_000


@dataclass(frozen=True, config=CONFIG)
class AuthSettings:
    leeway_s: Annotated[int, Min(0)] = 30
    max_token_lifetime_s: Annotated[int, Min(1)] = 86400
    max_header_bytes: Annotated[int, Min(256)] = 8192
    token_cache_size: Annotated[int, Min(0)] = DEFAULT_TOKEN_CACHE_SIZE
    issuers: tuple[Annotated[IssuerSettings, ReadAs(IssuerEntry)], ...] = ()
    basic_enabled: Bool = True
    basic_users: tuple[BasicUser, ...] = ()
    basic_limits: BasicLimitSettings = field(default_factory=BasicLimitSettings)

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

    enabled: Bool = Field(default=False, json_schema_extra=ON_WHEN_PRESENT)
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
        return enabled_when_present(data)

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
