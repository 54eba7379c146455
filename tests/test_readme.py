"""README.md: the demo walk-through and the embedding examples (FastAPI with its session, Starlette) work as written."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
from processes import free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def walkthrough() -> str:
    found = [block for block in blocks("sh") if "TOKEN=$(curl" in block]
    assert len(found) == 1
    return found[0]


def test_demo_walkthrough_runs_verbatim(tmp_path: Path) -> None:
    """`gateway demo` + the README's curl lines: token issued, message sent (202), 403, 401 and 404 as promised."""
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--config", str(ROOT / "config.yaml"), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert demo.poll() is None, "the demo exited"
            assert time.monotonic() < deadline, "the demo did not start"
            time.sleep(0.2)
        script = "set -e\n" + walkthrough().replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        # print the token at the end so the test can check what step 1 minted
        result = subprocess.run(
            ["bash", "-c", script + '\necho "TOKEN_WAS=$TOKEN"\n'], capture_output=True, text=True, timeout=60
        )
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=20)
        banner = demo.stdout.read().decode() if demo.stdout else ""
        if demo.stdout:
            demo.stdout.close()
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
    assert "ops:smsguard-demo" in banner


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
