"""Policy loading: the rule model, and every mistake reported at its file:line with its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import LoadError
from gateway.policy.loader import load_policies, load_policy, parse_policy
from gateway.policy.model import Policy, Rule

SHIPPED = Path(__file__).resolve().parent.parent / "policies" / "smsgate.yaml"

HEAD = ["scopes:", "  messages:send: Send SMS", "  messages:read: Read one message", "rules:"]


def doc(*lines: str) -> str:
    """A policy whose vocabulary is lines 1-3 and whose rules start on line 5."""
    return "\n".join([*HEAD, *lines]) + "\n"


def parse(text: str) -> Policy:
    return parse_policy(text, "p.yaml")


class TestModel:
    def test_minimal_rule(self) -> None:
        """A rule reads into a frozen Rule with mount, full path, file and line."""
        policy = parse(
            "upstream: smsgate\nmount: /3rdparty/v1\n"
            + doc("  - {method: POST, path: /messages, scope: messages:send}")
        )
        assert policy.upstream == "smsgate"
        assert policy.mount == "/3rdparty/v1"
        assert dict(policy.scopes) == {"messages:send": "Send SMS", "messages:read": "Read one message"}
        (rule,) = policy.rules
        assert rule == Rule(
            methods=frozenset({"POST"}),
            path="/messages",
            full_path="/3rdparty/v1/messages",
            scopes=("messages:send",),
            mode="any",
            file="p.yaml",
            line=7,
            upstream="smsgate",
            mount="/3rdparty/v1",
        )
        with pytest.raises(AttributeError):
            rule.path = "/other"  # type: ignore[misc]

    @pytest.mark.parametrize(
        ("rule", "scopes", "mode", "exact", "public"),
        [
            ("{method: GET, path: /x, scope: messages:read}", ("messages:read",), "any", False, False),
            (
                "{method: GET, path: /x, any_of: [messages:read, messages:send]}",
                ("messages:read", "messages:send"),
                "any",
                False,
                False,
            ),
            (
                "{method: GET, path: /x, all_of: [messages:read, messages:send]}",
                ("messages:read", "messages:send"),
                "all",
                False,
                False,
            ),
            ("{method: GET, path: /x, scope: messages:read, exact: true}", ("messages:read",), "any", True, False),
            ("{method: GET, path: /x, public: true}", (), "any", False, True),
            ("{method: GET, path: /x, public: false, scope: messages:read}", ("messages:read",), "any", False, False),
        ],
    )
    def test_requirement_forms(self, rule: str, scopes: tuple[str, ...], mode: str, exact: bool, public: bool) -> None:
        """`scope`, `any_of`, `all_of`, `exact` and `public` map onto scopes, mode and flags."""
        (parsed,) = parse(doc(f"  - {rule}")).rules
        assert (parsed.scopes, parsed.mode, parsed.exact, parsed.public) == (scopes, mode, exact, public)

    @pytest.mark.parametrize(
        ("granted", "rule", "allowed"),
        [
            (set(), "{method: GET, path: /x, public: true}", True),
            ({"messages:read"}, "{method: GET, path: /x, scope: messages:read}", True),
            ({"messages:send"}, "{method: GET, path: /x, scope: messages:read}", False),
            ({"all:any"}, "{method: GET, path: /x, scope: messages:read}", True),
            ({"all:any"}, "{method: GET, path: /x, scope: messages:read, exact: true}", False),
            ({"messages:read"}, "{method: GET, path: /x, all_of: [messages:read, messages:send]}", False),
            ({"messages:send"}, "{method: GET, path: /x, any_of: [messages:read, messages:send]}", True),
        ],
    )
    def test_allows(self, granted: set[str], rule: str, allowed: bool) -> None:
        """Public rules admit anyone; others apply scope satisfaction with the rule's mode and exactness."""
        (parsed,) = parse(doc(f"  - {rule}")).rules
        assert parsed.allows(frozenset(granted)) is allowed

    def test_required_text_and_label(self) -> None:
        """`required_text` feeds the 403 challenge; `label` names methods, full path and position."""
        text = "mount: /api\n" + doc("  - {methods: [PUT, PATCH], path: /s, all_of: [messages:send, messages:read]}")
        (rule,) = parse(text).rules
        assert rule.required_text == "messages:send messages:read"
        assert rule.label() == "PATCH,PUT /api/s (p.yaml:6)"

    @pytest.mark.parametrize(
        ("mount", "expected"),
        [(None, ""), ('""', ""), ("/", ""), ("/api", "/api"), ("/api/", "/api"), ("/3rdparty/v1", "/3rdparty/v1")],
    )
    def test_mount_normalized(self, mount: str | None, expected: str) -> None:
        """A missing, empty or `/` mount is the root; a trailing slash is dropped."""
        prefix = "" if mount is None else f"mount: {mount}\n"
        policy = parse(prefix + doc("  - {method: GET, path: /x, scope: messages:read}"))
        assert policy.mount == expected
        assert policy.rules[0].full_path == expected + "/x"

    def test_schema_version_description_accepted(self) -> None:
        """`$schema`, `version: 1` and rule descriptions are accepted."""
        text = '$schema: "./policy.schema.json"\nversion: 1\n' + doc(
            "  - {method: GET, path: /x, scope: messages:read, description: Read it}"
        )
        assert parse(text).rules[0].description == "Read it"

    def test_path_templates(self) -> None:
        """Templates keep parameters and a trailing slash verbatim."""
        text = doc(
            '  - {method: GET, path: "/a/{id}/b/{other_id}", scope: messages:read}',
            "  - {method: GET, path: /a/, scope: messages:read}",
            "  - {method: GET, path: /, scope: messages:read}",
        )
        assert [rule.path for rule in parse(text).rules] == ["/a/{id}/b/{other_id}", "/a/", "/"]

    def test_vocabulary_is_read_only(self) -> None:
        """The loaded vocabulary cannot be changed behind the matcher's back."""
        policy = parse(doc("  - {method: GET, path: /x, public: true}"))
        with pytest.raises(TypeError):
            policy.scopes["x:y"] = "nope"  # type: ignore[index]


RULE = "  - {method: GET, path: /x, scope: messages:read}"

ERRORS = [
    # whole file
    ("", 1, "", "the file is empty"),
    ("- a\n", 1, "", "expected a mapping"),
    ("rules: [\n", 2, "", "invalid YAML"),
    (doc(RULE) + "extra: 1\n", 6, "extra", "unknown key"),
    ("scope:\n  messages:read: Read\nrules:\n" + RULE + "\n", 1, "scope", "unknown key"),
    ("scopes: {a:b: x}\n", 1, "rules", "required key is missing"),
    ("rules: {}\n", 1, "rules", "expected a list"),
    ("rules: []\nrules: []\n", 2, "rules", "duplicate key"),
    ("version: 2\n" + doc(RULE), 1, "version", "unsupported policy version"),
    ("$schema: 3\n" + doc(RULE), 1, "$schema", "expected a string"),
    ("upstream: ''\n" + doc(RULE), 1, "upstream", "must not be empty"),
    ("upstream: [a]\n" + doc(RULE), 1, "upstream", "expected a single value"),
    ("mount: api\n" + doc(RULE), 1, "mount", "must start with '/'"),
    ("mount: '/api/{v}'\n" + doc(RULE), 1, "mount", "cannot have parameters"),
    ("mount: /api/%761\n" + doc(RULE), 1, "mount", "write '/api/v1'"),
    ("mount: /api/../x\n" + doc(RULE), 1, "mount", "dot segment"),
    ("mount: //api\n" + doc(RULE), 1, "mount", "empty segment"),
    # vocabulary
    ("scopes: {all:any: Everything}\nrules: []\n", 1, "scopes.all:any", "built in"),
    ("scopes: {Messages:Send: x}\nrules: []\n", 1, "scopes.Messages:Send", "malformed scope"),
    ("scopes: {messages: x}\nrules: []\n", 1, "scopes.messages", "malformed scope"),
    ("scopes:\n  a:b:\nrules: []\n", 2, "scopes.a:b", "expected a string"),
    ("scopes: [a:b]\nrules: []\n", 1, "scopes", "expected a mapping"),
    # rule shape
    (doc("  - GET /x"), 5, "rules[0]", "expected a mapping"),
    (
        doc("  - {method: GET, path: /x, scope: messages:read, scopes: messages:read}"),
        5,
        "rules[0].scopes",
        "unknown key",
    ),
    (doc("  - {method: GET, path: /x, pubic: true}"), 5, "rules[0].pubic", "unknown key"),
    (doc("  - {method: GET, method: POST, path: /x, scope: messages:read}"), 5, "rules[0].method", "duplicate key"),
    (doc(RULE, "  - {method: GET, scope: messages:read}"), 6, "rules[1].path", "required key is missing"),
    (doc("  - {path: /x, scope: messages:read}"), 5, "rules[0]", "names no method"),
    # methods
    (
        doc("  - {method: GET, methods: [POST], path: /x, scope: messages:read}"),
        5,
        "rules[0].methods",
        "either method or methods",
    ),
    (doc("  - {methods: [], path: /x, scope: messages:read}"), 5, "rules[0].methods", "at least one method"),
    (
        doc("  - {methods: [GET, POST, GET], path: /x, scope: messages:read}"),
        5,
        "rules[0].methods[2]",
        "duplicate method GET",
    ),
    (doc("  - {method: get, path: /x, scope: messages:read}"), 5, "rules[0].method", "write GET"),
    (
        doc("  - {methods: [GET, Post], path: /x, scope: messages:read}"),
        5,
        "rules[0].methods[1]",
        "malformed method 'Post'",
    ),
    (doc("  - {method: 'GE T', path: /x, scope: messages:read}"), 5, "rules[0].method", "malformed method"),
    (doc("  - {method: '*', path: /x, scope: messages:read}"), 5, "rules[0].method", "malformed method"),
    (doc("  - {method: 1, path: /x, scope: messages:read}"), 5, "rules[0].method", "expected a string"),
    # paths
    (doc("  - {method: GET, path: x, scope: messages:read}"), 5, "rules[0].path", "must start with '/'"),
    (doc("  - {method: GET, path: 'http://h/x', scope: messages:read}"), 5, "rules[0].path", "must start with '/'"),
    (doc("  - {method: GET, path: /a//b, scope: messages:read}"), 5, "rules[0].path", "empty segment"),
    (
        doc('  - {method: GET, path: "/a/{id}/{id}", scope: messages:read}'),
        5,
        "rules[0].path",
        "duplicate parameter {id}",
    ),
    (doc('  - {method: GET, path: "/a/{1d}", scope: messages:read}'), 5, "rules[0].path", "malformed parameter"),
    (doc('  - {method: GET, path: "/a/msg-{id}", scope: messages:read}'), 5, "rules[0].path", "malformed parameter"),
    (doc('  - {method: GET, path: "/a/{id", scope: messages:read}'), 5, "rules[0].path", "malformed parameter"),
    (doc('  - {method: GET, path: "/a/{}", scope: messages:read}'), 5, "rules[0].path", "malformed parameter"),
    (doc("  - {method: GET, path: /%6Dessages, scope: messages:read}"), 5, "rules[0].path", "write '/messages'"),
    (doc("  - {method: GET, path: /a/%c3%a9, scope: messages:read}"), 5, "rules[0].path", "write '/%C3%A9'"),
    (doc("  - {method: GET, path: /a/../b, scope: messages:read}"), 5, "rules[0].path", "dot segment"),
    (doc("  - {method: GET, path: /a/%2e%2e, scope: messages:read}"), 5, "rules[0].path", "dot segment"),
    (doc("  - {method: GET, path: '/a b', scope: messages:read}"), 5, "rules[0].path", "forbidden character"),
    (doc("  - {method: GET, path: '/a;b', scope: messages:read}"), 5, "rules[0].path", "forbidden character ';'"),
    (doc("  - {method: GET, path: /a%2Fb, scope: messages:read}"), 5, "rules[0].path", "encoded '/'"),
    # requirements
    (doc("  - {method: GET, path: /x}"), 5, "rules[0]", "names no scope"),
    (doc("  - {method: GET, path: /x, exact: true}"), 5, "rules[0]", "names no scope"),
    (
        doc("  - {method: GET, path: /x, public: true, scope: messages:read}"),
        5,
        "rules[0].scope",
        "public rule takes no scope",
    ),
    (
        doc("  - {method: GET, path: /x, public: true, all_of: [messages:read]}"),
        5,
        "rules[0].all_of",
        "public rule takes no scope",
    ),
    (doc("  - {method: GET, path: /x, public: true, exact: true}"), 5, "rules[0].exact", "no meaning"),
    (doc("  - {method: GET, path: /x, public: 'true'}"), 5, "rules[0].public", "expected true or false"),
    (doc("  - {method: GET, path: /x, scope: messages:read, exact: 1}"), 5, "rules[0].exact", "expected true or false"),
    (
        doc("  - {method: GET, path: /x, scope: messages:read, description: 5}"),
        5,
        "rules[0].description",
        "expected a string",
    ),
    (
        doc("  - {method: GET, path: /x, scope: messages:read, any_of: [messages:send]}"),
        5,
        "rules[0].any_of",
        "only one of scope, any_of, all_of",
    ),
    (
        doc("  - {method: GET, path: /x, any_of: [messages:read], all_of: [messages:send]}"),
        5,
        "rules[0].all_of",
        "only one of scope, any_of, all_of",
    ),
    (doc("  - {method: GET, path: /x, scope: messages:sned}"), 5, "rules[0].scope", "did you mean 'messages:send'"),
    (doc("  - {method: GET, path: /x, scope: logs:read}"), 5, "rules[0].scope", "add it to `scopes:`"),
    (doc("  - {method: GET, path: /x, scope: Messages:Read}"), 5, "rules[0].scope", "malformed scope"),
    (
        doc("  - {method: GET, path: /x, scope: 'messages:read messages:send'}"),
        5,
        "rules[0].scope",
        "use any_of or all_of",
    ),
    (doc("  - {method: GET, path: /x, scope: 'messages:*'}"), 5, "rules[0].scope", "malformed scope"),
    (doc("  - {method: GET, path: /x, scope: all:any}"), 5, "rules[0].scope", "built-in superuser"),
    (
        doc("  - {method: GET, path: /x, any_of: [messages:read, all:any]}"),
        5,
        "rules[0].any_of[1]",
        "built-in superuser",
    ),
    (doc("  - {method: GET, path: /x, scope: [messages:read]}"), 5, "rules[0].scope", "expected a single value"),
    (doc("  - {method: GET, path: /x, any_of: []}"), 5, "rules[0].any_of", "at least one scope"),
    (
        doc("  - {method: GET, path: /x, all_of: [messages:read, messages:sendd]}"),
        5,
        "rules[0].all_of[1]",
        "not in the vocabulary",
    ),
    (
        doc("  - {method: GET, path: /x, any_of: [messages:read, messages:read]}"),
        5,
        "rules[0].any_of[1]",
        "duplicate scope",
    ),
    (doc("  - method: GET", "    path: /x", "    scope: messages:snd"), 7, "rules[0].scope", "not in the vocabulary"),
]


@pytest.mark.parametrize(("text", "line", "key", "fragment"), ERRORS)
def test_load_errors(text: str, line: int, key: str, fragment: str) -> None:
    """Every mistake is a LoadError at the offending file:line with the dotted key."""
    with pytest.raises(LoadError) as info:
        parse(text)
    err = info.value
    assert (err.file, err.line, err.key) == ("p.yaml", line, key), str(err)
    assert fragment in str(err)
    assert str(err).startswith(f"p.yaml:{line}:")


class TestFiles:
    def test_shipped_policy_loads(self) -> None:
        """policies/smsgate.yaml loads: upstream, mount, a described vocabulary, every scope used."""
        policy = load_policy(SHIPPED)
        assert (policy.upstream, policy.mount) == ("smsgate", "/3rdparty/v1")
        assert "all:any" not in policy.scopes
        assert all(description.strip() for description in policy.scopes.values())
        used = {scope for rule in policy.rules for scope in rule.scopes}
        assert used == set(policy.scopes)
        assert len(policy.rules) == 19

    def test_load_policies_distinct_mounts(self, tmp_path: Path) -> None:
        """Several files load in order when each has its own mount."""
        first = tmp_path / "a.yaml"
        second = tmp_path / "b.yaml"
        first.write_text(doc(RULE))
        second.write_text("mount: /api\n" + doc(RULE))
        policies = load_policies([first, str(second)])
        assert [policy.mount for policy in policies] == ["", "/api"]
        assert [policy.file for policy in policies] == [str(first), str(second)]

    @pytest.mark.parametrize(
        ("first_mount", "second_mount", "line"),
        [
            ("mount: /api\n", "mount: /api/\n", 1),
            ("", "mount: /\n", 1),
            ("", "# root\n", 2),
            ("", "\n\nmount: ''\n", 3),
        ],
    )
    def test_load_policies_same_mount(self, tmp_path: Path, first_mount: str, second_mount: str, line: int) -> None:
        """Two files with the same mount (`""` and `/` are both the root) fail at the second file's mount."""
        first = tmp_path / "a.yaml"
        second = tmp_path / "b.yaml"
        first.write_text(first_mount + doc(RULE))
        second.write_text(second_mount + doc(RULE))
        with pytest.raises(LoadError) as info:
            load_policies([first, second])
        err = info.value
        assert (err.file, err.line, err.key) == (str(second), line, "mount")
        assert f"already used by {first}" in str(err)

    def test_missing_file(self, tmp_path: Path) -> None:
        """An unreadable policy file is a LoadError naming it."""
        with pytest.raises(LoadError, match="cannot read file") as info:
            load_policy(tmp_path / "nope.yaml")
        assert info.value.file == str(tmp_path / "nope.yaml")
