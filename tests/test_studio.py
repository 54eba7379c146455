"""gateway.studio: the policy studio's API, its security, and its agreement with the CLI tools.

The browser drives the same API in tests/test_studio_browser.py; here every bad input is sent directly.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from gateway.config.settings import load_settings
from gateway.policytools import tools
from gateway.policytools.cli import main
from gateway.studio.app import MAX_BODY_BYTES, TOKEN_HEADER, create_studio_app
from gateway.studio.workspace import MAX_TEXT_CHARS, Workspace, version_of, write_atomically

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s" * 43
ISSUER_SECRET = "i" * 40
LOGS_RULE = "{method: GET, path: /logs, scope: logs:read}"
CONFIG = """\
policies: [policies/smsgate.yaml]
auth:
  issuers:
    - {name: corp, issuer: "https://idp.example.com/", audience: sms-api, algorithms: [HS256],
       secret: "${STUDIO_ISSUER_SECRET}"}
tokens: {enabled: false}
upstreams:
  smsgate:
    url: https://api.sms-gate.app/3rdparty/v1
    credentials: {type: basic, username: test-user, password: test-password}
"""


class Studio:
    """A studio on copies of the shipped policy and its tests, with a client that carries the secret."""

    def __init__(self, directory: Path, *, config: bool) -> None:
        self.directory = directory
        (directory / "policies" / "tests").mkdir(parents=True)
        self.policy = directory / "policies" / "smsgate.yaml"
        shutil.copy(ROOT / "policies" / "smsgate.yaml", self.policy)
        shutil.copy(ROOT / "policies" / "tests" / "smsgate.yaml", directory / "policies" / "tests" / "smsgate.yaml")
        env = {"STUDIO_ISSUER_SECRET": ISSUER_SECRET}
        config_path = None
        settings = None
        if config:
            config_path = str(directory / "config.yaml")
            Path(config_path).write_text(CONFIG)
            settings = load_settings(config_path, env)
        self.workspace = Workspace([str(self.policy)], config=config_path, settings=settings, env=env)
        transport = httpx.ASGITransport(app=create_studio_app(self.workspace, SECRET))
        self.client = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8765")
        self.headers = {TOKEN_HEADER: SECRET}

    @property
    def text(self) -> str:
        return self.policy.read_text()

    async def post(self, path: str, body: object, **headers: str) -> Any:
        return await self.client.post(path, json=body, headers={**self.headers, **headers})

    def edited(self, old: str, new: str) -> dict[str, str]:
        assert old in self.text
        return {"0": self.text.replace(old, new)}

    def line_of(self, fragment: str) -> int:
        return next(n for n, line in enumerate(self.text.splitlines(), 1) if fragment in line)


@pytest.fixture
async def studio(tmp_path: Path) -> AsyncIterator[Studio]:
    made = Studio(tmp_path, config=False)
    async with made.client:
        yield made


@pytest.fixture
async def configured(tmp_path: Path) -> AsyncIterator[Studio]:
    made = Studio(tmp_path, config=True)
    async with made.client:
        yield made


class TestSecurity:
    @pytest.mark.parametrize(
        ("method", "path"),
        [("GET", "/"), ("GET", "/api/files"), ("POST", "/api/validate"), ("POST", "/api/save"), ("GET", "/nope")],
    )
    async def test_nothing_answers_without_the_secret(self, studio: Studio, method: str, path: str) -> None:
        """No page, API or even a 404 without the secret: 401 with a JSON message."""
        response = await studio.client.request(method, path, json={})
        assert response.status_code == 401
        assert "secret" in response.json()["message"]

    @pytest.mark.parametrize(
        "headers",
        [{TOKEN_HEADER: "s" * 42}, {TOKEN_HEADER: SECRET + "x"}, {TOKEN_HEADER: ""}, {"authorization": SECRET}],
    )
    async def test_a_wrong_secret_is_401(self, studio: Studio, headers: dict[str, str]) -> None:
        assert (await studio.client.get("/api/files", headers=headers)).status_code == 401

    async def test_the_secret_opens_the_page_by_url_and_the_api_by_header_only(self, studio: Studio) -> None:
        """The printed URL opens the page; the API ignores a query secret (a header cannot be forged cross-site)."""
        assert (await studio.client.get(f"/?token={SECRET}")).status_code == 200
        assert (await studio.client.get(f"/api/files?token={SECRET}")).status_code == 401
        assert (await studio.client.get("/api/files", headers=studio.headers)).status_code == 200

    async def test_no_cookie_is_ever_set(self, studio: Studio) -> None:
        assert "set-cookie" not in (await studio.client.get(f"/?token={SECRET}")).headers
        assert "set-cookie" not in (await studio.client.get("/api/files", headers=studio.headers)).headers

    @pytest.mark.parametrize(
        "headers",
        [
            {"origin": "http://evil.example"},
            {"origin": "http://127.0.0.1:9999"},
            {"origin": "null"},
            {"sec-fetch-site": "cross-site"},
            {"sec-fetch-site": "same-site"},
            {"origin": "http://[::1"},
        ],
    )
    async def test_cross_site_requests_are_refused_even_with_the_secret(
        self, studio: Studio, headers: dict[str, str]
    ) -> None:
        """A request from another origin is 403, secret or not."""
        response = await studio.post("/api/validate", {"texts": {}}, **headers)
        assert response.status_code == 403
        assert response.json()["message"] == "cross-site request refused"

    async def test_a_link_from_another_site_opens_the_page_but_reaches_no_api(self, studio: Studio) -> None:
        """A navigation to the printed URL may come from anywhere (the secret is what counts); a fetch may not."""
        navigation = {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"}
        assert (await studio.client.get(f"/?token={SECRET}", headers=navigation)).status_code == 200
        assert (await studio.client.get("/", headers=navigation)).status_code == 401
        api = {**studio.headers, **navigation}
        assert (await studio.client.get("/api/files", headers=api)).status_code == 403

    async def test_same_origin_requests_pass(self, studio: Studio) -> None:
        headers = {"origin": "http://127.0.0.1:8765", "sec-fetch-site": "same-origin"}
        assert (await studio.post("/api/validate", {"texts": {}}, **headers)).status_code == 200

    @pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "127.0.0.1.evil.example", "[::1"])
    async def test_a_non_loopback_host_is_refused(self, studio: Studio, host: str) -> None:
        """DNS rebinding: a page on another name that resolves to 127.0.0.1 is refused (403)."""
        assert (await studio.client.get("/api/files", headers={**studio.headers, "host": host})).status_code == 403

    async def test_strict_csp_allows_exactly_the_inline_script_and_style(self, studio: Studio) -> None:
        """default-src 'none'; the inline script and style by hash; no unsafe-inline, no outside origin."""
        response = await studio.client.get(f"/?token={SECRET}")
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "unsafe" not in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        html = response.text
        for tag, directive in (("script", "script-src"), ("style", "style-src")):
            (inline,) = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
            digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
            assert f"{directive} 'sha256-{digest}'" in csp

    async def test_the_page_loads_nothing_from_outside(self, studio: Studio) -> None:
        """No src= or href= but the empty data: icon: everything the page needs is inlined from package data."""
        html = (await studio.client.get(f"/?token={SECRET}")).text
        assert re.findall(r"\b(?:src|href)\s*=\s*\"([^\"]*)\"", html) == ["data:,"]
        assert "http://" not in html
        assert "https://" not in html

    async def test_errors_also_carry_the_security_headers(self, studio: Studio) -> None:
        assert "content-security-policy" in (await studio.client.get("/")).headers


class TestBadInput:
    @pytest.mark.parametrize(
        "file",
        ["../../etc/passwd", "/etc/passwd", "1", "-1", "0/../0", "policies/smsgate.yaml", None, 0, ["0"]],
    )
    async def test_only_the_files_given_can_be_written(self, studio: Studio, file: object) -> None:
        """A save naming anything but a file id of the studio is 404 (or 400), and writes nothing."""
        before = studio.text
        response = await studio.post("/api/save", {"file": file, "text": "x: 1\n", "base": version_of(before.encode())})
        assert response.status_code == 404
        assert studio.text == before

    @pytest.mark.parametrize("key", ["../../etc/passwd", "/etc/hostname", "1"])
    async def test_only_the_files_given_can_be_read(self, studio: Studio, key: str) -> None:
        response = await studio.post("/api/validate", {"texts": {key: "x"}})
        assert response.status_code == 404
        assert "only the files the studio was started with" in response.json()["message"]

    async def test_a_huge_paste_is_413_and_the_studio_goes_on(self, studio: Studio) -> None:
        assert (await studio.post("/api/validate", {"texts": {"0": "a" * (MAX_TEXT_CHARS + 1)}})).status_code == 413
        body = json.dumps({"texts": {"0": "a" * (MAX_BODY_BYTES + 1)}})
        response = await studio.client.post(
            "/api/validate", content=body, headers={**studio.headers, "content-type": "application/json"}
        )
        assert response.status_code == 413
        assert (await studio.post("/api/validate", {"texts": {}})).status_code == 200

    async def test_a_large_valid_policy_validates(self, studio: Studio) -> None:
        """A paste near the limit that is a real policy is validated like any other."""
        rules = "".join(f"  - {{method: GET, path: /r{i}, scope: logs:read}}\n" for i in range(2000))
        text = studio.text.replace("\nrules:\n", "\nrules:\n" + rules, 1)  # the rules list, wherever it sits
        assert len(text) < MAX_TEXT_CHARS
        assert text.count("path: /r1999") == 1
        response = await studio.post("/api/validate", {"texts": {"0": text}})
        assert response.status_code == 200
        assert response.json()["errors"] == 0

    @pytest.mark.parametrize(
        ("body", "content_type", "status"),
        [
            (b"{not json", "application/json", 400),
            (b"[1, 2]", "application/json", 400),
            (b'{"texts": [1]}', "application/json", 400),
            (b'{"texts": {"0": 12}}', "application/json", 400),
            (b'{"texts": {"0": "\\ud800"}}', "application/json", 400),
            (b"[" * 100_000, "application/json", 400),
            (b'{"texts": {}}', "text/plain", 415),
            (b'{"texts": {}}', "application/x-www-form-urlencoded", 415),
        ],
    )
    async def test_malformed_requests_are_client_errors(
        self, studio: Studio, body: bytes, content_type: str, status: int
    ) -> None:
        response = await studio.client.post(
            "/api/validate", content=body, headers={**studio.headers, "content-type": content_type}
        )
        assert response.status_code == status
        assert "message" in response.json()

    @pytest.mark.parametrize(
        "text",
        [
            "rules: [",
            "",
            "\x00\x01",
            "rules: " + "[" * 5000 + "]" * 5000,
            "a: &a [*a]\nrules: []\n",
            "- just\n- a list\n",
            "rules:\n  - {method: GET, path: /x, scope: " + "x" * 50_000 + "}\n",
            "\ufeffrules: 3\n",
        ],
    )
    async def test_broken_text_is_a_finding_never_an_error_page(self, studio: Studio, text: str) -> None:
        """Whatever is typed, validate answers 200 with findings; simulate and review answer 422 with the error."""
        response = await studio.post("/api/validate", {"texts": {"0": text}})
        assert response.status_code == 200
        found = response.json()
        assert found["errors"] >= 1
        assert found["matrix"] is None
        assert found["diagnostics"][0]["file"] == "0"
        for path, extra in (("/api/simulate", {"method": "GET", "path": "/"}), ("/api/review", {})):
            refused = await studio.post(path, {"texts": {"0": text}, **extra})
            assert refused.status_code == 422
            assert "does not load" in refused.json()["message"]

    @pytest.mark.parametrize(
        "extra",
        [
            {"method": 1, "path": "/"},
            {"method": "GET"},
            {"method": "GET", "path": "/", "scopes": "messages:send"},
            {"method": "GET", "path": "/", "scopes": [1]},
            {"method": "GET", "path": "/" * 10_000},
        ],
    )
    async def test_bad_simulations_are_refused(self, studio: Studio, extra: dict[str, object]) -> None:
        assert (await studio.post("/api/simulate", {"texts": {}, **extra})).status_code in (400, 413)


class TestValidate:
    async def test_an_error_is_reported_at_its_line_with_the_hint(self, studio: Studio) -> None:
        texts = studio.edited(LOGS_RULE, LOGS_RULE.replace("logs:read", "logs:raed"))
        found = (await studio.post("/api/validate", {"texts": texts})).json()
        (error,) = [d for d in found["diagnostics"] if d["severity"] == "error"]
        assert error["file"] == "0"
        assert error["line"] == studio.line_of(LOGS_RULE)
        assert error["message"] == "scope 'logs:raed' is not in the vocabulary"
        assert "did you mean 'logs:read'?" in error["hint"]
        assert error["name"] == str(studio.policy)  # the real file, never the temporary copy
        assert "smsguard-studio-" not in found["text"]

    async def test_invalid_yaml_is_reported_at_its_line(self, studio: Studio) -> None:
        lines = studio.text.splitlines(keepends=True)
        lines[9] = "mount: [unclosed\n"
        found = (await studio.post("/api/validate", {"texts": {"0": "".join(lines)}})).json()
        assert found["diagnostics"][0]["message"].startswith("invalid YAML")
        assert found["diagnostics"][0]["line"] >= 10

    async def test_the_text_is_what_the_cli_prints(self, studio: Studio, capsys: pytest.CaptureFixture[str]) -> None:
        """Unedited, the studio's validation text is `gateway policy validate FILE`'s output, byte for byte."""
        studio.policy.write_text(
            studio.text.replace(LOGS_RULE, LOGS_RULE + "\n  - {method: POST, path: /p, public: true}")
        )
        found = (await studio.post("/api/validate", {"texts": {}})).json()
        assert main(["policy", "validate", str(studio.policy)]) == 0
        assert found["text"] == capsys.readouterr().out
        assert found["warnings"] == 1

    async def test_the_matrix_is_the_clis(self, studio: Studio) -> None:
        """The matrix routes and cells are `policy matrix --format json`'s, with the file id and line added."""
        found = (await studio.post("/api/validate", {"texts": {}})).json()["matrix"]
        policies, _ = tools.load_matcher([studio.policy])
        cli = json.loads(tools.matrix_json(tools.build_matrix(policies)))
        assert found["scopes"] == cli["scopes"]
        assert [(r["method"], r["path"], r["cells"]) for r in found["routes"]] == [
            (r["method"], r["path"], r["cells"]) for r in cli["routes"]
        ]
        logs = next(r for r in found["routes"] if r["path"] == "/3rdparty/v1/logs")
        assert (logs["file"], logs["line"], logs["upstream"]) == ("0", studio.line_of(LOGS_RULE), "smsgate")

    async def test_config_findings_are_reported(self, configured: Studio) -> None:
        """With --config, a policy naming an upstream the config lacks is an error, as in `validate --config`."""
        texts = configured.edited("upstream: smsgate", "upstream: nowhere")
        found = (await configured.post("/api/validate", {"texts": texts})).json()
        assert any("upstream 'nowhere' is not configured" in d["message"] for d in found["diagnostics"])


class TestSimulate:
    @pytest.mark.parametrize(
        ("method", "path", "scopes", "outcome"),
        [
            ("POST", "/3rdparty/v1/messages", ["messages:send"], "allow"),
            ("POST", "/3rdparty/v1/messages", ["messages:read"], "403 insufficient_scope"),
            ("POST", "/3rdparty/v1/messages", None, "401 missing_token"),
            ("GET", "/3rdparty/v1/health", None, "allow"),
            ("GET", "/3rdparty/v1/mesages", ["all:any"], "404 no_route"),
            ("GET", "/3rdparty/v1/../etc", ["all:any"], "400 bad_path"),
        ],
    )
    async def test_decisions_match_policy_check(
        self,
        studio: Studio,
        capsys: pytest.CaptureFixture[str],
        method: str,
        path: str,
        scopes: list[str] | None,
        outcome: str,
    ) -> None:
        """The outcome is `gateway policy check`'s, and the text starts with exactly what check prints."""
        found = (
            await studio.post("/api/simulate", {"texts": {}, "method": method, "path": path, "scopes": scopes})
        ).json()
        assert found["outcome"] == outcome
        assert found["allowed"] is (outcome == "allow")
        who = [arg for scope in scopes or () for arg in ("--scope", scope)]
        await asyncio.to_thread(main, ["policy", "check", method, path, "--policy", str(studio.policy), *who])
        assert found["text"].startswith(capsys.readouterr().out)

    async def test_a_miss_names_the_nearest_rules(self, studio: Studio) -> None:
        found = (
            await studio.post("/api/simulate", {"method": "GET", "path": "/3rdparty/v1/mesages", "scopes": []})
        ).json()
        assert found["rule"] is None
        assert any(r["label"].startswith("GET /3rdparty/v1/messages ") for r in found["nearest"])
        assert "nearest rules:" in found["text"]

    async def test_the_edited_text_is_simulated(self, studio: Studio) -> None:
        """An edit granting /logs to messages:list is simulated before it is saved."""
        texts = studio.edited(LOGS_RULE, LOGS_RULE.replace("logs:read", "messages:list"))
        body = {"method": "GET", "path": "/3rdparty/v1/logs", "scopes": ["messages:list"]}
        assert (await studio.post("/api/simulate", {"texts": {}, **body})).json()["allowed"] is False
        found = (await studio.post("/api/simulate", {"texts": texts, **body})).json()
        assert found["allowed"] is True
        assert found["rule"] == {
            "label": f"GET /3rdparty/v1/logs ({studio.policy}:{found['rule']['line']})",
            "file": "0",
            "line": studio.line_of(LOGS_RULE),
        }

    async def test_with_a_config_the_exact_upstream_url(self, configured: Studio) -> None:
        body = {"method": "GET", "path": "/3rdparty/v1/messages/m%2D1?limit=1", "scopes": ["messages:read"]}
        found = (await configured.post("/api/simulate", body)).json()
        assert found["allowed"] is True
        assert found["upstream"] == "https://api.sms-gate.app/3rdparty/v1/messages/m-1?limit=1"
        assert found["canonical"] == "/3rdparty/v1/messages/m-1"

    @pytest.mark.parametrize(
        ("scope", "exp", "outcome"),
        [
            ("messages:send", 300, "allow"),
            ("messages:read", 300, "403 insufficient_scope"),
            ("messages:send", -600, "401 invalid_token:expired"),
        ],
    )
    async def test_a_pasted_token_is_verified_with_the_configs_keys(
        self, configured: Studio, scope: str, exp: int, outcome: str
    ) -> None:
        now = int(time.time())
        claims = {
            "iss": "https://idp.example.com/",
            "aud": "sms-api",
            "sub": "alice",
            "iat": now - 700,
            "exp": now + exp,
            "scope": scope,
        }
        token = jwt.encode(claims, ISSUER_SECRET, algorithm="HS256")
        found = (
            await configured.post("/api/simulate", {"method": "POST", "path": "/3rdparty/v1/messages", "token": token})
        ).json()
        assert found["outcome"] == outcome
        if outcome == "allow":
            assert found["principal"] == {"subject": "alice", "scopes": ["messages:send"]}

    async def test_a_token_needs_a_config(self, studio: Studio) -> None:
        response = await studio.post("/api/simulate", {"method": "GET", "path": "/", "token": "x.y.z"})
        assert response.status_code == 400
        assert "--config" in response.json()["message"]


class TestReview:
    async def test_the_access_diff_and_the_policy_tests(self, studio: Studio) -> None:
        """Granting /logs to messages:list instead of logs:read: one change, and the two allow cases fail."""
        texts = studio.edited(LOGS_RULE, LOGS_RULE.replace("logs:read", "messages:list"))
        found = (await studio.post("/api/review", {"texts": texts})).json()
        assert found["changed"] == ["0"]
        (change,) = found["changes"]
        assert (change["method"], change["path"], change["change"]) == ("GET", "/3rdparty/v1/logs", "changed")
        assert found["diff_text"].startswith("~ GET /3rdparty/v1/logs  logs:read → messages:list")
        (suite,) = found["tests"]
        assert suite["passed"] > 40
        assert suite["failed"] == 2
        assert "GET /3rdparty/v1/logs: expected allow, got 403 insufficient_scope" in suite["failures"][0]
        assert found["tests_failed"] == 2

    async def test_unchanged_files_pass_their_tests(self, studio: Studio) -> None:
        found = (await studio.post("/api/review", {"texts": {}})).json()
        assert found["changes"] == []
        assert found["tests_failed"] == 0
        assert found["tests_text"].endswith("0 failed\n")


class TestSave:
    async def base(self, studio: Studio) -> str:
        response = await studio.client.get("/api/files", headers=studio.headers)
        return str(response.json()["files"][0]["version"])

    async def test_a_valid_version_is_written_atomically_and_the_previous_kept(self, studio: Studio) -> None:
        before, base = studio.text, await self.base(studio)
        inode = studio.policy.stat().st_ino
        text = before.replace(LOGS_RULE, LOGS_RULE.replace("logs:read", "messages:list"))
        response = await studio.post("/api/save", {"file": "0", "text": text, "base": base})
        assert response.status_code == 200
        assert studio.text == text
        assert studio.policy.stat().st_ino != inode  # replaced by rename, never rewritten in place
        assert Path(str(studio.policy) + ".prev").read_text() == before
        assert response.json()["version"] == version_of(text.encode())
        assert sorted(p.name for p in studio.policy.parent.iterdir()) == ["smsgate.yaml", "smsgate.yaml.prev", "tests"]
        # the old base is now stale: saving from it again is a conflict
        assert (await studio.post("/api/save", {"file": "0", "text": before, "base": base})).status_code == 409

    async def test_a_conflicting_edit_on_disk_is_never_overwritten(self, studio: Studio) -> None:
        base = await self.base(studio)
        theirs = studio.text + "# edited by someone else\n"
        studio.policy.write_text(theirs)
        response = await studio.post(
            "/api/save", {"file": "0", "text": studio.text.replace("#", "# mine"), "base": base}
        )
        assert response.status_code == 409
        conflict = response.json()
        assert "changed on disk since it was opened" in conflict["message"]
        assert conflict["disk_text"] == theirs
        assert conflict["disk_version"] == version_of(theirs.encode())
        assert studio.text == theirs
        assert not Path(str(studio.policy) + ".prev").exists()

    @pytest.mark.parametrize(
        "text", ["rules: [", "upstream: smsgate\nrules:\n  - {method: GET, path: /x, scope: no:such}\n"]
    )
    async def test_an_invalid_version_is_never_written(self, studio: Studio, text: str) -> None:
        before = studio.text
        response = await studio.post("/api/save", {"file": "0", "text": text, "base": await self.base(studio)})
        assert response.status_code == 422
        assert response.json()["validation"]["errors"] >= 1
        assert studio.text == before

    def test_a_symlinked_policy_keeps_its_link(self, tmp_path: Path) -> None:
        real = tmp_path / "real.yaml"
        real.write_text("old\n")
        link = tmp_path / "link.yaml"
        os.symlink(real, link)
        write_atomically(link, b"new\n", previous=b"old\n")
        assert link.is_symlink()
        assert real.read_text() == "new\n"
        assert (tmp_path / "real.yaml.prev").read_text() == "old\n"


def test_studio_is_a_policy_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    """`gateway policy studio` needs files or a config (exit 2), and lists its options in --help."""
    assert main(["policy", "studio"]) == 2
    assert "name the policy files to edit" in capsys.readouterr().err
    assert main(["policy", "studio", "--help"]) == 0
    assert "--tests" in capsys.readouterr().out


def test_the_page_ships_as_package_data() -> None:
    """Every file of gateway/studio/static/ is matched by pyproject's package-data, so a wheel carries the page."""
    import fnmatch
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gateway"]
    static = sorted((ROOT / "gateway" / "studio" / "static").iterdir())
    assert [p.name for p in static] == ["index.html", "studio.css", "studio.js"]
    for path in static:
        assert any(fnmatch.fnmatch(str(path.relative_to(ROOT / "gateway")), glob) for glob in globs), path
