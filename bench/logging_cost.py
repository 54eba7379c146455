"""What logging and metrics cost: `gateway serve` with the access log and metrics on, off, and each alone.

    .venv/bin/python bench/logging_cost.py [--duration 6] [--connections 32] [--rounds 5] [--before REF]
                                           [--output FILE]

Everything runs on loopback, as separate processes:

1. a fast upstream: a bare asyncio (uvloop) HTTP/1.1 server answering SMSGate's `202` to every request, so
   the gateway, not the upstream, is the bottleneck (the worst case for any per-request cost);
2. four gateways (`gateway serve --workers 1 --log-format json`, stderr to a file as a deployment's log
   collector would read it), identical except for two config switches:
   - `on`:      `log: {access: true}`,  `metrics: {enabled: true}` (the defaults: request id, one JSON access
                line per request, Prometheus counters and histograms, in-flight gauge);
   - `metrics`: `log: {access: false}`, `metrics: {enabled: true}`;
   - `log`:     `log: {access: true}`,  `metrics: {enabled: false}`;
   - `off`:     both false (the request is not wrapped at all);
   each verifies an HS256 token (cached after the first request) and injects Basic credentials upstream;
   with `--before REF` (a git revision), a fifth gateway, `before`, is `on` run from that revision's
   files (`git archive`, into the temporary directory): the logging code of then, on the machine of now;
3. load: wrk (one thread, a POST with a JSON body and a Bearer token) when it is installed, else a small
   aiohttp client; the gateways take turns for `--rounds` rounds after a warm-up, and medians are compared;
4. besides requests/s, each gateway's own CPU time (user + system) per request, which the load generator
   and the upstream sharing the machine disturb much less. On a shared machine even that drifts with the
   neighbours' load, so the cost is also given as the median of each round's difference to `off` (the
   gateways of one round run back to back, in alternating order).

Results go to stdout and to `--output` (Markdown). The access lines written by `on` are counted to check
that every request was logged.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PATH = "/3rdparty/v1/messages"
BODY = json.dumps({"textMessage": {"text": "Your code is 482913"}, "phoneNumbers": ["+15555550100"]})
SECRET = secrets.token_urlsafe(48)
UPSTREAM_PASSWORD = "bench-" + secrets.token_hex(8)
BASIC = base64.b64encode(f"bench-upstream-user:{UPSTREAM_PASSWORD}".encode()).decode()

UPSTREAM = r"""
import asyncio, re, sys, uvloop
BODY = b'{"id":"PyeZ1s3nKcOhVZ2IhV8lT","state":"Pending"}'
RESPONSE = (b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\n"
            b"location: /3rdparty/v1/messages/PyeZ1s3nKcOhVZ2IhV8lT\r\ncontent-length: %d\r\n\r\n" % len(BODY)) + BODY
LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)

class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data):
        self.buffer += data
        while True:  # keep-alive requests, each with a Content-Length body or none
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            found = LENGTH.search(self.buffer, 0, end + 2)
            size = end + 4 + (int(found.group(1)) if found else 0)
            if len(self.buffer) < size:
                return
            self.buffer = self.buffer[size:]
            self.transport.write(RESPONSE)

async def main():
    server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    async with server:
        await server.serve_forever()

uvloop.run(main())
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def get(port: int, path: str, token: str | None = None, body: str | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        connection.request("POST" if body is not None else "GET", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@dataclass
class Process:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    logfile: Path

    def wait_ready(self, path: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.logfile.read_text(errors='replace')[-3000:]}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                get(self.port, path)
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} did not start")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def start(
    name: str, argv: list[str], port: int, directory: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Process:
    logfile = directory / f"{name}.log"
    with open(logfile, "wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd, env=env,
            start_new_session=True,
        )  # fmt: skip
    return Process(name, port, process, logfile)


VARIANTS = {"on": (True, True), "metrics": (False, True), "log": (True, False), "off": (False, False)}
BEFORE = "before"  # `on` from another revision's files (--before)


def write_config(directory: Path, name: str, upstream_port: int, access: bool, metrics: bool) -> Path:
    config = directory / f"{name}.yaml"
    config.write_text(
        f"""\
listen: {{host: 127.0.0.1, port: 0}}
policies: [{ROOT / "policies" / "smsgate.yaml"}]
auth:
  issuers:
    - {{name: bench, issuer: bench-idp, audience: sms-api, algorithms: [HS256], secret: "${{BENCH_TOKEN_SECRET}}"}}
tokens:
  enabled: true
  keys: [{{kid: k1, algorithm: HS256, secret: "${{BENCH_TOKEN_SECRET}}"}}]
upstreams:
  smsgate:
    url: http://127.0.0.1:{upstream_port}/3rdparty/v1
    credentials: {{type: basic, username: bench-upstream-user, password: "${{BENCH_UPSTREAM_PASSWORD}}"}}
reload: {{watch: false}}
log: {{access: {str(access).lower()}, level: info}}
metrics: {{enabled: {str(metrics).lower()}}}
"""
    )
    return config


def mint_token(config: Path, env: dict[str, str]) -> str:
    """A token of the issuer the bench plays (`auth.issuers`): `gateway token issue` on a `memory://` store
    mints for that command's own store epoch, which no running gateway accepts (issue 14)."""
    import jwt

    now = int(time.time())
    claims = {"iss": "bench-idp", "sub": "bench", "aud": "sms-api", "iat": now, "exp": now + 3600}
    return jwt.encode({**claims, "jti": f"bench-{now}", "scope": "messages:send"}, env["BENCH_TOKEN_SECRET"])


# ------------------------------------------------------------------------------------------------ load


def wrk_rps(port: int, token: str, connections: int, duration_s: int, directory: Path) -> tuple[float, int]:
    script = directory / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{BODY}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    )
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "-s", str(script), f"http://127.0.0.1:{port}{PATH}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    if "Non-2xx" in done.stdout or "Socket errors" in done.stdout:
        raise RuntimeError(f"wrk saw errors:\n{done.stdout}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    count = re.search(r"(\d+) requests in", done.stdout)
    if match is None or count is None:
        raise RuntimeError(f"cannot parse wrk output:\n{done.stdout}")
    return float(match.group(1)), int(count.group(1))


def client_rps(port: int, token: str, connections: int, duration_s: int, directory: Path) -> tuple[float, int]:
    """A fallback load generator when wrk is missing (it costs more CPU than wrk: compare ratios only)."""
    import aiohttp

    async def run() -> tuple[float, int]:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        done = 0
        deadline = time.monotonic() + duration_s
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker() -> None:
                nonlocal done
                while time.monotonic() < deadline:
                    async with session.post(f"http://127.0.0.1:{port}{PATH}", data=BODY, headers=headers) as r:
                        await r.read()
                        if r.status != 202:
                            raise RuntimeError(f"unexpected status {r.status}")
                    done += 1

            started = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(connections)))
            return done / (time.monotonic() - started), done

    return asyncio.run(run())


IN_PROCESS = r"""
import asyncio, gc, json, os, statistics, sys, time
from gateway.observe.logs import Loggers, Redactor, StreamSink
from gateway.observe.metrics import Metrics
from gateway.observe.events import Observer, ObservePlan
from gateway.policy.model import Rule
from gateway.auth.jwt import Principal

secrets, requests, rounds = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
BATCH = 15  # requests finishing per event-loop iteration, as counted in a saturated `gateway serve`
RULE = Rule(methods=frozenset({"POST"}), path="/messages", full_path="/3rdparty/v1/messages",
            scopes=("messages:send",), file="policies/smsgate.yaml", line=34, upstream="smsgate")
CALLER = Principal("bench", frozenset({"messages:send"}), "self", "p_leC9bJifZEyGyAT4H8cg", None, {}, "access")
BODY = b'{"id":"PyeZ1s3nKcOhVZ2IhV8lT","state":"Pending"}'
HEADERS = [(b"host", b"127.0.0.1:8080"), (b"authorization", b"Bearer a.b.c"),
           (b"content-type", b"application/json"), (b"content-length", b"82")]

async def handler(context, scope, receive, send):  # what the authorizer and the proxy note, then a 202
    record = scope.get("smsguard.log")
    if record is not None:
        record.path, record.rule, record.principal = "/3rdparty/v1/messages", RULE, CALLER
        record.upstream, record.upstream_s, record.bytes_in = "smsgate", 0.000828, 82
    await send({"type": "http.response.start", "status": 202, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})

async def send(message):
    return None

async def receive():
    return {"type": "http.request", "body": b"", "more_body": False}

def scope():
    return {"type": "http", "method": "POST", "path": "/3rdparty/v1/messages", "raw_path": b"/3rdparty/v1/messages",
            "query_string": b"", "headers": list(HEADERS), "client": ("127.0.0.1", 50000)}

async def measure(call):
    for _ in range(2000):
        await call()
    await asyncio.sleep(0)
    started = time.process_time()
    for _ in range(requests // BATCH):
        for _ in range(BATCH):
            await call()
        await asyncio.sleep(0)  # the loop's next iteration: the batch is counted and logged, the lines written
        await asyncio.sleep(0)
    return (time.process_time() - started) / (requests // BATCH * BATCH) * 1e6

async def main():
    devnull = open(os.devnull, "w")
    calls = {}
    for name, access, count in (("on", True, True), ("metrics", False, True), ("log", True, False)):
        loggers = Loggers.build(Redactor(secrets), level="info", sink=StreamSink("json", devnull))
        observer = Observer(loggers.access, Metrics(), handler)
        labels = {id(RULE): "POST /3rdparty/v1/messages (policies/smsgate.yaml:34)"}
        plan = ObservePlan(access=access, probes=False, count=count, labels=labels)
        calls[name] = lambda observer=observer, plan=plan: observer(plan, None, scope(), receive, send)
    calls["off"] = lambda: handler(None, scope(), receive, send)
    results = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            results[name].append(await measure(call))
    print(json.dumps(results))

asyncio.run(main())
"""


def in_process(tree: Path, rounds: int, requests: int = 30_000) -> dict[str, list[float]]:
    """The Observer alone, in a hot loop (see IN_PROCESS), with the code in `tree`: CPU µs per request."""
    secret_values = [SECRET, UPSTREAM_PASSWORD, "bench-upstream-user", BASIC]
    done = subprocess.run(
        [PYTHON, "-c", IN_PROCESS, json.dumps(secret_values), str(requests), str(rounds)],
        cwd=tree, capture_output=True, text=True, check=True,
    )  # fmt: skip
    results: dict[str, list[float]] = json.loads(done.stdout)
    return results


# ------------------------------------------------------------------------------------------------ main


def export(revision: str, directory: Path) -> Path:
    """The files of `revision` (`git archive`: the repository and the working tree are left alone)."""
    tree = directory / "before"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


@contextlib.contextmanager
def processes(directory: Path, before: Path | None = None) -> Iterator[tuple[dict[str, Process], str]]:
    env = {**os.environ, "BENCH_TOKEN_SECRET": SECRET, "BENCH_UPSTREAM_PASSWORD": UPSTREAM_PASSWORD}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    started: list[Process] = []
    try:
        upstream_port = free_port()
        script = directory / "upstream.py"
        script.write_text(UPSTREAM)
        upstream = start("upstream", [PYTHON, str(script), str(upstream_port)], upstream_port, directory)
        started.append(upstream)
        gateways: dict[str, Process] = {}
        token = ""
        variants = {**VARIANTS, **({BEFORE: VARIANTS["on"]} if before is not None else {})}
        for name, (access, metrics) in variants.items():
            config = write_config(directory, name, upstream_port, access, metrics)
            token = token or mint_token(config, env)
            port = free_port()
            argv = [PYTHON, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)]
            cwd = before if name == BEFORE else ROOT  # `-m gateway` imports the package found in cwd
            gateways[name] = start(name, [*argv, "--log-format", "json"], port, directory, env, cwd=cwd)
            started.append(gateways[name])
        upstream.wait_ready("/")
        for gateway in gateways.values():
            gateway.wait_ready("/healthz")
            status, body = get(gateway.port, PATH, token, BODY)
            if status != 202:
                raise RuntimeError(f"{gateway.name}: POST answered {status}: {body[:200]!r}")
        yield gateways, token
    finally:
        for process in reversed(started):
            process.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=6, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of all four gateways, in turns")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "LOGGING_COST.md")
    parser.add_argument("--client", choices=("auto", "wrk", "aiohttp"), default="auto")
    parser.add_argument("--before", metavar="REF", help="also run `on` from this git revision's files")
    args = parser.parse_args()

    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk") is not None)
    measure = wrk_rps if use_wrk else client_rps
    names = [*VARIANTS, *([BEFORE] if args.before else [])]
    results: dict[str, list[Sample]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="smsguard-logcost-") as temp:
        directory = Path(temp)
        if args.before:  # named by its commit in the report: HEAD moves
            revision = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=ROOT, capture_output=True)
            args.before = revision.stdout.decode().strip() or args.before
        before_tree = export(args.before, directory) if args.before else None
        with processes(directory, before_tree) as (gateways, token):
            for gateway in gateways.values():  # warm-up: connections, token cache, label children
                measure(gateway.port, token, args.connections, 2, directory)
            for round_index in range(args.rounds):
                order = names if round_index % 2 == 0 else names[::-1]
                for name in order:
                    process = psutil.Process(gateways[name].process.pid)
                    before = cpu_seconds(process)
                    rps, count = measure(gateways[name].port, token, args.connections, args.duration, directory)
                    sample = Sample(rps, (cpu_seconds(process) - before) / count * 1e6)
                    results[name].append(sample)
                    print(f"round {round_index + 1}: {name:7} {rps:8.0f} req/s {sample.cpu_us:6.1f} µs CPU/request")
            text = gateways["on"].logfile.read_text(errors="replace")
            lines = text.count('"event": "request"')
            line = next((line for line in text.splitlines() if '"event": "request"' in line), "")
        hot = {"this tree": in_process(ROOT, args.rounds)}
        if before_tree is not None:
            hot[f"`before` ({args.before})"] = in_process(before_tree, args.rounds)

    report = Report(args, use_wrk, results, lines, line, hot)
    print(report.summary())
    print(f"access lines written by `on`: {lines}")
    previous = args.output.read_text() if args.output.exists() else ""
    history = previous[previous.index(HISTORY) :] if HISTORY in previous else ""
    args.output.write_text(report.markdown(history))
    return 0


def cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU of the gateway process (workers=1: uvicorn serves in this very process)."""
    times = process.cpu_times()
    return float(times.user + times.system)


@dataclass(frozen=True)
class Sample:
    rps: float
    cpu_us: float  # gateway CPU time per request


HISTORY = "\n## Earlier measurements"  # kept from the previous output file when it is rewritten


@dataclass
class Report:
    args: argparse.Namespace
    use_wrk: bool
    results: dict[str, list[Sample]]
    lines: int
    sample_line: str
    hot: dict[str, dict[str, list[float]]]  # in process: tree -> variant -> CPU µs per request, per round

    def median(self, name: str, field: str) -> float:
        return statistics.median(getattr(sample, field) for sample in self.results[name])

    def added(self, name: str) -> float:
        """CPU µs per request above `off`: the median of the rounds' differences (each round back to back)."""
        pairs = zip(self.results[name], self.results["off"], strict=True)
        return statistics.median(sample.cpu_us - off.cpu_us for sample, off in pairs)

    def summary(self) -> str:
        on, off = self.median("on", "rps"), self.median("off", "rps")
        cpu_on, cpu_off = self.median("on", "cpu_us"), self.median("off", "cpu_us")
        text = (
            f"median requests/s: on {on:.0f}, off {off:.0f} (on/off = {on / off:.3f}); "
            f"gateway CPU per request: on {cpu_on:.1f} µs, off {cpu_off:.1f} µs "
            f"({cpu_on - cpu_off:+.1f} µs; median of the rounds' differences {self.added('on'):+.1f} µs)"
        )
        if BEFORE in self.results:
            text += f"; before: {self.median(BEFORE, 'cpu_us') - cpu_off:+.1f} µs (rounds: {self.added(BEFORE):+.1f})"
        for tree, results in self.hot.items():
            text += f"\nin process, {tree}: " + ", ".join(
                f"{name} {statistics.median(results[name]) - statistics.median(results['off']):+.1f} µs"
                for name in ("metrics", "log", "on")
            )
        return text

    def hot_table(self) -> str:
        rows = [
            f"| {tree} | "
            + " | ".join(f"{statistics.median(results[name]):.1f}" for name in ("off", "metrics", "log", "on"))
            + f" | **{statistics.median(results['on']) - statistics.median(results['off']):.1f}** |"
            for tree, results in self.hot.items()
        ]
        return "| code | off | metrics | log | on | on - off |\n|---|---|---|---|---|---|\n" + "\n".join(rows)

    def markdown(self, history: str = "") -> str:
        args = self.args
        names = list(self.results)
        on, off = self.median("on", "rps"), self.median("off", "rps")
        cpu = {name: self.median(name, "cpu_us") for name in names}
        rps = {name: self.median(name, "rps") for name in names}
        client = "wrk, 1 thread" if self.use_wrk else "aiohttp client (wrk not installed)"
        rounds = "\n".join(
            "| "
            + " | ".join([str(index + 1), *(f"{self.results[name][index].rps:.0f}" for name in names)])
            + " | "
            + " | ".join(f"{self.results[name][index].cpu_us:.1f}" for name in names)
            + " |"
            for index in range(args.rounds)
        )
        header = " | ".join(names)
        medians = " | ".join(f"**{rps[name]:.0f}**" for name in names)
        cpus = " | ".join(f"**{cpu[name]:.1f}**" for name in names)
        labels = {"metrics": "metrics alone", "log": "the access log alone", "on": "both", BEFORE: "`before`"}
        added = "; ".join(
            f"{label} {self.added(name):+.1f} µs (medians: {cpu[name] - cpu['off']:+.1f})"
            for name, label in labels.items()
            if name in self.results
        )
        command = "bench/logging_cost.py" + (f" --before {args.before}" if args.before else "")
        before = (
            f"\n- `before`: `on` run from the files of `{args.before}`: the logging code of then, the rest"
            "\n  of the gateway and the machine of now."
            if BEFORE in self.results
            else ""
        )
        machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        return f"""# What logging and metrics cost

Measured by `{command}` on {datetime.date.today().isoformat()} ({machine}).

- Setup: `gateway serve --workers 1 --log-format json` (stderr to a file) in front of a bare asyncio
  upstream answering 202 at once, all on loopback: the gateway is the bottleneck, so any per-request
  cost shows in full. The shipped SMSGate policy, an HS256 token, Basic credentials injected upstream.
- Load: {client}, {args.connections} connections, `POST {PATH}` with a small JSON body,
  {args.duration} s per measurement, {args.rounds} rounds of the gateways in turns after a warm-up.
- `on`: `log.access: true` + `metrics.enabled: true` (the defaults): request id in and out, one JSON
  access line per request, the request counters and histograms, the in-flight gauge. `metrics` and `log`:
  one of the two. `off`: both switched off (the request is not wrapped at all).{before}
- Requests/s depend on everything else running on the machine (wrk and the upstream share its CPUs);
  the gateway's own CPU time per request (user + system, from /proc) is the steadier figure, and the
  median of each round's difference to `off` (measured back to back) the steadiest.

| round | req/s: {header} | µs CPU/request: {header} |
|{"---|" * (1 + 2 * len(names))}
{rounds}
| **median** | {medians} | {cpus} |

**Result: on/off = {on / off:.3f} in requests/s; logging and metrics together add {self.added("on"):.1f} µs
of gateway CPU per request** (the median of the rounds' differences; {added}). `on` wrote
{self.lines} access lines (every request, warm-up included). With a real provider behind it (tens to
hundreds of milliseconds per SMS request) the gateway is far from CPU-bound, and this is a few
hundredths of a percent of each request's latency.

How the cost is kept down (each step measured): the receive side is not wrapped (bytes in are counted
by whoever reads the body); `send` is wrapped by a plain function, not a coroutine; request ids come
from one `os.urandom` call per 64 requests; the in-flight gauge reads a counter at scrape time; the
requests finished in one event-loop iteration are counted and logged together, after it. The access
line skips structlog's processors and the JSON encoder: it is built directly (`logs.JSONOutput`), the
same text the chain writes (a test compares the two), under the same redaction checks (the key names
once per redactor version, then the whole line searched for `eyJ` and every secret; when anything is
found, the event goes through the chain's thorough pass instead). The timestamp is formatted once per
second, each caller's fields and each scope list once; lines are written once per loop iteration. The
request latencies are held per label set and added to prometheus_client's values once per iteration:
one locked increment per counter, sum and bucket touched instead of five per request, and no linear
bucket search.

In process (`IN_PROCESS` in the script, {args.rounds} rounds, medians): the `Observer` alone around a
handler that answers at once, 15 requests per event-loop iteration (as counted in a saturated gateway),
the JSON lines going to `/dev/null`, in a hot loop: neither the neighbours' load nor the rest of the
gateway blurs it, but caches stay warm (in the gateway the same work costs more). CPU µs per request:

{self.hot_table()}

What remains, in process: the request id, the record and the `send` wrapper (in `metrics`, with the
metrics), then per access line a dozen JSON escapes and the f-string, the redaction search of the
whole line (one pass per configured secret and spelling), the timestamp and the write. In the gateway the
same work costs more than in the hot loop (compare the two tables: caches are cold between requests), and
the request id costs the server and the proxy an extra header each (`x-request-id` in the answer,
`X-Request-ID` upstream), which only the end-to-end figure includes.

A line as written:

```json
{self.sample_line}
```
{history}"""


if __name__ == "__main__":
    raise SystemExit(main())
