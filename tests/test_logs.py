"""logs.py + observe.py: the access event per request, audit events, request ids, and redaction.

The gateway runs for real (uvicorn, a recording upstream on loopback) with its events captured exactly
as the JSON format writes them (`LogCapture`); redaction is also tested as a unit table, on both the
thorough pass and the JSON fast path.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import os
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import FakeBSG, FakeSMSPortal, RecordingUpstream, Reply, UvicornServer
from gatewayconfig import (
    CANARIES,
    OPS_PASSWORD,
    SENDER_PASSWORD,
    SMSGATE_POLICY,
    UPSTREAM_PASSWORD,
    UPSTREAM_USER,
    GatewayConfig,
)
from observed import JSON_REPLY, Env, observed
from providersconfig import BSG_WRONG_KEY, PROVIDER_CANARIES, SMSPORTAL_ID, SMSPORTAL_SECRET, ProvidersConfig

from gateway.app import create_app
from gateway.auth.jwt import Principal
from gateway.cli import main
from gateway.config.settings import LogSettings, parse_settings
from gateway.errors import LoadError
from gateway.observe.events import MAX_LOGGED_PATH, ObservePlan, Observer, RequestRecord, new_request_id
from gateway.observe.logs import (
    REDACTED,
    LogCapture,
    Redactor,
    StdlibSink,
    StreamSink,
    configure_stdlib_logging,
    fingerprint,
    json_output,
    make_logger,
    resolve_format,
)
from gateway.observe.metrics import Metrics
from gateway.policy.loader import load_policy
from gateway.policy.model import Rule

ACCESS_FIELDS = [
    "event",
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
    "level",
    "timestamp",
]
HEX32 = re.compile(r"[0-9a-f]{32}")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
MESSAGE = b'{"textMessage":{"text":"hi"},"phoneNumbers":["+15555550100"]}'


def rule_label(method: str, path: str) -> str:
    """The label the access event gives a rule of the shipped SMSGate policy (file relative to the cwd)."""
    policy = load_policy(SMSGATE_POLICY)
    (rule,) = [r for r in policy.rules if method in r.methods and r.path == path]
    file = Path(rule.file).resolve().relative_to(Path.cwd())
    return f"{','.join(sorted(rule.methods))} {rule.full_path} ({file}:{rule.line})"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with observed(tmp_path) as env:
        yield env


# ----------------------------------------------------------------------------------------- access events


async def test_allowed_request_is_one_complete_access_event(env: Env) -> None:
    """An allowed POST logs who (subject, jti, issuer), what (rule, scopes), and how it went (status, bytes, times)."""
    pair = await env.pair("messages:send", "messages:read")
    response = await env.client.post(
        "/3rdparty/v1/%6Dessages?skipPhoneValidation=true",
        content=MESSAGE,
        headers={"authorization": f"Bearer {pair.access.token}", "content-type": "application/json"},
    )
    assert response.status_code == 202
    event = await env.next_request()
    assert list(event) == ACCESS_FIELDS
    request_id = event.pop("request_id")
    assert HEX32.fullmatch(request_id)
    assert response.headers["x-request-id"] == request_id
    assert env.upstream.last.values("x-request-id") == [request_id]
    upstream_ms, duration_ms, timestamp = event.pop("upstream_ms"), event.pop("duration_ms"), event.pop("timestamp")
    assert 0 < upstream_ms <= duration_ms < 5000
    assert TIMESTAMP.fullmatch(timestamp)
    assert event == {
        "event": "request",
        "method": "POST",
        "path": "/3rdparty/v1/messages",  # canonical: never the query string
        "route": "POST /3rdparty/v1/messages",
        "rule": rule_label("POST", "/messages"),
        "upstream": "smsgate",
        "decision": "allow",
        "reason": None,
        "client": "127.0.0.1",
        "subject": "app-1",
        "jti": pair.access.jti,
        "issuer": "self",
        "token_hash": None,
        "required": ["messages:send"],
        "granted": ["messages:read", "messages:send"],
        "status": 202,
        "bytes_in": len(MESSAGE),
        "bytes_out": len(JSON_REPLY.body),
        "level": "info",
    }


async def test_basic_user_is_logged_as_the_basic_issuer(env: Env) -> None:
    """A Basic login is logged with its username as subject, issuer `basic`, no jti and its granted scopes."""
    response = await env.client.get("/3rdparty/v1/messages", auth=("sender", SENDER_PASSWORD))
    assert response.status_code == 403
    event = await env.next_request()
    assert (event["subject"], event["issuer"], event["jti"]) == ("sender", "basic", None)
    assert (event["granted"], event["required"]) == (["messages:read", "messages:send"], ["messages:list"])
    assert (event["decision"], event["reason"], event["status"]) == ("deny", "insufficient_scope", 403)


@pytest.mark.parametrize(
    ("case", "status", "reason", "expect"),
    [
        (
            "missing_token",
            401,
            "missing_token",
            {"route": "POST /3rdparty/v1/messages", "required": ["messages:send"], "subject": None},
        ),
        (
            "expired",
            401,
            "invalid_token:expired",
            {"route": "POST /3rdparty/v1/messages", "subject": None, "jti": None, "granted": None},
        ),
        ("bad_signature", 401, "invalid_token:bad_signature", {"subject": None}),
        ("garbage", 401, "invalid_token:malformed", {"subject": None}),
        (
            "insufficient_scope",
            403,
            "insufficient_scope",
            {"subject": "app-1", "issuer": "self", "granted": ["messages:read"], "required": ["messages:send"]},
        ),
        ("bad_password", 401, "invalid_credentials:basic", {"subject": None, "token_hash": None}),
        ("no_route", 404, "no_route", {"route": "none", "rule": None, "required": None}),
        ("head_is_not_get", 404, "no_route", {"route": "none", "method": "HEAD"}),
        ("bad_path", 400, "bad_path", {"route": "none", "rule": None, "path": "/3rdparty/v1//messages"}),
        ("encoded_slash", 400, "bad_path", {"path": "/3rdparty/v1/messages/a%2Fb"}),
        ("token_in_query", 400, "bad_request:token_in_query", {"path": "/3rdparty/v1/messages"}),
        ("two_authorizations", 400, "bad_request:duplicate_authorization", {"subject": None}),
    ],
)
async def test_each_refusal_is_logged_with_its_reason(
    env: Env, case: str, status: int, reason: str, expect: dict[str, object]
) -> None:
    """Every refusal: decision deny, the HTTPError's stable code as reason, and whatever was known about the caller."""
    pair = await env.pair("messages:read")
    token = pair.access.token
    method, path, headers = "POST", "/3rdparty/v1/messages", {}
    if case == "expired":
        issuer = env.gateway.tokens.issuer
        assert issuer is not None
        issuer._clock = lambda: 1_000_000.0  # minted long ago
        token = (await env.pair("messages:send")).access.token
        headers = {"authorization": f"Bearer {token}"}
    elif case == "bad_signature":
        headers = {"authorization": f"Bearer {token[:-4]}AAAA"}
    elif case == "garbage":
        token = "not-a-jwt"
        headers = {"authorization": f"Bearer {token}"}
    elif case == "insufficient_scope":
        headers = {"authorization": f"Bearer {token}"}
    elif case == "bad_password":
        headers = {"authorization": "Basic " + base64.b64encode(b"ops:wrong-password").decode()}
    elif case == "no_route":
        method, path, headers = "GET", "/3rdparty/v1/nowhere", {"authorization": f"Bearer {token}"}
    elif case == "head_is_not_get":
        method, headers = "HEAD", {"authorization": f"Bearer {token}"}
    elif case == "bad_path":
        path = "/3rdparty/v1//messages"
    elif case == "encoded_slash":
        method, path = "GET", "/3rdparty/v1/messages/a%2Fb"
    elif case == "token_in_query":
        method, path = "GET", f"/3rdparty/v1/messages?access_token={token}"
    elif case == "two_authorizations":
        method = "GET"
        headers = [("authorization", f"Bearer {token}"), ("authorization", f"Bearer {token}")]  # type: ignore[assignment]
    response = await env.client.request(method, path, headers=headers)
    assert response.status_code == status
    event = await env.next_request()
    assert (event["decision"], event["reason"], event["status"]) == ("deny", reason, status)
    assert event["upstream"] is None
    assert event["upstream_ms"] is None
    assert response.headers["x-request-id"] == event["request_id"]
    if method != "HEAD":  # the server drops the body of an answer to HEAD
        assert event["bytes_out"] == len(response.content)
    for key, value in expect.items():
        assert event[key] == value, key
    if reason.startswith("invalid_token"):
        assert event["token_hash"] == fingerprint(headers["authorization"].split(" ", 1)[1])
    else:
        assert event["token_hash"] is None
    assert env.upstream.requests == []


async def test_upstream_failure_is_allowed_but_carries_its_reason(tmp_path: Path) -> None:
    """An upstream that refuses connections: decision allow (the policy said yes), reason upstream_unreachable, 502."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with observed(tmp_path, upstream_url=f"http://127.0.0.1:{port}") as env:
        response = await env.client.post("/3rdparty/v1/messages", headers=await env.bearer("messages:send"))
        assert response.status_code == 502
        event = await env.next_request()
    assert (event["decision"], event["reason"], event["status"]) == ("allow", "upstream_unreachable", 502)
    assert event["upstream"] == "smsgate"
    assert event["upstream_ms"] is not None
    assert event["level"] == "error"


async def test_response_bytes_of_a_streamed_answer_are_counted(tmp_path: Path) -> None:
    """bytes_out counts every body byte relayed, across chunks."""
    async with observed(tmp_path, reply=Reply(200, stream_bytes=300_000, chunk_size=65536)) as env:
        response = await env.client.get("/3rdparty/v1/messages", headers=await env.bearer("messages:list"))
        assert len(response.content) == 300_000
        event = await env.next_request()
    assert (event["status"], event["bytes_out"]) == (200, 300_000)


async def test_a_long_refused_path_is_logged_cut(env: Env) -> None:
    """A path refused as non-canonical is logged raw, cut at MAX_LOGGED_PATH characters; never its query."""
    path = "/3rdparty/v1//" + "a" * 1000
    response = await env.client.get(path + "?password=x")
    assert response.status_code == 400
    event = await env.next_request()
    assert event["path"] == path[:MAX_LOGGED_PATH] + "..."
    assert "password" not in json.dumps(event)


# ----------------------------------------------------------------------------------------------- request ids


@pytest.mark.parametrize(
    "incoming",
    ["3f2a9c1d-0b7e-4d5e-9a3b-1c2d3e4f5a6b", "a", "Root=1-5759e988-bd862e3fe1be46a994272793", "x" * 128],
)
async def test_a_well_formed_request_id_is_kept(env: Env, incoming: str) -> None:
    """The client's X-Request-ID (1-128 safe characters) is logged, returned, and forwarded upstream once."""
    headers = {**(await env.bearer("messages:send")), "x-request-id": incoming}
    response = await env.client.post("/3rdparty/v1/messages", headers=headers)
    event = await env.next_request()
    assert event["request_id"] == incoming
    assert response.headers.get_list("x-request-id") == [incoming]
    assert env.upstream.last.values("x-request-id") == [incoming]


@pytest.mark.parametrize("incoming", ["x" * 129, "has space", "<script>", "semi;colon", "", "é".encode()])
async def test_a_malformed_request_id_is_replaced(env: Env, incoming: str | bytes) -> None:
    """Too long, empty or unsafe characters: a fresh id everywhere, and the client's never reaches the upstream."""
    headers = {**(await env.bearer("messages:send")), "x-request-id": incoming}
    response = await env.client.post("/3rdparty/v1/messages", headers=headers)
    event = await env.next_request()
    assert HEX32.fullmatch(event["request_id"])
    assert response.headers.get_list("x-request-id") == [event["request_id"]]
    assert env.upstream.last.values("x-request-id") == [event["request_id"]]


async def test_upstream_request_id_is_replaced_by_the_gateways(tmp_path: Path) -> None:
    """An upstream answering with its own X-Request-ID: the client sees exactly one, the gateway's."""
    reply = Reply(200, headers=[("X-Request-ID", "upstream-id")], body=b"{}")
    async with observed(tmp_path, reply=reply) as env:
        response = await env.client.get("/3rdparty/v1/health", headers={"x-request-id": "mine"})
        await env.next_request()
    assert response.headers.get_list("x-request-id") == ["mine"]


async def test_every_answer_carries_a_request_id(env: Env) -> None:
    """Refusals, gateway endpoints and token endpoints return x-request-id too; ids differ per request."""
    answers = [
        await env.client.get("/healthz"),
        await env.client.get("/readyz"),
        await env.client.get("/metrics"),
        await env.client.get("/3rdparty/v1/nowhere"),
        await env.client.post("/3rdparty/v1/auth/token", json={"scopes": ["messages:send"]}),
    ]
    ids = [answer.headers["x-request-id"] for answer in answers]
    assert all(HEX32.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)


# ----------------------------------------------------------------------------------- gateway endpoints, config


async def test_health_checks_are_not_logged_by_default(env: Env) -> None:
    """/healthz, /readyz and /metrics are answered without an access event (log.health_checks: false)."""
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await env.client.get(path)).status_code == 200
    await env.client.get("/3rdparty/v1/nowhere")
    event = await env.next_request()
    assert event["path"] == "/3rdparty/v1/nowhere"
    assert len(env.capture.events("request")) == 1


async def test_health_checks_are_logged_when_configured(tmp_path: Path) -> None:
    """With log.health_checks: true, probes are logged with their gateway route and no rule."""
    async with observed(tmp_path, extra="log: {health_checks: true}\n") as env:
        await env.client.get("/healthz")
        await env.client.get("/metrics")
        health, metrics = await env.requests(2)
    assert (health["route"], health["rule"], health["decision"], health["status"]) == (
        "GET /healthz",
        None,
        "allow",
        200,
    )
    assert metrics["route"] == "GET /metrics"


async def test_access_log_can_be_switched_off(tmp_path: Path) -> None:
    """log.access: false: no request events, audit events still; a request id is still given (metrics are on)."""
    async with observed(tmp_path, extra="log: {access: false}\n") as env:
        response = await env.client.post(
            "/3rdparty/v1/auth/token", json={"scopes": ["messages:send"]}, auth=("ops", OPS_PASSWORD)
        )
        assert response.status_code == 201
        await asyncio.sleep(0.05)
    assert env.capture.events("request") == []
    assert len(env.capture.events("token.issued")) == 1
    assert HEX32.fullmatch(response.headers["x-request-id"])


async def test_log_level_filters_events(tmp_path: Path) -> None:
    """log.level: error drops info events (allowed requests, token.issued) and keeps errors (5xx requests)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with observed(tmp_path, extra="log: {level: error}\n", upstream_url=f"http://127.0.0.1:{port}") as env:
        await env.client.post("/3rdparty/v1/auth/token", json={"scopes": ["messages:send"]}, auth=("ops", OPS_PASSWORD))
        await env.client.get("/3rdparty/v1/health")
        event = await env.next_request()
    assert event["status"] == 502
    assert env.capture.events("token.issued") == []
    assert env.capture.events("policy.loaded") == []


async def test_token_endpoint_requests_are_logged_with_their_caller(env: Env) -> None:
    """POST /auth/token is logged with its endpoint as route, the caller as subject, and the body size."""
    body = {"scopes": ["messages:send"], "ttl": 60}
    response = await env.client.post("/3rdparty/v1/auth/token", json=body, auth=("ops", OPS_PASSWORD))
    assert response.status_code == 201
    event = await env.next_request()
    assert event["route"] == "POST /3rdparty/v1/auth/token"
    assert (event["subject"], event["issuer"], event["decision"], event["status"]) == ("ops", "basic", "allow", 201)
    assert event["bytes_in"] == len(response.request.content)
    await env.client.delete(f"/3rdparty/v1/auth/token/{response.json()['id']}", auth=("ops", "wrong"))
    event = await env.next_request()
    assert (event["route"], event["reason"], event["status"]) == (
        "DELETE /3rdparty/v1/auth/token/{jti}",
        "invalid_credentials:basic",
        401,
    )


# ------------------------------------------------------------------------------------------------- audit events


async def test_token_lifecycle_audit_events(env: Env) -> None:
    """token.issued, token.refreshed, token.replay_detected and token.revoked name jtis, subjects and callers."""
    issued = await env.client.post(
        "/3rdparty/v1/auth/token", json={"scopes": ["messages:send"], "ttl": 120}, auth=("ops", OPS_PASSWORD)
    )
    first = issued.json()
    (event,) = env.capture.events("token.issued")
    assert event["jti"] == first["id"]
    assert {k: event[k] for k in ("subject", "scopes", "ttl_s", "by", "by_issuer", "level")} == {
        "subject": "ops",
        "scopes": ["messages:send"],
        "ttl_s": 120,
        "by": "ops",
        "by_issuer": "basic",
        "level": "info",
    }
    assert event["refresh_jti"]
    assert event["family"]
    assert event["expires_at"] > 0

    refreshed = await env.client.post(
        "/3rdparty/v1/auth/token/refresh", headers={"authorization": f"Bearer {first['refresh_token']}"}
    )
    assert refreshed.status_code == 201
    (event,) = env.capture.events("token.refreshed")
    assert event["jti"] == refreshed.json()["id"]
    assert event["previous_jti"] == env.capture.events("token.issued")[0]["refresh_jti"]
    assert (event["subject"], event["family"]) == ("ops", env.capture.events("token.issued")[0]["family"])

    replayed = await env.client.post(
        "/3rdparty/v1/auth/token/refresh", headers={"authorization": f"Bearer {first['refresh_token']}"}
    )
    assert replayed.status_code == 401
    (event,) = env.capture.events("token.replay_detected")
    assert (event["level"], event["subject"], event["family"]) == (
        "warning",
        "ops",
        env.capture.events("token.issued")[0]["family"],
    )
    assert event["jti"] == env.capture.events("token.issued")[0]["refresh_jti"]

    pair = await env.pair("messages:send")
    revoked = await env.client.delete(f"/3rdparty/v1/auth/token/{pair.access.jti}", auth=("ops", OPS_PASSWORD))
    assert revoked.status_code == 204
    (event,) = env.capture.events("token.revoked")
    assert {k: event[k] for k in ("jti", "subject", "family", "by", "by_issuer")} == {
        "jti": pair.access.jti,
        "subject": "app-1",
        "family": pair.family,
        "by": "ops",
        "by_issuer": "basic",
    }
    cli_issued = env.capture.events("token.issued")[-1]
    assert (cli_issued["by"], cli_issued["by_issuer"]) == ("cli", None)  # env.pair() issues as the local operator
    events = await env.requests(4)
    assert [e["reason"] for e in events] == [None, None, "invalid_token:refresh_replayed", None]


async def test_policy_loaded_and_reload_rejected(env: Env) -> None:
    """policy.loaded at start-up and after a reload (with the previous version); a bad edit is reload_rejected."""
    (startup,) = env.capture.events("policy.loaded")
    assert (startup["trigger"], startup["previous"], startup["version"]) == (
        "startup",
        None,
        env.gateway.runtime.version,
    )
    assert startup["upstreams"] == ["smsgate"]
    assert startup["rules"] > 10
    path = Path(env.gateway.settings.file)
    path.write_text(path.read_text() + "\n# an edit\n")
    assert await env.gateway.reload()
    reloaded = env.capture.events("policy.loaded")[-1]
    assert (reloaded["trigger"], reloaded["previous"]) == ("reload", startup["version"])
    assert reloaded["version"] == env.gateway.runtime.version != startup["version"]
    path.write_text(path.read_text() + "bogus_key: 1\n")
    assert not await env.gateway.reload()
    (rejected,) = env.capture.events("policy.reload_rejected")
    assert rejected["level"] == "error"
    assert rejected["version"] == reloaded["version"]
    assert "bogus_key" in rejected["error"]
    assert "unknown key" in rejected["error"]


async def test_upstream_login_events(tmp_path: Path) -> None:
    """A token exchange logs upstream.login (kind, expiry, never the token); a refused login upstream.login_failed."""
    async with FakeSMSPortal(SMSPORTAL_ID, SMSPORTAL_SECRET) as portal:
        config = ProvidersConfig(tmp_path).add(
            "smsportal",
            portal.url + "/v1",
            "{type: smsportal, client_id: '${T_SMSPORTAL_ID}', api_secret: '${T_SMSPORTAL_SECRET}'}",
        )
        capture = LogCapture()
        gateway = create_app(config.settings(), log_sink=capture)
        token = config.token("messages:send", gateway=gateway)
        async with UvicornServer(gateway, lifespan="on") as server, httpx.AsyncClient(base_url=server.url) as client:
            for _ in range(2):
                response = await client.post(
                    "/smsportal/v1/bulkmessages", json={}, headers={"authorization": f"Bearer {token}"}
                )
                assert response.status_code == 200
    (login,) = capture.events("upstream.login")
    assert (login["upstream"], login["kind"], login["level"]) == ("smsportal", "login", "info")
    assert 0 < login["expires_in_s"] <= 24 * 3600
    assert capture.events("upstream.login_failed") == []

    async with FakeSMSPortal(SMSPORTAL_ID, "not-the-secret") as portal:
        config = ProvidersConfig(tmp_path).add(
            "smsportal",
            portal.url + "/v1",
            "{type: smsportal, client_id: '${T_SMSPORTAL_ID}', api_secret: '${T_SMSPORTAL_SECRET}'}",
        )
        capture = LogCapture()
        gateway = create_app(config.settings(), log_sink=capture)
        async with UvicornServer(gateway, lifespan="on") as server, httpx.AsyncClient(base_url=server.url) as client:
            response = await client.post(
                "/smsportal/v1/bulkmessages",
                json={},
                headers={"authorization": f"Bearer {config.token('messages:send', gateway=gateway)}"},
            )
            assert response.status_code == 502
    (failed,) = capture.events("upstream.login_failed")
    assert (failed["upstream"], failed["kind"], failed["code"], failed["level"]) == (
        "smsportal",
        "login",
        "upstream_login_failed",
        "error",
    )
    assert "HTTP 401" in failed["cause"]
    assert_clean(capture.lines, PROVIDER_CANARIES)


async def test_upstream_credential_failure_event(tmp_path: Path) -> None:
    """BSG's 200 {"error": 2} to the gateway's key: upstream.credential_failure, and the request's reason."""
    async with FakeBSG(["live_right"]) as bsg:
        config = ProvidersConfig(tmp_path).add(
            "bsg_v1", bsg.url + "/rest", "{type: bsg_v1, api_key: '${T_BSG_WRONG_KEY}'}"
        )
        capture = LogCapture()
        gateway = create_app(config.settings(), log_sink=capture)
        async with UvicornServer(gateway, lifespan="on") as server, httpx.AsyncClient(base_url=server.url) as client:
            response = await client.get(
                "/bsg/v1/common/balance",
                headers={"authorization": f"Bearer {config.token('balance:read', gateway=gateway)}"},
            )
            assert response.status_code == 502
            await asyncio.sleep(0.05)
    (failure,) = capture.events("upstream.credential_failure")
    assert (failure["upstream"], failure["cause"], failure["upstream_status"], failure["level"]) == (
        "bsg_v1",
        "credential_error_answer",
        200,
        "error",
    )
    (request,) = capture.events("request")
    assert (request["decision"], request["reason"], request["status"]) == ("allow", "upstream_credentials", 502)
    assert BSG_WRONG_KEY not in capture.text()


# ------------------------------------------------------------------------------------------------- redaction

SECRETS = ("canary-secret-1234", 'quote"and\\slash-5678', "pässwörd-unicode-91", "user:p@ss/word+x")
NAMES = ("X-API-KEY", "userId")
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXZhbHVl"


def redacted(event: dict[str, object]) -> list[object]:
    """The event through both passes: the thorough one (dict) and the JSON fast path (parsed back)."""
    redactor = Redactor(SECRETS, NAMES)
    thorough = redactor(None, "info", dict(event))
    fast = json.loads(Redactor(SECRETS, NAMES).json_line(dict(event)))
    return [thorough, fast]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("authorization", "Bearer abc", REDACTED),
        ("Authorization", "Basic dXNlcjpwYXNz", REDACTED),
        ("cookie", "session=1", REDACTED),
        ("Set-Cookie", "session=1", REDACTED),
        ("password", "hunter2", REDACTED),
        ("db_password", "hunter2", REDACTED),
        ("client_secret", "s", REDACTED),
        ("secret", "s", REDACTED),
        ("token", "opaque", REDACTED),
        ("access_token", "opaque", REDACTED),
        ("refresh_token", "opaque", REDACTED),
        ("provider_token", "opaque", REDACTED),
        ("api_key", "k", REDACTED),
        ("apiKey", "k", REDACTED),
        ("x-api-key", "k", REDACTED),  # a configured credential header, any case and spelling
        ("x_api_key", "k", REDACTED),
        ("userid", "u", REDACTED),  # a configured credential query parameter
        ("password", None, None),  # nothing to hide
        ("password", "", ""),
        ("message", "no secrets here", "no secrets here"),
        ("url", "https://h/x?key=canary-secret-1234&y=1", f"https://h/x?key={REDACTED}&y=1"),
        ("note", 'has quote"and\\slash-5678 inside', f"has {REDACTED} inside"),
        ("note", "pässwörd-unicode-91!", f"{REDACTED}!"),
        ("query", "pw=user%3Ap%40ss%2Fword%2Bx", f"pw={REDACTED}"),  # the percent-encoded spelling
        ("path", f"/messages/{JWT}", f"/messages/{fingerprint(JWT)}"),
        ("note", f"a {JWT[:-5]}", f"a {fingerprint(JWT[:-5])}"),  # a truncated signature is still a token
        ("note", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", f"{fingerprint('eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.')}"),
        ("hosts", ["api.sms-gate.app", "canary-secret-1234"], ["api.sms-gate.app", REDACTED]),
        ("headers", {"Authorization": "Basic x", "Accept": "json"}, {"Authorization": REDACTED, "Accept": "json"}),
        ("nested", {"list": [{"cookie": "c", "n": 1}]}, {"list": [{"cookie": REDACTED, "n": 1}]}),
        ("raw", b"canary-secret-1234", REDACTED),
        ("count", 12, 12),
        ("ok", True, True),
    ],
)
def test_redaction_table(field: str, value: object, expected: object) -> None:
    """Sensitive keys are masked whole; secrets and JWTs are replaced wherever they occur; the rest is untouched."""
    for result in redacted({"event": "x", field: value}):
        assert result[field] == expected  # type: ignore[index]


def test_objects_are_redacted_as_they_would_be_printed() -> None:
    """A value of another type is logged as its str(), searched like any string."""

    class Carrier:
        def __str__(self) -> str:
            return "token canary-secret-1234"

    for result in redacted({"event": "x", "thing": Carrier()}):
        assert result["thing"] == f"token {REDACTED}"  # type: ignore[index]


def test_short_values_are_not_searched_but_keys_still_mask() -> None:
    """Secrets shorter than 4 characters would mangle every line: not searched for, still masked by key."""
    redactor = Redactor(["abc"], [])
    assert redactor(None, "info", {"event": "x", "note": "abc", "password": "abc"}) == {
        "event": "x",
        "note": "abc",
        "password": REDACTED,
    }


def test_redactor_learns_more_and_forgets_nothing() -> None:
    """add() teaches new secrets and names (a reload); the earlier ones stay redacted."""
    redactor = Redactor(["first-secret"], [])
    redactor.add(["second-secret"], ["X-Token-Header"])
    line = redactor.json_line({"event": "x", "a": "first-secret second-secret", "x-token-header": "v"})
    assert json.loads(line) == {"event": "x", "a": f"{REDACTED} {REDACTED}", "x-token-header": REDACTED}


def test_fingerprint_is_a_sha256_prefix() -> None:
    """jwt:<first 8 hex digits of sha256>: correlates tokens, cannot be replayed."""
    assert fingerprint(JWT) == "jwt:" + hashlib.sha256(JWT.encode()).hexdigest()[:8]


def test_event_name_comes_first_and_stays_intact() -> None:
    """The rendered line starts with the event name; level and timestamp are added by the chain."""
    capture = LogCapture()
    log = make_logger("t", redactor=Redactor(), sink=capture)
    log.info("token.issued", jti="abc")
    assert capture.lines[0].startswith('{"event": "token.issued", "jti": "abc", "level": "info", "timestamp": "')


# ---------------------------------------------------------------------- the access line, written directly

RULE = Rule(
    methods=frozenset({"POST", "PUT"}),
    path="/messages",
    full_path="/3rdparty/v1/messages",
    scopes=("messages:send", "messages:write"),
    file="policies/test.yaml",
    line=7,
    upstream="smsgate",
)
CALLER = Principal("app-1", frozenset({"messages:send", "devices:list"}), "self", "jti-1", None, {}, "access")


def access_scope(path: str = "/3rdparty/v1/messages", **extra: object) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode("utf-8"),
        "headers": [(b"authorization", f"Bearer {JWT}x".encode())],
        "client": ("10.0.0.7", 5555),
        **extra,
    }


def access_lines(
    record: RequestRecord, scope: dict[str, Any], redactor: Redactor, level: str = "info"
) -> tuple[list[str], list[str]]:
    """The access line(s) of one finished request: written directly (`JSONOutput`), and through structlog's
    chain (a bound copy of the logger has no direct output), each with its timestamp checked and blanked."""
    rendered = []
    for bound in (False, True):
        capture = LogCapture()
        log = make_logger("smsguard.access", redactor=redactor, level=level, sink=capture)
        assert json_output(log) is not None
        if bound:
            log = log.bind()
            assert json_output(log) is None
        plan = ObservePlan(access=True, probes=False, count=False, labels={})
        Observer(log, Metrics(), lambda *args: asyncio.sleep(0)).finish(scope, record, 0.0123456, plan)
        for line in capture.lines:
            assert TIMESTAMP.fullmatch(json.loads(line)["timestamp"])
        rendered.append([TIMESTAMP.sub("T", line) for line in capture.lines])
    return rendered[0], rendered[1]


@pytest.mark.parametrize(
    ("record", "scope"),
    [
        (
            RequestRecord(
                "0123456789abcdef0123456789abcdef",
                path="/3rdparty/v1/messages",
                rule=RULE,
                principal=CALLER,
                upstream="smsgate",
                upstream_s=0.000828,
                status=202,
                bytes_in=82,
                bytes_out=48,
            ),
            access_scope(),
        ),
        (RequestRecord("r-2", reason="invalid_token:malformed", denied=True, status=401), access_scope(client=None)),
        (RequestRecord("r-3", route="GET /healthz", reason="upstream_reset", status=502), access_scope()),
        (
            RequestRecord("r-4", rule=RULE, principal=CALLER, reason="client_disconnected"),
            access_scope('/3rdparty/v1/"quoted"\\back/ünï\u2028/\x01' + "x" * 300),
        ),
        (
            RequestRecord(
                "r-5", rule=RULE, principal=Principal("basic-user", frozenset(), "basic", None, None, {}, "basic")
            ),
            access_scope(),
        ),
        (RequestRecord(JWT, path="/3rdparty/v1/canary-secret-1234", status=404), access_scope()),  # redacted
        (RequestRecord("r-7", principal=Principal(42, frozenset(), "self", "j", None, {}, "access")), access_scope()),  # type: ignore[arg-type]
    ],
)
def test_direct_access_line_is_the_line_structlog_writes(record: RequestRecord, scope: dict[str, Any]) -> None:
    """The access line built without structlog is byte for byte the chain's (fields, order, escaping, level,
    redaction), whether it is written directly or, when the redactor finds something, through the chain."""
    direct, chained = access_lines(record, scope, Redactor(SECRETS, NAMES))
    assert direct == chained
    (line,) = direct
    event = json.loads(line)
    assert list(event) == ACCESS_FIELDS
    assert event["level"] == ("error" if event["status"] >= 500 else "info")
    assert "canary-secret-1234" not in line
    assert JWT not in line


def test_direct_access_line_masks_a_configured_name_like_a_field() -> None:
    """A credential name that is also an access field (query parameter `client`) masks that field on both paths."""
    record = RequestRecord("r-1", rule=RULE, principal=CALLER, status=200)
    direct, chained = access_lines(record, access_scope(), Redactor(SECRETS, ["Client"]))
    assert direct == chained
    assert json.loads(direct[0])["client"] == REDACTED


def test_direct_access_line_follows_the_log_level() -> None:
    """log.level: error drops the access lines of successes and keeps the 5xx ones, as the logger does."""
    for status, count in ((200, 0), (404, 0), (500, 1), (503, 1)):
        direct, chained = access_lines(RequestRecord("r", status=status), access_scope(), Redactor(), level="error")
        assert len(direct) == len(chained) == count


def test_fresh_request_ids_are_random_and_not_shared_with_a_forked_child() -> None:
    """Request ids are drawn in batches: 32 hex digits each, never repeated, and a forked process draws its own."""
    ids = [new_request_id() for _ in range(1000)]
    assert all(HEX32.fullmatch(value) for value in ids)
    assert len(set(ids)) == len(ids)
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        os.write(writer, ",".join(new_request_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(writer)
    os.waitpid(child, 0)
    with os.fdopen(reader) as pipe:
        theirs = pipe.read().split(",")
    ours = [new_request_id() for _ in range(10)]
    assert len(theirs) == 10
    assert not set(theirs) & set(ours)


# ---------------------------------------------------------------------------------------------------- sinks


def test_stream_sink_writes_json_lines_and_console_lines() -> None:
    """StreamSink: one JSON document per line, or the console format; both redacted."""
    out = io.StringIO()
    log = make_logger("t", redactor=Redactor(["canary-secret-1234"]), sink=StreamSink("json", out))
    log.warning("request", path="/x/canary-secret-1234", status=200)
    log.info("token.revoked", jti="j1")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert (first["event"], first["path"], first["level"]) == ("request", f"/x/{REDACTED}", "warning")
    assert (second["event"], second["jti"]) == ("token.revoked", "j1")

    out = io.StringIO()
    log = make_logger("t", redactor=Redactor(["canary-secret-1234"]), sink=StreamSink("console", out))
    log.info("request", path="/x/canary-secret-1234", status=200)
    text = out.getvalue()
    assert "request" in text
    assert "status=200" in text
    assert "canary-secret-1234" not in text


def test_auto_format_is_console_on_a_terminal_only() -> None:
    """--log-format auto: console when stderr is a TTY, JSON otherwise."""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert resolve_format("auto", Tty()) == "console"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", Tty()) == "json"
    with pytest.raises(ValueError, match="xml"):
        resolve_format("xml")


def test_stdlib_sink_hands_redacted_events_to_logging(caplog: pytest.LogCaptureFixture) -> None:
    """The default sink: the redacted event dict as the message of a record on the category's stdlib logger."""
    caplog.set_level(logging.DEBUG, logger="smsguard")
    log = make_logger("smsguard.audit", redactor=Redactor(["canary-secret-1234"]), sink=StdlibSink())
    log.info("token.issued", jti="j1", note="canary-secret-1234")
    (record,) = [r for r in caplog.records if r.name == "smsguard.audit"]
    assert record.levelno == logging.INFO
    assert isinstance(record.msg, dict)
    assert record.msg["note"] == REDACTED
    assert record.msg["event"] == "token.issued"


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_stdlib_logging changes process-wide state: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    named = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate, logging.getLogger(name).level)
        for name in (
            "uvicorn",
            "uvicorn.error",
            "uvicorn.access",
            "uvicorn.asgi",
            "aiohttp",
            "httpx",
            "httpcore",
            "watchfiles",
        )
    }
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        for name, (saved, propagate, saved_level) in named.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = saved
            logger.propagate = propagate
            logger.setLevel(saved_level)


@pytest.mark.usefixtures("restored_logging")
def test_cli_routes_stdlib_records_through_the_same_pipeline() -> None:
    """configure_stdlib_logging: uvicorn's and our stdlib records become redacted JSON lines with their logger name."""
    out = io.StringIO()
    configure_stdlib_logging("json", level="info", redactor=Redactor(["canary-secret-1234"]), stream=out)
    configure_stdlib_logging("json", level="info", redactor=Redactor(["canary-secret-1234"]), stream=out)  # idempotent
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42, extra={"color_message": "x"})
    logging.getLogger("gateway.auth.jwt").warning(
        "jwks fetch failed", extra={"issuer": "corp", "url": "canary-secret-1234"}
    )
    logging.getLogger("httpx").info("HTTP Request: POST https://h/login?key=canary-secret-1234")  # quieted
    try:
        raise RuntimeError("boom canary-secret-1234")
    except RuntimeError:
        logging.getLogger("aiohttp.server").exception("handler failed")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["Started server process [42]", "jwks fetch failed", "handler failed"]
    assert lines[0]["logger"] == "uvicorn.error"
    assert "color_message" not in lines[0]
    assert (lines[1]["issuer"], lines[1]["url"], lines[1]["level"]) == ("corp", REDACTED, "warning")
    assert "RuntimeError: boom" in lines[2]["exception"]
    assert "canary-secret-1234" not in out.getvalue()
    assert logging.getLogger("uvicorn.access").propagate is False


# ----------------------------------------------------------------------------------------- canaries, whole mix


def assert_clean(lines: list[str], secrets: tuple[str, ...], tokens: tuple[str, ...] = ()) -> None:
    for line in lines:
        for secret in secrets:
            assert secret not in line, f"secret {secret[:12]}... in a log line: {line[:300]}"
        for token in tokens:
            assert token not in line, f"token {token[:12]}... in a log line: {line[:300]}"


async def exercise(client: httpx.AsyncClient) -> list[str]:
    """A mix touching every credential the gateway knows: Basic canary passwords, minted and refreshed tokens,
    tokens in paths and queries, bad tokens, the upstream's injected canary credentials (13 requests logged).
    Returns the tokens issued."""
    issued = await client.post(
        "/3rdparty/v1/auth/token", json={"scopes": ["messages:send", "messages:read"]}, auth=("ops", OPS_PASSWORD)
    )
    body = issued.json()
    bearer = {"authorization": f"Bearer {body['access_token']}"}
    await client.post("/3rdparty/v1/messages", content=MESSAGE, headers=bearer)
    await client.get(f"/3rdparty/v1/messages/{body['access_token']}", headers=bearer)  # a token in the path
    await client.get(f"/3rdparty/v1/messages?access_token={body['access_token']}")  # ... and in the query
    await client.get("/3rdparty/v1/devices", headers=bearer)  # 403
    await client.get("/3rdparty/v1/devices", headers={"authorization": f"Bearer {body['access_token'][:-3]}abc"})
    await client.get("/3rdparty/v1/devices", auth=("sender", SENDER_PASSWORD))
    await client.get("/3rdparty/v1/devices", auth=("ops", SENDER_PASSWORD))  # the wrong password
    await client.get("/3rdparty/v1/devices", auth=("ops", OPS_PASSWORD))
    await client.get(f"/3rdparty/v1/{UPSTREAM_PASSWORD}")  # a configured secret in a path
    refresh = {"authorization": f"Bearer {body['refresh_token']}"}
    refreshed = (await client.post("/3rdparty/v1/auth/token/refresh", headers=refresh)).json()
    await client.post("/3rdparty/v1/auth/token/refresh", headers=refresh)  # replayed
    await client.delete(f"/3rdparty/v1/auth/token/{body['id']}", auth=("ops", OPS_PASSWORD))
    return [body["access_token"], body["refresh_token"], refreshed["access_token"], refreshed["refresh_token"]]


def injected_basic() -> str:
    return base64.b64encode(f"{UPSTREAM_USER}:{UPSTREAM_PASSWORD}".encode()).decode()


async def test_no_canary_and_no_token_in_any_log_line(env: Env) -> None:
    """Across the whole mix: no canary (passwords, upstream credentials, signing secret) and no full token in any
    JSON line, while the upstream did receive the canary credentials (so they were in play)."""
    tokens = await exercise(env.client)
    await env.requests(13)
    assert env.upstream.last.values("authorization") == [f"Basic {injected_basic()}"]
    assert_clean(env.capture.lines, (*CANARIES, injected_basic()), tuple(tokens))
    assert any(fingerprint(tokens[0]) in line for line in env.capture.lines)  # the path's token, as its fingerprint
    assert len(env.capture.events("request")) == 13


async def test_no_canary_through_stdlib_logging_either(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The default sink (stdlib logging, the thorough redaction pass) leaks nothing from the same mix either."""
    caplog.set_level(logging.DEBUG)
    async with RecordingUpstream(JSON_REPLY) as upstream:
        gateway = create_app(GatewayConfig(tmp_path, upstream.url + "/3rdparty/v1").settings())
        async with UvicornServer(gateway, lifespan="on") as server, httpx.AsyncClient(base_url=server.url) as client:
            tokens = await exercise(client)
            async with asyncio.timeout(5):
                while sum(r.name == "smsguard.access" for r in caplog.records) < 13:
                    await asyncio.sleep(0.005)
    # httpx/httpcore records are this test's own client, which puts a token in a URL on purpose
    texts = [record.getMessage() for record in caplog.records if not record.name.startswith(("httpx", "httpcore"))]
    assert sum("'event': 'token." in text for text in texts) >= 4
    assert_clean(texts, (*CANARIES, injected_basic()), tuple(tokens))


# ---------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("log: {level: loud}\n", "config.yaml:1:14: log.level: unknown log level 'loud' (hint: one of: debug, info"),
        ("log: {access: maybe}\n", "config.yaml:1:15: log.access: expected true or false, got str 'maybe'"),
        (
            "log: {format: json}\n",
            "config.yaml:1:7: log.format: unknown key (hint: known keys here: access, health_checks",
        ),
    ],
)
def test_log_config_errors_name_file_line_and_key(text: str, message: str) -> None:
    """Mistakes in `log:` are LoadErrors with file:line:column and the dotted key."""
    with pytest.raises(LoadError) as caught:
        parse_settings(text, env={})
    assert str(caught.value).startswith(message)


def test_log_config_defaults_and_values() -> None:
    """access on, level info, health checks not logged, unless the config says otherwise."""
    assert parse_settings("store: memory://\n", env={}).log == LogSettings()
    assert LogSettings() == LogSettings(access=True, level="info", health_checks=False)
    configured = parse_settings("log: {access: false, level: WARNING, health_checks: true}\n", env={}).log
    assert configured == LogSettings(access=False, level="warning", health_checks=True)


def test_log_format_flag_is_checked() -> None:
    """`--log-format` takes auto, json or console, for serve and demo."""
    for command in ("serve", "demo"):
        with pytest.raises(SystemExit) as caught:
            main([command, "--log-format", "xml"])
        assert caught.value.code == 2


def test_console_access_lines_lead_with_time_status_method_path_latency_subject() -> None:
    """--log-format console: an access line starts with time, status, method, path, latency, subject; the rest
    follows sorted by name; other events keep time, level and event first."""
    out = io.StringIO()
    log = make_logger("t", redactor=Redactor(), sink=StreamSink("console", out))
    log.info(
        "request",
        request_id="r1",
        method="GET",
        path="/3rdparty/v1/devices",
        decision="deny",
        reason="insufficient_scope",
        subject="ops",
        status=403,
        bytes_out=55,
        duration_ms=0.169,
    )
    log.warning("store.unavailable", reason="timeout")
    access, other = out.getvalue().splitlines()
    timestamp, rest = access.split(" ", 1)
    assert timestamp.endswith("Z")
    assert (
        rest
        == "403 GET /3rdparty/v1/devices 0.169ms ops bytes_out=55 decision=deny reason=insufficient_scope request_id=r1"
    )
    assert other.split(" ", 1)[1].startswith("[warning  ] store.unavailable")
    assert other.endswith("reason=timeout")
