"""Per-request observation: the request id, one access event and the request metrics, from one small record.

    Gateway ─► Observer ─► wrapped receive/send ─► /healthz, token endpoints, GuardMiddleware ─► ProxyApp
                  │  scope["smsguard.log"] = RequestRecord
                  │       ◄── Authorizer: canonical path, matched rule, principal (also when it then refuses)
                  │       ◄── whoever answers with an HTTPError: its stable `code` as the reason (`refuse`)
                  │       ◄── ProxyApp: upstream name, time to the upstream's response headers
                  └─ at the end: metrics, then one `request` event on the access logger

The metrics and the access event of the requests that finish during one event-loop iteration are
written together at the end of that iteration (`call_soon`): the same work, but in one hot loop, which
measurably costs less CPU than interleaving it with the next requests' (bench/LOGGING_COST.md).

`send` is wrapped (one closure call per ASGI message): it counts response body bytes, records the
status and appends `x-request-id` to the response headers (the gateway's handlers hand over fresh
header lists without one; the proxy drops the upstream's). `receive` is not wrapped (that cost a few
µs per request): `bytes_in` is what the gateway read of the body, set by whoever reads it (the proxy,
the token endpoints); a refused request's body is never read, so it logs 0. The
request id is the client's `X-Request-ID` when it is 1-128 characters of `A-Za-z0-9._~:@+/=-`, else 32
random hex digits; it is returned to the client and forwarded upstream (the client's own header is replaced).

`decision` is the gateway's verdict: `deny` when the gateway refused the request itself (an HTTPError
below 500: 400, 401, 403, 404, 413, 501), `allow` otherwise, including upstream failures (502/503/504),
which carry their code as `reason` all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .asgi import Message, Receive, Scope, Send
from .logs import fingerprint

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from .errors import HTTPError
    from .metrics import Metrics
    from .policy import Rule
    from .verify import Principal

__all__ = [
    "RECORD_KEY",
    "ObservePlan",
    "Observer",
    "RequestRecord",
    "display_path",
    "logged_path",
    "new_request_id",
    "note_principal",
    "note_refusal",
    "request_id",
    "route_label",
    "rule_label",
]

RECORD_KEY = "smsguard.log"
REQUEST_ID_HEADER = b"x-request-id"
MAX_LOGGED_PATH = 256
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._~:@+/=-]{1,128}")
_GONE = frozenset({"client_disconnected", "cancelled"})
_CLIENT_CLOSED = 499  # nginx's status for "the client went away before the answer": nothing was sent


@dataclass(slots=True, eq=False)
class RequestRecord:
    """What the access event and the metrics need, filled in by whoever learns it during the request."""

    request_id: str
    route: str | None = None  # the route label of a gateway endpoint (policy rules give theirs via `rule`)
    path: str | None = None  # canonical, once known
    rule: Rule | None = None
    principal: Principal | None = None
    reason: str | None = None  # the HTTPError code that answered, or why nothing was answered
    denied: bool = False
    upstream: str | None = None
    upstream_s: float | None = None
    status: int = 0
    bytes_in: int = 0  # request body bytes the gateway read
    bytes_out: int = 0
    probe: bool = False  # a health check or metrics scrape (not logged unless log.health_checks)

    def refuse(self, exc: HTTPError) -> None:
        self.reason = exc.code
        self.denied = exc.status < 500


def note_refusal(scope: Scope, exc: HTTPError) -> None:
    """Record the error answering this request (a no-op when nobody observes it)."""
    record: RequestRecord | None = scope.get(RECORD_KEY)
    if record is not None:
        record.refuse(exc)


def note_principal(scope: Scope, principal: Principal | None) -> None:
    record: RequestRecord | None = scope.get(RECORD_KEY)
    if record is not None:
        record.principal = principal


def new_request_id() -> str:
    return os.urandom(16).hex()


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID when it is well-formed (the first one sent), else a fresh random id."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:  # ASGI servers hand header names over lowercased
            if _REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return new_request_id()


def route_label(method: str, template: str) -> str:
    """`GET /healthz`: a bounded metrics label (an unusual method becomes OTHER)."""
    return f"{method if method in KNOWN_METHODS else 'OTHER'} {template}"


def display_path(file: str) -> str:
    """`file` relative to the working directory when it lies below it (configs resolve paths to absolute)."""
    if os.path.isabs(file):
        with contextlib.suppress(ValueError):
            return str(Path(file).relative_to(Path.cwd()))
    return file


def rule_label(rule: Rule) -> str:
    """`POST /3rdparty/v1/messages (policies/smsgate.yaml:34)`, for the access event's `rule`."""
    return f"{','.join(sorted(rule.methods))} {rule.full_path} ({display_path(rule.file)}:{rule.line})"


def logged_path(scope: Scope) -> str:
    """The raw request path (never the query string), cut at `MAX_LOGGED_PATH` characters."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else str(scope.get("path", ""))
    return path if len(path) <= MAX_LOGGED_PATH else path[:MAX_LOGGED_PATH] + "..."


def _with_request_id(headers: list[tuple[bytes, bytes]], header: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    kept = [item for item in headers if item[0].lower() != REQUEST_ID_HEADER]
    kept.append(header)
    return kept


def _bearer_fingerprint(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return fingerprint(token) if scheme.lower() == "bearer" and token else None
    return None


@dataclass(frozen=True, slots=True)
class ObservePlan:
    """What to do for each request of one config version (None on the Runtime: nothing at all)."""

    access: bool  # write the access event
    probes: bool  # ... also for health checks and metrics scrapes
    count: bool  # metrics
    labels: Mapping[int, str]  # id(rule) -> "POST /3rdparty/v1/messages (policies/smsgate.yaml:34)"


class Observer:
    """Wraps each request: times it, tracks it in its record, then writes the access event and the metrics.

    `handler(context, scope, receive, send)` is what answers the request (the Gateway's, with its Runtime
    as `context`).
    """

    def __init__(
        self,
        log: FilteringBoundLogger,
        metrics: Metrics,
        handler: Callable[[Any, Scope, Receive, Send], Awaitable[None]],
    ) -> None:
        self.log = log
        self.metrics = metrics
        self.handler = handler
        self.active = 0  # requests in flight (the gauge reads it; in multiprocess mode it is kept in step)
        self._pending: list[tuple[Scope, RequestRecord, float, ObservePlan]] = []
        self._gauge = metrics.in_flight if metrics.multiprocess_dir is not None else None
        if self._gauge is None:
            metrics.in_flight.set_function(lambda: self.active)

    async def __call__(self, plan: ObservePlan, context: Any, scope: Scope, receive: Receive, send: Send) -> None:
        start = perf_counter()
        record = RequestRecord(request_id(scope["headers"]))
        scope[RECORD_KEY] = record
        header = (REQUEST_ID_HEADER, record.request_id.encode("ascii"))

        def send_counted(message: Message) -> Awaitable[None]:
            # A plain function handing back `send`'s awaitable: no coroutine of its own per message.
            if message["type"] == "http.response.body":
                body = message.get("body")
                if body:
                    record.bytes_out += len(body)
            elif message["type"] == "http.response.start":
                record.status = message["status"]
                headers = message.get("headers")
                if headers.__class__ is list:  # the gateway's own answers: a fresh list, no x-request-id yet
                    headers.append(header)
                else:
                    message["headers"] = _with_request_id(list(headers or ()), header)
            return send(message)

        gauge = self._gauge if plan.count else None
        self.active += 1
        if gauge is not None:
            gauge.inc()
        try:
            await self.handler(context, scope, receive, send_counted)
        except BaseException as exc:
            if record.reason is None:
                code = getattr(exc, "code", None)
                if not isinstance(code, str):
                    code = "internal_error" if isinstance(exc, Exception) else "cancelled"
                record.reason = code
            raise
        finally:
            self.active -= 1
            if gauge is not None:
                gauge.dec()
            self._pending.append((scope, record, perf_counter() - start, plan))
            if len(self._pending) == 1:
                asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        """Count and log the requests that finished during this loop iteration, together (one hot loop)."""
        batch, self._pending = self._pending, []
        failure: Exception | None = None
        for scope, record, duration_s, plan in batch:
            try:
                self.finish(scope, record, duration_s, plan)
            except Exception as exc:  # the others are still counted and logged; the loop reports this one
                failure = failure or exc
        if failure is not None:
            raise failure

    def finish(self, scope: Scope, record: RequestRecord, duration_s: float, plan: ObservePlan) -> None:
        """Count the request and write its access event."""
        status = record.status or (_CLIENT_CLOSED if record.reason in _GONE else 500)
        rule = record.rule
        method: str = scope["method"]
        route = f"{method} {rule.full_path}" if rule is not None else (record.route or "none")
        decision = "deny" if record.denied else "allow"
        reason = record.reason
        if plan.count:
            self.metrics.observe_request(route, decision, status, duration_s, record.upstream, record.upstream_s)
            if status == 401 and reason is not None and reason != "missing_token":
                self.metrics.token_failure(reason)
        if not plan.access or (record.probe and not plan.probes):
            return
        principal = record.principal
        upstream_s = record.upstream_s
        client = scope.get("client")
        token_hash = None
        if reason is not None and reason.startswith("invalid_token"):
            token_hash = _bearer_fingerprint(scope["headers"])
        (self.log.error if status >= 500 else self.log.info)(
            "request",
            request_id=record.request_id,
            method=method,
            path=record.path if record.path is not None else logged_path(scope),
            route=route,
            rule=None if rule is None else plan.labels.get(id(rule)) or rule_label(rule),
            upstream=record.upstream,
            decision=decision,
            reason=reason,
            client=client[0] if client else None,
            subject=principal.subject if principal else None,
            jti=principal.token_id if principal else None,
            issuer=principal.issuer if principal else None,
            token_hash=token_hash,
            required=None if rule is None else list(rule.scopes),
            granted=sorted(principal.scopes) if principal else None,
            status=status,
            bytes_in=record.bytes_in,
            bytes_out=record.bytes_out,
            upstream_ms=None if upstream_s is None else round(upstream_s * 1000, 3),
            duration_ms=round(duration_s * 1000, 3),
        )
