"""Reading policy files strictly into frozen rules, every mistake a LoadError with its place and key.

A policy is reviewed by people, so every mistake names file:line:column and the key
(`rules[3].any_of[1]`): unknown keys, scopes outside the file's vocabulary (with a spelling hint),
malformed methods or templates, a public rule that also names scopes, a websocket rule that is not a
plain GET (the handshake is a GET: `{method: GET, path: /ws, scope: events:read, websocket: true}`).
Whether two rules can claim the same request is decided when the rules are compiled (see
`matcher.Matcher`), across all files.

```yaml
upstream: smsgate
mount: /3rdparty/v1
scopes: {messages:send: Send SMS}
rules:
  - {method: POST, path: /messages, scope: messages:send}
```

The gateway wants the first error (it refuses to start); `gateway policy validate` wants them all. So
`read_policy` takes an error collector: given one, a broken rule's error is added to it and the rule
is left out, and reading goes on with the next rule. An error outside the rules (the YAML itself, a
top-level key, the vocabulary) leaves nothing sound to read and is raised either way.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from gateway.errors import BadRequest, LoadError
from gateway.policy.limits import read_limits, read_sms
from gateway.policy.model import KEY_SLOTS, Policy, Rule
from gateway.policy.paths import canonical_path, split_segments
from gateway.policy.scopes import SUPERUSER, is_valid_scope
from gateway.yamlsource import Node, load_file, load_text

__all__ = [
    "METHOD",
    "RULE_KEYS",
    "TOP_LEVEL_KEYS",
    "PolicyRead",
    "load_policies",
    "load_policy",
    "parse_policy",
    "read_policy",
]

METHOD = re.compile(r"[A-Z][A-Z0-9_-]*")  # an HTTP method: uppercase, case-sensitive
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SCOPE_KEYS = ("scope", "any_of", "all_of")
_SCOPE_HINT = "scopes look like resource:action, lowercase, e.g. messages:send"
TOP_LEVEL_KEYS = ("upstream", "mount", "keys", "scopes", "rules", "limits", "sms", "version", "$schema")
RULE_KEYS = (
    "method",
    "methods",
    "path",
    "public",
    "scope",
    "any_of",
    "all_of",
    "exact",
    "websocket",
    "description",
)


@dataclass(frozen=True, slots=True)
class PolicyRead:
    """A policy as read, with where its parts came from."""

    policy: Policy
    mount: Node  # the node the mount comes from (the root when the mount is defaulted)
    rule_indices: tuple[int, ...]  # the position in `rules:` of each rule read (broken rules are left out)


def load_policy(path: str | Path) -> Policy:
    """Read one policy file (rules are checked against each other by `matcher.Matcher`)."""
    return read_policy(load_file(path)).policy


def load_policies(paths: Sequence[str | Path]) -> tuple[Policy, ...]:
    """Read several policy files; each must have its own mount point."""
    policies: list[Policy] = []
    seen: dict[str, Policy] = {}
    for path in paths:
        read = read_policy(load_file(path))
        policy, where = read.policy, read.mount
        other = seen.get(policy.mount)
        if other is not None:
            raise LoadError(
                f"mount {policy.mount or '/'!r} is already used by {other.file}",
                file=policy.file,
                line=where.line,
                column=where.column,
                key="mount",
                hint="give each policy file its own mount, or merge the files",
            )
        seen[policy.mount] = policy
        policies.append(policy)
    return tuple(policies)


def parse_policy(text: str, file: str) -> Policy:
    """Read a policy from text (`file` is only used in error positions and rule labels)."""
    return read_policy(load_text(text, file)).policy


def read_policy(root: Node, errors: list[LoadError] | None = None) -> PolicyRead:
    """Read a composed policy file. With `errors`, a broken rule's error is added there and the rule left out."""
    fields = root.fields()
    schema = fields.get("$schema")
    if schema is not None:
        schema.string()
    version = fields.get("version")
    if version is not None and version.integer() != 1:
        version.fail("unsupported policy version", hint="only version 1 exists")
    upstream_node = fields.get("upstream")
    upstream = None if upstream_node is None else _nonempty(upstream_node)
    mount_node = fields.get("mount")
    mount = "" if mount_node is None else _mount(mount_node)
    keys_node = fields.get("keys")
    keys = None if keys_node is None else _key_slot(keys_node)
    vocabulary = _vocabulary(fields.get("scopes"))
    rules_node = fields.require("rules")
    limits_node, sms_node = fields.get("limits"), fields.get("sms")
    fields.close(hint=f"top-level keys: {', '.join(TOP_LEVEL_KEYS)}")
    rules: list[Rule] = []
    indices: list[int] = []
    for index, node in enumerate(rules_node.items()):
        try:
            rules.append(_rule(node, vocabulary, upstream, mount))
        except LoadError as exc:
            if errors is None:
                raise
            errors.append(exc)
            continue
        indices.append(index)
    limits = read_limits(limits_node, rules)
    sms = read_sms(sms_node, rules)
    policy = Policy(
        file=root.file,
        upstream=upstream,
        mount=mount,
        scopes=MappingProxyType(vocabulary),
        rules=tuple(rules),
        keys=keys,
        limits=limits,
        sms=sms,
    )
    return PolicyRead(policy, mount_node or root, tuple(indices))


def _key_slot(node: Node) -> str:
    slot = node.string()
    if slot not in KEY_SLOTS:
        node.fail(f"unknown key slot {slot!r}", hint="one of: " + ", ".join(KEY_SLOTS))
    return slot


def _nonempty(node: Node) -> str:
    value = node.string()
    if not value.strip():
        node.fail("must not be empty")
    return value


def _mount(node: Node) -> str:
    mount = node.string().rstrip("/")
    if not mount:
        return ""
    if not mount.startswith("/"):
        node.fail("a mount must start with '/'", hint="e.g. /3rdparty/v1")
    if "{" in mount or "}" in mount:
        node.fail("a mount cannot have parameters")
    _canonical_literal(node, mount)
    return mount


def _canonical_literal(node: Node, path: str) -> None:
    try:
        canonical = canonical_path(path)
    except BadRequest as exc:
        node.fail(f"not a canonical path: {exc.message.removeprefix('non-canonical path: ')}")
    if canonical != path:
        node.fail(f"not written canonically: {path!r}", hint=f"write {canonical!r}")


def _vocabulary(node: Node | None) -> dict[str, str]:
    vocabulary: dict[str, str] = {}
    if node is None:
        return vocabulary
    for scope, description in node.entries():
        if scope == SUPERUSER:
            description.fail(f"{SUPERUSER} is built in and cannot be declared", hint="remove it")
        if not is_valid_scope(scope):
            description.fail(f"malformed scope {scope!r}", hint=_SCOPE_HINT)
        vocabulary[scope] = description.string()
    return vocabulary


def _rule(node: Node, vocabulary: Mapping[str, str], upstream: str | None, mount: str) -> Rule:
    fields = node.fields()
    methods = _methods(node, fields.get("method"), fields.get("methods"))
    path = _template(fields.require("path"))
    public_node = fields.get("public")
    public = public_node is not None and public_node.boolean()
    exact_node = fields.get("exact")
    exact = exact_node is not None and exact_node.boolean()
    given = [(key, child) for key in _SCOPE_KEYS if (child := fields.get(key)) is not None]
    description_node = fields.get("description")
    description = "" if description_node is None else description_node.string()
    websocket = _websocket(fields.get("websocket"), methods)
    fields.close(hint=f"rule keys: {', '.join(RULE_KEYS)}")

    scopes: tuple[str, ...] = ()
    mode: Literal["any", "all"] = "any"
    if public:
        if given:
            given[0][1].fail("a public rule takes no scope", hint="drop the scope or `public: true`")
        if exact_node is not None and exact:
            exact_node.fail("`exact` has no meaning on a public rule")
    elif not given:
        node.fail("the rule names no scope", hint="add scope, any_of or all_of (or `public: true`)")
    else:
        if len(given) > 1:
            given[1][1].fail(f"use only one of scope, any_of, all_of (this rule also has {given[0][0]})")
        key, child = given[0]
        if key == "scope":
            scopes = (_scope(child, vocabulary),)
        else:
            scopes = _scope_list(child, vocabulary)
            mode = "all" if key == "all_of" else "any"
    return Rule(
        methods=methods,
        path=path,
        full_path=mount + path,
        public=public,
        exact=exact,
        scopes=scopes,
        mode=mode,
        file=node.file,
        line=node.line,
        description=description,
        upstream=upstream,
        mount=mount,
        websocket=websocket,
    )


def _websocket(node: Node | None, methods: frozenset[str]) -> bool:
    websocket = node is not None and node.boolean()
    if websocket and methods != {"GET"}:
        assert node is not None
        node.fail(
            "a websocket rule covers GET only (the handshake is a GET request)",
            hint="write `method: GET`, and give other methods a rule of their own",
        )
    return websocket


def _methods(rule: Node, one: Node | None, many: Node | None) -> frozenset[str]:
    if one is not None and many is not None:
        many.fail("use either method or methods, not both")
    if one is None and many is None:
        rule.fail("the rule names no method", hint="add method: GET or methods: [PUT, PATCH]")
    if one is not None:
        return frozenset([_method(one)])
    assert many is not None
    items = list(many.items())
    if not items:
        many.fail("must list at least one method")
    methods: set[str] = set()
    for item in items:
        method = _method(item)
        if method in methods:
            item.fail(f"duplicate method {method}")
        methods.add(method)
    return frozenset(methods)


def _method(node: Node) -> str:
    method = node.string()
    if METHOD.fullmatch(method) is None:
        hint = f"methods are case-sensitive: write {method.upper()}" if method.isalpha() else ""
        node.fail(f"malformed method {method!r}", hint=hint or "an uppercase HTTP method such as GET")
    return method


def _template(node: Node) -> str:
    path = node.string()
    if not path.startswith("/"):
        node.fail("a path must start with '/'", hint="paths are relative to the mount, e.g. /messages")
    names: set[str] = set()
    segments = split_segments(path)
    for index, segment in enumerate(segments):
        if not segment and index < len(segments) - 1:
            node.fail("empty segment ('//') in path")
        param = _PARAM.fullmatch(segment)
        if param is not None:
            name = param.group(1)
            if name in names:
                node.fail(f"duplicate parameter {{{name}}}")
            names.add(name)
        elif "{" in segment or "}" in segment:
            node.fail(
                f"malformed parameter segment {segment!r}",
                hint="a parameter is a whole segment named like an identifier, e.g. {id}",
            )
        else:
            _canonical_literal(node, "/" + segment)
    return path


def _scope(node: Node, vocabulary: Mapping[str, str]) -> str:
    scope = node.string()
    if scope == SUPERUSER:
        node.fail(f"{SUPERUSER} is the built-in superuser scope, not a rule scope")
    if not is_valid_scope(scope):
        hint = "use any_of or all_of for several scopes" if " " in scope.strip() else _SCOPE_HINT
        node.fail(f"malformed scope {scope!r}", hint=hint)
    if scope not in vocabulary:
        close = difflib.get_close_matches(scope, list(vocabulary), n=1)
        suggestion = f"; did you mean {close[0]!r}?" if close else ""
        node.fail(
            f"scope {scope!r} is not in the vocabulary",
            hint=f"add it to `scopes:` or fix the spelling{suggestion}",
        )
    return scope


def _scope_list(node: Node, vocabulary: Mapping[str, str]) -> tuple[str, ...]:
    items = list(node.items())
    if not items:
        node.fail("must list at least one scope")
    scopes: list[str] = []
    for item in items:
        scope = _scope(item, vocabulary)
        if scope in scopes:
            item.fail(f"duplicate scope {scope!r}")
        scopes.append(scope)
    return tuple(scopes)
