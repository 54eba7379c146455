"""The authorization decision, in one place.

The middleware, the reverse proxy and `gateway policy check` all call `Authorizer.authorize`, so a policy
test or a CLI check decides exactly as the running gateway does. Order matters and is fixed:
canonicalize the path (400) → match a rule (404, default deny; a websocket handshake needs a rule with
`websocket: true`) → authenticate unless public (401) → check scopes (403).

A public rule still identifies its caller: a valid credential sets the Decision's principal, so the app
knows who asked. An invalid one on a public route is ignored (the request goes on anonymously): public
means anyone may call, and a stale token must not turn a health check or the docs into a 401.

A request without an `Authorization` header may carry a gateway key in its provider's own slot
(`X-API-KEY`, `apiKey`, `userId`/`password`) where the rule's policy enables one: `slot`, when set
(gateway/keys/slots.py), reads it. For a slot that a form body may hold (SMSGatewayCenter's `userId`/`password`
in a POST form), the caller passes `body`, a `BodyReader`: the guard middleware reads the body once and
replays it to the app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

import httpx

from gateway.auth.authenticate import Authenticator
from gateway.auth.basic import BasicAuthenticator, BasicMetrics
from gateway.auth.jwks import JwksMetrics
from gateway.auth.jwt import Principal, TokenVerifier
from gateway.auth.peer import Peer
from gateway.config.settings import Settings
from gateway.errors import BadRequest, Forbidden, HTTPError, NotFound, Unauthorized
from gateway.policy.loader import load_policies
from gateway.policy.matcher import Match, Matcher
from gateway.policy.model import Policy, Rule
from gateway.policy.paths import canonical_path

if TYPE_CHECKING:
    from gateway.observe.events import RequestRecord

__all__ = ["Authorizer", "BodyReader", "CredentialSlot", "Decision"]

# (limit) → the whole request body, or None when it is longer than `limit` bytes; the app still receives it
BodyReader = Callable[[int], Awaitable[bytes | None]]
# (rule, headers, raw query, body reader or None) → the principal of a credential in the rule's provider
# slot, None if none
CredentialSlot = Callable[[Rule, Sequence[tuple[bytes, bytes]], bytes, BodyReader | None], Awaitable[Principal | None]]

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

    def __init__(self, matcher: Matcher, authenticator: Authenticator, mounts: Sequence[str] | None = None) -> None:
        """`mounts`: the policies' mount points (default: those of the compiled rules)."""
        self.matcher = matcher
        self.authenticator = authenticator
        found = {rule.mount for rule in matcher.rules()} if mounts is None else set(mounts)
        self.mounts: tuple[str, ...] = tuple(sorted(found))
        self.slot: CredentialSlot | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        policies: Sequence[Policy] | None = None,
        http: httpx.AsyncClient | None = None,
        is_revoked: Callable[[Principal], Awaitable[bool]] | None = None,
        metrics: JwksMetrics | None = None,
        basic_metrics: BasicMetrics | None = None,
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
        basic = BasicAuthenticator(
            auth.basic_users, enabled=auth.basic_enabled, limits=auth.basic_limits, metrics=basic_metrics
        )
        authenticator = Authenticator(
            verifier,
            basic,
            max_header_bytes=auth.max_header_bytes,
            cache_size=auth.token_cache_size,
            is_revoked=is_revoked,
            trusted_proxies=settings.proxy.trusted_proxies,
        )
        loaded = load_policies(settings.policies) if policies is None else policies
        return cls(Matcher(loaded), authenticator, [policy.mount for policy in loaded])

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
        websocket: bool = False,
        peer: Peer | None = None,
        body: BodyReader | None = None,
    ) -> Decision:
        """Return the Decision for an allowed request; raise an HTTPError for any refusal.

        `websocket`: the request is a websocket handshake (`method` is then GET), allowed only by a rule
        with `websocket: true`. `record` (the access log's) learns the canonical path, the rule and the
        principal as soon as each is known, so a refusal is logged with what was known: who lacked which
        scope for which rule. `body` reads the request body for a key slot that a form may hold (none: the
        body is not read).
        """
        path, match = self.route(method, raw_path, query, websocket=websocket)
        trace = None
        if record is not None:
            record.path = path
            record.rule = match.rule
            trace = record.trace
        if trace is None:
            principal = await self.principal(match.rule, headers, query, peer, body)
        else:  # tracing on: verification (tokens, Basic, keys, and the revocation lookup) is a span
            with trace.tracer.child("smsguard.auth", {"smsguard.rule.public": match.rule.public}) as span:
                principal = await self.principal(match.rule, headers, query, peer, body)
                span.set_attribute("smsguard.authenticated", principal is not None)
        if record is not None:
            record.principal = principal
        return self.decide(path, match, principal)

    async def principal(
        self,
        rule: Rule,
        headers: Sequence[tuple[bytes, bytes]],
        query: bytes,
        peer: Peer | None,
        body: BodyReader | None,
    ) -> Principal | None:
        """Who is asking: the credentials' principal (ignored when invalid on a public rule), a key slot's, or None."""
        if rule.public:
            return await self.identify(headers, peer=peer)
        principal = await self.authenticator.authenticate(headers, peer=peer)
        if principal is None and self.slot is not None:
            principal = await self.slot(rule, headers, query, body)
        return principal

    async def identify(self, headers: Sequence[tuple[bytes, bytes]], *, peer: Peer | None = None) -> Principal | None:
        """Who is calling a public route: the principal of valid credentials, None for none or invalid ones."""
        try:
            return await self.authenticator.authenticate(headers, peer=peer)
        except HTTPError:  # invalid, expired, revoked, malformed or unverifiable now: public all the same
            return None

    def route(
        self, method: str, raw_path: bytes | str, query: bytes = b"", *, websocket: bool = False
    ) -> tuple[str, Match]:
        """Canonicalize and match: 400 for a non-canonical path, 404 when no rule matches (default deny)."""
        path = canonical_path(raw_path)
        match = self.matcher.match(method, path)
        if match is None:
            raise NotFound(f"no route for {_request_name(method, websocket)} {path}{self._hint(method, path)}")
        if websocket and not match.rule.websocket:
            raise NotFound(
                f"no websocket route for {path}: the rule {match.rule.label()} does not allow websockets "
                "(add `websocket: true` to it)",
                code="no_route:websocket",
            )
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

    def _hint(self, method: str, path: str) -> str:
        """Why nothing matched, when it is a common mistake: HEAD on a GET rule, or a path outside every mount."""
        if method == "HEAD" and self.matcher.match("GET", path) is not None:
            return " (a GET rule matches, but HEAD is not GET unless the rule says so: add HEAD to its methods)"
        if self.mounts and not any(inside(path, mount) for mount in self.mounts):
            return f" (outside the policies' mounts: {', '.join(mount or '/' for mount in self.mounts)})"
        return ""


def inside(path: str, mount: str) -> bool:
    """Whether `path` lies under `mount` (`""` is the root mount: everything does)."""
    return not mount or path == mount or path.startswith(mount + "/")


def _request_name(method: str, websocket: bool) -> str:
    return "websocket" if websocket else method


def _token_in_query(query: bytes) -> bool:
    """Whether any parameter is named `access_token` as the upstream will read it (decoded, any case; `;`
    separates parameters as well as `&`)."""
    if not query:
        return False
    for part in query.replace(b";", b"&").split(b"&"):
        name, equals, _ = part.partition(b"=")
        if not equals:
            continue
        if b"%" in name or b"+" in name:
            name = unquote_plus(name.decode("latin-1")).encode("latin-1", "replace")
        if name.lower() == _TOKEN_QUERY_NAME:
            return True
    return False
