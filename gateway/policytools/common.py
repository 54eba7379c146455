"""What the policy tools share: how findings are printed, how policies are loaded and decided offline.

Requests are decided by `Authorizer.route` and `Authorizer.decide` (or `Authorizer.authorize` for a real
token), the very functions the running gateway calls, so a tool cannot disagree with the gateway.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.auth.authenticate import Authenticator
from gateway.auth.jwt import Principal, TokenVerifier
from gateway.errors import LoadError
from gateway.guard.authorize import Authorizer
from gateway.policy.loader import load_policies
from gateway.policy.matcher import Matcher
from gateway.policy.model import Policy, Rule, display_path
from gateway.policy.scopes import split_scope

__all__ = [
    "CLI_SUBJECT",
    "Diagnostic",
    "cli_principal",
    "load_matcher",
    "offline_authorizer",
    "plural",
    "rule_where",
    "split_target",
    "unnamed_template",
]

CLI_SUBJECT = "cli"
_PARAM = re.compile(r"\{[^/{}]*\}")


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
    granted = frozenset(scope for value in scopes for scope in split_scope(value))
    return Principal(CLI_SUBJECT, granted, CLI_SUBJECT, None, None, {}, "access")


def split_target(target: str) -> tuple[str, str]:
    """`/path?query` → (`/path`, `query`)."""
    path, _, query = target.partition("?")
    return path, query


def rule_where(rule: Rule) -> str:
    """`policies/smsgate.yaml:12`: where a rule is written."""
    return f"{display_path(rule.file)}:{rule.line}"


def unnamed_template(template: str) -> str:
    """`/messages/{id}` → `/messages/{}`: templates that differ only in parameter names match the same requests."""
    return _PARAM.sub("{}", template)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
