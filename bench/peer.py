"""smsguard against the peer a user would pick instead: HAProxy 2.6 (Debian) with `jwt_verify` (issue 20).

    make bench                                  # bench/run.py, then this part → bench/PEER.md
    .venv/bin/python bench/run.py --peer-only   # just this part (~3-4 min)

Both check the **same ES256 tokens** (minted here with PyJWT from one private key, as an external identity
provider would: `iss`, `aud`, `sub`, `iat`, `exp`, `jti`, a space-separated `scope`), forward to the same nginx
upstream (`bench/nginx.conf.template`) and inject the same upstream Basic credential:

- **HAProxy** (`bench/haproxy.cfg.template`): `nbthread 1`, algorithm pinned to ES256, signature verified on
  every request (HAProxy 2.6 has no verified-token cache), `iss`/`aud`/`exp` checked, the scope each method
  and path needs matched in the `scope` claim, default deny, one access line per request to a file;
- **smsguard**: `gateway serve --workers 1` trusting the bench's public keys as external issuers
  (`auth.issuers`, one ES256 and one EdDSA issuer), the shipped `policies/smsgate.yaml` plus 1,000 generated
  rules, its JSON access event per request to a file, metrics on: the configuration bench/run.py measures.

Scenarios (wrk `-t1`, small POST, c=32 unless said): (a) one token reused; (b) every request a new ES256
token; (c) every request a new EdDSA token (smsguard) against (b)'s HAProxy; (d) 100,000 clients, each its own
token, cycled, without and after a warm-up pass that shows every token once; (e) c=1000 on one worker, with
nginx direct as the floor; (f) RSS idle, after (d), and HAProxy's. CPU per request is the CPU time of the
server's processes (psutil) over the requests wrk completed. Targets are printed, never asserted.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import inspect
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import run
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from run import BENCH, POST_BODY, SMSGATE_POLICY, WORKLOADS, Result, Server

ISSUER_ES256 = "https://issuer.bench.example/es256"
ISSUER_EDDSA = "https://issuer.bench.example/eddsa"  # two issuers: smsguard keys each `iss` to one issuer
AUDIENCE = "sms-api"
SCOPE = "messages:send messages:read"
TOKEN_TTL_S = 6 * 3600
CONNECTIONS = 32
MANY_CONNECTIONS = 1000

# The goals of issue 20 (smsguard 1 worker / HAProxy 1 thread, unless said).
GOAL_CACHED = 1.0
GOAL_NEW_ES256 = 0.6
GOAL_NEW_EDDSA = 0.55
GOAL_MANY_CLIENTS = 0.9
GOAL_P99_MS = 1000.0
GOAL_IDLE_RSS_MIB = 45.0


# ---------------------------------------------------------------------------------------------------
# Keys and tokens


@dataclass(frozen=True)
class Keys:
    """The bench identity provider's signing keys and the public PEM files both proxies trust."""

    es256: ec.EllipticCurvePrivateKey
    eddsa: ed25519.Ed25519PrivateKey
    es256_public: Path
    eddsa_public: Path


def make_keys(directory: Path) -> Keys:
    es256, eddsa = ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate()
    paths = []
    for name, key in (("es256", es256), ("eddsa", eddsa)):
        path = directory / f"{name}-public.pem"
        path.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        paths.append(path)
    return Keys(es256, eddsa, paths[0], paths[1])


def mint(keys: Keys, algorithm: str, count: int, *, subject: str = "client", scope: str = SCOPE) -> list[str]:
    """`count` distinct tokens (each its own `sub` and `jti`), ES256 or EdDSA, as an external IdP mints them."""
    key: Any = keys.es256 if algorithm == "ES256" else keys.eddsa
    issuer = ISSUER_ES256 if algorithm == "ES256" else ISSUER_EDDSA
    now = int(time.time())
    base = {"iss": issuer, "aud": AUDIENCE, "iat": now, "exp": now + TOKEN_TTL_S, "scope": scope}
    return [
        jwt.encode({**base, "sub": f"{subject}-{index}", "jti": f"{subject}-{index}"}, key, algorithm=algorithm)
        for index in range(count)
    ]


def write_tokens(path: Path, tokens: Iterable[str]) -> Path:
    path.write_text("".join(token + "\n" for token in tokens))
    return path


# ---------------------------------------------------------------------------------------------------
# Configs


def basic_credential(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def render_haproxy(*, port: int, upstream_port: int, public_key: Path, upstream_basic: str) -> str:
    """bench/haproxy.cfg.template filled in (the issuer, audience and key are the ES256 issuer's)."""
    template = (BENCH / "haproxy.cfg.template").read_text()
    return template.format(
        port=port, upstream_port=upstream_port, public_key=public_key, issuer=ISSUER_ES256, audience=AUDIENCE,
        upstream_basic=upstream_basic,
    )  # fmt: skip


def smsguard_config(
    path: Path, *, upstream_port: int, policies: list[Path], keys: Keys, store: str = "memory://"
) -> Path:
    """smsguard trusting the bench IdP's two public keys, with run.py's logging/metrics and upstream credential."""
    issuers = [
        f'{{name: bench-es256, issuer: "{ISSUER_ES256}", audience: {AUDIENCE}, algorithms: [ES256], '
        f"public_key_file: {keys.es256_public}}}",
        f'{{name: bench-eddsa, issuer: "{ISSUER_EDDSA}", audience: {AUDIENCE}, algorithms: [EdDSA], '
        f"public_key_file: {keys.eddsa_public}}}",
    ]
    return run.write_config(path, upstream_port, policies, None, store, issuers)


def cycle_script(directory: Path, workload: str) -> Path:
    """A wrk script sending the tokens of a file (one a line) in turn, one per request.

    Arguments after `--`: the file, the index to start at, and optionally a count of answers after which
    wrk's thread stops sending (a warm-up pass that shows every token once). It prints `tokens sent: N`."""
    method, body = ("POST", POST_BODY) if workload == "POST" else ("GET", None)
    content_type = '["Content-Type"] = "application/json", ' if body else ""
    path = directory / f"cycle-{workload.lower()}.lua"
    path.write_text(f"""\
local tokens, index, limit, seen, threads = {{}}, 0, 0, 0, {{}}
sent = 0
wrk.method = "{method}"
{f"wrk.body = '{body}'" if body else ""}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
  index = tonumber(args[2]) % #tokens
  limit = tonumber(args[3] or "0")
end
function request()
  index = index % #tokens + 1
  sent = sent + 1
  return wrk.format(nil, nil, {{{content_type}["Authorization"] = "Bearer " .. tokens[index]}})
end
function response(status, headers, body)
  if limit > 0 then
    seen = seen + 1
    if seen >= limit then wrk.thread:stop() end
  end
end
function done(summary, latency, requests)
  for _, thread in ipairs(threads) do io.write(string.format("tokens sent: %d\\n", thread:get("sent"))) end
end
""")
    return path


# ---------------------------------------------------------------------------------------------------
# Measuring


def wrk(
    server: Server, workload: str, connections: int, seconds: float, script: Path, script_args: Sequence[str] = ()
) -> tuple[Result, str]:
    """One wrk run (one thread), its parsed result and its output (where the cycling script reports)."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s", "-s", str(script)]
    argv += [f"http://127.0.0.1:{server.port}{WORKLOADS[workload][0]}", "--", *script_args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed against {server.label}: {done.stderr.strip()}")
    try:
        return run.parse_wrk(done.stdout), done.stdout
    except (AttributeError, KeyError, ValueError) as exc:
        raise RuntimeError(f"could not parse wrk output ({exc}):\n{done.stdout}") from exc


@dataclass
class Tokens:
    """A token file and, per server, how many of its tokens wrk has sent (the next run starts after them)."""

    path: Path
    count: int
    cursor: dict[str, int] = field(default_factory=dict)

    def args(self, server: Server, limit: int = 0) -> list[str]:
        return [str(self.path), str(self.cursor.get(server.key, 0)), *([str(limit)] if limit else [])]

    def advance(self, server: Server, output: str) -> None:
        match = re.search(r"tokens sent: (\d+)", output)
        if match is None:
            raise RuntimeError(f"the wrk script did not say how many tokens it sent:\n{output}")
        self.cursor[server.key] = self.cursor.get(server.key, 0) + int(match.group(1))

    def wrapped(self, server: Server) -> bool:
        return self.cursor.get(server.key, 0) > self.count


@dataclass
class Bench:
    """What every scenario shares: the run's arguments, the servers, the scripts, the results."""

    args: Any
    servers: list[Server]
    scripts: dict[tuple[str | None, str], Path]
    cycle: dict[str, Path]
    tokens: dict[str, Tokens] = field(default_factory=dict)
    results: dict[tuple[str, str], Result] = field(default_factory=dict)
    rss: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def point(
        self, scenario: str, server: Server, *, tokens: Tokens | None = None, workload: str = "POST",
        connections: int = CONNECTIONS, warmup: bool = True,
    ) -> Result:  # fmt: skip
        """One measured wrk run (after a short warm-up unless told); again when other load disturbed it."""
        if warmup and self.args.warmup > 0:
            self._wrk(server, workload, connections, self.args.warmup, tokens)
        for attempt in range(self.args.retries + 1):
            busy, own, started = run.busy_cpu_seconds(), run.own_cpu_seconds(self.servers), time.monotonic()
            served = run.own_cpu_seconds([server]) - run.own_cpu_seconds([])
            result = self._wrk(server, workload, connections, self.args.duration, tokens)
            served = run.own_cpu_seconds([server]) - run.own_cpu_seconds([]) - served
            result.cpu_us = 1e6 * served / max(result.requests, 1)
            used = (run.busy_cpu_seconds() - busy) - (run.own_cpu_seconds(self.servers) - own)
            result.foreign = max(used, 0.0) / (time.monotonic() - started)
            if result.foreign <= run.FOREIGN_LIMIT:
                break
            self.args.disturbed += 1
            if attempt < self.args.retries:
                run.log(f"    (other processes used {result.foreign:.2f} cores: measuring again)")
                run.wait_for_quiet(20, self.servers, threshold=run.FOREIGN_LIMIT)
        self.args.measured += 1
        self.results[(scenario, server.key)] = result
        run.log(
            f"  {scenario:24} {server.label:24} {result.rps:>9,.0f} req/s  p99 {result.p99_ms:8.2f} ms"
            f"  {result.cpu_us:6.0f} µs CPU/req" + (f"  ({result.errors} errors)" if result.errors else "")
        )
        return result

    def _wrk(self, server: Server, workload: str, connections: int, seconds: float, tokens: Tokens | None) -> Result:
        if tokens is None:
            return wrk(server, workload, connections, seconds, self.scripts[(server.token, workload)])[0]
        result, output = wrk(server, workload, connections, seconds, self.cycle[workload], tokens.args(server))
        tokens.advance(server, output)
        return result

    def show_all(self, server: Server, tokens: Tokens, rate: float) -> float:
        """Send each token of the file not yet sent to `server` once (a warm-up pass); return the seconds taken.

        wrk's thread stops at the count but wrk itself waits out `-d`, so `-d` is estimated from `rate`."""
        started = time.monotonic()
        for _ in range(5):
            remaining = tokens.count - tokens.cursor.get(server.key, 0)
            if remaining <= 0:
                break
            seconds = min(300, int(remaining / max(rate, 100.0) * 1.2) + 2)
            _, output = wrk(server, "POST", CONNECTIONS, seconds, self.cycle["POST"], tokens.args(server, remaining))
            tokens.advance(server, output)
        return time.monotonic() - started


# ---------------------------------------------------------------------------------------------------
# The run


def main(args: Any) -> int:
    """Start nginx, HAProxy and smsguard (1 and 2 workers), run the scenarios, write `args.peer_output`."""
    for tool in ("nginx", "wrk", "haproxy"):
        if shutil.which(tool) is None:
            run.log(f"bench: {tool} not found (apt-get install -y nginx-light wrk haproxy, or run `make bench`)")
            return 2
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="smsguard-peer-"))
    servers: list[Server] = []
    args.measured = getattr(args, "measured", 0)
    args.disturbed = getattr(args, "disturbed", 0)
    busy_before = run.wait_for_quiet(args.quiet_wait)
    cpu_start = (run.busy_cpu_seconds(), run.own_cpu_seconds([]))
    try:
        bench = _start(args, workdir, servers)
        _scenarios(bench, workdir)
        elapsed = time.monotonic() - started
        foreign = (run.busy_cpu_seconds() - cpu_start[0]) - (run.own_cpu_seconds(servers) - cpu_start[1])
        report = render(bench, elapsed=elapsed, busy_before=busy_before, foreign=max(foreign, 0.0) / elapsed)
        args.peer_output.write_text(report)
        run.log("")
        run.log(report)
        run.log(f"bench: wrote {args.peer_output}")
        return 0
    finally:
        for server in reversed(servers):
            server.stop()
        if args.keep:
            run.log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _start(args: Any, workdir: Path, servers: list[Server]) -> Bench:
    env = {**os.environ, "BENCH_SMSGATE_USER": run.UPSTREAM_USER, "BENCH_SMSGATE_PASSWORD": run.UPSTREAM_PASSWORD}
    env.pop("SMSGUARD_CONFIG", None)
    nginx_dir = workdir / "nginx"
    nginx_dir.mkdir()
    upstream_port = run.free_port()
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

    keys = make_keys(workdir)
    extra = run.extra_policy(workdir / "extra-1000.yaml", args.extra_rules, "/extra")
    config = smsguard_config(
        workdir / "config.yaml", upstream_port=upstream_port, policies=[SMSGATE_POLICY, extra], keys=keys
    )
    shared = smsguard_config(  # `--workers 2` needs a shared store: the scaling line compares 1 and 2 on Redis
        workdir / "config-redis.yaml", upstream_port=upstream_port, policies=[SMSGATE_POLICY, extra], keys=keys,
        store=args.peer_redis,
    )  # fmt: skip
    token = mint(keys, "ES256", 1, subject="one")[0]
    upstream.token = token
    haproxy_port = run.free_port()
    haproxy_cfg = workdir / "haproxy.cfg"
    haproxy_cfg.write_text(
        render_haproxy(
            port=haproxy_port, upstream_port=upstream_port, public_key=keys.es256_public,
            upstream_basic=basic_credential(run.UPSTREAM_USER, run.UPSTREAM_PASSWORD),
        )
    )  # fmt: skip
    flags, _ = run.serve_flags()

    def gateway(key: str, label: str, workers: int, config: Path = config) -> Server:
        port = run.free_port()
        argv = [run.PYTHON, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)]
        argv += ["--workers", str(workers), *flags]
        return Server(key, label, argv, port, workdir / f"{key}.log", ready_path="/readyz", token=token, env=env)

    haproxy = Server(
        "haproxy", "HAProxy jwt_verify", ["haproxy", "-db", "-f", str(haproxy_cfg)], haproxy_port,
        workdir / "haproxy.log", token=token,
    )  # fmt: skip
    contenders = [
        haproxy,
        gateway("smsguard-w1", "smsguard 1 worker", 1),
        gateway("smsguard-r1", "smsguard 1 worker, Redis", 1, shared),
        gateway("smsguard-r2", "smsguard 2 workers, Redis", 2, shared),
    ]
    run.log(f"bench (peer): starting HAProxy and smsguard (upstream nginx on :{upstream_port})")
    for server in contenders:
        servers.append(server)
        server.start()
    for server in contenders:
        server.wait_ready()
    wrong_scope = mint(keys, "ES256", 1, subject="reader", scope="messages:read")[0]
    eddsa = mint(keys, "EdDSA", 1, subject="eddsa")[0]
    for server in contenders:
        check_server(server, token, wrong_scope, eddsa if server.key.startswith("smsguard") else None)

    scripts = {(token, w): run.lua_script(workdir, w, token) for w in WORKLOADS}
    cycle = {w: cycle_script(workdir, w) for w in WORKLOADS}
    bench = Bench(args, servers, scripts, cycle)
    for server in (haproxy, contenders[1]):
        bench.rss[("idle", server.key)] = server.rss()
    started = time.monotonic()
    bench.tokens = {
        "es256": Tokens(write_tokens(workdir / "es256.txt", mint(keys, "ES256", args.peer_tokens)), args.peer_tokens),
        "eddsa": Tokens(write_tokens(workdir / "eddsa.txt", mint(keys, "EdDSA", args.peer_tokens)), args.peer_tokens),
        "clients": Tokens(
            write_tokens(workdir / "clients.txt", mint(keys, "ES256", args.peer_clients, subject="user")),
            args.peer_clients,
        ),
    }
    run.log(
        f"bench (peer): minted {2 * args.peer_tokens + args.peer_clients:,} tokens"
        f" in {time.monotonic() - started:.0f} s"
    )
    return bench


def check_server(server: Server, token: str, wrong_scope: str, eddsa: str | None) -> None:
    """The same token is accepted for both routes, a token without `messages:send` is refused, no token is 401."""
    for workload, (path, expected) in WORKLOADS.items():
        body = POST_BODY if workload == "POST" else None
        status, _, payload = run.http_request(server.port, workload, path, body, token)
        if status != expected or b'"id"' not in payload:
            raise RuntimeError(f"{server.label}: {workload} {path} answered {status} {payload[:200]!r}")
    checks = [("wrong scope", wrong_scope, 403), ("no token", None, 401)]
    if eddsa is not None:
        checks.append(("EdDSA token", eddsa, 202))
    for what, credential, expected in checks:
        status = run.http_request(server.port, "POST", WORKLOADS["POST"][0], POST_BODY, credential)[0]
        if status != expected:
            raise RuntimeError(f"{server.label}: {what} answered {status}, not {expected}")


def _scenarios(bench: Bench, workdir: Path) -> None:
    servers = {s.key: s for s in bench.servers}
    nginx, haproxy, one = (servers[k] for k in ("nginx", "haproxy", "smsguard-w1"))
    tokens = bench.tokens
    run.log(f"bench (peer): scenarios, {bench.args.duration} s per point (+{bench.args.warmup} s warm-up)")
    for workload in WORKLOADS:
        for server in (haproxy, one):
            bench.point(f"a one token {workload}", server, workload=workload)
    for key in ("smsguard-r1", "smsguard-r2"):
        bench.point("a one token POST", servers[key])
    for server in (haproxy, one):
        bench.point("b new ES256", server, tokens=tokens["es256"])
    bench.point("c new EdDSA", one, tokens=tokens["eddsa"])
    clients = tokens["clients"]
    cold = bench.point("d clients, cold", one, tokens=clients, warmup=False)
    before = clients.cursor[one.key]
    seconds = bench.show_all(one, clients, cold.rps)
    bench.notes.append(
        f"(d) warm-up pass: the {clients.cursor[one.key] - before:,} tokens the cold run had not sent went once "
        f"each, in {seconds:.0f} s; then the warm run cycled from the file's start"
    )
    bench.point("d clients, warm", one, tokens=clients, warmup=False)
    bench.rss[("after d", one.key)] = one.rss()
    for server in (nginx, haproxy, one):
        bench.point("e c=1000", server, connections=MANY_CONNECTIONS)
    bench.rss[("after", haproxy.key)] = haproxy.rss()
    for name in ("es256", "eddsa"):
        if tokens[name].wrapped(one):
            bench.notes.append(
                f"smsguard 1 worker got to the end of the {name} tokens and started again: raise --peer-tokens"
            )
    for server in (haproxy, one):
        with open(server.logfile, "rb") as lines:
            bench.notes.append(f"{server.label}: {sum(1 for _ in lines):,} log lines after the load")


# ---------------------------------------------------------------------------------------------------
# Report


def token_cache_size() -> str:
    """The verified-token cache's size at this commit (the Authenticator's default), for the report."""
    with contextlib.suppress(Exception):
        from gateway.auth.authenticate import Authenticator

        default = inspect.signature(Authenticator.__init__).parameters["cache_size"].default
        if isinstance(default, int):
            return f"{default:,}"
    return "unknown"


def _ratio(a: Result | None, b: Result | None) -> float | None:
    return a.rps / b.rps if a is not None and b is not None and b.rps else None


def _cpu(result: Result | None) -> str:
    return "—" if result is None else f"{result.cpu_us:.0f}"


def _lat(result: Result | None) -> str:
    return "—" if result is None else f"{result.p50_ms:.2f} / {result.p99_ms:.2f}"


def _goal(value: float | None, goal: float, *, at_most: bool = False) -> str:
    if value is None:
        return "n/a"
    return "PASS" if (value <= goal if at_most else value >= goal) else "MISS"


def render(bench: Bench, *, elapsed: float, busy_before: float, foreign: float) -> str:
    info = run.machine()
    r = bench.results
    haproxy_version = subprocess.run(["haproxy", "-v"], capture_output=True, text=True, check=False).stdout
    haproxy_version = haproxy_version.splitlines()[0].split(" - ")[0] if haproxy_version else "HAProxy ?"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")

    def get(scenario: str, key: str) -> Result | None:
        return r.get((scenario, key))

    rows = []
    lines = [
        ("(a) one token reused, POST", "a one token POST", "haproxy", "a one token POST", GOAL_CACHED),
        ("(a) one token reused, GET", "a one token GET", "haproxy", "a one token GET", GOAL_CACHED),
        ("(b) every request a new ES256 token", "b new ES256", "haproxy", "b new ES256", GOAL_NEW_ES256),
        ("(c) every request a new EdDSA token (smsguard) vs ES256 (HAProxy)", "c new EdDSA", "haproxy",
         "b new ES256", GOAL_NEW_EDDSA),
    ]  # fmt: skip
    for label, ours, peer_key, peer_scenario, goal in lines:
        sg, hp = get(ours, "smsguard-w1"), get(peer_scenario, peer_key)
        value = _ratio(sg, hp)
        rows.append(
            [label, run.fmt_rps(sg), run.fmt_rps(hp), run.fmt_ratio(value), f"≥ {goal:.2f}x", _goal(value, goal),
             _cpu(sg), _cpu(hp), _lat(sg), _lat(hp)]
        )  # fmt: skip
    one = get("a one token POST", "smsguard-w1")
    clients = [
        [label, run.fmt_rps(res), run.fmt_ratio(_ratio(res, one)), f"≥ {GOAL_MANY_CLIENTS:.2f}x",
         _goal(_ratio(res, one), GOAL_MANY_CLIENTS), _cpu(res), _lat(res)]
        for label, res in (
            ("cold: no warm-up, every token new to the gateway", get("d clients, cold", "smsguard-w1")),
            ("warm: after a pass that sent every token once", get("d clients, warm", "smsguard-w1")),
        )
    ]  # fmt: skip
    many = []
    for key, label in (
        ("smsguard-w1", "smsguard 1 worker"),
        ("haproxy", "HAProxy jwt_verify"),
        ("nginx", "nginx direct"),
    ):
        res = get("e c=1000", key)
        ok = None if res is None else (res.p99_ms <= GOAL_P99_MS and res.errors == 0)
        many.append(
            [label, run.fmt_rps(res), _lat(res), str(res.errors if res else "—"), _cpu(res),
             ("PASS" if ok else "MISS") if key == "smsguard-w1" and ok is not None else ""]
        )  # fmt: skip
    idle = bench.rss.get(("idle", "smsguard-w1"), {})
    idle_worker = idle.get("worker0")
    memory = [
        ["smsguard 1 worker", "idle", _mib(idle), f"≤ {GOAL_IDLE_RSS_MIB:.0f} MiB per worker",
         _goal(idle_worker, GOAL_IDLE_RSS_MIB, at_most=True)],
        [
            "smsguard 1 worker",
            f"after (d): {bench.args.peer_clients:,} clients' tokens",
            _mib(bench.rss.get(("after d", "smsguard-w1"), {})),
            "reported",
            "",
        ],
        ["HAProxy jwt_verify", "idle", _mib(bench.rss.get(("idle", "haproxy"), {})), "", ""],
        ["HAProxy jwt_verify", "after all the load", _mib(bench.rss.get(("after", "haproxy"), {})), "", ""],
    ]  # fmt: skip
    scaling = _ratio(get("a one token POST", "smsguard-r2"), get("a one token POST", "smsguard-r1"))
    out = [
        "# smsguard against HAProxy `jwt_verify` (the peer)",
        "",
        f"Produced by `make bench` (`bench/peer.py`, alone: `bench/run.py --peer-only`) on {now}, in "
        f"{elapsed / 60:.1f} minutes. One run on one machine: compare figures of the same table.",
        "",
        "## Machine",
        "",
        f"- CPUs: {info['cpus']}; memory {info['memory']}; {info['kernel']}",
        f"- {info['python']}; {info['packages']}",
        f"- {haproxy_version}; {info['tools']}; smsguard at commit {info['commit']}",
        "- The 2 cores are shared by wrk (1 thread), the nginx upstream (1 worker) and the server under test.",
        f"- Other load: {busy_before:.2f} cores busy just before; during the run other processes used "
        f"{foreign:.2f} cores on average" + (" (**not quiet**)." if foreign > run.FOREIGN_LIMIT else " (quiet)."),
        "",
        "## Set-up",
        "",
        f"- Upstream: nginx (`bench/nginx.conf.template`), as in RESULTS.md. Request: `POST {WORKLOADS['POST'][0]}` "
        f"with a {len(POST_BODY)}-byte JSON body (202), and for (a) also `GET {WORKLOADS['GET'][0]}` (200).",
        f"- wrk `-t1 -c{CONNECTIONS} -d{bench.args.duration}s --latency` after a {bench.args.warmup} s warm-up "
        "(none for (d)), the servers back to back.",
        "- Tokens: ES256 (P-256) and EdDSA (Ed25519) JWTs minted by this script with PyJWT, as an external IdP "
        f"would: `iss`, `aud` ({AUDIENCE}), `sub`, `iat`, `exp` (+{TOKEN_TTL_S // 3600} h), `jti`, "
        f'`scope: "{SCOPE}"`. (b) and (c) cycle through {bench.args.peer_tokens:,} tokens each, more than '
        "smsguard completes in the run, so its verified-token cache never hits; (d) cycles through "
        f"{bench.args.peer_clients:,} tokens. wrk sends them from a file (`cycle-post.lua`), one per request.",
        '- **HAProxy**: `bench/haproxy.cfg.template`, `nbthread 1`; `jwt_verify("ES256", <public key PEM>)` on '
        "every request (no cache in HAProxy 2.6), the token's `alg` must be ES256, `iss` and `aud` exact, `exp` "
        "after now, the `scope` claim must hold `messages:send` for the POST and `messages:read` for the GET "
        "(a regex bounded by spaces), any other route 403; the client's Authorization replaced by the upstream's "
        "Basic credential; `option httplog` to stdout, a file (one line per request, like smsguard).",
        "- **smsguard**: `gateway serve --workers 1` (and 2 for the scaling line), `auth.issuers` trusting the "
        "bench's ES256 and EdDSA public keys (`public_key_file`), `store: memory://`, the shipped "
        "`policies/smsgate.yaml` plus 1,000 generated rules, Basic credentials injected upstream, its JSON "
        "access event per request to a file, Prometheus metrics on, hot reload on: otherwise the configuration "
        f"of RESULTS.md. Verified-token cache: {token_cache_size()} entries (the default at this commit).",
        "- CPU µs/request: user + system CPU time of all of the server's processes (psutil) during the measured "
        "run, divided by the requests wrk completed: steadier than req/s on a shared machine. Ratio = smsguard "
        "req/s ÷ HAProxy req/s.",
        "",
        "## smsguard 1 worker against HAProxy 1 thread (c=32)",
        "",
        run.table(
            [
                "scenario",
                "smsguard req/s",
                "HAProxy req/s",
                "smsguard / HAProxy",
                "goal",
                "",
                "smsguard CPU µs/req",
                "HAProxy CPU µs/req",
                "smsguard p50 / p99 ms",
                "HAProxy p50 / p99 ms",
            ],
            rows,
        ),
        "",
        f"Multi-worker scaling, (a) POST: 2 smsguard workers / 1 worker = {run.fmt_ratio(scaling)} ("
        f"{run.fmt_rps(get('a one token POST', 'smsguard-r2'))} req/s against "
        f"{run.fmt_rps(get('a one token POST', 'smsguard-r1'))}), both with `store: {bench.args.peer_redis}` "
        "(`--workers 2` refuses `memory://`); the 2 cores are shared with wrk and nginx.",
        "",
        f"## (d) {bench.args.peer_clients:,} active clients (smsguard 1 worker, c=32)",
        "",
        "Each client has its own token; wrk cycles through all of them. Ratio = that throughput ÷ smsguard's own "
        f"one-token figure from (a) ({run.fmt_rps(one)} req/s).",
        "",
        run.table(["run", "req/s", "vs one token", "goal", "", "CPU µs/req", "p50 / p99 ms"], clients),
        "",
        f"## (e) {MANY_CONNECTIONS:,} connections on one worker / thread (POST, one token)",
        "",
        run.table(
            ["server", "req/s", "p50 / p99 ms", "errors", "CPU µs/req", f"p99 ≤ {GOAL_P99_MS / 1000:.0f} s, no errors"],
            many,
        ),
        "",
        "## (f) Memory (RSS, MiB)",
        "",
        run.table(["server", "when", "RSS", "goal", ""], memory),
        "",
        "## What HAProxy does not check that smsguard does",
        "",
        "The HAProxy side is the most a `jwt_verify` configuration expresses without Lua; it is strictly less work:",
        "",
        "- **Revocation**: smsguard asks its store on every request, cached token or not (`jti`, the subject, token "
        "lineage and revocation epochs for its own tokens); HAProxy cannot revoke a token before `exp`.",
        "- **The policy**: smsguard matches the canonicalised path against the whole policy (the SMSGate rules + "
        "1,000 generated ones here, `{id}` parameters, default deny) and, where an operator configures them, "
        "per-subject rate limits, quotas and SMS rules read from the JSON body (recipients, destination countries; "
        "none are configured here, as in RESULTS.md); HAProxy has two hand-written route ACLs and never reads "
        "the body.",
        "- **Token rules**: `nbf`, `iat` not in the future, a maximum token lifetime, `aud` as a list, a leeway, "
        "`typ` (access vs refresh), `kid` and key rotation (JWKS with refresh and staleness bounds), several "
        "issuers keyed by `iss`, header size limits, exactly one Authorization header; HAProxy checks one key, "
        "one `iss`, one string `aud`, `exp` without leeway.",
        "- **Requests**: path canonicalisation (dot segments, encoded slashes), stripping of hop-by-hop and "
        "credential headers and query parameters, `X-Forwarded-*` from trusted proxies only, `Location` "
        "rewriting, Prometheus metrics; HAProxy forwards the path as received.",
        "- **Its cache**: smsguard verifies a token once and then serves it from a bounded verified-token cache "
        "until `exp` (re-checking revocation each time); HAProxy verifies the signature on every request.",
        "",
    ]
    if bench.notes:
        out += ["## Notes from the run", "", *(f"- {note}" for note in bench.notes), ""]
    return "\n".join(out)


def _mib(rss: dict[str, float]) -> str:
    if not rss:
        return "—"
    return ", ".join(f"{name} {value:.1f}" for name, value in rss.items())
