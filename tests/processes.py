"""Run `python -m gateway serve` as a real subprocess on a free port (multi-instance and process tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class GatewayProcess:
    url: str
    port: int
    pid: int
    output: Path  # everything the process printed (a file, not a pipe: an unread pipe fills and blocks it)


@contextmanager
def gateway_process(
    config: Path,
    env: Mapping[str, str],
    *args: str,
    port: int | None = None,
    output: Path | None = None,
    timeout_s: float = 20.0,
) -> Iterator[GatewayProcess]:
    """Start `gateway serve [args]`, wait for /readyz, yield its URL and pid, then SIGTERM it and wait."""
    with tempfile.TemporaryDirectory() as scratch:
        output = output or Path(scratch) / "gateway.log"
        port = port or free_port()
        with output.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port), *args],
                env={**os.environ, **env},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"gateway exited with {process.returncode}: {output.read_text()[-2000:]}")
                try:
                    if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("gateway did not become ready")
                time.sleep(0.05)
            yield GatewayProcess(url, port, process.pid, output)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
