"""The compiled matcher: most specific rule wins, ambiguity fails the load, cost independent of size."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.errors import LoadError
from gateway.policy.loader import load_policy, parse_policy
from gateway.policy.matcher import Match, Matcher
from gateway.policy.model import Policy

SHIPPED = Path(__file__).resolve().parent.parent / "policies" / "smsgate.yaml"
VOCABULARY = "scopes: {r:read: Read, r:write: Write}\n"


def policy(*rules: str, mount: str = "", file: str = "p.yaml") -> Policy:
    """A policy from rule lines; rule i sits on line i + 4 (after mount, scopes and `rules:`)."""
    lines = [f"mount: '{mount}'", VOCABULARY.rstrip("\n"), "rules:", *[f"  - {rule}" for rule in rules]]
    return parse_policy("\n".join(lines) + "\n", file)


def matcher(*rules: str) -> Matcher:
    return Matcher([policy(*rules)])


def matched_path(found: Match | None) -> str | None:
    return None if found is None else found.rule.path


@pytest.fixture(scope="module")
def smsgate() -> Matcher:
    return Matcher([load_policy(SHIPPED)])


SMSGATE_ROUTES = [
    ("GET", "/health", (), True, False, {}),
    ("GET", "/messages", ("messages:list",), False, False, {}),
    ("POST", "/messages", ("messages:send",), False, False, {}),
    ("GET", "/messages/abc123", ("messages:read",), False, False, {"id": "abc123"}),
    ("DELETE", "/messages/abc123", ("messages:cancel",), False, False, {"id": "abc123"}),
    ("POST", "/messages/inbox/export", ("messages:export",), False, False, {}),
    ("GET", "/inbox", ("inbox:list",), False, False, {}),
    ("POST", "/inbox/refresh", ("inbox:refresh",), False, False, {}),
    ("GET", "/devices", ("devices:list",), False, False, {}),
    ("DELETE", "/devices/dev-1", ("devices:delete",), False, False, {"id": "dev-1"}),
    ("GET", "/settings", ("settings:read",), False, False, {}),
    ("PUT", "/settings", ("settings:write",), False, False, {}),
    ("PATCH", "/settings", ("settings:write",), False, False, {}),
    ("GET", "/webhooks", ("webhooks:list",), False, False, {}),
    ("POST", "/webhooks", ("webhooks:write",), False, False, {}),
    ("DELETE", "/webhooks/wh-1", ("webhooks:delete",), False, False, {"id": "wh-1"}),
    ("GET", "/logs", ("logs:read",), False, False, {}),
    ("POST", "/auth/token", ("tokens:manage",), False, False, {}),
    ("DELETE", "/auth/token/j-1", ("tokens:manage",), False, False, {"jti": "j-1"}),
    ("POST", "/auth/token/refresh", ("tokens:refresh",), False, True, {}),
]

SMSGATE_MISSES = [
    ("HEAD", "/health"),
    ("get", "/messages"),
    ("GET", "/messages/"),
    ("GET", "/health/"),
    ("GET", "/Messages"),
    ("PUT", "/messages"),
    ("DELETE", "/messages"),
    ("GET", "/messages/inbox/export"),
    ("POST", "/messages/abc/export"),
    ("GET", "/devices/dev-1"),
    ("POST", "/settings"),
    ("GET", "/auth/token"),
    ("GET", "/3rdparty/v1"),
    ("GET", "/"),
]


class TestSmsgatePolicy:
    @pytest.mark.parametrize(("method", "path", "scopes", "public", "exact", "params"), SMSGATE_ROUTES)
    def test_routes(
        self,
        smsgate: Matcher,
        method: str,
        path: str,
        scopes: tuple[str, ...],
        public: bool,
        exact: bool,
        params: dict[str, str],
    ) -> None:
        """Every SMSGate route maps to the scope DESIGN.md lists for it."""
        found = smsgate.match(method, "/3rdparty/v1" + path)
        assert found is not None
        assert (found.rule.scopes, found.rule.public, found.rule.exact) == (scopes, public, exact)
        assert found.rule.upstream == "smsgate"
        assert found.params == params

    @pytest.mark.parametrize(("method", "path"), SMSGATE_MISSES)
    def test_misses(self, smsgate: Matcher, method: str, path: str) -> None:
        """Anything unlisted (other method, case, trailing slash, HEAD for GET) matches nothing."""
        assert smsgate.match(method, "/3rdparty/v1" + path) is None

    def test_unmounted_paths_miss(self, smsgate: Matcher) -> None:
        """Routes only exist under the mount."""
        assert smsgate.match("GET", "/messages") is None

    def test_superuser_and_exact(self, smsgate: Matcher) -> None:
        """`all:any` opens every route except the exact refresh endpoint."""
        superuser = frozenset({"all:any"})
        for method, path, *_ in SMSGATE_ROUTES:
            found = smsgate.match(method, "/3rdparty/v1" + path)
            assert found is not None
            assert found.rule.allows(superuser) is (path != "/auth/token/refresh")

    def test_candidates(self, smsgate: Matcher) -> None:
        """`candidates` lists the rules for a path under any method (for "method not allowed" answers)."""
        labels = sorted(rule.label() for rule in smsgate.candidates("/3rdparty/v1/settings"))
        assert [label.split(" (")[0] for label in labels] == [
            "GET /3rdparty/v1/settings",
            "PATCH,PUT /3rdparty/v1/settings",
        ]
        assert smsgate.candidates("/3rdparty/v1/nothing") == []

    def test_nearest(self, smsgate: Matcher) -> None:
        """`nearest` ranks rules by shared prefix, preferring the asked method."""
        near = smsgate.nearest("GET", "/3rdparty/v1/mesages/abc")
        assert [(sorted(rule.methods), rule.path) for rule in near] == [
            (["GET"], "/messages/{id}"),
            (["GET"], "/messages"),
            (["GET"], "/settings"),
        ]
        near = smsgate.nearest("DELETE", "/3rdparty/v1/messages/abc/extra", n=2)
        assert [(sorted(rule.methods), rule.path) for rule in near] == [
            (["DELETE"], "/messages/{id}"),
            (["GET"], "/messages/{id}"),
        ]
        assert smsgate.nearest("GET", "/x", n=0) == []


class TestMatching:
    def test_literal_beats_param(self) -> None:
        """A literal segment wins over a parameter at the same position, whatever the rule order."""
        rules = ("{method: GET, path: '/a/{x}', scope: r:read}", "{method: GET, path: /a/b, scope: r:write}")
        for ordered in (rules, rules[::-1]):
            m = matcher(*ordered)
            assert matched_path(m.match("GET", "/a/b")) == "/a/b"
            assert matched_path(m.match("GET", "/a/c")) == "/a/{x}"

    @pytest.mark.parametrize(
        ("path", "expected", "params"),
        [
            ("/a/b/c", "/a/b/c", {}),
            ("/a/z/c", "/a/{x}/c", {"x": "z"}),
            ("/a/b/z", "/a/{x}/{y}", {"x": "b", "y": "z"}),
            ("/a/b/d", "/a/{x}/d", {"x": "b"}),
            ("/a/%C3%A9/z", "/a/{x}/{y}", {"x": "%C3%A9", "y": "z"}),
            ("/a/b", None, {}),
            ("/a/b/c/d", None, {}),
            ("/b/b/c", None, {}),
        ],
    )
    def test_most_specific_with_backtracking(self, path: str, expected: str | None, params: dict[str, str]) -> None:
        """The most specific rule wins, backtracking out of literal dead ends; params stay raw."""
        m = matcher(
            "{method: GET, path: '/a/{x}/{y}', scope: r:read}",
            "{method: GET, path: '/a/{x}/c', scope: r:read}",
            "{method: GET, path: '/a/{x}/d', scope: r:read}",
            "{method: GET, path: /a/b/c, scope: r:read}",
        )
        found = m.match("GET", path)
        assert matched_path(found) == expected
        if found is not None:
            assert found.params == params

    def test_methods_are_exact(self) -> None:
        """Methods match case-sensitively, and HEAD is not GET unless listed."""
        m = matcher(
            "{method: GET, path: /x, scope: r:read}",
            "{methods: [GET, HEAD], path: /y, scope: r:read}",
            "{method: PURGE, path: /x, scope: r:write}",
        )
        assert m.match("GET", "/x") is not None
        assert m.match("get", "/x") is None
        assert m.match("HEAD", "/x") is None
        assert m.match("HEAD", "/y") is not None
        assert matched_path(m.match("PURGE", "/x")) == "/x"

    def test_trailing_slash_and_empty_segments(self) -> None:
        """A trailing slash is its own path, and a parameter never matches an empty segment."""
        m = matcher(
            "{method: GET, path: '/a/{id}', scope: r:read}",
            "{method: GET, path: /a/, scope: r:write}",
            "{method: GET, path: /, scope: r:read}",
        )
        assert matched_path(m.match("GET", "/a/")) == "/a/"
        assert matched_path(m.match("GET", "/a/x")) == "/a/{id}"
        assert matched_path(m.match("GET", "/")) == "/"
        assert m.match("GET", "/a") is None
        only_param = matcher("{method: GET, path: '/a/{id}', scope: r:read}")
        assert only_param.match("GET", "/a/") is None

    def test_rules_in_load_order(self) -> None:
        """`rules()` returns every rule of every policy in load order."""
        first = policy("{method: GET, path: /b, scope: r:read}", "{method: GET, path: /a, scope: r:read}")
        second = policy("{method: GET, path: /c, scope: r:read}", mount="/m", file="q.yaml")
        assert [rule.full_path for rule in Matcher([first, second]).rules()] == ["/b", "/a", "/m/c"]

    def test_mounts_combine(self) -> None:
        """Rules from several policies match on mount + path, each keeping its upstream."""
        root = parse_policy(VOCABULARY + "upstream: a\nrules: [{method: GET, path: '/{x}/y', scope: r:read}]\n", "a")
        mounted = parse_policy(
            VOCABULARY + "upstream: b\nmount: /m\nrules: [{method: GET, path: /y, scope: r:read}]\n", "b"
        )
        m = Matcher([root, mounted])
        found = m.match("GET", "/m/y")
        assert found is not None
        assert (found.rule.upstream, found.params) == ("b", {})
        found = m.match("GET", "/n/y")
        assert found is not None
        assert (found.rule.upstream, found.params) == ("a", {"x": "n"})


AMBIGUOUS = [
    (("{method: GET, path: /a, scope: r:read}", "{method: GET, path: /a, scope: r:write}"), "duplicate rule"),
    (
        ("{methods: [GET, HEAD], path: /a, scope: r:read}", "{methods: [HEAD, PUT], path: /a, scope: r:write}"),
        "duplicate rule",
    ),
    (
        ("{method: GET, path: '/a/{x}', scope: r:read}", "{method: GET, path: '/a/{y}', scope: r:read}"),
        "duplicate rule",
    ),
    (
        ("{method: GET, path: '/a/{x}/c', scope: r:read}", "{method: GET, path: '/a/b/{y}', scope: r:read}"),
        "ambiguous rules",
    ),
    (
        ("{method: GET, path: '/{x}/b', scope: r:read}", "{method: GET, path: '/a/{y}', scope: r:read}"),
        "ambiguous rules",
    ),
    (
        ("{method: GET, path: '/{x}/b/{z}', scope: r:read}", "{method: GET, path: '/a/{y}/c', scope: r:read}"),
        "ambiguous rules",
    ),
]

UNAMBIGUOUS = [
    ("{method: GET, path: /a, scope: r:read}", "{method: POST, path: /a, scope: r:write}"),
    ("{method: GET, path: '/a/{x}/c', scope: r:read}", "{method: POST, path: '/a/b/{y}', scope: r:read}"),
    ("{method: GET, path: '/a/{x}/c', scope: r:read}", "{method: GET, path: '/{y}/b/d', scope: r:read}"),
    ("{method: GET, path: '/a/{x}', scope: r:read}", "{method: GET, path: '/a/{x}/c', scope: r:read}"),
    ("{method: GET, path: '/{x}/{y}', scope: r:read}", "{method: GET, path: '/a/b', scope: r:read}"),
    ("{method: GET, path: '/a/{x}', scope: r:read}", "{method: GET, path: /a/, scope: r:read}"),
    ("{method: GET, path: '/a/{x}/c', scope: r:read}", "{method: GET, path: '/a/b/c', scope: r:read}"),
]


class TestAmbiguity:
    @pytest.mark.parametrize(("rules", "fragment"), AMBIGUOUS)
    def test_rejected(self, rules: tuple[str, str], fragment: str) -> None:
        """Duplicates and overlaps without a more specific rule fail at the later rule, naming both."""
        for first, second in (rules, rules[::-1]):
            with pytest.raises(LoadError) as info:
                matcher("{method: GET, path: /unrelated, scope: r:read}", first, second)
            err = info.value
            assert (err.file, err.line, err.key) == ("p.yaml", 6, "rules[2].path")
            assert fragment in str(err)
            assert "(p.yaml:5)" in str(err)
            assert "(p.yaml:6)" in str(err)

    @pytest.mark.parametrize("rules", UNAMBIGUOUS)
    def test_accepted(self, rules: tuple[str, str]) -> None:
        """Different methods, lengths, non-overlapping literals or a dominating rule are fine."""
        matcher(*rules)
        matcher(*rules[::-1])

    @pytest.mark.parametrize(
        ("first", "second", "fragment"),
        [
            ("{method: GET, path: /m/a, scope: r:read}", "{method: GET, path: /a, scope: r:read}", "duplicate rule"),
            (
                "{method: GET, path: '/m/{x}/c', scope: r:read}",
                "{method: GET, path: '/b/{y}', scope: r:read}",
                "ambiguous rules",
            ),
        ],
    )
    def test_across_files(self, first: str, second: str, fragment: str) -> None:
        """Ambiguity is checked on mount + path across policy files, reported in the later file."""
        with pytest.raises(LoadError) as info:
            Matcher([policy(first, file="a.yaml"), policy(second, mount="/m", file="b.yaml")])
        err = info.value
        assert (err.file, err.line, err.key) == ("b.yaml", 4, "rules[0].path")
        assert fragment in str(err)
        assert "(a.yaml:4)" in str(err)


N_RULES = 10_000


@pytest.fixture(scope="module")
def big() -> tuple[Matcher, float]:
    lines = [VOCABULARY.rstrip("\n"), "rules:"]
    for index in range(N_RULES // 2):
        lines.append(f"  - {{method: GET, path: /res{index}/items, scope: r:read}}")
        lines.append(f'  - {{methods: [PUT, DELETE], path: "/res{index}/items/{{id}}", scope: r:write}}')
    loaded = parse_policy("\n".join(lines) + "\n", "big.yaml")
    started = time.perf_counter()
    compiled = Matcher([loaded])
    return compiled, time.perf_counter() - started


class TestLargePolicy:
    def test_compiles_quickly(self, big: tuple[Matcher, float]) -> None:
        """10,000 rules compile (with the ambiguity check) well within a second or two."""
        compiled, seconds = big
        assert len(compiled.rules()) == N_RULES
        assert seconds < 2.0

    @pytest.mark.parametrize(
        ("method", "path", "line", "params"),
        [
            ("GET", "/res0/items", 3, {}),
            ("DELETE", "/res0/items/x1", 4, {"id": "x1"}),
            ("GET", "/res2500/items", 5003, {}),
            ("PUT", "/res2500/items/x", 5004, {"id": "x"}),
            ("GET", f"/res{N_RULES // 2 - 1}/items", N_RULES + 1, {}),
            ("DELETE", f"/res{N_RULES // 2 - 1}/items/last", N_RULES + 2, {"id": "last"}),
        ],
    )
    def test_hits(self, big: tuple[Matcher, float], method: str, path: str, line: int, params: dict[str, str]) -> None:
        """The first, middle and last rules match with their parameters."""
        found = big[0].match(method, path)
        assert found is not None
        assert (found.rule.line, found.params) == (line, params)

    @pytest.mark.parametrize(
        ("method", "path"),
        [("GET", f"/res{N_RULES}/items"), ("POST", "/res0/items"), ("GET", "/res0/items/x"), ("GET", "/res0")],
    )
    def test_misses(self, big: tuple[Matcher, float], method: str, path: str) -> None:
        """Unknown resources, methods and lengths match nothing."""
        assert big[0].match(method, path) is None
