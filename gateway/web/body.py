"""A request body read whole before the app runs, then handed to the app as the client sent it.

The guard reads it when a key slot may be in a form body (SMSGatewayCenter's `userId`/`password`), the
limits read it to find a send's recipients: both use the one `BodyReplay` of a request (`body_replay`
keeps it in the ASGI scope), so a body is read from the client once, however many layers look at it.
"""

from __future__ import annotations

from gateway.errors import BadRequest
from gateway.web.asgi import Message, Receive, Scope

__all__ = ["REPLAY_KEY", "BodyReplay", "body_replay"]

REPLAY_KEY = "smsguard.body"


class BodyReplay:
    """The request body, read whole on first `read`, then given to the app in one message by `receive`."""

    __slots__ = ("body", "client", "replayed")

    def __init__(self, receive: Receive) -> None:
        self.client = receive
        self.body: bytes | None = None  # set once read
        self.replayed = False

    async def read(self, limit: int) -> bytes | None:
        """The whole body, or None when it is longer than `limit` bytes (the request is then refused)."""
        if self.body is not None:
            return self.body if len(self.body) <= limit else None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.client()
            if message["type"] != "http.request":
                raise BadRequest("the client left before its request body was read", code="client_disconnected")
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                self.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                return self.body

    async def receive(self) -> Message:
        """The app's `receive`: the body read, in one message, then whatever the client says next."""
        if self.replayed or self.body is None:
            return await self.client()
        self.replayed = True
        return {"type": "http.request", "body": self.body, "more_body": False}


def body_replay(scope: Scope, receive: Receive) -> BodyReplay:
    """The request's replay: the one an earlier layer already read (kept in `scope`), else a new one reading
    from `receive` (this layer's: a layer in between may have wrapped it), kept there for the next."""
    replay: BodyReplay | None = scope.get(REPLAY_KEY)
    if replay is None or replay.body is None:
        replay = scope[REPLAY_KEY] = BodyReplay(receive)
    return replay
