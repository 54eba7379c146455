"""`gateway policy validate`: every error and warning in the policy files, each at file:line:column.

The loader and the matcher are given collectors, so a broken rule is reported and left out and the
rest is still checked (see `validate`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from gateway.config.settings import Settings, load_settings
from gateway.errors import LoadError
from gateway.policy.loader import read_policy
from gateway.policy.matcher import Conflict, Matcher
from gateway.policy.model import Policy, display_path, rule_label
from gateway.policytools.common import Diagnostic, plural
from gateway.policytools.routes import GatewayRoute, gateway_routes, overlap
from gateway.yamlsource import Node, load_file

__all__ = ["SAFE_METHODS", "ValidationReport", "render_validation", "validate"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


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
                message = f"{method} {rule.full_path} is shadowed by {rule_label(found.rule)}"
                yield Diagnostic(rule.file, line, column, "warning", key, message, "remove one of the rules")
        for route in routes:
            reach = overlap(rule.full_path, route)
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
    files: Sequence[str | Path] = (),
    *,
    config: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    placeholders: bool = False,
) -> ValidationReport:
    """Every error and warning in the policy files (and `config`, whose policies are used if `files` is empty).

    Errors: anything the loaders refuse (unknown keys, scopes outside the vocabulary, bad paths...),
    duplicate or ambiguous rules, mounts used twice, policies naming an upstream the config lacks.
    Warnings: rules shadowed by another rule or (with a config) by a path the gateway answers itself,
    public write routes, vocabulary scopes no rule uses. `placeholders`: unset `${VAR}`s of the config stand
    in for their values (`--no-secrets`) instead of being errors.
    """
    out: list[Diagnostic] = []
    settings: Settings | None = None
    checked: list[str] = []
    if config is not None:
        checked.append(str(config))
        try:
            settings = load_settings(config, env, placeholders=placeholders)
        except LoadError as exc:
            out += [Diagnostic.from_error(error) for error in exc.errors]
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


def render_validation(report: ValidationReport, strict: bool = False) -> str:
    lines = [d.render() for d in report.diagnostics]
    checked = f"{plural(len(report.files), 'file')}, {plural(report.rules, 'rule')}, {plural(report.scopes, 'scope')}"
    verdict = "FAILED" if report.exit_code(strict) else "ok"
    counts = f"{plural(report.errors, 'error')}, {plural(report.warnings, 'warning')}"
    lines.append(f"{verdict}: {counts} ({checked})")
    return "\n".join(lines) + "\n"
