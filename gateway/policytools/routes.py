"""The paths the reverse proxy answers itself, in front of the policy (token endpoints, probes, metrics...)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.config.settings import Settings
from gateway.policy.model import Rule
from gateway.policy.paths import split_segments
from gateway.policytools.common import unnamed_template

__all__ = ["GatewayRoute", "gateway_routes", "overlap", "served_by"]


@dataclass(frozen=True, slots=True)
class GatewayRoute:
    """A path the reverse proxy answers itself, before the policy is consulted."""

    path: str
    prefix: bool  # also everything below `path + "/"`
    what: str
    # Rules the gateway itself enforces on this route, as (method, template with "{}" params, scopes):
    # a policy rule saying exactly that documents the route rather than being shadowed by it.
    enforces: frozenset[tuple[str, str, tuple[str, ...]]] = frozenset()

    def describes(self, rule: Rule) -> bool:
        """The rule states exactly what the gateway enforces here (e.g. SMSGate's token endpoints)."""
        template = unnamed_template(rule.full_path)
        return bool(rule.methods) and all((m, template, rule.scopes) in self.enforces for m in rule.methods)

    def serves(self, path: str) -> bool:
        return path == self.path or (self.prefix and path.startswith(self.path + "/"))

    def shape(self) -> str:
        return f"{self.path}[/...]" if self.prefix else self.path


def gateway_routes(settings: Settings) -> tuple[GatewayRoute, ...]:
    """What `gateway.app.Gateway` intercepts in front of the policy (keep in step with app.py)."""
    mount = settings.tokens.mount.rstrip("/")
    metrics = settings.metrics.served_path  # None when metrics are off or on their own port
    return (
        GatewayRoute(
            f"{mount}/auth/token",
            True,
            "token endpoints",
            frozenset(
                {
                    ("POST", f"{mount}/auth/token", ("tokens:manage",)),
                    ("DELETE", f"{mount}/auth/token/{{}}", ("tokens:manage",)),
                    ("POST", f"{mount}/auth/token/refresh", ("tokens:refresh",)),
                }
            ),
        ),
        GatewayRoute("/healthz", False, "liveness probe"),
        GatewayRoute("/readyz", False, "readiness probe"),
        *((GatewayRoute(metrics, False, "metrics"),) if metrics else ()),
        GatewayRoute("/.well-known/jwks.json", False, "JWKS of the gateway's own keys"),
        GatewayRoute("/admin", True, "admin API"),
    )


def served_by(path: str, routes: Sequence[GatewayRoute]) -> GatewayRoute | None:
    return next((route for route in routes if route.serves(path)), None)


def overlap(template: str, route: GatewayRoute) -> Literal["all", "some"] | None:
    """Whether requests matching a rule's template are answered by `route`: all of them, some, or none."""
    have, want = split_segments(template), split_segments(route.path)
    if len(have) < len(want) or (len(have) > len(want) and not route.prefix):
        return None
    literal = True
    for got, expected in zip(have, want, strict=False):
        if got.startswith("{"):
            literal = False
            if not expected:
                return None
        elif got != expected:
            return None
    return "all" if literal else "some"
