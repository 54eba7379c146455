"""The gateway's server protocol: one write for a small answer, and the disconnect signal (real uvicorn)."""

from __future__ import annotations

import asyncio
from typing import Any

from fakes import UvicornServer

from gateway.web.asgi import Receive, Scope, Send
from gateway.web.server import DISCONNECT_EXTENSION, DisconnectSignal, _HeadHeldTransport, protocol_factory


class _RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def _held(transport: _RecordingTransport) -> _HeadHeldTransport:
    return _HeadHeldTransport(transport, asyncio.get_running_loop())  # type: ignore[arg-type]


async def test_head_and_first_body_bytes_leave_in_one_write() -> None:
    transport = _RecordingTransport()
    held = _held(transport)
    held.write(b"HEAD")
    assert transport.writes == []
    held.write(b"body1")
    held.write(b"body2")
    await asyncio.sleep(0)
    assert transport.writes == [b"HEADbody1", b"body2"]


async def test_a_lone_head_leaves_at_the_end_of_the_loop_iteration() -> None:
    transport = _RecordingTransport()
    held = _held(transport)
    held.write(b"HEAD")
    await asyncio.sleep(0)
    assert transport.writes == [b"HEAD"]
    held.write(b"later")
    assert transport.writes == [b"HEAD", b"later"]


async def test_close_sends_the_held_head_first_and_other_calls_pass_through() -> None:
    transport = _RecordingTransport()
    held = _held(transport)
    held.write(b"HEAD")
    held.close()
    assert transport.writes == [b"HEAD"]
    assert transport.closed
    assert held.is_closing()
    assert held.get_extra_info("peername") == "info:peername"
    await asyncio.sleep(0)
    assert transport.writes == [b"HEAD"]  # the scheduled flush finds nothing left


def test_disconnect_signal_calls_back_once_and_late_callbacks_at_once() -> None:
    signal = DisconnectSignal()
    calls: list[str] = []
    signal.add(lambda: calls.append("a"))
    removed = lambda: calls.append("removed")  # noqa: E731
    signal.add(removed)
    signal.remove(removed)
    signal.fire()
    signal.fire()
    signal.add(lambda: calls.append("late"))
    assert calls == ["a", "late"]


async def _raw(port: int, request: bytes, *, read_s: float) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = b""
    try:
        async with asyncio.timeout(read_s):
            while chunk := await reader.read(65536):
                data += chunk
    except TimeoutError:
        pass
    writer.close()
    return data


async def test_a_streamed_answer_head_is_not_held_back_by_a_slow_body() -> None:
    """The head leaves at the end of the loop iteration even when the body takes its time."""
    release = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
        await release.wait()
        await send({"type": "http.response.body", "body": b"done"})

    async with UvicornServer(app, http=protocol_factory()) as server:  # type: ignore[arg-type]
        head = await _raw(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", read_s=0.3)
        release.set()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert head.endswith(b"\r\n\r\n")  # the head alone: the body was not sent yet


async def test_the_disconnect_signal_fires_when_the_client_leaves_mid_request() -> None:
    seen: list[Any] = []
    left = asyncio.Event()
    answered = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        signal = scope["extensions"][DISCONNECT_EXTENSION]
        seen.append(signal)
        signal.add(left.set)
        if scope["path"] == "/quick":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            answered.set()
            return
        async with asyncio.timeout(5):
            await left.wait()  # the signal, not receive(), tells the app the client left

    async with UvicornServer(app, http=protocol_factory()) as server:  # type: ignore[arg-type]
        answer = await _raw(server.port, b"GET /quick HTTP/1.1\r\nHost: x\r\n\r\n", read_s=0.3)
        assert answer.startswith(b"HTTP/1.1 204")
        await asyncio.sleep(0.05)
        assert not left.is_set()  # answered before the connection closed: nothing to signal
        await _raw(server.port, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n", read_s=0.1)
        async with asyncio.timeout(2):
            await left.wait()
    assert len(seen) == 2
    assert all(isinstance(signal, DisconnectSignal) for signal in seen)
    assert seen[0] is not seen[1]
