"""cli.py: `gateway serve` as a real process (drain on SIGTERM, workers, config errors), hash-password."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher
from fakes import RecordingUpstream, Reply
from gatewayconfig import GatewayConfig
from processes import free_port, gateway_process
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.cli import main, uvicorn_options
from gateway.config.settings import parse_settings


async def test_sigterm_finishes_in_flight_requests(tmp_path: Path) -> None:
    """SIGTERM stops accepting but lets a slow in-flight request finish with its real answer."""
    async with RecordingUpstream(Reply(200, body=b'{"done":true}', delay_s=1.5)) as upstream:
        cfg = GatewayConfig(tmp_path, upstream.url + "/3rdparty/v1")
        with gateway_process(cfg.write(), cfg.env) as gateway:
            url = gateway.url
            async with httpx.AsyncClient(timeout=10) as client:
                in_flight = asyncio.create_task(client.get(url + "/3rdparty/v1/health"))
                await upstream.wait_for(1)
                os.kill(gateway.pid, signal.SIGTERM)  # mid-request
                response = await in_flight
                assert response.status_code == 200
                assert response.json() == {"done": True}
                await asyncio.sleep(0.3)
                with pytest.raises(httpx.TransportError):
                    await client.get(url + "/healthz")


def test_serve_with_two_workers_answers(tmp_path: Path) -> None:
    """--workers 2 starts two processes that both load the config (SMSGUARD_CONFIG factory); they share a store."""
    cfg = GatewayConfig(tmp_path, "http://127.0.0.1:9/3rdparty/v1", store="redis://127.0.0.1:6379/0")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(cfg.write()), "--port", str(port), "--workers", "2"],
        env={**os.environ, **cfg.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        import psutil

        assert len(psutil.Process(process.pid).children()) >= 2
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


def test_bad_config_exits_2_naming_file_line_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config mistake is one clear line on stderr with file:line:column and key, exit code 2."""
    path = tmp_path / "config.yaml"
    path.write_text("listen:\n  port: 8080\n  hots: x\n")
    assert main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3:3: listen.hots: unknown key" in err


def test_missing_variable_names_it_without_a_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unset ${VAR} stops start-up and names the variable."""
    path = tmp_path / "config.yaml"
    path.write_text("upstreams:\n  x:\n    url: ${SMSGUARD_TEST_UNSET_URL}\n")
    os.environ.pop("SMSGUARD_TEST_UNSET_URL", None)
    assert main(["serve", "--config", str(path)]) == 2
    assert "SMSGUARD_TEST_UNSET_URL is not set" in capsys.readouterr().err


def test_hash_password_prints_a_verifiable_argon2id_hash(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gateway hash-password --stdin` prints an argon2id hash of the password and nothing else."""
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse\n"))
    assert main(["hash-password", "--stdin"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("$argon2id$")
    assert PasswordHasher().verify(printed, "correct horse")
    assert "correct horse" not in printed


def test_server_options_are_the_hardened_ones() -> None:
    """httptools (with head limits) + uvloop, no proxy-header trust, and a drain longer than any upstream timeout."""
    settings = parse_settings("upstreams:\n  a: {url: 'https://x', read_timeout_s: 40, connect_timeout_s: 5}\n", env={})
    options = uvicorn_options(settings)
    assert issubclass(options["http"].func, HttpToolsProtocol)
    assert options["http"].keywords == {
        "head_timeout_s": 10.0,
        "max_head_bytes": 65536,
        "body_timeout_s": 15.0,
        "client_write_timeout_s": 15.0,
    }
    assert options["loop"] == "uvloop"
    assert options["proxy_headers"] is False
    assert options["timeout_graceful_shutdown"] > 45


def test_module_entry_point_shows_help() -> None:
    """`python -m gateway --help` lists the commands."""
    out = subprocess.run([sys.executable, "-m", "gateway", "--help"], capture_output=True, text=True, check=True)
    for command in ("serve", "demo", "token", "hash-password", "policy"):
        assert command in out.stdout


def test_serve_factory_freezes_start_up_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker factory leaves the config and compiled policy in the GC's permanent generation."""
    import gc

    from gateway.cli import CONFIG_ENV, app_from_environment

    cfg = GatewayConfig(tmp_path, "http://127.0.0.1:9/3rdparty/v1")
    monkeypatch.setenv(CONFIG_ENV, str(cfg.write()))
    for key, value in cfg.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("gateway.observe.logs.configure_stdlib_logging", lambda *args, **kwargs: None)
    gc.unfreeze()
    try:
        gateway = app_from_environment()
        assert gc.get_freeze_count() > 0
        assert gateway.runtime.policies
    finally:
        gc.unfreeze()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`gateway --version` prints the installed version."""
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"gateway (smsguard) {version('smsguard')}"


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_help_lists_every_option_with_help_and_default(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`serve --help` and `demo --help`: every option has help text that states its default."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    options = out.split("options:", 1)[1]
    entries = [entry for entry in re.split(r"\n  (?=-)", options) if entry.strip() and "--help" not in entry]
    assert len(entries) >= 3
    for entry in entries:
        assert "(default: " in " ".join(entry.split()), entry


def test_port_in_use_is_the_only_line_and_exits_1(tmp_path: Path) -> None:
    """demo and serve on a port another process holds: one line in words first and alone, exit 1, no banner."""
    cfg = GatewayConfig(tmp_path, "http://127.0.0.1:9/3rdparty/v1")
    config = cfg.write()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        for argv in (["demo", "--port", port], ["serve", "--config", str(config), "--port", port]):
            done = subprocess.run(
                [sys.executable, "-m", "gateway", *argv, "--log-format", "json"],
                env={**os.environ, **cfg.env},
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert done.returncode == 1, done.stderr
            assert done.stdout == ""
            assert done.stderr == (
                f"gateway: cannot listen on 127.0.0.1:{port}: address already in use "
                "(another process holds the port: stop it, or choose another with --port)\n"
            )


def test_init_writes_a_starter_config_and_policies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`gateway init DIR`: config.yaml and the policies, valid, their $schema resolving; never overwrites."""
    target = tmp_path / "new"
    assert main(["init", str(target)]) == 0
    assert "wrote" in capsys.readouterr().out
    written = sorted(str(p.relative_to(target)) for p in target.rglob("*.yaml"))
    assert written == [
        "config.yaml",
        "policies/bsg_v1.yaml",
        "policies/bsg_v2.yaml",
        "policies/smsgate.yaml",
        "policies/smsgatewaycenter.yaml",
        "policies/smsportal.yaml",
    ]
    for path in target.rglob("*.yaml"):
        first = path.read_text().splitlines()[0]
        schema = first.removeprefix("# yaml-language-server: $schema=")
        assert schema.startswith("file:///"), first
        assert Path(schema.removeprefix("file://")).is_file(), first
    assert main(["policy", "validate", "--strict", "--no-secrets", "--config", str(target / "config.yaml")]) == 0
    capsys.readouterr()
    assert main(["init", str(target)]) == 1
    assert "exists already" in capsys.readouterr().err


def test_token_revoke_jti_with_a_memory_store_says_the_store_is_per_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`token revoke JTI` with store memory:// explains that no running gateway is reachable (not "no such token")."""
    cfg = GatewayConfig(tmp_path, "http://127.0.0.1:9/3rdparty/v1")
    path = cfg.write()
    for key, value in cfg.env.items():
        monkeypatch.setenv(key, value)
    assert main(["token", "revoke", "--config", str(path), "some-jti"]) == 1
    err = capsys.readouterr().err
    assert "store: memory://" in err
    assert "DELETE /3rdparty/v1/auth/token/JTI" in err
    assert "no such token" not in err
