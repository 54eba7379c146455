"""A bounded burst of mixed requests against `gateway serve` (its own process) with a failing upstream.

Every request gets its own right status (forwarded, 401, 403, 404, 400, 502 from an upstream that resets
every connection); every forwarded message arrives exactly once (none lost, none doubled, the failing
upstream saw each of its requests once: nothing is retried); afterwards the gateway's memory and file
descriptors are back where they were after an identical warm-up burst.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest
from fakes import FaultServer, RecordingUpstream, Reply
from harness import BROKEN_MOUNT, MOUNT, SecurityConfig, Served, serving, watched_client
from keys import forge

BURST = 200
CONCURRENCY = 24
BURSTS_AFTER_WARMUP = 3
RSS_SLACK_BYTES = 4 * 1024 * 1024  # measured: about 0.6 MB after 600 requests
FD_SLACK = 2  # measured: 0 (the upstream closes its connections, so no pooled sockets)

pytestmark = pytest.mark.slow


class Burst:
    """One burst's requests, each with the status it must get."""

    def __init__(self, served: Served, config: SecurityConfig, seed: int, offset: int) -> None:
        rng = random.Random(seed)
        sender = served.token(config, "messages:send")
        reader = served.token(config, "messages:read")
        forged = forge({"alg": "none"}, {"iss": "smsguard", "sub": "x", "scope": "all:any"})
        self.plan: list[tuple[str, str, dict[str, str], bytes, int]] = []
        self.ids: list[str] = []
        for index in range(BURST):
            kind = rng.choices(["send", "forged", "scope", "route", "path", "broken"], [40, 15, 10, 10, 5, 20])[0]
            ident = f"m-{offset + index}"
            auth = {"authorization": f"Bearer {sender}"}
            body = json.dumps({"id": ident}).encode()
            if kind == "send":
                self.ids.append(ident)
                self.plan.append(("POST", MOUNT + "/messages", auth, body, 202))
            elif kind == "forged":
                self.plan.append(("POST", MOUNT + "/messages", {"authorization": f"Bearer {forged}"}, body, 401))
            elif kind == "scope":
                self.plan.append(("POST", MOUNT + "/messages", {"authorization": f"Bearer {reader}"}, body, 403))
            elif kind == "route":
                self.plan.append(("GET", MOUNT + "/nowhere", auth, b"", 404))
            elif kind == "path":
                self.plan.append(("GET", MOUNT + "/messages/%2e%2e/devices", auth, b"", 400))
            else:  # GET too: aiohttp would silently resend an idempotent request after a reset
                method = rng.choice(["POST", "GET"])
                self.plan.append((method, BROKEN_MOUNT + "/messages", auth, body if method == "POST" else b"", 502))

    @property
    def broken(self) -> int:
        return sum(1 for *_, expected in self.plan if expected == 502)

    async def run(self, url: str) -> list[tuple[int, int]]:
        """(got, expected) per request, CONCURRENCY at a time, on a client closed at the end."""
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with watched_client(url, limits=limits, timeout=15.0) as client:

            async def one(
                method: str, path: str, headers: dict[str, str], body: bytes, expected: int
            ) -> tuple[int, int]:
                response = await client.request(method, path, headers=headers, content=body or None)
                return response.status_code, expected

            return await asyncio.gather(*(one(*item) for item in self.plan))


def _sample(pid: int) -> tuple[int, int]:
    process = psutil.Process(pid)
    return process.memory_info().rss, process.num_fds()


async def _settle(pid: int, fds_at_most: int | None = None) -> tuple[int, int]:
    """Let closed client connections be reaped (up to 2 s, or until fds drop to `fds_at_most`); sample RSS, fds."""
    await asyncio.sleep(0.2)
    sample = _sample(pid)
    for _ in range(36):
        if fds_at_most is None or sample[1] <= fds_at_most:
            break
        await asyncio.sleep(0.05)
        sample = _sample(pid)
    return sample


async def test_mixed_burst_with_a_failing_upstream(tmp_path: Path) -> None:
    """200 x 4 mixed requests: right statuses, each message forwarded once, memory and fds back to baseline."""
    # `Connection: close` keeps the gateway's upstream pool empty between bursts, so open fds compare exactly.
    headers = [("Content-Type", "application/json"), ("Connection", "close")]
    reply = Reply(202, body=b'{"id":"x","state":"Pending"}', headers=headers)
    async with RecordingUpstream(reply) as upstream, FaultServer("reset_before_headers") as broken:
        config = SecurityConfig(
            tmp_path, upstream.url + MOUNT, broken_url=broken.url + BROKEN_MOUNT, pool_size=CONCURRENCY
        )
        with serving(config) as served:
            bursts = [Burst(served, config, seed, seed * BURST) for seed in range(1 + BURSTS_AFTER_WARMUP)]
            results = await bursts[0].run(served.url)  # warm-up: pools, caches and allocator arenas fill up
            rss_before, fds_before = await _settle(served.pid)
            for burst in bursts[1:]:
                results += await burst.run(served.url)
            rss_after, fds_after = await _settle(served.pid, fds_before + FD_SLACK)

    wrong = [(got, expected) for got, expected in results if got != expected]
    assert wrong == [], f"{len(wrong)} requests got the wrong status, e.g. {wrong[:5]}"
    sent = Counter(json.loads(seen.body)["id"] for seen in upstream.requests)
    expected_ids = [ident for burst in bursts for ident in burst.ids]
    assert sorted(sent) == sorted(expected_ids), "a message was lost or invented"
    assert max(sent.values()) == 1, f"forwarded twice: {[i for i, n in sent.items() if n > 1][:5]}"
    assert broken.requests == sum(burst.broken for burst in bursts), "a request to the failing upstream was retried"
    assert rss_after - rss_before < RSS_SLACK_BYTES, f"RSS grew by {(rss_after - rss_before) / 1e6:.1f} MB"
    assert fds_after <= fds_before + FD_SLACK, f"fds {fds_before} -> {fds_after}"
