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
