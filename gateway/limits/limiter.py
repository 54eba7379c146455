"""Rate limits, SMS quotas and destination rules for allowed requests, before anything is forwarded.

`LimitsApp` sits between the guard and the forwarder (`GuardMiddleware(LimitsApp(ProxyApp))`): the
guard has decided who asks for which rule (`scope["smsguard"]`); for a rule with limits or an
`sms.send` entry, `Limiter.check` runs, in this order, and nothing is forwarded unless all pass:

1. a send request's body is read (at most `max_body_bytes`; 413 beyond; once: the guard's `BodyReplay`
   when it read it already) and its recipients and text found (400 when the body cannot be read as the
   policy says);
2. destinations (no store involved): recipients per request, then each number parsed with
   libphonenumber, its country and its number type; the policy's rules narrowed by the caller's `sms`
   claim (a token minted narrower, or a Basic user's `sms:`) → 403 `destination_not_allowed`;
3. every limit that applies plus the prefix velocity of each number prefix, in ONE store call (GCRA,
   all or nothing; one Lua script on Redis) → 429 naming the limit, with `Retry-After`;
   a store that is down or slow refuses with 503 within `store_timeout_s` (fail closed).

Allowed responses carry `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10),
one list member per limit: `"sends-per-minute";q=10;w=10` (GCRA: `q` units at once, refilled over `w`
seconds) and `"sends-per-minute";r=7;t=3` (units left now, seconds until full).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gateway.auth.peer import peer_of
from gateway.errors import HTTPError, PayloadTooLarge, StoreUnavailable, TooManyRequests
from gateway.limits.sms import Recipient, RecipientCache, SendRequest, check_destinations, extract, mask
from gateway.observe.events import RECORD_KEY
from gateway.policy.model import Destinations, Limit, Policy, Rule, SendSpec
from gateway.store.gcra import RateCheck, RateLimiting, RateResult
from gateway.web.asgi import ASGIApp, Message, Receive, Scope, Send
from gateway.web.body import body_replay
from gateway.web.responses import send_error

if TYPE_CHECKING:
    from gateway.auth.jwt import Principal
    from gateway.auth.peer import Network
    from gateway.config.settings import Settings
    from gateway.guard.authorize import Decision

__all__ = ["LimitMetrics", "Limiter", "LimitsApp", "RulePlan"]

_VELOCITY = "prefix_velocity"


class LimitMetrics(Protocol):
    def limit_refused(self, limit: str, reason: str) -> None: ...
    def sms_sent(self, upstream: str, country: str, recipients: int) -> None: ...


@dataclass(frozen=True, slots=True)
class RulePlan:
    """What applies to one rule: its policy's limits for it, its send spec, its destinations."""

    namespace: str  # the policy's mount: limits of different policies never share a bucket
    upstream: str
    limits: tuple[Limit, ...]
    send: SendSpec | None
    destinations: Destinations | None

    @property
    def inert(self) -> bool:
        """Only a send spec: nothing to check unless the caller's `sms` claim narrows it."""
        return not self.limits and self.destinations is None

    @property
    def counts_segments(self) -> bool:
        return any(limit.cost == "segments" for limit in self.limits)


def _plan(policy: Policy, rule: Rule) -> RulePlan | None:
    def covers(method: str, path: str) -> bool:
        return method in rule.methods and path == rule.path

    limits = tuple(limit for limit in policy.limits if not limit.routes or any(covers(*r) for r in limit.routes))
    sms = policy.sms
    send = next((spec for spec in sms.send if covers(spec.method, spec.path)), None) if sms else None
    if not limits and send is None:
        return None
    return RulePlan(policy.mount, policy.upstream or "", limits, send, sms.destinations if sms else None)


def _narrowing(principal: Principal | None) -> Mapping[str, Any]:
    claim = principal.claims.get("sms") if principal is not None else None
    return claim if isinstance(claim, Mapping) else {}


def _effective(plan: RulePlan, principal: Principal | None) -> tuple[frozenset[str] | None, int | None]:
    """The countries and recipients per request allowed: the policy's, narrowed by the caller's `sms` claim."""
    rules, narrow = plan.destinations, _narrowing(principal)
    countries = rules.countries if rules is not None else None
    claimed = narrow.get("countries")
    if isinstance(claimed, list):
        mine = frozenset(str(code) for code in claimed)
        countries = mine if countries is None else countries & mine
    most = rules.max_recipients if rules is not None else None
    claimed_most = narrow.get("max_recipients")
    if isinstance(claimed_most, int) and not isinstance(claimed_most, bool):
        most = claimed_most if most is None else min(most, claimed_most)
    return countries, most


def _caller(limit: Limit, decision: Decision, client: str) -> str:
    principal = decision.principal
    if limit.per == "client" or principal is None:
        return "c:" + client
    if limit.per == "token":
        return "t:" + (principal.token_id or principal.issuer + ":" + principal.subject)
    if limit.per == "issuer":
        return "i:" + principal.issuer
    return "s:" + principal.subject


def _costs(request: SendRequest | None, needs_segments: bool) -> dict[str, int]:
    """Each cost unit of one request, counted once (segments only when a limit counts them)."""
    if request is None:
        return {"requests": 1, "recipients": 0, "segments": 0}  # a request that sends nothing counts no SMS
    parts = request.segments() if needs_segments else 0
    return {"requests": 1, "recipients": len(request.recipients), "segments": parts}


def rate_headers(limits: Sequence[Limit], results: Sequence[RateResult]) -> list[tuple[bytes, bytes]]:
    policy = ", ".join(
        f'"{limit.name}";q={limit.burst};w={math.ceil(limit.burst * limit.rate.interval_us / 1e6)}' for limit in limits
    )
    state = ", ".join(
        f'"{limit.name}";r={result.remaining};t={math.ceil(result.reset_s)}'
        for limit, result in zip(limits, results, strict=True)
    )
    return [(b"ratelimit-policy", policy.encode()), (b"ratelimit", state.encode())]


class Limiter:
    """Plans per rule (built once per policy version) and the checks of one request against the store."""

    def __init__(
        self,
        policies: Sequence[Policy],
        store: object,
        *,
        trusted_proxies: Sequence[Network] = (),
        metrics: LimitMetrics | None = None,
    ) -> None:
        self.plans: dict[int, RulePlan] = {}
        for policy in policies:
            for rule in policy.rules:
                plan = _plan(policy, rule)
                if plan is not None:
                    self.plans[id(rule)] = plan
        self._store = store if isinstance(store, RateLimiting) else None
        self._trusted = tuple(trusted_proxies)
        self._metrics = metrics
        self._recipients = RecipientCache()

    def plan(self, decision: Decision | None) -> RulePlan | None:
        return self.plans.get(id(decision.rule)) if decision is not None else None

    def _refused(self, limit: str, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.limit_refused(limit, reason)

    def destinations(self, plan: RulePlan, request: SendRequest, principal: Principal | None) -> list[Recipient]:
        countries, most = _effective(plan, principal)
        try:
            return check_destinations(request.recipients, plan.destinations, countries, most, self._recipients.parse)
        except HTTPError as exc:
            self._refused("destinations", exc.code.rpartition(":")[2])
            raise

    def _checks(
        self, plan: RulePlan, decision: Decision, client: str, request: SendRequest | None, recipients: list[Recipient]
    ) -> tuple[list[Limit], list[RateCheck]]:
        applied: list[Limit] = []
        checks: list[RateCheck] = []
        costs = _costs(request, plan.counts_segments)
        for limit in plan.limits:
            cost = costs[limit.cost]
            if cost:
                applied.append(limit)
                key = f"{plan.namespace}|{limit.name}|{_caller(limit, decision, client)}"
                checks.append(RateCheck(key, limit.rate.interval_us, limit.burst, cost))
        velocity = plan.destinations.prefix_velocity if plan.destinations else None
        if velocity is not None and recipients:
            per_prefix: dict[str, int] = {}
            for recipient in recipients:
                prefix = recipient.e164[:-4]
                per_prefix[prefix] = per_prefix.get(prefix, 0) + 1
            interval = max(1, velocity[1] * 1_000_000 // velocity[0])
            checks += [RateCheck(f"pv|{prefix}", interval, velocity[0], n) for prefix, n in sorted(per_prefix.items())]
        return applied, checks

    async def check(
        self, plan: RulePlan, decision: Decision, scope: Scope, request: SendRequest | None
    ) -> list[tuple[bytes, bytes]]:
        """Refuse (403, 429, 503) or return the RateLimit headers for the response."""
        recipients = self.destinations(plan, request, decision.principal) if request is not None else []
        client = peer_of(scope, self._trusted).address
        applied, checks = self._checks(plan, decision, client, request, recipients)
        if not checks:
            self._count_sent(plan, recipients)
            return []
        if self._store is None:
            raise StoreUnavailable("the store keeps no rate limits")
        try:
            results = await self._store.rate_limit(checks)
        except StoreUnavailable:
            self._refused(applied[0].name if applied else _VELOCITY, "store_unavailable")
            raise
        self._deny(applied, checks, results, recipients)
        self._count_sent(plan, recipients)
        return rate_headers(applied, results[: len(applied)]) if applied else []

    def _deny(
        self, applied: list[Limit], checks: list[RateCheck], results: list[RateResult], recipients: list[Recipient]
    ) -> None:
        for index, result in enumerate(results):
            if result.allowed:
                continue
            check = checks[index]
            if index >= len(applied):
                self._refused(_VELOCITY, _VELOCITY)
                prefix = check.key.partition("|")[2]
                error = TooManyRequests(
                    "too many messages to numbers of this range lately",
                    retry_after_s=math.ceil(result.retry_after_s),
                    code="rate_limited:prefix_velocity",
                )
                error.extra = {
                    "limit": _VELOCITY,
                    "recipients": sorted({mask(r.e164) for r in recipients if r.e164.startswith(prefix)}),
                }
                raise error
            limit = applied[index]
            self._refused(limit.name, "rate")
            if check.cost > check.burst:
                message = f"this request costs {check.cost} {limit.cost}, more than {limit.name} allows at once"
            else:
                message = f"rate limit {limit.name} exceeded"
            error = TooManyRequests(
                message, retry_after_s=math.ceil(result.retry_after_s), code="rate_limited", headers={}
            )
            error.headers.update({k.decode(): v.decode() for k, v in rate_headers(applied, results[: len(applied)])})
            error.extra = {"limit": limit.name}
            raise error

    def _count_sent(self, plan: RulePlan, recipients: list[Recipient]) -> None:
        if self._metrics is None or not recipients:
            return
        per_country: dict[str, int] = {}
        for recipient in recipients:
            per_country[recipient.country] = per_country.get(recipient.country, 0) + 1
        for country, count in per_country.items():
            self._metrics.sms_sent(plan.upstream, country, count)


def _content_type(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return str(value.decode("latin-1"))
    return ""


class LimitsApp:
    """The ASGI hook: limits and SMS rules between the guard's decision and the wrapped app (the forwarder)."""

    def __init__(self, app: ASGIApp, limiter: Limiter, *, max_body_bytes: int = 1_048_576) -> None:
        self.app = app
        self.limiter = limiter
        self._max_body = max_body_bytes

    @classmethod
    def wrap(
        cls, app: ASGIApp, policies: Sequence[Policy], store: object, settings: Settings, metrics: LimitMetrics | None
    ) -> ASGIApp:
        """`app` behind the limits of `policies` (`app` itself when no policy has `limits:` or `sms:`)."""
        limiter = Limiter(policies, store, trusted_proxies=settings.proxy.trusted_proxies, metrics=metrics)
        if not limiter.plans:
            return app
        return cls(app, limiter, max_body_bytes=settings.proxy.max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        decision: Decision | None = scope.get("smsguard") if scope["type"] == "http" else None
        plan = self.limiter.plan(decision)
        if plan is None or (plan.inert and not _narrowing(decision.principal if decision else None)):
            await self.app(scope, receive, send)
            return
        try:
            request: SendRequest | None = None
            if plan.send is not None:
                replay = body_replay(scope, receive)  # the guard's, when it read the body already
                body = await replay.read(self._max_body)
                if body is None:
                    raise PayloadTooLarge(f"the request body is larger than {self._max_body} bytes")
                receive = replay.receive
                request = extract(plan.send, _content_type(scope), body, scope.get("query_string", b""))
            headers = await self.limiter.check(plan, scope["smsguard"], scope, request)
        except HTTPError as exc:
            record = scope.get(RECORD_KEY)
            if record is not None:
                record.refuse(exc)
            await send_error(send, exc)
            return
        await self.app(scope, receive, _with_headers(send, headers) if headers else send)


def _with_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *headers]}
        await send(message)

    return sending
