"""Provider presets: what a user writes for a known provider, expanded into a generic credential kind.

A preset takes only the secrets (and a few overrides); `expand(url)` fills in the provider's endpoints
relative to the upstream's `url`, its token field and expiry, and its "bad credentials" answer.

    bsg_v1            X-API-KEY header; BSG's 200 `{"error": 2}` is a credential failure
    bsg_v2            POST {url}/auth/login {"api_key"} → {"bearer": JWT}, renewed at {url}/auth/refresh
    smsportal         GET {url}/Authentication with Basic(client id, secret) → token, expiresInMinutes
    smsgatewaycenter  the apiKey header, or the userId and password query parameters
    smsgate_jwt       POST {url}/auth/token with Basic and {"ttl", "scopes"} → access_token, expires_at
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import model_validator
from pydantic.dataclasses import dataclass

from gateway.config.credentials import (
    BasicPair,
    BasicUsername,
    CredentialErrorRule,
    CredentialSettings,
    Expiry,
    HeaderCredentialSettings,
    HttpUrl,
    LoginRequest,
    QueryCredentialSettings,
    RefreshRequest,
    TokenExchangeSettings,
    TokenFormat,
)
from gateway.config.fields import CONFIG, Finite, Min, SecretText, Texts, fail

__all__ = [
    "PRESETS",
    "BsgV1Preset",
    "BsgV2Preset",
    "Preset",
    "SmsGateJwtPreset",
    "SmsGatewayCenterPreset",
    "SmsPortalPreset",
]

# BSG answers a bad API key with HTTP 200 and {"error": 2, "errorDescription": "Invalid API key"}.
BSG_CREDENTIAL_ERROR = CredentialErrorRule(status=200, field="error", equals=2)


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class BsgV1Preset:
    """BSG API v1: `X-API-KEY: live_...` on every request; its 200 `error: 2` answer is a credential failure."""

    type: Literal["bsg_v1"] = "bsg_v1"
    api_key: SecretText

    def expand(self, url: str) -> CredentialSettings:
        return HeaderCredentialSettings(headers={"X-API-KEY": self.api_key}, credential_error=BSG_CREDENTIAL_ERROR)


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class BsgV2Preset:
    """BSG API v2: POST {url}/auth/login {"api_key"} → {"bearer": JWT}; renewed at {url}/auth/refresh."""

    type: Literal["bsg_v2"] = "bsg_v2"
    api_key: SecretText
    format: TokenFormat = "Bearer {token}"
    login_url: HttpUrl | None = None
    refresh_url: HttpUrl | None = None
    margin_s: Annotated[float, Finite(0.0)] = 60.0
    timeout_s: Annotated[float, Finite(0.1)] = 10.0

    def expand(self, url: str) -> CredentialSettings:
        return TokenExchangeSettings(
            login=LoginRequest(url=self.login_url or url + "/auth/login", json={"api_key": self.api_key}),
            token_field="bearer",
            expiry=Expiry(jwt_exp=True),
            format=self.format,
            refresh=RefreshRequest(url=self.refresh_url or url + "/auth/refresh"),
            margin_s=self.margin_s,
            timeout_s=self.timeout_s,
            credential_error=BSG_CREDENTIAL_ERROR,
        )


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class SmsPortalPreset:
    """SMSPortal: GET {url}/Authentication with Basic(client id:secret) → {"token", "expiresInMinutes"};
    renewed an hour early, as SMSPortal advises (23 h of 24 h)."""

    type: Literal["smsportal"] = "smsportal"
    client_id: BasicUsername
    api_secret: SecretText
    login_url: HttpUrl | None = None
    margin_s: Annotated[float, Finite(0.0)] = 3600.0
    timeout_s: Annotated[float, Finite(0.1)] = 10.0

    def expand(self, url: str) -> CredentialSettings:
        return TokenExchangeSettings(
            login=LoginRequest(
                url=self.login_url or url + "/Authentication",
                method="GET",
                basic=BasicPair(username=self.client_id, password=self.api_secret),
            ),
            token_field="token",
            expiry=Expiry(field="expiresInMinutes", unit="minutes"),
            margin_s=self.margin_s,
            timeout_s=self.timeout_s,
        )


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class SmsGatewayCenterPreset:
    """SMSGatewayCenter: the `apiKey` header, or `userId` and `password` request parameters."""

    type: Literal["smsgatewaycenter"] = "smsgatewaycenter"
    api_key: SecretText | None = None
    user_id: SecretText | None = None
    password: SecretText | None = None

    @model_validator(mode="after")
    def _one_mode(self) -> SmsGatewayCenterPreset:
        if self.api_key is not None and (self.user_id is not None or self.password is not None):
            raise fail("give api_key, or user_id and password, not both")
        if self.api_key is None and (self.user_id is None or self.password is None):
            raise fail("smsgatewaycenter needs api_key, or user_id and password")
        return self

    def expand(self, url: str) -> CredentialSettings:
        if self.api_key is not None:
            return HeaderCredentialSettings(headers={"apiKey": self.api_key})
        assert self.user_id is not None
        assert self.password is not None
        return QueryCredentialSettings(params={"userId": self.user_id, "password": self.password})


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class SmsGateJwtPreset:
    """SMSGate cloud: POST {url}/auth/token with Basic and {"ttl", "scopes"} → {"access_token", "expires_at"}."""

    type: Literal["smsgate_jwt"] = "smsgate_jwt"
    username: BasicUsername
    password: SecretText
    scopes: Texts = ("all:any",)
    ttl_s: Annotated[int, Min(60)] = 3600
    login_url: HttpUrl | None = None
    margin_s: Annotated[float, Finite(0.0)] = 300.0
    timeout_s: Annotated[float, Finite(0.1)] = 10.0

    def expand(self, url: str) -> CredentialSettings:
        scopes = list(self.scopes)
        return TokenExchangeSettings(
            login=LoginRequest(
                url=self.login_url or url + "/auth/token",
                basic=BasicPair(username=self.username, password=self.password),
                json={"ttl": self.ttl_s, "scopes": scopes},
            ),
            token_field="access_token",
            expiry=Expiry(field="expires_at", unit="iso8601"),
            margin_s=self.margin_s,
            timeout_s=self.timeout_s,
        )


Preset = BsgV1Preset | BsgV2Preset | SmsPortalPreset | SmsGatewayCenterPreset | SmsGateJwtPreset
PRESETS: tuple[str, ...] = ("bsg_v1", "bsg_v2", "smsportal", "smsgatewaycenter", "smsgate_jwt")
