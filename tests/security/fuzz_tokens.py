"""Fuzz target: token parsing. No token and no Authorization header may fail with anything but 401/400.

    python tests/security/fuzz_tokens.py [--examples N] [--seed S]     (`make fuzz` runs a large budget)

The verifier trusts the issuers of `test_verify.issuers()` at the tables' clock; inputs are random
text, three-segment junk, forged tokens with hostile headers and claims, the same claims *validly
signed* by every trusted key (so claim checking sees arbitrary JSON: huge numbers, NaN, nested
duplicates, wrong types), and byte mutations of valid tokens. Authorization values add schemes, Basic
credentials (non-UTF-8 included) and raw bytes. Allowed outcomes: a Principal, `Unauthorized`, or
(for the header) `BadRequest`. The suite runs the same properties with a small budget
(`test_properties.py`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for entry in (str(HERE.parent), str(HERE)):  # `keys`, `test_verify` when run as a script
    if entry not in sys.path:
        sys.path.insert(0, entry)

import jwt  # noqa: E402
import test_verify as table  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from keys import b64, ec_key, ed_key, forge, rsa_key  # noqa: E402

from gateway.auth.authenticate import Authenticator  # noqa: E402
from gateway.auth.basic import BasicAuthenticator  # noqa: E402
from gateway.auth.jwt import TokenVerifier  # noqa: E402
from gateway.config.settings import BasicUser, Secret  # noqa: E402
from gateway.errors import BadRequest, Unauthorized  # noqa: E402

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
NOW = int(table.NOW)
ISSUERS = [table.HS, table.RS, table.ES, table.ED, table.OWN, "https://evil.example", ""]
# (alg, key, kid, iss): every key the verifier trusts, so random claims can carry a valid signature.
SIGNERS: list[tuple[str, Any, str | None, str]] = [
    ("HS256", table.HS_SECRET, None, table.HS),
    ("RS256", rsa_key(), "rsa-1", table.RS),
    ("ES256", ec_key(), "ec-1", table.ES),
    ("EdDSA", ed_key(), None, table.ED),
    ("EdDSA", ed_key(1), "self-1", table.OWN),
]
# Inputs fuzzing found to crash token parsing before it was fixed (kept as fixed examples in the suite):
# a validly signed token whose NumericDate is an integer too large for a float (OverflowError, a 500).
FOUND = [
    forge({"alg": "HS256"}, table.claims(exp=10**400), hmac_key=table.HS_SECRET.encode()),
    forge({"alg": "HS256"}, table.claims(iat=-(10**400)), hmac_key=table.HS_SECRET.encode()),
]

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([NOW, NOW - 100, NOW + 100, NOW + 10**9, 10**400, -(10**400), 2**63, 0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["messages:send", "all:any", "at+jwt", "refresh+jwt", "none", "HS256", table.AUD]),
)
json_values = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
date_values = st.one_of(
    st.sampled_from([NOW + 60, NOW - 60, 10**400, -(10**400), 2**1024, 1e308, -1e308, 2**53 + 1, "1", True, None]),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    json_values,
)
header_dicts = st.fixed_dictionaries(
    {"alg": st.one_of(st.sampled_from(["HS256", "RS256", "ES256", "EdDSA", "none", "NONE", "HS512", ""]), json_leaf)},
    optional={
        name: json_values
        for name in ("kid", "typ", "crit", "jku", "jwk", "x5u", "x5c", "b64", "cty", "zip", "enc", "x5t")
    },
)
claim_dicts = st.fixed_dictionaries(
    {},
    optional={
        "iss": st.one_of(st.sampled_from(ISSUERS), json_values),
        "aud": st.one_of(st.just(table.AUD), st.lists(st.sampled_from([table.AUD, "x"])), json_values),
        "sub": st.one_of(st.just("alice"), json_values),
        "exp": json_values,
        "iat": json_values,
        "nbf": json_values,
        "jti": json_values,
        "scope": json_values,
        "scp": json_values,
        "scopes": json_values,
        "fam": json_values,
    },
)


@st.composite
def nearly_valid_claims(draw: st.DrawFn) -> dict[str, Any]:
    """The tables' valid claims with one to three of them replaced by hostile values (reaches the deep checks)."""
    claims: dict[str, Any] = table.claims()
    for name in draw(st.lists(st.sampled_from(sorted({*claims, "nbf", "scp", "fam"})), min_size=1, max_size=3)):
        claims[name] = draw(date_values if name in ("exp", "iat", "nbf") else json_values)
    return claims


claims_or_junk = st.one_of(claim_dicts, nearly_valid_claims())


def _json(value: object) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _raw_json(draw: st.DrawFn, value: dict[str, Any]) -> bytes:
    """The JSON, or a hostile spelling of it: a duplicated member, trailing junk, deep nesting, not UTF-8."""
    text = _json(value)
    twist = draw(st.sampled_from(["plain"] * 6 + ["duplicate", "junk", "deep", "latin1", "bom"]))
    if twist == "duplicate" and len(text) > 2:
        return text[:-1] + (b', "sub": "admin"}' if text != b"{}" else b'"sub": "admin"}')
    if twist == "junk":
        return text + b"x"
    if twist == "deep":
        return b'{"a":' * 3000 + b"1" + b"}" * 3000
    if twist == "latin1":
        return text.replace(b"}", b', "x": "\xe9"}', 1)
    if twist == "bom":
        return b"\xef\xbb\xbf" + text
    return text


_ALGORITHMS = jwt.algorithms.get_default_algorithms()


def _sign(header: bytes, payload: bytes, alg: str, key: Any) -> str:
    """A JWS over exactly these header and payload bytes (PyJWT's encode would validate the header first)."""
    algorithm = _ALGORITHMS[alg]
    signing_input = f"{b64(header)}.{b64(payload)}"
    return f"{signing_input}.{b64(algorithm.sign(signing_input.encode(), algorithm.prepare_key(key)))}"


@st.composite
def signed(draw: st.DrawFn) -> str:
    """Random claims and header members, validly signed by one of the trusted keys."""
    alg, key, kid, iss = draw(st.sampled_from(SIGNERS))
    claims = draw(claims_or_junk)
    if draw(st.booleans()):
        claims["iss"] = iss
    header = {**draw(header_dicts), "alg": alg} if draw(st.booleans()) else {"alg": alg, "typ": "at+jwt"}
    if kid is not None and draw(st.booleans()):
        header["kid"] = kid
    return _sign(_raw_json(draw, header), _raw_json(draw, claims), alg, key)


@st.composite
def forged(draw: st.DrawFn) -> str:
    """Random header and claims, with no, a random, or an attacker's HMAC signature."""
    header = _raw_json(draw, draw(header_dicts))
    payload = _raw_json(draw, draw(claims_or_junk))
    mode = draw(st.sampled_from(["none", "random", "hmac-secret", "hmac-public"]))
    if mode == "none":
        return forge(header, payload)
    if mode == "random":
        return forge(header, payload, signature=draw(st.text(alphabet=B64URL, max_size=90)))
    secret = table.HS_SECRET.encode() if mode == "hmac-secret" else table.public_pem(rsa_key()).encode()
    return forge(header, payload, hmac_key=secret)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid token with characters flipped, cut, inserted or segments shuffled."""
    token = draw(st.sampled_from([table.hs(), table.rs(), table.own(), table.own(typ="refresh+jwt")]))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "segments"]))
        index = draw(st.integers(0, max(len(token) - 1, 0)))
        if action == "flip" and token:
            token = token[:index] + draw(st.sampled_from(B64URL + ".=+/ \t\u00e9\x00")) + token[index + 1 :]
        elif action == "cut":
            token = token[:index]
        elif action == "insert":
            token = token[:index] + draw(st.text(max_size=3)) + token[index:]
        else:
            parts = token.split(".")
            token = ".".join(draw(st.permutations(parts)) + draw(st.lists(st.sampled_from(parts), max_size=2)))
    return token


def tokens() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=120),
        st.lists(st.text(alphabet=B64URL, max_size=60), min_size=1, max_size=5).map(".".join),
        forged(),
        signed(),
        mutated(),
    )


@st.composite
def basic_credentials(draw: st.DrawFn) -> bytes:
    raw = draw(st.one_of(st.binary(max_size=40), st.text(max_size=30).map(str.encode)))
    if draw(st.booleans()):
        raw = draw(st.sampled_from([b"ops:", b"ops", b":", b"nobody:"])) + raw
    encoded = base64.b64encode(raw)
    return encoded if draw(st.booleans()) else encoded.rstrip(b"=") + draw(st.binary(max_size=3))


def authorization_values() -> st.SearchStrategy[bytes]:
    schemes = st.sampled_from([b"Bearer ", b"bearer ", b"BEARER  ", b"Bearer\t", b"Basic ", b"basic ", b"Token ", b""])
    return st.one_of(
        st.binary(max_size=200),
        st.tuples(schemes, tokens().map(lambda t: t.encode("utf-8", "surrogatepass"))).map(b"".join),
        st.tuples(schemes, basic_credentials()).map(b"".join),
    )


class Target:
    """The verifier and authenticator under test, on a private event loop (close it when done)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.verifier = TokenVerifier(table.issuers(), leeway_s=30, max_token_lifetime_s=3600, clock=lambda: table.NOW)
        hashed = BasicUser("ops", Secret(_cheap_hash("canary-fuzz-password")), frozenset({"all:any"}))
        self.authenticator = Authenticator(self.verifier, BasicAuthenticator([hashed]), clock=lambda: table.NOW)

    def run(self, coroutine: Coroutine[Any, Any, object]) -> object:
        return self.loop.run_until_complete(coroutine)

    def check_token(self, token: str) -> None:
        """The property: a Principal or Unauthorized, never another exception."""
        with contextlib.suppress(Unauthorized):
            self.run(self.verifier.verify(token))
        with contextlib.suppress(Unauthorized):
            self.run(self.verifier.verify(token, refresh=True))

    def check_authorization(self, value: bytes) -> None:
        """The property: a Principal, None, Unauthorized or BadRequest, never another exception."""
        with contextlib.suppress(Unauthorized, BadRequest):
            self.run(self.authenticator.authenticate([(b"authorization", value)]))

    def close(self) -> None:
        self.run(self.verifier.aclose())
        self.loop.close()


def _cheap_hash(password: str) -> str:
    from argon2 import PasswordHasher

    return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(password)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000, help="examples per target")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    budget = settings(max_examples=args.examples, deadline=None, suppress_health_check=list(HealthCheck))
    target = Target()
    try:
        for name, strategy, check in (
            ("tokens", tokens(), target.check_token),
            ("Authorization headers", authorization_values(), target.check_authorization),
        ):
            test = budget(given(strategy)(check))
            if args.seed is not None:
                from hypothesis import seed

                test = seed(args.seed)(test)
            print(f"fuzzing {name} with {args.examples} examples ...", flush=True)
            test()
    finally:
        target.close()
    print("no crash", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
