"""Where an authorized request goes upstream: the request target for a canonical path under a mount.

The proxy sends exactly `upstream_target(...)` to the configured host; the policy tools show the same
target as a full URL (`upstream_url`), so `gateway policy explain` cannot disagree with the proxy.
Both are pure functions of the configured base, the rule's mount and the canonical path, kept here,
below the proxy, so the policy tools need not import it.
"""

from __future__ import annotations

import re

from yarl import URL

from gateway.errors import BadRequest
from gateway.policy.paths import UNRESERVED

__all__ = ["upstream_target", "upstream_url"]

# A canonical path relative to the mount: "" or /segment/... (a trailing slash allowed), pchar minus ";".
_SEGMENT = r"(?:[A-Za-z0-9\-._~!$&'()*+,=:@]|%[0-9A-F]{2})+"
_RELATIVE_PATH = re.compile(rf"(?:/{_SEGMENT})*/?")
_ESCAPE = re.compile(r"%[0-9A-F]{2}")
# Canonical paths keep only escapes that must stay escaped: never an unreserved byte (%2E is a dot an
# upstream may normalize), a control byte, '/', a backslash or ';'.
_CANONICAL_ESCAPES = frozenset(
    f"%{byte:02X}" for byte in range(0x20, 0x100) if byte not in UNRESERVED and byte not in (0x2F, 0x3B, 0x5C, 0x7F)
)
_QUERY = re.compile(r"[!\"$-~]*")  # printable ASCII without '#' or space


def _bad_target(what: str) -> BadRequest:
    return BadRequest(f"cannot forward: {what}", code="bad_target")


def upstream_target(base_path: str, mount: str, canonical_path: str, raw_query: str) -> str:
    """The origin-form request target for a canonical request path under `mount`, below `base_path`.

    The path must lie under `mount` and be canonical (see `gateway.policy.paths.canonical_path`); the query must be
    printable ASCII without `#` or spaces. Anything else is a BadRequest, never a different target.
    """
    if not mount:
        relative = canonical_path
    elif canonical_path == mount:
        relative = ""
    elif canonical_path.startswith(mount) and canonical_path[len(mount) : len(mount) + 1] == "/":
        relative = canonical_path[len(mount) :]
    else:
        raise _bad_target("the path is outside the route's mount")
    if not _RELATIVE_PATH.fullmatch(relative) or (not mount and not relative):
        raise _bad_target("the path is not canonical")
    if "/." in relative and any(segment in (".", "..") for segment in relative.split("/")):
        raise _bad_target("the path has dot segments")
    if "%" in relative and not all(escape in _CANONICAL_ESCAPES for escape in _ESCAPE.findall(relative)):
        raise _bad_target("the path has escapes that canonical paths never keep")
    if not _QUERY.fullmatch(raw_query):
        raise BadRequest("the query string must be printable ASCII without spaces or '#'", code="bad_query")
    path = base_path.rstrip("/") + relative or "/"
    return f"{path}?{raw_query}" if raw_query else path


def upstream_url(base: URL, mount: str, canonical_path: str, raw_query: str) -> URL:
    """The full upstream URL: `upstream_target` on `base`'s scheme, host and port (for tools and tests)."""
    path, _, query = upstream_target(base.raw_path, mount, canonical_path, raw_query).partition("?")
    return URL.build(scheme=base.scheme, authority=base.raw_authority, path=path, query_string=query, encoded=True)
