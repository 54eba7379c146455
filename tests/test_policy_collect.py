"""Collecting policy errors: the loader and the matcher step over a broken rule when given a collector."""

from __future__ import annotations

import pytest

from gateway.errors import LoadError
from gateway.policy.loader import parse_policy, read_policy
from gateway.policy.matcher import Conflict, Matcher
from gateway.yamlsource import load_text

HEAD = "scopes: {a:b: A}\nrules:\n"


def test_loader_collects_rule_errors_and_keeps_the_rest() -> None:
    text = HEAD + (
        "  - {method: GET, path: /ok, scope: a:b}\n"
        "  - {method: GET, path: /x, scope: c:d}\n"
        "  - {method: get, path: /y, scope: a:b}\n"
        "  - {method: GET, path: /z, public: true}\n"
    )
    errors: list[LoadError] = []
    read = read_policy(load_text(text, "p.yaml"), errors)
    assert [(e.key, e.line) for e in errors] == [("rules[1].scope", 4), ("rules[2].method", 5)]
    assert [rule.path for rule in read.policy.rules] == ["/ok", "/z"]
    assert read.rule_indices == (0, 3)
    with pytest.raises(LoadError) as caught:
        parse_policy(text, "p.yaml")
    assert caught.value.key == "rules[1].scope"


def test_loader_raises_what_it_cannot_step_over() -> None:
    errors: list[LoadError] = []
    with pytest.raises(LoadError) as caught:
        read_policy(load_text("bogus: 1\nrules: []\n", "p.yaml"), errors)
    assert (caught.value.key, errors) == ("bogus", [])
    with pytest.raises(LoadError) as caught:
        read_policy(load_text("rules: {a: 1}\n", "p.yaml"), errors)
    assert (caught.value.key, errors) == ("rules", [])


def test_matcher_collects_conflicts_and_leaves_the_later_rule_out() -> None:
    policy = parse_policy(
        HEAD
        + "  - {method: GET, path: '/a/{x}/c', scope: a:b}\n"
        + "  - {methods: [GET, POST], path: '/a/b/{y}', scope: a:b}\n"
        + "  - {method: GET, path: '/a/{x}/c', scope: a:b}\n"
        + "  - {method: POST, path: '/a/b/c', scope: a:b}\n",
        "p.yaml",
    )
    conflicts: list[Conflict] = []
    matcher = Matcher([policy], conflicts)
    first, second, third, fourth = policy.rules
    assert [(c.rule, c.other, c.method, c.duplicate) for c in conflicts] == [
        (second, first, "GET", False),
        (third, first, "GET", True),
    ]
    assert matcher.rules() == (first, fourth)
    assert matcher.match("POST", "/a/b/zz") is None  # the refused rule left no method behind
    with pytest.raises(LoadError) as caught:
        Matcher([policy])
    assert (caught.value.key, caught.value.reason) == ("rules[1].path", conflicts[0].message)
