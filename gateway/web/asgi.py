"""The ASGI types smsguard speaks, spelled once (no Starlette dependency on the hot path)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send", "header_values", "read_body", "run_lifespan"]

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
    from gateway.errors import PayloadTooLarge

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


async def run_lifespan(
    receive: Receive, send: Send, startup: Callable[[], Awaitable[None]], shutdown: Callable[[], Awaitable[None]]
) -> None:
    """Answer the ASGI lifespan protocol with `startup` and `shutdown`.

    A failed start-up is reported to the server (which then exits) with the error's type, plus its text
    only for smsguard's own errors, whose messages never carry secrets.
    """
    from gateway.errors import SmsguardError

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await startup()
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}" if isinstance(exc, SmsguardError) else type(exc).__name__
                await send({"type": "lifespan.startup.failed", "message": text})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
