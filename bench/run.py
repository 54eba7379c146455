"""End-to-end benchmark: smsguard against a bare aiohttp forwarder and an httpx forwarder, in one run.

    make bench                        # installs nginx, wrk, haproxy (Debian packages) if missing, then runs this
    .venv/bin/python bench/run.py [--duration 5] [--connections 4,32,128] [--rounds 1] [--profile]

Everything runs on loopback, in this order:

1. an upstream: nginx (`bench/nginx.conf.template`, one worker, no access log) answering SMSGate-shaped
   JSON (`POST /3rdparty/v1/messages` → 202 + Location, `GET /3rdparty/v1/messages/{id}` → 200);
2. the servers under test, all started at once (an idle server costs nothing) so that every measurement
   point runs them back to back and they share the machine's drift:
   - `nginx` itself, driven directly (what the upstream costs; the ceiling),
   - `baseline` (`bench/baseline_aiohttp.py`: aiohttp server + ClientSession, no auth, no logging),
   - `baseline+hs256` (the same, verifying an HS256 token with PyJWT, as in DESIGN.md's figure),
   - `httpx` (`bench/baseline_httpx.py`: httpx.AsyncClient in a minimal ASGI app under uvicorn),
   - `smsguard` with 1 and with 2 workers: `gateway serve` with EdDSA tokens of an issuer the bench plays
     (`auth.issuers`; 1 worker on `memory://`, 2 on Redis, which `--workers 2` needs), the
     shipped `policies/smsgate.yaml` plus 1,000 generated rules under `/extra`, Basic credentials
     injected upstream, uvicorn's access log on (and `--log-format json` / metrics when this gateway
     version has them),
3. wrk (`--latency`, one thread by default) with a small POST and a GET at each connection count, after a
   short warm-up; requests/s, p50 and p99 are parsed from its output;
4. rule scaling: smsguard with a 10-rule policy against the same policy plus 9,990 generated rules (10,000),
   alternated `--scaling-rounds` times at 32 connections, medians compared;
5. memory: RSS of every server process (each worker) when idle, after the load (steady state), and while
   1,000 slow clients hold a connection open with a half-sent request (headers only, or headers + half
   a body), both on the fresh servers and after the load;
6. `bench/RESULTS.md`: the machine, the tables, the ratios and the targets marked PASS/MISS;
7. then `bench/peer.py` (`--peer-only`: just it; `--no-peer`: not it): smsguard against HAProxy 2.6 with
   `jwt_verify` on the same ES256 tokens → `bench/PEER.md` (~3-4 min).

`--profile` instead samples one smsguard worker with py-spy (`.venv/bin/pip install py-spy`) under
wrk at 32 connections (POST) and writes `bench/PROFILE.md`. Targets are reported, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SMSGATE_POLICY = ROOT / "policies" / "smsgate.yaml"
PYTHON = sys.executable

POST_PATH = "/3rdparty/v1/messages"
GET_PATH = "/3rdparty/v1/messages/PyeZ1s3nKcOhVZ2IhV8lT"
POST_BODY = json.dumps(
    {"textMessage": {"text": "Your code is 482913"}, "phoneNumbers": ["+15555550100"], "withDeliveryReport": True},
    separators=(",", ":"),
)
WORKLOADS = {"POST": (POST_PATH, 202), "GET": (GET_PATH, 200)}
UPSTREAM_USER, UPSTREAM_PASSWORD = "bench-user", "bench-password-" + secrets.token_hex(8)


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_request(port: int, method: str, path: str, body: str | None = None, token: str | None = None, timeout=10):
    """One request on a fresh connection: (status, headers, body bytes)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


@dataclass
class Server:
    """A server under test (or the upstream): a subprocess in its own session, output to a log file."""

    key: str
    label: str
    argv: list[str]
    port: int
    logfile: Path
    ready_path: str = "/"
    token: str | None = None  # what wrk sends in Authorization
    env: dict[str, str] | None = None
    process: subprocess.Popen | None = None
    notes: list[str] = field(default_factory=list)

    def start(self) -> None:
        with open(self.logfile, "wb") as out:
            self.process = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                env=self.env, start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                http_request(self.port, "GET", self.ready_path)
                if self.key.startswith("smsguard") and self.workers_expected() > 1:
                    # every worker must be serving, not just the first one up
                    if len(self.worker_processes()) >= self.workers_expected():
                        time.sleep(1.0)
                        return
                else:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.label} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def workers_expected(self) -> int:
        if "--workers" in self.argv:
            return int(self.argv[self.argv.index("--workers") + 1])
        return 1

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # our own session: leftover workers, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)

    def worker_processes(self) -> list[psutil.Process]:
        """The processes that serve requests: uvicorn's spawned workers, nginx's worker, else the process."""
        assert self.process is not None
        root = psutil.Process(self.process.pid)
        children = root.children(recursive=True)
        workers = []
        for child in children:
            with contextlib.suppress(psutil.Error):
                cmdline = " ".join(child.cmdline())
                if "spawn_main" in cmdline or "nginx: worker" in cmdline:
                    workers.append(child)
        return workers or [root]

    def rss(self) -> dict[str, float]:
        """RSS in MiB: each worker, plus the supervising process when there is one."""
        assert self.process is not None
        result: dict[str, float] = {}
        workers = self.worker_processes()
        for index, worker in enumerate(workers):
            with contextlib.suppress(psutil.Error):
                result[f"worker{index}"] = worker.memory_info().rss / 2**20
        if workers[0].pid != self.process.pid:
            with contextlib.suppress(psutil.Error):
                result["supervisor"] = psutil.Process(self.process.pid).memory_info().rss / 2**20
        return result

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        return ""


# ---------------------------------------------------------------------------------------------------
# Other load on the machine (other people's tests and benchmarks distort every figure)


def busy_cpu_seconds() -> float:
    """CPU seconds all processes have spent (user + system; interrupt time, mostly our own loopback
    traffic, is not charged to any process and is left out)."""
    times = psutil.cpu_times()
    return times.user + times.nice + times.system


def cpu_by_process() -> dict[tuple[int, float], tuple[str, float]]:
    """(pid, start time) → (short command line, CPU seconds so far) for every process."""
    result = {}
    for proc in psutil.process_iter(["pid", "create_time", "cmdline", "name", "cpu_times"]):
        info = proc.info
        if info["cpu_times"] is None:
            continue
        command = " ".join(info["cmdline"] or [info["name"] or "?"])
        result[(info["pid"], info["create_time"])] = (command, info["cpu_times"].user + info["cpu_times"].system)
    return result


def other_processes(before: dict, ours: set[int], elapsed: float) -> str:
    """The processes, not ours, that used the most CPU since `before` (those still alive)."""
    used = []
    for key, (command, seconds) in cpu_by_process().items():
        if key[0] in ours or key[0] == os.getpid():
            continue
        delta = seconds - before.get(key, (command, 0.0))[1]
        if delta / elapsed >= 0.01:
            used.append((delta, command))
    used.sort(reverse=True)
    return "; ".join(f"`{command[:70]}` {delta / elapsed:.2f}" for delta, command in used[:3]) or "none above 0.01"


def own_cpu_seconds(servers: list[Server]) -> float:
    """CPU seconds used by this script, its finished children (wrk, ...) and the live servers it started."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    for server in servers:
        if server.process is None or server.process.poll() is not None:
            continue
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(server.process.pid)
            for proc in (root, *root.children(recursive=True)):
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    total += times.user + times.system + times.children_user + times.children_system
    return total


def wait_for_quiet(limit_s: float, servers: list[Server] | tuple = (), threshold: float = 0.25) -> float:
    """Wait (up to limit_s) until other processes leave the machine mostly idle; return their cores in use."""
    deadline = time.monotonic() + limit_s
    while True:
        before, own, started = busy_cpu_seconds(), own_cpu_seconds(servers), time.monotonic()
        time.sleep(2.0)
        used = (busy_cpu_seconds() - before) - (own_cpu_seconds(servers) - own)
        busy = max(used, 0.0) / (time.monotonic() - started)
        if busy <= threshold or time.monotonic() >= deadline:
            return busy
        log(f"bench: the machine is busy ({busy:.2f} cores in use by other processes); waiting for it to settle")
        time.sleep(8.0)


# ---------------------------------------------------------------------------------------------------
# Configs, keys, tokens


def extra_policy(path: Path, rules: int, mount: str) -> Path:
    """`rules` generated rules (4 shapes, sharing method and depth with the driven SMSGate routes)."""
    lines = [
        "# generated by bench/run.py",
        "upstream: smsgate",
        f"mount: {mount}",
        "scopes:",
        *(f"  extra{k}:read: Read resource group {k}\n  extra{k}:write: Write resource group {k}" for k in range(10)),
        "rules:",
    ]
    for index in range(rules):
        group, shape = index % 10, index % 4
        resource = f"/res{index // 4}"
        if shape == 0:
            lines.append(f"  - {{method: GET, path: {resource}/items, scope: extra{group}:read}}")
        elif shape == 1:
            lines.append(f"  - {{method: POST, path: {resource}/items, scope: extra{group}:write}}")
        elif shape == 2:
            lines.append(f'  - {{method: GET, path: "{resource}/items/{{id}}", scope: extra{group}:read}}')
        else:
            lines.append(f'  - {{methods: [PUT, DELETE], path: "{resource}/items/{{id}}", scope: extra{group}:write}}')
    path.write_text("\n".join(lines) + "\n")
    return path


def small_smsgate_policy(path: Path, rules: int = 10) -> Path:
    """The first `rules` rules of the shipped SMSGate policy (they include POST /messages, GET /messages/{id})."""
    policy = yaml.safe_load(SMSGATE_POLICY.read_text())
    policy["rules"] = policy["rules"][:rules]
    path.write_text(
        "# generated by bench/run.py from policies/smsgate.yaml\n" + yaml.safe_dump(policy, sort_keys=False)
    )
    return path


def count_rules(*policies: Path) -> int:
    return sum(len(yaml.safe_load(p.read_text())["rules"]) for p in policies)


def schema_has(*keys: str) -> bool:
    """Whether the running gateway's config schema knows `keys` (a nested path of properties)."""
    try:
        node = json.loads((ROOT / "gateway" / "config.schema.json").read_text())
    except (OSError, ValueError):
        return False
    for key in keys:
        node = node.get("properties", {}).get(key) if isinstance(node, dict) else None
        if node is None:
            return False
    return True


WORKERS_STORE = "redis://127.0.0.1:6379/14"  # make bench starts a Redis when none answers (Makefile `redis`)
BENCH_ISSUER = "bench-idp"  # the bench plays an identity provider: its tokens need no store (see issue_token)


def write_config(
    path: Path,
    upstream_port: int,
    policies: list[Path],
    key_file: Path | None,
    store: str = "memory://",
    issuers: list[str] | None = None,
) -> Path:
    """A bench gateway's config. `issuers`: the `auth.issuers` entries (YAML flow mappings); by default the
    bench's own EdDSA issuer on `key_file`. `key_file` also signs the gateway's own tokens (`tokens:`), unless
    None (no `tokens:` section)."""
    policy_list = ", ".join(str(p) for p in policies)
    if issuers is None:
        issuers = [
            f"{{name: bench, issuer: {BENCH_ISSUER}, audience: sms-api, algorithms: [EdDSA], "
            f"public_key_file: {key_file}}}"
        ]
    trusted = "".join(f"    - {entry}\n" for entry in issuers)
    tokens = (
        ""
        if key_file is None
        else f"""\
tokens:
  enabled: true
  issuer: smsguard
  audience: sms-api
  default_ttl_s: 900
  max_ttl_s: 21600
  keys:
    - {{kid: bench-ed25519, algorithm: EdDSA, private_key_file: {key_file}}}
"""
    )
    # logging and metrics on, explicitly, when this gateway version has the keys (they default to on)
    metrics = "metrics: {enabled: true}\n" if schema_has("metrics", "enabled") else ""
    if schema_has("log", "access"):
        metrics += "log: {access: true}\n"
    path.write_text(f"""\
# generated by bench/run.py
listen: {{host: 127.0.0.1, port: 8080}}
store: {store}
policies: [{policy_list}]
auth:
  leeway_s: 30
  max_token_lifetime_s: 86400
  issuers:
{trusted}{tokens}upstreams:
  smsgate:
    url: http://127.0.0.1:{upstream_port}/3rdparty/v1
    credentials: {{type: basic, username: "${{BENCH_SMSGATE_USER}}", password: "${{BENCH_SMSGATE_PASSWORD}}"}}
{metrics}""")
    return path


def ed25519_key(path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


def issue_token(key_file: Path) -> str:
    """An EdDSA access token of the bench's own issuer (`auth.issuers` in write_config), valid on every server.

    Not `gateway token issue`: the gateway's own tokens belong to one store epoch, and a `memory://` store
    is its own epoch in every process, so no token minted beforehand would be accepted (issue 14)."""
    import uuid

    import jwt
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    now = int(time.time())
    claims = {"iss": BENCH_ISSUER, "sub": "bench", "aud": "sms-api", "iat": now, "exp": now + 21600}
    claims |= {"jti": str(uuid.uuid4()), "scope": "messages:send messages:read"}
    return jwt.encode(claims, load_pem_private_key(key_file.read_bytes(), None), algorithm="EdDSA")


def serve_flags() -> tuple[list[str], str]:
    """Extra `gateway serve` flags this version supports (structured logging), and what logging is on."""
    done = subprocess.run(
        [PYTHON, "-m", "gateway", "serve", "--help"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    if "--log-format" in done.stdout:
        keys = " (`log: {access: true}`)" if schema_has("log", "access") else ""
        return ["--log-format", "json"], f"smsguard's own JSON access event per request{keys}, `--log-format json`"
    return [], "uvicorn's access log (this gateway version has no `--log-format` yet)"


# ---------------------------------------------------------------------------------------------------
# wrk


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx/3xx answers + socket errors
    foreign: float = 0.0  # cores other processes used during the run
    cpu_us: float = 0.0  # CPU time the server's processes used per request (user + system)

    @classmethod
    def median(cls, results: list[Result]) -> Result:
        ordered = sorted(results, key=lambda r: r.rps)
        middle = ordered[len(ordered) // 2]
        return cls(
            rps=statistics.median(r.rps for r in results),
            p50_ms=statistics.median(r.p50_ms for r in results),
            p99_ms=statistics.median(r.p99_ms for r in results),
            requests=middle.requests,
            errors=sum(r.errors for r in results),
            foreign=max(r.foreign for r in results),
            cpu_us=statistics.median(r.cpu_us for r in results),
        )


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> Result:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", output, re.MULTILINE))
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(match.group(1))
    if match := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        errors += sum(int(g) for g in match.groups())
    return Result(rps, _duration_ms(percentiles["50"]), _duration_ms(percentiles["99"]), requests, errors)


def lua_script(directory: Path, workload: str, token: str | None) -> Path:
    lines = []
    if workload == "POST":
        lines += [
            'wrk.method = "POST"',
            f"wrk.body = '{POST_BODY}'",
            'wrk.headers["Content-Type"] = "application/json"',
        ]
    if token:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {token}"')
    digest = secrets.token_hex(4)
    path = directory / f"{workload.lower()}-{digest}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


FOREIGN_LIMIT = 0.1  # cores: above this, other processes disturbed a run


def measure(args, servers: list[Server], server: Server, workload: str, connections: int, duration: int, scripts):
    """One wrk run; again (up to --retries times) when other processes took CPU meanwhile."""
    for attempt in range(args.retries + 1):
        busy, own, started = busy_cpu_seconds(), own_cpu_seconds(servers), time.monotonic()
        served = own_cpu_seconds([server]) - own_cpu_seconds([])
        result = run_wrk(args, server, workload, connections, duration, scripts)
        served = own_cpu_seconds([server]) - own_cpu_seconds([]) - served
        result.cpu_us = 1e6 * served / max(result.requests, 1)
        used = (busy_cpu_seconds() - busy) - (own_cpu_seconds(servers) - own)
        result.foreign = max(used, 0.0) / (time.monotonic() - started)
        if result.foreign <= FOREIGN_LIMIT:
            break
        args.disturbed += 1
        if attempt < args.retries:
            log(f"    (other processes used {result.foreign:.2f} cores: measuring again once the machine settles)")
            wait_for_quiet(60, servers, threshold=FOREIGN_LIMIT)
            if args.warmup > 0:
                run_wrk(args, server, workload, connections, args.warmup, scripts)
    args.measured += 1
    return result


def run_wrk(args, server: Server, workload: str, connections: int, duration: int, scripts) -> Result:
    path = WORKLOADS[workload][0]
    argv = ["wrk", f"-t{min(args.threads, connections)}", f"-c{connections}", f"-d{duration}s", "--latency"]
    argv += ["--timeout", "10s", "-s", str(scripts[(server.token, workload)]), f"http://127.0.0.1:{server.port}{path}"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed against {server.label}: {done.stderr.strip()}")
    try:
        return parse_wrk(done.stdout)
    except (AttributeError, KeyError, ValueError) as exc:
        raise RuntimeError(f"could not parse wrk output ({exc}):\n{done.stdout}") from exc


# ---------------------------------------------------------------------------------------------------
# Slow clients


def hold_slow_clients(server: Server, count: int, with_body: bool, settle: float) -> tuple[dict[str, float], int]:
    """Open `count` connections that send part of a request and stall; return RSS meanwhile, then close."""
    head = (
        f"POST {POST_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n"
        + (f"Authorization: Bearer {server.token}\r\n" if server.token else "")
        + f"Content-Length: {len(POST_BODY)}\r\n"
    )
    partial = (head + "\r\n" + POST_BODY[: len(POST_BODY) // 2]) if with_body else head
    sockets: list[socket.socket] = []
    opened = 0
    try:
        for _ in range(count):
            try:
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                sock.sendall(partial.encode())
            except OSError:
                continue
            sockets.append(sock)
            opened += 1
        time.sleep(settle)
        rss = server.rss()
        # every held connection should still be open: a server that timed them out would read as cheap
        alive = sum(1 for sock in sockets if _still_open(sock))
        return rss, min(opened, alive)
    finally:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        data = sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)
    return bool(data)  # b"" means the server closed it; data means it answered early (e.g. 408)


# ---------------------------------------------------------------------------------------------------
# Report


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("smsguard", "aiohttp", "httpx", "uvicorn", "uvloop", "httptools", "PyJWT", "cryptography"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False).stderr.strip()
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.splitlines()
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "gateway"],
        capture_output=True, text=True, cwd=ROOT, check=False,
    ).stdout.strip()  # fmt: skip
    return {
        "cpus": f"{os.cpu_count()} ({cpu})",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "tools": f"{nginx.removeprefix('nginx version: ')}, {wrk[0].split(' Copyright')[0] if wrk else 'wrk ?'}",
        "commit": (git.stdout.strip() or "?") + (" + uncommitted changes in gateway/" if dirty else ""),
    }


def fmt_rps(result: Result | None) -> str:
    if result is None:
        return "—"
    return f"{result.rps:,.0f}" + ("*" if result.errors else "") + ("~" if result.foreign > FOREIGN_LIMIT else "")


def fmt_lat(result: Result | None) -> str:
    if result is None:
        return "—"
    return f"{result.p50_ms:.2f} / {result.p99_ms:.2f}"


def ratio(a: Result | None, b: Result | None) -> float | None:
    if a is None or b is None or b.rps == 0:
        return None
    return a.rps / b.rps


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out += ["| " + " | ".join(_align(c, w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join(out)


def _align(cell: str, width: int) -> str:
    """Figures right-aligned, words left-aligned."""
    return cell.rjust(width) if re.match(r"[\d—.,]", cell) else cell.ljust(width)


def mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


# ---------------------------------------------------------------------------------------------------
# Main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured wrk run (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of wrk before each measured run")
    parser.add_argument("--connections", default="4,32,128", help="comma-separated wrk connection counts")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: it shares 2 cores)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the main matrix, report medians")
    parser.add_argument("--scaling-rounds", type=int, default=5, help="alternations of 10 vs 10,000 rules")
    parser.add_argument("--extra-rules", type=int, default=1000, help="generated rules next to smsgate.yaml")
    parser.add_argument("--big-rules", type=int, default=10_000, help="the large policy of the scaling test")
    parser.add_argument("--slow-clients", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=BENCH / "RESULTS.md")
    parser.add_argument("--quiet-wait", type=float, default=300, help="seconds to wait for an idle machine")
    parser.add_argument("--retries", type=int, default=2, help="re-runs of a measurement other load disturbed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    parser.add_argument("--profile", action="store_true", help="only profile smsguard with py-spy → PROFILE.md")
    parser.add_argument("--profile-seconds", type=int, default=10)
    parser.add_argument(
        "--quick", action="store_true", help="only the baseline vs smsguard 1 worker, printed (a check while coding)"
    )
    parser.add_argument("--peer-only", action="store_true", help="only smsguard vs HAProxy jwt_verify → PEER.md")
    parser.add_argument("--no-peer", action="store_true", help="skip smsguard vs HAProxy (bench/peer.py)")
    parser.add_argument("--peer-output", type=Path, default=BENCH / "PEER.md")
    parser.add_argument("--peer-tokens", type=int, default=100_000, help="new-token scenarios: tokens per algorithm")
    parser.add_argument("--peer-clients", type=int, default=100_000, help="distinct clients (tokens) in scenario (d)")
    parser.add_argument("--peer-redis", default="redis://127.0.0.1:6379/13", help="the store of the 2-worker line")
    args = parser.parse_args()
    peer = not (args.no_peer or args.profile or args.quick)
    connection_counts = [int(c) for c in args.connections.split(",")]

    for tool in ("nginx", "wrk", *(["haproxy"] if peer else [])):
        if shutil.which(tool) is None:
            log(f"bench: {tool} not found (apt-get install -y nginx-light wrk haproxy, or run `make bench`)")
            return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # 1,000 slow clients need descriptors
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    if args.peer_only:
        import peer as peer_bench  # bench/peer.py: HAProxy jwt_verify as the peer

        return peer_bench.main(args)
    code = main_matrix(args, connection_counts)
    if code == 0 and peer:
        import peer as peer_bench

        code = peer_bench.main(args)
    return code


def main_matrix(args, connection_counts: list[int]) -> int:
    """Everything but the HAProxy peer: the servers, the matrix, scaling, memory → RESULTS.md (or a profile)."""

    args.busy_before = wait_for_quiet(args.quiet_wait)
    args.measured = args.disturbed = 0
    args.cpu_start = (busy_cpu_seconds(), own_cpu_seconds([]))
    args.processes_start = cpu_by_process()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="smsguard-bench-"))
    servers: list[Server] = []
    try:
        return run(args, connection_counts, workdir, servers, started)
    finally:
        for server in reversed(servers):
            server.stop()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def run(args, connection_counts: list[int], workdir: Path, servers: list[Server], started: float) -> int:
    env = {**os.environ, "BENCH_SMSGATE_USER": UPSTREAM_USER, "BENCH_SMSGATE_PASSWORD": UPSTREAM_PASSWORD}
    env.pop("SMSGUARD_CONFIG", None)

    # -- the upstream
    nginx_dir = workdir / "nginx"
    nginx_dir.mkdir()
    upstream_port = free_port()
    template = (BENCH / "nginx.conf.template").read_text()
    (nginx_dir / "nginx.conf").write_text(template.format(prefix=nginx_dir, port=upstream_port))
    upstream = Server(
        "nginx", "nginx (upstream, direct)",
        ["nginx", "-p", str(nginx_dir), "-c", str(nginx_dir / "nginx.conf"), "-e", str(nginx_dir / "error.log")],
        upstream_port, workdir / "nginx.log", ready_path="/3rdparty/v1/health",
    )  # fmt: skip
    servers.append(upstream)
    upstream.start()
    upstream.wait_ready()

    # -- keys, policies, configs, tokens
    key_file = ed25519_key(workdir / "ed25519.pem")
    extra = extra_policy(workdir / "extra-1000.yaml", args.extra_rules, "/extra")
    main_config = write_config(workdir / "config.yaml", upstream_port, [SMSGATE_POLICY, extra], key_file)
    # `--workers 2` needs a shared store (memory:// is refused): Redis, whose revocations are read from the
    # worker's local mirror, so a request makes no round trip to it.
    shared_config = write_config(
        workdir / "config-redis.yaml", upstream_port, [SMSGATE_POLICY, extra], key_file, WORKERS_STORE
    )
    small = small_smsgate_policy(workdir / "smsgate-10.yaml")
    big_extra = extra_policy(workdir / "extra-big.yaml", args.big_rules - count_rules(small), "/extra")
    config_10 = write_config(workdir / "config-10.yaml", upstream_port, [small], key_file)
    config_big = write_config(workdir / "config-big.yaml", upstream_port, [small, big_extra], key_file)
    rules_main = count_rules(SMSGATE_POLICY, extra)
    rules_small, rules_big = count_rules(small), count_rules(small, big_extra)
    token = issue_token(key_file)
    hs256_secret = secrets.token_urlsafe(48)
    import jwt

    hs256_token = jwt.encode({"sub": "bench", "exp": int(time.time()) + 21600}, hs256_secret, algorithm="HS256")
    flags, logging_note = serve_flags()

    def gateway(key: str, label: str, config: Path, workers: int) -> Server:
        port = free_port()
        argv = [PYTHON, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)]
        argv += ["--workers", str(workers)]
        argv += flags
        return Server(key, label, argv, port, workdir / f"{key}.log", ready_path="/readyz", token=token, env=env)

    upstream_url = f"http://127.0.0.1:{upstream_port}"
    baseline_port, hs_port, httpx_port, uvicorn_port = free_port(), free_port(), free_port(), free_port()
    contenders = [
        Server(
            "baseline", "baseline aiohttp",
            [PYTHON, str(BENCH / "baseline_aiohttp.py"), "--upstream", upstream_url, "--port", str(baseline_port)],
            baseline_port, workdir / "baseline.log", token=token,
        ),
        Server(
            "hs256", "baseline + HS256",
            [PYTHON, str(BENCH / "baseline_aiohttp.py"), "--upstream", upstream_url, "--port", str(hs_port),
             "--hs256", hs256_secret],
            hs_port, workdir / "hs256.log", token=hs256_token,
        ),
        Server(
            "uvicorn-aiohttp", "uvicorn + aiohttp",
            [PYTHON, str(BENCH / "baseline_httpx.py"), "--upstream", upstream_url, "--port", str(uvicorn_port),
             "--client", "aiohttp"],
            uvicorn_port, workdir / "uvicorn-aiohttp.log", token=token,
        ),
        Server(
            "httpx", "httpx forwarder",
            [PYTHON, str(BENCH / "baseline_httpx.py"), "--upstream", upstream_url, "--port", str(httpx_port)],
            httpx_port, workdir / "httpx.log", token=token,
        ),
        gateway("smsguard-w1", "smsguard 1 worker", main_config, 1),
        gateway("smsguard-w2", "smsguard 2 workers", shared_config, 2),
    ]  # fmt: skip
    scaling = [
        gateway("smsguard-10", f"{rules_small} rules", config_10, 1),
        gateway("smsguard-big", f"{rules_big:,} rules", config_big, 1),
    ]
    upstream.token = token  # nginx ignores it; the request stays the same size
    gateway_w1 = next(s for s in contenders if s.key == "smsguard-w1")
    if args.profile:
        contenders, scaling = [gateway_w1], []
    elif args.quick:
        contenders, scaling = [contenders[0], gateway_w1], []
    log(f"bench: starting {len(contenders) + len(scaling)} servers (upstream nginx on :{upstream_port})")
    for server in (*contenders, *scaling):
        servers.append(server)
        server.start()
    for server in (*contenders, *scaling):
        server.wait_ready()

    # -- sanity: every server forwards both requests correctly; smsguard refuses a request without a token
    for server in (upstream, *contenders, *scaling):
        for workload, (path, expected) in WORKLOADS.items():
            body = POST_BODY if workload == "POST" else None
            status, headers, payload = http_request(server.port, workload, path, body, server.token)
            if status != expected or b'"id"' not in payload:
                raise RuntimeError(f"{server.label}: {workload} {path} answered {status} {payload[:200]!r}")
            if workload == "POST" and headers.get("Location") != "/3rdparty/v1/messages/PyeZ1s3nKcOhVZ2IhV8lT":
                server.notes.append(f"Location: {headers.get('Location')}")
        if server.key.startswith("smsguard"):
            status, _, _ = http_request(server.port, "POST", POST_PATH, POST_BODY, None)
            if status != 401:
                raise RuntimeError(f"{server.label}: a request without a token answered {status}, not 401")
    metrics_status = http_request(gateway_w1.port, "GET", "/metrics")[0]
    metrics_on = metrics_status == 200
    idle_rss = {server.key: server.rss() for server in (*contenders, *scaling)}

    scripts = {}
    for server in (upstream, *contenders, *scaling):
        for workload in WORKLOADS:
            if (server.token, workload) not in scripts:
                scripts[(server.token, workload)] = lua_script(workdir, workload, server.token)

    if args.profile:
        return profile(args, gateway_w1, scripts, workdir, servers)
    if args.quick:
        return quick(args, contenders, scripts, servers, connection_counts)

    # -- memory of fresh servers holding slow clients (before any load has grown their heaps)
    slow: dict[tuple[str, str], tuple[dict[str, float], int]] = {}
    log(f"bench: fresh servers with {args.slow_clients} slow clients")
    for server in contenders:
        slow[(server.key, "fresh")] = hold_slow_clients(server, args.slow_clients, True, settle=2.0)
        time.sleep(0.5)

    # -- the main matrix, every server back to back at each point
    order = [upstream, *contenders]
    results: dict[tuple[str, str, int], list[Result]] = defaultdict(list)
    cpu_split: dict[tuple[str, str, int], list[float]] = {}  # each worker's share of the CPU time used
    points = [(w, c) for w in WORKLOADS for c in connection_counts]
    log(
        f"bench: {len(points)} points x {len(order)} servers x {args.rounds} round(s), "
        f"{args.duration:g}s each (+{args.warmup:g}s warm-up)"
    )
    for round_index in range(args.rounds):
        for workload, connections in points:
            for server in order:
                if args.warmup > 0 and server is not upstream:
                    run_wrk(args, server, workload, connections, args.warmup, scripts)
                workers = server.worker_processes() if server.workers_expected() > 1 else []
                before = [sum(w.cpu_times()[:2]) for w in workers]
                duration = min(args.duration, 2) if server is upstream else args.duration  # a reference only
                result = measure(args, servers, server, workload, connections, duration, scripts)
                results[(server.key, workload, connections)].append(result)
                if workers:
                    used = [sum(w.cpu_times()[:2]) - b for w, b in zip(workers, before, strict=True)]
                    cpu_split[(server.key, workload, connections)] = [u / (sum(used) or 1) for u in used]
                log(
                    f"  [{round_index + 1}] {workload:4} c={connections:<4} {server.label:24}"
                    f" {result.rps:>10,.0f} req/s"
                    f"  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
                    + (f"  ({result.errors} errors)" if result.errors else "")
                )
    best = {key: Result.median(values) for key, values in results.items()}
    measured = sum(r.requests for (key, _, _), values in results.items() if key == gateway_w1.key for r in values)
    with open(gateway_w1.logfile, "rb") as lines:
        logged = sum(1 for _ in lines)
    gateway_w1.notes.append(
        f"its log had {logged:,} lines after the load, for {measured:,} measured requests (plus warm-ups)"
    )
    steady_rss = {server.key: server.rss() for server in contenders}

    # -- rules scaling, alternated
    scale_connections = 32 if 32 in connection_counts else connection_counts[len(connection_counts) // 2]
    scale_results: dict[tuple[str, str], list[Result]] = defaultdict(list)
    log(
        f"bench: rule scaling, {rules_small} vs {rules_big:,} rules , c={scale_connections},"
        f" {args.scaling_rounds} rounds"
    )
    for workload in WORKLOADS:
        for round_index in range(args.scaling_rounds):
            for server in scaling:
                if args.warmup > 0 and round_index == 0:
                    run_wrk(args, server, workload, scale_connections, args.warmup, scripts)
                result = measure(args, servers, server, workload, scale_connections, args.duration, scripts)
                scale_results[(server.key, workload)].append(result)
                log(f"  {workload:4} {server.label:24} {result.rps:>10,.0f} req/s  p99 {result.p99_ms:7.2f} ms")
    scale_best = {key: Result.median(values) for key, values in scale_results.items()}

    # -- memory under slow clients, after the load
    log(f"bench: memory with {args.slow_clients} slow clients")
    for server in contenders:
        for mode in ("headers", "body"):
            slow[(server.key, mode)] = hold_slow_clients(server, args.slow_clients, mode == "body", settle=2.0)
            time.sleep(0.5)
        # and it still answers afterwards (once it has dealt with the departed clients)
        try:
            status = http_request(server.port, "GET", GET_PATH, None, server.token, timeout=60)[0]
        except (OSError, http.client.HTTPException) as exc:
            status = type(exc).__name__
        if status != 200:
            server.notes.append(f"after the slow clients it answered {status}")
        rss = slow[(server.key, "body")][0]
        log(f"  {server.label:24} {', '.join(f'{k} {v:.0f} MiB' for k, v in rss.items())}")

    elapsed = time.monotonic() - started
    busy_start, own_start = args.cpu_start
    foreign = (busy_cpu_seconds() - busy_start) - (own_cpu_seconds(servers) - own_start)
    args.foreign_cores = max(foreign, 0.0) / elapsed
    ours = set()
    for server in servers:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(server.process.pid)
            ours |= {root.pid, *(child.pid for child in root.children(recursive=True))}
    args.foreign_top = other_processes(args.processes_start, ours, elapsed)
    report = render(
        args=args,
        connection_counts=connection_counts,
        order=order,
        best=best,
        cpu_split=cpu_split,
        scaling=scaling,
        scale_best=scale_best,
        scale_connections=scale_connections,
        rules=(rules_main, rules_small, rules_big),
        contenders=contenders,
        idle_rss=idle_rss,
        steady_rss=steady_rss,
        slow=slow,
        logging_note=logging_note,
        metrics_on=metrics_on,
        elapsed=elapsed,
    )
    args.output.write_text(report)
    log("")
    log(report)
    log(f"bench: wrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    return 0


def quick(args, contenders: list[Server], scripts, servers: list[Server], connection_counts: list[int]) -> int:
    """Baseline and smsguard back to back, `--rounds` times, medians printed; nothing is written."""
    results: dict[tuple[str, str, int], list[Result]] = defaultdict(list)
    for _ in range(args.rounds):
        for workload in WORKLOADS:
            for connections in connection_counts:
                for server in contenders:
                    if args.warmup > 0:
                        run_wrk(args, server, workload, connections, args.warmup, scripts)
                    result = measure(args, servers, server, workload, connections, args.duration, scripts)
                    results[(server.key, workload, connections)].append(result)
    baseline, gateway = contenders
    for workload in WORKLOADS:
        for connections in connection_counts:
            base = Result.median(results[(baseline.key, workload, connections)])
            ours = Result.median(results[(gateway.key, workload, connections)])
            log(
                f"{workload:4} c={connections:<4} baseline {base.rps:>7,.0f} req/s p99 {base.p99_ms:6.2f} ms"
                f" {base.cpu_us:5.1f} µs CPU/req | smsguard {ours.rps:>7,.0f} req/s p99 {ours.p99_ms:6.2f} ms"
                f" {ours.cpu_us:5.1f} µs CPU/req | {fmt_ratio(ratio(ours, base))}"
            )
    return 0


def render(
    *,
    args,
    connection_counts,
    order,
    best,
    cpu_split,
    scaling,
    scale_best,
    scale_connections,
    rules,
    contenders,
    idle_rss,
    steady_rss,
    slow,
    logging_note,
    metrics_on,
    elapsed,
) -> str:
    info = machine()
    rules_main, rules_small, rules_big = rules
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# End-to-end benchmark",
        "",
        f"Produced by `make bench` (`bench/run.py`) on {now}, in {elapsed / 60:.1f} minutes. Numbers are from one",
        "run on one machine: compare columns of the same table, not with other machines.",
        "",
        "## Machine",
        "",
        f"- CPUs: {info['cpus']}; memory {info['memory']}; {info['kernel']}",
        f"- {info['python']}; {info['packages']}",
        f"- {info['tools']}; smsguard at commit {info['commit']}",
        "- **The 2 cores are shared** by wrk (1 thread), the nginx upstream (1 worker) and the server under test,",
        "  so a server never has a core to itself and `--workers 2` competes with wrk and nginx for the second",
        "  core: read the 2-worker column as what this box can do, not as a per-core scaling figure.",
        f"- Other load: {args.busy_before:.2f} cores busy just before the run; during it, processes other than"
        f" the benchmark's used {args.foreign_cores:.2f} cores on average"
        + (" (**not quiet**)" if args.foreign_cores > FOREIGN_LIMIT else " (quiet)")
        + f" (the busiest other processes alive at the end, in cores: {args.foreign_top}). A measurement during"
        " which others used more than"
        f" {FOREIGN_LIMIT} cores is taken again (up to {args.retries} times): {args.disturbed} of"
        f" {args.measured} were; `~` marks a figure still disturbed at the last try.",
        "",
        "## Set-up",
        "",
        f"- Upstream: nginx answering SMSGate-shaped JSON from memory (`bench/nginx.conf.template`). "
        f"Requests: `POST {POST_PATH}` with a {len(POST_BODY)}-byte JSON body (202 + `Location`) and "
        f"`GET {GET_PATH}` (200, a message).",
        "- wrk " + f"`-t{args.threads} -d{args.duration:g}s --latency` after a {args.warmup:g} s warm-up, every "
        "server back to back at each point"
        + (f", median of {args.rounds} rounds" if args.rounds > 1 else ", one round")
        + "; the same bearer token on every request (a client reusing its token, as real clients do).",
        "- **baseline**: `bench/baseline_aiohttp.py`, aiohttp server + one pooled `ClientSession`, forwarding method,"
        " path, body and headers, no auth, no logging (uvloop). **baseline + HS256**: the same plus PyJWT HS256"
        " verification per request (DESIGN.md's figure). **httpx**: `bench/baseline_httpx.py`, httpx.AsyncClient"
        " in a minimal ASGI app under uvicorn (httptools, uvloop, no access log). **uvicorn + aiohttp**: that"
        " same ASGI app with aiohttp's ClientSession instead (`--client aiohttp`): smsguard's server side without"
        " the gateway's work, with aiohttp's client instead of smsguard's own (`gateway/http1.py`).",
        "- **smsguard**: `gateway serve` with EdDSA (Ed25519) tokens of an issuer the bench plays (`auth.issuers`), "
        f"`store: memory://` (2 workers: `{WORKERS_STORE}`, revocations read from each worker's mirror), the "
        f"shipped `policies/smsgate.yaml` plus {args.extra_rules:,} generated rules under `/extra` ({rules_main:,} "
        "rules in all), Basic credentials injected upstream, hot-reload watching on (the default).",
        f"- Logging/metrics on smsguard: {logging_note}, written to a file (stdout and stderr)"
        + ("; Prometheus metrics on (`GET /metrics` answered 200)." if metrics_on else
           "; no metrics (`GET /metrics` is not served by this gateway version)."),
        "- `*` after a figure: some answers were errors or non-2xx (see the run's output); `~`: disturbed by"
        " other load (see Machine).",
        "",
        "## Throughput (requests/s)",
        "",
    ]  # fmt: skip
    keys = [s.key for s in order]
    labels = {s.key: s.label for s in order}
    header = [
        "request",
        "conns",
        *(labels[k] for k in keys),
        "smsguard / baseline",
        "smsguard / httpx",
        "smsguard / uvicorn + aiohttp",
        "2 / 1 workers",
        "2 workers' CPU split",
    ]
    rows = []
    for workload in WORKLOADS:
        for c in connection_counts:
            cells = [best.get((k, workload, c)) for k in keys]
            sg, base, hx, uv, w2 = (
                best.get((k, workload, c))
                for k in ("smsguard-w1", "baseline", "httpx", "uvicorn-aiohttp", "smsguard-w2")
            )
            split = cpu_split.get(("smsguard-w2", workload, c))
            rows.append(
                [
                    workload,
                    str(c),
                    *(fmt_rps(r) for r in cells),
                    fmt_ratio(ratio(sg, base)),
                    fmt_ratio(ratio(sg, hx)),
                    fmt_ratio(ratio(sg, uv)),
                    fmt_ratio(ratio(w2, sg)),
                    " / ".join(f"{100 * share:.0f}%" for share in split) if split else "—",
                ]
            )
    out += [
        table(header, rows),
        "",
        "*2 workers' CPU split*: how the CPU time the two workers used during the run divided between them",
        "(uvicorn's workers share one listening socket, and wrk opens its keep-alive connections once, so",
        "one worker may get most of them).",
        "",
        "## Latency, p50 / p99 (ms)",
        "",
    ]
    header = ["request", "conns", *(labels[k] for k in keys)]
    rows = [
        [workload, str(c), *(fmt_lat(best.get((k, workload, c))) for k in keys)]
        for workload in WORKLOADS
        for c in connection_counts
    ]
    out += [table(header, rows), ""]
    cpu_keys = [k for k in keys if k != "nginx"]
    rows = []
    for workload in WORKLOADS:
        for c in connection_counts:
            cells = [best.get((k, workload, c)) for k in cpu_keys]
            sg, base = best.get(("smsguard-w1", workload, c)), best.get(("baseline", workload, c))
            cpu_ratio = f"{sg.cpu_us / base.cpu_us:.2f}x" if sg and base and base.cpu_us else "—"
            rows.append([workload, str(c), *(f"{r.cpu_us:.0f}" if r else "—" for r in cells), cpu_ratio])
    out += [
        "## CPU per request (µs, user + system, all of the server's processes)",
        "",
        "The steadier figure on a shared machine: what one request costs the server, whatever else ran.",
        "",
        table(["request", "conns", *(labels[k] for k in cpu_keys), "smsguard / baseline"], rows),
        "",
    ]

    # rules scaling
    out += [f"## Policy size: {rules_small} vs {rules_big:,} rules (1 worker, c={scale_connections})", ""]
    small, big = scaling[0], scaling[1]
    rows = []
    cost_ratios = []
    cpu_ratios = []
    for workload in WORKLOADS:
        reference = scale_best.get((small.key, workload))
        for server in scaling:
            result = scale_best.get((server.key, workload))
            cost = (reference.rps / result.rps) if reference and result and result.rps else None
            cpu = (result.cpu_us / reference.cpu_us) if reference and result and reference.cpu_us else None
            if server is big and cost is not None:
                cost_ratios.append(cost)
            if server is big and cpu is not None:
                cpu_ratios.append(cpu)
            rows.append(
                [
                    workload,
                    server.label,
                    fmt_rps(result),
                    fmt_lat(result),
                    "—" if cost is None else f"{cost:.3f}x",
                    f"{result.cpu_us:.0f}" if result else "—",
                    "—" if cpu is None else f"{cpu:.3f}x",
                ]
            )
    out += [
        table(
            [
                "request",
                "policy",
                "req/s",
                "p50 / p99 ms",
                f"cost vs {rules_small} rules (req/s)",
                "CPU µs/request",
                f"cost vs {rules_small} rules (CPU)",
            ],
            rows,
        ),
        "",
        f"Median of {args.scaling_rounds} alternated runs each. The {rules_small}-rule policy is the first "
        f"{rules_small} rules of `policies/smsgate.yaml`; the large one adds {rules_big - rules_small:,} generated "
        "rules (same methods and depths as the driven routes, under `/extra`). Cost (req/s) = "
        f"{rules_small}-rule req/s ÷ that policy's req/s; cost (CPU) = that policy's CPU per request ÷ the "
        f"{rules_small}-rule one's, the steadier of the two on a shared machine.",
        "",
    ]

    # memory
    out += [
        f"## Memory (RSS, MiB; {args.slow_clients:,} slow clients)",
        "",
        f"*idle*: just started. *fresh + slow*: idle, then {args.slow_clients:,} slow clients. *steady state*: after",
        f"all the load above. Then {args.slow_clients:,} slow clients again. A slow client opens a connection and",
        "sends part of a `POST`: *headers* = the request head without its final blank line; *body* = the",
        "whole head (with the token) and half of the body, so the request is inside the app, authenticated,",
        "waiting for the rest (*fresh + slow* uses *body*). RSS is sampled 2 s after the last one connected;",
        "*held* = connections still open then (fresh / headers / body).",
        "",
    ]
    rows = []
    for server in contenders:
        idle = idle_rss[server.key]
        steady = steady_rss[server.key]
        fresh_rss, fresh_held = slow[(server.key, "fresh")]
        headers_rss, headers_held = slow[(server.key, "headers")]
        body_rss, body_held = slow[(server.key, "body")]
        for proc in sorted(steady):
            rows.append(
                [
                    server.label,
                    proc,
                    f"{idle.get(proc, 0):.1f}",
                    f"{fresh_rss.get(proc, 0):.1f}",
                    f"{steady.get(proc, 0):.1f}",
                    f"{headers_rss.get(proc, 0):.1f}",
                    f"{body_rss.get(proc, 0):.1f}",
                    f"{fresh_held} / {headers_held} / {body_held}",
                ]
            )
    out += [
        table(
            ["server", "process", "idle", "fresh + slow", "steady state", "+ slow (headers)", "+ slow (body)", "held"],
            rows,
        ),
        "",
    ]

    # targets
    def each():
        for workload in WORKLOADS:
            for c in connection_counts:
                yield workload, c

    base_ratios = [ratio(best.get(("smsguard-w1", w, c)), best.get(("baseline", w, c))) for w, c in each()]
    httpx_ratios = [ratio(best.get(("smsguard-w1", w, c)), best.get(("httpx", w, c))) for w, c in each()]
    base_ratios = [r for r in base_ratios if r is not None]
    httpx_ratios = [r for r in httpx_ratios if r is not None]
    p99_rows = []
    p99_ok: bool | None = None
    if 32 in connection_counts:
        p99_ok = True
        for workload in WORKLOADS:
            sg, base = best.get(("smsguard-w1", workload, 32)), best.get(("baseline", workload, 32))
            if sg and base:
                p99_ok = p99_ok and sg.p99_ms <= base.p99_ms
                p99_rows.append(f"{workload} {sg.p99_ms:.2f} ms vs {base.p99_ms:.2f} ms")
    w2_ratios = [ratio(best.get(("smsguard-w2", w, c)), best.get(("smsguard-w1", w, c))) for w, c in each()]
    w2_ratios = [r for r in w2_ratios if r is not None]

    def span(values: list[float], digits: int = 2) -> str:
        return f"{min(values):.{digits}f}x to {max(values):.{digits}f}x" if values else "—"

    out += [
        "## Targets (smsguard = the 1-worker gateway)",
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| 1 worker ≥ 1.0x the bare aiohttp forwarder (every request and connection count) | {span(base_ratios)} "
        f"| {mark(bool(base_ratios) and min(base_ratios) >= 1.0)} |",
        f"| 1 worker ≥ 5x the httpx forwarder (every request and connection count) | {span(httpx_ratios)} "
        f"| {mark(bool(httpx_ratios) and min(httpx_ratios) >= 5.0)} |",
        f"| p99 at 32 connections ≤ the bare forwarder's | {'; '.join(p99_rows) or '—'} | {mark(p99_ok)} |",
        f"| {rules_big:,} rules cost ≤ 1.1x {rules_small} rules (throughput ratio) | {span(cost_ratios, 3)} "
        f"(CPU per request: {span(cpu_ratios, 3)}) | {mark(bool(cost_ratios) and max(cost_ratios) <= 1.1)} |",
        "| 1 vs 2 workers reported (2 cores shared with wrk and nginx) "
        f"| 2 workers / 1: {span(w2_ratios)} | reported |",
        "",
    ]
    uv_base = [ratio(best.get(("uvicorn-aiohttp", w, c)), best.get(("baseline", w, c))) for w, c in each()]
    sg_uv = [ratio(best.get(("smsguard-w1", w, c)), best.get(("uvicorn-aiohttp", w, c))) for w, c in each()]
    uv_base = [r for r in uv_base if r is not None]
    sg_uv = [r for r in sg_uv if r is not None]
    notes = [f"- {s.label}: {note}" for s in (*order, *scaling) for note in s.notes]
    if notes:
        out += ["## Notes from the run", "", *notes, ""]
    out += [
        "## Reading it",
        "",
        "- The token is verified once and then served from the gateway's verified-token cache (keyed by the",
        "  token, until `exp`); the revocation check still runs per request. A workload of mostly fresh tokens",
        "  would add about one EdDSA verification (~0.1 ms, DESIGN.md) per request.",
        "- The baseline does strictly less than smsguard (no path canonicalisation, policy match, header",
        "  sanitation, credential injection, `X-Forwarded-*`, `Location` rewrite, logging, metrics). smsguard",
        "  can still be faster because its upstream client (`gateway/http1.py`: asyncio transports, httptools,",
        "  a keep-alive pool) costs far less per request than aiohttp's ClientSession, which the baseline and",
        "  `uvicorn + aiohttp` use; a small answer also leaves in one write, and the access line is built directly.",
        f"- Where the gap to the baseline comes from: uvicorn + aiohttp (no gateway) reaches {span(uv_base)} of "
        f"the baseline (the server side: uvicorn's httptools protocol and the ASGI hop versus aiohttp's server), "
        f"and smsguard reaches {span(sg_uv)} of uvicorn + aiohttp: the gateway's own work (auth, policy, "
        "headers, credentials, logging, metrics) costs less than what its upstream client saves.",
        "- `bench/match_bench.py` (`bench/MATCH_RESULTS.md`) measures the matcher alone, 10 vs 10,000 rules.",
        "- Where the time goes in smsguard under this load: `bench/PROFILE.md` (`bench/run.py --profile`).",
        "- Against the peer a user would pick instead, HAProxy with `jwt_verify` (the same ES256 tokens, new",
        "  tokens per request, 100,000 clients, 1,000 connections, memory): `bench/PEER.md` (`bench/peer.py`).",
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------
# Profile


def profile(args, server: Server, scripts, workdir: Path, servers: list[Server]) -> int:
    """Two py-spy recordings under the same load: Python frames (non-blocking), then with native frames."""
    py_spy = Path(PYTHON).parent / "py-spy"
    if not py_spy.exists():
        py_spy = Path(shutil.which("py-spy") or "py-spy")
    if not py_spy.exists():
        log("bench: py-spy not found (.venv/bin/pip install py-spy)")
        return 2
    worker = server.worker_processes()[0]
    run_wrk(args, server, "POST", 32, 2, scripts)  # warm-up
    recordings = []
    busy_start, own_start, started = busy_cpu_seconds(), own_cpu_seconds(servers), time.monotonic()
    for native in (False, True):
        raw = workdir / f"profile-{'native' if native else 'python'}.txt"
        wrk_argv = ["wrk", "-t1", "-c32", f"-d{args.profile_seconds + 3}s", "--latency", "--timeout", "10s"]
        wrk_argv += ["-s", str(scripts[(server.token, "POST")]), f"http://127.0.0.1:{server.port}{POST_PATH}"]
        load = subprocess.Popen(wrk_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.0)
            record = [str(py_spy), "record", "--pid", str(worker.pid), "--duration", str(args.profile_seconds)]
            record += ["--rate", "250", "--format", "raw", "--output", str(raw)]
            record.append("--native" if native else "--nonblocking")  # native stacks need the process paused
            done = subprocess.run(record, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                log(f"bench: py-spy failed: {done.stderr.strip()}")
                return 1
        finally:
            output, _ = load.communicate()
        recordings.append((raw, parse_wrk(output)))
    foreign = (busy_cpu_seconds() - busy_start) - (own_cpu_seconds(servers) - own_start)
    foreign_cores = max(foreign, 0.0) / (time.monotonic() - started)
    report = render_profile(recordings, args.profile_seconds, foreign_cores)
    (BENCH / "PROFILE.md").write_text(report)
    log(report)
    return 0


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_IDLE = ("epoll_wait", "epoll_pwait", "clock_nanosleep", "pthread_cond_timedwait", "pthread_cond_wait")


def _short(file: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", str(ROOT) + "/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


@dataclass
class Profile:
    samples: int = 0
    own: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    total: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    area_own: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    area_total: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    logging: int = 0  # samples inside logging or metrics code (see _observability)
    gc: int = 0  # samples inside the garbage collector (native frames only)
    client: int = 0  # samples inside the upstream client (gateway/http1.py)

    def pct(self, n: int) -> str:
        return f"{100 * n / self.samples:.1f}%" if self.samples else "—"


_OBSERVABILITY_FILES = ("gateway/logs.py", "gateway/metrics.py", "uvicorn/logging.py")
_OBSERVABILITY_PACKAGES = ("logging/", "structlog/", "prometheus_client/")


def _observability(func: str, file: str) -> bool:
    """Frames that log or count: the stdlib logging, structlog, prometheus_client, the gateway's log/metric code."""
    return (
        file in _OBSERVABILITY_FILES
        or file.startswith(_OBSERVABILITY_PACKAGES)
        or func in ("Observer.finish", "Metrics.observe_request")
    )


def _area(file: str) -> str:
    """The top-level package of a Python file, or the shared object / C file of a native frame."""
    top = file.split("/", 1)[0]
    return top.removesuffix(".py")


def read_profile(raw: Path, *, main_thread_only: bool) -> Profile:
    """Aggregate py-spy's raw (collapsed) stacks: own = innermost frame, total = anywhere in the stack."""
    profile = Profile()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        if main_thread_only and ("Thread._bootstrap" in stack or "thread_run (" in stack):
            continue  # watchfiles' watcher thread: asleep in Rust, which native sampling cannot tell from work
        frames = []
        for part in stack.split(";"):
            match = _FRAME.match(part)
            if match is not None:
                frames.append((match["func"], _short(match["file"])))
        if not frames or frames[-1][0] in _IDLE:
            continue
        count = int(count_text)
        profile.samples += count
        func, file = frames[-1]
        profile.own[f"{func} ({file})"] += count
        profile.area_own[_area(file)] += count
        for name in {f"{f} ({p})" for f, p in frames}:
            profile.total[name] += count
        for index in range(len(frames) - 1, -1, -1):  # inside the event loop: drop the start-up frames
            if frames[index][1] == "asyncio/runners.py":
                frames = frames[index + 1 :] or frames[index:]
                break
        for area in {_area(p) for _, p in frames}:
            profile.area_total[area] += count
        if any(_observability(f, p) for f, p in frames):
            profile.logging += count
        if any(f == "gc_collect_main" for f, _ in frames):
            profile.gc += count
        if any(p == "gateway/http1.py" for _, p in frames):
            profile.client += count
    return profile


def render_profile(recordings: list[tuple[Path, Result]], seconds: int, foreign_cores: float) -> str:
    (python_raw, python_load), (native_raw, native_load) = recordings
    py = read_profile(python_raw, main_thread_only=False)
    nat = read_profile(native_raw, main_thread_only=True)
    if py.samples == 0:
        return "# Profile\n\npy-spy recorded no samples.\n"

    def top(counts: dict[str, int], n: int = 15, keep=lambda name: True) -> list[tuple[str, int]]:
        return sorted(((k, v) for k, v in counts.items() if keep(k)), key=lambda kv: -kv[1])[:n]

    def own_gateway(name: str) -> bool:
        return "gateway/" in name and "gateway/cli.py" not in name and "gateway/__main__" not in name

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# Where smsguard spends its time",
        "",
        f"`bench/run.py --profile` on {now} (smsguard at commit {machine()['commit']}; {machine()['cpus']}): "
        "`gateway serve --workers 1` with the benchmark's config (EdDSA "
        "tokens, `policies/smsgate.yaml` + 1,000 rules, logging and metrics as in RESULTS.md), driven by wrk at "
        "32 connections "
        f"with the small `POST /3rdparty/v1/messages` (the same token on every request). py-spy sampled the "
        f"worker for {seconds} s at 250 Hz twice:",
        "",
        f"1. **Python frames**, non-blocking, idle time excluded: {py.samples:,} samples; the gateway served "
        f"{python_load.rps:,.0f} req/s meanwhile (p99 {python_load.p99_ms:.2f} ms).",
        f"2. **With native frames** (`--native`, which pauses the process at each sample): {nat.samples:,} samples "
        f"of the event-loop thread, waits in `epoll` excluded; {native_load.rps:,.0f} req/s meanwhile.",
        "",
        f"Other processes used {foreign_cores:.2f} cores meanwhile"
        + (
            " (the machine was not quiet: the req/s above are low, the shares below still hold)."
            if foreign_cores > 0.1
            else " (quiet)."
        ),
        "",
        "Own % = samples whose innermost frame is that function; in (1) time spent in C called from a Python",
        "function (uvloop's socket calls, httptools' parser, the garbage collector, ...) counts as that Python",
        "function's own time, and time in uvloop's C loop between callbacks counts as `Runner.run`'s own.",
        "",
        "## Headlines",
        "",
        f"- Garbage collection: **{nat.pct(nat.gc)}** of the event-loop thread's busy time "
        "(`gc_collect_main` anywhere in the native stacks); the Python-only view cannot see it.",
        f"- Logging and metrics (the access event, structlog/stdlib logging, prometheus_client, "
        f"`Observer.finish`): {py.pct(py.logging)} inclusive in the Python view, {nat.pct(nat.logging)} with "
        "native frames.",
        f"- Inclusive shares in the Python view: uvicorn (the server side) {py.pct(py.area_total['uvicorn'])}, "
        f"smsguard's code {py.pct(py.area_total['gateway'])} ({py.pct(py.area_own['gateway'])} own), of which the "
        f"upstream client (`gateway/http1.py`) {py.pct(py.client)}.",
        "",
        "## The 15 hottest functions, own time (Python frames)",
        "",
        table(["function (file)", "own %"], [[f"`{k}`", py.pct(v)] for k, v in top(py.own)]),
        "",
        "## By package (Python frames)",
        "",
        table(
            ["package / module", "own %", "inclusive %"],
            [[f"`{k}`", py.pct(v), py.pct(py.area_total.get(k, 0))] for k, v in top(py.area_own, 10)],
        ),
        "",
        "## smsguard's own functions, inclusive (Python frames)",
        "",
        table(["function (file)", "total %"], [[f"`{k}`", py.pct(v)] for k, v in top(py.total, 15, own_gateway)]),
        "",
        "## The 15 hottest functions, own time (with native frames, event-loop thread)",
        "",
        table(["function (file)", "own %"], [[f"`{k}`", nat.pct(v)] for k, v in top(nat.own)]),
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
