"""policytools + policy_cli: `gateway policy validate|explain|check|test|diff|matrix|schema`.

Golden outputs live in tests/golden/; after an intended change, regenerate them with
`SMSGUARD_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_policytools.py` and review the diff.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from gateway.config.settings import load_settings, parse_settings
from gateway.errors import LoadError
from gateway.guard.authorize import Authorizer
from gateway.guard.middleware import GuardMiddleware
from gateway.policy.loader import load_policy, parse_policy
from gateway.policytools import testing, tools
from gateway.policytools.cli import main

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
SHIPPED = "policies/smsgate.yaml"
CONFIG = "tests/golden/gateway.yaml"
SECRET = "t" * 40
CORP = "https://idp.example.com/"
KEYCLOAK = "https://keycloak.example.com/realms/sms"
DIAGNOSTIC = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<column>\d+): (?P<severity>error|warning): (?P<rest>.+)$")


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the repository root (rule labels are shown relative to it) with the fixture's secret set."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("SMSGUARD_TEST_SECRET", SECRET)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["policy", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if os.environ.get("SMSGUARD_UPDATE_GOLDEN"):
        path.write_text(actual, encoding="utf-8")
    assert actual == path.read_text(encoding="utf-8"), f"{name} differs; see the module docstring to update"


def token(scopes: str | None = None, *, iss: str = CORP, **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"iss": iss, "aud": "sms-api", "sub": "alice", "iat": now, "exp": now + 300}
    if scopes is not None:
        payload["scope"] = scopes
    payload.update(claims)
    return jwt.encode(payload, SECRET, algorithm="HS256")


def line_of(method: str, path: str) -> int:
    """The line of the shipped rule for `method path` (a full path template)."""
    (rule,) = [r for r in load_policy(SHIPPED).rules if method in r.methods and r.full_path == path]
    return rule.line


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


POLICY_HEAD = """\
upstream: smsgate
mount: /api
scopes:
  messages:send: Send
  messages:read: Read
rules:
"""


def policy_file(tmp_path: Path, *rules: str, name: str = "p.yaml", head: str = POLICY_HEAD) -> str:
    """A policy whose rule i (from 0) sits on line i + 7."""
    return write(tmp_path / name, head + "".join(f"  - {rule}\n" for rule in rules))


# ------------------------------------------------------------------------------------------ validate


class TestValidate:
    def test_shipped_policy_is_clean(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The shipped policy validates with no error and no warning, even with --strict."""
        code, out, _ = run(capsys, "validate", "--strict", SHIPPED)
        assert code == 0
        assert out == "ok: 0 errors, 0 warnings (1 file, 19 rules, 17 scopes)\n"

    def test_config_accepts_token_rules_that_state_what_the_gateway_enforces(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The shipped token rules document the gateway's own token endpoints exactly: no warning, --strict ok."""
        code, out, _ = run(capsys, "validate", "--strict", "--config", CONFIG)
        assert code == 0
        assert out.splitlines()[-1] == "ok: 0 errors, 0 warnings (2 files, 19 rules, 17 scopes)"

    def test_config_flags_token_rules_that_differ_from_the_gateway(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        """A rule under the token endpoints claiming other scopes is shadowed: the gateway answers it itself."""
        shipped = "{method: POST, path: /auth/token, scope: tokens:manage}"
        policy = (ROOT / SHIPPED).read_text()
        assert shipped in policy
        (tmp_path / "smsgate.yaml").write_text(policy.replace(shipped, shipped.replace("tokens:manage", "logs:read")))
        config = (ROOT / CONFIG).read_text().replace("../../policies/smsgate.yaml", str(tmp_path / "smsgate.yaml"))
        (tmp_path / "gateway.yaml").write_text(config)
        code, out, _ = run(capsys, "validate", "--config", str(tmp_path / "gateway.yaml"))
        assert code == 0
        warnings = [line for line in out.splitlines() if ": warning: " in line]
        assert len(warnings) == 1
        assert "the gateway answers /3rdparty/v1/auth/token[/...] itself (token endpoints)" in warnings[0]
        assert run(capsys, "validate", "--strict", "--config", str(tmp_path / "gateway.yaml"))[0] == 1

    @pytest.mark.parametrize(
        ("rules", "expected"),
        [
            (["{method: GET, path: /x, scope: messages:read, bogus: 1}"], "7:51: error: rules[0].bogus: unknown key"),
            (
                ["{method: GET, path: /x, scope: mesages:read}"],
                "7:36: error: rules[0].scope: scope 'mesages:read' is not in the vocabulary "
                "(hint: add it to `scopes:` or fix the spelling; did you mean 'messages:read'?)",
            ),
            (
                [
                    "{method: GET, path: '/a/{x}/c', scope: messages:read}",
                    "{method: GET, path: '/a/b/{y}', scope: messages:read}",
                ],
                "8:25: error: rules[1].path: ambiguous rules:",
            ),
            (
                [
                    "{method: GET, path: /x, scope: messages:read}",
                    "{methods: [POST, GET], path: /x, scope: messages:send}",
                ],
                "8:34: error: rules[1].path: duplicate rule:",
            ),
            (["{method: get, path: /x, scope: messages:read}"], "7:14: error: rules[0].method: malformed method 'get'"),
            (["{method: GET, path: /x, scope: messages:read"], "error: invalid YAML"),
            (["{method: POST, path: /hook, public: true}"], "7:5: warning: rules[0]: public write route:"),
        ],
    )
    def test_findings(self, tmp_path: Path, rules: list[str], expected: str) -> None:
        """Each kind of mistake is reported at its file:line:column with its key, message and hint."""
        used = "  - {method: GET, path: /used, any_of: [messages:send, messages:read]}\n"
        file = policy_file(tmp_path, *rules)
        Path(file).write_text(Path(file).read_text() + used)
        report = tools.validate([file])
        rendered = [d.render() for d in report.diagnostics]
        assert any(expected in line for line in rendered), rendered
        assert all(DIAGNOSTIC.match(line) for line in rendered)

    def test_collects_every_rule_error(self, tmp_path: Path) -> None:
        """Broken rules are reported one by one (with their original index) and the rest is still checked."""
        file = policy_file(
            tmp_path,
            "{method: GET, path: /a, scope: nope:nope}",
            "{method: GET, path: /b, scope: messages:read, extra: 1}",
            "{method: GET, path: '/c/{x}/d', scope: messages:read}",
            "{method: GET, path: '/c/e/{y}', scope: messages:read}",
            "{method: DELETE, path: /f, public: true}",
            "{method: GET, path: /g}",
        )
        report = tools.validate([file])
        found = [(d.line, d.severity, d.key) for d in report.diagnostics]
        assert found == [
            (7, "error", "rules[0].scope"),
            (8, "error", "rules[1].extra"),
            (10, "error", "rules[3].path"),
            (11, "warning", "rules[4]"),
            (12, "error", "rules[5]"),
        ]
        assert report.exit_code() == 1

    def test_unused_scope_is_a_warning(self, tmp_path: Path) -> None:
        """A vocabulary scope no rule uses is a warning at its key; --strict turns it into a failure."""
        file = policy_file(tmp_path, "{method: GET, path: /x, scope: messages:read}")
        report = tools.validate([file])
        assert [d.render() for d in report.diagnostics] == [
            f"{file}:4:3: warning: scopes.messages:send: scope 'messages:send' is declared but no rule requires it "
            "(hint: remove it from `scopes:`, or use it in a rule)"
        ]
        assert (report.exit_code(), report.exit_code(strict=True)) == (0, 1)

    def test_mount_used_twice(self, tmp_path: Path) -> None:
        """Two files with the same mount: an error at the second file's mount."""
        rule = "{method: GET, path: /x, any_of: [messages:read, messages:send]}"
        first = policy_file(tmp_path, rule, name="a.yaml")
        second = policy_file(tmp_path, rule, name="b.yaml")
        (finding,) = tools.validate([first, second]).diagnostics
        assert finding.render() == (
            f"{second}:2:8: error: mount: mount '/api' is already used by {first} "
            "(hint: give each policy its own mount, or merge)"
        )

    def test_gateway_paths_shadow_rules(self, tmp_path: Path) -> None:
        """With a config, a rule on /healthz is never consulted, and /{x} is partly shadowed."""
        head = POLICY_HEAD.replace("mount: /api", "mount: ''")
        file = policy_file(
            tmp_path,
            "{method: GET, path: /healthz, public: true}",
            "{method: GET, path: '/{name}', any_of: [messages:read, messages:send]}",
            head=head,
        )
        config = write(tmp_path / "c.yaml", f"policies: [{file}]\nupstreams: {{smsgate: {{url: 'http://u.test'}}}}\n")
        messages = [(d.line, d.message) for d in tools.validate(config=config).diagnostics]
        assert (7, "shadowed: the gateway answers /healthz itself (liveness probe); this rule is never consulted") in (
            messages
        )
        partly = {m for line, m in messages if line == 8}
        assert "partly shadowed: the gateway answers /healthz itself (liveness probe)" in partly
        assert len(partly) == 4  # /healthz, /readyz, /metrics, /admin[/...]

    def test_upstream_must_be_configured(self, tmp_path: Path) -> None:
        """In proxy mode a policy naming an unknown upstream is an error at its `upstream:` value."""
        file = policy_file(tmp_path, "{method: GET, path: /x, any_of: [messages:read, messages:send]}")
        config = write(tmp_path / "c.yaml", f"policies: [{file}]\nupstreams: {{other: {{url: 'http://u.test'}}}}\n")
        (finding,) = tools.validate(config=config).diagnostics
        assert finding.render().startswith(f"{file}:1:11: error: upstream: upstream 'smsgate' is not configured in ")

    def test_config_errors_are_reported(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A config mistake is reported with its position, and the named policies are still validated."""
        config = write(tmp_path / "c.yaml", "listen: {hots: x}\n")
        code, out, _ = run(capsys, "validate", "--config", config, SHIPPED)
        assert code == 1
        assert out.splitlines()[0].startswith(f"{config}:1:10: error: listen.hots: unknown key")

    def test_every_config_error_is_reported(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Two config mistakes are two diagnostics in one run, each at its own position."""
        config = write(tmp_path / "c.yaml", "listen: {hots: x}\nstore: 5\n")
        code, out, _ = run(capsys, "validate", "--config", config, SHIPPED)
        assert code == 1
        lines = [line for line in out.splitlines() if line.startswith(f"{config}:")]
        assert lines[0].startswith(f"{config}:1:10: error: listen.hots: unknown key")
        assert any(line.startswith(f"{config}:2:8: error: store") for line in lines), lines

    def test_usage_errors(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No file and no config.yaml here, or an unknown option: exit 2 with a message."""
        assert run(capsys, "validate", "--nope", SHIPPED)[0] == 2
        monkeypatch.chdir(tmp_path)
        code, _, err = run(capsys, "validate")
        assert code == 2
        assert "config.yaml is not here" in err


# ---------------------------------------------------------------------------- where policies come from

SHIPPED_ENV = ("SMSGUARD_OPS_PASSWORD_HASH", "SMSGUARD_TOKEN_SECRET", "SMSGATE_URL", "SMSGATE_USER", "SMSGATE_PASSWORD")


class TestSources:
    """One convention: --policy FILE (positional FILEs too for validate and matrix), else --config C, which
    defaults to config.yaml like `gateway serve`; --no-secrets stands in for unset ${VAR}s."""

    @pytest.fixture(autouse=True)
    def _no_secrets_set(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in SHIPPED_ENV:
            monkeypatch.delenv(name, raising=False)

    @pytest.mark.parametrize(
        "argv",
        [
            ["explain", "POST", "/3rdparty/v1/messages"],
            ["check", "POST", "/3rdparty/v1/messages", "--scope", "messages:send"],
            ["matrix"],
            ["validate"],
        ],
    )
    def test_default_config_is_config_yaml(self, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
        """Without flags, the policy tools read ./config.yaml: its unset ${VAR}s are named, with the way out."""
        code, out, err = run(capsys, *argv)
        assert code != 0
        assert "config.yaml:14:22: error: auth.basic_users[0].password_hash: environment variable" in out + err
        assert "--no-secrets" in err

    @pytest.mark.parametrize(
        "argv",
        [
            ["explain", "POST", "/3rdparty/v1/messages"],
            ["check", "POST", "/3rdparty/v1/messages", "--scope", "messages:send"],
            ["matrix"],
            ["validate", "--strict"],
            ["validate", "--config", "config.yaml"],
        ],
    )
    def test_no_secrets_needs_no_secret_values(self, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
        """--no-secrets: the shipped config is read with stand-ins, and the command answers."""
        code, out, err = run(capsys, *argv, "--no-secrets")
        assert (code, err) == (0, "")
        assert out

    def test_no_secrets_stand_ins(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An unset URL stands in as a reserved .invalid name; secrets are never asked for."""
        code, out, _ = run(capsys, "explain", "POST", "/3rdparty/v1/messages", "--no-secrets")
        assert code == 0
        assert "forwards:  POST https://smsgate-url.invalid/messages" in out

    def test_no_secrets_keeps_real_values(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A variable that is set is used as it is."""
        monkeypatch.setenv("SMSGATE_URL", "https://api.sms-gate.app/3rdparty/v1")
        _, out, _ = run(capsys, "explain", "POST", "/3rdparty/v1/messages", "--no-secrets")
        assert "forwards:  POST https://api.sms-gate.app/3rdparty/v1/messages" in out

    @pytest.mark.parametrize("command", ["validate", "matrix"])
    def test_policy_option_and_positional_files_agree(self, capsys: pytest.CaptureFixture[str], command: str) -> None:
        """validate and matrix take --policy FILE like explain and check (and FILE positionally); no config read."""
        by_option = run(capsys, command, "--policy", SHIPPED)
        by_position = run(capsys, command, SHIPPED)
        assert by_option == by_position
        assert by_option[0] == 0

    def test_no_secrets_for_policy_tests_config(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--policy without --config reads no config: no secret needed, no upstream URL shown."""
        code, out, _ = run(capsys, "explain", "POST", "/3rdparty/v1/messages", "--policy", SHIPPED)
        assert code == 0
        assert "give --config" in out


# ------------------------------------------------------------------------------------------- explain

EXPLAIN_REQUESTS = [
    ("GET", "/3rdparty/v1/messages/abc?limit=2"),
    ("POST", "/3rdparty/v1/messages"),
    ("GET", "/3rdparty/v1/health"),
    ("PATCH", "/3rdparty/v1/settings"),
    ("POST", "/3rdparty/v1/auth/token/refresh"),
    ("GET", "/3rdparty/v1/messages/a%7Eb"),
    ("GET", "/3rdparty/v1/mesages"),
    ("PUT", "/3rdparty/v1/messages"),
    ("GET", "/3rdparty/v1/../admin"),
    ("GET", "/3rdparty/v1/logs?access_token=abc"),
    ("GET", "/3rdparty/v1/logs?q=a b"),
    ("GET", "/healthz"),
]


class TestExplain:
    def test_golden_with_config(self, capsys: pytest.CaptureFixture[str]) -> None:
        """With a config: rule, requirement, params, upstream URL; or why nothing matches (golden)."""
        outputs = [run(capsys, "explain", method, path, "--config", CONFIG)[1] for method, path in EXPLAIN_REQUESTS]
        golden("explain_config.txt", "\n".join(outputs))

    def test_golden_policy_only(self, capsys: pytest.CaptureFixture[str]) -> None:
        """With only a policy file: the upstream's name, no URL, no gateway-served paths (golden)."""
        outputs = [run(capsys, "explain", method, path, "--policy", SHIPPED)[1] for method, path in EXPLAIN_REQUESTS]
        golden("explain_policy.txt", "\n".join(outputs))

    @pytest.mark.parametrize(
        ("method", "path", "code"),
        [
            ("GET", "/3rdparty/v1/health", 0),
            ("GET", "/3rdparty/v1/nothing", 1),
            ("GET", "/3rdparty/v1//x", 1),
            ("GET", "/healthz", 0),
            ("GET", "/3rdparty/v1/logs?q=a b", 1),
        ],
    )
    def test_exit_codes(self, capsys: pytest.CaptureFixture[str], method: str, path: str, code: int) -> None:
        """0 when a rule (or the gateway itself) answers, 1 when nothing matches or the path is refused."""
        assert run(capsys, "explain", method, path, "--config", CONFIG)[0] == code

    def test_needs_policies(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Neither --config nor --policy, and no config.yaml to default to: a usage error."""
        monkeypatch.chdir(tmp_path)
        code, _, err = run(capsys, "explain", "GET", "/x")
        assert code == 2
        assert "name policy files (--policy FILE), or --config C" in err

    def test_load_error_exits_2(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A policy that does not load is named with file:line:column on stderr."""
        file = policy_file(tmp_path, "{method: GET, path: /x, scope: bad:scope}")
        code, _, err = run(capsys, "explain", "GET", "/api/x", "--policy", file)
        assert code == 2
        assert err.startswith(f"{file}:7:36: error: rules[0].scope: scope 'bad:scope' is not in the vocabulary")


# --------------------------------------------------------------------------------------------- check


class TestCheck:
    @pytest.mark.parametrize(
        ("argv", "code", "out"),
        [
            (
                ["POST", "/3rdparty/v1/messages", "--scope", "messages:send"],
                0,
                f"ALLOW POST /3rdparty/v1/messages (rule {SHIPPED}:{line_of('POST', '/3rdparty/v1/messages')})\n",
            ),
            (
                ["POST", "/3rdparty/v1/messages", "--scope", "messages:read messages:list"],
                1,
                "DENY 403 insufficient_scope: insufficient scope: messages:send required "
                f"(rule policies/smsgate.yaml:{line_of('POST', '/3rdparty/v1/messages')})\n",
            ),
            (
                ["GET", "/3rdparty/v1/health"],
                0,
                f"ALLOW GET /3rdparty/v1/health (rule {SHIPPED}:{line_of('GET', '/3rdparty/v1/health')}, public)\n",
            ),
            (
                ["GET", "/3rdparty/v1/logs"],
                1,
                "DENY 401 missing_token: authentication required "
                f"(rule policies/smsgate.yaml:{line_of('GET', '/3rdparty/v1/logs')})\n",
            ),
            (
                ["GET", "/3rdparty/v1/nope", "--scope", "all:any"],
                1,
                "DENY 404 no_route: no route for GET /3rdparty/v1/nope\n",
            ),
            (
                ["GET", "/3rdparty/v1/%2e%2e/x", "--scope", "all:any"],
                1,
                "DENY 400 bad_path: non-canonical path: a dot segment in '/3rdparty/v1/%2e%2e/x'\n",
            ),
        ],
    )
    def test_scopes(self, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, out: str) -> None:
        """--scope (or nobody) is decided by route + decide: ALLOW exits 0, DENY exits 1 with status and reason."""
        assert run(capsys, "check", *argv, "--policy", SHIPPED)[:2] == (code, out)

    def test_gateway_served_note(self, capsys: pytest.CaptureFixture[str]) -> None:
        """With a config, a path the gateway answers itself carries a note under the policy's decision."""
        code, out, _ = run(
            capsys, "check", "POST", "/3rdparty/v1/auth/token/refresh", "--scope", "all:any", "--config", CONFIG
        )
        assert code == 1
        assert out.splitlines()[1] == (
            "note: the running gateway answers /3rdparty/v1/auth/token[/...] itself (token endpoints);"
            " the policy decision above is not consulted there"
        )

    @pytest.mark.parametrize(
        ("make_token", "code", "start"),
        [
            (lambda: token("messages:send"), 0, "ALLOW POST /3rdparty/v1/messages as alice (rule"),
            (lambda: token("messages:read"), 1, "DENY 403 insufficient_scope:"),
            (lambda: token(iss=KEYCLOAK, realm_access={"roles": ["messages:send"]}), 0, "ALLOW"),
            (lambda: token(iss=KEYCLOAK, scope="messages:send"), 1, "DENY 403"),
            (lambda: token("messages:send", exp=int(time.time()) - 3600), 1, "DENY 401 invalid_token:expired"),
            (lambda: token("messages:send")[:-4] + "AAAA", 1, "DENY 401 invalid_token:bad_signature"),
            (lambda: "not-a-jwt", 1, "DENY 401 invalid_token:malformed"),
        ],
    )
    def test_token(self, capsys: pytest.CaptureFixture[str], make_token: Any, code: int, start: str) -> None:
        """--token goes through the full authorize(): verification, the issuer's scope claim, then scopes."""
        result = run(capsys, "check", "POST", "/3rdparty/v1/messages", "--config", CONFIG, "--token", make_token())
        assert result[0] == code
        assert result[1].startswith(start), result[1]

    def test_token_needs_config(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A token cannot be verified without the config's issuers: usage error."""
        code, _, err = run(capsys, "check", "GET", "/3rdparty/v1/logs", "--policy", SHIPPED, "--token", token("x:y"))
        assert code == 2
        assert "--token needs --config" in err

    def test_scope_and_token_exclusive(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert run(capsys, "check", "GET", "/x", "--policy", SHIPPED, "--scope", "a:b", "--token", "t")[0] == 2


AGREEMENT = [
    ("POST", "/3rdparty/v1/messages", "messages:send"),
    ("POST", "/3rdparty/v1/messages", "messages:read"),
    ("POST", "/3rdparty/v1/messages", None),
    ("GET", "/3rdparty/v1/messages/m-1", "messages:read"),
    ("GET", "/3rdparty/v1/messages/m-1", "messages:send"),
    ("POST", "/3rdparty/v1/messages/inbox/export", "messages:export"),
    ("POST", "/3rdparty/v1/messages/inbox/export", "messages:send"),
    ("GET", "/3rdparty/v1/health", None),
    ("HEAD", "/3rdparty/v1/health", None),
    ("PATCH", "/3rdparty/v1/settings", "settings:write"),
    ("DELETE", "/3rdparty/v1/devices/d-1", "all:any"),
    ("POST", "/3rdparty/v1/auth/token/refresh", "all:any"),
    ("POST", "/3rdparty/v1/auth/token/refresh", "tokens:refresh"),
    ("GET", "/3rdparty/v1/contacts", "all:any"),
    ("PUT", "/3rdparty/v1/messages", "all:any"),
    ("GET", "/3rdparty/v1/messages/../logs", "all:any"),
    ("GET", "/3rdparty/v1/messages/a%2Fb", "all:any"),
    ("GET", "/3rdparty/v1//logs", "logs:read"),
    ("GET", "/3rdparty/v1/logs?access_token=x", "logs:read"),
    ("GET", "/3rdparty/v1/%6Cogs", "logs:read"),
]


async def live_status(app: GuardMiddleware, method: str, target: str, bearer: str | None) -> int:
    """Send one request through the guard middleware (the gateway's decision point) and return the status."""
    path, _, query = target.partition("?")
    headers = [] if bearer is None else [(b"authorization", f"Bearer {bearer}".encode())]
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": headers,
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_check_agrees_with_the_live_guard(capsys: pytest.CaptureFixture[str]) -> None:
    """On a table of requests, `check --scope` and `check --token` decide exactly what the guard answers."""
    settings = load_settings(CONFIG)
    app = GuardMiddleware(ok_app, authorizer=Authorizer.from_settings(settings))
    for method, target, scope in AGREEMENT:
        bearer = None if scope is None else token(scope)
        status = asyncio.run(live_status(app, method, target, bearer))
        who = [] if scope is None else ["--scope", scope]
        by_scope = run(capsys, "check", method, target, "--policy", SHIPPED, *who)
        by_token = run(capsys, "check", method, target, "--config", CONFIG, *(["--token", bearer] if bearer else []))
        for code, out, _ in (by_scope, by_token):
            decided = 200 if out.startswith("ALLOW") else int(out.split()[1])
            assert (decided, code) == (status, 0 if status == 200 else 1), (method, target, scope, out)


# -------------------------------------------------------------------------------------- policy tests


class TestPolicyTests:
    def test_shipped_tests_pass(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`gateway policy test policies/tests/` passes, with a summary per file and a total line."""
        code, out, _ = run(capsys, "test", "policies/tests/")
        lines = out.splitlines()
        assert code == 0, out
        summaries = {line.split(":")[0] for line in lines[:-1] if re.fullmatch(r"\S+: \d+ passed, 0 failed", line)}
        shipped = ("smsgate", "bsg", "smsportal", "smsgatewaycenter")
        assert {f"policies/tests/{name}.yaml" for name in shipped} <= summaries
        assert re.fullmatch(r"\d+ passed, 0 failed", lines[-1])
        assert int(lines[-1].split()[0]) >= 60
        assert "note:" not in out  # every route of the shipped policy is exercised

    def test_shipped_tests_cover_every_route_both_ways(self) -> None:
        """Each (method, route) of the shipped policy has an allowing and a denying case."""
        result = asyncio.run(tools.run_suite("policies/tests/smsgate.yaml"))
        outcomes: dict[tuple[str, str], set[bool]] = {}
        for case in result.results:
            if case.result.rule is not None:
                outcomes.setdefault((case.case.method, case.result.rule.full_path), set()).add(case.result.allowed)
        routes = {(m, r.full_path) for r in load_policy(SHIPPED).rules for m in r.methods}
        public = {("GET", "/3rdparty/v1/health")}
        assert {k for k, v in outcomes.items() if v == {True, False}} | public == routes

    def test_failures_are_reported(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A mismatch prints file:line, the case and what happened; the summary counts it; exit 1."""
        suite = write(
            tmp_path / "t.yaml",
            f"policies: [{ROOT / SHIPPED}]\ncases:\n"
            "  - {request: GET /3rdparty/v1/health, anonymous: true, expect: allow}\n"
            "  - {name: wrong, request: GET /3rdparty/v1/logs, scopes: [messages:read], expect: allow}\n"
            "  - request: {method: GET, path: /3rdparty/v1/logs}\n"
            "    token: {scope: logs:read}\n"
            "    expect: 404\n",
        )
        code, out, _ = run(capsys, "test", suite)
        assert code == 1
        lines = [line for line in out.splitlines() if "note:" not in line]
        assert lines == [
            f"{suite}:4: FAIL wrong: GET /3rdparty/v1/logs: expected allow, got 403 insufficient_scope "
            "(insufficient scope: logs:read required)",
            f"{suite}:5: FAIL GET /3rdparty/v1/logs: GET /3rdparty/v1/logs: expected 404, got allow",
            f"{suite}: 1 passed, 2 failed",
            "1 passed, 2 failed",
        ]

    def test_untested_routes_are_noted(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Routes no case reaches are listed as notes (not failures)."""
        file = policy_file(
            tmp_path, "{method: GET, path: /x, scope: messages:read}", "{method: GET, path: /y, scope: messages:send}"
        )
        suite = write(
            tmp_path / "t.yaml",
            "policies: [p.yaml]\ncases:\n  - {request: GET /api/x, scopes: [messages:read], expect: allow}\n",
        )
        code, out, _ = run(capsys, "test", suite)
        assert code == 0
        assert f"{suite}: note: no case reaches GET /api/y ({file}:8)" in out.splitlines()

    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            (
                "cases:\n  - {request: GET /x, anonymous: true, expect: allow}\n",
                "1:1: error: the test file names no policy",
            ),
            ("policies: [P]\ncases: []\n", "2:8: error: cases: no test cases"),
            (
                "policies: [P]\ncases:\n  - {request: GET /x, expect: allow}\n",
                "3:5: error: cases[0]: say who is asking",
            ),
            (
                "policies: [P]\ncases:\n  - {request: GET /x, scopes: [], anonymous: true, expect: allow}\n",
                "3:5: error: cases[0]: more than one caller given",
            ),
            (
                "policies: [P]\ncases:\n  - {request: GET, scopes: [], expect: allow}\n",
                "3:15: error: cases[0].request: expected 'METHOD PATH'",
            ),
            (
                "policies: [P]\ncases:\n  - {request: GET /x, scopes: [], expect: 500}\n",
                "3:43: error: cases[0].expect: unknown expectation 500",
            ),
            (
                "policies: [P]\ncases:\n  - {request: GET /x, scopes: [], expect: allow, typo: 1}\n",
                "3:50: error: cases[0].typo: unknown key",
            ),
            (
                "policies: [missing.yaml]\ncases:\n  - {request: GET /x, scopes: [], expect: allow}\n",
                "error: cannot read file",
            ),
        ],
    )
    def test_bad_test_files(self, tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, expected: str) -> None:
        """Mistakes in a test file name file:line:column and count as a failure (exit 1)."""
        suite = write(tmp_path / "t.yaml", body.replace("[P]", f"[{ROOT / SHIPPED}]"))
        code, out, _ = run(capsys, "test", suite)
        assert code == 1
        assert expected in out.splitlines()[0], out
        assert out.splitlines()[-1] == "0 passed, 1 failed"

    def test_config_issuer_scope_claim(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """With `config:`, token claims carrying an issuer's `iss` are read through its scope_claim."""
        suite = write(
            tmp_path / "t.yaml",
            f"config: {ROOT / CONFIG}\ncases:\n"
            "  - request: POST /3rdparty/v1/messages\n"
            f"    token: {{iss: '{KEYCLOAK}', realm_access: {{roles: [messages:send]}}}}\n"
            "    expect: allow\n"
            "  - request: POST /3rdparty/v1/messages\n"
            f"    token: {{iss: '{KEYCLOAK}', scope: messages:send}}\n"
            "    expect: 403\n",
        )
        code, out, _ = run(capsys, "test", suite)
        assert code == 0, out
        assert out.splitlines()[-1] == "2 passed, 0 failed"

    def test_documented_example_runs(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """The test-file example in policytools' docstring is valid and passes against the shipped policy."""
        doc = testing.__doc__ or ""
        example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
        suite = write(tmp_path / "t.yaml", example.replace("../smsgate.yaml", str(ROOT / SHIPPED)))
        code, out, _ = run(capsys, "test", suite)
        assert (code, out.splitlines()[-1]) == (0, "3 passed, 0 failed")

    def test_no_test_files(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert run(capsys, "test", str(tmp_path))[0] == 2


# ---------------------------------------------------------------------------------------------- diff


class TestDiff:
    def test_golden_text(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Added, removed, changed and newly public routes, one line each, readable in review (golden)."""
        code, out, _ = run(capsys, "diff", "tests/golden/diff_old.yaml", "tests/golden/diff_new.yaml")
        assert code == 0
        golden("diff.txt", out)

    def test_golden_json(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--json gives the same changes as a list of objects (golden)."""
        code, out, _ = run(capsys, "diff", "--json", "tests/golden/diff_old.yaml", "tests/golden/diff_new.yaml")
        assert code == 0
        assert len(json.loads(out)) == 10
        golden("diff.json", out)

    def test_exit_code(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--exit-code: 1 when access changed, 0 when not; identical versions say so."""
        changed = run(capsys, "diff", "--exit-code", "tests/golden/diff_old.yaml", "tests/golden/diff_new.yaml")
        assert changed[0] == 1
        assert run(capsys, "diff", "--exit-code", SHIPPED, SHIPPED)[:2] == (0, "no access changes\n")

    def test_renamed_parameter_is_no_change(self) -> None:
        """Renaming a path parameter or reordering scopes does not change access."""
        head = "scopes: {a:read: A, b:read: B}\nrules:\n"
        old = parse_policy(head + "  - {method: GET, path: '/x/{id}', any_of: [a:read, b:read]}\n", "old.yaml")
        new = parse_policy(head + "  - {method: GET, path: '/x/{xid}', any_of: [b:read, a:read]}\n", "new.yaml")
        assert tools.diff_policies([old], [new]) == []

    def test_a_new_websocket_rule_is_a_change(self) -> None:
        """Allowing (or no longer allowing) websocket handshakes on a rule shows in the diff, with a note."""
        head = "scopes: {a:read: A}\nrules:\n"
        old = parse_policy(head + "  - {method: GET, path: /events, scope: a:read}\n", "old.yaml")
        new = parse_policy(head + "  - {method: GET, path: /events, scope: a:read, websocket: true}\n", "new.yaml")
        (change,) = tools.diff_policies([old], [new])
        assert change.notes == ("now allows websocket handshakes",)
        assert change.new is not None
        assert change.new.text() == "a:read (+websocket)"
        (back,) = tools.diff_policies([new], [old])
        assert back.notes == ("no longer allows websocket handshakes",)

    def test_invalid_version_exits_2(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A version that does not load (here: ambiguous) cannot be compared: exit 2 naming the problem."""
        bad = policy_file(
            tmp_path,
            "{method: GET, path: '/a/{x}/c', scope: messages:read}",
            "{method: GET, path: '/a/b/{y}', scope: messages:send}",
        )
        code, _, err = run(capsys, "diff", SHIPPED, bad)
        assert code == 2
        assert "ambiguous rules" in err


# -------------------------------------------------------------------------------------------- matrix


class TestMatrix:
    @pytest.mark.parametrize(
        ("fmt", "name"), [("text", "matrix.txt"), ("markdown", "matrix.md"), ("json", "matrix.json")]
    )
    def test_golden(self, capsys: pytest.CaptureFixture[str], fmt: str, name: str) -> None:
        """The who-can-do-what table of the shipped policy, in each format (golden)."""
        code, out, _ = run(capsys, "matrix", "--format", fmt, SHIPPED)
        assert code == 0
        golden(name, out)

    def test_from_config(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--config takes the config's policies: same table."""
        assert run(capsys, "matrix", "--config", CONFIG)[1] == (GOLDEN / "matrix.txt").read_text(encoding="utf-8")

    def test_cells(self) -> None:
        """A cell is ✓ when that one scope alone passes: never for all_of pairs, not all:any on exact rules."""
        policy = parse_policy(
            "scopes: {a:r: A, b:r: B}\nrules:\n"
            "  - {method: GET, path: /all, all_of: [a:r, b:r]}\n"
            "  - {method: GET, path: /any, any_of: [a:r, b:r]}\n"
            "  - {method: GET, path: /exact, scope: a:r, exact: true}\n"
            "  - {method: GET, path: /open, public: true}\n",
            "m.yaml",
        )
        matrix = tools.build_matrix([policy])
        assert matrix.scopes == ("a:r", "b:r", "all:any")
        assert [row.cells for row in matrix.rows] == [
            (False, False, True),
            (True, True, True),
            (True, False, False),
            ("public", "public", "public"),
        ]


# -------------------------------------------------------------------------------------------- schema


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((ROOT / "gateway" / name).read_text(encoding="utf-8"))
    return loaded


def resolve(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = root["$defs"][node["$ref"].removeprefix("#/$defs/")]
    return node


def schema_keys(root: dict[str, Any], path: list[str | int], variant: str | None = None) -> set[str]:
    """The property names the schema allows at `path` (for credentials: those of the `type` variant)."""
    node = root
    for step in path:
        node = resolve(root, node)
        if isinstance(step, int):
            node = node["items"]
        else:
            node = node.get("properties", {}).get(step) or node["additionalProperties"]
    node = resolve(root, node)
    if variant is not None:  # a discriminated union (the config's credentials): the branch `type` selects
        node = resolve(root, {"$ref": node["discriminator"]["mapping"][variant]})
    return set(node["properties"])


ARGON = "$argon2id$v=19$m=1024,t=1,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
FULL_CONFIG: dict[str, Any] = {
    "listen": {"host": "127.0.0.1", "port": 8080},
    "auth": {
        "issuers": [{"name": "corp", "issuer": CORP, "audience": "a", "algorithms": ["HS256"], "secret": SECRET}],
        "basic_users": [{"username": "ops", "password_hash": ARGON, "scopes": ["all:any"]}],
    },
    "tokens": {"issuer": "smsguard", "audience": "sms-api", "keys": [{"algorithm": "HS256", "secret": SECRET}]},
    "upstreams": {
        "smsgate": {"url": "https://h.test/v1", "credentials": {"type": "basic", "username": "u", "password": "p"}},
        "other": {"url": "https://h.test/v1", "credentials": {"type": "header", "headers": {"X-Key": "k"}}},
    },
    "proxy": {"trusted_proxies": ["10.0.0.0/8"]},
    "log": {"access": True, "level": "info"},
    "metrics": {"enabled": True, "path": "/metrics"},
}


def loader_keys(text: str, loader: Any) -> set[str]:
    """The keys a loader knows at the spot of `zz_unknown`, read from its unknown-key hint."""
    with pytest.raises(LoadError) as caught:
        loader(text)
    assert caught.value.reason == "unknown key"
    listed = caught.value.hint.split(": ", 1)[1]
    return set(listed.split(", ")) - {"zz_unknown"}


class TestSchema:
    def test_cli_prints_the_packaged_schemas(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`schema` prints the policy schema, `schema --config` the config schema; both are draft 2020-12."""
        for argv, name in ((["schema"], "policy.schema.json"), (["schema", "--config"], "config.schema.json")):
            code, out, _ = run(capsys, *argv)
            assert (code, json.loads(out)) == (0, schema(name))
            assert json.loads(out)["$schema"] == "https://json-schema.org/draft/2020-12/schema"

    def test_shipped_policy_references_the_schema(self) -> None:
        """The shipped policy's first line points yaml-language-server at the schema, and it still loads."""
        first = (ROOT / SHIPPED).read_text(encoding="utf-8").splitlines()[0]
        assert first == "# yaml-language-server: $schema=../gateway/policy.schema.json"
        assert (ROOT / "policies" / first.split("=", 1)[1]).resolve() == ROOT / "gateway" / "policy.schema.json"

    @pytest.mark.parametrize(
        ("path", "variant"),
        [
            ([], None),
            (["listen"], None),
            (["auth"], None),
            (["auth", "issuers", 0], None),
            (["auth", "basic_users", 0], None),
            (["tokens"], None),
            (["tokens", "keys", 0], None),
            (["upstreams", "smsgate"], None),
            (["upstreams", "smsgate", "credentials"], "basic"),
            (["upstreams", "other", "credentials"], "header"),
            (["proxy"], None),
            (["log"], None),
            (["metrics"], None),
        ],
    )
    def test_config_schema_matches_loader(self, path: list[str | int], variant: str | None) -> None:
        """At each level, the config schema allows exactly the keys config.py reads (drift detector)."""
        document = json.loads(json.dumps(FULL_CONFIG))
        target = document
        for step in path:
            target = target[step]
        target["zz_unknown"] = 1
        known = loader_keys(yaml.safe_dump(document), lambda text: parse_settings(text, env={}))
        assert schema_keys(schema("config.schema.json"), path, variant) == known

    @pytest.mark.parametrize(
        ("text", "path"),
        [
            ("zz_unknown: 1\nrules: []\n", []),
            ("rules:\n  - {method: GET, path: /x, public: true, zz_unknown: 1}\n", ["rules", 0]),
        ],
    )
    def test_policy_schema_matches_loader(self, text: str, path: list[str | int]) -> None:
        """The policy schema allows exactly the top-level and rule keys policy.py reads (drift detector)."""
        known = loader_keys(text, lambda t: parse_policy(t, "p.yaml"))
        assert schema_keys(schema("policy.schema.json"), path) == known

    def test_shipped_files_validate(self) -> None:
        """The shipped policy, config and test fixture are valid under the schemas; typos are flagged."""
        import jsonschema

        policy = jsonschema.Draft202012Validator(schema("policy.schema.json"))
        config = jsonschema.Draft202012Validator(schema("config.schema.json"))
        assert list(policy.iter_errors(yaml.safe_load((ROOT / SHIPPED).read_text()))) == []
        for file in ("config.yaml", CONFIG):
            assert list(config.iter_errors(yaml.safe_load((ROOT / file).read_text()))) == []
        assert list(config.iter_errors(FULL_CONFIG)) == []
        bad_rules = [
            {"method": "get", "path": "/x", "scope": "a:b"},
            {"method": "GET", "path": "x", "scope": "a:b"},
            {"method": "GET", "path": "/x", "scope": "a:b", "publik": True},
            {"method": "GET", "path": "/x", "public": True, "scope": "a:b"},
            {"method": "GET", "path": "/x"},
            {"method": "GET", "methods": ["GET"], "path": "/x", "public": True},
        ]
        for rule in bad_rules:
            assert list(policy.iter_errors({"rules": [rule]})), rule
        assert list(config.iter_errors({"upstreams": {"u": {"url": "https://h.test", "timeout": 1}}}))
