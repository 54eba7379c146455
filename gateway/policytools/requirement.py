"""What a rule requires, normalized so two policy versions compare: `public`, `any_of[a, b]`, `all_of[...]`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.policy.model import Rule
from gateway.policy.scopes import SUPERUSER

__all__ = ["Requirement"]


@dataclass(frozen=True, slots=True)
class Requirement:
    """What one (method, path) requires, normalized for comparison: one scope is always mode `any`."""

    public: bool
    scopes: tuple[str, ...] = ()
    mode: Literal["any", "all"] = "any"
    exact: bool = False
    upstream: str | None = None
    websocket: bool = False  # a websocket handshake may open (embedded guard only)

    @classmethod
    def of(cls, rule: Rule) -> Requirement:
        if rule.public:
            return cls(public=True, upstream=rule.upstream, websocket=rule.websocket)
        mode = "any" if len(rule.scopes) == 1 else rule.mode
        return cls(False, tuple(sorted(rule.scopes)), mode, rule.exact, rule.upstream, rule.websocket)

    def text(self) -> str:
        """`public`, `messages:send`, `any_of[a, b]`, `all_of[a, b]`, with ` (exact)` and ` (+websocket)`."""
        if self.public:
            text = "public"
        else:
            text = self.scopes[0] if len(self.scopes) == 1 else f"{self.mode}_of[{', '.join(self.scopes)}]"
            text = f"{text} (exact)" if self.exact else text
        return f"{text} (+websocket)" if self.websocket else text

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
        found: dict[str, object] = {
            "public": self.public,
            "scopes": list(self.scopes),
            "mode": self.mode,
            "exact": self.exact,
            "upstream": self.upstream,
        }
        if self.websocket:  # only when set: documents of policies without websocket rules are unchanged
            found["websocket"] = True
        return found
