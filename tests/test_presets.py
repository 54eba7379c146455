"""config.py credentials: the generic kinds, the provider presets they expand from, errors and the schema.

A preset is what a user writes (`type: bsg_v2, api_key: ...`); the loader expands it into a generic kind
with the provider's endpoints relative to the upstream's url. Errors name file:line:column and the key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.settings import PRESETS, CredentialSettings, HeaderCredentialSettings, Secret, parse_settings
from gateway.errors import LoadError
from gateway.proxy.credentials import HeaderCredentials, QueryCredentials, build_credentials
from gateway.proxy.exchange import TokenExchange

ROOT = Path(__file__).resolve().parent.parent
KEY = "live_canaryPresetKey91"
ENV = {"KEY": KEY, "SECRET": "canary-preset-secret"}


def credentials(block: str, url: str = "https://p.example/base") -> CredentialSettings:
    text = f"upstreams:\n  p:\n    url: {url}\n    credentials: {block}\n"
    return parse_settings(text, env=ENV).upstreams["p"].credentials


# ------------------------------------------------------------------------------------------- presets


def test_bsg_v1_is_an_x_api_key_header_with_the_error_2_rule() -> None:
    """bsg_v1 → header X-API-KEY, and BSG's 200 `error: 2` marked as a credential failure."""
    settings = credentials("{type: bsg_v1, api_key: '${KEY}'}")
    assert settings.kind == "header"
    assert isinstance(settings, HeaderCredentialSettings)
    assert settings.headers == {"X-API-KEY": Secret(KEY)}
    injector = build_credentials(settings)
    assert isinstance(injector, HeaderCredentials)
    assert injector.credential_error is not None
    assert (injector.credential_error.status, injector.credential_error.field) == (200, "error")
    assert injector.credential_error.matches(200, {"error": 2, "errorDescription": "Invalid API key"})
    assert not injector.credential_error.matches(200, {"error": 0})


def test_bsg_v2_logs_in_and_refreshes_under_the_upstream_url() -> None:
    """bsg_v2 → token_exchange: POST {url}/auth/login {"api_key"}, bearer field, exp from the JWT, refresh."""
    settings = credentials("{type: bsg_v2, api_key: '${KEY}'}", url="https://one-api.bsg.world/api/")
    assert settings.kind == "token_exchange"
    injector = build_credentials(settings, name="bsg_v2")
    assert isinstance(injector, TokenExchange)
    exchange = injector.settings
    assert (exchange.login.method, exchange.login.url) == ("POST", "https://one-api.bsg.world/api/auth/login")
    assert exchange.login.json == {"api_key": Secret(KEY)}
    assert exchange.token_field == "bearer"
    assert exchange.expiry.jwt_exp
    assert exchange.refresh is not None
    assert exchange.refresh.url == "https://one-api.bsg.world/api/auth/refresh"
    assert (exchange.header, exchange.format) == ("Authorization", "Bearer {token}")
    assert injector.credential_error is not None
    assert KEY in injector.secret_values


def test_bsg_v2_documented_format_and_overrides() -> None:
    """The header format, endpoints and timings of a preset can be overridden; nothing else."""
    settings = credentials(
        "{type: bsg_v2, api_key: '${KEY}', format: 'Bearer: {token}', margin_s: 5, timeout_s: 2,"
        " login_url: 'https://auth.example/login', refresh_url: 'https://auth.example/refresh'}"
    )
    injector = build_credentials(settings)
    assert isinstance(injector, TokenExchange)
    assert injector.settings.format == "Bearer: {token}"
    assert (injector.settings.margin_s, injector.settings.timeout_s) == (5, 2)
    assert injector.settings.login.url == "https://auth.example/login"


def test_smsportal_gets_a_token_with_basic_and_renews_an_hour_early() -> None:
    """smsportal → GET {url}/Authentication with Basic(client id, secret); expiresInMinutes; margin 1 h."""
    settings = credentials(
        "{type: smsportal, client_id: id-1, api_secret: '${SECRET}'}", "https://rest.smsportal.com/v1"
    )
    injector = build_credentials(settings)
    assert isinstance(injector, TokenExchange)
    exchange = injector.settings
    assert (exchange.login.method, exchange.login.url) == ("GET", "https://rest.smsportal.com/v1/Authentication")
    assert exchange.login.basic is not None
    assert (exchange.login.basic.username, exchange.login.basic.password) == (
        Secret("id-1"),
        Secret("canary-preset-secret"),
    )
    assert (exchange.token_field, exchange.expiry.field, exchange.expiry.unit) == (
        "token",
        "expiresInMinutes",
        "minutes",
    )
    assert exchange.margin_s == 3600
    assert exchange.refresh is None


@pytest.mark.parametrize(
    ("block", "kind", "injected"),
    [
        ("{type: smsgatewaycenter, api_key: '${KEY}'}", "header", ({"apikey"}, {"apikey", "userid", "password"})),
        (
            "{type: smsgatewaycenter, user_id: u1, password: '${SECRET}'}",
            "query",
            ({"apikey"}, {"apikey", "userid", "password"}),
        ),
    ],
)
def test_smsgatewaycenter_by_api_key_or_password(block: str, kind: str, injected: tuple[set[str], set[str]]) -> None:
    """smsgatewaycenter → the apiKey header, or the userId/password parameters; either way every client copy
    of all three is stripped (headers, and query/form parameters: "use either one to authenticate")."""
    settings = credentials(block)
    assert settings.kind == kind
    injector = build_credentials(settings)
    assert (injector.header_names, injector.query_names) == injected
    if kind == "query":
        assert isinstance(injector, QueryCredentials)


def test_smsgate_jwt_asks_for_scoped_tokens() -> None:
    """smsgate_jwt → POST {url}/auth/token with Basic and {ttl, scopes}; expires_at (ISO 8601)."""
    settings = credentials(
        "{type: smsgate_jwt, username: ops, password: '${SECRET}', scopes: [messages:send, messages:read], ttl_s: 900}",
        "https://api.sms-gate.app/3rdparty/v1",
    )
    injector = build_credentials(settings)
    assert isinstance(injector, TokenExchange)
    exchange = injector.settings
    assert exchange.login.url == "https://api.sms-gate.app/3rdparty/v1/auth/token"
    assert exchange.login.json == {"ttl": 900, "scopes": ["messages:send", "messages:read"]}
    assert (exchange.token_field, exchange.expiry.field, exchange.expiry.unit) == (
        "access_token",
        "expires_at",
        "iso8601",
    )
    defaults = build_credentials(credentials("{type: smsgate_jwt, username: ops, password: p}"))
    assert isinstance(defaults, TokenExchange)
    assert defaults.settings.policy_scopes  # the scopes come from the policy (tests/test_providers.py)
    assert defaults.scopes == ("all:any",)  # built without a policy: SMSGate's superuser scope


def test_generic_token_exchange_and_query_from_yaml() -> None:
    """The generic kinds read every key; JSON-body strings are secrets, numbers and lists are literal."""
    settings = credentials(
        """
      type: token_exchange
      login:
        url: https://auth.example/login
        method: POST
        basic: {username: app, password: "${SECRET}"}
        json: {api_key: "${KEY}", ttl: 60, scopes: [a:b]}
      token_field: data.token
      expiry: {field: data.expires_in, unit: seconds}
      header: X-Auth
      format: "Token {token}"
      refresh: {url: https://auth.example/refresh, method: PUT}
      margin_s: 30
      timeout_s: 3
      credential_error: {status: 200, field: code, equals: "AUTH"}"""
    )
    injector = build_credentials(settings)
    assert isinstance(injector, TokenExchange)
    exchange = injector.settings
    assert exchange.login.json == {"api_key": Secret(KEY), "ttl": 60, "scopes": ["a:b"]}
    assert exchange.refresh is not None
    assert exchange.refresh.method == "PUT"
    assert injector.credential_error is not None
    assert injector.credential_error.equals == "AUTH"
    query = build_credentials(credentials("{type: query, params: {userId: u, password: '${SECRET}'}}"))
    assert isinstance(query, QueryCredentials)
    assert query.secret_values == ("u", "canary-preset-secret")


# -------------------------------------------------------------------------------------------- errors

ERRORS = [
    ("{type: bsg_v1, api_key: k, apikey: typo}", "credentials.apikey", "unknown key"),
    ("{type: bsg_v2}", "credentials.api_key", "required key is missing"),
    ("{type: bsg_v2, api_key: k, format: Bearer}", "credentials.format", "{token} exactly once"),
    ("{type: bsg_v2, api_key: k, login_url: 'ftp://x'}", "credentials.login_url", "http(s) URL"),
    ("{type: smsgatewaycenter, api_key: k, user_id: u, password: p}", "credentials", "not both"),
    ("{type: smsgatewaycenter, user_id: u}", "credentials", "needs api_key, or user_id and password"),
    ("{type: smsportal, client_id: 'a:b', api_secret: s}", "credentials.client_id", "no ':'"),
    ("{type: smsgate_jwt, username: u, password: p, ttl_s: 5}", "credentials.ttl_s", "at least 60"),
    ("{type: oauth_magic}", "credentials.type", "unknown credentials type"),
    ("{type: none, credential_error: {field: error, equals: 2}}", "credentials.credential_error", "unknown key"),
    (
        "{type: header, headers: {X-K: v}, credential_error: {field: error}}",
        "credentials.credential_error",
        "exactly one of equals, pattern",
    ),
    (
        "{type: header, headers: {X-K: v}, credential_error: {field: e, equals: [1]}}",
        "credentials.credential_error.equals",
        "single value",
    ),
    ("{type: query, params: {}}", "credentials.params", "at least one parameter"),
    ("{type: query, params: {'bad name': v}}", "credentials.params.bad name", "not a valid parameter name"),
    (
        "{type: token_exchange, login: {url: 'https://a/b'}, token_field: t}",
        "credentials.expiry",
        "required key is missing",
    ),
    (
        "{type: token_exchange, login: {url: 'https://a/b'}, token_field: t, expiry: {ttl_s: 1, field: e}}",
        "credentials.expiry",
        "not both",
    ),
    (
        "{type: token_exchange, login: {url: 'https://a/b'}, token_field: t, expiry: {field: e, unit: hours}}",
        "credentials.expiry.unit",
        "unknown unit",
    ),
    (
        "{type: token_exchange, login: {url: 'https://a/b', method: DELETE}, token_field: t, expiry: {ttl_s: 1}}",
        "credentials.login.method",
        "unsupported method",
    ),
    (
        "{type: token_exchange, login: {url: 'https://u:p@a/b'}, token_field: t, expiry: {ttl_s: 1}}",
        "credentials.login.url",
        "without userinfo",
    ),
    (
        "{type: token_exchange, login: {url: 'https://a/b', json: {n: {deep: 1}}}, token_field: t, expiry: {ttl_s: 1}}",
        "credentials.login.json.n",
        "expected a string, number",
    ),
    (
        "{type: token_exchange, login: {url: 'https://a/b'}, token_field: 'a..b', expiry: {ttl_s: 1}}",
        "credentials.token_field",
        "dotted JSON path",
    ),
    (
        "{type: token_exchange, login: {url: 'https://a/b'}, token_field: t, expiry: {ttl_s: 1}, header: 'a b'}",
        "credentials.header",
        "not a valid header name",
    ),
    (
        "{type: token_exchange, login: {url: 'https://a/b'}, token_field: t, expiry: {ttl_s: 1}, refresh: {}}",
        "credentials.refresh.url",
        "required key is missing",
    ),
]


@pytest.mark.parametrize(("block", "key", "message"), ERRORS)
def test_credential_errors_name_file_line_and_key(block: str, key: str, message: str) -> None:
    """Each mistake is a LoadError at config.yaml:line:column naming the key, and never shows a secret."""
    text = f"upstreams:\n  p:\n    url: https://p.example/v1\n    credentials: {block}\n"
    with pytest.raises(LoadError) as caught:
        parse_settings(text, file="config.yaml", env=ENV)
    error = caught.value
    assert error.file == "config.yaml"
    assert error.line == 4
    assert error.key == f"upstreams.p.{key}"
    assert message in str(error)
    assert re.match(r"config\.yaml:4:\d+: ", str(error))


def test_unset_secret_fails_closed() -> None:
    """A preset's `${VAR}` that is not set is an error at start-up, never an empty key."""
    with pytest.raises(LoadError, match="BSG_KEY is not set"):
        credentials("{type: bsg_v1, api_key: '${BSG_KEY}'}")


def test_presets_are_listed_in_unknown_type_hint() -> None:
    """The hint for a mistyped type lists the generic kinds and every preset."""
    with pytest.raises(LoadError) as caught:
        credentials("{type: bsg}")
    for name in ("none", "basic", "header", "query", "token_exchange", *PRESETS):
        assert name in caught.value.hint


# -------------------------------------------------------------------------------------- schema drift


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((ROOT / "gateway" / "config.schema.json").read_text())
    return loaded


def resolve(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """A schema node with references followed and `X | None` unwrapped."""
    while True:
        if "$ref" in node:
            node = root["$defs"][node["$ref"].removeprefix("#/$defs/")]
        elif "anyOf" in node:
            (node,) = [branch for branch in node["anyOf"] if branch.get("type") != "null"]
        else:
            return node


def credential_types(root: dict[str, Any]) -> dict[str, str]:
    """The `type` of each credentials variant, and the schema definition it selects."""
    mapping: dict[str, str] = root["$defs"]["UpstreamSettings"]["properties"]["credentials"]["discriminator"]["mapping"]
    return mapping


def variant_keys(variant: str, block: str | None = None) -> set[str]:
    """The keys the schema allows in a credentials variant, or in one of its nested blocks."""
    root = schema()
    properties = resolve(root, {"$ref": credential_types(root)[variant]})["properties"]
    if block is None:
        return set(properties)
    return set(resolve(root, properties[block])["properties"])


FULL: dict[str, dict[str, Any]] = {
    "query": {"type": "query", "params": {"u": "v"}, "credential_error": {"status": 200, "field": "e", "equals": 1}},
    "token_exchange": {
        "type": "token_exchange",
        "login": {
            "url": "https://a/b",
            "method": "GET",
            "basic": {"username": "u", "password": "p"},
            "json": {"k": "v"},
        },
        "token_field": "t",
        "expiry": {"field": "e", "unit": "minutes"},
        "header": "Authorization",
        "format": "Bearer {token}",
        "refresh": {"url": "https://a/r", "method": "POST"},
        "margin_s": 1,
        "timeout_s": 1,
        "credential_error": {"status": 200, "field": "e", "equals": 1},
    },
    "bsg_v1": {"type": "bsg_v1", "api_key": "k"},
    "bsg_v2": {
        "type": "bsg_v2",
        "api_key": "k",
        "format": "Bearer {token}",
        "login_url": "https://a/l",
        "refresh_url": "https://a/r",
        "margin_s": 1,
        "timeout_s": 1,
    },
    "smsportal": {
        "type": "smsportal",
        "client_id": "i",
        "api_secret": "s",
        "login_url": "https://a/l",
        "margin_s": 1,
        "timeout_s": 1,
    },
    "smsgate_jwt": {
        "type": "smsgate_jwt",
        "username": "u",
        "password": "p",
        "scopes": ["a:b"],
        "ttl_s": 60,
        "login_url": "https://a/l",
        "margin_s": 1,
        "timeout_s": 1,
    },
}


def loader_keys(credentials_block: dict[str, Any], path: list[str]) -> set[str]:
    """The keys the loader knows at `path` inside a credentials block, read from its unknown-key hint."""
    document = json.loads(json.dumps(credentials_block))
    target = document
    for step in path:
        target = target[step]
    target["zz_unknown"] = 1
    text = yaml.safe_dump({"upstreams": {"p": {"url": "https://p.example/v1", "credentials": document}}})
    with pytest.raises(LoadError) as caught:
        parse_settings(text, env={})
    assert caught.value.reason == "unknown key"
    return set(caught.value.hint.split(": ", 1)[1].split(", ")) - {"zz_unknown"}


@pytest.mark.parametrize(
    ("variant", "path"),
    [
        *((variant, []) for variant in FULL),
        ("token_exchange", ["login"]),
        ("token_exchange", ["login", "basic"]),
        ("token_exchange", ["expiry"]),
        ("token_exchange", ["refresh"]),
        ("token_exchange", ["credential_error"]),
    ],
)
def test_schema_matches_loader_for_credentials(variant: str, path: list[str]) -> None:
    """The config schema allows exactly the credential keys config.py reads, per type and nested block."""
    if not path:
        expected = variant_keys(variant)
    elif path == ["login", "basic"]:
        expected = set(schema()["$defs"]["BasicPair"]["properties"])
    else:
        expected = variant_keys(variant, path[0])
    assert loader_keys(FULL[variant], path) == expected


def test_smsgatewaycenter_schema_lists_both_modes() -> None:
    """smsgatewaycenter takes api_key, or user_id and password (its loader reads all three)."""
    assert variant_keys("smsgatewaycenter") == {"type", "api_key", "user_id", "password", "format"}
    assert set(credential_types(schema())) == {"none", "basic", "header", "query", "token_exchange", *PRESETS}


def test_example_config_sections_validate() -> None:
    """The commented provider sections of config.yaml load when uncommented (with their policies)."""
    lines = (ROOT / "config.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "# --- provider examples" in line)
    block_lines = []
    for line in lines[start + 1 :]:
        if not line.lstrip().startswith("#"):
            break
        if line.startswith("  #   "):
            block_lines.append("  " + line.removeprefix("  #   "))
    block = "\n".join(block_lines)
    env = {name: "live_x" for name in re.findall(r"\$\{(\w+)\}", block)}
    settings = parse_settings("upstreams:\n" + block + "\n", env=env, base=ROOT)
    assert set(settings.upstreams) == {"bsg_v1", "bsg_v2", "smsportal", "smsgatewaycenter"}
    for name, upstream in settings.upstreams.items():
        assert build_credentials(upstream.credentials, name=name).kind in {"header", "token_exchange", "query"}


def test_shipped_schema_is_generated_from_the_settings() -> None:
    """gateway/config.schema.json is exactly what the settings classes generate (`make schema`)."""
    from gateway.config.schema import render_config_schema

    assert (ROOT / "gateway" / "config.schema.json").read_text(encoding="utf-8") == render_config_schema()


@pytest.mark.parametrize(
    "credentials_block",
    [
        {"type": "basci", "username": "u", "password": "p"},
        {"type": "basic", "username": "u"},
        {"type": "bsg_v1", "api_key": "k", "apikey": "k"},
        {"type": "smsgate_jwt", "username": "u", "password": "p", "ttl_s": "long"},
    ],
)
def test_schema_and_loader_refuse_the_same_credentials(credentials_block: dict[str, Any]) -> None:
    """A credentials block the loader refuses fails the schema too (`type: basci` used to pass it)."""
    import jsonschema

    document = {"upstreams": {"p": {"url": "https://p.example/v1", "credentials": credentials_block}}}
    assert list(jsonschema.Draft202012Validator(schema()).iter_errors(document))
    with pytest.raises(LoadError):
        parse_settings(yaml.safe_dump(document), env={})
    fixed = {**credentials_block, "type": "basic", "username": "u", "password": "p"}
    fixed = {key: fixed[key] for key in ("type", "username", "password")}
    document["upstreams"]["p"]["credentials"] = fixed
    assert list(jsonschema.Draft202012Validator(schema()).iter_errors(document)) == []
    parse_settings(yaml.safe_dump(document), env={})
