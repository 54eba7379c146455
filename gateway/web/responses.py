"""Pure-ASGI response helpers: JSON bodies and SMSGate-shaped errors without Starlette objects."""

from __future__ import annotations

import json
from collections.abc import Mapping

from gateway.errors import HTTPError
from gateway.web.asgi import Send

__all__ = ["error_body", "send_error", "send_json"]

_JSON = (b"content-type", b"application/json")


async def send_json(send: Send, status: int, body: object, headers: Mapping[str, str] | None = None) -> None:
    """Answer with a JSON document; `body=None` sends an empty body (204)."""
    payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    raw_headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()]
    if body is not None:
        raw_headers.append(_JSON)
    raw_headers.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


def error_body(exc: HTTPError) -> dict[str, str]:
    return {"message": exc.message}


async def send_error(send: Send, exc: HTTPError) -> None:
    """SMSGate's error shape `{"message": ...}` with the error's status and headers (RFC 6750 challenges)."""
    await send_json(send, exc.status, error_body(exc), exc.headers)
