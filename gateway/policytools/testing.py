"""`gateway policy test`: policy unit tests in YAML, run through the gateway's own route + decide.

Policy tests are YAML files, usually in `policies/tests/`; `gateway policy test policies/tests/` runs them:

```yaml
# Paths under `policies:` (or `config:`) are relative to this file.
policies: [../smsgate.yaml]          # or: config: ../../config.yaml (its policies and issuers)
cases:
  - name: a sender can send           # optional; defaults to the request
    request: POST /3rdparty/v1/messages
    scopes: [messages:send]           # who asks: a token holding these scopes ...
    expect: allow                     # allow | deny | 200 | 400 | 401 | 403 | 404
  - request: {method: GET, path: "/3rdparty/v1/messages/abc?limit=1"}
    token: {sub: app-1, scp: [messages:read]}   # ... or the claims of a verified token ...
    expect: 200
  - request: GET /3rdparty/v1/messages
    anonymous: true                   # ... or nobody (no credentials at all)
    expect: 401
```

Token claims are read like the gateway reads a verified token: `scope` (space-separated), `scp` or
`scopes`, or, when `config:` names an issuer whose `iss` the claims carry, that issuer's `scope_claim`.
Signatures are not involved: `gateway policy check --token` verifies a real one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from gateway.auth.jwt import Principal
from gateway.config.settings import Settings, load_settings
from gateway.errors import LoadError
from gateway.policy.loader import METHOD
from gateway.policy.matcher import Matcher
from gateway.policy.model import Policy, display_path
from gateway.policy.scopes import parse_scopes
from gateway.policytools.check import CheckResult, check
from gateway.policytools.common import Diagnostic, cli_principal, load_matcher, offline_authorizer, rule_where
from gateway.yamlsource import Node, load_file

__all__ = [
    "CaseResult",
    "Expectation",
    "PolicyCase",
    "SuiteResult",
    "find_test_files",
    "load_suite",
    "render_suites",
    "run_suite",
]


Expectation = Literal["allow", "deny", 200, 400, 401, 403, 404]
_EXPECTATIONS: tuple[Expectation, ...] = ("allow", "deny", 200, 400, 401, 403, 404)
_REQUEST = re.compile(rf"({METHOD.pattern})\s+(\S+)")


@dataclass(frozen=True, slots=True)
class PolicyCase:
    """One policy test case, as read from a test file."""

    name: str
    file: str
    line: int
    method: str
    target: str
    principal: Principal | None
    expect: Expectation

    def passes(self, result: CheckResult) -> bool:
        if self.expect == "allow" or self.expect == 200:
            return result.allowed
        if self.expect == "deny":
            return not result.allowed
        return not result.allowed and result.status == self.expect


@dataclass(frozen=True, slots=True)
class _Suite:
    file: str
    policies: tuple[Policy, ...]
    matcher: Matcher
    cases: tuple[PolicyCase, ...]


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: PolicyCase
    result: CheckResult

    @property
    def passed(self) -> bool:
        return self.case.passes(self.result)

    def render(self) -> str:
        c = self.case
        return (
            f"{display_path(c.file)}:{c.line}: FAIL {c.name}: {c.method} {c.target}: "
            f"expected {c.expect}, got {self.result.outcome()}"
            + (f" ({self.result.message})" if self.result.message else "")
        )


@dataclass(frozen=True, slots=True)
class SuiteResult:
    file: str
    results: tuple[CaseResult, ...] = ()
    error: Diagnostic | None = None
    untested: tuple[str, ...] = ()  # `GET /path (file:line)` of routes no case reached

    @property
    def passed(self) -> int:
        return sum(1 for r in self.results if r.passed)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed + (1 if self.error else 0)


def find_test_files(paths: Sequence[str | Path]) -> list[str]:
    """The test files named by `paths`: files as given, directories searched for *.yaml and *.yml."""
    found: list[str] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(str(p) for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
        else:
            found.append(str(path))
    return found


def load_suite(path: str, env: Mapping[str, str] | None = None) -> _Suite:
    """Read a test file and the policies it names; any mistake is a LoadError naming file:line."""
    root = load_file(path)
    fields = root.fields()
    fields.get("$schema")
    policies_node, config_node, cases_node = fields.get("policies"), fields.get("config"), fields.require("cases")
    fields.close(hint="test file keys: policies, config, cases")
    base = Path(path).parent
    settings = None
    if config_node is not None:
        settings = load_settings(os.path.normpath(base / config_node.string()), env)
    if policies_node is not None:
        files = [os.path.normpath(base / p) for p in policies_node.strings()]
    elif settings is not None:
        files = list(settings.policies)
    else:
        root.fail("the test file names no policy", hint="add policies: [../smsgate.yaml] or config: ../../config.yaml")
    policies, matcher = load_matcher(files)
    cases = tuple(_case(node, settings) for node in cases_node.items())
    if not cases:
        cases_node.fail("no test cases", hint="add at least one case")
    return _Suite(path, policies, matcher, cases)


def _case(node: Node, settings: Settings | None) -> PolicyCase:
    fields = node.fields()
    name_node = fields.get("name")
    method, target = _request(fields.require("request"))
    principal = _who(node, fields.get("scopes"), fields.get("token"), fields.get("anonymous"), settings)
    expect = _expect(fields.require("expect"))
    fields.close(hint="case keys: name, request, scopes, token, anonymous, expect")
    name = name_node.string() if name_node is not None else f"{method} {target}"
    return PolicyCase(name, node.file, node.line, method, target, principal, expect)


def _request(node: Node) -> tuple[str, str]:
    if isinstance(node.value_or_none(), str):
        found = _REQUEST.fullmatch(node.string().strip())
        if found is None:
            node.fail("expected 'METHOD PATH'", hint="e.g. POST /3rdparty/v1/messages")
        return found.group(1), found.group(2)
    fields = node.fields()
    method, path = fields.require("method").string(), fields.require("path").string()
    fields.close(hint="request keys: method, path")
    return method, path


def _who(
    case: Node, scopes: Node | None, token: Node | None, anonymous: Node | None, settings: Settings | None
) -> Principal | None:
    given = [n for n in (scopes, token) if n is not None] + ([anonymous] if anonymous and anonymous.boolean() else [])
    if len(given) != 1:
        hint = "use exactly one of scopes: [...], token: {claims}, anonymous: true"
        case.fail("say who is asking" if not given else "more than one caller given", hint=hint)
    if scopes is not None:
        return cli_principal(scopes.strings())
    if token is not None:
        return _token_principal(token, settings)
    return None


def _token_principal(node: Node, settings: Settings | None) -> Principal:
    raw = yaml.SafeLoader("").construct_object(node.raw, deep=True)
    if not isinstance(raw, dict):
        node.fail("expected a mapping of token claims", hint="e.g. {sub: app-1, scope: messages:send}")
    claims: dict[str, object] = {str(key): value for key, value in raw.items()}
    issuer = next((i for i in settings.all_issuers() if i.issuer == claims.get("iss")), None) if settings else None
    scopes = parse_scopes(claims, issuer.scope_claim if issuer else None)
    subject = str(claims.get("sub", "test"))
    return Principal(subject, scopes, issuer.name if issuer else "test", None, None, claims, "access")


def _expect(node: Node) -> Expectation:
    value = node.value()
    for allowed in _EXPECTATIONS:
        if value == allowed and type(value) is type(allowed):
            return allowed
    node.fail(f"unknown expectation {value!r}", hint="one of allow, deny, 200, 400, 401, 403, 404")


async def run_suite(path: str, env: Mapping[str, str] | None = None) -> SuiteResult:
    """Run every case of one test file through route + decide."""
    try:
        suite = load_suite(path, env)
    except LoadError as exc:
        return SuiteResult(path, error=Diagnostic.from_error(exc))
    authorizer = offline_authorizer(suite.matcher)
    results = []
    for case in suite.cases:
        result = await check(authorizer, case.method, case.target, principal=case.principal)
        results.append(CaseResult(case, result))
    reached = {(r.result.method, r.result.rule) for r in results if r.result.rule is not None}
    untested = tuple(
        f"{method} {rule.full_path} ({rule_where(rule)})"
        for policy in suite.policies
        for rule in policy.rules
        for method in sorted(rule.methods)
        if (method, rule) not in reached
    )
    return SuiteResult(path, tuple(results), untested=untested)


def render_suites(suites: Sequence[SuiteResult]) -> str:
    """One line per failure, notes on untested routes, a summary per file and a total line."""
    lines: list[str] = []
    for suite in suites:
        if suite.error is not None:
            lines.append(suite.error.render())
        lines += [r.render() for r in suite.results if not r.passed]
        lines += [f"{display_path(suite.file)}: note: no case reaches {route}" for route in suite.untested]
        lines.append(f"{display_path(suite.file)}: {suite.passed} passed, {suite.failed} failed")
    passed, failed = sum(s.passed for s in suites), sum(s.failed for s in suites)
    lines.append(f"{passed} passed, {failed} failed")
    return "\n".join(lines) + "\n"
