"""smsguard: a scope-aware authorization gateway for SMS APIs.

Embed the guard in any Starlette/FastAPI app (`GuardMiddleware`), run the reverse proxy
(`create_app`, or `gateway serve`), or use the policy engine directly (`Authorizer`, `Matcher`).

The names below are loaded on first use (PEP 562), so `import gateway` is cheap and
`from gateway import GuardMiddleware` loads the guard alone: never the proxy, uvicorn, httptools,
redis or aiohttp (tests/test_public_api.py checks this in a fresh interpreter).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.app import Gateway, create_app
    from gateway.auth.jwt import Principal, TokenVerifier
    from gateway.config.settings import Secret, Settings, load_settings, parse_settings
    from gateway.errors import (
        BadGateway,
        BadRequest,
        Forbidden,
        GatewayTimeout,
        HTTPError,
        LoadError,
        NotFound,
        PayloadTooLarge,
        ServiceUnavailable,
        SmsguardError,
        Unauthorized,
    )
    from gateway.guard.authorize import Authorizer, Decision
    from gateway.guard.middleware import GuardMiddleware
    from gateway.policy.loader import load_policies, load_policy, parse_policy
    from gateway.policy.matcher import Match, Matcher
    from gateway.policy.model import Policy, Rule
    from gateway.store import MemoryStore, RedisStore, Store, open_store

__all__ = [
    "Authorizer",
    "BadGateway",
    "BadRequest",
    "Decision",
    "Forbidden",
    "Gateway",
    "GatewayTimeout",
    "GuardMiddleware",
    "HTTPError",
    "LoadError",
    "Match",
    "Matcher",
    "MemoryStore",
    "NotFound",
    "PayloadTooLarge",
    "Policy",
    "Principal",
    "RedisStore",
    "Rule",
    "Secret",
    "ServiceUnavailable",
    "Settings",
    "SmsguardError",
    "Store",
    "TokenVerifier",
    "Unauthorized",
    "create_app",
    "load_policies",
    "load_policy",
    "load_settings",
    "open_store",
    "parse_policy",
    "parse_settings",
]

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access)
_ERRORS = (
    "BadGateway BadRequest Forbidden GatewayTimeout HTTPError LoadError NotFound PayloadTooLarge "
    "ServiceUnavailable SmsguardError Unauthorized"
)
_HOMES: dict[str, str] = {
    **dict.fromkeys(("Gateway", "create_app"), "gateway.app"),
    **dict.fromkeys(("Principal", "TokenVerifier"), "gateway.auth.jwt"),
    **dict.fromkeys(("Secret", "Settings", "load_settings", "parse_settings"), "gateway.config.settings"),
    **dict.fromkeys(_ERRORS.split(), "gateway.errors"),
    **dict.fromkeys(("Authorizer", "Decision"), "gateway.guard.authorize"),
    "GuardMiddleware": "gateway.guard.middleware",
    **dict.fromkeys(("Match", "Matcher"), "gateway.policy.matcher"),
    **dict.fromkeys(("Policy", "Rule"), "gateway.policy.model"),
    **dict.fromkeys(("load_policies", "load_policy", "parse_policy"), "gateway.policy.loader"),
    **dict.fromkeys(("MemoryStore", "RedisStore", "Store", "open_store"), "gateway.store"),
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
