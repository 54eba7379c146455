"""Path canonicalization: the one spelling that is both authorized and forwarded."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import BadRequest
from gateway.policy.paths import MAX_PATH_BYTES, canonical_path, split_segments

ACCEPTED = [
    ("/", "/"),
    ("/3rdparty/v1/messages", "/3rdparty/v1/messages"),
    ("/messages/", "/messages/"),
    ("/a/b/c/", "/a/b/c/"),
    ("/messages/abc-DEF_123~x", "/messages/abc-DEF_123~x"),
    ("/x/!$&'()*+,=:@", "/x/!$&'()*+,=:@"),
    ("/.well-known/jwks.json", "/.well-known/jwks.json"),
    ("/a/...", "/a/..."),
    ("/a/.x", "/a/.x"),
    ("/a/x.", "/a/x."),
    ("/%6Dessages", "/messages"),
    ("/3rdparty/v1/%6d%65ssages", "/3rdparty/v1/messages"),
    ("/a/%41%5a%30%2D%5F%7E", "/a/AZ0-_~"),
    ("/a/%2ex", "/a/.x"),
    ("/a/%c3%a9", "/a/%C3%A9"),
    ("/a/%C3%A9", "/a/%C3%A9"),
    ("/a/%20b", "/a/%20b"),
    ("/a/%3f%23", "/a/%3F%23"),
    ("/a/%25", "/a/%25"),
    ("/a/%3a%40", "/a/%3A%40"),
    ("/a/%7e", "/a/~"),
    ("/messages/inbox/export", "/messages/inbox/export"),
]

REJECTED = [
    ("", "must start with '/'"),
    ("messages", "must start with '/'"),
    ("http://evil.example/3rdparty/v1/messages", "must start with '/'"),
    ("*", "must start with '/'"),
    ("//evil.example/x", "empty segment"),
    ("/a//b", "empty segment"),
    ("/a/b//", "empty segment"),
    ("/a\\b", "forbidden character '\\\\'"),
    ("/a;b", "forbidden character ';'"),
    ("/messages;jsessionid=1", "forbidden character ';'"),
    ("/a b", "forbidden character ' '"),
    ("/a\tb", "forbidden character '\\t'"),
    ("/a\x00b", "forbidden character '\\x00'"),
    ("/a\x7fb", "forbidden character '\\x7f'"),
    ("/a?b", "forbidden character '?'"),
    ("/a#b", "forbidden character '#'"),
    *[(f"/a{char}b", f"forbidden character {char!r}") for char in '"<>{}|^`[]'],
    ("/caf\u00e9", "forbidden character"),
    ("/a/%", "malformed escape"),
    ("/a/%4", "malformed escape"),
    ("/a/%zz", "malformed escape"),
    ("/a/%4g", "malformed escape"),
    ("/a/x%", "malformed escape"),
    ("/a%2Fb", "encoded '/'"),
    ("/a%2fb", "encoded '/'"),
    ("/a%5Cb", "encoded '\\'"),
    ("/a%5cb", "encoded '\\'"),
    ("/a%3Bb", "encoded ';'"),
    ("/a%3bb", "encoded ';'"),
    ("/a%00b", "encoded control character"),
    ("/a%0Ab", "encoded control character"),
    ("/a%0db", "encoded control character"),
    ("/a%1Fb", "encoded control character"),
    ("/a%7Fb", "encoded control character"),
    ("/.", "dot segment"),
    ("/..", "dot segment"),
    ("/a/./b", "dot segment"),
    ("/a/../b", "dot segment"),
    ("/a/..", "dot segment"),
    ("/a/../", "dot segment"),
    ("/a/%2e/b", "dot segment"),
    ("/a/%2E/b", "dot segment"),
    ("/a/%2e%2e/b", "dot segment"),
    ("/a/%2E%2E/b", "dot segment"),
    ("/a/%2e%2E", "dot segment"),
    ("/a/.%2e/b", "dot segment"),
    ("/a/%2e./b", "dot segment"),
    ("/a/.%2E", "dot segment"),
]


class TestCanonicalPath:
    @pytest.mark.parametrize(("raw", "expected"), ACCEPTED)
    def test_accepts_and_normalizes(self, raw: str, expected: str) -> None:
        """Canonical paths pass through; escaped unreserved characters decode, other escapes uppercase."""
        assert canonical_path(raw.encode("latin-1")) == expected
        assert canonical_path(raw) == expected

    @pytest.mark.parametrize(("raw", "reason"), REJECTED)
    def test_rejects(self, raw: str, reason: str) -> None:
        """Every spelling two parsers could read differently is a 400 `bad_path`."""
        with pytest.raises(BadRequest) as info:
            canonical_path(raw.encode("utf-8"))
        assert info.value.status == 400
        assert info.value.code == "bad_path"
        assert reason in info.value.message

    @pytest.mark.parametrize("raw", [b"/caf\xc3\xa9", b"/a\xffb", b"/\x80"])
    def test_rejects_non_ascii_bytes(self, raw: bytes) -> None:
        """Raw bytes outside ASCII are refused, not decoded."""
        with pytest.raises(BadRequest, match="forbidden character"):
            canonical_path(raw)

    def test_length_limit(self) -> None:
        """A path of 4096 bytes is accepted, one byte more is refused."""
        longest = "/" + "a" * (MAX_PATH_BYTES - 1)
        assert canonical_path(longest.encode()) == longest
        with pytest.raises(BadRequest, match="longer than 4096 bytes"):
            canonical_path((longest + "a").encode())

    def test_message_echoes_only_a_prefix(self) -> None:
        """Error messages quote at most a short prefix of the input."""
        raw = "/" + "x" * 500 + "/../secret-" + "y" * 500
        with pytest.raises(BadRequest) as info:
            canonical_path(raw)
        assert len(info.value.message) < 100
        assert "secret" not in info.value.message

    @given(st.text(alphabet="/aZ.%2eEfF0;\\ ~-:", max_size=24))
    def test_output_is_a_fixed_point(self, raw: str) -> None:
        """Whatever is accepted comes out canonical: idempotent, no dot or empty segments, uppercase hex."""
        try:
            path = canonical_path(raw)
        except BadRequest:
            return
        assert canonical_path(path) == path
        segments = split_segments(path)
        assert all(segment not in (".", "..") for segment in segments)
        assert all(segments[:-1])
        assert re.search(r"%[0-9A-F]?[a-f]", path) is None


class TestSplitSegments:
    @pytest.mark.parametrize(
        ("path", "segments"),
        [("/", [""]), ("/a", ["a"]), ("/a/b", ["a", "b"]), ("/a/", ["a", ""]), ("/a/{id}", ["a", "{id}"])],
    )
    def test_split(self, path: str, segments: list[str]) -> None:
        """Segments follow the leading slash; a trailing slash leaves an empty last segment."""
        assert split_segments(path) == segments
