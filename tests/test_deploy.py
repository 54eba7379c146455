"""deploy/: the nginx front, the systemd unit, the gateway config they assume and the Kubernetes probes.

nginx runs `deploy/nginx.conf` itself in front of a real `gateway serve` on loopback, over plain HTTP: the
listen lines and ports are rewritten and the `ssl_*` lines dropped, so the proxying and the X-Forwarded-*
handling are tested, TLS is not. The unit is parsed (its ExecStart by the gateway's own argument parser)
and, where `systemd-analyze` exists, verified; it is never started. Needs `nginx` on PATH (`make bench`
installs it), like the Redis tests need redis-server: never skipped.
"""

from __future__ import annotations

import configparser
import ipaddress
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml
from fakes import RecordingUpstream, Reply
from gatewayconfig import OPS_AUTH, ROOT, GatewayConfig, cheap_hash
from processes import free_port, gateway_process

from gateway.cli import _parser, unshared_state
from gateway.config.loader import load_settings

DEPLOY = ROOT / "deploy"
GATEWAY_ADDRESS = re.compile(r"^\s*server (127\.0\.0\.1):(\d+);", re.MULTILINE)  # the `upstream smsguard` line


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"deploy/nginx.conf should have exactly one {old!r}"
    return text.replace(old, new)


def nginx_snippet(gateway_port: int, port: int, redirect_port: int) -> str:
    """deploy/nginx.conf on loopback over plain HTTP: the gateway's port, the two listen lines, no ssl_*."""
    text = (DEPLOY / "nginx.conf").read_text()
    text = _replace_once(text, "server 127.0.0.1:8080;", f"server 127.0.0.1:{gateway_port};")
    text = _replace_once(text, "listen 443 ssl;", f"listen 127.0.0.1:{port};")
    text = _replace_once(text, "listen 80;", f"listen 127.0.0.1:{redirect_port};")
    lines = text.splitlines(keepends=True)
    assert any(line.lstrip().startswith("ssl_certificate ") for line in lines)
    return "".join(line for line in lines if not line.lstrip().startswith("ssl_"))


@contextmanager
def nginx(directory: Path, snippet: str, ports: tuple[int, ...], timeout_s: float = 10.0) -> Iterator[None]:
    """One nginx process (no master, no daemon) serving `snippet` inside a minimal main config."""
    binary = shutil.which("nginx")
    assert binary, "nginx must be on PATH (`make bench` installs it)"
    (directory / "smsguard.conf").write_text(snippet)
    temp = " ".join(
        f"{kind}_temp_path {directory / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = directory / "nginx.conf"
    main.write_text(
        f"daemon off;\nmaster_process off;\npid {directory / 'nginx.pid'};\nerror_log {directory / 'error.log'} warn;\n"
        f"events {{ worker_connections 64; }}\n"
        f"http {{ access_log off; {temp} include {directory / 'smsguard.conf'}; }}\n"
    )
    log = directory / "error.log"
    process = subprocess.Popen(
        [binary, "-p", str(directory), "-c", str(main), "-e", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + timeout_s
        for port in ports:
            while True:
                assert process.poll() is None, f"nginx exited: {log.read_text() if log.exists() else ''}"
                try:
                    socket.create_connection(("127.0.0.1", port), 0.5).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "nginx did not listen"
                    time.sleep(0.05)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def deploy_trusted_proxies() -> list[str]:
    proxies: list[str] = yaml.safe_load((DEPLOY / "config.yaml").read_text())["proxy"]["trusted_proxies"]
    return proxies


@pytest.mark.parametrize("trusted", [True, False], ids=["nginx-trusted", "nginx-untrusted"])
async def test_nginx_in_front_of_the_gateway(tmp_path: Path, trusted: bool) -> None:
    """Through deploy/nginx.conf: a trusted nginx extends the client's X-Forwarded-For chain; an untrusted
    one's (and so the client's forged) chain is replaced by the gateway's own view of the connection."""
    extra = f"proxy:\n  trusted_proxies: [{', '.join(deploy_trusted_proxies())}]\n" if trusted else ""
    gateway_port, port, redirect_port = free_port(), free_port(), free_port()
    async with RecordingUpstream(Reply(200, body=b"[]")) as upstream:
        cfg = GatewayConfig(tmp_path, upstream.url + "/3rdparty/v1", extra=extra)
        path = cfg.write()
        (tmp_path / "nginx").mkdir()
        with (
            gateway_process(path, cfg.env, port=gateway_port),
            nginx(tmp_path / "nginx", nginx_snippet(gateway_port, port, redirect_port), (port, redirect_port)),
        ):
            async with httpx.AsyncClient() as client:
                forged = {"host": "sms.example.com", "x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "gopher"}
                reply = await client.get(f"http://127.0.0.1:{port}/3rdparty/v1/messages", headers=forged, auth=OPS_AUTH)
                assert reply.status_code == 200, reply.text
                redirect = await client.get(
                    f"http://127.0.0.1:{redirect_port}/3rdparty/v1/messages?x=1", headers={"host": "sms.example.com"}
                )
                assert redirect.status_code == 301
                assert redirect.headers["location"] == "https://sms.example.com/3rdparty/v1/messages?x=1"
    seen = upstream.last
    # client 127.0.0.1 as nginx saw it, then nginx as the gateway saw it; untrusted: the gateway's peer only
    expected = "203.0.113.7, 127.0.0.1, 127.0.0.1" if trusted else "127.0.0.1"
    assert seen.values("x-forwarded-for") == [expected]
    assert seen.values("x-forwarded-proto") == ["http"]  # nginx's $scheme (https behind real TLS), never the client's
    assert seen.values("x-forwarded-host") == ["sms.example.com"]


def test_deploy_config_loads_and_matches_nginx(tmp_path: Path) -> None:
    """deploy/config.yaml loads, shares its store between workers, listens where nginx sends and trusts nginx."""
    shutil.copy(DEPLOY / "config.yaml", tmp_path / "config.yaml")
    (tmp_path / "policies").mkdir()
    shutil.copy(ROOT / "policies" / "smsgate.yaml", tmp_path / "policies" / "smsgate.yaml")
    env = {
        "SMSGUARD_OPS_PASSWORD_HASH": cheap_hash("ops-password"),
        "SMSGUARD_TOKEN_SECRET": "s" * 40,
        "SMSGATE_URL": "https://api.sms-gate.app/3rdparty/v1",
        "SMSGATE_USER": "user",
        "SMSGATE_PASSWORD": "password",
    }
    settings = load_settings(tmp_path / "config.yaml", env=env)
    assert unshared_state(settings, 2) is None  # --workers 2 (the unit) is allowed: the store is shared
    assert settings.store.startswith("redis://")
    found = GATEWAY_ADDRESS.search((DEPLOY / "nginx.conf").read_text())
    assert found
    assert (settings.listen.host, settings.listen.port) == (found[1], int(found[2]))
    nginx_address = ipaddress.ip_address(found[1])  # nginx reaches the gateway from the gateway's own host
    assert any(nginx_address in network for network in settings.proxy.trusted_proxies)


def read_unit(text: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)  # keys repeat (SystemCallFilter)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(text)
    return unit


def test_systemd_unit(tmp_path: Path) -> None:
    """ExecStart parses with the gateway's own CLI; secrets from an EnvironmentFile; hardened; verified if possible."""
    text = (DEPLOY / "smsguard.service").read_text()
    service = read_unit(text)["Service"]
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "gateway"
    args = _parser().parse_args(argv[1:])
    assert (args.command, args.config, args.workers) == ("serve", "/etc/smsguard/config.yaml", 2)
    assert service["EnvironmentFile"] == "/etc/smsguard/env"
    assert service["User"] == "smsguard"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes"}.items():
        assert service[key] == value
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return  # configparser and argparse above are all that can be checked here
    unit = tmp_path / "smsguard.service"
    unit.write_text(text.replace(argv[0], str(Path(sys.executable).parent / "gateway")))
    verified = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=30, check=False)
    complaints = [line for line in (verified.stdout + verified.stderr).splitlines() if unit.name in line]
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert not complaints, verified.stdout + verified.stderr


async def test_k8s_probe_paths_answer(tmp_path: Path) -> None:
    """deploy/k8s-probes.yaml's liveness and readiness paths are the gateway's, and answer 200 unauthenticated."""
    probes = yaml.safe_load((DEPLOY / "k8s-probes.yaml").read_text())
    paths = {kind: probes[kind]["httpGet"]["path"] for kind in ("livenessProbe", "readinessProbe")}
    assert paths == {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    assert {probes[kind]["httpGet"]["port"] for kind in paths} == {probes["ports"][0]["name"]}
    async with RecordingUpstream(Reply(200, body=b"[]")) as upstream:
        cfg = GatewayConfig(tmp_path, upstream.url + "/3rdparty/v1")
        with gateway_process(cfg.write(), cfg.env) as gateway:
            async with httpx.AsyncClient() as client:
                for path in paths.values():
                    assert (await client.get(gateway.url + path)).status_code == 200
