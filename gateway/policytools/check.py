"""`gateway policy check`: allow or deny a request exactly as the gateway would (nothing is forwarded)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from gateway.auth.jwt import Principal
from gateway.config.settings import Settings
from gateway.errors import HTTPError
from gateway.guard.authorize import Authorizer
from gateway.policy.model import Rule
from gateway.policytools.common import CLI_SUBJECT, rule_where, split_target
from gateway.policytools.routes import GatewayRoute, gateway_routes, served_by

__all__ = ["CheckResult", "check", "render_check"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Allow or deny, as the gateway decided it."""

    method: str
    target: str
    allowed: bool
    status: int = 200
    code: str = ""
    message: str = ""
    rule: Rule | None = None
    principal: Principal | None = None
    served_by: GatewayRoute | None = None

    def outcome(self) -> str:
        """`allow`, or the status and reason code: `403 insufficient_scope`."""
        return "allow" if self.allowed else f"{self.status} {self.code}"


async def check(
    authorizer: Authorizer,
    method: str,
    target: str,
    *,
    principal: Principal | None = None,
    token: str | None = None,
    settings: Settings | None = None,
) -> CheckResult:
    """Decide `method target` for `principal` (route + decide), or for `token` (the full `authorize`).

    Nothing is forwarded. With neither, the request is anonymous.
    """
    raw_path, query = split_target(target)
    raw_query = query.encode()
    result = CheckResult(method, target, allowed=False)
    try:
        path, match = authorizer.route(method, raw_path, raw_query)
        result = replace(result, rule=match.rule)
        if settings is not None:
            result = replace(result, served_by=served_by(path, gateway_routes(settings)))
        if token is not None:
            headers = [(b"authorization", b"Bearer " + token.encode())]
            decision = await authorizer.authorize(method, raw_path, headers, raw_query)
        else:
            decision = authorizer.decide(path, match, principal)
    except HTTPError as exc:
        return replace(result, status=exc.status, code=exc.code, message=exc.message)
    return replace(result, allowed=True, principal=decision.principal)


def render_check(result: CheckResult) -> str:
    """`ALLOW POST /3rdparty/v1/messages (rule policies/smsgate.yaml:12)` or `DENY 403 insufficient_scope: ...`."""
    rule = f" (rule {rule_where(result.rule)}{', public' if result.rule.public else ''})" if result.rule else ""
    if result.allowed:
        who = result.principal
        subject = f" as {who.subject}" if who is not None and who.subject != CLI_SUBJECT else ""
        line = f"ALLOW {result.method} {result.target}{subject}{rule}"
    else:
        line = f"DENY {result.status} {result.code}: {result.message}{rule}"
    if result.served_by is not None:
        line += (
            f"\nnote: the running gateway answers {result.served_by.shape()} itself ({result.served_by.what});"
            " the policy decision above is not consulted there"
        )
    return line + "\n"
