"""Scopes: `resource:action` tokens, read from token claims and compared as whole tokens.

Comparison is set membership, never substring or prefix: `messages:send` is not satisfied by
`messages:sendx` or `messages:*`. `all:any` (SMSGate's superuser scope) satisfies every rule except
the ones marked `exact`, which must be granted by name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

__all__ = ["SCOPE_PATTERN", "SUPERUSER", "is_valid_scope", "parse_scopes", "satisfies", "split_scope"]

SUPERUSER = "all:any"
SCOPE_PATTERN = re.compile(r"^[a-z][a-z0-9_-]*:[a-z][a-z0-9_-]*$")
_AUTO_CLAIMS = ("scope", "scp", "scopes")


def is_valid_scope(s: str) -> bool:
    """True for a well-formed `resource:action` scope."""
    return SCOPE_PATTERN.fullmatch(s) is not None


def split_scope(value: str) -> list[str]:
    """The scopes of an RFC 6749 `scope` string: separated by a single space (%x20) only.

    Any other whitespace (tab, newline, U+00A0, U+3000, ...) stays inside a token, so `"x\u00a0devices:list"`
    is one token that names no scope, never `devices:list`. Empty tokens (doubled spaces) are skipped.
    """
    return [token for token in value.split(" ") if token]


def parse_scopes(claims: Mapping[str, object], claim_path: str | None = None) -> frozenset[str]:
    """The scopes granted by `claims`: a space-separated string (`split_scope`) or a list of strings at the claim.

    With no `claim_path` the first present of `scope`, `scp`, `scopes` is used. A dotted path such
    as `realm_access.roles` walks nested objects (a key that itself contains dots is tried first).
    Anything that is not a string is ignored, so a malformed claim grants nothing.
    """
    if claim_path is None:
        for name in _AUTO_CLAIMS:
            if name in claims:
                return _tokens(claims[name])
        return frozenset()
    if claim_path in claims:
        return _tokens(claims[claim_path])
    value: object = claims
    for part in claim_path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return frozenset()
        value = value[part]
    return _tokens(value)


def _tokens(value: object) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(split_scope(value))
    if isinstance(value, list | tuple):
        return frozenset(item for item in value if isinstance(item, str) and item)
    return frozenset()


def satisfies(granted: frozenset[str], required: tuple[str, ...], mode: Literal["any", "all"], exact: bool) -> bool:
    """Whether `granted` meets `required`: at least one (`any`) or every one (`all`) held by name.

    `all:any` in `granted` satisfies everything unless `exact`. An empty `required` is met by `all`
    and not by `any` (rules never have one: the loader refuses it).
    """
    if not exact and SUPERUSER in granted:
        return True
    if mode == "all":
        return granted.issuperset(required)
    if mode == "any":
        return not granted.isdisjoint(required)
    raise ValueError(f"unknown scope mode {mode!r}")
