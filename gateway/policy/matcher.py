"""Compiled rule matching: (method, canonical path) → the most specific rule, in time independent of
the number of rules.

Rules are indexed by (method, segment count), then by a trie of path segments: each node has a dict
of literal children and at most one parameter child. Matching walks literal children before the
parameter child, so `/messages/inbox/export` beats `/messages/{id}/export`. Because every trie node
is reached by one prefix only, a walk visits each node at most once whatever the request.

Compiling also proves the policy unambiguous: two rules that share a method and can match the same
request must be ordered, one literal at every position where they differ and the other a parameter.
Otherwise (`/a/{x}/c` against `/a/b/{y}`, or the same template twice) loading fails, naming both;
given a list of conflicts to collect into, the matcher adds each `Conflict` there instead, leaves the
later rule out and compiles the rest (so `gateway policy validate` reports every one).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

from gateway.errors import LoadError
from gateway.policy.model import Policy, Rule
from gateway.policy.paths import split_segments

__all__ = ["Conflict", "Match", "Matcher"]


@dataclass(frozen=True, slots=True)
class Match:
    """The rule a request matched and its path parameters (raw, still percent-encoded)."""

    rule: Rule
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class Conflict:
    """Two rules that can claim the same `method` request: `rule`, the later one, and `other`."""

    rule: Rule
    other: Rule
    method: str
    duplicate: bool  # the same template twice; otherwise neither rule is more specific

    @property
    def message(self) -> str:
        rule, other, method = self.rule, self.other, self.method
        if self.duplicate:
            return f"duplicate rule: {rule.label()} and {other.label()} both cover {method} {other.full_path}"
        return (
            f"ambiguous rules: {rule.label()} and {other.label()} can match the same {method} "
            "request and neither is more specific"
        )

    @property
    def hint(self) -> str:
        if self.duplicate:
            return "merge the two rules or remove one"
        return "make one of them literal where the other has a parameter, or split the paths"

    def error(self, key: str) -> LoadError:
        """The LoadError at the later rule; `key` names its path (`rules[3].path`)."""
        return LoadError(self.message, file=self.rule.file, line=self.rule.line, key=key, hint=self.hint)


class _Node:
    __slots__ = ("leaf", "literals", "param", "params")

    def __init__(self) -> None:
        self.literals: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.leaf: Rule | None = None  # set on nodes at full depth only, with:
        self.params: tuple[tuple[int, str], ...] = ()  # (segment index, name) of the leaf's parameters


def _param_name(segment: str) -> str | None:
    """`{id}` → `id`; literal segments are canonical paths, which never contain braces."""
    return segment[1:-1] if segment.startswith("{") else None


class Matcher:
    """All loaded rules, compiled once; raises LoadError if two rules are ambiguous."""

    __slots__ = ("_roots", "_rules")

    def __init__(self, policies: Sequence[Policy], conflicts: list[Conflict] | None = None) -> None:
        """Compile `policies`; a conflict raises its LoadError, or with `conflicts` is added there."""
        rules: list[Rule] = []
        self._roots: dict[tuple[str, int], _Node] = {}
        for policy in policies:
            for index, rule in enumerate(policy.rules):
                template = split_segments(rule.full_path)
                methods = sorted(rule.methods)
                conflict = next(filter(None, (self._conflict(rule, template, m) for m in methods)), None)
                if conflict is not None:
                    if conflicts is None:
                        raise conflict.error(f"rules[{index}].path")
                    conflicts.append(conflict)
                    continue
                for method in methods:
                    _insert(self._roots.setdefault((method, len(template)), _Node()), template, rule)
                rules.append(rule)
        self._rules = tuple(rules)

    def _conflict(self, rule: Rule, template: list[str], method: str) -> Conflict | None:
        root = self._roots.get((method, len(template)))
        return None if root is None else _conflict(root, template, rule, method)

    def rules(self) -> tuple[Rule, ...]:
        """Every compiled rule, in load order (a rule left out for a conflict is not one)."""
        return self._rules

    def match(self, method: str, path: str) -> Match | None:
        """The most specific rule for `method` (case-sensitive) and a canonical `path`, or None."""
        segments = split_segments(path)
        root = self._roots.get((method, len(segments)))
        if root is None:
            return None
        leaf = _walk(root, segments)
        if leaf is None or leaf.leaf is None:
            return None
        return Match(leaf.leaf, {name: segments[index] for index, name in leaf.params})

    def candidates(self, path: str) -> list[Rule]:
        """The rules matching `path` under any method (to tell "wrong method" from "no route")."""
        segments = split_segments(path)
        found: list[Rule] = []
        for (_method, length), root in self._roots.items():
            if length == len(segments) and (leaf := _walk(root, segments)) is not None:
                rule = leaf.leaf
                if rule is not None and rule not in found:
                    found.append(rule)
        return found

    def nearest(self, method: str, path: str, n: int = 3) -> list[Rule]:
        """The `n` rules closest to `path`: longest matching prefix, same method, most similar next segment."""
        segments = split_segments(path)

        def distance(item: tuple[int, Rule]) -> tuple[int, bool, float, int, int]:
            order, rule = item
            template = split_segments(rule.full_path)
            shared = 0
            for want, got in zip(template, segments, strict=False):
                if want != got and not (_param_name(want) and got):
                    break
                shared += 1
            similar = 0.0
            if shared < min(len(template), len(segments)):
                similar = SequenceMatcher(None, template[shared], segments[shared]).ratio()
            lengths = abs(len(template) - len(segments))
            return (-shared, method not in rule.methods, -similar, lengths, order)

        return [rule for _, rule in heapq.nsmallest(n, enumerate(self._rules), key=distance)]


def _walk(root: _Node, segments: list[str]) -> _Node | None:
    """Depth-first, literal child before parameter child; parameters never match an empty segment.

    Descends greedily and keeps the parameter alternatives on a stack for backtracking, so the
    common case (no dead end) allocates nothing.
    """
    depth = len(segments)
    pending: list[tuple[_Node, int]] = []
    node, index = root, 0
    while True:
        if index == depth:
            return node
        segment = segments[index]
        child = node.literals.get(segment)
        param = node.param if segment else None
        if child is not None:
            if param is not None:
                pending.append((param, index + 1))
            node, index = child, index + 1
        elif param is not None:
            node, index = param, index + 1
        elif pending:
            node, index = pending.pop()
        else:
            return None


def _insert(root: _Node, template: list[str], rule: Rule) -> None:
    node = root
    for segment in template:
        if _param_name(segment) is not None:
            if node.param is None:
                node.param = _Node()
            node = node.param
        else:
            node = node.literals.setdefault(segment, _Node())
    node.leaf = rule
    node.params = tuple((index, name) for index, segment in enumerate(template) if (name := _param_name(segment)))


def _conflict(root: _Node, template: list[str], rule: Rule, method: str) -> Conflict | None:
    """The first rule `rule` would conflict with: one that can match a request `rule` matches without
    either being more specific.

    Walks only the trie branches that can match a request together with `template`, tracking whether
    the new rule has been more literal (`wins`) or less literal (`loses`) than the branch so far.
    """
    for other, wins, loses in _overlaps(root, template):
        if wins != loses:
            continue
        return Conflict(rule, other, method, duplicate=not wins)
    return None


def _overlaps(root: _Node, template: list[str]) -> Iterator[tuple[Rule, bool, bool]]:
    stack = [(root, 0, False, False)]
    while stack:
        node, index, wins, loses = stack.pop()
        if index == len(template):
            if node.leaf is not None:
                yield node.leaf, wins, loses
            continue
        segment = template[index]
        if _param_name(segment) is not None:
            if node.param is not None:
                stack.append((node.param, index + 1, wins, loses))
            # a parameter never matches the empty last segment of a trailing slash
            stack.extend((child, index + 1, wins, True) for literal, child in node.literals.items() if literal)
        else:
            same = node.literals.get(segment)
            if same is not None:
                stack.append((same, index + 1, wins, loses))
            if node.param is not None and segment:
                stack.append((node.param, index + 1, True, loses))
