"""Per-request observation: the request id, one access event and the request metrics, from one small record.

    Gateway ─► Observer ─► wrapped receive/send ─► /healthz, token endpoints, GuardMiddleware ─► ProxyApp
                  │  scope["smsguard.log"] = RequestRecord
                  │       ◄── Authorizer: canonical path, matched rule, principal (also when it then refuses)
                  │       ◄── whoever answers with an HTTPError: its stable `code` as the reason (`refuse`)
                  │       ◄── ProxyApp: upstream name, time to the upstream's response headers
                  └─ at the end: metrics, then one `request` event on the access logger

The metrics and the access event of the requests that finish during one event-loop iteration are
written together at the end of that iteration (`call_soon`): the same work, but in one hot loop, which
measurably costs less CPU than interleaving it with the next requests' (bench/LOGGING_COST.md). The
metrics are added once per iteration (`Metrics.flush`). When the access logger's sink takes JSON lines
(`--log-format json`, `LogCapture`), the access line is built here as text and handed to
`logs.JSONOutput`, which redaction-checks and writes it: the very line structlog's chain would write, at
a fraction of the cost of an event dict through its processors and the encoder; the chain still renders
it when the redactor finds something to redact, and for the other sinks (console, stdlib logging).

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
import logging
import os
import re
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

from gateway.observe.logs import fingerprint, json_output, json_string
from gateway.web.asgi import Message, Receive, Scope, Send

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from gateway.auth.jwt import Principal
    from gateway.errors import HTTPError
    from gateway.observe.metrics import Metrics
    from gateway.policy.model import Rule

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
_INFO, _ERROR = logging.INFO, logging.ERROR  # the access event's levels
_ACCESS_KEYS = (  # the access event's fields, in the order both renderings write them
    "request_id",
    "method",
    "path",
    "route",
    "rule",
    "upstream",
    "decision",
    "reason",
    "client",
    "subject",
    "jti",
    "issuer",
    "token_hash",
    "required",
    "granted",
    "status",
    "bytes_in",
    "bytes_out",
    "upstream_ms",
    "duration_ms",
)


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


_fresh_ids: deque[str] = deque()  # popleft is atomic: threads never get the same one
_IDS_PER_DRAW = 64
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_ids.clear)  # a forked worker must not repeat its parent's ids


def new_request_id() -> str:
    """32 random hex digits (os.urandom), drawn 64 at a time: a system call per request cost about 0.5 µs."""
    try:
        return _fresh_ids.popleft()
    except IndexError:
        digits = os.urandom(16 * _IDS_PER_DRAW).hex()
        _fresh_ids.extend(digits[at : at + 32] for at in range(32, len(digits), 32))
        return digits[:32]


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
        self._output = json_output(log)  # the access line's fast path, when the sink takes JSON lines
        self._lists: dict[tuple[str, ...] | frozenset[str], str] = {}
        self._callers: dict[int, tuple[Principal, str, str]] = {}
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
        self.metrics.flush()  # the batch's counts and latencies, added together
        if failure is not None:
            raise failure

    def finish(self, scope: Scope, record: RequestRecord, duration_s: float, plan: ObservePlan) -> None:
        """Count the request (in the metrics at the batch's flush) and write its access event."""
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
        error = status >= 500
        output = self._output
        if output is not None and output.level > (_ERROR if error else _INFO):
            return
        principal = record.principal
        client = scope.get("client")
        host = client[0] if client else None
        token_hash = None
        if reason is not None and reason.startswith("invalid_token"):
            token_hash = _bearer_fingerprint(scope["headers"])
        path = record.path if record.path is not None else logged_path(scope)
        label = None if rule is None else plan.labels.get(id(rule)) or rule_label(rule)
        upstream = record.upstream
        upstream_s = record.upstream_s
        upstream_ms = None if upstream_s is None else round(upstream_s * 1000, 3)
        duration_ms = round(duration_s * 1000, 3)
        if output is not None:
            try:  # the line the JSON chain would write, built directly (see `logs.JSONOutput`)
                q = json_string
                lists = self._lists
                if principal is None:
                    who, granted = '"subject": null, "jti": null, "issuer": null', "null"
                else:
                    caller = self._callers.get(id(principal))
                    if caller is None or caller[0] is not principal:
                        caller = self._caller(principal)
                    who, granted = caller[1], caller[2]
                head = (
                    f'{{"event": "request", "request_id": {q(record.request_id)}, "method": {q(method)}, '
                    f'"path": {q(path)}, "route": {q(route)}, "rule": {"null" if label is None else q(label)}, '
                    f'"upstream": {"null" if upstream is None else q(upstream)}, "decision": "{decision}", '
                    f'"reason": {"null" if reason is None else q(reason)}, '
                    f'"client": {"null" if host is None else q(host)}, {who}, '
                    f'"token_hash": {"null" if token_hash is None else q(token_hash)}, '
                    f'"required": {"null" if rule is None else lists.get(rule.scopes) or self._list(rule.scopes)}, '
                    f'"granted": {granted}, "status": {status:d}, '
                    f'"bytes_in": {record.bytes_in:d}, "bytes_out": {record.bytes_out:d}, '
                    f'"upstream_ms": {"null" if upstream_ms is None else repr(upstream_ms)}, '
                    f'"duration_ms": {duration_ms!r}'
                )
                if output.write(_ACCESS_KEYS, head, "error" if error else "info"):
                    return
            except (TypeError, ValueError):  # a value of an unexpected type: the logger renders it
                pass
        (self.log.error if error else self.log.info)(
            "request",
            request_id=record.request_id,
            method=method,
            path=path,
            route=route,
            rule=label,
            upstream=upstream,
            decision=decision,
            reason=reason,
            client=host,
            subject=principal.subject if principal else None,
            jti=principal.token_id if principal else None,
            issuer=principal.issuer if principal else None,
            token_hash=token_hash,
            required=None if rule is None else list(rule.scopes),
            granted=sorted(principal.scopes) if principal else None,
            status=status,
            bytes_in=record.bytes_in,
            bytes_out=record.bytes_out,
            upstream_ms=upstream_ms,
            duration_ms=duration_ms,
        )

    def _caller(self, principal: Principal) -> tuple[Principal, str, str]:
        """The access line's subject/jti/issuer and granted parts for `principal`, remembered: the
        authenticator hands the same (frozen) Principal to every request with the same token."""
        q = json_string
        jti = "null" if principal.token_id is None else q(principal.token_id)
        who = f'"subject": {q(principal.subject)}, "jti": {jti}, "issuer": {q(principal.issuer)}'
        caller = (principal, who, self._lists.get(principal.scopes) or self._list(principal.scopes))
        if len(self._callers) >= 1024:
            self._callers.clear()
        self._callers[id(principal)] = caller
        return caller

    def _list(self, scopes: tuple[str, ...] | frozenset[str]) -> str:
        """A rule's scopes (in order) or a caller's (sorted) as a JSON list, remembered (few distinct sets)."""
        items = sorted(scopes) if isinstance(scopes, frozenset) else scopes
        text = "[" + ", ".join(map(json_string, items)) + "]"
        if len(self._lists) >= 1024:
            self._lists.clear()
        self._lists[scopes] = text
        return text
