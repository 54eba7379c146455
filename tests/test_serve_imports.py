"""`gateway serve` loads only what its config uses: a worker's idle memory is mostly the modules it imported.

A real `gateway serve` process (one worker, the shipped SMSGate policy) answers a proxied send, then stops on
SIGTERM and writes the names of every module it imported. Libraries for features the config does not use must
be absent: phonenumbers without `sms.destinations`, redis (and the OpenTelemetry SDK redis pulls in) with
`memory://`, the demo's Starlette sandbox, the policy tools and the studio. bench/MEMORY.md has the megabytes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fakes import RecordingUpstream, Reply
from gatewayconfig import SENDER_PASSWORD, GatewayConfig
from processes import free_port

# Runs `gateway serve` in-process and writes sys.modules on SIGTERM, once uvicorn has drained and passes the
# signal on to the handler it found.
LAUNCH = """
import signal, sys
from pathlib import Path
def stop(*_):
    Path(sys.argv[1]).write_text("\\n".join(sorted(sys.modules)))
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
from gateway.cli import main
sys.exit(main(sys.argv[2:]))
"""

NEVER_FOR_THIS_CONFIG = (
    "phonenumbers",  # no policy limits destinations
    "starlette",  # the demo's sandbox upstream
    "aiohttp",
    "gateway.sandbox",
    "gateway.demo",
    "gateway.policytools.tools",
    "gateway.studio.app",
)
# tracing is off; redis's client imports the OpenTelemetry SDK itself, so only memory:// can do without it
NEVER_WITH_MEMORY = ("redis", "opentelemetry")


async def _served_modules(tmp_path: Path, store: str) -> set[str]:
    """The modules a one-worker `gateway serve` had imported after serving one proxied POST."""
    async with RecordingUpstream(Reply(202, body=b'{"id":"m1","state":"Pending"}')) as upstream:
        cfg = GatewayConfig(tmp_path, upstream.url + "/3rdparty/v1", store=store)
        config, port, modules = cfg.write(), free_port(), tmp_path / "modules.txt"
        argv = ["serve", "--config", str(config), "--port", str(port)]
        with (tmp_path / "serve.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-c", LAUNCH, str(modules), *argv],
                env={**os.environ, **cfg.env},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        try:
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(timeout=5) as client:
                deadline = time.monotonic() + 30
                while True:
                    assert process.poll() is None, "gateway serve exited early"
                    try:
                        if (await client.get(url + "/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        assert time.monotonic() < deadline, "gateway serve did not start"
                        await asyncio.sleep(0.1)
                body = {"textMessage": {"text": "hi"}, "phoneNumbers": ["+15555550100"]}
                sent = await client.post(url + "/3rdparty/v1/messages", json=body, auth=("sender", SENDER_PASSWORD))
                assert sent.status_code == 202, sent.text
                assert len(upstream.requests) == 1
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(process.wait, 20)
        return set(modules.read_text().split())


@pytest.mark.parametrize(("store", "redis_expected"), [("memory://", False), ("redis://127.0.0.1:6379/0", True)])
async def test_serve_imports_only_what_the_config_uses(tmp_path: Path, store: str, redis_expected: bool) -> None:
    """Without destinations, tracing or a redis:// store, their libraries are never imported; with one, it is."""
    modules = await _served_modules(tmp_path, store)
    assert {"uvicorn", "gateway.proxy.forward", "gateway.web.server"} <= modules  # the list is the server's
    unused = NEVER_FOR_THIS_CONFIG if redis_expected else (*NEVER_FOR_THIS_CONFIG, *NEVER_WITH_MEMORY)
    loaded = sorted(name for name in unused if name in modules)
    assert not loaded, f"gateway serve imported modules this config does not use: {loaded}"
    assert ("redis" in modules) is redis_expected
