"""app.py hot reload: valid edits swap in atomically, invalid ones change nothing, SIGHUP reloads."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fakes import RecordingUpstream, Reply, UvicornServer
from gatewayconfig import OPS_PASSWORD, SMSGATE_POLICY, GatewayConfig

from gateway.app import Gateway, create_app

LOGS_RULE = "{method: GET, path: /logs, scope: logs:read}"


@dataclass
class Env:
    gateway: Gateway
    client: httpx.AsyncClient
    policy: Path
    config: Path
    upstream: RecordingUpstream
    token: str

    def edit(self, old: str, new: str) -> None:
        text = self.policy.read_text()
        assert old in text
        self.policy.write_text(text.replace(old, new))

    async def get(self, path: str) -> int:
        response = await self.client.get(path, headers={"authorization": f"Bearer {self.token}"})
        return response.status_code


async def start(tmp_path: Path, *, watch: bool, extra: str = "") -> AsyncIterator[Env]:
    tmp_path.mkdir()
    policy = tmp_path / "smsgate.yaml"
    policy.write_text(SMSGATE_POLICY.read_text())
    async with RecordingUpstream(Reply(200, body=b"[]")) as upstream:
        reload = f"reload: {{watch: {str(watch).lower()}, debounce_ms: 50}}\n"
        cfg = GatewayConfig(tmp_path, upstream.url + "/3rdparty/v1", policy=policy, extra=reload + extra)
        gateway = create_app(cfg.settings(), env=cfg.env)
        async with UvicornServer(gateway, lifespan="on") as server, httpx.AsyncClient(base_url=server.url) as client:
            pair = await gateway.tokens.issue("ops", ["messages:list", "settings:read"], 600, caller=None)
            yield Env(gateway, client, policy, tmp_path / "config.yaml", upstream, pair.access.token)


@pytest.fixture
async def watched(tmp_path: Path) -> AsyncIterator[Env]:
    async for env in start(tmp_path / "watched", watch=True, extra="admin: {issuer: self}\n"):
        yield env


@pytest.fixture
async def unwatched(tmp_path: Path) -> AsyncIterator[Env]:
    async for env in start(tmp_path / "unwatched", watch=False):
        yield env


async def test_valid_edit_takes_effect_within_two_seconds_under_load(watched: Env) -> None:
    """Under steady load, an edit granting /logs to messages:list applies within 2 s and no request fails."""
    assert await watched.get("/3rdparty/v1/logs") == 403
    statuses: list[int] = []
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            statuses.extend(await asyncio.gather(*(watched.get("/3rdparty/v1/messages") for _ in range(4))))

    workers = [asyncio.create_task(load()) for _ in range(2)]
    await asyncio.sleep(0.2)
    watched.edit(LOGS_RULE, "{method: GET, path: /logs, scope: messages:list}")
    edited = time.monotonic()
    while await watched.get("/3rdparty/v1/logs") != 200:
        assert time.monotonic() - edited < 2.0, "the edit was not applied within 2 s"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*workers)
    assert len(statuses) > 20
    assert set(statuses) == {200}
    assert watched.gateway.reloads == 1


async def test_invalid_edit_keeps_the_last_good_policy_and_reports_it(watched: Env) -> None:
    """A broken edit is rejected with file:line; the old rules stay enforced; /readyz and /admin/policy say so."""
    version = watched.gateway.runtime.version
    watched.edit(LOGS_RULE, "{method: GET, path: /logs, scope: messages:list, oops: true}")
    deadline = time.monotonic() + 3
    while watched.gateway.last_error is None:
        assert time.monotonic() < deadline, "the broken edit was not noticed"
        await asyncio.sleep(0.02)
    assert f"{watched.policy}:" in watched.gateway.last_error
    assert "oops: unknown key" in watched.gateway.last_error
    assert watched.gateway.runtime.version == version
    assert await watched.get("/3rdparty/v1/logs") == 403
    assert await watched.get("/3rdparty/v1/messages") == 200
    anonymous = await watched.client.get("/readyz")
    assert anonymous.json() == {"status": "ready", "checks": {"config": True, "upstreams": True, "store": True}}
    assert str(watched.policy) not in anonymous.text  # paths and the reload error are the admin's to see
    ready = (await watched.client.get("/readyz", headers={"authorization": f"Bearer {watched.token}"})).json()
    assert ready["status"] == "ready"
    assert ready["policy"]["last_error"] == watched.gateway.last_error
    assert ready["policy"]["version"] == version
    admin = await watched.client.get("/admin/policy", headers={"authorization": f"Bearer {watched.token}"})
    assert admin.status_code == 200
    assert admin.json()["last_error"] == watched.gateway.last_error


async def test_admin_policy_needs_the_configured_issuer_and_scope(watched: Env, unwatched: Env) -> None:
    """/admin/policy: settings:read from the admin issuer only; disabled by default (404)."""
    assert (await watched.client.get("/admin/policy")).status_code == 401
    basic = await watched.client.get("/admin/policy", auth=("ops", OPS_PASSWORD))
    assert basic.status_code == 403  # right scope (all:any) but not the configured issuer
    pair = await watched.gateway.tokens.issue("ops", ["messages:list"], 60, caller=None)
    lacking = await watched.client.get("/admin/policy", headers={"authorization": f"Bearer {pair.access.token}"})
    assert lacking.status_code == 403
    disabled = await unwatched.client.get("/admin/policy", headers={"authorization": f"Bearer {unwatched.token}"})
    assert disabled.status_code == 404


async def test_sighup_reloads(unwatched: Env) -> None:
    """With file watching off, SIGHUP validates and applies the edited files."""
    unwatched.edit(LOGS_RULE, "{method: GET, path: /logs, public: true}")
    await asyncio.sleep(0.3)
    assert await unwatched.get("/3rdparty/v1/logs") == 403  # not watched: nothing happened yet
    os.kill(os.getpid(), signal.SIGHUP)
    deadline = time.monotonic() + 3
    while await unwatched.get("/3rdparty/v1/logs") != 200:
        assert time.monotonic() < deadline, "SIGHUP did not reload"
        await asyncio.sleep(0.02)
    assert unwatched.gateway.reloads == 1


async def test_in_flight_request_finishes_under_the_version_it_started_with(unwatched: Env) -> None:
    """A slow request keeps its version's rule and pool; the replaced pools close once it is done."""
    unwatched.upstream.reply(Reply(200, body=b"[]", delay_s=1.0))
    old = unwatched.gateway.runtime
    slow = asyncio.create_task(unwatched.get("/3rdparty/v1/messages"))
    await unwatched.upstream.wait_for(1)
    unwatched.edit(
        "{method: GET, path: /messages, scope: messages:list}", "{method: GET, path: /messages2, scope: messages:list}"
    )
    assert await unwatched.gateway.reload() is True
    assert unwatched.gateway.runtime is not old
    assert old.proxy.ready()  # still draining
    assert await slow == 200
    assert await unwatched.get("/3rdparty/v1/messages") == 404  # the new version no longer has the route
    deadline = time.monotonic() + 3
    while old.proxy.ready():
        assert time.monotonic() < deadline, "the replaced version was never closed"
        await asyncio.sleep(0.05)


async def test_store_change_is_refused(unwatched: Env) -> None:
    """Switching the store needs a restart: the reload is rejected and says so."""
    text = unwatched.config.read_text()
    unwatched.config.write_text(text.replace("store: memory://", "store: redis://127.0.0.1:6379/0"))
    assert await unwatched.gateway.reload() is False
    assert "store cannot change while running" in (unwatched.gateway.last_error or "")


async def test_unchanged_files_do_not_count_as_a_reload(unwatched: Env) -> None:
    """Reloading identical files keeps the same Runtime."""
    runtime = unwatched.gateway.runtime
    assert await unwatched.gateway.reload() is True
    assert unwatched.gateway.runtime is runtime
    assert unwatched.gateway.reloads == 0


async def test_a_symlink_swap_is_an_edit(tmp_path: Path) -> None:
    """A Kubernetes ConfigMap update swaps a symlink to a new directory; the policy reached through it reloads."""
    tmp_path.mkdir(exist_ok=True)
    first, second = tmp_path / "v1", tmp_path / "v2"
    for folder in (first, second):
        folder.mkdir()
    text = SMSGATE_POLICY.read_text()
    (first / "smsgate.yaml").write_text(text)
    (second / "smsgate.yaml").write_text(text.replace(LOGS_RULE, "{method: GET, path: /logs, scope: messages:list}"))
    (tmp_path / "data").symlink_to(first)
    async with RecordingUpstream(Reply(200, body=b"[]")) as upstream:
        extra = "reload: {watch: true, debounce_ms: 50}\n"
        cfg = GatewayConfig(
            tmp_path, upstream.url + "/3rdparty/v1", policy=tmp_path / "data" / "smsgate.yaml", extra=extra
        )
        gateway = create_app(cfg.settings(), env=cfg.env)
        async with UvicornServer(gateway, lifespan="on") as server, httpx.AsyncClient(base_url=server.url) as client:
            pair = await gateway.tokens.issue("ops", ["messages:list"], 600, caller=None)
            headers = {"authorization": f"Bearer {pair.access.token}"}
            assert (await client.get("/3rdparty/v1/logs", headers=headers)).status_code == 403
            (tmp_path / "data.new").symlink_to(second)
            os.replace(tmp_path / "data.new", tmp_path / "data")  # atomic, as kubelet does
            deadline = time.monotonic() + 10
            while (await client.get("/3rdparty/v1/logs", headers=headers)).status_code != 200:
                assert time.monotonic() < deadline, "the swapped policy was not loaded"
                await asyncio.sleep(0.05)
            assert gateway.reloads == 1


async def test_a_file_replaced_by_rename_is_an_edit(watched: Env) -> None:
    """Editors and config managers write a new file and rename it over the old one."""
    assert await watched.get("/3rdparty/v1/logs") == 403
    replacement = watched.policy.with_name("smsgate.yaml.tmp")
    replacement.write_text(
        watched.policy.read_text().replace(LOGS_RULE, "{method: GET, path: /logs, scope: messages:list}")
    )
    os.replace(replacement, watched.policy)
    deadline = time.monotonic() + 10
    while await watched.get("/3rdparty/v1/logs") != 200:
        assert time.monotonic() < deadline, "the renamed policy was not loaded"
        await asyncio.sleep(0.05)
    assert watched.gateway.reloads == 1
