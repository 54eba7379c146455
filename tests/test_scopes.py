"""Scope syntax, reading scopes from claims, and whole-token satisfaction."""

from __future__ import annotations

from typing import Literal

import pytest

from gateway.policy.scopes import SUPERUSER, is_valid_scope, parse_scopes, satisfies


@pytest.mark.parametrize(
    ("scope", "valid"),
    [
        ("messages:send", True),
        ("all:any", True),
        ("sms-v2:send_bulk", True),
        ("a1:b2", True),
        ("messages", False),
        ("messages:", False),
        (":send", False),
        ("Messages:send", False),
        ("messages:Send", False),
        ("messages:*", False),
        ("*:*", False),
        ("messages:send:now", False),
        ("messages: send", False),
        ("messages:send\n", False),
        ("1messages:send", False),
        ("", False),
    ],
)
def test_is_valid_scope(scope: str, valid: bool) -> None:
    """Scopes are lowercase `resource:action`; wildcards and stray whitespace are malformed."""
    assert is_valid_scope(scope) is valid


@pytest.mark.parametrize(
    ("claims", "claim_path", "expected"),
    [
        ({"scope": "messages:send messages:read"}, None, {"messages:send", "messages:read"}),
        ({"scope": "  messages:send   logs:read "}, None, {"messages:send", "logs:read"}),
        ({"scope": ""}, None, set()),
        ({"scp": ["messages:send", "logs:read"]}, None, {"messages:send", "logs:read"}),
        ({"scp": "messages:send logs:read"}, None, {"messages:send", "logs:read"}),
        ({"scopes": ["devices:list"]}, None, {"devices:list"}),
        ({"scope": "a:b", "scp": ["c:d"], "scopes": ["e:f"]}, None, {"a:b"}),
        ({"scp": ["c:d"], "scopes": ["e:f"]}, None, {"c:d"}),
        ({"scopes": ["a:b", 7, None, {"x": "y:z"}, ["c:d"], ""]}, None, {"a:b"}),
        ({"scope": 42}, None, set()),
        ({"sub": "me"}, None, set()),
        ({"roles": ["a:b"], "scope": "c:d"}, "roles", {"a:b"}),
        ({"realm_access": {"roles": ["messages:send", "x"]}}, "realm_access.roles", {"messages:send", "x"}),
        ({"realm_access": {"roles": "a:b c:d"}}, "realm_access.roles", {"a:b", "c:d"}),
        ({"realm_access": ["roles"]}, "realm_access.roles", set()),
        ({"realm_access": {}}, "realm_access.roles", set()),
        ({"https://example.com/scopes": ["a:b"]}, "https://example.com/scopes", {"a:b"}),
        ({"scope": "a:b"}, "scp", set()),
        # RFC 6749: scopes are separated by a single space (%x20) only; other whitespace stays in the token
        ({"scope": "x\u00a0devices:list"}, None, {"x\u00a0devices:list"}),
        ({"scope": "messages:send\tdevices:list"}, None, {"messages:send\tdevices:list"}),
        ({"scope": "a:b\nc:d\u3000e:f\u2028g:h"}, None, {"a:b\nc:d\u3000e:f\u2028g:h"}),
        ({"realm_access": {"roles": "a:b\u00a0c:d"}}, "realm_access.roles", {"a:b\u00a0c:d"}),
    ],
)
def test_parse_scopes(claims: dict[str, object], claim_path: str | None, expected: set[str]) -> None:
    """Scopes come from `scope` (string), `scp`/`scopes` (lists) or a dotted claim path; junk grants nothing."""
    assert parse_scopes(claims, claim_path) == frozenset(expected)


Mode = Literal["any", "all"]


@pytest.mark.parametrize(
    ("granted", "required", "mode", "exact", "expected"),
    [
        ({"messages:send"}, ("messages:send",), "any", False, True),
        ({"messages:sendx"}, ("messages:send",), "any", False, False),
        ({"messages:send"}, ("messages:sendx",), "any", False, False),
        ({"messages:sen"}, ("messages:send",), "any", False, False),
        ({"messages:send messages:read"}, ("messages:send",), "any", False, False),
        ({"messages:read"}, ("messages:send", "messages:read"), "any", False, True),
        ({"messages:read"}, ("messages:send", "messages:read"), "all", False, False),
        ({"messages:read", "messages:send"}, ("messages:send", "messages:read"), "all", False, True),
        (set(), ("messages:send",), "any", False, False),
        ({SUPERUSER}, ("messages:send",), "any", False, True),
        ({SUPERUSER}, ("messages:send", "logs:read"), "all", False, True),
        ({SUPERUSER}, ("tokens:refresh",), "any", True, False),
        ({SUPERUSER, "tokens:refresh"}, ("tokens:refresh",), "any", True, True),
        ({"tokens:refresh"}, ("tokens:refresh",), "any", True, True),
        ({"all:anyx"}, ("messages:send",), "any", False, False),
    ],
)
def test_satisfies(granted: set[str], required: tuple[str, ...], mode: Mode, exact: bool, expected: bool) -> None:
    """Whole-token set semantics; `all:any` stands in for any scope except on exact rules."""
    assert satisfies(frozenset(granted), required, mode, exact) is expected


def test_satisfies_rejects_unknown_mode() -> None:
    """An unknown mode fails loudly instead of granting or denying by accident."""
    with pytest.raises(ValueError, match="unknown scope mode"):
        satisfies(frozenset({"a:b"}), ("a:b",), "some", False)  # type: ignore[arg-type]
