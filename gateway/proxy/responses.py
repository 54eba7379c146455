"""The upstream's answer on its way back: headers rewritten for the client, credential errors caught.

- `response_headers`: the upstream's headers sanitized (`headers.py`), a `Location` into the upstream's
  base pointed back at the policy's mount and any other dropped (`rewrite_location`), the headers the
  upstream's credentials say a client must not see dropped (`Credentials.response_drop`: `Set-Cookie`
  and `WWW-Authenticate` wherever the gateway injects credentials), and the upstream's own
  `X-Request-ID` dropped when the request is observed (the observer adds the gateway's);
- `inspect`: a provider that reports bad credentials inside a success (BSG's `200 {"error": 2}`, the
  injector's `credential_error`) is caught: a small JSON answer with the rule's status (at most
  `INSPECT_BYTES`, gzip/deflate undone for the check only) is read whole; a match is logged as
  `upstream.credential_failure` and becomes a 502 `upstream_credentials`, never a success. What was read
  is handed back, to be relayed unchanged;
- `credentials_refused`: an upstream status the injector names in `refused` (401 wherever the gateway
  injects credentials) is the provider refusing the gateway's credentials: a logged 502, never the
  client's 401.
"""

from __future__ import annotations

import re
import zlib
from typing import TYPE_CHECKING

from yarl import URL

from gateway.errors import BadGateway
from gateway.proxy.faults import upstream_error
from gateway.proxy.headers import sanitize_response_headers
from gateway.proxy.http1 import Response, UpstreamError
from gateway.web import jsonbody

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from gateway.proxy.credentials import CredentialErrorRule

__all__ = ["INSPECT_BYTES", "credentials_refused", "inspect", "response_headers", "rewrite_location"]

INSPECT_BYTES = 64 * 1024  # the largest answer read whole to look for a provider's credential error

_ABSOLUTE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.DOTALL)
_PATH_END = re.compile(r"[?#]")
_LOCATIONS = frozenset({b"location", b"content-location"})
_JSON_TYPE = re.compile(r"\s*application/(?:[\w.+-]*\+)?json\s*(?:;.*)?", re.IGNORECASE | re.DOTALL)


def rewrite_location(location: str, base: URL, mount: str) -> str | None:
    """A `Location` for the client: one into the upstream base points at the mount; any other is None (dropped).

    SMSGate answers `202` with `Location: /3rdparty/v1/messages/<id>`; a client must follow it through the
    gateway. An absolute URL on the upstream's origin or an absolute path, under the base path, is rewritten
    onto the mount. Everything else would reveal where the upstream lives (its address, a path outside
    the base, another host it redirects to) or resolve against the gateway to somewhere no rule covers
    (relative references, scheme-relative `//host`): it is dropped, and the gateway never follows it.
    """
    match = _ABSOLUTE.fullmatch(location)
    if match is not None:
        scheme, authority, target = match.groups()
        try:
            origin = URL.build(scheme=scheme.lower(), authority=authority, encoded=True)
            same = (origin.scheme, origin.host, origin.port) == (base.scheme, base.host, base.port)
        except (ValueError, TypeError):
            return None
        if not same:
            return None
        target = target or "/"
    elif location.startswith("/") and not location.startswith("//"):
        target = location
    else:
        return None
    end = _PATH_END.search(target)
    path, rest = (target[: end.start()], target[end.start() :]) if end else (target, "")
    base_path = base.raw_path.rstrip("/")
    if path == base_path:
        relative = ""
    elif path.startswith(base_path + "/"):
        relative = path[len(base_path) :]
    else:
        return None
    return (mount + relative or "/") + rest


def response_headers(
    response: Response, base: URL, mount: str, *, observed: bool, drop: frozenset[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
    """The upstream's headers for the client: sanitized, minus `drop` (the injector's `response_drop`),
    `Location`/`Content-Location` rewritten or dropped (`rewrite_location`), its `X-Request-ID` dropped
    when `observed` (the observer adds the gateway's own)."""
    headers: list[tuple[bytes, bytes]] = []
    for name, value in sanitize_response_headers(response.raw_headers):
        if name in drop or (name == b"x-request-id" and observed):
            continue
        if name in _LOCATIONS:
            location = rewrite_location(value.decode("latin-1"), base, mount)
            if location is None:
                continue
            value = location.encode("latin-1")
        headers.append((name, value))
    return headers


def credentials_refused(status: int, log: FilteringBoundLogger, upstream: str, kind: str) -> BadGateway:
    """The 502 for an upstream 401/403 caused by the gateway's own credentials (logged as such).

    The client sent no credential upstream (its own are always stripped): passing the 401 on would tell
    it to re-authenticate, and a client following SMSGate's advice would mint gateway tokens in a loop.
    """
    log.error(
        "upstream.credential_failure",
        upstream=upstream,
        cause="credentials_refused",
        credentials=kind,
        upstream_status=status,
    )
    return BadGateway(
        f"the upstream refused the gateway's own credentials (HTTP {status}); the client's token is not the "
        "problem: the gateway's operator must fix the upstream credentials",
        code="upstream_credentials",
    )


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
        document = jsonbody.loads(_decoded(data, response.header(b"content-encoding") or ""))
    except (ValueError, zlib.error):
        return data, True
    if check.matches(response.status, document):
        log.error(
            "upstream.credential_failure",
            upstream=upstream,
            cause="credential_error_answer",
            upstream_status=response.status,
            rule=check.describe(),
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
