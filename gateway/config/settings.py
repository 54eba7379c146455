"""The gateway's settings, by the names the rest of the code imports them.

The classes live by concern: `fields` (Secret, field types, `${VAR}`), `sections` (one class per section
of config.yaml, and `Settings`), `credentials` (one class per credential kind), `presets` (provider
presets), `loader` (YAML to Settings, every error at once) and `schema` (the JSON Schema, generated).
"""

from __future__ import annotations

from gateway.config.credentials import (
    CREDENTIAL_KINDS,
    BasicCredentialSettings,
    CredentialErrorRule,
    CredentialSettings,
    HeaderCredentialSettings,
    NoneCredentialSettings,
    QueryCredentialSettings,
    TokenExchangeSettings,
)
from gateway.config.fields import Secret
from gateway.config.loader import load_settings, parse_settings, read_credentials
from gateway.config.presets import PRESETS
from gateway.config.sections import (
    ASYMMETRIC,
    LOG_LEVELS,
    MIN_HMAC_SECRET_BYTES,
    SYMMETRIC,
    AdminSettings,
    ApiKeySettings,
    AuthSettings,
    BasicUser,
    CorsSettings,
    IssuerSettings,
    KeySettings,
    ListenSettings,
    LogSettings,
    MetricsSettings,
    ProxySettings,
    ReloadSettings,
    Settings,
    TokenSettings,
    TracingSettings,
    UpstreamSettings,
)

__all__ = [
    "ASYMMETRIC",
    "CREDENTIAL_KINDS",
    "LOG_LEVELS",
    "MIN_HMAC_SECRET_BYTES",
    "PRESETS",
    "SYMMETRIC",
    "AdminSettings",
    "ApiKeySettings",
    "AuthSettings",
    "BasicCredentialSettings",
    "BasicUser",
    "CorsSettings",
    "CredentialErrorRule",
    "CredentialSettings",
    "HeaderCredentialSettings",
    "IssuerSettings",
    "KeySettings",
    "ListenSettings",
    "LogSettings",
    "MetricsSettings",
    "NoneCredentialSettings",
    "ProxySettings",
    "QueryCredentialSettings",
    "ReloadSettings",
    "Secret",
    "Settings",
    "TokenExchangeSettings",
    "TokenSettings",
    "TracingSettings",
    "UpstreamSettings",
    "load_settings",
    "parse_settings",
    "read_credentials",
]
