"""README.md works as printed: every ```sh block runs here (`test_every_sh_block_is_run` checks none is left out).

The demo walk-through and the token examples against one `gateway demo`, the policy tools' `$ command` lines
with the output the README shows, `gateway serve` as "Running it for real" starts it, the embedding examples
(FastAPI with its session, Starlette). The command text is run as printed; the only change is the demo's port
for 8080 (a fixed port would collide with other test runs). Commands that need secrets get them from the
environment the test gives them, as a reader would export them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from processes import free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def walkthrough() -> str:
    found = [block for block in blocks("sh") if "TOKEN=$(curl" in block]
    assert len(found) == 1
    return found[0]


BIN = str(Path(sys.executable).parent)  # gateway, python3, uvicorn of the installed smsguard
SHIPPED_ENV = ("SMSGUARD_TOKEN_SECRET", "SMSGUARD_OPS_PASSWORD_HASH", "SMSGATE_URL", "SMSGATE_USER", "SMSGATE_PASSWORD")


@pytest.fixture(scope="module")
def secrets_env() -> dict[str, str]:
    """What the README's readers export before the commands that read config.yaml (its "Running it for real")."""
    from gateway.auth.basic import hash_password

    return {
        **os.environ,
        "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
        "SMSGUARD_TOKEN_SECRET": "s" * 48,
        "SMSGUARD_OPS_PASSWORD_HASH": hash_password("not-the-demo-password"),
        "SMSGATE_URL": "https://api.sms-gate.app/3rdparty/v1",
        "SMSGATE_USER": "...",
        "SMSGATE_PASSWORD": "...",
    }


@dataclass
class Demo:
    port: int
    process: subprocess.Popen[bytes]
    output: Path

    def script(self, block: str) -> str:
        """A README block as a bash script against this demo (its only change: the demo's port for 8080)."""
        return "set -e\n" + block.replace("127.0.0.1:8080", f"127.0.0.1:{self.port}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """`gateway demo` as the README starts it (the package's own config), outside the checkout, on a free port."""
    cwd = tmp_path_factory.mktemp("demo")
    port = free_port()
    output = cwd / "demo.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "demo", "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        yield Demo(port, process, output)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)


def wait_ready(base: str, process: subprocess.Popen[Any], path: str = "/readyz", timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(base + path, timeout=1).status_code in (200, 503):
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, "the process exited"
        assert time.monotonic() < deadline, "the process did not start"
        time.sleep(0.2)


def test_demo_walkthrough_runs_verbatim(demo: Demo) -> None:
    """`gateway demo` + the README's curl lines: token issued, message sent (202), 403, 401 and 404 as promised."""
    # print the token at the end so the test can check what step 1 minted
    script = demo.script(walkthrough()) + '\necho "TOKEN_WAS=$TOKEN"\n'
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    token = out.rsplit("TOKEN_WAS=", 1)[1].strip()
    assert (
        jwt.decode(token, options={"verify_signature": False})["scope"] == "messages:list messages:read messages:send"
    )
    statuses = [int(s) for s in re.findall(r"HTTP/1.1 (\d{3}) ", out)]
    assert statuses == [202, 403, 401, 404]
    assert re.search(r"location: /3rdparty/v1/messages/\S+", out, flags=re.IGNORECASE)
    assert 'error="insufficient_scope", scope="devices:list"' in out
    assert '"state":"Pending"' in out or '"state":"Sent"' in out  # step 3 lists the message just sent
    assert "ops:smsguard-demo" in demo.output.read_text()


def test_token_endpoint_examples_run_as_written(demo: Demo) -> None:
    """The Tokens section's curl lines (issue, refresh, revoke) against the demo; $REFRESH_TOKEN and $JTI from
    a pair the test mints first."""
    pair = httpx.post(
        f"http://127.0.0.1:{demo.port}/3rdparty/v1/auth/token",
        auth=("ops", "smsguard-demo"),
        json={"scopes": ["messages:send"], "ttl": 600},
    ).json()
    env = {**os.environ, "REFRESH_TOKEN": pair["refresh_token"], "JTI": pair["id"]}
    script = demo.script(block_with("sh", "auth/token/refresh"))
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    decoder, out = json.JSONDecoder(), result.stdout  # curl -s adds no newline: the answers follow each other
    issued, end = decoder.raw_decode(out)
    refreshed, _ = decoder.raw_decode(out, end)
    assert {"id", "token_type", "access_token", "refresh_token", "expires_at", "accessToken"} <= set(issued)
    assert refreshed["token_type"] == "Bearer"
    assert re.findall(r"HTTP/1.1 (\d{3}) ", result.stdout) == ["204"]


def test_subject_revocation_examples_run_as_written(demo: Demo, secrets_env: dict[str, str]) -> None:
    """`gateway token revoke --config config.yaml --sub ...` (in the checkout) and the API call (the demo): 204."""
    result = subprocess.run(
        ["bash", "-c", demo.script(block_with("sh", "token revoke --config"))],
        capture_output=True,
        text=True,
        timeout=60,
        env=secrets_env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("revoked every token of") == 2
    assert re.findall(r"HTTP/1.1 (\d{3}) ", result.stdout) == ["204"]
    assert "with store memory:// this reaches no running gateway" in result.stderr


def test_setup_commands_are_make_targets() -> None:
    """`make run` and `make test` exist and do what the README says (a dry run: the suite cannot run itself)."""
    block = block_with("sh", "make run")
    targets = [line.split()[1] for line in block.splitlines() if line.startswith("make ")]
    assert targets == ["run", "test"]
    dry = subprocess.run(["make", "-n", *targets], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert ".venv/bin/gateway demo" in dry
    assert ".venv/bin/python -m pytest" in dry


def test_serve_block_runs_as_written(tmp_path: Path) -> None:
    """ "Running it for real": the exports (hash-password prompting twice) and `.venv/bin/gateway serve --config
    config.yaml`, in a folder laid out like the checkout whose config listens on a free port."""
    port = free_port()
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "policies").symlink_to(ROOT / "policies")
    config = (ROOT / "config.yaml").read_text()
    assert "listen: {host: 127.0.0.1, port: 8080}" in config
    (tmp_path / "config.yaml").write_text(config.replace("port: 8080}", f"port: {port}}}"))
    env = {key: value for key, value in os.environ.items() if key not in SHIPPED_ENV}
    script = "set -e\n" + block_with("sh", ".venv/bin/gateway serve")
    session = subprocess.Popen(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # no terminal: getpass reads the two prompts' answers from stdin
    )
    try:
        assert session.stdin is not None
        session.stdin.write(b"serve-password\nserve-password\n")
        session.stdin.close()
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, session, "/healthz")
        login = httpx.post(
            base + "/3rdparty/v1/auth/token", auth=("ops", "serve-password"), json={"scopes": ["messages:send"]}
        )
        assert login.status_code == 201, login.text  # the hash the block exported is the one it serves with
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(session.pid, signal.SIGTERM)
        session.wait(timeout=30)
        assert session.stdout is not None
        output = session.stdout.read().decode()
        session.stdout.close()
    assert "config error" not in output


def prompt_blocks() -> list[str]:
    return [block for block in blocks("sh") if block.startswith("$ ")]


def diff_scenario(directory: Path) -> None:
    """A git checkout whose `main` has an older smsgate.yaml than its working tree: the README's diff example."""
    shipped = (ROOT / "policies" / "smsgate.yaml").read_text()
    vocabulary = "scopes:\n"
    old = shipped.replace(vocabulary, vocabulary + "  health:read: Check the upstream's health\n")
    old = old.replace(
        "path: /health, public: true, description: Liveness of the upstream}", "path: /health, scope: health:read}"
    )
    old = old.replace("  - {method: GET, path: /logs, scope: logs:read}\n", "")
    new = shipped.replace(vocabulary, vocabulary + "  messages:write: Send SMS messages (new name)\n")
    new = new.replace(
        "{method: POST, path: /messages, scope: messages:send}",
        "{method: POST, path: /messages, any_of: [messages:send, messages:write]}",
    )
    new = new.replace('  - {method: DELETE, path: "/devices/{id}", scope: devices:delete}\n', "")
    assert old != shipped != new
    (directory / "policies").mkdir()
    policy = directory / "policies" / "smsgate.yaml"
    policy.write_text(old)
    git = ["git", "-c", "user.name=readme", "-c", "user.email=readme@example.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=directory, check=True)
    subprocess.run([*git, "add", "policies"], cwd=directory, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "old"], cwd=directory, check=True)
    policy.write_text(new)


@pytest.mark.parametrize("block", prompt_blocks(), ids=lambda block: block.split("\n", 1)[0][2:40])
def test_prompt_blocks_print_what_the_readme_shows(block: str, secrets_env: dict[str, str], tmp_path: Path) -> None:
    """Each `$ command` of the policy-editing steps, run in the checkout (the diff example in a checkout where
    `main` holds an older policy), prints exactly the lines the README shows under it."""
    cwd = ROOT
    if "policy diff" in block:
        diff_scenario(tmp_path)
        cwd = tmp_path
    commands = re.split(r"^\$ ", block, flags=re.MULTILINE)[1:]
    for command in commands:
        line, _, shown = command.partition("\n")
        done = subprocess.run(
            ["bash", "-c", line], cwd=cwd, env=secrets_env, capture_output=True, text=True, timeout=60
        )
        assert done.stderr == "", f"{line}: {done.stderr}"
        assert done.stdout.rstrip("\n") == shown.rstrip("\n"), line


def test_every_sh_block_is_run() -> None:
    """Each ```sh block of the README is run by exactly one test of this module."""
    markers = ["make run", "TOKEN=$(curl", ".venv/bin/gateway serve", "auth/token/refresh", "token revoke --config"]
    markers.append("uvicorn app:app")
    for block in blocks("sh"):
        claimed = [marker for marker in markers if marker in block] + (["$ "] if block.startswith("$ ") else [])
        assert len(claimed) == 1, f"{block[:80]!r} is run by {claimed or 'no test'}"


def block_with(language: str, marker: str) -> str:
    found = [block for block in blocks(language) if marker in block]
    assert len(found) == 1, f"expected one {language} block with {marker!r}"
    return found[0]


def test_fastapi_embedding_example_runs_as_written(tmp_path: Path) -> None:
    """README's FastAPI example (policy, guard.yaml, app.py) and its session: curl and websocket answers as shown."""
    (tmp_path / "api-policy.yaml").write_text(block_with("yaml", "websocket: true"))
    (tmp_path / "guard.yaml").write_text(block_with("yaml", "policies: [api-policy.yaml]"))
    (tmp_path / "app.py").write_text(block_with("python", "gateway.guard.fastapi"))
    port = free_port()
    script = "set -e\n" + block_with("sh", "uvicorn app:app").replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    script = script.replace("--port 8000", f"--port {port}")
    bin_dir = str(Path(sys.executable).parent)  # python, uvicorn and the installed smsguard
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    session = subprocess.Popen(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the server goes with it if the script fails
    )
    try:
        out, err = session.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(session.pid, signal.SIGTERM)
    assert session.returncode == 0, err
    statuses = [int(s) for s in re.findall(r"HTTP/1.1 (\d{3}) ", out)]
    assert statuses == [202, 200, 401, 200]
    assert '{"id":"m-1","state":"Pending","sender":"billing-app"}' in out
    assert '{"status":"ok","caller":"billing-app"}' in out
    assert 'www-authenticate: Bearer realm="smsguard"' in out
    assert "[{'smsguard': ['messages:send']}]" in out
    assert '401 {"message":"authentication required"}' in out
    assert '{"subscriber":"billing-app","event":"message.sent","id":"m-1"}' in out


def test_starlette_snippet_protects_a_starlette_app(tmp_path: Path) -> None:
    """The README's Starlette example, with a guard.yaml, refuses anonymous calls and passes scoped ones."""
    snippet = block_with("python", "Starlette(routes")
    secret = "r" * 40
    (tmp_path / "api-policy.yaml").write_text(
        "mount: /api\nscopes: {messages:send: Send}\n"
        "rules:\n  - {method: POST, path: /messages, scope: messages:send}\n"
    )
    (tmp_path / "guard.yaml").write_text(
        "policies: [api-policy.yaml]\nauth:\n  issuers:\n"
        f"    - {{name: corp, issuer: 'https://idp.example.com/', audience: sms-api, algorithms: [HS256], "
        f"secret: {secret}}}\n"
    )
    namespace: dict[str, object] = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(snippet, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    now = int(time.time())
    token = jwt.encode(
        {
            "iss": "https://idp.example.com/",
            "aud": "sms-api",
            "sub": "app",
            "iat": now,
            "exp": now + 60,
            "scope": "messages:send",
        },
        secret,
        algorithm="HS256",
    )
    import asyncio

    async def calls() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=namespace["app"])  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            anonymous = await client.post("/api/messages")
            allowed = await client.post("/api/messages", headers={"authorization": f"Bearer {token}"})
        return anonymous, allowed

    anonymous, allowed = asyncio.run(calls())
    assert anonymous.status_code == 401
    assert allowed.status_code == 200
    assert allowed.json() == {"sender": "app", "scopes": ["messages:send"]}


def test_tracing_block_is_a_valid_config_section(tmp_path: Path) -> None:
    """README's `tracing:` example loads as written, each key where README says it goes."""
    from gatewayconfig import GatewayConfig

    from gateway.config.settings import load_settings

    block = block_with("yaml", "tracing:")
    config = GatewayConfig(tmp_path, "http://127.0.0.1:9/3rdparty/v1", extra=block)
    tracing = load_settings(config.write(), env=config.env).tracing
    assert tracing.enabled
    assert (tracing.exporter, tracing.endpoint, tracing.service_name, tracing.sample_ratio) == (
        "otlp",
        "http://collector:4318/v1/traces",
        "smsguard",
        0.1,
    )
