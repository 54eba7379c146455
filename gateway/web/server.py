"""The HTTP/1.1 server protocol `gateway serve` runs: uvicorn's httptools protocol with the limits it lacks.

uvicorn with httptools bounds neither how long a client may take to send a request head nor how big
the head may grow, and it reduces an absolute-form target (`GET http://evil/x HTTP/1.1`) to its path
without telling the app. `GatewayHttpProtocol` adds, per connection:

- a head deadline: from the moment the connection opens, or the first byte of a later request head
  arrives, the whole head must be in within `head_timeout_s`, else the connection is closed
  (slowloris; idle connections that never send anything are closed the same way);
- a head size limit: a head larger than `max_head_bytes` is answered 431 and the connection closed,
  before httptools has buffered more than that (it buffers a header line whole, without a limit);
- origin-form targets only: a target that does not start with `/` (absolute-form, authority-form,
  asterisk-form) is answered 400 and never reaches the app;
- no trailers as headers: httptools reports the trailer fields of a chunked body like header fields,
  and uvicorn appends them to `scope["headers"]`, while the app may already be reading that list; they
  are dropped (ASGI has no request trailers).

And two things for speed, measured with `make bench`:

- one write for a small answer: uvicorn writes the response head and each body chunk with a `write`
  (a syscall) each; the head is held until the first body bytes, or the end of the event-loop
  iteration, whichever comes first (`_HeadHeldTransport`), so a small answer leaves in one;
- a disconnect signal: `scope["extensions"]["smsguard.disconnect"]` lets the app register a callback
  for the client leaving mid-request (`DisconnectSignal`), instead of parking a task in `receive()`
  per request to hear `http.disconnect`; apps under other servers fall back to doing that.

And two deadlines for slow peers, so that no client can hold an upstream slot (or a connection) by
being slow on purpose:

- a body deadline: once a request head is in, its whole body must arrive within `body_timeout_s`
  (time during which the gateway itself paused reading does not count), else the connection is closed;
  the app hears `http.disconnect`, so a forwarder streaming that body releases its upstream slot;
- a write deadline: a response write that waits more than `client_write_timeout_s` for the client to
  read (the transport paused writing: its buffers are full) closes the connection; the disconnect
  signal fires and the forwarder drops its upstream exchange.

Keep-alive between requests stays uvicorn's (`timeout_keep_alive`). Configure with
`protocol_factory(head_timeout_s=..., max_head_bytes=..., body_timeout_s=..., client_write_timeout_s=...)`,
which `serving.uvicorn_options` passes as uvicorn's `http` (a picklable `functools.partial`, so
`--workers N` works) from the `proxy:` section of config.yaml.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = [
    "DEFAULT_BODY_TIMEOUT_S",
    "DEFAULT_CLIENT_WRITE_TIMEOUT_S",
    "DEFAULT_HEAD_TIMEOUT_S",
    "DEFAULT_MAX_HEAD_BYTES",
    "DISCONNECT_EXTENSION",
    "DisconnectSignal",
    "GatewayHttpProtocol",
    "protocol_factory",
]

DEFAULT_HEAD_TIMEOUT_S = 10.0
DEFAULT_MAX_HEAD_BYTES = 64 * 1024
DEFAULT_BODY_TIMEOUT_S = 15.0
DEFAULT_CLIENT_WRITE_TIMEOUT_S = 15.0

DISCONNECT_EXTENSION = "smsguard.disconnect"

log = logging.getLogger("smsguard.server")


class DisconnectSignal:
    """Calls back once if the client's connection is lost before the response to its request is complete."""

    __slots__ = ("_callbacks", "fired")

    def __init__(self) -> None:
        self._callbacks: list[Callable[[], object]] = []
        self.fired = False

    def add(self, callback: Callable[[], object]) -> None:
        """Call `callback` when the client leaves (at once if it already has)."""
        if self.fired:
            callback()
        else:
            self._callbacks.append(callback)

    def remove(self, callback: Callable[[], object]) -> None:
        with contextlib.suppress(ValueError):  # already called, or never added
            self._callbacks.remove(callback)

    def fire(self) -> None:
        if self.fired:
            return
        self.fired = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one failing callback must not keep the others from hearing it
                log.exception("a disconnect callback failed")


class _HeadHeldTransport:
    """One request's view of the connection's transport: the response head waits for the first body bytes.

    The first `write` of the response (its head) is held and sent together with the next one, or at
    the end of the current event-loop iteration if none comes in it, so nothing is delayed.
    """

    __slots__ = ("_held", "_loop", "_transport", "_waiting")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._waiting = True  # the first write is still to come

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif self._waiting:
            self._waiting = False
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Rejected(Exception):
    """Raised from a parser callback to stop httptools after the protocol answered the request itself."""


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a head deadline, a head size limit and origin-form targets only."""

    def __init__(
        self,
        *args: Any,
        head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S,
        max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
        body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
        client_write_timeout_s: float = DEFAULT_CLIENT_WRITE_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout_s = head_timeout_s
        self.max_head_bytes = max_head_bytes
        self.body_timeout_s = body_timeout_s
        self.client_write_timeout_s = client_write_timeout_s
        self._body_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._reading_head = True  # waiting for (the rest of) a request head
        self._head_bytes = 0  # bytes fed to the parser since this head started
        self._heads = 0  # heads completed on this connection
        self._head_timer: asyncio.TimerHandle | None = None
        self._rejected = False
        self._signals: deque[DisconnectSignal] = deque()  # of the requests not answered yet, oldest first

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._body_timer = _cancelled(self._body_timer)
        self._write_timer = _cancelled(self._write_timer)
        super().connection_lost(exc)
        signals, self._signals = self._signals, deque()
        for signal in signals:
            signal.fire()

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        if self._reading_head:
            if self._head_timer is None:
                self._arm_head_timer()
            room = self.max_head_bytes - self._head_bytes
            if len(data) > room:
                # Feed only what the limit allows: unless that completes the head, the rest is refused unread.
                heads = self._heads
                super().data_received(data[:room])
                if self.transport.is_closing():
                    return
                if self._heads == heads:
                    self._reject(431, "the request head is too large")
                    return
                self.data_received(data[room:])  # body bytes, or a pipelined head counted from here
                return
            self._head_bytes += len(data)
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._reading_head:  # trailer fields of a chunked body would be appended to the scope's headers
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self._reading_head = False
        self._head_bytes = 0
        self._heads += 1
        if not self.url.startswith(b"/"):
            self._reject(400, "the request target must be a path (origin-form)")
            raise _Rejected
        signal = DisconnectSignal()
        self._signals.append(signal)
        scope = cast(dict[str, Any], self.scope)
        scope["extensions"] = {**scope.get("extensions", {}), DISCONNECT_EXTENSION: signal}
        super().on_headers_complete()
        self._body_timer = _cancelled(self._body_timer)
        self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timed_out)
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:
            cycle.transport = cast(asyncio.Transport, _HeadHeldTransport(self.transport, self.loop))

    def on_message_complete(self) -> None:
        self._body_timer = _cancelled(self._body_timer)
        super().on_message_complete()
        self._reading_head = True
        self._head_bytes = 0

    def on_response_complete(self) -> None:
        if self._signals:  # answers complete in the order the requests came
            self._signals.popleft()
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._rejected:  # the protocol already answered (and httptools stopped on _Rejected)
            super().send_400_response(msg)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._reading_head and not self.transport.is_closing():
            log.debug("closing a connection that sent no complete request head in %.1f s", self.head_timeout_s)
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        if (
            self.flow.read_paused
        ):  # the gateway is not reading (the app has not consumed the body): not the peer's fault
            self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timed_out)
            return
        log.debug("closing a connection whose request body did not arrive in %.1f s", self.body_timeout_s)
        self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.client_write_timeout_s, self._write_timed_out)

    def resume_writing(self) -> None:
        self._write_timer = _cancelled(self._write_timer)
        super().resume_writing()

    def _write_timed_out(self) -> None:
        self._write_timer = None
        if self.flow.write_paused and not self.transport.is_closing():
            log.debug("closing a connection that did not read its response for %.1f s", self.client_write_timeout_s)
            self.transport.abort()  # close() would wait for the buffered bytes the peer never reads

    def _reject(self, status: int, message: str) -> None:
        """Answer `{"message": ...}` with `status` and close the connection (nothing reaches the app)."""
        self._rejected = True
        self._cancel_head_timer()
        if self.transport.is_closing():
            return
        body = json.dumps({"message": message}).encode()
        head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode()]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def _cancelled(timer: asyncio.TimerHandle | None) -> asyncio.TimerHandle | None:
    """Cancel `timer` if set; returns None, to clear the attribute that held it."""
    if timer is not None:
        timer.cancel()
    return None


def protocol_factory(
    *,
    head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S,
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    client_write_timeout_s: float = DEFAULT_CLIENT_WRITE_TIMEOUT_S,
) -> functools.partial[GatewayHttpProtocol]:
    """uvicorn's `http=` for the gateway: `GatewayHttpProtocol` with these limits (picklable for workers)."""
    if head_timeout_s <= 0 or max_head_bytes < 1024:
        raise ValueError("head_timeout_s must be positive and max_head_bytes at least 1024")
    if body_timeout_s <= 0 or client_write_timeout_s <= 0:
        raise ValueError("body_timeout_s and client_write_timeout_s must be positive")
    return functools.partial(
        GatewayHttpProtocol,
        head_timeout_s=head_timeout_s,
        max_head_bytes=max_head_bytes,
        body_timeout_s=body_timeout_s,
        client_write_timeout_s=client_write_timeout_s,
    )
