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
(`--log-format json`, `LogCapture`), the access line is rendered here as text from its one definition,
`AccessEvent` (by an f-string compiled from its fields), and handed to `logs.JSONOutput`, which
redaction-checks and writes it: the very line structlog's chain would write, at a fraction of the cost of
an event dict through its processors and the encoder; the chain still renders the same event
(`AccessEvent.kwargs`) when the redactor finds something to redact, and for the other sinks (console,
stdlib logging).

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
import logging
import os
import re
import string
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from gateway.observe.logs import json_output
from gateway.observe.redact import fingerprint, json_string
from gateway.observe.tracing import OFF, Tracer
from gateway.policy.model import rule_label
from gateway.web.asgi import Message, Receive, Scope, Send

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from gateway.auth.jwt import Principal
    from gateway.errors import HTTPError
    from gateway.observe.metrics import Metrics
    from gateway.observe.tracing import ServerSpan
    from gateway.policy.model import Rule

__all__ = [
    "RECORD_KEY",
    "ObservePlan",
    "Observer",
    "RequestRecord",
    "logged_path",
    "new_request_id",
    "note_principal",
    "note_refusal",
    "request_id",
    "route_label",
]

Verdict = Literal["allow", "deny"]  # the access event's `decision`
RECORD_KEY = "smsguard.log"
REQUEST_ID_HEADER = b"x-request-id"
MAX_LOGGED_PATH = 256
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._~:@+/=-]{1,128}")
_GONE = frozenset({"client_disconnected", "cancelled"})
_CLIENT_CLOSED = 499  # nginx's status for "the client went away before the answer": nothing was sent
_INFO, _ERROR = logging.INFO, logging.ERROR  # the access event's levels


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
    trace: ServerSpan | None = None  # the request's server span, when tracing is on (gateway.observe.tracing)

    @property
    def decision(self) -> Verdict:
        """`deny` when the gateway refused the request itself, else `allow`."""
        return "deny" if self.denied else "allow"

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


Scopes = tuple[str, ...] | frozenset[str]  # a rule's scopes (logged in order) or a caller's (logged sorted)
Label = str  # one of few values (a method, route, rule, upstream, error code, caller): its JSON is remembered
TraceId = str | None  # hex; None (tracing off): the field is left out of the event, not written as null
_new_tuple = tuple.__new__


class AccessEvent(NamedTuple):
    """The access event, defined once: its fields, their types and the order every rendering writes them.

    `AccessEvent.of` says what each field holds. The event is written two ways, both derived from this
    class: `_render_head(event)` (the JSON line up to its last field, for `logs.JSONOutput`: one f-string
    compiled from the fields and their types, see `_compile_head`) and `kwargs()` (the structlog call's
    keyword arguments, for every other sink and whenever the redactor would change the line). Both write
    the same bytes (tests/test_logs.py checks it).
    """

    request_id: str
    method: Label
    path: str
    route: Label
    rule: Label | None
    upstream: Label | None
    decision: Verdict
    reason: Label | None
    client: str | None
    subject: Label | None
    jti: Label | None
    issuer: Label | None
    token_hash: str | None
    required: Scopes | None
    granted: Scopes | None
    status: int
    bytes_in: int
    bytes_out: int
    upstream_ms: float | None
    duration_ms: float
    trace_id: TraceId
    span_id: TraceId

    @classmethod
    def of(
        cls, scope: Scope, record: RequestRecord, plan: ObservePlan, *, route: str, status: int, duration_s: float
    ) -> AccessEvent:
        """The event of a finished request (`route` and `status` as the metrics counted it)."""
        rule, principal, reason, upstream_s = record.rule, record.principal, record.reason, record.upstream_s
        client = scope.get("client")
        if principal is None:
            subject = jti = issuer = granted = None
        else:
            subject, jti, issuer, granted = principal.subject, principal.token_id, principal.issuer, principal.scopes
        token_hash = None
        trace = record.trace
        if reason is not None and reason.startswith("invalid_token"):
            token_hash = _bearer_fingerprint(scope["headers"])
        # The fields' values in the order above (a keyword per field would cost 1 µs per request).
        return _new_tuple(
            cls,
            (
                record.request_id,
                scope["method"],
                record.path if record.path is not None else logged_path(scope),
                route,
                None if rule is None else plan.labels.get(id(rule)) or rule_label(rule),
                record.upstream,
                record.decision,
                reason,
                client[0] if client else None,
                subject,
                jti,
                issuer,
                token_hash,
                None if rule is None else rule.scopes,  # required
                granted,
                status,
                record.bytes_in,
                record.bytes_out,
                None if upstream_s is None else round(upstream_s * 1000, 3),
                round(duration_s * 1000, 3),
                None if trace is None else trace.trace_id,
                None if trace is None else trace.span_id,
            ),
        )

    def kwargs(self) -> dict[str, object]:
        """The fields as the structlog call's keyword arguments (scopes as lists: a caller's sorted)."""
        fields: dict[str, object] = self._asdict()
        for name in _SCOPE_FIELDS:
            scopes = getattr(self, name)
            if scopes is not None:
                fields[name] = _scope_list(scopes)
        for name in _TRACE_FIELDS:
            if fields[name] is None:
                del fields[name]
        return fields


def _scope_list(scopes: Scopes) -> list[str]:
    return sorted(scopes) if isinstance(scopes, frozenset) else list(scopes)


_remembered: dict[Label | Scopes, str] = {}  # the JSON of labels and scope sets, each rendered once


def _remember(value: Label | Scopes, text: str) -> str:
    if len(_remembered) >= 4096:
        _remembered.clear()
    _remembered[value] = text
    return text


def _label_json(label: Label) -> str:
    return _remember(label, json_string(label))


def _scope_json(scopes: Scopes) -> str:
    return _remember(scopes, "[" + ", ".join(map(json_string, _scope_list(scopes))) + "]")


# How `_compile_head` writes a field of each declared type: the f-string replacement field for the value
# `$x` (null, a JSON string, an integer, the float's repr, a list of strings), exactly as the JSON chain's
# encoder writes the same value (`logs.Redactor.json_line`). Labels and scopes are rendered once (`R`).
_JSON_FIELDS = {
    "str": "{q($x)}",
    "str | None": '{"null" if $x is None else q($x)}',
    "Label": "{R.get($x) or Q($x)}",
    "Label | None": '{"null" if $x is None else (R.get($x) or Q($x))}',
    "Verdict": '"{$x}"',  # allow or deny: nothing to escape
    "int": "{$x:d}",
    "float": "{$x!r}",
    "float | None": '{"null" if $x is None else repr($x)}',
    "Scopes | None": '{"null" if $x is None else (R.get($x) or S($x))}',
}
# Field name -> declared type as written (NamedTuple turns these postponed annotations into ForwardRefs).
_ACCESS_FIELDS: dict[str, str] = {
    name: str(getattr(kind, "__forward_arg__", kind)) for name, kind in AccessEvent.__annotations__.items()
}
_SCOPE_FIELDS = tuple(name for name, kind in _ACCESS_FIELDS.items() if kind == "Scopes | None")
_TRACE_FIELDS = tuple(name for name, kind in _ACCESS_FIELDS.items() if kind == "TraceId")


def _trace_field(value: str | None, name: str) -> str:
    """`, "trace_id": "..."` or nothing (a field that only exists when tracing is on)."""
    return "" if value is None else f', "{name}": {json_string(value)}'


def _compile_head(event: str, fields: dict[str, str]) -> tuple[str, Callable[[tuple[Any, ...]], str]]:
    """The source and the function rendering the JSON head of `event` from a tuple of `fields` (name ->
    declared type, in order): the tuple unpacked into locals, then one f-string, as fast as a hand-written
    one (this is the request's hot path)."""
    names = [f"x{index}" for index in range(len(fields))]
    body = f'"event": {json_string(event)}'
    for (field, kind), name in zip(fields.items(), names, strict=True):
        if kind == "TraceId":  # left out when None, so it brings its own separator
            body += f'{{T({name}, "{field}")}}'
        else:
            body += f', "{field}": ' + string.Template(_JSON_FIELDS[kind]).substitute(x=name)
    source = f"def render(v, q=q, R=R, Q=Q, S=S, T=T):\n    {', '.join(names)} = v\n    return f'{{{{{body}'\n"
    namespace: dict[str, Any] = {
        "q": json_string,
        "R": _remembered,
        "Q": _label_json,
        "S": _scope_json,
        "T": _trace_field,
    }
    exec(compile(source, f"<{event} event>", "exec"), namespace)  # noqa: S102 (built from the class above only)
    return source, namespace["render"]


_HEAD_SOURCE, _render_head = _compile_head("request", _ACCESS_FIELDS)


class Observer:
    """Wraps each request: times it, tracks it in its record, then writes the access event and the metrics.

    `handler(context, scope, receive, send)` is what answers the request (the Gateway's, with its Runtime
    as `context`). With a `tracer` that is on, each request but a probe (`untraced` paths) is the SERVER
    span, current while it is handled and ended with its decision (gateway.observe.tracing).
    """

    def __init__(
        self,
        log: FilteringBoundLogger,
        metrics: Metrics,
        handler: Callable[[Any, Scope, Receive, Send], Awaitable[None]],
        *,
        tracer: Tracer = OFF,
        untraced: frozenset[str] = frozenset(),
    ) -> None:
        self.log = log
        self.metrics = metrics
        self.handler = handler
        self.tracer = tracer
        self.untraced = untraced
        self.active = 0  # requests in flight (the gauge reads it; in multiprocess mode it is kept in step)
        self._pending: list[tuple[Scope, RequestRecord, float, ObservePlan]] = []
        self._gauge = metrics.in_flight if metrics.multiprocess_dir is not None else None
        self._output = output = json_output(log)  # the access line's fast path, when the sink takes JSON lines
        # The lowest status whose access event the JSON sink's level lets through (5xx are logged at error):
        # the others are not even built. Other sinks get every event (their logger filters by level).
        self._least_logged = 0
        if output is not None and output.level > _INFO:
            self._least_logged = 500 if output.level <= _ERROR else 1000
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
        if self.tracer.enabled and scope["path"] not in self.untraced:
            record.trace = self.tracer.server(scope, logged_path(scope))
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
            if record.trace is not None:
                self._end_trace(scope, record, plan)
            self._pending.append((scope, record, perf_counter() - start, plan))
            if len(self._pending) == 1:
                asyncio.get_running_loop().call_soon(self._drain)

    def _end_trace(self, scope: Scope, record: RequestRecord, plan: ObservePlan) -> None:
        """End the request's server span with what its access event will say (route, status, decision)."""
        assert record.trace is not None
        status, route = self._outcome(scope, record)
        rule = record.rule
        label = None if rule is None else plan.labels.get(id(rule)) or rule_label(rule)
        record.trace.end(record, route, status, label)

    @staticmethod
    def _outcome(scope: Scope, record: RequestRecord) -> tuple[int, str]:
        """The status (499 for a client that left, 500 for no answer) and the route label `METHOD /template`."""
        status = record.status or (_CLIENT_CLOSED if record.reason in _GONE else 500)
        rule = record.rule
        route = f"{scope['method']} {rule.full_path}" if rule is not None else (record.route or "none")
        return status, route

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
        status, route = self._outcome(scope, record)
        if plan.count:
            self._count(record, route, status, duration_s, scope)
        if plan.access and (plan.probes or not record.probe) and status >= self._least_logged:
            self._write(AccessEvent.of(scope, record, plan, route=route, status=status, duration_s=duration_s))

    def _write(self, event: AccessEvent) -> None:
        """The event at `error` (a 5xx) or `info`: straight to a JSON sink when the redactor has nothing to
        change (`logs.JSONOutput`), else through the logger's chain."""
        error = event.status >= 500
        output = self._output
        if output is not None:
            try:
                if output.write(AccessEvent._fields, _render_head(event), "error" if error else "info"):
                    return
            except (TypeError, ValueError):  # a value of an unexpected type: the logger renders it
                pass
        (self.log.error if error else self.log.info)("request", **event.kwargs())

    def _count(self, record: RequestRecord, route: str, status: int, duration_s: float, scope: Scope) -> None:
        metrics = self.metrics
        method, _, template = route.partition(" ")  # the label `METHOD /template`, or "none"
        if not template:
            method, template = route_label(scope["method"], "").rstrip(), route
        if record.probe:  # health checks and scrapes: counted apart, never in the request metrics
            metrics.observe_probe(template, status)
            return
        metrics.observe_request(
            method, template, record.decision, status, duration_s, record.upstream, record.upstream_s
        )
        reason = record.reason
        if status == 401 and reason is not None and reason != "missing_token":
            metrics.token_failure(reason)
