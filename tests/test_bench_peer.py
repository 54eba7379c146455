"""bench/peer.py's set-up (issue 20): the HAProxy template is valid and both proxies judge the same tokens alike.

`make bench` compares smsguard with HAProxy 2.6 `jwt_verify` on tokens the bench mints itself; a comparison is
only fair if both accept the same valid token, refuse the same wrong-scope token and inject the same
upstream credential. Here HAProxy and a real `gateway serve` run briefly on loopback in front of a recording
upstream. Needs `haproxy` on PATH (`make test` and `make bench` install Debian's): never skipped.
"""

from __future__ import annotations

import importlib
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from fakes import RecordingUpstream, Reply
from gatewayconfig import ROOT
from processes import free_port, gateway_process

USER, PASSWORD = "bench-user", "bench-password"


@pytest.fixture(scope="module")
def peer() -> ModuleType:
    """bench/peer.py, imported the way bench/run.py imports it (bench/ on the path)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return importlib.import_module("peer")
    finally:
        sys.path.remove(str(ROOT / "bench"))


def haproxy_binary() -> str:
    binary = shutil.which("haproxy")
    assert binary, "haproxy must be on PATH (`make test` installs it)"
    return binary


def render(peer: ModuleType, directory: Path, port: int, upstream_port: int) -> tuple[Path, object]:
    keys = peer.make_keys(directory)
    path = directory / "haproxy.cfg"
    path.write_text(
        peer.render_haproxy(
            port=port, upstream_port=upstream_port, public_key=keys.es256_public,
            upstream_basic=peer.basic_credential(USER, PASSWORD),
        )
    )  # fmt: skip
    return path, keys


def test_the_template_renders_to_a_config_haproxy_accepts(peer: ModuleType, tmp_path: Path) -> None:
    path, _ = render(peer, tmp_path, free_port(), free_port())
    text = path.read_text()
    assert "nbthread 1" in text
    assert 'jwt_verify("ES256",' in text
    assert re.search(r"\{\w+\}", text) is None, "a placeholder was left unfilled"
    checked = subprocess.run([haproxy_binary(), "-c", "-f", str(path)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@contextmanager
def haproxy(config: Path, port: int, log: Path, timeout_s: float = 10.0) -> Iterator[None]:
    with log.open("wb") as sink:
        process = subprocess.Popen([haproxy_binary(), "-db", "-f", str(config)], stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert process.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "haproxy did not listen"
                time.sleep(0.05)
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_haproxy_and_smsguard_accept_and_refuse_the_same_minted_tokens(peer: ModuleType, tmp_path: Path) -> None:
    basic = "Basic " + peer.basic_credential(USER, PASSWORD)
    async with RecordingUpstream(Reply(202, body=b'{"id":"1"}')) as upstream:
        upstream_port = int(upstream.url.rsplit(":", 1)[1])
        haproxy_port = free_port()
        haproxy_cfg, keys = render(peer, tmp_path, haproxy_port, upstream_port)
        config = peer.smsguard_config(
            tmp_path / "config.yaml", upstream_port=upstream_port, policies=[ROOT / "policies" / "smsgate.yaml"],
            keys=keys,
        )  # fmt: skip
        env = {"BENCH_SMSGATE_USER": USER, "BENCH_SMSGATE_PASSWORD": PASSWORD}
        valid = peer.mint(keys, "ES256", 1)[0]
        reader = peer.mint(keys, "ES256", 1, scope="messages:read")[0]
        eddsa = peer.mint(keys, "EdDSA", 1)[0]
        with haproxy(haproxy_cfg, haproxy_port, tmp_path / "haproxy.log"), gateway_process(config, env) as gateway:
            async with httpx.AsyncClient(timeout=10) as client:

                async def send(url: str, token: str) -> int:
                    answer = await client.post(
                        url + "/3rdparty/v1/messages", json={"phoneNumbers": ["+15555550100"]},
                        headers={"Authorization": f"Bearer {token}"},
                    )  # fmt: skip
                    return answer.status_code

                for url in (f"http://127.0.0.1:{haproxy_port}", gateway.url):
                    seen = len(upstream.requests)
                    assert await send(url, valid) == 202, url
                    assert upstream.last.values("authorization") == [basic], url
                    assert await send(url, reader) == 403, url  # messages:read does not send
                    assert len(upstream.requests) == seen + 1, url
                assert await send(gateway.url, eddsa) == 202  # smsguard's EdDSA issuer
                assert await send(f"http://127.0.0.1:{haproxy_port}", eddsa) == 401  # HAProxy pins ES256
