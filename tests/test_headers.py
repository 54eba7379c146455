"""headers.py: what crosses the proxy boundary in each direction, and the rebuilt X-Forwarded-*."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from gateway.proxy.headers import (
    HOP_BY_HOP,
    forwarded_headers,
    normalize_header_name,
    normalized_names,
    sanitize_request_headers,
    sanitize_response_headers,
)

NONE: frozenset[str] = frozenset()


def raw(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in pairs]


def names(headers: list[tuple[str, str]]) -> list[str]:
    return [name.lower() for name, _ in headers]


@pytest.mark.parametrize(
    ("name", "normalized"),
    [
        ("X-API-KEY", "x-api-key"),
        ("x_api_key", "x-api-key"),
        ("X.Api.Key", "x-api-key"),
        ("x-api_key", "x-api-key"),
        ("Authorization", "authorization"),
    ],
)
def test_normalize_header_name(name: str, normalized: str) -> None:
    """Case, `_` and `.` fold the way alias-folding upstream frameworks fold them."""
    assert normalize_header_name(name) == normalized


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_request_hop_by_hop_dropped(name: str) -> None:
    """Every hop-by-hop header is dropped from requests."""
    kept = sanitize_request_headers(raw((name, "x"), ("accept", "*/*")), NONE)
    assert kept == [("accept", "*/*")]


@pytest.mark.parametrize(
    "name",
    [
        "host",
        "content-length",
        "authorization",
        "cookie",
        "expect",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-real-ip",
        # aliases of the same, as folding frameworks read them
        "x_forwarded_for",
        "X.Forwarded.Host",
        "x_http_method_override",
        "transfer_encoding",
        "proxy.authorization",
    ],
)
def test_request_sensitive_headers_dropped(name: str) -> None:
    """Client credentials, framing, method overrides and forwarding claims never reach the upstream."""
    kept = sanitize_request_headers(raw((name, "x"), ("content-type", "application/json")), NONE)
    assert kept == [("content-type", "application/json")]


def test_request_connection_named_headers_dropped() -> None:
    """Every header named in any Connection header is dropped, whatever its case, spacing or alias."""
    headers = raw(
        ("x-keep", "1"),
        ("Connection", "X-Secret , x_other"),
        ("x-secret", "s"),
        ("x-other", "o"),
        ("connection", "close, X-Third"),
        ("X-Third", "t"),
        ("x-after", "2"),
    )
    assert sanitize_request_headers(headers, NONE) == [("x-keep", "1"), ("x-after", "2")]


@pytest.mark.parametrize("alias", ["X-API-KEY", "x-api-key", "x_api_key", "X.Api.Key", "X_API.key"])
def test_request_injected_aliases_dropped(alias: str) -> None:
    """The client's copy of an injected header is dropped under every alias spelling."""
    strip = normalized_names({"X-API-KEY"})
    kept = sanitize_request_headers(raw((alias, "client-value"), ("accept", "*/*")), strip)
    assert kept == [("accept", "*/*")]


def test_request_order_case_and_duplicates_kept() -> None:
    """Kept headers keep their order, duplicates and values (decoded as latin-1)."""
    headers = raw(("accept", "a"), ("x-dup", "1"), ("user-agent", "ua"), ("x-dup", "2"), ("x-latin", "caf\xe9"))
    assert sanitize_request_headers(headers, NONE) == [
        ("accept", "a"),
        ("x-dup", "1"),
        ("user-agent", "ua"),
        ("x-dup", "2"),
        ("x-latin", "caf\xe9"),
    ]


def test_response_hop_by_hop_and_connection_named_dropped() -> None:
    """Responses lose hop-by-hop and Connection-named headers; names are lowercased for ASGI."""
    headers = raw(
        ("Content-Type", "application/json"),
        ("Connection", "keep-alive, X-Hop"),
        ("Keep-Alive", "timeout=5"),
        ("X-Hop", "1"),
        ("Transfer-Encoding", "chunked"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Location", "/x"),
    )
    assert sanitize_response_headers(headers) == [
        (b"content-type", b"application/json"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"location", b"/x"),
    ]


def test_response_content_length_kept() -> None:
    """Bytes pass unchanged, so the upstream's Content-Length stays true."""
    assert sanitize_response_headers(raw(("Content-Length", "12"))) == [(b"content-length", b"12")]


def scope(
    client: tuple[str, int] | None = ("203.0.113.7", 5000), scheme: str = "http", *headers: tuple[str, str]
) -> dict[str, Any]:
    return {"type": "http", "client": client, "scheme": scheme, "headers": raw(*headers)}


TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


def test_forwarded_from_real_connection() -> None:
    """X-Forwarded-* describe the real peer, scheme and Host."""
    headers = forwarded_headers(scope(("203.0.113.7", 5000), "https", ("host", "gw.example")), ())
    assert headers == [
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "gw.example"),
    ]


def test_forwarded_client_claims_ignored_from_untrusted_peer() -> None:
    """An untrusted peer's X-Forwarded-* values are replaced, not appended to."""
    s = scope(
        ("203.0.113.7", 5000),
        "http",
        ("host", "gw.example"),
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
    )
    assert dict(forwarded_headers(s, TRUSTED)) == {
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": "gw.example",
    }


def test_forwarded_client_claims_used_from_trusted_proxy() -> None:
    """A trusted proxy's chain is appended to; its proto and host are kept."""
    s = scope(
        ("10.1.2.3", 5000),
        "http",
        ("host", "internal:8080"),
        ("x-forwarded-for", "198.51.100.1"),
        ("x-forwarded-for", "10.9.9.9"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "api.example"),
    )
    assert dict(forwarded_headers(s, TRUSTED)) == {
        "X-Forwarded-For": "198.51.100.1, 10.9.9.9, 10.1.2.3",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "api.example",
    }


def test_forwarded_trusted_ipv6_peer() -> None:
    """IPv6 peers are matched against IPv6 networks."""
    s = scope(("fd00::5", 5000), "http", ("x-forwarded-for", "2001:db8::1"))
    assert dict(forwarded_headers(s, TRUSTED))["X-Forwarded-For"] == "2001:db8::1, fd00::5"


@pytest.mark.parametrize(("client", "expected"), [(None, None), (("not-an-ip", 0), "not-an-ip")])
def test_forwarded_without_ip_peer(client: tuple[str, int] | None, expected: str | None) -> None:
    """Without an IP peer (unix socket) nothing is trusted: the client's chain is never used."""
    s = scope(client, "http", ("x-forwarded-for", "1.2.3.4"), ("host", "h"))
    assert dict(forwarded_headers(s, TRUSTED)).get("X-Forwarded-For") == expected


def test_forwarded_without_host() -> None:
    """No Host (HTTP/1.0): no X-Forwarded-Host."""
    assert "X-Forwarded-Host" not in names(forwarded_headers(scope(), ()))


def test_upstream_date_is_dropped_so_the_client_gets_one() -> None:
    """The ASGI server adds its own Date; the upstream's copy is dropped so the client never sees two."""
    kept = sanitize_response_headers([(b"Date", b"Sun, 22 Nov 2026 00:00:00 GMT"), (b"X-Id", b"1")])
    assert kept == [(b"x-id", b"1")]
