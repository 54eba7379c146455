"""Fuzz target: config and policy loading. No input may fail with anything but `LoadError`.

    python tests/security/fuzz_config.py [--examples N] [--seed S]     (`make fuzz` runs a large budget)

Inputs are random text, YAML documents built from the real keys with hostile values (tags, anchors and
aliases, merge keys, huge numbers, NaN, dates, `${...}` spellings, deep nesting), and mutations of the
shipped config.yaml and policies. Whatever parses must also give `uvicorn_options`, the verifier and
the matcher what they need without crashing. The suite runs the same properties with a small budget
(`test_properties.py`).
"""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
for entry in (str(HERE.parent), str(HERE)):  # `fakes`, `keys`, ... when run as a script
    if entry not in sys.path:
        sys.path.insert(0, entry)

import yaml  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gateway.cli import uvicorn_options  # noqa: E402
from gateway.config.settings import parse_settings  # noqa: E402
from gateway.errors import LoadError  # noqa: E402
from gateway.guard.authorize import Authorizer  # noqa: E402
from gateway.policy.loader import parse_policy  # noqa: E402
from gateway.policy.matcher import Matcher  # noqa: E402
from gateway.proxy.forward import ProxyApp  # noqa: E402

ENV = {
    "SECRET": "s" * 40,
    "EMPTY": "",
    "URL": "https://x.example/v1",
    "PEM": "-----BEGIN PUBLIC KEY-----\nAA==\n",
    # what the shipped config.yaml reads, so its mutations get past `${VAR}` and into validation
    "SMSGUARD_OPS_PASSWORD_HASH": "$argon2id$v=19$m=1024,t=1,p=1$c29tZXNhbHQ$TyF7lhVZwaTbm0GOXOfTkA",
    "SMSGUARD_TOKEN_SECRET": "t" * 40,
    "SMSGATE_URL": "https://api.sms-gate.app/3rdparty/v1",
    "SMSGATE_USER": "user",
    "SMSGATE_PASSWORD": "password",
    **{name: "x" * 12 for name in ("BSG_API_KEY", "SGC_API_KEY", "SMSPORTAL_API_SECRET", "SMSPORTAL_CLIENT_ID")},
}
CONFIG_TEXT = (ROOT / "config.yaml").read_text()
POLICY_TEXTS = [path.read_text() for path in sorted((ROOT / "policies").glob("*.yaml"))]

CONFIG_KEYS = [
    "listen", "host", "port", "store", "policies", "auth", "leeway_s", "max_token_lifetime_s", "max_header_bytes",
    "issuers", "name", "issuer", "audience", "algorithms", "secret", "public_key", "jwks_url", "kid", "scope_claim",
    "basic_users", "username", "password_hash", "scopes", "tokens", "enabled", "keys", "algorithm", "private_key",
    "default_ttl_s", "max_ttl_s", "refresh_ttl_s", "mount", "upstreams", "url", "credentials", "type", "password",
    "headers", "params", "read_timeout_s", "connect_timeout_s", "pool_size", "pool_timeout_s", "proxy",
    "max_body_bytes", "trusted_proxies", "retry_buffer_bytes", "reload", "watch", "debounce_ms", "admin", "log",
    "level", "metrics", "path", "login", "token_field", "expiry", "format", "credential_error", "field", "equals",
]  # fmt: skip
POLICY_KEYS = [
    "upstream", "mount", "scopes", "rules", "method", "methods", "path", "public", "scope", "any_of", "all_of",
    "exact", "description",
]  # fmt: skip
NASTY_SCALARS = [
    "${SECRET}", "${MISSING}", "${EMPTY}", "${", "${}", "$$", "$${SECRET}", "${URL}", "${PEM}", "~", "null", ".nan",
    ".inf", "-.inf", "1e400", "0x10", "0o17", "1_000", "2001-12-14", "2001-13-45", "2001-12-14t21:59:43.10-05:00",
    "!!binary aGVsbG8=", "!!python/object:os.system {}", "!!set {a, b}", "!!omap [a: 1]", "!!float 1", "!!int x",
    "!!str 1", "!!timestamp x", "<<", "=", "9" * 5000, "9" * 400, "-" + "9" * 40, "true", "NO", "on", "GET", "get", "/",
    "/a/{x}", "/a/{x}/{x}", "/..", "/a//b", "messages:send", "all:any", "HS256", "none", "EdDSA", "basic", "header",
    "query", "token_exchange", "bsg_v2", "http://127.0.0.1:1/x", "https://u:p@x/", "\x00", "\u202e", "'", '"',
]  # fmt: skip

# Inputs fuzzing found to crash the loaders before they were fixed (kept as fixed examples in the suite).
FOUND = [
    "<<: {x: 1}\nlisten: {port: 1}\n",  # merge key: PyYAML's ConstructorError
    "auth: {leeway_s: " + "9" * 5000 + "}\n",  # int beyond Python's 4300-digit conversion limit: ValueError
    "auth: {leeway_s: 2001-13-45}\n",  # implicit timestamp with month 13: ValueError
    "!!timestamp",  # explicit tag on an empty scalar: AttributeError inside PyYAML
    "a: !!bool x\n",  # KeyError inside PyYAML
    "upstreams: {a: {url: 'https://x', read_timeout_s: .nan}}\n",  # NaN timeout: int(nan) in uvicorn_options
    "upstreams: {a: {url: 'https://x', connect_timeout_s: .inf}}\n",  # infinite timeout: OverflowError
    "upstreams: {a: {url: 'https://x', read_timeout_s: 1" + "0" * 400 + "}}\n",  # int too large for a float
    "auth: {leeway_s: 1" + "0" * 400 + "}\n",  # OverflowError in the verifier at start-up
    "upstreams: 1\n",  # the typed loader's name injection assumed a mapping: AttributeError
    "?: &0 [*0]\n",  # a recursive alias: RecursionError while turning nodes into data
]


def scalars() -> st.SearchStrategy[object]:
    return st.one_of(
        st.sampled_from(NASTY_SCALARS),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.none(),
        st.text(max_size=12),
    )


def documents(keys: list[str]) -> st.SearchStrategy[object]:
    """Nested mappings and lists over the real key names, with hostile leaves."""
    return st.recursive(
        scalars(),
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.one_of(st.sampled_from(keys), st.text(max_size=6)), children, max_size=5),
        ),
        max_leaves=25,
    )


def _dump(value: object) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True)
    return text.replace("'!!", "!!").replace("'${", "${")  # let tags and variables through unquoted


@st.composite
def mutated(draw: st.DrawFn, texts: list[str]) -> str:
    """A shipped file with lines dropped, duplicated, swapped or edited, anchors and aliases spliced in."""
    lines = draw(st.sampled_from(texts)).splitlines()
    for _ in range(draw(st.integers(1, 6))):
        if not lines:
            break
        index = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["drop", "dup", "edit", "swap", "anchor", "alias", "merge", "indent", "number"]))
        line = lines[index]
        if action == "drop":
            del lines[index]
        elif action == "dup":
            lines.insert(index, line)
        elif action == "edit":
            cut = draw(st.integers(0, len(line)))
            lines[index] = line[:cut] + draw(st.sampled_from(NASTY_SCALARS)) + line[cut:]
        elif action == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[index], lines[other] = lines[other], line
        elif action == "anchor" and ":" in line:
            name, _, value = line.partition(":")
            lines[index] = f"{name}: &a {value.strip() or '{}'}"
        elif action == "alias" and ":" in line:
            lines[index] = line.partition(":")[0] + ": *a"
        elif action == "merge":
            lines.insert(index, " " * (len(line) - len(line.lstrip())) + "<<: {x: 1}")
        elif action == "indent":
            lines[index] = " " + line
        elif action == "number":  # a number where one belongs, but absurd: huge, negative, NaN, fractional
            replacement = draw(st.sampled_from(["1" + "0" * 400, "-1", "0", ".nan", "-.inf", "0.5", "1e9"]))
            lines[index] = re.sub(r"\b\d+\b", replacement, line, count=1)
    return "\n".join(lines) + "\n"


def config_texts() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=200),
        documents(CONFIG_KEYS).map(_dump),
        mutated([CONFIG_TEXT]),
        st.sampled_from(["a: &x [*x]\n", "auth: &x {issuers: [*x]}\n", "x: " + "[" * 3000 + "]" * 3000 + "\n"]),
    )


def policy_texts() -> st.SearchStrategy[str]:
    return st.one_of(st.text(max_size=200), documents(POLICY_KEYS).map(_dump), mutated(POLICY_TEXTS))


_NO_HTTP: Any = object()  # stands in for the JWKS client: nothing is fetched while loading


def check_config(text: str) -> None:
    """The property: Settings the server, the authorizer and the proxy can be built from, or a LoadError."""
    with contextlib.suppress(LoadError):
        loaded = parse_settings(text, file="fuzz.yaml", env=ENV, base=ROOT)
        uvicorn_options(loaded)
        Authorizer.from_settings(loaded, policies=(), http=_NO_HTTP)
        ProxyApp(loaded.upstreams, loaded.proxy)


def check_policy(text: str) -> None:
    """The property: a compiled policy or a LoadError, nothing else."""
    with contextlib.suppress(LoadError):
        Matcher([parse_policy(text, "fuzz.yaml")])


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=50_000, help="examples per target")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    budget = settings(
        max_examples=args.examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False
    )
    for name, strategy, check in (("config", config_texts(), check_config), ("policy", policy_texts(), check_policy)):
        test = budget(given(strategy)(check))
        if args.seed is not None:
            from hypothesis import seed

            test = seed(args.seed)(test)
        print(f"fuzzing {name} loading with {args.examples} examples ...", flush=True)
        test()
    print("no crash", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
