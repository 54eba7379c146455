"""The policy tools behind `gateway policy ...`: validate, explain, check, test, diff, matrix.

Each tool is a function returning plain data, plus a renderer that turns it into the text a person reads
(`policy_cli` wires them to the command line). Requests are decided by `Authorizer.route` and
`Authorizer.decide` (or `Authorizer.authorize` for a real token), the very functions the running gateway
calls, so a check or a policy test cannot disagree with the gateway.

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

Messages name their place as `file:line:column: error|warning: key: message (hint: ...)`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import yaml
from yarl import URL

from gateway.auth.authenticate import Authenticator
from gateway.auth.jwt import Principal, TokenVerifier
from gateway.config.settings import Settings, load_settings
from gateway.errors import HTTPError, LoadError
from gateway.guard.authorize import Authorizer
from gateway.policy.forwarding import upstream_url
from gateway.policy.loader import load_policies, read_policy
from gateway.policy.matcher import Conflict, Match, Matcher
from gateway.policy.model import Policy, Rule
from gateway.policy.paths import canonical_path, split_segments
from gateway.policy.scopes import SUPERUSER, parse_scopes
from gateway.yamlsource import Node, load_file

__all__ = [
    "AccessChange",
    "CaseResult",
    "CheckResult",
    "Diagnostic",
    "Explanation",
    "GatewayRoute",
    "Matrix",
    "PolicyCase",
    "Requirement",
    "SuiteResult",
    "ValidationReport",
    "access_map",
    "build_matrix",
    "check",
    "cli_principal",
    "diff_json",
    "diff_policies",
    "display_path",
    "explain",
    "find_test_files",
    "gateway_routes",
    "load_matcher",
    "load_suite",
    "matrix_json",
    "offline_authorizer",
    "render_check",
    "render_diff",
    "render_explanation",
    "render_matrix_markdown",
    "render_matrix_text",
    "render_suites",
    "render_validation",
    "run_suite",
    "validate",
]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CLI_SUBJECT = "cli"


def display_path(file: str) -> str:
    """`file` relative to the working directory when it lies below it (absolute paths come from configs)."""
    path = Path(os.path.normpath(file))
    if not path.is_absolute():
        return str(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _label(rule: Rule) -> str:
    return f"{','.join(sorted(rule.methods))} {rule.full_path} ({display_path(rule.file)}:{rule.line})"


def _where(rule: Rule) -> str:
    return f"{display_path(rule.file)}:{rule.line}"


# ------------------------------------------------------------------------------------- requirements


@dataclass(frozen=True, slots=True)
class Requirement:
    """What one (method, path) requires, normalized for comparison: one scope is always mode `any`."""

    public: bool
    scopes: tuple[str, ...] = ()
    mode: Literal["any", "all"] = "any"
    exact: bool = False
    upstream: str | None = None

    @classmethod
    def of(cls, rule: Rule) -> Requirement:
        if rule.public:
            return cls(public=True, upstream=rule.upstream)
        mode = "any" if len(rule.scopes) == 1 else rule.mode
        return cls(False, tuple(sorted(rule.scopes)), mode, rule.exact, rule.upstream)

    def text(self) -> str:
        """`public`, `messages:send`, `any_of[a, b]`, `all_of[a, b]`, with ` (exact)` for exact rules."""
        if self.public:
            return "public"
        text = self.scopes[0] if len(self.scopes) == 1 else f"{self.mode}_of[{', '.join(self.scopes)}]"
        return f"{text} (exact)" if self.exact else text

    def sentence(self) -> str:
        """The requirement as explain prints it."""
        if self.public:
            return "nothing (public: no credentials needed)"
        if len(self.scopes) == 1:
            text = self.scopes[0]
        else:
            text = f"{'any one' if self.mode == 'any' else 'all'} of {', '.join(self.scopes)}"
        if self.exact:
            return f"{text}, exactly ({SUPERUSER} does not satisfy this rule)"
        return f"{text} (or {SUPERUSER})"

    def as_json(self) -> dict[str, object]:
        return {
            "public": self.public,
            "scopes": list(self.scopes),
            "mode": self.mode,
            "exact": self.exact,
            "upstream": self.upstream,
        }


# ------------------------------------------------------------------------------ gateway-served paths


@dataclass(frozen=True, slots=True)
class GatewayRoute:
    """A path the reverse proxy answers itself, before the policy is consulted."""

    path: str
    prefix: bool  # also everything below `path + "/"`
    what: str
    # Rules the gateway itself enforces on this route, as (method, template with "{}" params, scopes):
    # a policy rule saying exactly that documents the route rather than being shadowed by it.
    enforces: frozenset[tuple[str, str, tuple[str, ...]]] = frozenset()

    def describes(self, rule: Rule) -> bool:
        """The rule states exactly what the gateway enforces here (e.g. SMSGate's token endpoints)."""
        template = re.sub(r"\{[^}]*\}", "{}", rule.full_path)
        return bool(rule.methods) and all((m, template, rule.scopes) in self.enforces for m in rule.methods)

    def serves(self, path: str) -> bool:
        return path == self.path or (self.prefix and path.startswith(self.path + "/"))

    def shape(self) -> str:
        return f"{self.path}[/...]" if self.prefix else self.path


def gateway_routes(settings: Settings) -> tuple[GatewayRoute, ...]:
    """What `gateway.app.Gateway` intercepts in front of the policy (keep in step with app.py)."""
    mount = settings.tokens.mount.rstrip("/")
    metrics = settings.metrics.served_path  # None when metrics are off or on their own port
    return (
        GatewayRoute(
            f"{mount}/auth/token",
            True,
            "token endpoints",
            frozenset(
                {
                    ("POST", f"{mount}/auth/token", ("tokens:manage",)),
                    ("DELETE", f"{mount}/auth/token/{{}}", ("tokens:manage",)),
                    ("POST", f"{mount}/auth/token/refresh", ("tokens:refresh",)),
                }
            ),
        ),
        GatewayRoute("/healthz", False, "liveness probe"),
        GatewayRoute("/readyz", False, "readiness probe"),
        *((GatewayRoute(metrics, False, "metrics"),) if metrics else ()),
        GatewayRoute("/.well-known/jwks.json", False, "JWKS of the gateway's own keys"),
        GatewayRoute("/admin", True, "admin API"),
    )


def _served_by(path: str, routes: Sequence[GatewayRoute]) -> GatewayRoute | None:
    return next((route for route in routes if route.serves(path)), None)


def _overlap(template: str, route: GatewayRoute) -> Literal["all", "some"] | None:
    """Whether requests matching a rule's template are answered by `route`: all of them, some, or none."""
    have, want = split_segments(template), split_segments(route.path)
    if len(have) < len(want) or (len(have) > len(want) and not route.prefix):
        return None
    literal = True
    for got, expected in zip(have, want, strict=False):
        if got.startswith("{"):
            literal = False
            if not expected:
                return None
        elif got != expected:
            return None
    return "all" if literal else "some"


# ------------------------------------------------------------------------------------------ loading


def load_matcher(files: Sequence[str | Path]) -> tuple[tuple[Policy, ...], Matcher]:
    """Load policy files and compile them (raises the first LoadError, including ambiguity)."""
    policies = load_policies(files)
    return policies, Matcher(policies)


def offline_authorizer(matcher: Matcher) -> Authorizer:
    """An Authorizer that decides with `route`/`decide` only: it trusts no issuer and no Basic user."""
    verifier = TokenVerifier((), leeway_s=0, max_token_lifetime_s=1)
    return Authorizer(matcher, Authenticator(verifier, None))


def cli_principal(scopes: Iterable[str]) -> Principal:
    """The caller `check --scope` stands for."""
    granted = frozenset(scope for value in scopes for scope in value.split())
    return Principal(CLI_SUBJECT, granted, CLI_SUBJECT, None, None, {}, "access")


def _split_target(target: str) -> tuple[str, str]:
    """`/path?query` → (`/path`, `query`)."""
    path, _, query = target.partition("?")
    return path, query


# ----------------------------------------------------------------------------------------- validate


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding, printed as `file:line:column: error|warning: key: message (hint: ...)`."""

    file: str
    line: int
    column: int
    severity: Literal["error", "warning"]
    key: str
    message: str
    hint: str = ""

    @classmethod
    def from_error(cls, exc: LoadError) -> Diagnostic:
        return cls(exc.file, exc.line, exc.column, "error", exc.key, exc.reason, exc.hint)

    def render(self) -> str:
        key = f"{self.key}: " if self.key else ""
        hint = f" (hint: {self.hint})" if self.hint else ""
        where = f"{display_path(self.file)}:{self.line}:{self.column}: " if self.file else ""
        return f"{where}{self.severity}: {key}{self.message}{hint}"


@dataclass(frozen=True, slots=True)
class ValidationReport:
    files: tuple[str, ...]
    diagnostics: tuple[Diagnostic, ...]
    rules: int
    scopes: int

    @property
    def errors(self) -> int:
        return sum(1 for d in self.diagnostics if d.severity == "error")

    @property
    def warnings(self) -> int:
        return len(self.diagnostics) - self.errors

    def exit_code(self, strict: bool = False) -> int:
        return 1 if self.errors or (strict and self.warnings) else 0


Position = tuple[int, int]


def _pos(raw: yaml.Node) -> Position:
    return raw.start_mark.line + 1, raw.start_mark.column + 1


def _mapping(raw: yaml.Node) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    if not isinstance(raw, yaml.MappingNode):
        return {}
    return {str(key.value): (key, value) for key, value in raw.value if isinstance(key, yaml.ScalarNode)}


@dataclass
class _Layout:
    """Where things are in one policy file, read from the composed YAML before any parsing."""

    root: Position
    top: dict[str, Position]  # value positions of the top-level keys
    scopes: dict[str, Position]  # key positions in `scopes:`
    rules: list[Position]  # rule positions
    paths: list[Position]  # the `path:` value of each rule (its position when absent)

    @classmethod
    def of(cls, root: Node) -> _Layout:
        top = _mapping(root.raw)
        layout = cls(_pos(root.raw), {key: _pos(value) for key, (_, value) in top.items()}, {}, [], [])
        if "scopes" in top:
            layout.scopes = {key: _pos(k) for key, (k, _) in _mapping(top["scopes"][1]).items()}
        rules = top.get("rules", (None, None))[1]
        if isinstance(rules, yaml.SequenceNode):
            for item in rules.value:
                layout.rules.append(_pos(item))
                path = _mapping(item).get("path")
                layout.paths.append(_pos(path[1]) if path else _pos(item))
        return layout


@dataclass
class _Loaded:
    """One policy file as far as it could be read: the policy, its layout, the original index of each rule."""

    policy: Policy
    layout: _Layout
    indices: list[int]
    mount_node: Position
    rule_errors: bool


def _load(path: str, out: list[Diagnostic]) -> _Loaded | None:
    """Load one policy file, collecting the error of each broken rule, so every rule error is reported."""
    errors: list[LoadError] = []
    try:
        root = load_file(path)
        layout = _Layout.of(root)
        read = read_policy(root, errors)
    except LoadError as exc:
        out.append(Diagnostic.from_error(exc))
        return None
    out.extend(Diagnostic.from_error(error) for error in errors)
    mount = (read.mount.line, read.mount.column)
    return _Loaded(read.policy, layout, list(read.rule_indices), mount, bool(errors))


def _compile(loaded: list[_Loaded], out: list[Diagnostic]) -> Matcher:
    """Compile the rules, reporting and leaving out each rule the matcher refuses (duplicates, ambiguity)."""
    conflicts: list[Conflict] = []
    matcher = Matcher([item.policy for item in loaded], conflicts)
    source = {id(rule): (item, item.indices[at]) for item in loaded for at, rule in enumerate(item.policy.rules)}
    for conflict in conflicts:
        item, index = source[id(conflict.rule)]
        line, column = item.layout.paths[index]
        key = f"rules[{index}].path"
        out.append(Diagnostic(conflict.rule.file, line, column, "error", key, conflict.message, conflict.hint))
    compiled = {id(rule) for rule in matcher.rules()}
    for item in loaded:
        kept = [
            (rule, index) for rule, index in zip(item.policy.rules, item.indices, strict=True) if id(rule) in compiled
        ]
        item.policy = replace(item.policy, rules=tuple(rule for rule, _ in kept))
        item.indices = [index for _, index in kept]
    return matcher


def _check_mounts(loaded: Sequence[_Loaded], out: list[Diagnostic]) -> list[_Loaded]:
    seen: dict[str, _Loaded] = {}
    kept: list[_Loaded] = []
    for item in loaded:
        other = seen.get(item.policy.mount)
        if other is None:
            seen[item.policy.mount] = item
            kept.append(item)
            continue
        line, column = item.mount_node
        message = f"mount {item.policy.mount or '/'!r} is already used by {display_path(other.policy.file)}"
        out.append(
            Diagnostic(
                item.policy.file, line, column, "error", "mount", message, "give each policy its own mount, or merge"
            )
        )
    return kept


def _rule_warnings(item: _Loaded, matcher: Matcher, routes: Sequence[GatewayRoute]) -> Iterable[Diagnostic]:
    for at, rule in enumerate(item.policy.rules):
        index = item.indices[at]
        line, column = item.layout.rules[index]
        key = f"rules[{index}]"
        for method in sorted(rule.methods):
            # A parameter segment written as itself ("{id}") is a value no literal can equal.
            found = matcher.match(method, rule.full_path)
            if found is not None and found.rule is not rule:
                message = f"{method} {rule.full_path} is shadowed by {_label(found.rule)}"
                yield Diagnostic(rule.file, line, column, "warning", key, message, "remove one of the rules")
        for route in routes:
            reach = _overlap(rule.full_path, route)
            if reach is None or route.describes(rule):
                continue
            served = f"the gateway answers {route.shape()} itself ({route.what})"
            if reach == "all":
                message, hint = f"shadowed: {served}; this rule is never consulted", "remove the rule"
            else:
                message, hint = f"partly shadowed: {served}", "make the path literal where it meets that route"
            path_line, path_column = item.layout.paths[index]
            yield Diagnostic(rule.file, path_line, path_column, "warning", f"{key}.path", message, hint)
        writes = sorted(rule.methods - SAFE_METHODS)
        if rule.public and writes:
            message = f"public write route: anyone, without credentials, can {','.join(writes)} {rule.full_path}"
            hint = "require a scope, or keep `public: true` only if this is really meant"
            yield Diagnostic(rule.file, line, column, "warning", key, message, hint)


def _vocabulary_warnings(item: _Loaded) -> Iterable[Diagnostic]:
    if item.rule_errors:  # a scope used only by a broken rule is not unused
        return
    used = {scope for rule in item.policy.rules for scope in rule.scopes}
    for scope in item.policy.scopes:
        if scope not in used:
            line, column = item.layout.scopes.get(scope, item.layout.root)
            message = f"scope {scope!r} is declared but no rule requires it"
            hint = "remove it from `scopes:`, or use it in a rule"
            yield Diagnostic(item.policy.file, line, column, "warning", f"scopes.{scope}", message, hint)


def _upstream_errors(item: _Loaded, settings: Settings) -> Iterable[Diagnostic]:
    """In proxy mode (a config with upstreams) every policy must name a configured upstream."""
    if not settings.upstreams:
        return
    policy = item.policy
    known = ", ".join(sorted(settings.upstreams))
    if policy.upstream is None:
        line, column = item.layout.root
        message = "a policy served by the proxy must name its upstream"
        yield Diagnostic(policy.file, line, column, "error", "upstream", message, f"configured upstreams: {known}")
    elif policy.upstream not in settings.upstreams:
        line, column = item.layout.top.get("upstream", item.layout.root)
        message = f"upstream {policy.upstream!r} is not configured in {display_path(settings.file)}"
        yield Diagnostic(policy.file, line, column, "error", "upstream", message, f"configured upstreams: {known}")


def validate(
    files: Sequence[str | Path] = (), *, config: str | Path | None = None, env: Mapping[str, str] | None = None
) -> ValidationReport:
    """Every error and warning in the policy files (and `config`, whose policies are used if `files` is empty).

    Errors: anything the loaders refuse (unknown keys, scopes outside the vocabulary, bad paths...),
    duplicate or ambiguous rules, mounts used twice, policies naming an upstream the config lacks.
    Warnings: rules shadowed by another rule or (with a config) by a path the gateway answers itself,
    public write routes, vocabulary scopes no rule uses.
    """
    out: list[Diagnostic] = []
    settings: Settings | None = None
    checked: list[str] = []
    if config is not None:
        checked.append(str(config))
        try:
            settings = load_settings(config, env)
        except LoadError as exc:
            out.append(Diagnostic.from_error(exc))
    paths = [str(f) for f in files] or list(settings.policies if settings else ())
    checked += paths
    loaded = [item for path in paths if (item := _load(path, out)) is not None]
    loaded = _check_mounts(loaded, out)
    matcher = _compile(loaded, out)
    routes = gateway_routes(settings) if settings is not None else ()
    for item in loaded:
        out += _rule_warnings(item, matcher, routes)
        out += _vocabulary_warnings(item)
        if settings is not None:
            out += _upstream_errors(item, settings)
    order = {file: index for index, file in enumerate(checked)}
    out.sort(key=lambda d: (order.get(d.file, len(order)), d.file, d.line, d.column, d.severity, d.message))
    return ValidationReport(
        files=tuple(checked),
        diagnostics=tuple(out),
        rules=sum(len(item.policy.rules) for item in loaded),
        scopes=len({scope for item in loaded for scope in item.policy.scopes}),
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def render_validation(report: ValidationReport, strict: bool = False) -> str:
    lines = [d.render() for d in report.diagnostics]
    checked = (
        f"{_plural(len(report.files), 'file')}, {_plural(report.rules, 'rule')}, {_plural(report.scopes, 'scope')}"
    )
    verdict = "FAILED" if report.exit_code(strict) else "ok"
    counts = f"{_plural(report.errors, 'error')}, {_plural(report.warnings, 'warning')}"
    lines.append(f"{verdict}: {counts} ({checked})")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- explain


@dataclass(frozen=True, slots=True)
class Explanation:
    """What the gateway would do with (method, target), before any credentials are looked at."""

    method: str
    target: str
    path: str | None = None  # canonical path, None when refused
    refusal: HTTPError | None = None  # 400 or 404 from `Authorizer.route`
    match: Match | None = None
    upstream: str | None = None  # the exact URL (credentials not shown), when the config names the upstream
    upstream_note: str = ""
    served_by: GatewayRoute | None = None
    other_methods: tuple[Rule, ...] = ()
    nearest: tuple[Rule, ...] = ()

    @property
    def answered(self) -> bool:
        """Whether the gateway would serve the request (itself, or by forwarding it)."""
        return self.served_by is not None or (self.match is not None and self.refusal is None)


def explain(method: str, target: str, matcher: Matcher, settings: Settings | None = None) -> Explanation:
    """Which rule matches `method target`, what it requires and where it would be forwarded."""
    raw_path, query = _split_target(target)
    routes = gateway_routes(settings) if settings is not None else ()
    try:
        path, match = offline_authorizer(matcher).route(method, raw_path, query.encode())
    except HTTPError as exc:
        if exc.status != 404:
            return Explanation(method, target, refusal=exc)
        path = canonical_path(raw_path)
        return Explanation(
            method,
            target,
            path=path,
            refusal=exc,
            served_by=_served_by(path, routes),
            other_methods=tuple(rule for rule in matcher.candidates(path) if method not in rule.methods),
            nearest=tuple(matcher.nearest(method, path)),
        )
    explained = Explanation(method, target, path, match=match, served_by=_served_by(path, routes))
    try:
        return _forwarding(explained, match.rule, query, settings)
    except HTTPError as exc:  # the proxy refuses what it cannot forward exactly (e.g. a query with spaces)
        return replace(explained, refusal=exc)


def _forwarding(e: Explanation, rule: Rule, query: str, settings: Settings | None) -> Explanation:
    """Where the proxy sends it: `upstream_url`, on the target the proxy itself computes."""
    if rule.upstream is None:
        return replace(e, upstream_note="none named: in middleware mode the wrapped app answers")
    if settings is None:
        return replace(e, upstream_note="give --config for the exact upstream URL")
    upstream = settings.upstreams.get(rule.upstream)
    if upstream is None:
        note = f"not configured in {display_path(settings.file)}: the gateway refuses to start"
        return replace(e, upstream_note=note)
    assert e.path is not None
    url = upstream_url(URL(upstream.url), rule.mount, e.path, query)
    kind = upstream.credentials.kind
    note = "no credentials added" if kind == "none" else f"{kind} credentials added by the gateway"
    return replace(e, upstream=str(url), upstream_note=note)


def _row(name: str, value: str) -> str:
    return f"  {name + ':':<10} {value}"


def render_explanation(e: Explanation) -> str:
    lines = [f"{e.method} {e.target}"]
    if e.path is not None and e.path != _split_target(e.target)[0]:
        lines.append(_row("canonical", e.path))
    if e.served_by is not None:
        lines.append(_row("served by", f"the gateway itself ({e.served_by.what}); the policy is not consulted"))
    if e.match is not None:
        lines += _explain_match(e, e.match)
    if e.refusal is not None and e.refusal.status != 404:
        lines.append(_row("refused", f"{e.refusal.status} {e.refusal.code}: {e.refusal.message}"))
        lines.append(f"  the gateway answers {e.refusal.status} and forwards nothing")
    elif e.match is None and e.served_by is None:
        lines += _explain_miss(e)
    return "\n".join(lines) + "\n"


def _explain_match(e: Explanation, match: Match) -> list[str]:
    rule = match.rule
    lines = [_row("rule", _label(rule))]
    if rule.description:
        lines.append(_row("about", rule.description))
    lines.append(_row("requires", Requirement.of(rule).sentence()))
    if match.params:
        lines.append(_row("params", ", ".join(f"{name}={value}" for name, value in match.params.items())))
    if e.served_by is not None:
        return [*lines, _row("upstream", f"{rule.upstream or '-'} (not forwarded: the gateway answers itself)")]
    note = f" ({e.upstream_note})" if e.upstream_note else ""
    lines.append(_row("upstream", f"{rule.upstream or '-'}{note}"))
    return lines if e.upstream is None else [*lines, _row("forwards", f"{e.method} {e.upstream}")]


def _explain_miss(e: Explanation) -> list[str]:
    lines = ["  no rule matches: the gateway answers 404 and forwards nothing"]
    if e.other_methods:
        lines.append("  same path, other methods:")
        lines += [f"    {_label(rule)}" for rule in e.other_methods]
    if e.nearest:
        lines.append("  nearest rules:")
        lines += [f"    {_label(rule)}" for rule in e.nearest]
    return lines


# ------------------------------------------------------------------------------------------- check


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Allow or deny, as the gateway decided it."""

    method: str
    target: str
    allowed: bool
    status: int = 200
    code: str = ""
    message: str = ""
    rule: Rule | None = None
    principal: Principal | None = None
    served_by: GatewayRoute | None = None

    def outcome(self) -> str:
        """`allow`, or the status and reason code: `403 insufficient_scope`."""
        return "allow" if self.allowed else f"{self.status} {self.code}"


async def check(
    authorizer: Authorizer,
    method: str,
    target: str,
    *,
    principal: Principal | None = None,
    token: str | None = None,
    settings: Settings | None = None,
) -> CheckResult:
    """Decide `method target` for `principal` (route + decide), or for `token` (the full `authorize`).

    Nothing is forwarded. With neither, the request is anonymous.
    """
    raw_path, query = _split_target(target)
    raw_query = query.encode()
    result = CheckResult(method, target, allowed=False)
    try:
        path, match = authorizer.route(method, raw_path, raw_query)
        result = replace(result, rule=match.rule)
        if settings is not None:
            result = replace(result, served_by=_served_by(path, gateway_routes(settings)))
        if token is not None:
            headers = [(b"authorization", b"Bearer " + token.encode())]
            decision = await authorizer.authorize(method, raw_path, headers, raw_query)
        else:
            decision = authorizer.decide(path, match, principal)
    except HTTPError as exc:
        return replace(result, status=exc.status, code=exc.code, message=exc.message)
    return replace(result, allowed=True, principal=decision.principal)


def render_check(result: CheckResult) -> str:
    """`ALLOW POST /3rdparty/v1/messages (rule policies/smsgate.yaml:12)` or `DENY 403 insufficient_scope: ...`."""
    rule = f" (rule {_where(result.rule)}{', public' if result.rule.public else ''})" if result.rule else ""
    if result.allowed:
        who = result.principal
        subject = f" as {who.subject}" if who is not None and who.subject != CLI_SUBJECT else ""
        line = f"ALLOW {result.method} {result.target}{subject}{rule}"
    else:
        line = f"DENY {result.status} {result.code}: {result.message}{rule}"
    if result.served_by is not None:
        line += (
            f"\nnote: the running gateway answers {result.served_by.shape()} itself ({result.served_by.what});"
            " the policy decision above is not consulted there"
        )
    return line + "\n"


# -------------------------------------------------------------------------------------- policy tests

Expectation = Literal["allow", "deny", 200, 400, 401, 403, 404]
_EXPECTATIONS: tuple[Expectation, ...] = ("allow", "deny", 200, 400, 401, 403, 404)
_REQUEST = re.compile(r"([A-Z][A-Z0-9_-]*)\s+(\S+)")


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
        f"{method} {rule.full_path} ({_where(rule)})"
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


# -------------------------------------------------------------------------------------------- diff

RouteKey = tuple[str, str]  # (method, path template with parameters unnamed: /messages/{})
_PARAM = re.compile(r"\{[^/{}]*\}")


def access_map(policies: Sequence[Policy]) -> dict[RouteKey, tuple[str, Requirement]]:
    """(method, path template) → (the template as written, what it requires), for every rule."""
    routes: dict[RouteKey, tuple[str, Requirement]] = {}
    for policy in policies:
        for rule in policy.rules:
            for method in rule.methods:
                routes[(method, _PARAM.sub("{}", rule.full_path))] = (rule.full_path, Requirement.of(rule))
    return routes


@dataclass(frozen=True, slots=True)
class AccessChange:
    """How access to one (method, path) changed between two policy versions."""

    kind: Literal["added", "removed", "changed"]
    method: str
    path: str
    old: Requirement | None
    new: Requirement | None
    gained: tuple[str, ...] = ()
    lost: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def became_public(self) -> bool:
        return self.new is not None and self.new.public and not (self.old is not None and self.old.public)

    @property
    def marker(self) -> str:
        return "!" if self.became_public else {"added": "+", "removed": "-", "changed": "~"}[self.kind]

    def render(self) -> str:
        head = f"{self.marker} {self.method} {self.path}"
        old, new = self.old, self.new
        if old is None and new is not None:
            return f"{head}  {'public' if new.public else 'requires ' + new.text()}  (new route)"
        if old is not None and new is None:
            return f"{head}  (removed; was {old.text()})"
        assert old is not None
        assert new is not None
        if self.became_public:
            return f"{head}  became public  (was {old.text()})"
        details = [f"gained: {', '.join(self.gained)}"] if self.gained else []
        details += [f"lost: {', '.join(self.lost)}"] if self.lost else []
        details += self.notes
        tail = f"  ({'; '.join(details)})" if details else ""
        return f"{head}  {old.text()} → {new.text()}{tail}"

    def as_json(self) -> dict[str, object]:
        return {
            "change": self.kind,
            "marker": self.marker,
            "method": self.method,
            "path": self.path,
            "became_public": self.became_public,
            "old": None if self.old is None else self.old.as_json(),
            "new": None if self.new is None else self.new.as_json(),
            "gained": list(self.gained),
            "lost": list(self.lost),
            "notes": list(self.notes),
        }


def _compare(old: Requirement, new: Requirement) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(gained, lost, notes): for any-of rules the scopes that now do / no longer grant access."""
    notes: list[str] = []
    if old.public:
        return (), (), ("no longer public",)
    before, after = set(old.scopes), set(new.scopes)
    gained: tuple[str, ...] = ()
    lost: tuple[str, ...] = ()
    # One scope means the same under any_of and all_of: compare it in the other side's mode.
    was = new.mode if len(before) == 1 else old.mode
    now = was if len(after) == 1 else new.mode
    if was == now == "any":
        gained, lost = tuple(sorted(after - before)), tuple(sorted(before - after))
    elif was == now == "all":
        notes += [f"now also requires {', '.join(sorted(after - before))}"] if after - before else []
        notes += [f"no longer requires {', '.join(sorted(before - after))}"] if before - after else []
    elif now == "all":
        notes.append("now requires all of its scopes, not any one")
    else:
        notes.append("now any one of its scopes suffices, not all")
    if old.exact != new.exact:
        notes.append(f"{SUPERUSER} {'no longer satisfies it' if new.exact else 'now satisfies it'}")
    if old.upstream != new.upstream:
        notes.append(f"upstream {old.upstream or '-'} → {new.upstream or '-'}")
    return gained, lost, tuple(notes)


def diff_policies(old: Sequence[Policy], new: Sequence[Policy]) -> list[AccessChange]:
    """Every (method, path) whose access differs, sorted by path then method."""
    before, after = access_map(old), access_map(new)
    changes: list[AccessChange] = []
    for key in sorted(before.keys() | after.keys(), key=lambda k: (k[1], k[0])):
        method = key[0]
        if key not in before:
            path, requirement = after[key]
            changes.append(AccessChange("added", method, path, None, requirement))
        elif key not in after:
            path, requirement = before[key]
            changes.append(AccessChange("removed", method, path, requirement, None))
        elif before[key][1] != after[key][1]:
            (_, was), (path, now) = before[key], after[key]
            gained, lost, notes = _compare(was, now) if not now.public else ((), (), ())
            changes.append(AccessChange("changed", method, path, was, now, gained, lost, notes))
    return changes


def render_diff(changes: Sequence[AccessChange]) -> str:
    if not changes:
        return "no access changes\n"
    counts = {kind: sum(1 for c in changes if c.kind == kind) for kind in ("added", "removed", "changed")}
    public = sum(1 for c in changes if c.became_public)
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    summary += f" ({public} newly public)" if public else ""
    lines = [c.render() for c in changes]
    lines.append(f"{_plural(len(changes), 'change')}: {summary}")
    return "\n".join(lines) + "\n"


def diff_json(changes: Sequence[AccessChange]) -> str:
    return json.dumps([c.as_json() for c in changes], indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------------ matrix

Cell = bool | Literal["public"]


@dataclass(frozen=True, slots=True)
class MatrixRow:
    method: str
    rule: Rule
    cells: tuple[Cell, ...]


@dataclass(frozen=True, slots=True)
class Matrix:
    """Who can do what: one row per (method, route), one column per scope (+ all:any)."""

    scopes: tuple[str, ...]
    rows: tuple[MatrixRow, ...]


def build_matrix(policies: Sequence[Policy]) -> Matrix:
    """A cell is true when that one scope alone satisfies the rule; public rules are `public` everywhere."""
    vocabulary = [scope for policy in policies for scope in policy.scopes]
    scopes = (*dict.fromkeys(vocabulary), SUPERUSER)
    rows = []
    for policy in policies:
        for rule in policy.rules:
            cells: tuple[Cell, ...] = tuple(
                "public" if rule.public else rule.allows(frozenset({scope})) for scope in scopes
            )
            rows += [MatrixRow(method, rule, cells) for method in sorted(rule.methods)]
    return Matrix(scopes, tuple(rows))


def _table(matrix: Matrix, blank: str) -> tuple[list[str], list[list[str]]]:
    header = ["METHOD", "PATH", *matrix.scopes, "REQUIRES"]
    body = [
        [
            row.method,
            row.rule.full_path,
            *("public" if cell == "public" else "✓" if cell else blank for cell in row.cells),
            Requirement.of(row.rule).text(),
        ]
        for row in matrix.rows
    ]
    return header, body


def render_matrix_text(matrix: Matrix) -> str:
    header, body = _table(matrix, "·")
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *body]
    ]
    return "\n".join(lines) + "\n"


def render_matrix_markdown(matrix: Matrix) -> str:
    header, body = _table(matrix, "")
    lines = ["| " + " | ".join(f"`{c}`" if i > 1 and i < len(header) - 1 else c for i, c in enumerate(header)) + " |"]
    lines.append("|" + "|".join([" --- ", " --- "] + [" :-: "] * len(matrix.scopes) + [" --- "]) + "|")
    for row in body:
        cells = [row[0], f"`{row[1]}`", *row[2:-1], f"`{row[-1]}`"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def matrix_json(matrix: Matrix) -> str:
    routes = [
        {
            "method": row.method,
            "path": row.rule.full_path,
            "rule": _where(row.rule),
            "requires": Requirement.of(row.rule).as_json(),
            "cells": dict(zip(matrix.scopes, row.cells, strict=True)),
        }
        for row in matrix.rows
    ]
    return json.dumps({"scopes": list(matrix.scopes), "routes": routes}, indent=2, ensure_ascii=False) + "\n"
