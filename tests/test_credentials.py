"""credentials.py: the injectors, their flows, and what they let the forwarder strip and redact."""

from __future__ import annotations

import base64

import pytest

from gateway.config.settings import (
    BasicCredentialSettings,
    HeaderCredentialSettings,
    NoneCredentialSettings,
    QueryCredentialSettings,
    Secret,
    parse_settings,
    read_credentials,
)
from gateway.errors import LoadError
from gateway.proxy.credentials import (
    BasicCredentials,
    CredentialErrorRule,
    Credentials,
    HeaderCredentials,
    NoCredentials,
    OutgoingRequest,
    QueryCredentials,
    build_credentials,
)

CANARY = "canary-s3cret-9f2c"


async def run_flow(credentials: Credentials, status: int = 200) -> tuple[list[OutgoingRequest], bool]:
    """Drive a flow like the forwarder: the requests it yields, and whether it asked for a retry."""
    request = OutgoingRequest("POST", [("content-type", "application/json")], None, "a=1")
    flow = credentials.flow(request)
    sent = [await anext(flow)]
    try:
        sent.append(await flow.asend(status))
    except StopAsyncIteration:
        return sent, False
    finally:
        await flow.aclose()
    return sent, True


async def test_none_adds_nothing() -> None:
    """`none` yields the request untouched, once."""
    credentials = build_credentials(NoneCredentialSettings())
    assert isinstance(credentials, NoCredentials)
    sent, retried = await run_flow(credentials)
    assert sent[0].headers == [("content-type", "application/json")]
    assert sent[0].raw_query == "a=1"
    assert sent[0].query is None
    assert not retried
    assert credentials.header_names == frozenset()
    assert credentials.query_names == frozenset()


async def test_basic_injects_one_authorization() -> None:
    """`basic` adds exactly one Authorization: Basic base64(user:password), UTF-8 encoded."""
    credentials = build_credentials(BasicCredentialSettings(username=Secret("José"), password=Secret(CANARY + ":x")))
    assert isinstance(credentials, BasicCredentials)
    sent, retried = await run_flow(credentials, status=401)
    token = base64.b64encode(f"José:{CANARY}:x".encode()).decode()
    assert [v for k, v in sent[0].headers if k.lower() == "authorization"] == [f"Basic {token}"]
    assert not retried  # a static credential has nothing fresher to retry with
    assert credentials.header_names == {"authorization"}
    assert {CANARY + ":x", token} <= set(credentials.secret_values)


async def test_header_injects_each_configured_header() -> None:
    """`header` adds each configured header once, spelled as configured."""
    credentials = build_credentials(
        HeaderCredentialSettings(headers={"X-API-KEY": Secret(CANARY), "apiKey": Secret("k2")})
    )
    assert isinstance(credentials, HeaderCredentials)
    sent, _ = await run_flow(credentials)
    assert sent[0].headers[1:] == [("X-API-KEY", CANARY), ("apiKey", "k2")]
    assert credentials.header_names == {"x-api-key", "apikey"}
    assert set(credentials.secret_values) == {CANARY, "k2"}


async def test_flow_runs_fresh_per_request() -> None:
    """Each request gets its own flow: headers are never accumulated across requests."""
    credentials = HeaderCredentials(HeaderCredentialSettings(headers={"X-Key": Secret("v")}))
    first, second = OutgoingRequest("GET", []), OutgoingRequest("GET", [])
    for request in (first, second):
        flow = credentials.flow(request)
        await anext(flow)
        await flow.aclose()
    assert first.headers == second.headers == [("X-Key", "v")]


@pytest.mark.parametrize(
    "credentials",
    [
        BasicCredentials(BasicCredentialSettings(username=Secret("user"), password=Secret(CANARY))),
        HeaderCredentials(HeaderCredentialSettings(headers={"X-API-KEY": Secret(CANARY)})),
        NoCredentials(),
    ],
)
def test_repr_never_shows_secrets(credentials: Credentials) -> None:
    """repr names the kind and injected headers, never a value."""
    text = repr(credentials) + str(credentials)
    assert CANARY not in text
    assert base64.b64encode(f"user:{CANARY}".encode()).decode() not in text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"type": "oauth-magic"}, "unknown credentials type"),
        ({"type": "basic", "username": Secret("a:b"), "password": Secret("p")}, "no ':'"),
        ({"type": "basic", "password": Secret("p")}, "username: required key is missing"),
        ({"type": "header", "headers": {}}, "at least one header"),
        ({"type": "header", "headers": {"Bad Name": Secret("v")}}, "not a valid header name"),
        ({"type": "header", "headers": {"X-Key": Secret("a\r\nX-Evil: 1")}}, "control characters"),
        ({"type": "header", "headers": {"X-Key": Secret(" padded ")}}, "padded"),
        ({"type": "header", "headers": {"X-Api-Key": Secret("a"), "x_api_key": Secret("b")}}, "same"),
    ],
)
def test_invalid_settings_rejected(options: dict[str, object], message: str) -> None:
    """Bad credential settings fail at startup with a message that never contains the secret."""
    with pytest.raises(LoadError, match=message) as caught:
        build_credentials(read_credentials(options))
    assert "a\r\nX-Evil" not in str(caught.value)


def test_built_from_config_yaml() -> None:
    """The injectors are built from what config.yaml says, `${VAR}` secrets included."""
    settings = parse_settings(
        """
upstreams:
  smsgate:
    url: https://api.sms-gate.app/3rdparty/v1
    credentials: {type: basic, username: "${SMS_USER}", password: "${SMS_PASSWORD}"}
  bsg:
    url: https://api.bsg.world/rest
    credentials: {type: header, headers: {X-API-KEY: "${BSG_KEY}"}}
""",
        env={"SMS_USER": "ops", "SMS_PASSWORD": CANARY, "BSG_KEY": "live_" + CANARY},
    )
    basic = build_credentials(settings.upstreams["smsgate"].credentials)
    header = build_credentials(settings.upstreams["bsg"].credentials)
    assert isinstance(basic, BasicCredentials)
    assert isinstance(header, HeaderCredentials)
    assert CANARY in basic.secret_values
    assert header.secret_values == ("live_" + CANARY,)


# ------------------------------------------------------------------------------------- query, errors


async def test_query_adds_each_parameter_once() -> None:
    """`query` appends its parameters (after any another injector added) and names them for stripping."""
    credentials = build_credentials(
        QueryCredentialSettings(params={"userId": Secret("u1"), "password": Secret(CANARY)})
    )
    assert isinstance(credentials, QueryCredentials)
    sent, retried = await run_flow(credentials, status=401)
    assert sent[0].query == [("userId", "u1"), ("password", CANARY)]
    assert sent[0].raw_query == "a=1"  # the client's query stays; the forwarder already dropped its copies
    assert not retried
    assert credentials.query_names == {"userid", "password"}
    assert credentials.header_names == frozenset()
    assert set(credentials.secret_values) == {"u1", CANARY}
    assert CANARY not in repr(credentials)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "at least one parameter"),
        ({"bad name": Secret("v")}, "not a valid parameter name"),
        ({"userId": Secret("a"), "USERID": Secret("b")}, "given twice"),
        ({"password": Secret("")}, "empty or contains control"),
        ({"password": Secret("a\r\nb")}, "empty or contains control"),
    ],
)
def test_invalid_query_credentials(params: dict[str, Secret], message: str) -> None:
    """Bad query parameters fail at startup, naming the parameter but never its value."""
    with pytest.raises(LoadError, match=message) as caught:
        build_credentials(read_credentials({"type": "query", "params": params}))
    assert "a\r\nb" not in str(caught.value)


@pytest.mark.parametrize(
    ("document", "status", "matches"),
    [
        ({"error": 2, "errorDescription": "Invalid API key"}, 200, True),
        ({"error": 2}, 201, False),
        ({"error": 0}, 200, False),
        ({"error": "2"}, 200, False),
        ({"error": True}, 200, False),
        ({"result": {"error": 2}}, 200, False),
        ([{"error": 2}], 200, False),
        ("error", 200, False),
    ],
)
def test_credential_error_rule_matches_exactly(document: object, status: int, matches: bool) -> None:
    """BSG's rule matches status 200 with `error` equal to the integer 2, nothing looser."""
    rule = CredentialErrorRule(status=200, field="error", equals=2)
    assert rule.matches(status, document) is matches


def test_credential_error_rule_on_any_kind() -> None:
    """Any kind can carry a credential_error rule; nested fields use dotted paths."""
    basic = {"type": "basic", "username": Secret("u"), "password": Secret("p")}
    credentials = build_credentials(read_credentials({**basic, "credential_error": {"field": "a.b", "equals": "x"}}))
    assert credentials.credential_error is not None
    assert credentials.credential_error.matches(200, {"a": {"b": "x"}})
    with pytest.raises(LoadError, match="dotted JSON path"):
        read_credentials({**basic, "credential_error": {"field": "a..b", "equals": 1}})
    with pytest.raises(LoadError, match="at least 100"):
        read_credentials({**basic, "credential_error": {"status": 99, "field": "a", "equals": 1}})
