"""What OpenTelemetry tracing costs: `gateway serve` with tracing off (the default), on, and exporting.

    .venv/bin/python bench/tracing_cost.py [--duration 5] [--connections 32] [--rounds 3] [--baseline main]
                                           [--output FILE]

The same set-up as bench/logging_cost.py (whose helpers this reuses: `import logging_cost as base`): a bare
uvloop upstream answering SMSGate's 202, wrk (or an aiohttp client) POSTing with a Bearer token, the
gateways taking turns for `--rounds` rounds after a warm-up, requests/s and each gateway's own CPU time per
request. The gateways (`--workers 1 --log-format json`, access log and metrics on, as by default) differ
only in `tracing:`:

- `baseline`: no `tracing:` section, run from another revision's files (`--baseline`, default `main`,
              through `git archive`): the code before tracing existed, on the machine of now;
- `off`:      no `tracing:` section (this tree): tracing off must cost nothing measurable;
- `on`:       `tracing: {exporter: none, sample_ratio: 1}`: every request sampled, its spans built (server,
              auth, store, upstream CLIENT) and the traceparent injected, nothing exported;
- `otlp`:     `tracing: {endpoint: ...}`: the same, batched and exported as OTLP/HTTP protobuf to the bench
              upstream (which answers 202 to anything): the exporter thread's CPU is the gateway's too.

Ratios are what to read (other engineers share the CPU); every round runs the gateways back to back, in
alternating order, and the CPU cost is also given as the median of the rounds' differences to `off`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import http.client
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
from argon2 import PasswordHasher

sys.path.insert(0, str(Path(__file__).resolve().parent))
import logging_cost as base

ROOT = base.ROOT
PYTHON = base.PYTHON
TRACING = {
    "baseline": "",
    "off": "",
    "on": "tracing: {exporter: none, sample_ratio: 1}\n",
    "otlp": "tracing: {endpoint: 'http://127.0.0.1:%d/v1/traces', sample_ratio: 1}\n",
}


BENCH_PASSWORD = "bench-" + secrets.token_hex(12)


def write_config(directory: Path, name: str, upstream_port: int, password_hash: str) -> Path:
    """logging_cost's config (access log and metrics on), a Basic user to mint tokens, and `TRACING[name]`."""
    config = base.write_config(directory, name, upstream_port, access=True, metrics=True)
    user = f'auth:\n  basic_users: [{{username: bench, password_hash: "{password_hash}", scopes: [messages:send]}}]\n'
    tracing = TRACING[name].replace("%d", str(upstream_port))
    config.write_text(config.read_text() + user + tracing)
    return config


def mint(port: int) -> str:
    """A token from the gateway's own endpoint: with memory:// each gateway is its own store epoch."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        basic = base64.b64encode(f"bench:{BENCH_PASSWORD}".encode()).decode()
        headers = {"Authorization": f"Basic {basic}", "Content-Type": "application/json"}
        connection.request("POST", "/3rdparty/v1/auth/token", body='{"scopes": ["messages:send"]}', headers=headers)
        response = connection.getresponse()
        body = response.read()
        if response.status not in (200, 201):
            raise RuntimeError(f"minting a token answered {response.status}: {body[:200]!r}")
        token: str = json.loads(body)["access_token"]
        return token
    finally:
        connection.close()


@contextlib.contextmanager
def processes(directory: Path, baseline: Path) -> Iterator[tuple[dict[str, base.Process], dict[str, str]]]:
    env = {**os.environ, "BENCH_TOKEN_SECRET": base.SECRET, "BENCH_UPSTREAM_PASSWORD": base.UPSTREAM_PASSWORD}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["OTEL_BSP_SCHEDULE_DELAY"] = "1000"  # the SDK's default is 5 s; either way batches of up to 512 spans
    started: list[base.Process] = []
    try:
        upstream_port = base.free_port()
        script = directory / "upstream.py"
        script.write_text(base.UPSTREAM)
        upstream = base.start("upstream", [PYTHON, str(script), str(upstream_port)], upstream_port, directory)
        started.append(upstream)
        gateways: dict[str, base.Process] = {}
        password_hash = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(BENCH_PASSWORD)
        for name in TRACING:
            config = write_config(directory, name, upstream_port, password_hash)
            port = base.free_port()
            argv = [PYTHON, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)]
            argv += ["--log-format", "json"]
            cwd = baseline if name == "baseline" else ROOT  # `-m gateway` imports the package found in cwd
            gateways[name] = base.start(name, argv, port, directory, env, cwd=cwd)
            started.append(gateways[name])
        upstream.wait_ready("/")
        tokens: dict[str, str] = {}
        for name, gateway in gateways.items():
            gateway.wait_ready("/healthz")
            tokens[name] = mint(gateway.port)
            status, body = base.get(gateway.port, base.PATH, tokens[name], base.BODY)
            if status != 202:
                raise RuntimeError(f"{gateway.name}: POST answered {status}: {body[:200]!r}")
        yield gateways, tokens
    finally:
        for process in reversed(started):
            process.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all four gateways, in turns")
    parser.add_argument("--baseline", default="main", metavar="REF", help="the revision run as `baseline`")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "TRACING.md")
    parser.add_argument("--client", choices=("auto", "wrk", "aiohttp"), default="auto")
    args = parser.parse_args()

    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk") is not None)
    measure = base.wrk_rps if use_wrk else base.client_rps
    names = list(TRACING)
    results: dict[str, list[base.Sample]] = {name: [] for name in names}
    revision = subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=ROOT, capture_output=True, text=True)
    args.baseline = revision.stdout.strip() or args.baseline  # named by its commit: branches move
    with tempfile.TemporaryDirectory(prefix="smsguard-tracecost-") as temp:
        directory = Path(temp)
        with processes(directory, base.export(args.baseline, directory)) as (gateways, tokens):
            for name, gateway in gateways.items():  # warm-up: connections, token cache, label children
                measure(gateway.port, tokens[name], args.connections, 2, directory)
            for round_index in range(args.rounds):
                for name in names if round_index % 2 == 0 else names[::-1]:
                    process = psutil.Process(gateways[name].process.pid)
                    before = base.cpu_seconds(process)
                    port = gateways[name].port
                    rps, count = measure(port, tokens[name], args.connections, args.duration, directory)
                    sample = base.Sample(rps, (base.cpu_seconds(process) - before) / count * 1e6)
                    results[name].append(sample)
                    print(f"round {round_index + 1}: {name:8} {rps:8.0f} req/s {sample.cpu_us:6.1f} µs CPU/request")
            lines = gateways["on"].logfile.read_text(errors="replace").splitlines()
            traced = next((line for line in lines if "trace_id" in line), "")
    text = report(args, use_wrk, results, traced)
    print(text)
    args.output.write_text(text)
    return 0


def report(args: argparse.Namespace, use_wrk: bool, results: dict[str, list[base.Sample]], traced: str) -> str:
    names = list(results)

    def median(name: str, field: str) -> float:
        return statistics.median(getattr(sample, field) for sample in results[name])

    def added(name: str) -> float:
        pairs = zip(results[name], results["off"], strict=True)
        return statistics.median(sample.cpu_us - off.cpu_us for sample, off in pairs)

    rps = {name: median(name, "rps") for name in names}
    cpu = {name: median(name, "cpu_us") for name in names}
    rows = "\n".join(
        f"| `{name}` | {rps[name]:.0f} | {rps[name] / rps['off']:.3f} | {cpu[name]:.1f} | {cpu[name] / cpu['off']:.3f} "
        f"| {added(name):+.1f} |"
        for name in names
    )
    rounds = "\n".join(
        "| "
        + " | ".join([str(index + 1), *(f"{results[name][index].rps:.0f}" for name in names)])
        + " | "
        + " | ".join(f"{results[name][index].cpu_us:.1f}" for name in names)
        + " |"
        for index in range(args.rounds)
    )
    client = "wrk, 1 thread" if use_wrk else "aiohttp client (wrk not installed)"
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cores = psutil.cpu_count()
    return f"""# Tracing cost

`bench/tracing_cost.py --duration {args.duration} --connections {args.connections} --rounds {args.rounds}` \
({when}; {platform.python_implementation()} {platform.python_version()}, {cores} cores shared with other \
work; {client}, {args.connections} connections, POST {base.PATH} with a Bearer token, upstream a bare uvloop \
server). `baseline` is {args.baseline} (before tracing existed); `off` this tree without `tracing:`; `on` every \
request sampled and its spans built, not exported; `otlp` the same exported as OTLP/HTTP protobuf (batched).

| gateway | req/s (median) | ÷ off | CPU µs/request (median) | ÷ off | CPU µs vs off (median of rounds) |
|---|---|---|---|---|---|
{rows}

Per round (req/s, then CPU µs/request; gateways back to back, order alternating):

| round | {" | ".join(names)} | {" | ".join(names)} |
|---|{"---|" * (2 * len(names))}
{rounds}

An access line of `on` (trace_id and span_id are the request's server span):

```
{traced[:600]}
```
"""


if __name__ == "__main__":
    raise SystemExit(main())
