"""OpenTelemetry tracing (the `otel` extra), owned by the app that builds it; off, it costs nothing.

    Observer ── Tracer.server(scope) ─► SERVER span "POST /3rdparty/v1/messages", current for the request
                  ├─ Authorizer:     "smsguard.auth"           token, Basic or key verification
                  ├─ StoreGuard:     "store <operation>"       every store call made while serving it
                  ├─ TokenExchange:  CLIENT "upstream login"   the provider login (or refresh)
                  └─ forwarder:      CLIENT "POST"            each upstream attempt; its traceparent goes upstream
               ◄── at the end: route, status, and the decision (rule, subject, scopes, allow/deny, reason)

`OFF` (the `Tracer` base class) is tracing off: `enabled` is False, `child` hands back one shared no-op
context manager, and opentelemetry is never imported. `OtelTracer` (built by `build_tracer` only when
`tracing.enabled`) owns its TracerProvider: nothing is set globally (`trace.set_tracer_provider` and the
global propagator are never used), so two apps in one process trace apart, and its owner closes it
(`aclose`: flushes the exporter). The current span travels in OpenTelemetry's context, a contextvar, so
per request task; children are made only under a recording span, so background work (heartbeats,
revocations) starts no root spans and an unsampled request builds no children.

W3C Trace Context: the client's `traceparent`/`tracestate` are continued; the upstream and the provider's
login endpoint get ours (the forwarder drops the client's copies first: one traceparent, never two).
Attributes never hold headers, query strings, tokens or credentials; the subject is an identity.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from contextvars import Token
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

    from gateway.config.sections import TracingSettings
    from gateway.observe.events import RequestRecord
    from gateway.web.asgi import Scope

__all__ = ["OFF", "TRACE_HEADERS", "OtelTracer", "ServerSpan", "SpanLike", "Tracer", "build_tracer"]

AttributeValue = str | bool | int | float | Sequence[str]
Attributes = Mapping[str, AttributeValue]
TRACE_HEADERS = frozenset({"traceparent", "tracestate"})  # the W3C headers (normalized names)
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})


class SpanLike(Protocol):
    """What the code does to a span it is handed: add attributes (an OpenTelemetry Span, or nothing)."""

    def set_attribute(self, key: str, value: AttributeValue) -> None: ...


class _NoSpan:
    """The span of tracing off, or of an unsampled request: attributes go nowhere."""

    __slots__ = ()

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        return None


NO_SPAN = _NoSpan()
_NOTHING: AbstractContextManager[SpanLike] = nullcontext(NO_SPAN)  # reusable: entering it does nothing


class Tracer:
    """Tracing off: every method does nothing and costs next to nothing (subclassed by `OtelTracer`)."""

    enabled = False

    def server(self, scope: Scope, path: str) -> ServerSpan | None:
        """The request's SERVER span, made current until `ServerSpan.end` (None: not traced); `path` is
        the request's path as logged (never its query string, where API keys travel)."""
        return None

    def child(
        self, name: str, attributes: Attributes | None = None, *, client: bool = False
    ) -> AbstractContextManager[SpanLike]:
        """A span under the current one for the `with` block (CLIENT when `client`); an exception marks it
        failed (its type and message, never a traceback)."""
        return _NOTHING

    def headers(self, span: SpanLike) -> list[tuple[str, str]]:
        """The `traceparent` (and `tracestate`) naming `span` as the parent, for an outgoing request."""
        return []

    def shutdown(self) -> None:
        """Flush and stop the exporter now (blocking; `aclose` from a running loop)."""
        return None

    async def aclose(self) -> None:
        """Flush and stop the exporter (the app's shutdown calls it)."""
        return None


OFF = Tracer()


class ServerSpan:
    """One request's SERVER span: started by `OtelTracer.server`, ended by `end` with what the record learned."""

    __slots__ = ("span", "span_id", "token", "trace_id", "tracer")

    def __init__(self, tracer: OtelTracer, span: Span, token: Token[Context]) -> None:
        self.tracer = tracer
        self.span = span
        self.token = token  # OpenTelemetry's context token, detached at the end
        ids = span.get_span_context()
        self.trace_id = f"{ids.trace_id:032x}"  # the access event's trace_id and span_id
        self.span_id = f"{ids.span_id:016x}"

    def end(self, record: RequestRecord, route: str, status: int, rule_label: str | None) -> None:
        """Name the span after its route, add the decision, end it and stop it being current."""
        span = self.span
        try:
            if span.is_recording():
                if route != "none":  # a route the gateway knows: `POST /3rdparty/v1/messages`
                    span.update_name(route)
                span.set_attributes(_decision_attributes(record, route, status, rule_label))
                if status >= 500:
                    span.set_status(self.tracer.error_status, record.reason or str(status))
            span.end()
        finally:
            self.tracer.detach(self.token)


def _decision_attributes(record: RequestRecord, route: str, status: int, rule_label: str | None) -> dict[str, Any]:
    """The server span's attributes known at the end: HTTP semantic conventions, then smsguard.*."""
    attributes: dict[str, Any] = {
        "http.response.status_code": status,
        "smsguard.decision": record.decision,
        "smsguard.request_id": record.request_id,
    }
    _, _, template = route.partition(" ")
    if template.startswith("/"):
        attributes["http.route"] = template
    if status >= 500:
        attributes["error.type"] = str(status)
    optional = {
        "smsguard.reason": record.reason,
        "smsguard.rule": rule_label,
        "smsguard.upstream": record.upstream,
    }
    attributes.update((key, value) for key, value in optional.items() if value is not None)
    if record.rule is not None:
        attributes["smsguard.scopes.required"] = list(record.rule.scopes)
    principal = record.principal
    if principal is not None:
        attributes["smsguard.subject"] = principal.subject
        attributes["smsguard.issuer"] = principal.issuer
    return attributes


class OtelTracer(Tracer):
    """Tracing on: spans from this app's own TracerProvider (see the module docstring)."""

    enabled = True

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self._tracer = provider.get_tracer("smsguard")
        self._propagator = TraceContextTextMapPropagator()  # W3C only, never the global propagator
        self._context = context
        self._trace = trace
        kinds = trace.SpanKind
        self._server, self._client, self._internal = kinds.SERVER, kinds.CLIENT, kinds.INTERNAL
        self.error_status = trace.StatusCode.ERROR
        self.detach = context.detach

    def server(self, scope: Scope, path: str) -> ServerSpan:
        carrier: dict[str, str] = {}
        for name, value in scope["headers"]:
            if (name == b"traceparent" or name == b"tracestate") and name not in carrier:  # the first of each
                carrier[name.decode("ascii")] = value.decode("latin-1")
        parent = self._propagator.extract(carrier) if carrier else None  # an invalid traceparent: a new trace
        method = scope["method"]
        known = method if method in _KNOWN_METHODS else "_OTHER"
        attributes: dict[str, AttributeValue] = {
            "http.request.method": known,
            "url.path": path,
            "url.scheme": scope.get("scheme", "http"),
        }
        client = scope.get("client")
        if client:
            attributes["client.address"] = client[0]
        span = self._tracer.start_span(
            "HTTP" if known == "_OTHER" else known, context=parent, kind=self._server, attributes=attributes
        )
        token = self._context.attach(self._trace.set_span_in_context(span, parent))
        return ServerSpan(self, span, token)

    def child(
        self, name: str, attributes: Attributes | None = None, *, client: bool = False
    ) -> AbstractContextManager[SpanLike]:
        if not self._trace.get_current_span().is_recording():
            return _NOTHING
        return self._tracer.start_as_current_span(
            name, kind=self._client if client else self._internal, attributes=attributes, record_exception=False
        )

    def headers(self, span: SpanLike) -> list[tuple[str, str]]:
        carrier: dict[str, str] = {}
        # An unsampled request's children are not made: its server span (current) is the parent upstream.
        context = self._trace.set_span_in_context(span) if isinstance(span, self._trace.Span) else None
        self._propagator.inject(carrier, context=context)
        return list(carrier.items())

    def shutdown(self) -> None:
        self.provider.shutdown()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.provider.shutdown)  # a batch exporter may block on its last export


def build_tracer(settings: TracingSettings, *, exporter: SpanExporter | None = None) -> Tracer:
    """`OFF` unless `settings.enabled`; else an `OtelTracer` with its own provider and exporter.

    `exporter` replaces the configured one and gets every span as it ends (tests: the SDK's
    InMemorySpanExporter). OTEL_* variables apply where the SDK reads them: OTEL_SERVICE_NAME (unless
    `service_name` is set), OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER[_ARG] (unless `sample_ratio` is
    set), OTEL_EXPORTER_OTLP_* (endpoint unless `endpoint` is set, headers, timeout) and OTEL_BSP_*.
    """
    if not settings.enabled:
        return OFF
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    attributes: dict[str, str] = {}
    if settings.service_name is not None or not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = settings.service_name or "smsguard"
    ratio = settings.sample_ratio
    sampler = None if ratio is None else ParentBased(TraceIdRatioBased(ratio))
    provider = TracerProvider(resource=Resource.create(attributes), sampler=sampler)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif settings.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.endpoint)))
    elif settings.exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return OtelTracer(provider)
