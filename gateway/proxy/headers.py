"""Header hygiene at the proxy boundary: what the client sends is not what the upstream gets, and back.

Request side: hop-by-hop headers, everything the client names in `Connection`, its `Host`, framing
(`Content-Length`; the forwarder frames the body itself), its credentials (`Authorization`, `Cookie`),
method and path overrides (`X-HTTP-Method-Override`, `X-Original-URL`, ...), and client-made
forwarding claims (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`) are dropped. Names are compared
*normalized* (lowercase, `_` and `.` read as `-`) because many upstream frameworks fold `X_Api_Key` into
`X-Api-Key`: a client must not smuggle a second credential in under an alias. `X-Forwarded-*` is then
rebuilt from the real connection (see `forwarded_headers`).

Response side: hop-by-hop and `Connection`-named headers are dropped; everything else is the upstream's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gateway.auth.peer import Network, is_trusted
from gateway.web.asgi import Scope

__all__ = [
    "HOP_BY_HOP",
    "REQUEST_DROPPED",
    "RESPONSE_DROPPED",
    "forwarded_headers",
    "normalize_header_name",
    "normalized_names",
    "sanitize_request_headers",
    "sanitize_response_headers",
]


# RFC 9110 section 7.6.1, plus the non-standard ones proxies still see.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# The ASGI server writes its own Date; a second one from the upstream would make two.
RESPONSE_DROPPED = HOP_BY_HOP | frozenset({"date"})
REQUEST_DROPPED = HOP_BY_HOP | frozenset(
    {
        "host",
        "content-length",
        "authorization",
        "cookie",
        "expect",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-url",  # path overrides some frameworks (IIS, old Symfony/Zend) route by instead of the target
        "x-rewrite-url",
        "forwarded",
        "x-real-ip",
    }
)
_FORWARDED_PREFIX = "x-forwarded-"
_CONNECTION = b"connection"
_FORWARDED_FOR = b"x-forwarded-for"
_FORWARDED_PROTO = b"x-forwarded-proto"
_FORWARDED_HOST = b"x-forwarded-host"
_CLAIMS = frozenset({_FORWARDED_FOR, _FORWARDED_PROTO, _FORWARDED_HOST})


def normalize_header_name(name: str) -> str:
    """The name as an alias-folding upstream reads it: lowercase, `_` and `.` turned into `-`."""
    name = name.lower()
    if "_" in name or "." in name:
        name = name.replace("_", "-").replace(".", "-")
    return name


def normalized_names(names: Iterable[str]) -> frozenset[str]:
    """Normalize a set of header names once (the `strip` argument of `sanitize_request_headers`)."""
    return frozenset(normalize_header_name(name) for name in names)


def _connection_tokens(raw: Iterable[tuple[bytes, bytes]]) -> frozenset[str]:
    tokens: set[str] = set()
    for name, value in raw:
        if name.lower() == _CONNECTION:
            for token in value.decode("latin-1").split(","):
                token = token.strip()
                if token:
                    tokens.add(normalize_header_name(token))
    return frozenset(tokens)


def sanitize_request_headers(raw: Sequence[tuple[bytes, bytes]], strip: frozenset[str]) -> list[tuple[str, str]]:
    """The client's headers minus everything in the module docstring and every name in `strip`.

    `strip` must already be normalized (`normalized_names`): it holds the headers the upstream's
    credential injector adds, so the client's copies and aliases of them never reach the upstream.
    Order and duplicates of the kept headers are preserved.
    """
    kept: list[tuple[str, str]] = []
    named: frozenset[str] = frozenset()
    for name_bytes, value_bytes in raw:
        original = name_bytes.decode("latin-1")
        name = normalize_header_name(original)
        if name in REQUEST_DROPPED or name in strip or name.startswith(_FORWARDED_PREFIX):
            if name == "connection" and not named:
                named = _connection_tokens(raw)
            continue
        kept.append((original, value_bytes.decode("latin-1")))
    if named:
        kept = [(name, value) for name, value in kept if normalize_header_name(name) not in named]
    return kept


def sanitize_response_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's headers for the ASGI server: lowercase names, hop-by-hop and Connection-named ones dropped."""
    kept: list[tuple[bytes, bytes]] = []
    has_connection = False
    for name, value in raw:
        lower = name.lower()
        if lower.decode("latin-1") in RESPONSE_DROPPED:
            has_connection = has_connection or lower == _CONNECTION
            continue
        kept.append((lower, value))
    if has_connection:
        named = _connection_tokens(raw)
        kept = [(name, value) for name, value in kept if normalize_header_name(name.decode("latin-1")) not in named]
    return kept


def forwarded_headers(scope: Scope, trusted_proxies: Sequence[Network]) -> list[tuple[str, str]]:
    """`X-Forwarded-For/-Proto/-Host` describing the real connection.

    The client's own `X-Forwarded-*` values are believed (appended to for `-For`, kept for `-Proto` and
    `-Host`) only when the direct peer is inside `trusted_proxies`; otherwise they are someone's claim
    and are replaced. `sanitize_request_headers` drops the client's copies either way.
    """
    client = scope.get("client")
    peer: str | None = client[0] if client else None
    trusted = bool(trusted_proxies) and peer is not None and is_trusted(peer, trusted_proxies)
    host, claims = _host_and_claims(scope["headers"], trusted)
    prior_for = claims.get(_FORWARDED_FOR, [])
    chain = [*prior_for, peer] if peer is not None else prior_for
    out: list[tuple[str, str]] = []
    if chain:
        out.append(("X-Forwarded-For", ", ".join(chain)))
    prior_proto = claims.get(_FORWARDED_PROTO)
    out.append(("X-Forwarded-Proto", prior_proto[0] if prior_proto else scope.get("scheme", "http")))
    prior_host = claims.get(_FORWARDED_HOST)
    forwarded_host = prior_host[0] if prior_host else host
    if forwarded_host:
        out.append(("X-Forwarded-Host", forwarded_host))
    return out


def _host_and_claims(
    headers: Iterable[tuple[bytes, bytes]], trusted: bool
) -> tuple[str | None, dict[bytes, list[str]]]:
    """The (last) `Host`, and when the peer is `trusted` the non-empty `X-Forwarded-For/-Proto/-Host`
    values it sent, by header name, in order."""
    host: str | None = None
    claims: dict[bytes, list[str]] = {}
    for name, value in headers:
        if name == b"host":
            host = value.decode("latin-1")
        elif trusted and name in _CLAIMS:
            text = value.decode("latin-1").strip()
            if text:
                claims.setdefault(name, []).append(text)
    return host, claims
