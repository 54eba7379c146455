"""The upstream's answer on its way back: headers rewritten for the client, credential errors caught.

- `response_headers`: the upstream's headers sanitized (`headers.py`), a `Location` into the upstream's
  base pointed back at the policy's mount (`rewrite_location`), and the upstream's own `X-Request-ID`
  dropped when the request is observed (the observer adds the gateway's);
- `inspect`: a provider that reports bad credentials inside a success (BSG's `200 {"error": 2}`, the
  injector's `credential_error`) is caught: a small JSON answer with the rule's status (at most
  `INSPECT_BYTES`, gzip/deflate undone for the check only) is read whole; a match is logged as
  `upstream.credential_failure` and becomes a 502 `upstream_credentials`, never a success. What was read
  is handed back, to be relayed unchanged.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import TYPE_CHECKING

from yarl import URL

from gateway.errors import BadGateway
from gateway.proxy.faults import upstream_error
from gateway.proxy.headers import sanitize_response_headers
from gateway.proxy.http1 import Response, UpstreamError

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from gateway.proxy.credentials import CredentialErrorRule

__all__ = ["INSPECT_BYTES", "inspect", "response_headers", "rewrite_location"]

INSPECT_BYTES = 64 * 1024  # the largest answer read whole to look for a provider's credential error

_ABSOLUTE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.DOTALL)
_PATH_END = re.compile(r"[?#]")
_JSON_TYPE = re.compile(r"\s*application/(?:[\w.+-]*\+)?json\s*(?:;.*)?", re.IGNORECASE | re.DOTALL)


def rewrite_location(location: str, base: URL, mount: str) -> str:
    """Point a `Location` into the upstream base (absolute URL on the same origin, or an absolute path) at the mount.

    SMSGate answers `202` with `Location: /3rdparty/v1/messages/<id>`; a client must follow it through the
    gateway. Locations elsewhere are left alone (the gateway never follows redirects itself).
    """
    match = _ABSOLUTE.fullmatch(location)
    if match is not None:
        scheme, authority, target = match.groups()
        try:
            origin = URL.build(scheme=scheme.lower(), authority=authority, encoded=True)
            same = (origin.scheme, origin.host, origin.port) == (base.scheme, base.host, base.port)
        except (ValueError, TypeError):
            return location
        if not same:
            return location
        target = target or "/"
    elif location.startswith("/") and not location.startswith("//"):
        target = location
    else:
        return location
    end = _PATH_END.search(target)
    path, rest = (target[: end.start()], target[end.start() :]) if end else (target, "")
    base_path = base.raw_path.rstrip("/")
    if path == base_path:
        relative = ""
    elif path.startswith(base_path + "/"):
        relative = path[len(base_path) :]
    else:
        return location
    return (mount + relative or "/") + rest


def response_headers(response: Response, base: URL, mount: str, *, observed: bool) -> list[tuple[bytes, bytes]]:
    """The upstream's headers for the client: sanitized, `Location` rewritten, its `X-Request-ID` dropped
    when `observed` (the observer adds the gateway's own)."""
    headers = sanitize_response_headers(response.raw_headers)
    upstream_id = False
    for index, (name, value) in enumerate(headers):
        if name == b"location":
            location = rewrite_location(value.decode("latin-1"), base, mount)
            headers[index] = (name, location.encode("latin-1"))
        elif name == b"x-request-id":
            upstream_id = True
    if upstream_id and observed:
        headers = [header for header in headers if header[0] != b"x-request-id"]
    return headers


async def inspect(
    response: Response, check: CredentialErrorRule, log: FilteringBoundLogger, upstream: str
) -> tuple[bytes, bool]:
    """Read a small JSON answer whole to look for the provider's credential error.

    Returns the bytes read and whether that is the whole body, to be relayed unchanged. Answers with
    another status, another type, or over `INSPECT_BYTES` pass through unread.
    """
    if response.status != check.status or not _JSON_TYPE.fullmatch(response.header(b"content-type") or ""):
        return b"", False
    if (response.content_length or 0) > INSPECT_BYTES:
        return b"", False
    data = await _read_at_most(response, INSPECT_BYTES)
    if len(data) > INSPECT_BYTES:
        return data, False
    try:
        document = json.loads(_decoded(data, response.header(b"content-encoding") or ""))
    except (ValueError, zlib.error):
        return data, True
    if check.matches(response.status, document):
        log.error(
            "upstream.credential_failure",
            upstream=upstream,
            cause="credential_error_answer",
            upstream_status=response.status,
            field=check.field,
            equals=check.equals,
        )
        raise BadGateway("upstream rejected the gateway's credentials", code="upstream_credentials")
    return data, True


async def _read_at_most(response: Response, limit: int) -> bytes:
    """The body until its end or until more than `limit` bytes were read."""
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit:
            chunk = await response.read()
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except UpstreamError as exc:
        raise upstream_error(exc) from None
    return b"".join(chunks)


def _decoded(data: bytes, encoding: str) -> bytes:
    """The body without a gzip/deflate Content-Encoding (for inspection only), at most `INSPECT_BYTES`."""
    coding = encoding.strip().lower()
    if coding in ("", "identity"):
        return data
    if coding not in ("gzip", "x-gzip", "deflate"):
        raise ValueError(f"cannot inspect {coding!r} content")
    wbits = 47 if coding != "deflate" else 15  # 47: gzip or zlib header, auto-detected
    inflater = zlib.decompressobj(wbits)
    plain = inflater.decompress(data, INSPECT_BYTES + 1)
    if len(plain) > INSPECT_BYTES:
        raise ValueError("too large to inspect")
    return plain
