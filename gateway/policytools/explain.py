"""`gateway policy explain`: which rule matches a request, what it requires and where it would go."""

from __future__ import annotations

from dataclasses import dataclass, replace

from yarl import URL

from gateway.config.settings import Settings
from gateway.errors import HTTPError
from gateway.policy.forwarding import upstream_url
from gateway.policy.matcher import Match, Matcher
from gateway.policy.model import Rule, display_path, rule_label
from gateway.policy.paths import canonical_path
from gateway.policytools.common import offline_authorizer, split_target
from gateway.policytools.requirement import Requirement
from gateway.policytools.routes import GatewayRoute, gateway_routes, served_by

__all__ = ["Explanation", "explain", "render_explanation"]


@dataclass(frozen=True, slots=True)
class Explanation:
    """What the gateway would do with (method, target), before any credentials are looked at."""

    method: str
    target: str
    path: str | None = None  # canonical path, None when refused
    refusal: HTTPError | None = None  # 400 or 404 from `Authorizer.route`
    match: Match | None = None
    upstream: str | None = None  # the exact URL (credentials not shown), when the config names the upstream
    upstream_note: str = ""
    served_by: GatewayRoute | None = None
    other_methods: tuple[Rule, ...] = ()
    nearest: tuple[Rule, ...] = ()

    @property
    def answered(self) -> bool:
        """Whether the gateway would serve the request (itself, or by forwarding it)."""
        return self.served_by is not None or (self.match is not None and self.refusal is None)


def explain(method: str, target: str, matcher: Matcher, settings: Settings | None = None) -> Explanation:
    """Which rule matches `method target`, what it requires and where it would be forwarded."""
    raw_path, query = split_target(target)
    routes = gateway_routes(settings) if settings is not None else ()
    try:
        path, match = offline_authorizer(matcher).route(method, raw_path, query.encode())
    except HTTPError as exc:
        if exc.status != 404:
            return Explanation(method, target, refusal=exc)
        path = canonical_path(raw_path)
        return Explanation(
            method,
            target,
            path=path,
            refusal=exc,
            served_by=served_by(path, routes),
            other_methods=tuple(rule for rule in matcher.candidates(path) if method not in rule.methods),
            nearest=tuple(matcher.nearest(method, path)),
        )
    explained = Explanation(method, target, path, match=match, served_by=served_by(path, routes))
    try:
        return _forwarding(explained, match.rule, query, settings)
    except HTTPError as exc:  # the proxy refuses what it cannot forward exactly (e.g. a query with spaces)
        return replace(explained, refusal=exc)


def _forwarding(e: Explanation, rule: Rule, query: str, settings: Settings | None) -> Explanation:
    """Where the proxy sends it: `upstream_url`, on the target the proxy itself computes."""
    if rule.upstream is None:
        return replace(e, upstream_note="none named: in middleware mode the wrapped app answers")
    if settings is None:
        return replace(e, upstream_note="give --config for the exact upstream URL")
    upstream = settings.upstreams.get(rule.upstream)
    if upstream is None:
        note = f"not configured in {display_path(settings.file)}: the gateway refuses to start"
        return replace(e, upstream_note=note)
    assert e.path is not None
    url = upstream_url(URL(upstream.url), rule.mount, e.path, query)
    kind = upstream.credentials.kind
    note = "no credentials added" if kind == "none" else f"{kind} credentials added by the gateway"
    return replace(e, upstream=str(url), upstream_note=note)


def _row(name: str, value: str) -> str:
    return f"  {name + ':':<10} {value}"


def render_explanation(e: Explanation) -> str:
    lines = [f"{e.method} {e.target}"]
    if e.path is not None and e.path != split_target(e.target)[0]:
        lines.append(_row("canonical", e.path))
    if e.served_by is not None:
        lines.append(_row("served by", f"the gateway itself ({e.served_by.what}); the policy is not consulted"))
    if e.match is not None:
        lines += _explain_match(e, e.match)
    if e.refusal is not None and e.refusal.status != 404:
        lines.append(_row("refused", f"{e.refusal.status} {e.refusal.code}: {e.refusal.message}"))
        lines.append(f"  the gateway answers {e.refusal.status} and forwards nothing")
    elif e.match is None and e.served_by is None:
        lines += _explain_miss(e)
    return "\n".join(lines) + "\n"


def _explain_match(e: Explanation, match: Match) -> list[str]:
    rule = match.rule
    lines = [_row("rule", rule_label(rule))]
    if rule.description:
        lines.append(_row("about", rule.description))
    lines.append(_row("requires", Requirement.of(rule).sentence()))
    if match.params:
        lines.append(_row("params", ", ".join(f"{name}={value}" for name, value in match.params.items())))
    if e.served_by is not None:
        return [*lines, _row("upstream", f"{rule.upstream or '-'} (not forwarded: the gateway answers itself)")]
    note = f" ({e.upstream_note})" if e.upstream_note else ""
    lines.append(_row("upstream", f"{rule.upstream or '-'}{note}"))
    return lines if e.upstream is None else [*lines, _row("forwards", f"{e.method} {e.upstream}")]


def _explain_miss(e: Explanation) -> list[str]:
    lines = ["  no rule matches: the gateway answers 404 and forwards nothing"]
    if e.other_methods:
        lines.append("  same path, other methods:")
        lines += [f"    {rule_label(rule)}" for rule in e.other_methods]
    if e.nearest:
        lines.append("  nearest rules:")
        lines += [f"    {rule_label(rule)}" for rule in e.nearest]
    return lines
