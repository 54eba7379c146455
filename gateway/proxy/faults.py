"""What the forwarder answers when something fails: the client-facing error for each upstream failure.

Before the response started, an `http1.UpstreamError` becomes an SMSGate-shaped error (`upstream_error`):
502 refused, reset or garbled, 504 on a timeout. After it started, the client connection is dropped
(`ResponseAborted`), never answered twice. A client that left (`ClientGone`) gets no answer at all.
Messages name what failed, never a URL, header or credential.
"""

from __future__ import annotations

from gateway.errors import BadGateway, GatewayTimeout, HTTPError
from gateway.proxy.http1 import ConnectFailed, ConnectTimeout, InvalidRequest, ProtocolError, ReadTimeout, UpstreamError

__all__ = ["ClientGone", "ResponseAborted", "upstream_error"]


class ResponseAborted(Exception):
    """The upstream failed after the response began: the client connection is dropped, not answered twice."""

    code = "upstream_aborted"


class ClientGone(Exception):
    """The client disconnected; there is nobody to answer."""


def upstream_error(exc: UpstreamError) -> HTTPError:
    """The client-facing error for a failure before the response started (never the URL or a header)."""
    if isinstance(exc, ConnectTimeout):
        return GatewayTimeout("connecting to the upstream timed out", code="upstream_connect_timeout")
    if isinstance(exc, ReadTimeout):
        return GatewayTimeout("the upstream did not answer in time", code="upstream_read_timeout")
    if isinstance(exc, ConnectFailed):
        return BadGateway("could not connect to the upstream", code="upstream_unreachable")
    if isinstance(exc, ProtocolError):
        return BadGateway("the upstream sent an invalid response", code="upstream_protocol_error")
    if isinstance(exc, InvalidRequest):
        return BadGateway("the request could not be written to the upstream", code="upstream_bad_request")
    return BadGateway("the upstream closed the connection without answering", code="upstream_reset")
