"""c=1000 on one smsguard worker (issue 20: p99 <= 1 s, no errors), with 2 workers and nginx alongside.

    .venv/bin/python bench/many_connections.py [--seconds 10] [--rounds 2] [--python OTHER/.venv/bin/python]

The set-up of bench/run.py and bench/peer.py: nginx upstream (bench/nginx.conf.template), smsguard with the
shipped SMSGate policy + 1,000 generated rules trusting the bench IdP's EdDSA key, a small POST with one
reused bearer token, `wrk -t1 -c1000 --latency --timeout 10s`. Prints p50 / p99 / max, requests/s and errors
(non-2xx plus wrk's connect/read/write/timeout errors) per server and round. `--python` runs the gateway of
another checkout (its venv's python; `-P`: its own installed gateway, not this folder's), for before/after
figures in one sitting. Figures only: nothing asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer
import run


def raise_fd_limit(wanted: int = 8192) -> int:
    """wrk and the gateway each need more than 1,000 descriptors; children inherit this soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def wrk(port: int, script: Path, connections: int, seconds: int) -> dict[str, float | int]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s", "-s", str(script)]
    done = subprocess.run([*argv, f"http://127.0.0.1:{port}{run.POST_PATH}"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    result = run.parse_wrk(done.stdout)
    latency = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", done.stdout)
    socket_errors = re.search(r"Socket errors: (.*)", done.stdout)
    return {
        "rps": result.rps,
        "p50": result.p50_ms,
        "p99": result.p99_ms,
        "max": run._duration_ms(latency.group(1)) if latency else float("nan"),
        "errors": result.errors,
        "socket": socket_errors.group(1) if socket_errors else "none",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--python", default=sys.executable, help="the python whose gateway to run")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13", help="the store of the 2-worker gateway")
    parser.add_argument("--no-two", action="store_true", help="skip the 2-worker gateway")
    args = parser.parse_args()
    limit = raise_fd_limit()
    somaxconn = Path("/proc/sys/net/core/somaxconn").read_text().strip()
    print(f"fd limit {limit}, net.core.somaxconn {somaxconn}, gateway python {args.python}")
    env = {**os.environ, "BENCH_SMSGATE_USER": run.UPSTREAM_USER, "BENCH_SMSGATE_PASSWORD": run.UPSTREAM_PASSWORD}
    env.pop("SMSGUARD_CONFIG", None)
    servers: list[run.Server] = []
    with tempfile.TemporaryDirectory(prefix="smsguard-c1000-") as scratch:
        workdir = Path(scratch)
        try:
            (workdir / "nginx").mkdir()
            upstream_port = run.free_port()
            template = (run.BENCH / "nginx.conf.template").read_text()
            conf = workdir / "nginx" / "nginx.conf"
            conf.write_text(template.format(prefix=workdir / "nginx", port=upstream_port))
            nginx = run.Server(
                "nginx", "nginx (upstream, direct)",
                ["nginx", "-p", str(workdir / "nginx"), "-c", str(conf), "-e", str(workdir / "nginx" / "error.log")],
                upstream_port, workdir / "nginx.log", ready_path="/3rdparty/v1/health",
            )  # fmt: skip
            servers.append(nginx)
            nginx.start()
            nginx.wait_ready()
            keys = peer.make_keys(workdir)
            token = peer.mint(keys, "EdDSA", 1)[0]
            extra = run.extra_policy(workdir / "extra.yaml", 1000, "/extra")
            policies = [run.SMSGATE_POLICY, extra]
            one = peer.smsguard_config(workdir / "one.yaml", upstream_port=upstream_port, policies=policies, keys=keys)
            contenders = [("nginx", nginx)]

            def gateway(key: str, config: Path, workers: int) -> run.Server:
                port = run.free_port()
                argv = [args.python, "-P", "-m", "gateway", "serve", "--config", str(config), "--port", str(port)]
                argv += ["--workers", str(workers), "--log-format", "json"]
                server = run.Server(key, key, argv, port, workdir / f"{key}.log", ready_path="/readyz", env=env)
                servers.append(server)
                server.start()
                server.wait_ready()
                return server

            contenders.append(("smsguard 1 worker", gateway("smsguard-w1", one, 1)))
            if not args.no_two:
                two = peer.smsguard_config(
                    workdir / "two.yaml", upstream_port=upstream_port, policies=policies, keys=keys, store=args.redis
                )
                contenders.append(("smsguard 2 workers", gateway("smsguard-w2", two, 2)))
            script = run.lua_script(workdir, "POST", token)
            for _, server in contenders:
                wrk(server.port, script, 32, 2)  # warm-up: the token is verified and cached, the pool is open
            print(f"\nwrk -t1 -c{args.connections} -d{args.seconds}s, POST, one reused EdDSA token")
            print(f"{'server':22} {'round':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7}")
            for round_ in range(1, args.rounds + 1):
                for label, server in contenders:
                    r = wrk(server.port, script, args.connections, args.seconds)
                    print(
                        f"{label:22} {round_:>5} {r['rps']:>8.0f} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['max']:>8.1f} "
                        f"{r['errors']:>7}" + (f"  (socket errors: {r['socket']})" if r["socket"] != "none" else ""),
                        flush=True,
                    )
        finally:
            for server in reversed(servers):
                server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
