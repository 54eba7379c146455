"""Secret canaries: provider credentials, Basic passwords, signing keys and issued tokens never leak.

Every secret in the suite's configs is a canary (`harness.CANARIES`); every token the suite mints or
receives is remembered by `harness.WATCH`. The conftest checks the whole suite at the end; the tests
here provoke the paths most likely to leak (failures, refusals, bad configs, the access log of a real
`gateway serve`) and check right away.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from fakes import FaultServer, RecordingUpstream, Reply
from gatewayconfig import OPS_PASSWORD, TOKEN_SECRET, UPSTREAM_PASSWORD
from harness import (
    API_KEY,
    CANARIES,
    MOUNT,
    WATCH,
    SecurityConfig,
    basic,
    parse,
    recorded,
    running,
    serving,
    status,
)
from harness import request as http_request

from gateway.config.settings import parse_settings
from gateway.errors import LoadError

MESSAGES = MOUNT + "/messages"
QUERY_CREDENTIALS = '{type: query, params: {userId: "${T_UPSTREAM_USER}", password: "${T_API_KEY}"}}'


def assert_no_leak_since(mark: tuple[int, int]) -> None:
    leaks = WATCH.leaks(*mark)
    assert not leaks, "\n".join(leaks[:10])


async def test_refusals_and_failures_leak_nothing(tmp_path: Path) -> None:
    """Bad passwords, bad tokens, 4xx and upstream errors: no canary in answers, logs or exceptions."""
    mark = WATCH.mark()
    async with recorded(tmp_path, Reply(401, body=b'{"message":"bad credentials"}')) as (gw, upstream):
        token = await gw.token("messages:send")
        client = gw.client
        answers = [
            await client.get(MOUNT + "/devices", auth=("ops", "wrong-" + OPS_PASSWORD)),
            await client.get(MOUNT + "/devices", auth=("ops" + OPS_PASSWORD, OPS_PASSWORD)),
            await client.get(MOUNT + "/devices", headers={"authorization": f"Bearer {TOKEN_SECRET}"}),
            await client.get(MOUNT + "/devices", headers={"authorization": f"Bearer {token}x"}),
            await client.post(MESSAGES, content=b"{}", headers={"authorization": f"Bearer {token}"}),
            await client.get(MOUNT + "/devices", auth=("ops", OPS_PASSWORD)),
            await client.post(MOUNT + "/auth/token", json={"scopes": ["devices:list"]}, auth=("ops", OPS_PASSWORD)),
            await client.get("/readyz"),
        ]
        # the upstream's 401s refuse the gateway's own credentials: 502s, never the client's 401
        assert [a.status_code for a in answers] == [401, 401, 401, 401, 502, 502, 201, 200]
        assert len(upstream.requests) == 2  # the two authorized requests, both answered 401 by the upstream
    assert_no_leak_since(mark)


@pytest.mark.parametrize(
    "mode", ["reset_before_headers", "malformed_status_line", "hang_before_headers", "reset_mid_body"]
)
async def test_credentials_in_the_upstream_url_never_leak_on_failure(tmp_path: Path, mode: str) -> None:
    """Query credentials put secrets in the upstream URL: upstream failures still name neither URL nor secret."""
    mark = WATCH.mark()
    async with FaultServer(mode) as upstream:
        config = SecurityConfig(tmp_path, upstream.url + MOUNT, credentials=QUERY_CREDENTIALS, read_timeout_s=0.3)
        async with running(config) as gw:
            token = await gw.token("messages:send")
            raw = await gw.raw(
                http_request("POST", MESSAGES, f"Authorization: Bearer {token}", "Content-Length: 2", body=b"{}")
            )
            assert status(raw) in (200, 502, 504)
    assert API_KEY in upstream.heads[0].decode()  # the secret really was in the URL the gateway used
    assert_no_leak_since(mark)


async def test_the_watch_detects_a_planted_leak(tmp_path: Path) -> None:
    """Control for the watch itself: a secret in a response body is detected (so a clean run means something)."""
    mark = WATCH.mark()
    async with recorded(tmp_path, Reply(200, body=UPSTREAM_PASSWORD.encode())) as (gw, _):
        token = await gw.token("devices:list")
        await gw.client.get(MOUNT + "/devices", headers={"authorization": f"Bearer {token}"})
    leaks = WATCH.leaks(*mark)
    assert leaks
    assert "in a response" in leaks[0]
    WATCH.responses[mark[0] :] = []  # the planted leak is not the gateway's


def test_settings_reprs_mask_every_secret(tmp_path: Path) -> None:
    """repr() of the loaded settings, their upstreams and credentials shows no secret value."""
    settings = SecurityConfig(tmp_path, "http://127.0.0.1:9" + MOUNT, credentials=QUERY_CREDENTIALS).settings()
    text = repr(settings) + str(settings) + repr(settings.upstreams["smsgate"].credentials)
    for canary in CANARIES:
        assert canary not in text
    assert API_KEY in settings.secret_values()


BAD_CONFIGS = [
    pytest.param("auth:\n  basic_users:\n    - {username: ops, password_hash: '${S}', scopes: [all:any]}\n", id="hash"),
    pytest.param("tokens:\n  keys:\n    - {kid: k, algorithm: HS256, secret: '${S}'}\n", id="short-hmac"),
    pytest.param("tokens:\n  keys:\n    - {kid: k, algorithm: EdDSA, private_key: '${S}'}\n", id="not-a-pem"),
    pytest.param("upstreams:\n  a: {url: 'https://u:${S}@x.example'}\n", id="userinfo-url"),
    pytest.param("upstreams:\n  a: {url: 'https://x.example/?k=${S}'}\n", id="query-url"),
    pytest.param("upstreams:\n  a: {url: '${S}'}\n", id="url-is-secret"),
    pytest.param(
        "upstreams:\n  a: {url: 'https://x', credentials: {type: basic, username: u, password: '${S}', x: 1}}\n",
        id="unknown-key-next-to-secret",
    ),
    pytest.param(
        "upstreams:\n  a: {url: 'https://x', credentials: {type: header, headers: {'bad name': '${S}'}}}\n",
        id="bad-header-name",
    ),
    pytest.param(
        "auth:\n  issuers:\n    - {name: i, issuer: x, audience: a, algorithms: [HS256], secret: '${S}',\n"
        "       jwks_url: '${S}'}\n",
        id="issuer",
    ),
]


@pytest.mark.parametrize("text", BAD_CONFIGS)
def test_config_errors_name_the_key_never_the_secret(text: str) -> None:
    """A config error says file:line:column and key; the secret value next to it is never quoted."""
    secret = "canary-config-secret-5f3a"
    with pytest.raises(LoadError) as caught:
        parse_settings(text, env={"S": secret})
    assert secret not in str(caught.value)
    assert secret not in repr(caught.value.__dict__)


async def test_gateway_serve_logs_no_secret_and_no_token(tmp_path: Path) -> None:
    """The real `gateway serve` logs every request, and neither query tokens nor Basic passwords."""
    async with RecordingUpstream(Reply(200, body=b"{}")) as upstream:
        config = SecurityConfig(tmp_path, upstream.url + MOUNT)
        with serving(config) as served:
            token = served.token(config, "messages:list")
            queries = [f"access_token={token}", f"%61ccess_token={token}", f"limit=1&ACCESS_TOKEN={token}"]
            for query in queries:
                assert status(await served.raw(http_request("GET", f"{MESSAGES}?{query}"))) == 400
            login = basic("ops", OPS_PASSWORD)
            assert status(await served.raw(http_request("GET", MOUNT + "/devices", f"Authorization: {login}"))) == 200
            wrong = basic("ops", "not-" + OPS_PASSWORD)
            assert status(await served.raw(http_request("GET", MOUNT + "/devices", f"Authorization: {wrong}"))) == 401
            # the hardened protocol is what `serve` runs: absolute-form and oversized heads never reach the app
            absolute = await served.raw(http_request("GET", "http://evil.example" + MESSAGES))
            assert parse(absolute).status == 400
            huge = await served.raw(http_request("GET", MESSAGES, f"X-Big: {'b' * 70000}"))
            assert parse(huge).status == 431
            output = served.text()
    assert output.count(MESSAGES) >= len(queries)  # the refusals were logged (without their query)
    for secret in (token, token.rsplit(".", 1)[1], *CANARIES, base64.b64encode(OPS_PASSWORD.encode()).decode()):
        assert secret not in output
    assert len(upstream.requests) == 1
