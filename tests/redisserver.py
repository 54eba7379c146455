"""A redis-server of a test's own, on a free port: its command counts are the test's alone, and it can be
killed and restarted (the shared Redis on 6379 cannot). Needs `redis-server` on PATH, as `make test` does."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis.asyncio as aioredis
from processes import free_port


class PrivateRedis:
    """One redis-server process: without `data_dir` no persistence (a restart starts empty, like a crashed
    cache); with it an append-only file fsynced on every write (a restart keeps everything, `wipe` loses it)."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.data_dir = data_dir
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server must be on PATH (the Redis tests are never skipped)"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            args[-1] = "yes"
            args += ["--appendfsync", "always", "--dir", str(self.data_dir)]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert self._process.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.005)

    def stop(self) -> None:
        """Kill it (clients see their connections drop)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def freeze(self) -> None:
        """SIGSTOP: connections stay open, nothing answers."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def wipe(self) -> None:
        """Delete the data files (while stopped): the next start is empty."""
        assert self._process is None
        assert self.data_dir is not None
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def client(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(self.url)


async def exists_calls(admin: aioredis.Redis) -> int:
    """How many EXISTS the server has run (commandstats), scripts' included."""
    stats = await admin.info("commandstats")
    return int(stats.get("cmdstat_exists", {}).get("calls", 0))


async def mget_calls(admin: aioredis.Redis) -> int:
    """How many MGET the server has run (the store's fallback revocation lookup is one)."""
    stats = await admin.info("commandstats")
    return int(stats.get("cmdstat_mget", {}).get("calls", 0))


@contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    """A started server, killed on exit."""
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()
