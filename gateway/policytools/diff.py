"""`gateway policy diff`: the access change between two policy versions, route by route."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway.policy.model import Policy
from gateway.policy.scopes import SUPERUSER
from gateway.policytools.common import plural, unnamed_template
from gateway.policytools.requirement import Requirement

__all__ = ["AccessChange", "RouteKey", "access_map", "diff_json", "diff_policies", "render_diff"]


RouteKey = tuple[str, str]  # (method, path template with parameters unnamed: /messages/{})


def access_map(policies: Sequence[Policy]) -> dict[RouteKey, tuple[str, Requirement]]:
    """(method, path template) → (the template as written, what it requires), for every rule."""
    routes: dict[RouteKey, tuple[str, Requirement]] = {}
    for policy in policies:
        for rule in policy.rules:
            for method in rule.methods:
                routes[(method, unnamed_template(rule.full_path))] = (rule.full_path, Requirement.of(rule))
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
    if old.websocket != new.websocket:
        notes.append("now allows websocket handshakes" if new.websocket else "no longer allows websocket handshakes")
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
    lines.append(f"{plural(len(changes), 'change')}: {summary}")
    return "\n".join(lines) + "\n"


def diff_json(changes: Sequence[AccessChange]) -> str:
    return json.dumps([c.as_json() for c in changes], indent=2, ensure_ascii=False) + "\n"
