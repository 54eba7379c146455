"""The ASGI types smsguard speaks, spelled once (no Starlette dependency on the hot path)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send", "header_values", "read_body"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def header_values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """Every value of header `name` (lowercase bytes), in order."""
    return [value for key, value in headers if key == name]


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing (PayloadTooLarge) past `limit` bytes; for small control-plane bodies."""
    from .errors import PayloadTooLarge

    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
