"""The authorization decision, in one place.

The middleware, the reverse proxy and `gateway policy check` all call `Authorizer.authorize`, so a policy
test or a CLI check decides exactly as the running gateway does. Order matters and is fixed:
canonicalize the path (400) → match a rule (404, default deny) → authenticate unless public (401) →
check scopes (403).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

import httpx

from gateway.auth.authenticate import Authenticator
from gateway.auth.basic import BasicAuthenticator
from gateway.auth.jwks import JwksMetrics
from gateway.auth.jwt import Principal, TokenVerifier
from gateway.config.settings import Settings
from gateway.errors import BadRequest, Forbidden, NotFound, Unauthorized
from gateway.policy.loader import load_policies
from gateway.policy.matcher import Match, Matcher
from gateway.policy.model import Policy, Rule
from gateway.policy.paths import canonical_path

if TYPE_CHECKING:
    from gateway.observe.events import RequestRecord

__all__ = ["Authorizer", "Decision"]

_TOKEN_QUERY_NAME = b"access_token"  # RFC 6750 section 2.3, refused: URLs end up in logs


@dataclass(frozen=True, slots=True)
class Decision:
    """An allowed request: what matched, who asked, and the canonical path that must be forwarded."""

    path: str
    rule: Rule
    params: Mapping[str, str]
    principal: Principal | None


class Authorizer:
    """Decides allow or deny for (method, raw path, headers) against the compiled policy."""

    def __init__(self, matcher: Matcher, authenticator: Authenticator) -> None:
        self.matcher = matcher
        self.authenticator = authenticator

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        policies: Sequence[Policy] | None = None,
        http: httpx.AsyncClient | None = None,
        is_revoked: Callable[[Principal], Awaitable[bool]] | None = None,
        metrics: JwksMetrics | None = None,
    ) -> Authorizer:
        """Compile the policies and build the verifiers that `settings` describe (JWKS fetches go to `metrics`)."""
        auth = settings.auth
        verifier = TokenVerifier(
            settings.all_issuers(),
            leeway_s=auth.leeway_s,
            max_token_lifetime_s=auth.max_token_lifetime_s,
            max_refresh_lifetime_s=settings.tokens.refresh_ttl_s,
            http=http,
            metrics=metrics,
        )
        basic = BasicAuthenticator(auth.basic_users, enabled=auth.basic_enabled)
        authenticator = Authenticator(verifier, basic, max_header_bytes=auth.max_header_bytes, is_revoked=is_revoked)
        loaded = load_policies(settings.policies) if policies is None else policies
        return cls(Matcher(loaded), authenticator)

    async def aclose(self) -> None:
        await self.authenticator.verifier.aclose()

    async def authorize(
        self,
        method: str,
        raw_path: bytes | str,
        headers: Sequence[tuple[bytes, bytes]],
        query: bytes = b"",
        *,
        record: RequestRecord | None = None,
    ) -> Decision:
        """Return the Decision for an allowed request; raise an HTTPError for any refusal.

        `record` (the access log's) learns the canonical path, the rule and the principal as soon as
        each is known, so a refusal is logged with what was known: who lacked which scope for which rule.
        """
        path, match = self.route(method, raw_path, query)
        if record is not None:
            record.path = path
            record.rule = match.rule
        principal = None if match.rule.public else await self.authenticator.authenticate(headers)
        if record is not None:
            record.principal = principal
        return self.decide(path, match, principal)

    def route(self, method: str, raw_path: bytes | str, query: bytes = b"") -> tuple[str, Match]:
        """Canonicalize and match: 400 for a non-canonical path, 404 when no rule matches (default deny)."""
        path = canonical_path(raw_path)
        match = self.matcher.match(method, path)
        if match is None:
            raise NotFound(f"no route for {method} {path}", code="no_route")
        if _token_in_query(query):
            raise BadRequest(
                "tokens are not accepted in the query string; use the Authorization header",
                code="bad_request:token_in_query",
            )
        return path, match

    def decide(self, path: str, match: Match, principal: Principal | None) -> Decision:
        """Check the matched rule against who is asking: 401 for nobody, 403 for missing scopes."""
        rule = match.rule
        if rule.public:
            return Decision(path, rule, match.params, principal)
        if principal is None:
            raise Unauthorized("authentication required", code="missing_token")
        if not rule.allows(principal.scopes):
            required = rule.required_text
            raise Forbidden(f"insufficient scope: {required} required", required=required)
        return Decision(path, rule, match.params, principal)


def _token_in_query(query: bytes) -> bool:
    """Whether any parameter is named `access_token` as the upstream will read it (decoded, any case)."""
    if not query:
        return False
    for part in query.split(b"&"):
        name, equals, _ = part.partition(b"=")
        if not equals:
            continue
        if b"%" in name or b"+" in name:
            name = unquote_plus(name.decode("latin-1")).encode("latin-1", "replace")
        if name.lower() == _TOKEN_QUERY_NAME:
            return True
    return False
