"""The embedded guard's observability: the gateway's own access event and metrics, inside any app.

`GuardObserver` is the gateway's `Observer` (gateway.observe.events) with two embedding choices:
the access event goes to the stdlib logger `smsguard.access` (so the app's logging configuration
decides where it lands and at which level), and it is written for refusals only unless every request
is asked for. Metrics are counted only on a registry the app hands over (`metrics_registry=`), where
they appear under the gateway's names (`smsguard_requests_total{method,route,decision,status}`, ...).
Allowed requests are timed to the end of the app's answer, like the gateway's; a websocket's to its close.
Like the gateway's, observed HTTP responses carry an `x-request-id` header.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from gateway.observe.events import ObservePlan, Observer, RequestRecord
from gateway.observe.logs import make_logger
from gateway.observe.metrics import Metrics
from gateway.observe.tracing import OFF, Tracer
from gateway.web.asgi import Receive, Scope, Send

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from structlog.typing import FilteringBoundLogger

__all__ = ["GuardObserver"]


class GuardObserver(Observer):
    """Access events (refusals, or all requests) and optional metrics for one GuardMiddleware."""

    def __init__(
        self,
        handler: Callable[[Any, Scope, Receive, Send], Awaitable[None]],
        *,
        access_log: str = "refusals",
        registry: CollectorRegistry | None = None,
        log: FilteringBoundLogger | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        """`log` defaults to a structlog logger handing events to stdlib logging (`smsguard.access`); a
        `tracer` that is on makes each request a server span (gateway.observe.tracing)."""
        super().__init__(
            log if log is not None else make_logger("smsguard.access", level="info"),
            Metrics(registry=registry),  # counts nothing unless `registry` is given (plan.count)
            handler,
            tracer=tracer or OFF,
        )
        self.plan = ObservePlan(access=access_log != "off", probes=False, count=registry is not None, labels={})
        self._quiet = replace(self.plan, access=False)
        self.refusals_only = access_log == "refusals"

    def finish(self, scope: Scope, record: RequestRecord, duration_s: float, plan: ObservePlan) -> None:
        """Count the request; write its access event if it was refused, or if every request is logged."""
        if self.refusals_only and not record.denied:
            plan = self._quiet
        super().finish(scope, record, duration_s, plan)
