"""Store faults under load: two `gateway serve` instances on one private redis-server (append-only file,
fsynced on every write), and a bounded load (asyncio + httpx) while Redis is killed and restarted with its
data, frozen (SIGSTOP 5 s), and killed and restarted empty.

At every moment, on both instances: no 500, no request slower than the store deadline + 1 s, no revoked
token accepted (also on an instance started after the empty restart), Basic logins and public routes
answered; every 503 carries `Retry-After` and a JSON message. Afterwards the instances recover by
themselves (no restart), and each wrote at most 10 log lines about the outage (access logs are off: every
line counts). The processes are shared by the three scenarios, which run in file order.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import RecordingUpstream, Reply
from gatewayconfig import ADMIN_BY_BASIC, OPS_AUTH, SENDER_PASSWORD, GatewayConfig
from processes import GatewayProcess, gateway_process
from redisserver import PrivateRedis

TIMEOUT_S = 0.5
BOUND_S = TIMEOUT_S + 1.0  # the bound for any one request
TOKEN = "/3rdparty/v1/auth/token"
READ = "/3rdparty/v1/messages/m-1"  # messages:read, which sender holds
PUBLIC = "/3rdparty/v1/health"
SENDER = ("sender", SENDER_PASSWORD)
WORKERS = 4
PAUSE_S = 0.05  # per worker between requests: a few hundred requests per scenario
MAX_REQUESTS = 600
MAX_LOG_LINES = 10

pytestmark = pytest.mark.slow


@dataclass
class Outcome:
    kind: str
    base: str
    status: int
    elapsed: float
    message: str = ""
    retry_after: str | None = None


@dataclass
class Cluster:
    a: GatewayProcess
    b: GatewayProcess
    redis: PrivateRedis
    config: Path
    env: dict[str, str]
    client: httpx.Client
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def instances(self) -> tuple[GatewayProcess, GatewayProcess]:
        return self.a, self.b

    def mint(self, base: str) -> dict[str, Any]:
        response = self.client.post(base + TOKEN, json={"scopes": ["messages:read"]}, auth=SENDER)
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    def get(self, base: str, token: str) -> httpx.Response:
        return self.client.get(base + READ, headers={"authorization": f"Bearer {token}"})

    def prepare(self) -> None:
        """A valid token and a revoked one (revoked through A, refused by both)."""
        self.tokens["valid"] = self.mint(self.a.url)["access_token"]
        revoked = self.mint(self.b.url)
        assert self.client.delete(f"{self.a.url}{TOKEN}/{revoked['id']}", auth=SENDER).status_code == 204
        self.tokens["revoked"] = revoked["access_token"]
        for instance in self.instances:
            wait_for(lambda i=instance: self.get(i.url, revoked["access_token"]).status_code == 401, 5, "revoked")  # type: ignore[misc]
            assert self.get(instance.url, self.tokens["valid"]).status_code == 200


def wait_for(condition: Callable[[], bool], within_s: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < within_s, f"not within {within_s} s: {what}"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("faults")
    ready, stop = threading.Event(), threading.Event()
    box: dict[str, str] = {}

    def upstream() -> None:
        async def main() -> None:
            async with RecordingUpstream(Reply(200, body=b"{}")) as up:
                box["url"] = up.url
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.05)

        asyncio.run(main())

    thread = threading.Thread(target=upstream, daemon=True)
    thread.start()
    assert ready.wait(10)
    redis = PrivateRedis(directory / "redis-data")
    redis.start()
    try:
        cfg = GatewayConfig(
            directory,
            box["url"] + "/3rdparty/v1",
            store=redis.url,
            extra=f"store_timeout_s: {TIMEOUT_S}\nlog: {{access: false}}\nreload: {{watch: false}}\n" + ADMIN_BY_BASIC,
        )
        path = cfg.write()
        with (
            gateway_process(path, cfg.env, output=directory / "a.log") as first,
            gateway_process(path, cfg.env, output=directory / "b.log") as second,
            httpx.Client(timeout=10) as client,
        ):
            yield Cluster(first, second, redis, path, cfg.env, client)
    finally:
        redis.stop()
        stop.set()
        thread.join(10)


async def under_load(cluster: Cluster, fault: Callable[[], Awaitable[None]]) -> list[Outcome]:
    """Run `fault` while WORKERS send requests of every kind to both instances; every answer recorded."""
    plan: list[tuple[str, str, dict[str, str], str]] = []
    basic = httpx.BasicAuth(*SENDER)
    for instance in cluster.instances:
        for kind in ("valid", "revoked"):
            plan.append((kind, instance.url, {"authorization": f"Bearer {cluster.tokens[kind]}"}, READ))
        plan.append(("public", instance.url, {}, PUBLIC))
        plan.append(("basic", instance.url, {}, READ))
    outcomes: list[Outcome] = []
    done = asyncio.Event()

    async with httpx.AsyncClient(timeout=30) as client:

        async def worker(first: int) -> None:
            index = first
            while not done.is_set() and len(outcomes) < MAX_REQUESTS:
                kind, base, headers, path = plan[index % len(plan)]
                index += WORKERS
                start = time.monotonic()
                try:
                    response = await client.get(base + path, headers=headers, auth=basic if kind == "basic" else None)
                except httpx.TransportError as exc:
                    outcomes.append(Outcome(kind, base, 0, time.monotonic() - start, type(exc).__name__))
                    continue
                elapsed = time.monotonic() - start
                message = ""
                if response.status_code >= 400:
                    message = json.loads(response.content).get("message", "")  # always JSON, never plain text
                outcomes.append(
                    Outcome(kind, base, response.status_code, elapsed, message, response.headers.get("retry-after"))
                )
                await asyncio.sleep(PAUSE_S)

        workers = [asyncio.create_task(worker(n)) for n in range(WORKERS)]
        try:
            await fault()
        finally:
            done.set()
            await asyncio.gather(*workers)
    return outcomes


def summary(name: str, outcomes: list[Outcome], window: LogWindow) -> str:
    """One line of figures for `pytest -s` (the report's numbers): requests, 503s and their latency, log lines."""
    unavailable = sorted(o.elapsed for o in outcomes if o.status == 503)
    statuses = Counter(o.status for o in outcomes)
    lines = {url.rsplit(":", 1)[1]: len(found) for url, found in window.lines().items()}
    p50 = unavailable[len(unavailable) // 2] if unavailable else 0.0
    return (
        f"{name}: {len(outcomes)} requests {dict(statuses)}; 503 p50 {p50 * 1000:.0f} ms, max "
        f"{(unavailable[-1] if unavailable else 0) * 1000:.0f} ms; slowest of all "
        f"{max(o.elapsed for o in outcomes) * 1000:.0f} ms; log lines per instance {lines}\n  "
        + "\n  ".join(next(iter(window.lines().values())))
    )


def check(outcomes: list[Outcome], *, valid: set[int]) -> None:
    assert len(outcomes) >= 100, "the load did not run"
    assert not [o for o in outcomes if o.status in (0, 500)], "a 500 or a broken connection"
    slow = [o for o in outcomes if o.elapsed > BOUND_S]
    assert not slow, f"{len(slow)} requests slower than {BOUND_S} s, e.g. {slow[:3]}"
    accepted = [o for o in outcomes if o.kind == "revoked" and o.status != 401 and o.status != 503]
    assert not accepted, f"a revoked token got {accepted[:3]}"
    for kind in ("public", "basic"):
        assert {o.status for o in outcomes if o.kind == kind} == {200}, f"{kind} needs no store"
    assert {o.status for o in outcomes if o.kind == "valid"} <= valid
    unavailable = [o for o in outcomes if o.status == 503]
    assert all(o.retry_after and o.message for o in unavailable)


def recovered(cluster: Cluster, token: str) -> None:
    """Both instances accept `token` again, without a restart."""
    for instance in cluster.instances:
        wait_for(lambda i=instance: cluster.get(i.url, token).status_code == 200, 15, f"{instance.url} recovered")  # type: ignore[misc]
        assert cluster.get(instance.url, cluster.tokens["revoked"]).status_code == 401


class LogWindow:
    """Lines each instance printed since it was opened."""

    def __init__(self, cluster: Cluster) -> None:
        self.offsets = {i.url: i.output.stat().st_size for i in cluster.instances}
        self.cluster = cluster

    def lines(self) -> dict[str, list[str]]:
        found = {}
        for instance in self.cluster.instances:
            with instance.output.open("rb") as handle:
                handle.seek(self.offsets[instance.url])
                found[instance.url] = handle.read().decode(errors="replace").splitlines()
        return found

    def check(self) -> None:
        for url, lines in self.lines().items():
            assert len(lines) <= MAX_LOG_LINES, f"{url} logged {len(lines)} lines: {lines}"
            assert not [line for line in lines if "Traceback" in line], lines


def test_killed_then_restarted_with_data(cluster: Cluster) -> None:
    """Redis killed for 3 s, then restarted from its append-only file: 503s meanwhile, then the same tokens work."""
    cluster.prepare()
    window = LogWindow(cluster)

    async def fault() -> None:
        await asyncio.sleep(1)
        cluster.redis.stop()
        await asyncio.sleep(3)
        await asyncio.to_thread(cluster.redis.start)
        await asyncio.sleep(2)

    outcomes = asyncio.run(under_load(cluster, fault))
    check(outcomes, valid={200, 503})
    assert [o for o in outcomes if o.status == 503], "the outage was not noticed"
    recovered(cluster, cluster.tokens["valid"])
    print(summary("killed, restarted with data", outcomes, window))
    assert cluster.get(cluster.a.url, cluster.mint(cluster.b.url)["access_token"]).status_code == 200
    window.check()
    for instance in cluster.instances:
        store = cluster.client.get(instance.url + "/readyz", auth=OPS_AUTH).json()["store"]
        assert store["resets"] == 0  # its data survived: no reset
        assert store["persistence"] == "aof"
        assert store["persistent"] is True


def test_frozen_for_five_seconds(cluster: Cluster) -> None:
    """SIGSTOP 5 s: no request waits longer than the deadline + 1 s, nothing revoked gets through."""
    window = LogWindow(cluster)

    async def fault() -> None:
        await asyncio.sleep(1)
        cluster.redis.freeze()
        try:
            await asyncio.sleep(5)
        finally:
            cluster.redis.thaw()
        await asyncio.sleep(2)

    outcomes = asyncio.run(under_load(cluster, fault))
    check(outcomes, valid={200, 503})
    assert [o for o in outcomes if o.status == 503], "the freeze was not noticed"
    recovered(cluster, cluster.tokens["valid"])
    print(summary("frozen 5 s", outcomes, window))
    window.check()
    metrics = cluster.client.get(cluster.a.url + "/metrics").text
    assert "smsguard_store_up 1.0" in metrics
    assert 'smsguard_store_errors_total{reason="timeout"}' in metrics


def test_restarted_empty_refuses_every_older_token(cluster: Cluster) -> None:
    """Redis restarted without its data: a new epoch; every older token is refused (401, "store was reset") on
    both instances and on one started afterwards; new logins work everywhere."""
    window = LogWindow(cluster)

    async def fault() -> None:
        await asyncio.sleep(1)
        cluster.redis.stop()
        cluster.redis.wipe()
        await asyncio.sleep(1)
        await asyncio.to_thread(cluster.redis.start)
        await asyncio.sleep(3)

    outcomes = asyncio.run(under_load(cluster, fault))
    check(outcomes, valid={200, 401, 503})
    print(summary("restarted empty", outcomes, window))
    for instance in cluster.instances:
        wait_for(lambda i=instance: cluster.get(i.url, cluster.tokens["valid"]).status_code == 401, 15, "reset seen")  # type: ignore[misc]
        refused = cluster.get(instance.url, cluster.tokens["valid"])
        assert "store was reset" in refused.json()["message"]
        assert 'error="invalid_token"' in refused.headers["www-authenticate"]
        assert cluster.get(instance.url, cluster.tokens["revoked"]).status_code == 401
        store = cluster.client.get(instance.url + "/readyz", auth=OPS_AUTH).json()["store"]
        assert store["resets"] == 1
        assert "smsguard_store_resets_total 1.0" in cluster.client.get(instance.url + "/metrics").text
    window.check()
    fresh = cluster.mint(cluster.a.url)["access_token"]
    with gateway_process(cluster.config, cluster.env) as late:
        for token in (cluster.tokens["revoked"], cluster.tokens["valid"]):
            assert cluster.get(late.url, token).status_code == 401
        for base in (late.url, cluster.a.url, cluster.b.url):
            assert cluster.get(base, fresh).status_code == 200
        assert cluster.get(cluster.b.url, cluster.mint(late.url)["access_token"]).status_code == 200
