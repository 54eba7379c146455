"""Idle RSS per process (issue 20: <= 45 MiB per worker), and after 1,000 slow clients.

    .venv/bin/python bench/memory.py [--python OTHER/.venv/bin/python ...] [--write]

For each python given (default: this checkout's): a bare `python -c pass`, `import gateway`, `gateway serve`
(one worker, the bench config of bench/run.py and bench/peer.py: the shipped SMSGate policy + 1,000 generated
rules, `store: memory://`, EdDSA tokens, metrics and access log on) 2 s after /readyz answered, the same with
1,000 slow clients (request head with the token and half the body, so each request is inside the app), and
`--workers 2` (`store: redis://`, which `--workers 2` needs) with its supervisor. `--write` also writes
bench/MEMORY.md. Figures only: nothing asserted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer
import run

SLOW_CLIENTS = 1000


def child_rss(python: str, code: str) -> float:
    """RSS (MiB) of `python -c code` measured by the child itself at its end."""
    probe = code + "\nprint(int(open('/proc/self/statm').read().split()[1]) * 4096)"
    done = subprocess.run([python, "-P", "-c", probe], capture_output=True, text=True, check=True, cwd=run.ROOT)
    return int(done.stdout.split()[-1]) / 2**20


def measure(python: str, workdir: Path, redis: str) -> list[tuple[str, str, float]]:
    rows = [("python -c pass", "", child_rss(python, "pass"))]
    rows.append(("import gateway", "", child_rss(python, "import gateway")))
    env = {**os.environ, "BENCH_SMSGATE_USER": run.UPSTREAM_USER, "BENCH_SMSGATE_PASSWORD": run.UPSTREAM_PASSWORD}
    env.pop("SMSGUARD_CONFIG", None)
    keys = peer.make_keys(workdir)
    token = peer.mint(keys, "EdDSA", 1)[0]
    policies = [run.SMSGATE_POLICY, run.extra_policy(workdir / "extra.yaml", 1000, "/extra")]
    upstream = 9  # never contacted: slow clients never complete a request
    one = peer.smsguard_config(workdir / "one.yaml", upstream_port=upstream, policies=policies, keys=keys)
    two = peer.smsguard_config(workdir / "two.yaml", upstream_port=upstream, policies=policies, keys=keys, store=redis)
    for label, config, workers in (("serve, 1 worker", one, 1), ("serve --workers 2", two, 2)):
        port = run.free_port()
        argv = [python, "-P", "-m", "gateway", "serve", "--config", str(config), "--port", str(port)]
        argv += ["--workers", str(workers), "--log-format", "json"]
        server = run.Server(label, label, argv, port, workdir / f"w{workers}.log", ready_path="/healthz", env=env)
        server.token = token
        server.start()
        try:
            server.wait_ready()
            time.sleep(2.0)
            for process, rss in sorted(server.rss().items()):
                rows.append((label, process, rss))
            if workers == 1:
                held, alive = run.hold_slow_clients(server, SLOW_CLIENTS, with_body=True, settle=2.0)
                rows.append((f"{label} + {SLOW_CLIENTS:,} slow clients ({alive:,} held)", "worker0", held["worker0"]))
        finally:
            server.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", help="a python whose gateway to measure (repeatable)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13", help="the store of the 2-worker gateway")
    parser.add_argument("--write", action="store_true", help="also write bench/MEMORY.md")
    args = parser.parse_args()
    pythons = args.python or [sys.executable]
    results: dict[str, list[tuple[str, str, float]]] = {}
    for python in pythons:
        with tempfile.TemporaryDirectory(prefix="smsguard-memory-") as scratch:
            results[python] = measure(python, Path(scratch), args.redis)
    labels = [(what, process) for what, process, _ in results[pythons[0]]]
    header = "| what | process | " + " | ".join(f"RSS MiB ({Path(p).parents[2].name})" for p in pythons) + " |"
    lines = [header, "|---|---|" + "---:|" * len(pythons)]
    for index, (what, process) in enumerate(labels):
        cells = " | ".join(f"{results[p][index][2]:.1f}" for p in pythons)
        lines.append(f"| {what} | {process} | {cells} |")
    print("\n".join(lines))
    if args.write:
        (run.BENCH / "MEMORY.md").write_text(
            "# Memory (RSS per process)\n\n"
            "`.venv/bin/python bench/memory.py --write` (see its docstring for the set-up). Idle = 2 s after the "
            "gateway answered; slow clients send the request head (with the token) and half the body.\n\n"
            + "\n".join(lines)
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
