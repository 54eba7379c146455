"""A redis-server of a test's own, on a free port: its command counts are the test's alone, and it can be
killed and restarted (the shared Redis on 6379 cannot). Also a local Redis Cluster and a master with a
Sentinel, all on free ports. Needs `redis-server` and `redis-cli` on PATH, as `make test` does."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


def _wait_for_port(process: subprocess.Popen[bytes], port: int, what: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            assert process.poll() is None, f"{what} exited"
            assert time.monotonic() < deadline, f"{what} did not start"
            time.sleep(0.005)


def _cli(*args: str) -> str:
    binary = shutil.which("redis-cli")
    assert binary, "redis-cli must be on PATH (the Redis tests are never skipped)"
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.kill()
    for process in processes:
        process.wait()


@dataclass(frozen=True)
class LocalCluster:
    """A Redis Cluster of `ports` (primaries only, slots split evenly by redis-cli)."""

    ports: tuple[int, ...]

    @property
    def url(self) -> str:
        """The store URL, every node a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def node(self, port: int) -> aioredis.Redis:
        """A plain client on one node (CLUSTER, PUBSUB NUMSUB, INFO ... about that node only)."""
        return aioredis.Redis(host="127.0.0.1", port=port)


@contextmanager
def local_cluster(directory: Path, nodes: int = 3) -> Iterator[LocalCluster]:
    """`nodes` redis-server processes with `--cluster-enabled yes` on free ports (bus ports chosen too, so
    port + 10000 need not be free), joined by `redis-cli --cluster create`, killed on exit."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server must be on PATH (the Redis tests are never skipped)"
    ports = tuple(free_port() for _ in range(nodes))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            args = [binary, "--port", str(port), "--cluster-port", str(free_port()), "--bind", "127.0.0.1"]
            args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
            args += ["--cluster-node-timeout", "5000", "--dir", str(directory), "--save", "", "--appendonly", "no"]
            process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            processes.append(process)
            _wait_for_port(process, port, "cluster node")
        addresses = [f"127.0.0.1:{port}" for port in ports]
        _cli("--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes")
        deadline = time.monotonic() + 20
        while not all("cluster_state:ok" in _cli("-p", str(port), "cluster", "info") for port in ports):
            assert time.monotonic() < deadline, "the cluster did not reach cluster_state:ok"
            time.sleep(0.05)
        yield LocalCluster(ports)
    finally:
        _stop(processes)


@dataclass(frozen=True)
class LocalSentinel:
    """One master redis-server watched by one Sentinel under `service`."""

    master_port: int
    sentinel_port: int
    service: str = "smsguard"

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.service}/0"


@contextmanager
def local_sentinel(directory: Path) -> Iterator[LocalSentinel]:
    """A master and a Sentinel monitoring it (quorum 1) on free ports, killed on exit.

    The Sentinel is `redis-sentinel` when installed, else `redis-server --sentinel` (the same program:
    Debian ships the `redis-sentinel` name in its own package)."""
    server = shutil.which("redis-server")
    assert server, "redis-server must be on PATH (the Redis tests are never skipped)"
    sentinel = shutil.which("redis-sentinel")
    master_port, sentinel_port = free_port(), free_port()
    config = directory / "sentinel.conf"  # Sentinel rewrites its config file: one of its own
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {directory}\n"
        f"sentinel monitor smsguard 127.0.0.1 {master_port} 1\n"
        "sentinel down-after-milliseconds smsguard 5000\n"
    )
    processes: list[subprocess.Popen[bytes]] = []
    try:
        args = [server, "--port", str(master_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        processes.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for_port(processes[-1], master_port, "master redis-server")
        args = [sentinel, str(config)] if sentinel else [server, str(config), "--sentinel"]
        processes.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for_port(processes[-1], sentinel_port, "redis-sentinel")
        deadline = time.monotonic() + 10
        query = ("-p", str(sentinel_port), "sentinel", "get-master-addr-by-name", "smsguard")
        while str(master_port) not in _cli(*query):
            assert time.monotonic() < deadline, "the Sentinel does not name the master"
            time.sleep(0.05)
        yield LocalSentinel(master_port, sentinel_port)
    finally:
        _stop(processes)
