"""The JSON depth limit every parsed document goes through (`gateway/web/jsonbody.py`)."""

from __future__ import annotations

import json

import pytest

from gateway.web.jsonbody import MAX_DEPTH, TooDeep, depth_exceeds, loads


@pytest.mark.parametrize(
    ("data", "deep"),
    [
        (b"{}", False),
        (b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, False),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), True),
        (b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1), True),
        (b'["' + b"[" * 500 + b'"]', False),  # brackets inside a string do not count
        (b'["\\"' + b"[" * 500 + b'"]', False),  # nor after an escaped quote
        (b"[]" * 5000, False),  # many, but shallow
        (b"[" * 8000, True),  # unterminated: refused before the parser recurses
    ],
)
def test_depth_is_counted_outside_strings(data: bytes, deep: bool) -> None:
    """Depth counts open arrays/objects, not brackets in strings, and not siblings."""
    assert depth_exceeds(data) is deep


def test_loads_refuses_deep_documents_with_a_value_error() -> None:
    """TooDeep is a ValueError (existing "not JSON" handling applies); shallow JSON parses as json.loads does."""
    with pytest.raises(TooDeep, match="nested deeper than"):
        loads(b"[" * 8000 + b"]" * 8000)
    assert issubclass(TooDeep, ValueError)
    document = {"scopes": ["messages:send"], "ttl": 900, "nested": [[{"a": "[[[["}]]}
    assert loads(json.dumps(document)) == document
    with pytest.raises(ValueError):
        loads(b"{")
