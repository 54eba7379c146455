"""Pure-ASGI response helpers: JSON bodies and SMSGate-shaped errors without Starlette objects."""

from __future__ import annotations

import json
from collections.abc import Mapping

from gateway.errors import HTTPError
from gateway.web.asgi import Scope, Send

__all__ = ["error_body", "send_error", "send_json", "send_websocket_error"]

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


def error_body(exc: HTTPError) -> dict[str, object]:
    return {"message": exc.message, **exc.extra} if exc.extra else {"message": exc.message}


async def send_error(send: Send, exc: HTTPError) -> None:
    """SMSGate's error shape `{"message": ...}` with the error's status and headers (RFC 6750 challenges)."""
    await send_json(send, exc.status, error_body(exc), exc.headers)


DENIAL_EXTENSION = "websocket.http.response"


async def send_websocket_error(scope: Scope, send: Send, exc: HTTPError) -> int:
    """Refuse a websocket handshake before accepting it; returns the HTTP status the client sees.

    With the server's denial-response extension (uvicorn has it) the client gets the same answer as an
    HTTP request would: the status, the RFC 6750 challenge and `{"message": ...}`. Without it the
    socket is closed before it is accepted, which servers answer with a bare 403.
    """
    if DENIAL_EXTENSION not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1008})
        return 403
    payload = json.dumps(error_body(exc), separators=(",", ":")).encode()
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in exc.headers.items()]
    headers += [_JSON, (b"content-length", str(len(payload)).encode())]
    await send({"type": "websocket.http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": payload})
    return exc.status
