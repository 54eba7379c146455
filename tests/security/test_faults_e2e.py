"""Faults end to end: a misbehaving upstream or client never takes the gateway down or gets a retry.

Upstream side (`fakes.FaultServer` on loopback): refused/reset/garbled → 502, connect or read timeout →
504, failures after the answer started drop the client connection, and the gateway keeps answering
other clients meanwhile. Client side: a client that takes longer than the head deadline to send its
request head (slowloris), or connects and sends nothing, is disconnected; many idle connections do not
stop others from being served and are all closed once their deadline passes.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fakes import FaultServer, RecordingUpstream
from harness import CANARIES, MOUNT, Running, SecurityConfig, parse, recorded, running, status
from harness import request as http_request

MESSAGES = MOUNT + "/messages"
HEAD_TIMEOUT_S = 0.5


async def post_message(gw: Running, token: str) -> tuple[int, bytes]:
    raw = await gw.raw(
        http_request("POST", MESSAGES, f"Authorization: Bearer {token}", "Content-Length: 2", body=b"{}"), timeout_s=5
    )
    return status(raw), raw


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("refuse", 502),
        ("blackhole", 504),
        ("hang_before_headers", 504),
        ("close_before_headers", 502),
        ("reset_before_headers", 502),
        ("malformed_status_line", 502),
        ("huge_headers", 502),
    ],
)
async def test_upstream_faults_before_the_answer(tmp_path: Path, mode: str, expected: int) -> None:
    """The right status as SMSGate's JSON, naming no host, port or secret; the POST was sent at most once."""
    async with FaultServer(mode) as upstream:
        config = SecurityConfig(tmp_path, upstream.url + MOUNT, read_timeout_s=0.3, connect_timeout_s=0.3)
        async with running(config) as gw:
            got, raw = await post_message(gw, await gw.token("messages:send"))
            assert got == expected
            message = json.loads(parse(raw).body)["message"]
            for leak in (*CANARIES, "127.0.0.1", str(upstream.port), "http://"):
                assert leak not in message
            await asyncio.sleep(0.05)
            assert upstream.requests <= 1
            assert (await gw.client.get("/healthz")).status_code == 200


@pytest.mark.parametrize("mode", ["hang_before_headers", "hang_mid_body", "slow_trickle"])
async def test_a_stuck_upstream_does_not_hold_up_other_clients(tmp_path: Path, mode: str) -> None:
    """While requests hang on a stuck upstream, health checks and refusals are answered at once."""
    async with FaultServer(mode, interval_s=0.01) as upstream:
        config = SecurityConfig(tmp_path, upstream.url + MOUNT, read_timeout_s=0.6)
        async with running(config) as gw:
            token = await gw.token("messages:send")
            stuck = [asyncio.create_task(post_message(gw, token)) for _ in range(5)]
            await asyncio.sleep(0.2)
            started = time.monotonic()
            assert (await gw.client.get("/healthz")).status_code == 200
            assert (await gw.client.get(MOUNT + "/devices")).status_code == 401
            assert (await gw.client.get(MOUNT + "/nowhere")).status_code == 404
            assert time.monotonic() - started < 0.5
            results = await asyncio.gather(*stuck)
    codes = [code for code, _ in results]
    if mode == "hang_before_headers":
        assert codes == [504] * 5
    elif mode == "hang_mid_body":  # the answer had started: the client gets a cut-short 200, never a second status
        assert codes == [200] * 5
        assert all(len(parse(raw).body) < 1000 for _, raw in results)
    else:
        assert codes == [200] * 5
        assert all(parse(raw).body == b"slow but alive" for _, raw in results)


async def test_an_upstream_reset_mid_body_cuts_the_client_off_and_the_gateway_stays_up(tmp_path: Path) -> None:
    """After the status line, an upstream RST truncates the client's answer; the next request is served."""
    async with FaultServer("reset_mid_body") as upstream, running(SecurityConfig(tmp_path, upstream.url + MOUNT)) as gw:
        got, raw = await post_message(gw, await gw.token("messages:send"))
        assert got == 200
        assert len(parse(raw).body) < 1000
        assert (await gw.client.get("/healthz")).status_code == 200


async def test_a_client_that_leaves_closes_the_upstream_request(tmp_path: Path) -> None:
    """The client disconnects while the upstream has not answered: the gateway closes the upstream connection."""
    async with (
        FaultServer("hang_before_headers") as upstream,
        running(SecurityConfig(tmp_path, upstream.url + MOUNT, read_timeout_s=5)) as gw,
    ):
        token = await gw.token("messages:send")
        await gw.raw(
            http_request("POST", MESSAGES, f"Authorization: Bearer {token}", "Content-Length: 2", body=b"{}"),
            timeout_s=0.3,
        )
        await upstream.wait_closed(timeout_s=2)
    assert upstream.requests == 1


# ---------------------------------------------------------------------------------- slow clients


@pytest.fixture
async def slow_env(tmp_path: Path) -> AsyncIterator[tuple[Running, RecordingUpstream]]:
    async with recorded(tmp_path, head_timeout_s=HEAD_TIMEOUT_S) as (gw, upstream):
        yield gw, upstream


def _trickle(port: int, data: bytes, interval_s: float, limit_s: float) -> tuple[float, bytes]:
    """Send `data` one byte per `interval_s`; (seconds until the gateway closed or `limit_s`, bytes received)."""
    started = time.monotonic()
    received = b""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(interval_s)
        for index in range(len(data)):
            try:
                sock.sendall(data[index : index + 1])
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
            except TimeoutError:
                pass
            except OSError:
                break
            if time.monotonic() - started > limit_s:
                break
    return time.monotonic() - started, received


def _idle(port: int, limit_s: float) -> float:
    """Connect and send nothing; seconds until the gateway closed the connection."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(limit_s)
        try:
            assert sock.recv(1) == b""
        except TimeoutError:
            return limit_s
        except ConnectionResetError:
            pass
    return time.monotonic() - started


async def test_slowloris_is_cut_off_at_the_head_deadline(slow_env: tuple[Running, RecordingUpstream]) -> None:
    """A client dribbling its head one byte per 50 ms is disconnected at the deadline, unanswered and unforwarded."""
    gw, upstream = slow_env
    token = await gw.token("messages:send")
    head = http_request("GET", MESSAGES, f"Authorization: Bearer {token}", *(f"X-Pad-{i}: {i}" for i in range(50)))
    elapsed, received = await asyncio.to_thread(_trickle, gw.port, head, 0.05, 5.0)
    assert HEAD_TIMEOUT_S * 0.8 < elapsed < HEAD_TIMEOUT_S + 1.0
    assert received == b""
    assert upstream.requests == []


async def test_an_idle_connection_is_closed_at_the_head_deadline(slow_env: tuple[Running, RecordingUpstream]) -> None:
    """A connection that never sends a byte does not stay open forever."""
    gw, _ = slow_env
    elapsed = await asyncio.to_thread(_idle, gw.port, 5.0)
    assert HEAD_TIMEOUT_S * 0.8 < elapsed < HEAD_TIMEOUT_S + 1.0


async def test_the_deadline_also_applies_to_the_next_request_on_a_kept_alive_connection(
    slow_env: tuple[Running, RecordingUpstream],
) -> None:
    """After one complete exchange, the next head dribbled on the same connection is cut off too."""
    gw, upstream = slow_env

    def scenario() -> tuple[int, float, bytes]:
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall(f"GET {MOUNT}/health HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
            sock.settimeout(2)
            first = b""
            while not first.endswith(b'{"ok":true}'):
                first += sock.recv(65536)
            started = time.monotonic()
            rest = b""
            for byte in f"GET {MOUNT}/health HTTP/1.1\r\nHost: gw\r\nX-Pad: {'p' * 80}\r\n\r\n".encode():
                try:
                    sock.sendall(bytes([byte]))
                    sock.settimeout(0.05)
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
                except TimeoutError:
                    continue
                except OSError:
                    break
            return status(first), time.monotonic() - started, rest

    first, elapsed, rest = await asyncio.to_thread(scenario)
    assert first == 200
    assert elapsed < HEAD_TIMEOUT_S + 1.0
    assert rest == b""
    assert len(upstream.requests) == 1


async def test_a_slow_but_complete_head_within_the_deadline_is_served(
    slow_env: tuple[Running, RecordingUpstream],
) -> None:
    """Control: a head sent in pieces that completes before the deadline is answered normally."""
    gw, upstream = slow_env
    head = http_request("GET", MOUNT + "/health")
    pieces = [head[i : i + 8] for i in range(0, len(head), 8)]
    raw = await gw.raw(pieces, pause_s=HEAD_TIMEOUT_S / len(pieces) / 2)
    assert status(raw) == 200
    assert len(upstream.requests) == 1


async def test_many_idle_connections_neither_block_others_nor_linger(
    slow_env: tuple[Running, RecordingUpstream],
) -> None:
    """200 silent connections: a real request is still served at once, and all 200 are closed at the deadline."""
    gw, _ = slow_env
    idle = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(200)]
    try:
        await asyncio.sleep(0.1)
        assert gw.server.connections >= 200
        started = time.monotonic()
        assert (await gw.client.get(MOUNT + "/health")).status_code == 200
        assert time.monotonic() - started < 0.5
        await gw.client.aclose()
        deadline = time.monotonic() + HEAD_TIMEOUT_S + 2.0
        while gw.server.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert gw.server.connections == 0
        for sock in idle[:5]:
            sock.settimeout(1)
            assert sock.recv(1) == b""
    finally:
        for sock in idle:
            sock.close()
