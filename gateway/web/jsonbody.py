"""JSON the gateway parses, with a nesting limit checked before the parser runs.

Python's `json` recurses once per nesting level: 8,000 brackets (well under any size cap) raise
`RecursionError` from deep inside the parser, which would be a 500 and a traceback. Every JSON document
the gateway reads (a token request body, a JWT's header and payload, a JWKS, a provider's login answer,
a provider answer inspected for a credential error) goes through `loads`, which refuses a document nested
deeper than `MAX_DEPTH` with `TooDeep` (a `ValueError`, so existing "not JSON" handling applies).

The check counts brackets outside strings; documents with fewer brackets than the limit skip the scan.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_DEPTH", "TooDeep", "depth_exceeds", "loads"]

MAX_DEPTH = 32  # SMSGate's and the providers' documents nest 3 or 4 levels; JWT claims a few more

_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
_OPEN = frozenset(b"[{")


class TooDeep(ValueError):
    """The document nests arrays and objects deeper than the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"JSON nested deeper than {limit} levels")
        self.limit = limit


def depth_exceeds(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether `data` opens more than `limit` arrays/objects at once (brackets inside strings do not count)."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    for match in _TOKENS.finditer(data):
        token = match.group()
        if len(token) != 1:
            continue  # a string
        if token[0] in _OPEN:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def loads(
    data: bytes | str,
    *,
    limit: int = MAX_DEPTH,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
    parse_constant: Callable[[str], Any] | None = None,
) -> Any:
    """`json.loads` after the depth check: `TooDeep` past `limit`, ValueError for anything that is not JSON."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if depth_exceeds(raw, limit):
        raise TooDeep(limit)
    try:
        return json.loads(raw, object_pairs_hook=object_pairs_hook, parse_constant=parse_constant)
    except RecursionError:  # not reachable within the limit; kept as a last line of defence
        raise TooDeep(limit) from None
