"""Refusals in the provider's own error shape, on mounts whose policy enables a key slot.

A client written for the provider reads the provider's error document; the status stays the gateway's
(401, 403, ...) and so do the RFC 6750 headers, and `message` is always there too (SMSGate's shape).

    bsg_v1            {"error": 2, "errorDescription": "Invalid API key", "message": ...}   (401)
                      {"error": 1, "errorDescription": ..., "message": ...}                 (anything else)
    smsgatewaycenter  {"status": "error", "statusCode": "<HTTP status>", "reason": ..., "message": ...}
    bsg_v2, smsportal {"message": ...}   (BSG v2 answers {"message": "Unauthenticated."} itself; SMSPortal's
                      error document is not in its public pages)
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.errors import HTTPError
from gateway.guard.authorize import inside
from gateway.web.asgi import Receive, Scope, Send
from gateway.web.responses import send_error, send_json

__all__ = ["ProviderErrors", "provider_error_body"]


def provider_error_body(style: str | None, exc: HTTPError) -> dict[str, object]:
    """The error document for a refusal on a mount of `style` (None: SMSGate's `{"message"}`)."""
    if style == "bsg_v1":
        if exc.status == 401:
            return {"error": 2, "errorDescription": "Invalid API key", "message": exc.message}
        return {"error": 1, "errorDescription": exc.message, "message": exc.message}
    if style == "smsgatewaycenter":
        return {"status": "error", "statusCode": str(exc.status), "reason": exc.message, "message": exc.message}
    return {"message": exc.message}


class ProviderErrors:
    """A GuardMiddleware `on_error` answering in the style of the mount the request is under."""

    def __init__(self, styles: Mapping[str, str]) -> None:
        # longest mount first, so a nested mount wins
        self.styles = sorted(styles.items(), key=lambda item: len(item[0]), reverse=True)

    def style_of(self, path: str) -> str | None:
        for mount, style in self.styles:
            if mount and inside(path, mount):
                return style
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send, exc: HTTPError) -> None:
        style = self.style_of(scope.get("path", ""))
        if style is None:
            await send_error(send, exc)
            return
        await send_json(send, exc.status, provider_error_body(style, exc), exc.headers)
