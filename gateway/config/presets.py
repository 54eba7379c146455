"""Provider presets: what a user writes for a known provider, expanded into a generic credential kind.

A preset takes only the secrets (and a few overrides); `expand(url)` fills in the provider's endpoints
relative to the upstream's `url`, its token field and expiry, and its "bad credentials" answer.

    bsg_v1            X-API-KEY header; BSG's 200 `{"error": 2}` is a credential failure; key prefix → mode
    bsg_v2            POST {url}/auth/login {"api_key"} → {"bearer"}, renewed at {url}/auth/refresh; the JWT's
                      `exp`, else `ttl_s`
    smsportal         GET {url}/Authentication with Basic(client id, secret) → token, expiresInMinutes; the
                      same token comes back for 23 h after its first issue (remembered in the store)
    smsgatewaycenter  the apiKey header, or userId and password (query, or the body of a form POST); every
                      client copy of all three dropped; `format` defaulted; 200 failure answers are 502s
    smsgate_jwt       POST {url}/auth/token with Basic and {"ttl", "scopes" (from the policy)} → access_token,
                      expires_at; superseded or refused tokens revoked
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
    RevokeRequest,
    TokenExchangeSettings,
    TokenFormat,
)
from gateway.config.fields import CONFIG, Bool, Finite, Min, SecretText, Texts, fail

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
# SMSGatewayCenter answers every request with HTTP 200 and {"status", "statusCode", "reason"} ("success" when it
# worked). Its document lists no failure codes, so a failure whose reason names the login is taken as a refusal
# of the gateway's credentials; other failures (a bad number, no balance) pass to the client as they are.
SGC_CREDENTIAL_ERROR = CredentialErrorRule(
    status=200,
    field="reason",
    pattern=r"\b(invalid|wrong|incorrect|missing|unauthori[sz]ed)\b.*\b(login|credential|user ?id|password|api ?key)",
)
SGC_CREDENTIALS = ("userId", "password", "apiKey")  # "use either one to authenticate": every copy is stripped
SGC_FORMATS = ("json", "xml", "plain")


def bsg_key_mode(key: str) -> tuple[str, tuple[str, ...]]:
    """The mode a BSG key puts the gateway in (`live`, `test`, `unknown`) and what the operator must know."""
    if key.startswith("live_"):
        return "live", ()
    if key.startswith("test_"):
        return "test", ("BSG test_ key: BSG answers every request with made-up data and sends no SMS",)
    return "unknown", (
        "the BSG API key starts with neither live_ nor test_ (every BSG key does): it is probably mistyped, "
        "and BSG will refuse it",
    )


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class BsgV1Preset:
    """BSG API v1: `X-API-KEY: live_...` on every request; its 200 `error: 2` answer is a credential failure."""

    type: Literal["bsg_v1"] = "bsg_v1"
    api_key: SecretText

    def expand(self, url: str) -> CredentialSettings:
        mode, notices = bsg_key_mode(self.api_key.reveal())
        return HeaderCredentialSettings(
            headers={"X-API-KEY": self.api_key}, credential_error=BSG_CREDENTIAL_ERROR, mode=mode, notices=notices
        )


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class BsgV2Preset:
    """BSG API v2: POST {url}/auth/login {"api_key"} → {"bearer"}; renewed at {url}/auth/refresh.

    The document types the bearer as a string and gives no lifetime: a JWT's `exp` is used when it has one,
    else `ttl_s`; a 401 to such a token is read as "expired" (a new login, the request sent once more).
    """

    type: Literal["bsg_v2"] = "bsg_v2"
    api_key: SecretText
    format: TokenFormat = "Bearer {token}"
    login_url: HttpUrl | None = None
    refresh_url: HttpUrl | None = None
    ttl_s: Annotated[float, Finite(60.0)] = 3600.0
    margin_s: Annotated[float, Finite(0.0)] = 60.0
    timeout_s: Annotated[float, Finite(0.1)] = 10.0

    def expand(self, url: str) -> CredentialSettings:
        mode, notices = bsg_key_mode(self.api_key.reveal())
        return TokenExchangeSettings(
            login=LoginRequest(url=self.login_url or url + "/auth/login", json={"api_key": self.api_key}),
            token_field="bearer",
            expiry=Expiry(jwt_exp=True, ttl_s=self.ttl_s),
            format=self.format,
            refresh=RefreshRequest(url=self.refresh_url or url + "/auth/refresh"),
            margin_s=self.margin_s,
            timeout_s=self.timeout_s,
            credential_error=BSG_CREDENTIAL_ERROR,
            mode=mode,
            notices=notices,
        )


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class SmsPortalPreset:
    """SMSPortal: GET {url}/Authentication with Basic(client id:secret) → {"token", "expiresInMinutes"}.

    SMSPortal hands back the same token for 23 h after first issuing it (it lives 24 h): the gateway keeps
    when it first saw each token in the store, assumes a token it never saw issued is as old as that rule
    allows, and renews an hour early (the 23 h of 24 SMSPortal advises). A JWT's own `exp` wins.
    """

    type: Literal["smsportal"] = "smsportal"
    client_id: BasicUsername
    api_secret: SecretText
    login_url: HttpUrl | None = None
    margin_s: Annotated[float, Finite(0.0)] = 3600.0
    reissue_window_s: Annotated[float, Finite(0.0)] = 23 * 3600.0
    timeout_s: Annotated[float, Finite(0.1)] = 10.0

    def expand(self, url: str) -> CredentialSettings:
        return TokenExchangeSettings(
            login=LoginRequest(
                url=self.login_url or url + "/Authentication",
                method="GET",
                basic=BasicPair(username=self.client_id, password=self.api_secret),
            ),
            token_field="token",
            expiry=Expiry(
                jwt_exp=True, field="expiresInMinutes", unit="minutes", reissue_window_s=self.reissue_window_s
            ),
            margin_s=self.margin_s,
            timeout_s=self.timeout_s,
        )


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class SmsGatewayCenterPreset:
    """SMSGatewayCenter: the `apiKey` header, or `userId` and `password` request parameters ("either one").

    Every client copy of all three is dropped (query, form body, header); in password mode a form POST
    carries the parameters in its body, as the document's POST samples do. `format` is added when the
    client names none: JSON answers let the gateway recognise a refusal of its credentials.
    """

    type: Literal["smsgatewaycenter"] = "smsgatewaycenter"
    api_key: SecretText | None = None
    user_id: SecretText | None = None
    password: SecretText | None = None
    format: Literal["json", "xml", "plain"] = "json"

    @model_validator(mode="after")
    def _one_mode(self) -> SmsGatewayCenterPreset:
        if self.api_key is not None and (self.user_id is not None or self.password is not None):
            raise fail("give api_key, or user_id and password, not both")
        if self.api_key is None and (self.user_id is None or self.password is None):
            raise fail("smsgatewaycenter needs api_key, or user_id and password")
        return self

    def expand(self, url: str) -> CredentialSettings:
        defaults = {"format": self.format}
        if self.api_key is not None:
            return HeaderCredentialSettings(
                headers={"apiKey": self.api_key},
                strip_params=SGC_CREDENTIALS,
                defaults=defaults,
                credential_error=SGC_CREDENTIAL_ERROR,
            )
        assert self.user_id is not None
        assert self.password is not None
        return QueryCredentialSettings(
            params={"userId": self.user_id, "password": self.password},
            strip_params=SGC_CREDENTIALS,
            strip_headers=("apiKey",),
            defaults=defaults,
            form_body=True,
            credential_error=SGC_CREDENTIAL_ERROR,
        )


@dataclass(frozen=True, kw_only=True, config=CONFIG)
class SmsGateJwtPreset:
    """SMSGate cloud: POST {url}/auth/token with Basic and {"ttl", "scopes"} → {"id", "access_token", "expires_at"}.

    Without `scopes` the token asks for exactly the scopes the policy's rules for this upstream require
    ("request minimal scopes"); a 403 to it is a refusal of the gateway's token. A token the gateway stops
    using (renewed, or refused) is revoked with `DELETE {url}/auth/token/{id}`, best-effort.
    """

    type: Literal["smsgate_jwt"] = "smsgate_jwt"
    username: BasicUsername
    password: SecretText
    scopes: Texts | None = None
    ttl_s: Annotated[int, Min(60)] = 3600
    login_url: HttpUrl | None = None
    revoke: Bool = True
    margin_s: Annotated[float, Finite(0.0)] = 300.0
    timeout_s: Annotated[float, Finite(0.1)] = 10.0

    def expand(self, url: str) -> CredentialSettings:
        basic = BasicPair(username=self.username, password=self.password)
        return TokenExchangeSettings(
            login=LoginRequest(
                url=self.login_url or url + "/auth/token",
                basic=basic,
                json={"ttl": self.ttl_s, "scopes": list(self.scopes or ())},
            ),
            token_field="access_token",
            expiry=Expiry(field="expires_at", unit="iso8601"),
            margin_s=self.margin_s,
            timeout_s=self.timeout_s,
            refused_statuses=(401, 403),
            revoke=RevokeRequest(url=url + "/auth/token/{id}", basic=basic) if self.revoke else None,
            policy_scopes=self.scopes is None,
        )


Preset = BsgV1Preset | BsgV2Preset | SmsPortalPreset | SmsGatewayCenterPreset | SmsGateJwtPreset
PRESETS: tuple[str, ...] = ("bsg_v1", "bsg_v2", "smsportal", "smsgatewaycenter", "smsgate_jwt")
