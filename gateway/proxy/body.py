"""The client's request body on its way to the upstream: framing checked, buffered when small, else streamed.

- `declared_length`: the client's Content-Length; conflicting or malformed framing (two different
  lengths, a length beside Transfer-Encoding, not digits) is a 400 `bad_framing` (request smuggling);
- `ClientBody.prepare`: a body up to `retry_buffer_bytes` is read whole first (replayable, and sent
  with a Content-Length even when the client chunked it), a bigger one is streamed with the client's
  Content-Length (chunked only when the client chunked); past `max_body_bytes` it is a 413, and a client
  that leaves mid-body is `ClientGone`. Once the whole body is read, `consumed` is called (the forwarder
  then listens for the client leaving).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from gateway.errors import BadRequest, PayloadTooLarge
from gateway.proxy.faults import ClientGone
from gateway.web.asgi import Receive

__all__ = ["Body", "ClientBody", "declared_length"]

Body = bytes | AsyncIterator[bytes] | None  # what is sent: all of it, a stream, or nothing

_CONTENT_LENGTH = b"content-length"
_TRANSFER_ENCODING = b"transfer-encoding"


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The declared body length; conflicting or malformed framing is a 400 (request smuggling)."""
    value: bytes | None = None
    chunked = False
    for name, raw in headers:
        if name == _CONTENT_LENGTH:
            if value is not None and raw != value:
                raise BadRequest("conflicting Content-Length headers", code="bad_framing")
            value = raw
        elif name == _TRANSFER_ENCODING:
            chunked = True
    if value is None:
        return None
    if chunked:
        raise BadRequest("both Content-Length and Transfer-Encoding", code="bad_framing")
    if not value.isdigit() or len(value) > 15:
        raise BadRequest("invalid Content-Length", code="bad_framing")
    return int(value)


class ClientBody:
    """One request's body, read from the client's `receive` (`received`: the bytes read so far)."""

    __slots__ = ("buffer_bytes", "consumed", "max_body", "receive", "received")

    def __init__(self, receive: Receive, max_body: int, buffer_bytes: int, consumed: Callable[[], None]) -> None:
        self.receive = receive
        self.max_body = max_body
        self.buffer_bytes = buffer_bytes
        self.consumed = consumed
        self.received = 0

    def too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"the request body is larger than {self.max_body} bytes")

    async def prepare(self, length: int | None, headers: list[tuple[str, str]]) -> Body:
        """The body to send for a declared `length`; adds its Content-Length to `headers` when it has one."""
        if length is not None and length > self.buffer_bytes:
            headers.append(("Content-Length", str(length)))
            return self.stream(b"")
        prefix, more = await self.read_prefix()
        if more:
            return self.stream(prefix)  # chunked and bigger than the buffer: stays chunked
        if prefix or length is not None:
            headers.append(("Content-Length", str(len(prefix))))
        return prefix or None

    async def read_prefix(self) -> tuple[bytes, bool]:
        """Read the body up to the buffer size: (bytes read, whether more follows); 413 past the maximum."""
        receive = self.receive
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientGone
            chunk: bytes = message.get("body", b"")
            more: bool = message.get("more_body", False)
            if chunk:
                size += len(chunk)
                self.received = size
                if size > self.max_body:
                    raise self.too_large()
                chunks.append(chunk)
            if not more or size > self.buffer_bytes:
                return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), more

    async def stream(self, prefix: bytes) -> AsyncIterator[bytes]:
        """Feed the rest of the client's body to the upstream as it arrives, enforcing the maximum size."""
        receive = self.receive
        size = len(prefix)
        if prefix:
            yield prefix
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientGone
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            self.received = size
            if size > self.max_body:
                raise self.too_large()
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                break
        self.consumed()
