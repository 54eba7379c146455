"""smsguard: a scope-aware authorization gateway for SMS APIs.

Embed the guard in any Starlette/FastAPI app (`GuardMiddleware`), run the reverse proxy
(`create_app`, or `gateway serve`), or use the policy engine directly (`Authorizer`, `Matcher`).
"""

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
from gateway.policy.matcher import Match, Matcher
from gateway.policy.model import Policy, Rule, load_policies, load_policy, parse_policy
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
