"""Abuse run: what a flood, stuck clients and the limits cost, side by side in one run -> bench/ABUSE.md.

    .venv/bin/python bench/abuse.py [--duration 8] [--only flood|stuck|redis]   # needs wrk, nginx, redis-server

Everything on loopback, 1 worker per gateway, the nginx upstream of bench/run.py (plus a 64 MB answer
at /3rdparty/v1/messages/big). Two gateways differ only in config:

- `protected`: this branch's defaults (failed Basic logins limited per client and user, argon2 slots =
  half the cores, `proxy.client_write_timeout_s: 3`),
- `unprotected`: the same code with the protections turned up to never trigger (limits 1000000/s,
  argon2 slots = all cores, write deadline 600 s), i.e. what the mechanisms buy.

Measured on each: bearer POST throughput alone and during a 16-connection wrong-password Basic flood
(wrk), a legitimate cold Basic login from another address (127.0.0.2) during the flood, and 503s seen by
a legitimate client while 12 never-reading clients (4 KiB receive window) each ask for 64 MB
(`pool_size: 10`). Then, on a private redis-server: CPU per request of a send with no limits against
one with 3 limits, destinations and prefix velocity (one Lua call). Figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as base  # (bench/run.py: Server, wrk parsing, nginx template)

ROOT = base.ROOT
POST_BODY = '{"textMessage":{"text":"Your code is 482913"},"phoneNumbers":["+12025550123"]}'
LIMITS = """
limits:
  - {name: sends, routes: ["POST /messages"], per: subject, rate: 1000000/s}
  - {name: recipients, routes: ["POST /messages"], per: subject, rate: 1000000/s, cost: recipients}
  - {name: segments, routes: ["POST /messages"], per: token, rate: 1000000/s, cost: segments}
sms:
  send:
    - {route: "POST /messages", recipients: phoneNumbers, text: textMessage.text}
  destinations:
    countries: [US, GB]
    deny_number_types: [PREMIUM_RATE, SHARED_COST, UNKNOWN]
    max_recipients: 100
    prefix_velocity: {limit: 1000000000, window: 1s}
"""


def hash_password(password: str) -> str:
    from argon2 import PasswordHasher

    return PasswordHasher().hash(password)  # argon2-cffi's defaults: the real cost (~64 MiB, t=3)


def config(path: Path, upstream: int, key: Path, policy: Path, store: str, extra: str, basic_hash: str) -> Path:
    path.write_text(f"""\
listen: {{host: 127.0.0.1, port: 8080}}
store: {store}
policies: [{policy}]
auth:
  basic_users:
    - {{username: ops, password_hash: "{basic_hash}", scopes: [all:any]}}
    - {{username: minter, password_hash: "{basic_hash}", scopes: [all:any]}}
{extra}tokens:
  enabled: true
  max_ttl_s: 21600
  keys:
    - {{kid: k, algorithm: EdDSA, private_key_file: {key}}}
upstreams:
  smsgate:
    url: http://127.0.0.1:{upstream}/3rdparty/v1
    pool_size: 10
    credentials: {{type: basic, username: u, password: p}}
""")
    return path


def gateway(key: str, cfg: Path, workdir: Path) -> base.Server:
    port = base.free_port()
    argv = [base.PYTHON, "-m", "gateway", "serve", "--config", str(cfg), "--port", str(port), "--workers", "1"]
    server = base.Server(key, key, argv, port, workdir / f"{key}.log", ready_path="/readyz", env=dict(os.environ))
    server.start()
    server.wait_ready()
    server.token = mint(port)
    return server


def mint(port: int) -> str:
    """A bearer token from POST /auth/token with Basic `minter` (so `ops` stays cold for the login figure)."""
    import base64
    import json

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        auth = base64.b64encode(b"minter:right-password").decode()
        body = json.dumps({"scopes": ["messages:send", "messages:read"], "ttl": 21600})
        headers = {"Authorization": f"Basic {auth}", "Content-Type": "application/json"}
        connection.request("POST", "/3rdparty/v1/auth/token", body=body, headers=headers)
        token: str = json.loads(connection.getresponse().read())["access_token"]
        return token
    finally:
        connection.close()


def wrk(port: int, script: Path, connections: int, duration: int, path: str) -> base.Result:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script)]
    done = subprocess.run([*argv, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True)
    return base.parse_wrk(done.stdout)


def script(directory: Path, name: str, lines: list[str]) -> Path:
    path = directory / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def bearer_script(directory: Path, token: str) -> Path:
    return script(
        directory,
        f"post-{token[-6:]}",
        [
            'wrk.method = "POST"',
            f"wrk.body = '{POST_BODY}'",
            'wrk.headers["Content-Type"] = "application/json"',
            f'wrk.headers["Authorization"] = "Bearer {token}"',
        ],
    )


def basic_login(port: int, source: str) -> tuple[int, float]:
    """A cold Basic login (correct password) from `source`: (status, seconds)."""
    import base64

    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(source, 0))
    try:
        auth = base64.b64encode(b"ops:right-password").decode()
        connection.request("GET", "/3rdparty/v1/messages/x", headers={"Authorization": f"Basic {auth}"})
        status = connection.getresponse().status
    finally:
        connection.close()
    return status, time.perf_counter() - started


# A wrk request hook sending `ops:` with a new wrong password every time (base64 from lua-users.org).
VARIED_PASSWORDS = r"""
local alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local function b64(data)
  return ((data:gsub('.', function(x)
    local r, b = '', x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if #x < 6 then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
    return alphabet:sub(c + 1, c + 1)
  end) .. ({'', '==', '='})[#data % 3 + 1])
end
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, {["Authorization"] = "Basic " .. b64("ops:wrong-" .. n .. "-" .. math.random(1000000))})
end
"""


def flood(
    server: base.Server, directory: Path, duration: int, *, varied: bool = False
) -> tuple[base.Result, base.Result, int, float]:
    """Bearer throughput during a 16-connection wrong-password flood (one password, or a new one each time),
    the flood's own figures, and a cold Basic login from another address in the middle of it."""
    import base64

    wrong = base64.b64encode(b"ops:wrong-password").decode()
    lines = [VARIED_PASSWORDS] if varied else [f'wrk.headers["Authorization"] = "Basic {wrong}"']
    flood_script = script(directory, "flood-varied" if varied else "flood", lines)
    box: dict[str, base.Result] = {}
    thread = threading.Thread(
        target=lambda: box.update(flood=wrk(server.port, flood_script, 16, duration + 2, "/3rdparty/v1/messages/x"))
    )
    thread.start()
    time.sleep(1.0)
    login = {"status": 0, "seconds": 0.0}

    def later_login() -> None:
        time.sleep(duration / 2)
        login["status"], login["seconds"] = basic_login(server.port, "127.0.0.2")

    login_thread = threading.Thread(target=later_login)
    login_thread.start()
    assert server.token is not None
    during = wrk(server.port, bearer_script(directory, server.token), 16, duration, base.POST_PATH)
    thread.join()
    login_thread.join()
    return during, box["flood"], int(login["status"]), float(login["seconds"])


def stuck_clients(server: base.Server, count: int, duration: float) -> tuple[int, int, int, int, int]:
    """`count` sockets ask for 64 MB, read its first bytes (the status line) and then nothing; a legitimate
    client polls meanwhile (`pool_size: 10`: once the stuck ones hold every upstream slot, it gets 503s).

    Returns (503s, answers) in the first 5 s and after that, and how many stuck clients got a 200."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
        sock.connect(("127.0.0.1", server.port))
        auth = f"Authorization: Bearer {server.token}\r\n"
        sock.sendall(f"GET /3rdparty/v1/messages/big HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
        sockets.append(sock)
    ok = 0
    for sock in sockets:
        sock.settimeout(10)
        with contextlib.suppress(OSError):
            ok += sock.recv(12).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    early, early_503, late, late_503 = 0, 0, 0, 0
    while time.monotonic() - started < duration:
        status, _, _ = base.http_request(server.port, "GET", base.GET_PATH, token=server.token, timeout=10)
        if time.monotonic() - started < 5:
            early, early_503 = early + 1, early_503 + (status == 503)
        else:
            late, late_503 = late + 1, late_503 + (status == 503)
        time.sleep(0.05)
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.close()
    return early_503, early, late_503, late, ok


def flood_figures(server: base.Server, directory: Path, duration: int, *, varied: bool = False) -> dict[str, object]:
    """Bearer throughput alone, then during the flood (with its login), and the RSS after it."""
    assert server.token is not None
    alone = wrk(server.port, bearer_script(directory, server.token), 16, duration, base.POST_PATH)
    during, flood_result, login_status, login_s = flood(server, directory, duration, varied=varied)
    rss = psutil.Process(server.process.pid).memory_info().rss / 2**20 if server.process else 0.0
    hashed = argon2_checks(server.port)
    base.log(f"{server.key}: {alone.rps:.0f} alone, {during.rps:.0f} during flood, login {login_s:.2f}s")
    return {
        "alone": alone,
        "during": during,
        "flood": flood_result,
        "login": (login_status, login_s),
        "rss": rss,
        "hashed": hashed,
    }


def argon2_checks(port: int) -> int:
    """argon2 verifications the gateway ran so far (its /metrics: logins verified or failed after hashing)."""
    import re

    status, _, body = base.http_request(port, "GET", "/metrics", timeout=10)
    found = re.findall(rb'smsguard_basic_logins_total\{outcome="(?:verified|failed)"\} ([0-9.e+]+)', body)
    return int(sum(float(value) for value in found)) if status == 200 else -1


def cpu_per_request(server: base.Server, directory: Path, duration: int) -> tuple[base.Result, float]:
    assert server.process is not None
    assert server.token is not None
    process = psutil.Process(server.process.pid)
    before = sum(process.cpu_times()[:2])
    result = wrk(server.port, bearer_script(directory, server.token), 16, duration, base.POST_PATH)
    used = sum(process.cpu_times()[:2]) - before
    return result, 1e6 * used / max(result.requests, 1)


def private_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = base.free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen([*argv, "--dir", str(directory)], stdout=subprocess.DEVNULL)
    for _ in range(100):
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument(
        "--only", choices=("flood", "stuck", "redis"), help="one part only: printed, bench/ABUSE.md left alone"
    )
    args = parser.parse_args()
    parts = {args.only} if args.only else {"flood", "stuck", "redis"}
    servers: list[base.Server] = []
    redis: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory(prefix="smsguard-abuse-") as scratch:
        workdir = Path(scratch)
        try:
            nginx_dir = workdir / "nginx"
            nginx_dir.mkdir()
            (nginx_dir / "big.json").write_bytes(b"[" + b'"x",' * (16 * 1024 * 1024) + b'"x"]')  # 64 MB
            for readable in (workdir, nginx_dir, nginx_dir / "big.json"):  # nginx's worker is not root: else 403
                readable.chmod(0o755)
            port = base.free_port()
            template = (base.BENCH / "nginx.conf.template").read_text()
            big = f"location = /3rdparty/v1/messages/big {{{{ alias {nginx_dir}/big.json; }}}}\n\n        "
            template = template.replace("location = /3rdparty/v1/health", big + "location = /3rdparty/v1/health")
            (nginx_dir / "nginx.conf").write_text(template.format(prefix=nginx_dir, port=port))
            nginx = ["nginx", "-p", str(nginx_dir), "-c", str(nginx_dir / "nginx.conf"), "-e", str(nginx_dir / "e.log")]
            upstream = base.Server(
                "nginx", "nginx", nginx, port, workdir / "nginx.log", ready_path="/3rdparty/v1/health"
            )
            servers.append(upstream)
            upstream.start()
            upstream.wait_ready()
            key = base.ed25519_key(workdir / "k.pem")
            basic_hash = hash_password("right-password")
            policy = base.SMSGATE_POLICY
            cores = os.cpu_count() or 1
            open_extra = (
                "  basic_limits: {failures_per_client: 1000000/s, failures_per_user: 1000000/s, "
                f"hash_concurrency: {cores}, max_waiting: 100000, failure_delay_s: 0}}\n"
            )
            protected_cfg = config(workdir / "p.yaml", port, key, policy, "memory://", "", basic_hash)
            protected_cfg.write_text(protected_cfg.read_text() + "proxy: {client_write_timeout_s: 3}\n")
            open_cfg = config(workdir / "u.yaml", port, key, policy, "memory://", open_extra, basic_hash)
            open_cfg.write_text(open_cfg.read_text() + "proxy: {client_write_timeout_s: 600}\n")
            results: dict[str, dict[str, object]] = {}
            for name, cfg in (("protected", protected_cfg), ("unprotected", open_cfg)):
                if not parts & {"flood", "stuck"}:
                    break
                server = gateway(name, cfg, workdir)
                servers.append(server)
                results[name] = {}
                if "flood" in parts:
                    results[name].update(flood_figures(server, workdir, args.duration))
                if "stuck" in parts:
                    results[name]["stuck"] = stuck_clients(server, 12, 10.0)
                server.stop()
                if "flood" in parts:  # a fresh gateway: no address already limited by the first flood
                    server = gateway(name + "-varied", cfg, workdir)
                    servers.append(server)
                    varied = flood_figures(server, workdir, args.duration, varied=True)
                    results[name].update({f"varied_{key}": value for key, value in varied.items()})
                    server.stop()
            redis, store = private_redis(workdir)
            limited_policy = workdir / "limited.yaml"
            shipped = policy.read_text()
            limited_policy.write_text(shipped[: shipped.index("\nsms:\n")] + LIMITS)  # the shipped sms: replaced
            plain_policy = workdir / "plain.yaml"
            plain_policy.write_text(policy.read_text())
            costs: dict[str, tuple[base.Result, float]] = {}
            for name, pol in (("redis, no limits", plain_policy), ("redis, limits", limited_policy)):
                if "redis" not in parts:
                    break
                cfg = config(workdir / f"{name[-6:].strip()}.yaml", port, key, pol, store, "", basic_hash)
                server = gateway(name.replace(", ", "-").replace(" ", "_"), cfg, workdir)
                servers.append(server)
                wrk(server.port, bearer_script(workdir, server.token or ""), 16, 2, base.POST_PATH)  # warm-up
                costs[name] = cpu_per_request(server, workdir, args.duration)
                server.stop()
            report = render(results, costs, args.duration)
            if args.only is None:
                (base.BENCH / "ABUSE.md").write_text(report)
            print(report)
        finally:
            for server in servers:
                server.stop()
            if redis is not None:
                redis.terminate()
                redis.wait(10)
    return 0


def render(results: dict[str, dict[str, object]], costs: dict[str, tuple[base.Result, float]], duration: int) -> str:
    lines = [
        "# Abuse run (bench/abuse.py)",
        "",
        f"{base.machine().get('cpu', '')}, {os.cpu_count()} cores, loopback, 1 worker, wrk -c16 -d{duration}s; "
        "other engineers' processes share the machine, so read ratios, not absolutes.",
        "",
        "| figure | protected (defaults) | unprotected (limits off) | goal |",
        "|---|---|---|---|",
    ]

    def row(label: str, key: str, fmt: object, goal: str = "") -> None:
        if not all(key in results.get(name, {}) for name in ("protected", "unprotected")):
            return
        cells = [fmt(results[name][key]) for name in ("protected", "unprotected")]  # type: ignore[operator]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {goal} |")

    row("bearer POST req/s, alone", "alone", lambda r: f"{r.rps:.0f} (p99 {r.p99_ms:.1f} ms)")
    row("bearer POST req/s, during the flood", "during", lambda r: f"{r.rps:.0f} (p99 {r.p99_ms:.1f} ms)")
    for figures in results.values():
        if "alone" in figures:
            alone, during = figures["alone"], figures["during"]
            figures["ratio"] = during.rps / alone.rps if alone.rps else 0.0  # type: ignore[attr-defined]
    row("ratio during / alone", "ratio", lambda r: f"{r:.2f}x", ">= 0.8x")
    row("flood answers/s (401/429)", "flood", lambda r: f"{r.rps:.0f}")
    row("cold Basic login during the flood (127.0.0.2)", "login", lambda r: f"{r[0]} in {r[1]:.2f} s", "< 1 s")
    row("RSS after the flood (MiB)", "rss", lambda r: f"{r:.0f}")
    row("argon2 checks run (whole run: mint, flood, login)", "hashed", lambda r: f"{r}")
    for figures in results.values():
        if "varied_alone" in figures:
            alone, during = figures["varied_alone"], figures["varied_during"]
            figures["varied_ratio"] = during.rps / alone.rps if alone.rps else 0.0  # type: ignore[attr-defined]
    row("a new wrong password each time (fresh gateway): ratio during / alone", "varied_ratio", lambda r: f"{r:.2f}x")
    row("... cold Basic login during that flood", "varied_login", lambda r: f"{r[0]} in {r[1]:.2f} s", "< 1 s")
    row("... argon2 checks run", "varied_hashed", lambda r: f"{r}")
    row(
        "12 never-reading clients: 503s of a legit client, first 5 s",
        "stuck",
        lambda r: f"{r[0]}/{r[1]}",
    )
    row("... after 5 s", "stuck", lambda r: f"{r[2]}/{r[3]}", "0")
    row("... never-reading clients answered 200 (the rest: 503, pool_size 10)", "stuck", lambda r: f"{r[4]}/12")
    if costs:
        plain, limited = costs["redis, no limits"], costs["redis, limits"]
        lines += [
            "",
            "| Redis store, POST /messages | req/s | p99 ms | CPU µs/request (gateway process) |",
            "|---|---|---|---|",
            f"| no limits | {plain[0].rps:.0f} | {plain[0].p99_ms:.1f} | {plain[1]:.0f} |",
            f"| 3 limits + destinations + prefix velocity (one Lua call) | {limited[0].rps:.0f} | "
            f"{limited[0].p99_ms:.1f} | {limited[1]:.0f} |",
            f"| ratio | {limited[0].rps / max(plain[0].rps, 1):.2f}x | | {limited[1] / max(plain[1], 1):.2f}x "
            "(goal <= 1.15x) |",
        ]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
