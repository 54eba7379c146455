"""credentials.py: the injectors, their flows, and what they let the forwarder strip and redact."""

from __future__ import annotations

import base64

import pytest

from gateway.config import CredentialSettings, Secret, parse_settings
from gateway.credentials import (
    BasicCredentials,
    Credentials,
    HeaderCredentials,
    NoCredentials,
    OutgoingRequest,
    build_credentials,
)
from gateway.errors import LoadError

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
    credentials = build_credentials(CredentialSettings("none"))
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
    credentials = build_credentials(
        CredentialSettings("basic", {"username": Secret("José"), "password": Secret(CANARY + ":x")})
    )
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
        CredentialSettings("header", {"headers": {"X-API-KEY": Secret(CANARY), "apiKey": Secret("k2")}})
    )
    assert isinstance(credentials, HeaderCredentials)
    sent, _ = await run_flow(credentials)
    assert sent[0].headers[1:] == [("X-API-KEY", CANARY), ("apiKey", "k2")]
    assert credentials.header_names == {"x-api-key", "apikey"}
    assert set(credentials.secret_values) == {CANARY, "k2"}


async def test_flow_runs_fresh_per_request() -> None:
    """Each request gets its own flow: headers are never accumulated across requests."""
    credentials = HeaderCredentials({"X-Key": "v"})
    first, second = OutgoingRequest("GET", []), OutgoingRequest("GET", [])
    for request in (first, second):
        flow = credentials.flow(request)
        await anext(flow)
        await flow.aclose()
    assert first.headers == second.headers == [("X-Key", "v")]


@pytest.mark.parametrize(
    "credentials",
    [
        BasicCredentials("user", CANARY),
        HeaderCredentials({"X-API-KEY": CANARY}),
        NoCredentials(),
    ],
)
def test_repr_never_shows_secrets(credentials: Credentials) -> None:
    """repr names the kind and injected headers, never a value."""
    text = repr(credentials) + str(credentials)
    assert CANARY not in text
    assert base64.b64encode(f"user:{CANARY}".encode()).decode() not in text


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (CredentialSettings("oauth-magic"), "unknown credentials type"),
        (CredentialSettings("basic", {"username": Secret("a:b"), "password": Secret("p")}), "no ':'"),
        (CredentialSettings("basic", {"password": Secret("p")}), "username is required"),
        (CredentialSettings("header", {"headers": {}}), "at least one header"),
        (CredentialSettings("header", {"headers": {"Bad Name": Secret("v")}}), "not a valid header name"),
        (CredentialSettings("header", {"headers": {"X-Key": Secret("a\r\nX-Evil: 1")}}), "control characters"),
        (CredentialSettings("header", {"headers": {"X-Key": Secret(" padded ")}}), "padded"),
        (CredentialSettings("header", {"headers": {"X-Api-Key": Secret("a"), "x_api_key": Secret("b")}}), "same"),
    ],
)
def test_invalid_settings_rejected(settings: CredentialSettings, message: str) -> None:
    """Bad credential settings fail at startup with a message that never contains the secret."""
    with pytest.raises(LoadError, match=message) as caught:
        build_credentials(settings)
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
