"""OpenTelemetry tracing (`tracing:`, gateway/observe/tracing.py): spans, W3C propagation, access log ids, config.

The gateway runs under uvicorn in front of a real loopback upstream that records what it received; spans
go to the SDK's InMemorySpanExporter handed to `create_app`. One test runs `gateway serve` exporting OTLP/HTTP
to a loopback receiver; one checks, in a fresh interpreter, that tracing off never imports opentelemetry.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fakes import FakeSMSPortal, RecordingUpstream, Reply, UvicornServer
from gatewayconfig import CANARIES, GatewayConfig
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from processes import gateway_process
from providersconfig import PROVIDER_CANARIES, SMSPORTAL_ID, SMSPORTAL_SECRET, ProvidersConfig

from gateway.app import Gateway, create_app
from gateway.config.settings import load_settings
from gateway.errors import LoadError
from gateway.observe.logs import LogCapture

REPLY = Reply(202, body=b'{"id":"m1","state":"Pending"}', headers=[("Content-Type", "application/json")])
TRACED = "tracing: {exporter: none}\n"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_PARENT = "b7ad6b7169203331"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"
SEND = "/3rdparty/v1/messages"
MESSAGE = {"textMessage": {"text": "hi"}, "phoneNumbers": ["+27830000000"]}


@dataclass
class Traced:
    upstream: RecordingUpstream
    gateway: Gateway
    client: httpx.AsyncClient
    capture: LogCapture
    spans: InMemorySpanExporter

    async def bearer(self, *scopes: str, subject: str = "app-1") -> dict[str, str]:
        pair = await self.gateway.tokens.issue(subject, list(scopes), 300, caller=None)
        return {"authorization": f"Bearer {pair.access.token}"}

    async def access_events(self, count: int) -> list[dict[str, object]]:
        for _ in range(500):
            if len(self.capture.events("request")) >= count:
                break
            await _sleep()
        return self.capture.events("request")[:count]

    async def finished(self, count: int) -> list[ReadableSpan]:
        """The spans ended so far, once there are `count` server spans (a server span ends after its answer)."""
        for _ in range(500):
            if len([s for s in self.spans.get_finished_spans() if s.kind == SpanKind.SERVER]) >= count:
                break
            await _sleep()
        return list(self.spans.get_finished_spans())


async def _sleep() -> None:
    import asyncio

    await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def traced(directory: Path, extra: str = TRACED) -> AsyncIterator[Traced]:
    async with RecordingUpstream(REPLY) as upstream:
        config = GatewayConfig(directory, upstream.url + "/3rdparty/v1", extra=extra)
        capture, spans = LogCapture(), InMemorySpanExporter()
        gateway = create_app(config.settings(), env=config.env, log_sink=capture, span_exporter=spans)
        async with (
            UvicornServer(gateway, lifespan="on") as server,
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        ):
            yield Traced(upstream, gateway, client, capture, spans)


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, [span.name for span in spans]
    return found[0]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def assert_no_secrets(spans: Sequence[ReadableSpan], *secrets: str) -> None:
    text = json.dumps([{"name": s.name, "attributes": dict(s.attributes or {})} for s in spans], default=str)
    for secret in (*CANARIES, *PROVIDER_CANARIES, *secrets):
        assert secret not in text, "a secret reached a span"
    assert "authorization" not in text.lower()


async def test_an_allowed_request_continues_the_clients_trace_to_the_upstream(tmp_path: Path) -> None:
    """Server span (child of the client's traceparent) > auth, store, CLIENT; the upstream gets one traceparent,
    ours: same trace id, parent = our CLIENT span; the access event names the server span."""
    async with traced(tmp_path) as env:
        headers = await env.bearer("messages:send")
        token = headers["authorization"].removeprefix("Bearer ")
        headers |= {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}
        response = await env.client.post(SEND + "?apiKey=canary-in-query", json=MESSAGE, headers=headers)
        assert response.status_code == 202
        spans = await env.finished(1)
        (event,) = await env.access_events(1)

    server = one(spans, "POST /3rdparty/v1/messages")
    assert server.kind == SpanKind.SERVER
    assert hex_ids(server)[0] == CLIENT_TRACE
    assert parent_id(server) == int(CLIENT_PARENT, 16)
    attributes = dict(server.attributes or {})
    assert attributes["http.request.method"] == "POST"
    assert attributes["url.path"] == SEND  # never the query string
    assert attributes["http.route"] == SEND
    assert attributes["http.response.status_code"] == 202
    assert attributes["smsguard.decision"] == "allow"
    assert attributes["smsguard.subject"] == "app-1"
    assert list(attributes["smsguard.scopes.required"]) == ["messages:send"]  # type: ignore[arg-type]
    assert str(attributes["smsguard.rule"]).startswith("POST /3rdparty/v1/messages")
    assert attributes["client.address"] == "127.0.0.1"
    assert attributes["smsguard.request_id"] == event["request_id"]

    auth = one(spans, "smsguard.auth")
    upstream_span = one(spans, "POST")
    assert parent_id(auth) == server.context.span_id
    assert upstream_span.kind == SpanKind.CLIENT
    assert parent_id(upstream_span) == server.context.span_id
    assert upstream_span.attributes is not None
    assert upstream_span.attributes["http.response.status_code"] == 202
    stored = [span for span in spans if span.name.startswith("store ")]
    assert stored, [span.name for span in spans]  # the revocation lookup of the gateway's own token
    by_id = {span.context.span_id: span for span in spans}
    for span in stored:  # under the request: directly, or under its auth span
        assert parent_id(span) in (server.context.span_id, auth.context.span_id)
    assert {hex_ids(span)[0] for span in spans} == {CLIENT_TRACE}
    assert all(parent_id(span) in by_id or span is server for span in spans)

    seen = env.upstream.last
    assert seen.values("traceparent") == [f"00-{CLIENT_TRACE}-{hex_ids(upstream_span)[1]}-01"]
    assert seen.values("tracestate") == ["vendor=abc"]
    assert (event["trace_id"], event["span_id"]) == hex_ids(server)
    assert_no_secrets(spans, token, "canary-in-query")


async def test_a_new_trace_starts_without_a_traceparent_and_the_client_copy_never_reaches_the_upstream(
    tmp_path: Path,
) -> None:
    """No traceparent from the client (or a malformed one): a new trace; the upstream sees only ours."""
    async with traced(tmp_path) as env:
        headers = await env.bearer("messages:send") | {"traceparent": "00-garbage-01"}
        assert (await env.client.post(SEND, json=MESSAGE, headers=headers)).status_code == 202
        spans = await env.finished(1)
    server = one(spans, "POST /3rdparty/v1/messages")
    assert server.parent is None
    upstream_span = one(spans, "POST")
    (sent,) = env.upstream.last.values("traceparent")
    version, trace_id, parent, flags = sent.split("-")
    assert (version, trace_id, parent) == ("00", hex_ids(server)[0], hex_ids(upstream_span)[1])
    assert int(flags, 16) & 1  # sampled (bit 2 may say the trace id is random)


@pytest.mark.parametrize(
    ("scopes", "status", "reason"),
    [(None, 401, "missing_token"), (("messages:read",), 403, "insufficient_scope")],
)
async def test_a_refusal_is_a_deny_span_with_its_reason_and_no_upstream_call(
    tmp_path: Path, scopes: tuple[str, ...] | None, status: int, reason: str
) -> None:
    async with traced(tmp_path) as env:
        headers = {} if scopes is None else await env.bearer(*scopes)
        assert (await env.client.post(SEND, json=MESSAGE, headers=headers)).status_code == status
        spans = await env.finished(1)
        (event,) = await env.access_events(1)
        assert env.upstream.requests == []
    server = one(spans, "POST /3rdparty/v1/messages")
    attributes = dict(server.attributes or {})
    assert attributes["smsguard.decision"] == "deny"
    assert attributes["smsguard.reason"] == event["reason"]
    assert str(attributes["smsguard.reason"]).startswith(reason)
    assert attributes["http.response.status_code"] == status
    assert [span.name for span in spans if span.kind == SpanKind.CLIENT] == []
    assert parent_id(one(spans, "smsguard.auth")) == server.context.span_id
    assert (event["trace_id"], event["span_id"]) == hex_ids(server)


async def test_probes_are_not_traced_and_unmatched_paths_keep_the_method_name(tmp_path: Path) -> None:
    async with traced(tmp_path) as env:
        assert (await env.client.get("/healthz")).status_code == 200
        assert (await env.client.get("/nowhere")).status_code == 404
        spans = await env.finished(1)
    assert [span.name for span in spans] == ["GET"]
    assert dict(spans[0].attributes or {})["smsguard.reason"] == "no_route"


async def test_the_provider_login_is_a_client_span_whose_traceparent_reaches_the_login_endpoint(
    tmp_path: Path,
) -> None:
    """SMSPortal (token exchange): the first request logs in under its server span; the login carries it."""
    async with FakeSMSPortal(SMSPORTAL_ID, SMSPORTAL_SECRET) as portal:
        config = ProvidersConfig(tmp_path, extra=TRACED).add(
            "smsportal",
            portal.url + "/v1",
            "{type: smsportal, client_id: '${T_SMSPORTAL_ID}', api_secret: '${T_SMSPORTAL_SECRET}'}",
        )
        spans = InMemorySpanExporter()
        gateway = create_app(config.settings(), span_exporter=spans)
        config.gateway = gateway
        async with (
            UvicornServer(gateway, lifespan="on") as server,
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        ):
            token = config.token("messages:send")
            sent = await client.post(
                "/smsportal/v1/bulkmessages", json={}, headers={"authorization": f"Bearer {token}"}
            )
            assert sent.status_code == 200
            for _ in range(500):
                if any(span.kind == SpanKind.SERVER for span in spans.get_finished_spans()):
                    break
                await _sleep()
        finished = list(spans.get_finished_spans())
        (login_request,) = [seen for seen in portal.requests if "Authentication" in seen.path]
    server = one(finished, "POST /smsportal/v1/bulkmessages")
    login = one(finished, "upstream login")
    assert login.kind == SpanKind.CLIENT
    assert parent_id(login) == server.context.span_id
    assert dict(login.attributes or {})["http.response.status_code"] == 200
    assert dict(login.attributes or {})["smsguard.upstream"] == "smsportal"
    (sent,) = [value for name, value in login_request.headers if name.lower() == "traceparent"]
    assert sent.split("-")[1:3] == list(hex_ids(login))
    assert_no_secrets(finished, token)


async def test_tracing_off_writes_no_trace_fields(tmp_path: Path) -> None:
    async with traced(tmp_path, extra="") as env:
        assert not env.gateway.tracer.enabled
        headers = await env.bearer("messages:send") | {"traceparent": TRACEPARENT}
        assert (await env.client.post(SEND, json=MESSAGE, headers=headers)).status_code == 202
        (event,) = await env.access_events(1)
        assert env.spans.get_finished_spans() == ()
    assert "trace_id" not in event
    assert "span_id" not in event
    assert env.upstream.last.values("traceparent") == [TRACEPARENT]  # off: passed through like any header


@pytest.mark.parametrize("blocked", [False, True])
def test_tracing_off_never_imports_opentelemetry(tmp_path: Path, blocked: bool) -> None:
    """A fresh interpreter builds the gateway (tracing off) and serves a request: the tracing SDK and the
    exporters are never imported, and with OpenTelemetry missing altogether (`blocked`) all works as well.

    redis-py (>= 7) imports OpenTelemetry's metrics API and SDK itself whenever they are installed (its own
    optional observability), so "no opentelemetry module at all" holds only when it is not installed."""
    config = GatewayConfig(tmp_path, "http://127.0.0.1:9/3rdparty/v1")
    path = config.write()
    block = "sys.modules['opentelemetry'] = None" if blocked else ""
    probe = f"""
import asyncio, json, sys
{block}
from gateway.app import create_app
from gateway.config.settings import load_settings

app = create_app(load_settings({str(path)!r}, env={config.env!r}))
async def main():
    sent = []
    async def receive():
        return {{"type": "http.request", "body": b"", "more_body": False}}
    async def send(message):
        sent.append(message)
    scope = {{"type": "http", "method": "GET", "path": "/healthz", "raw_path": b"/healthz", "headers": [],
             "query_string": b"", "client": ("127.0.0.1", 1)}}
    await app(scope, receive, send)
    return sent[0]["status"]
status = asyncio.run(main())
tracing = ("opentelemetry.sdk.trace", "opentelemetry.exporter", "opentelemetry.trace.propagation.tracecontext")
print(json.dumps([status, sorted(m for m in sys.modules if m.startswith(tracing) and sys.modules[m] is not None)]))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [200, []]


def test_config_errors_name_the_file_line_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("store: memory://\ntracing:\n  exporter: jaeger\n  sample_ratio: 2\n  endpoint: ftp://x\n")
    with pytest.raises(LoadError) as bad:
        load_settings(path, env={})
    text = str(bad.value)
    assert f"{path}:3:" in text
    assert "tracing.exporter" in text
    assert f"{path}:4:" in text
    assert "tracing.sample_ratio" in text
    assert f"{path}:5:" in text
    assert "tracing.endpoint" in text

    path.write_text("store: memory://\ntracing:\n  service_name: sms\n")
    assert load_settings(path, env={}).tracing.enabled  # a written section is on
    for name in [name for name in sys.modules if name.split(".")[0] == "opentelemetry"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if the extra were not installed
    with pytest.raises(LoadError) as missing:
        load_settings(path, env={})
    assert f"{path}:3:" in str(missing.value)
    assert "tracing.enabled" in str(missing.value)
    assert "smsguard[otel]" in str(missing.value)
    path.write_text("store: memory://\ntracing: {enabled: false}\n")
    assert not load_settings(path, env={}).tracing.enabled  # off needs nothing installed


async def test_a_reload_cannot_change_tracing(tmp_path: Path) -> None:
    async with traced(tmp_path) as env:
        config = Path(env.gateway.settings.file)
        config.write_text(config.read_text().replace(TRACED, "tracing: {enabled: false}\n"))
        assert await env.gateway.reload() is False
        assert env.gateway.last_error is not None
        assert "tracing cannot change" in env.gateway.last_error
        assert env.gateway.tracer.enabled


class _Receiver(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP collector stand-in: records each POST's path and content type, answers 200."""

    received: list[tuple[str, str, int]]

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        self.received.append((self.path, self.headers.get("content-type", ""), len(body)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


@contextlib.contextmanager
def otlp_receiver() -> Iterator[tuple[str, list[tuple[str, str, int]]]]:
    received: list[tuple[str, str, int]] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_gateway_serve_exports_otlp_http_to_the_configured_endpoint(tmp_path: Path) -> None:
    """A real `gateway serve` process: spans reach a loopback OTLP/HTTP receiver as protobuf (at the latest
    when SIGTERM shuts the gateway down and its TracerProvider flushes)."""
    with otlp_receiver() as (collector, received):
        config = GatewayConfig(
            tmp_path, "http://127.0.0.1:9/3rdparty/v1", extra=f"tracing: {{endpoint: {collector}/v1/traces}}\n"
        )
        path = config.write()
        with gateway_process(path, config.env) as process:
            answer = httpx.get(process.url + "/3rdparty/v1/messages/1", headers={"traceparent": TRACEPARENT})
            assert answer.status_code == 401
        assert received, "the gateway exported nothing"
        assert {(where, kind) for where, kind, _ in received} == {("/v1/traces", "application/x-protobuf")}
        assert all(size > 0 for *_, size in received)


async def test_the_embedded_guard_makes_the_server_span_too(tmp_path: Path) -> None:
    """GuardMiddleware with a tracer: a SERVER span per guarded request (decision included), auth its child."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from gateway.config.settings import parse_settings
    from gateway.guard.authorize import Authorizer
    from gateway.guard.middleware import GuardMiddleware
    from gateway.observe.tracing import build_tracer
    from gateway.policy.loader import parse_policy

    policy = (
        "mount: /api\nscopes: {messages:send: Send}\nrules:\n"
        "  - {method: POST, path: /messages, scope: messages:send}\n"
    )
    settings = parse_settings("tracing: {exporter: none}\n", env={})
    authorizer = Authorizer.from_settings(settings, policies=[parse_policy(policy, "app.yaml")])

    async def handler(request: object) -> JSONResponse:
        return JSONResponse({})

    spans = InMemorySpanExporter()
    tracer = build_tracer(settings.tracing, exporter=spans)
    app = GuardMiddleware(
        Starlette(routes=[Route("/api/messages", handler, methods=["POST"])]),
        authorizer=authorizer,
        access_log="off",
        tracer=tracer,
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        refused = await client.post("/api/messages", headers={"traceparent": TRACEPARENT})
        assert refused.status_code == 401
    finished = list(spans.get_finished_spans())
    server = one(finished, "POST /api/messages")
    assert server.kind == SpanKind.SERVER
    assert hex_ids(server)[0] == CLIENT_TRACE
    attributes = dict(server.attributes or {})
    assert attributes["smsguard.decision"] == "deny"
    assert attributes["smsguard.reason"] == "missing_token"
    assert parent_id(one(finished, "smsguard.auth")) == server.context.span_id
    await tracer.aclose()
