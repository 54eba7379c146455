"""config.py: config.yaml is loaded into frozen settings, and every mistake names file, line and key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.config.settings import HeaderCredentialSettings, Secret, Settings, load_settings, parse_settings
from gateway.errors import LoadError

SECRET = "s" * 40
ENV = {"HS_SECRET": SECRET, "SMSGATE_USER": "canary-user", "SMSGATE_PASSWORD": "canary-password-123"}
ARGON = "$argon2id$v=19$m=1024,t=1,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"

GOOD = f"""\
listen: {{host: 0.0.0.0, port: 9000}}
store: memory://
policies: [policies/smsgate.yaml]
auth:
  leeway_s: 10
  issuers:
    - name: corp
      issuer: https://idp.example.com/
      audience: [sms-api, other]
      algorithms: [HS256]
      secret: ${{HS_SECRET}}
      scope_claim: scp
  basic_users:
    - {{username: ops, password_hash: "{ARGON}", scopes: [all:any]}}
tokens:
  keys:
    - {{algorithm: HS256, secret: "${{HS_SECRET}}", kid: k1}}
upstreams:
  smsgate:
    url: https://api.sms-gate.app/3rdparty/v1/
    credentials: {{type: basic, username: "${{SMSGATE_USER}}", password: "${{SMSGATE_PASSWORD}}"}}
"""


def test_good_config_loads_into_frozen_settings() -> None:
    """A complete config yields typed values, defaults, and resolved relative paths."""
    settings = parse_settings(GOOD, env=ENV, base=Path("/etc/smsguard"))
    assert settings.listen.host == "0.0.0.0"
    assert settings.listen.port == 9000
    assert settings.policies == ("/etc/smsguard/policies/smsgate.yaml",)
    assert settings.auth.leeway_s == 10
    assert settings.auth.max_token_lifetime_s == 86400
    corp = settings.auth.issuers[0]
    assert corp.audiences == ("sms-api", "other")
    assert corp.scope_claim == "scp"
    assert corp.keys[0].material.reveal() == SECRET
    assert settings.auth.basic_users[0].scopes == frozenset({"all:any"})
    assert settings.upstreams["smsgate"].url == "https://api.sms-gate.app/3rdparty/v1"
    assert settings.tokens.enabled is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.store = "redis://"  # type: ignore[misc]


def test_own_issuer_is_trusted_when_issuing_is_enabled() -> None:
    """The gateway verifies the tokens it mints: its own issuer comes first."""
    settings = parse_settings(GOOD, env=ENV)
    own = settings.all_issuers()[0]
    assert own.own
    assert own.issuer == "smsguard"
    assert own.algorithms == ("HS256",)
    assert parse_settings("tokens: {enabled: false}\n", env={}).all_issuers() == ()


def test_secrets_are_masked_in_repr() -> None:
    """Secrets never show in repr or str, so they cannot leak through logs or tracebacks."""
    settings = parse_settings(GOOD, env=ENV)
    text = repr(settings) + str(settings)
    for value in ENV.values():
        assert value not in text
    assert repr(Secret("hunter2")) == "Secret('**********')"
    assert set(ENV.values()) <= set(settings.secret_values())


def test_empty_config_gives_defaults() -> None:
    """Every section is optional; the defaults are safe (memory store, issuing off)."""
    settings = parse_settings("{}\n", env={})
    assert settings == dataclasses.replace(Settings(), file="config.yaml")


@pytest.mark.parametrize(
    ("text", "line", "key", "needle"),
    [
        ("listen: {host: a, prot: 1}\n", 1, "listen.prot", "unknown key"),
        ("lisen: {}\n", 1, "lisen", "unknown key"),
        ("listen:\n  port: eighty\n", 2, "listen.port", "expected an integer"),
        ("listen:\n  port: 70000\n", 2, "listen.port", "not a TCP port"),
        ("store: mysql://x\n", 1, "store", "unsupported store"),
        ("store: redis:/127.0.0.1:6379/0\n", 1, "store", "two slashes after the scheme"),
        ("store: redis://127.0.0.1:6379/x\n", 1, "store", "database number"),
        ("store: redis+sentinel://h1:26379\n", 1, "store", "name the monitored service"),
        (
            "auth:\n  issuers:\n    - {name: a, issuer: b, algorithms: [HS256]}\n",
            3,
            "auth.issuers[0].audience",
            "missing",
        ),
        (
            "auth:\n  issuers:\n    - {name: a, issuer: b, audience: c, algorithms: [HS256], secret: short}\n",
            3,
            "auth.issuers[0].secret",
            "shorter than 32 bytes",
        ),
        (
            "auth:\n  issuers:\n    - {name: a, issuer: b, audience: c, algorithms: [none], secret: x}\n",
            3,
            "auth.issuers[0].algorithms",
            "unsupported algorithm",
        ),
        (
            "auth:\n  issuers:\n    - {name: a, issuer: b, audience: c, algorithms: [HS256, RS256], jwks_url: 'http://x'}\n",
            3,
            "auth.issuers[0].algorithms",
            "do not mix",
        ),
        (
            "auth:\n  issuers:\n    - {name: a, issuer: b, audience: c, algorithms: [RS256]}\n",
            3,
            "auth.issuers[0]",
            "no keys",
        ),
        (
            "auth:\n  basic_users:\n    - {username: ops, password_hash: plain, scopes: [a:b]}\n",
            3,
            "auth.basic_users[0].password_hash",
            "argon2id",
        ),
        ("tokens: {enabled: true}\n", 1, "tokens", "signing key"),
        ("upstreams:\n  x: {url: 'ftp://h'}\n", 2, "upstreams.x.url", "absolute http"),
        ("upstreams:\n  x: {url: 'https://u:p@h'}\n", 2, "upstreams.x.url", "userinfo"),
        (
            "upstreams:\n  x:\n    url: 'https://h'\n    credentials: {type: magic}\n",
            4,
            "upstreams.x.credentials.type",
            "unknown",
        ),
        ("listen: {}\nlisten: {}\n", 2, "listen", "duplicate key"),
        ("proxy: {trusted_proxies: [not-an-ip]}\n", 1, "proxy.trusted_proxies[0]", "CIDR"),
    ],
)
def test_mistakes_name_line_and_key(text: str, line: int, key: str, needle: str) -> None:
    """Unknown keys, wrong types and missing keys fail with file:line and the dotted key."""
    with pytest.raises(LoadError) as err:
        parse_settings(text, file="cfg.yaml", env={})
    assert err.value.file == "cfg.yaml"
    assert err.value.line == line
    assert err.value.key == key
    assert needle in str(err.value)
    assert str(err.value).startswith(f"cfg.yaml:{line}:")


def test_unset_variable_fails_closed() -> None:
    """${VAR} never becomes an empty string: unset or empty is an error naming the variable and key."""
    text = 'upstreams:\n  x:\n    url: https://h\n    credentials: {type: basic, username: u, password: "${PW}"}\n'
    for env in ({}, {"PW": ""}):
        with pytest.raises(LoadError) as err:
            parse_settings(text, env=env)
        assert err.value.key == "upstreams.x.credentials.password"
        assert "PW is not set" in str(err.value)


def test_dollar_escapes_and_argon_hashes_are_left_alone() -> None:
    """`$$` is a literal dollar; argon2 hashes with bare `$` are not interpolated."""
    text = f'auth:\n  basic_users:\n    - {{username: u, password_hash: "{ARGON}", scopes: [a:b]}}\n'
    settings = parse_settings(text, env={})
    assert settings.auth.basic_users[0].password_hash.reveal() == ARGON
    text = "upstreams:\n  x: {url: https://h, credentials: {type: header, headers: {X-K: a$$b}}}\n"
    credentials = parse_settings(text, env={}).upstreams["x"].credentials
    assert isinstance(credentials, HeaderCredentialSettings)
    assert credentials.headers["X-K"].reveal() == "a$b"


def test_load_settings_reads_file_and_reports_missing_file(tmp_path: Path) -> None:
    """load_settings reads from disk; an unreadable file is a LoadError naming it."""
    path = tmp_path / "config.yaml"
    path.write_text(GOOD)
    assert load_settings(path, env=ENV).file == str(path)
    with pytest.raises(LoadError, match="cannot read file"):
        load_settings(tmp_path / "nope.yaml", env={})


def test_shipped_config_loads() -> None:
    """The repository's config.yaml is valid once its variables are set."""
    root = Path(__file__).resolve().parent.parent
    env = {
        "SMSGUARD_TOKEN_SECRET": SECRET,
        "SMSGATE_URL": "https://api.sms-gate.app/3rdparty/v1",
        "SMSGATE_USER": "u",
        "SMSGATE_PASSWORD": "p",
        "SMSGUARD_OPS_PASSWORD_HASH": ARGON,
    }
    settings = load_settings(root / "config.yaml", env=env)
    assert "smsgate" in settings.upstreams


# ---------------------------------------------------------------------------------- every error at once


def test_every_error_of_a_file_is_reported_at_once() -> None:
    """Five unset variables are five errors in one run, in file order, each with its own line and key."""
    text = (
        "store: ${STORE_URL}\n"
        "upstreams:\n"
        "  a:\n"
        "    url: ${A_URL}\n"
        "    credentials: {type: basic, username: '${A_USER}', password: '${A_PASSWORD}'}\n"
        "  b:\n"
        "    url: https://b.example\n"
        "    credentials: {type: header, headers: {X-Key: '${B_KEY}'}}\n"
    )
    with pytest.raises(LoadError) as caught:
        parse_settings(text, file="cfg.yaml", env={})
    errors = caught.value.errors
    assert [(e.line, e.key) for e in errors] == [
        (1, "store"),
        (4, "upstreams.a.url"),
        (5, "upstreams.a.credentials.username"),
        (5, "upstreams.a.credentials.password"),
        (8, "upstreams.b.credentials.headers.X-Key"),
    ]
    for error, name in zip(errors, ("STORE_URL", "A_URL", "A_USER", "A_PASSWORD", "B_KEY"), strict=True):
        assert f"environment variable {name} is not set" in str(error)
        assert error.hint == f"export {name}=... before starting"
    lines = str(caught.value).splitlines()
    assert len(lines) == 5
    hint = "(hint: export STORE_URL=... before starting)"
    assert lines[0] == f"cfg.yaml:1:8: store: environment variable STORE_URL is not set {hint}"
    assert (caught.value.line, caught.value.key) == (1, "store")  # the error itself is the first one


def test_positions_point_at_the_value_the_key_or_the_mapping() -> None:
    """A wrong value points at the value, an unknown key at the key, a missing key at its mapping."""
    text = "listen:\n  host: h\n  port: eighty\nauth:\n  leeway_s: 1\n  levway: 2\nupstreams:\n  x:\n    pool_size: 1\n"
    with pytest.raises(LoadError) as caught:
        parse_settings(text, file="cfg.yaml", env={})
    found = [(e.line, e.column, e.key, e.reason) for e in caught.value.errors]
    assert found == [
        (3, 9, "listen.port", "expected an integer, got str 'eighty'"),
        (6, 3, "auth.levway", "unknown key, did you mean leeway_s?"),
        (9, 5, "upstreams.x.url", "required key is missing"),
    ]


@pytest.mark.parametrize(
    ("text", "key", "suggestion"),
    [
        ("listen: {host: a, prot: 1}\n", "listen.prot", "port"),
        ("lisen: {}\n", "lisen", "listen"),
        ("auth: {basic_user: []}\n", "auth.basic_user", "basic_users"),
        ("upstreams:\n  x: {url: 'https://h', credentials: {type: basci, username: u, password: p}}\n",
         "upstreams.x.credentials.type", "basic"),
        ("upstreams:\n  x: {url: 'https://h', credentials: {type: bsg_v1, apikey: k}}\n",
         "upstreams.x.credentials.apikey", "api_key"),
    ],
)  # fmt: skip
def test_misspelled_keys_get_a_did_you_mean(text: str, key: str, suggestion: str) -> None:
    """An unknown key (or credentials type) close to a known one names it; the hint still lists them all."""
    with pytest.raises(LoadError) as caught:
        parse_settings(text, file="cfg.yaml", env={})
    error = next(e for e in caught.value.errors if e.key == key)
    assert f"did you mean {suggestion}?" in error.reason
    assert suggestion in error.hint


def test_secrets_never_appear_in_errors_or_reprs() -> None:
    """A secret read from the environment shows in no error text and no repr, whatever else is wrong."""
    canary = "canary-config-s3cret-77"
    env = {"PW": canary, "KEY": canary + "-key", "HS": canary * 2}
    text = (
        "auth:\n  issuers:\n    - {name: a, issuer: b, audience: c, algorithms: [RS256], secret: '${HS}'}\n"
        "upstreams:\n"
        "  x:\n    url: https://h\n    credentials: {type: basic, username: 'u:${PW}', password: '${PW}'}\n"
        "  y:\n    url: https://h\n    credentials: {type: header, headers: {X-K: ' ${KEY}'}}\n"
        "  z:\n    url: https://h\n    credentials: {type: token_exchange,"
        " login: {url: 'https://l', json: {k: '${KEY}', n: {deep: 1}}},"
        " token_field: t, expiry: {ttl_s: 1}, format: '${PW}'}\n"
    )
    with pytest.raises(LoadError) as caught:
        parse_settings(text, env=env)
    assert len(caught.value.errors) >= 4
    assert canary not in str(caught.value) + repr(caught.value)
    settings = parse_settings(
        "upstreams:\n  x: {url: https://h, credentials: {type: smsportal, client_id: id, api_secret: '${PW}'}}\n",
        env=env,
    )
    assert canary not in repr(settings) + str(settings)
    assert canary in settings.secret_values()
