"""Path canonicalization: one strict spelling per path, authorized and forwarded byte for byte.

A gateway and its upstream must agree on which resource a request names. Every spelling that two
parsers could read differently (dot segments, encoded slashes or backslashes, `;` parameters, empty
segments, control bytes, malformed escapes, escapes that are not UTF-8 such as the overlong `%C0%AE`)
is refused with a 400 instead of being guessed at; the harmless variants (escaped unreserved
characters, lowercase hex) are normalized. The result is the only path the policy sees and the only
path sent upstream.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from gateway.errors import BadRequest

__all__ = ["MAX_PATH_BYTES", "UNRESERVED", "canonical_path", "split_segments"]

MAX_PATH_BYTES = 4096

# RFC 3986 pchar minus ";" (sub-delims ";" is a matrix-parameter separator some servers strip).
_PCHAR = r"A-Za-z0-9\-._~!$&'()*+,=:@"
# Common case, no escapes and no segment starting with ".": already canonical as written.
_FAST = re.compile(rf"(?:/[{_PCHAR.replace('.', '')}][{_PCHAR}]*)+/?|/")
_TOKEN = re.compile(rf"%[0-9A-Fa-f]{{2}}|[{_PCHAR}]+")
UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_FORBIDDEN_ESCAPES = {0x2F: "an encoded '/'", 0x5C: "an encoded '\\'", 0x3B: "an encoded ';'"}


def _bad(message: str, raw: str) -> BadRequest:
    preview = raw[:32] + ("..." if len(raw) > 32 else "")
    return BadRequest(f"non-canonical path: {message} in {preview!r}", code="bad_path")


def canonical_path(raw: bytes | str) -> str:
    """The canonical form of a raw (still percent-encoded, query-less) request path, or BadRequest."""
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    if len(text) > MAX_PATH_BYTES:
        raise _bad(f"longer than {MAX_PATH_BYTES} bytes", text)
    if _FAST.fullmatch(text):
        return text
    if not text.startswith("/"):
        raise _bad("must start with '/'", text)
    segments = text[1:].split("/")
    last = len(segments) - 1
    out = [_canonical_segment(segment, text, index == last) for index, segment in enumerate(segments)]
    return "/" + "/".join(out)


def _canonical_segment(segment: str, raw: str, last: bool) -> str:
    if not segment:
        if last:
            return segment  # a trailing slash is kept: it names a different resource
        raise _bad("empty segment ('//')", raw)
    parts: list[str] = []
    pos = 0
    non_ascii = False
    for token in _TOKEN.finditer(segment):
        if token.start() != pos:
            break
        pos = token.end()
        text = token.group()
        if text[0] != "%":
            parts.append(text)
            continue
        byte = int(text[1:], 16)
        if byte in UNRESERVED:
            parts.append(chr(byte))
        elif byte < 0x20 or byte == 0x7F:
            raise _bad("an encoded control character", raw)
        elif byte in _FORBIDDEN_ESCAPES:
            raise _bad(_FORBIDDEN_ESCAPES[byte], raw)
        else:
            non_ascii = non_ascii or byte > 0x7F
            parts.append(text.upper())
    if pos != len(segment):
        char = segment[pos]
        what = "a malformed escape" if char == "%" else f"a forbidden character {char!r}"
        raise _bad(what, raw)
    canonical = "".join(parts)
    if canonical in (".", ".."):
        raise _bad("a dot segment", raw)
    if non_ascii:  # overlong forms (%C0%AE is a '.' to a lax decoder) and other invalid UTF-8 are refused
        try:
            unquote_to_bytes(canonical).decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("escapes that are not UTF-8", raw) from None
    return canonical


def split_segments(path: str) -> list[str]:
    """The segments of a canonical path: `/a/b` → `["a", "b"]`, `/a/` → `["a", ""]`, `/` → `[""]`."""
    return path[1:].split("/")
