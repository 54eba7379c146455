"""Property-based tests: the canonicalizer, the matcher + decision, the upstream URL, and the fuzz targets.

- canonicalizer: whatever it accepts means what the raw path meant (same bytes once decoded), is a
  fixed point, and is something the forwarder accepts as canonical;
- matcher: a canonical path made from a rule, in any spelling, is authorized exactly as that rule says
  (`required ⊆ held`, any/all, `all:any` unless exact, public) and nothing else;
- forwarding: whatever the router lets through is canonical, under its rule's mount, and becomes an
  upstream URL on the configured scheme, host and port, whatever the raw path and query were;
- fuzz targets (`fuzz_tokens.py`, `fuzz_config.py`) with a CI-sized budget: no token, Authorization
  header, config or policy fails with anything but the documented errors. `make fuzz` runs them long.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import unquote_to_bytes

import fuzz_config
import fuzz_tokens
import pytest
from gatewayconfig import SMSGATE_POLICY
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from yarl import URL

from gateway.auth.jwt import Principal
from gateway.errors import BadRequest, Forbidden, HTTPError, NotFound, Unauthorized
from gateway.guard.authorize import Authorizer
from gateway.policy.loader import load_policies
from gateway.policy.matcher import Matcher
from gateway.policy.model import Rule
from gateway.policy.paths import canonical_path, split_segments
from gateway.policy.scopes import SUPERUSER
from gateway.proxy.forward import upstream_url

CI = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

POLICIES = load_policies([SMSGATE_POLICY])
MATCHER = Matcher(POLICIES)
AUTHORIZER = Authorizer(MATCHER, authenticator=None)  # route() and decide() never authenticate
RULES = [rule for rule in MATCHER.rules() if not rule.full_path.endswith("/auth/token")]
VOCABULARY = sorted({scope for policy in POLICIES for scope in policy.scopes} | {SUPERUSER})
LITERALS = {segment for rule in MATCHER.rules() for segment in split_segments(rule.full_path)}
UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
PCHAR_EXTRA = "!$&'()*+,=:@"

RAW_PIECES = [*"/aZ09.-_~!$&'()*+,=:@;\\ ?#%", "%2e", "%2E", "%2f", "%5C", "%3b", "%00", "%7f", "%41", "%6d"]
RAW_PIECES += [
    "%c3%a9",
    "%C0%AE",
    "%ff",
    "%e2%82%ac",
    "%25",
    "%g",
    "..",
    "//",
    "\u00e9",
    "\x00",
    "messages",
    "3rdparty",
]
raw_pieces = st.sampled_from(RAW_PIECES)
raw_paths = st.lists(raw_pieces, max_size=12).map("".join)
hex_case = st.sampled_from([str.upper, str.lower])


def principal(scopes: frozenset[str]) -> Principal:
    return Principal("alice", scopes, "self", "jti", None, {}, "access")


def expected(rule: Rule, held: frozenset[str]) -> bool:
    """The rule's meaning, computed independently of `Rule.allows` and `scopes.satisfies`."""
    if rule.public:
        return True
    if SUPERUSER in held and not rule.exact:
        return True
    required = set(rule.scopes)
    return required <= held if rule.mode == "all" else bool(required & held)


@st.composite
def segment_values(draw: st.DrawFn) -> str:
    value = draw(st.text(alphabet=UNRESERVED + PCHAR_EXTRA, min_size=1, max_size=12))
    assume(value not in (".", "..") and value not in LITERALS)
    return value


@st.composite
def spelled(draw: st.DrawFn, canonical: str) -> str:
    """Another spelling of a canonical path: some unreserved characters percent-encoded, in either hex case."""
    out = []
    for char in canonical:
        if char in UNRESERVED and draw(st.integers(0, 5)) == 0:
            out.append(draw(hex_case)(f"%{ord(char):02x}"))
        else:
            out.append(char)
    return "".join(out)


@st.composite
def rule_requests(draw: st.DrawFn) -> tuple[Rule, str, str, str]:
    """(rule, method, canonical path, a raw spelling of it) for a random rule of the SMSGate policy."""
    rule = draw(st.sampled_from(RULES))
    segments = [draw(segment_values()) if s.startswith("{") else s for s in split_segments(rule.full_path)]
    canonical = "/" + "/".join(segments)
    return rule, draw(st.sampled_from(sorted(rule.methods))), canonical, draw(spelled(canonical))


class TestCanonicalizer:
    @CI
    @given(raw_paths)
    def test_accepted_paths_keep_their_meaning_and_are_forwardable(self, raw: str) -> None:
        """Accepted: same bytes once decoded, a fixed point, uppercase escapes, valid UTF-8, forwardable as is."""
        try:
            path = canonical_path(raw.encode("utf-8"))
        except BadRequest:
            return
        assert unquote_to_bytes(path) == unquote_to_bytes(raw)
        assert canonical_path(path) == path
        assert re.search(r"%[0-9A-F]?[a-f]", path) is None
        unquote_to_bytes(path).decode("utf-8")
        base = URL("https://api.example:8443/base")
        url = upstream_url(base, "", path, "") if path != "/" else None
        if url is not None:
            assert (url.scheme, url.host, url.port) == ("https", "api.example", 8443)
            assert url.raw_path == "/base" + path

    @CI
    @given(raw_paths)
    def test_refused_paths_are_refused_in_every_spelling_of_their_escapes(self, raw: str) -> None:
        """Changing the hex case of escapes never turns a refused path into an accepted one (and vice versa)."""

        def verdict(text: str) -> str | None:
            try:
                return canonical_path(text.encode("utf-8"))
            except BadRequest:
                return None

        parts = raw.split("%")
        swapped = "%".join([parts[0], *(part[:2].swapcase() + part[2:] for part in parts[1:])])
        assert verdict(raw) == verdict(swapped)


class TestMatcherDecides:
    @CI
    @given(rule_requests(), st.frozensets(st.sampled_from(VOCABULARY), max_size=4))
    def test_a_path_made_from_a_rule_is_authorized_exactly_as_the_rule_says(
        self, request: tuple[Rule, str, str, str], held: frozenset[str]
    ) -> None:
        """Any spelling of a rule's path routes to that rule and the canonical path; allowed iff the rule says so."""
        rule, method, canonical, raw = request
        path, match = AUTHORIZER.route(method, raw.encode())
        assert path == canonical
        assert match.rule is rule
        try:
            decision = AUTHORIZER.decide(path, match, principal(held))
        except Forbidden:
            assert not expected(rule, held)
        else:
            assert expected(rule, held)
            assert decision.path == canonical
            assert decision.rule is rule

    @CI
    @given(rule_requests())
    def test_nobody_gets_a_non_public_rule(self, request: tuple[Rule, str, str, str]) -> None:
        """Without a principal, only public rules pass; the rest are a 401."""
        rule, method, _, raw = request
        path, match = AUTHORIZER.route(method, raw.encode())
        if rule.public:
            assert AUTHORIZER.decide(path, match, None).rule is rule
        else:
            with pytest.raises(Unauthorized):
                AUTHORIZER.decide(path, match, None)

    @CI
    @given(rule_requests(), st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "get"]))
    def test_a_method_the_rule_does_not_list_never_gets_that_rule(
        self, request: tuple[Rule, str, str, str], method: str
    ) -> None:
        """HEAD is not GET, `get` is not GET: another method routes to another rule or to a 404."""
        rule, _, _, raw = request
        assume(method not in rule.methods)
        try:
            _, match = AUTHORIZER.route(method, raw.encode())
        except NotFound:
            return
        assert match.rule is not rule
        assert method in match.rule.methods


queries = st.lists(st.sampled_from([*"a=1&@:/?#%", "%40", "%2F", "evil.example", "http://x", " ", "\\"]), max_size=8)


class TestNothingNonCanonicalIsForwarded:
    @CI
    @given(
        st.one_of(raw_paths, raw_paths.map(lambda tail: "/3rdparty/v1/" + tail)),
        queries.map("".join),
        st.sampled_from(["http://127.0.0.1:8080/3rdparty/v1", "https://api.sms-gate.app/3rdparty/v1/", "http://h/"]),
    )
    @example("/3rdparty/v1/messages", "", "http://h/")  # a base at the root: no "//" in the upstream path
    def test_what_the_router_lets_through_goes_to_the_configured_host_only(
        self, raw: str, query: str, base_text: str
    ) -> None:
        """Routed paths are canonical and under their mount; the URL keeps the base's scheme, host and port."""
        try:
            path, match = AUTHORIZER.route("GET", raw.encode("utf-8"), query.encode())
        except HTTPError:
            return
        assert canonical_path(path) == path
        mount = match.rule.mount
        assert path == mount or path.startswith(mount + "/")
        base = URL(base_text.rstrip("/"))
        try:
            url = upstream_url(base, mount, path, query)
        except BadRequest:  # a query with spaces or '#': refused, never sent
            assert " " in query or "#" in query or "\\" in query
            return
        assert (url.scheme, url.host, url.port, url.user, url.password) == (
            base.scheme,
            base.host,
            base.port,
            None,
            None,
        )
        assert url.raw_path == (base.raw_path.rstrip("/") + path[len(mount) :] or "/")  # "http://h" has path "/"
        assert url.raw_query_string == query


# ---------------------------------------------------------------------------------------- fuzz targets


@pytest.fixture(scope="module")
def token_target() -> Iterator[fuzz_tokens.Target]:
    target = fuzz_tokens.Target()
    yield target
    target.close()


class TestFuzzTargetsInCI:
    def test_tokens(self, token_target: fuzz_tokens.Target) -> None:
        """Random, forged, validly signed hostile and mutated tokens: a Principal or a 401, nothing else."""
        check = given(fuzz_tokens.tokens())(token_target.check_token)
        for found in fuzz_tokens.FOUND:  # what fuzzing found once stays a fixed example
            check = example(found)(check)
        FUZZ(check)()

    def test_authorization_headers(self, token_target: fuzz_tokens.Target) -> None:
        """Random Authorization values (schemes, Basic, bytes): a Principal, None, a 401 or a 400, nothing else."""
        FUZZ(given(fuzz_tokens.authorization_values())(token_target.check_authorization))()

    def test_config_loading(self) -> None:
        """Random, hostile and mutated config.yaml: Settings or a LoadError, nothing else."""
        check = given(fuzz_config.config_texts())(fuzz_config.check_config)
        for found in fuzz_config.FOUND:
            check = example(found)(check)
        FUZZ(check)()

    def test_policy_loading(self) -> None:
        """Random, hostile and mutated policies: a compiled policy or a LoadError, nothing else."""
        check = given(fuzz_config.policy_texts())(fuzz_config.check_policy)
        for found in fuzz_config.FOUND:
            check = example(found)(check)
        FUZZ(check)()
