"""Whether each upstream can be reached, for `/readyz`: a TCP connect to its host and port, cached.

A check opens a connection and closes it at once (no TLS handshake, no request: nothing the provider
bills or logs as an API call), bounded by the upstream's `connect_timeout_s` and at most `MAX_TIMEOUT_S`.
Answers are cached for `TTL_S`, and concurrent `/readyz` calls share the check in flight, so probes
every second cost one connect per upstream per `TTL_S`. The report names no host or address.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from yarl import URL

from gateway.config.settings import UpstreamSettings

__all__ = ["MAX_TIMEOUT_S", "TTL_S", "Reach", "Reachability"]

TTL_S = 5.0
MAX_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Reach:
    """One check's answer: reachable or why not, how long the connect took, and when it was made."""

    reachable: bool
    connect_ms: float | None
    error: str | None
    at: float

    def report(self, now: float) -> dict[str, object]:
        found: dict[str, object] = {"reachable": self.reachable}
        if self.reachable:
            found["connect_ms"] = self.connect_ms
        else:
            found["error"] = self.error
        found["age_s"] = round(max(0.0, now - self.at), 1)
        return found


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    timeout_s: float


class Reachability:
    """The reachability of a set of upstreams (`status()`), each checked at most once per `ttl_s`."""

    def __init__(
        self,
        upstreams: Mapping[str, UpstreamSettings],
        *,
        ttl_s: float = TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._targets = {name: _target(up) for name, up in upstreams.items()}
        self._ttl_s = ttl_s
        self._clock = clock
        self._answers: dict[str, Reach] = {}
        self._checking: dict[str, asyncio.Task[Reach]] = {}

    async def status(self) -> dict[str, dict[str, object]]:
        """`{upstream: {"reachable": bool, "connect_ms" | "error": ..., "age_s": ...}}`, checked concurrently."""
        names = sorted(self._targets)
        answers = await asyncio.gather(*(self._answer(name) for name in names))
        now = self._clock()
        return {name: answer.report(now) for name, answer in zip(names, answers, strict=True)}

    async def _answer(self, name: str) -> Reach:
        cached = self._answers.get(name)
        if cached is not None and self._clock() - cached.at < self._ttl_s:
            return cached
        task = self._checking.get(name)
        if task is None:
            task = self._checking[name] = asyncio.create_task(self._connect(name))
            task.add_done_callback(lambda _: self._checking.pop(name, None))
        answer = await asyncio.shield(task)  # a cancelled /readyz leaves the check to the others waiting
        self._answers[name] = answer
        return answer

    async def _connect(self, name: str) -> Reach:
        target = self._targets[name]
        started = self._clock()
        try:
            async with asyncio.timeout(target.timeout_s):
                _, writer = await asyncio.open_connection(target.host, target.port)
        except TimeoutError:
            return Reach(False, None, f"no connection within {target.timeout_s:g} s", self._clock())
        except OSError as exc:
            return Reach(False, None, _why(exc), self._clock())
        connected = self._clock()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return Reach(True, round((connected - started) * 1000, 1), None, connected)


def _why(exc: OSError) -> str:
    """The reason in words, never with the address (asyncio's own messages quote it)."""
    if isinstance(exc, socket.gaierror):
        return f"name lookup failed: {exc.strerror}".lower()
    return os.strerror(exc.errno).lower() if exc.errno else "unreachable"


def _target(upstream: UpstreamSettings) -> _Target:
    url = URL(upstream.url)
    port = url.port or (443 if url.scheme == "https" else 80)
    return _Target(url.raw_host or "", port, min(upstream.connect_timeout_s, MAX_TIMEOUT_S))
