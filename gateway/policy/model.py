"""The policy model: frozen rules and policies, as `gateway.policy.loader` reads them from YAML.

A `Rule` says which methods and path template it covers (and, with `websocket`, that a websocket
handshake may open there) and which scopes it requires; a `Policy` is one
file's upstream, mount, scope vocabulary and rules. Whether two rules can claim the same request is
decided when the rules are compiled (see `gateway.policy.matcher.Matcher`), across all files.

`display_path` and `rule_label` name files and rules in messages, logs and tool output.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.policy.rates import Rate
from gateway.policy.scopes import satisfies

__all__ = ["Destinations", "Limit", "Policy", "Rule", "SendSpec", "SmsPolicy", "display_path", "rule_label"]

LimitPer = Literal["subject", "token", "client", "issuer"]
LimitCost = Literal["requests", "recipients", "segments"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Limit:
    """A rate limit (`limits:` in a policy): `rate` units per period with a `burst`, kept `per` caller."""

    name: str
    routes: tuple[tuple[str, str], ...]  # (METHOD, path as in rules); () = every rule of the policy
    per: LimitPer
    rate: Rate
    burst: int
    cost: LimitCost = "requests"
    line: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SendSpec:
    """Where a send request keeps its recipients and text: dotted paths (JSON) or parameter names (forms)."""

    method: str
    path: str
    recipients: tuple[str, ...]
    text: str | None = None
    line: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Destinations:
    """Who may be sent to: countries (None = any), number types refused, recipients per request, prefix velocity."""

    countries: frozenset[str] | None = None
    deny_number_types: frozenset[str] = frozenset()
    max_recipients: int | None = None
    prefix_velocity: tuple[int, int] | None = None  # (recipients, window seconds) per number prefix, all callers


@dataclass(frozen=True, slots=True, kw_only=True)
class SmsPolicy:
    """A policy's `sms:` block."""

    send: tuple[SendSpec, ...] = ()
    destinations: Destinations | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One policy rule: the methods and path template it covers and what it requires."""

    methods: frozenset[str]
    path: str
    full_path: str
    public: bool = False
    exact: bool = False
    scopes: tuple[str, ...] = ()
    mode: Literal["any", "all"] = "any"
    file: str = ""
    line: int = 0
    description: str = ""
    upstream: str | None = None
    mount: str = ""
    websocket: bool = False  # a GET rule that also allows the websocket handshake on its path

    def allows(self, granted: frozenset[str]) -> bool:
        """Whether a caller holding `granted` may pass; public rules let anyone through."""
        return self.public or satisfies(granted, self.scopes, self.mode, self.exact)

    @property
    def required_text(self) -> str:
        """The required scopes, space-separated, for the 403 `scope="..."` challenge."""
        return " ".join(self.scopes)

    def label(self, file: str | None = None) -> str:
        """`POST /3rdparty/v1/messages (policies/smsgate.yaml:12)`, for errors and explanations.

        The file is named as the rule was loaded from it, or as `file` when given (see `rule_label`).
        """
        return f"{','.join(sorted(self.methods))} {self.full_path} ({self.file if file is None else file}:{self.line})"


@dataclass(frozen=True, slots=True)
class Policy:
    """One policy file: its upstream, mount point, scope vocabulary and rules in file order."""

    file: str
    upstream: str | None
    mount: str
    scopes: Mapping[str, str]
    rules: tuple[Rule, ...]
    keys: str | None = None  # the provider slot gateway keys are read from on this mount (KEY_SLOTS)
    limits: tuple[Limit, ...] = ()
    sms: SmsPolicy | None = None


# `keys:` in a policy: where gateway API keys are accepted besides `Authorization: Bearer sgk_...`.
KEY_SLOTS: dict[str, str] = {
    "bsg_v1": "the X-API-KEY header; refusals in BSG's error shape",
    "bsg_v2": "POST {mount}/auth/login {api_key} and POST {mount}/auth/refresh answer BSG's {bearer}",
    "smsportal": "GET {mount}/Authentication with Basic(key id:secret) answers SMSPortal's token",
    "smsgatewaycenter": "the apiKey header or userId/password query parameters; {mount}/rest/regenerateAPIKey "
    "rotates the caller's own key",
}


def display_path(file: str) -> str:
    """`file` relative to the working directory when it lies below it (absolute paths come from configs)."""
    path = Path(os.path.normpath(file))
    if not path.is_absolute():
        return str(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def rule_label(rule: Rule) -> str:
    """The rule's label with its file as `display_path` shows it: `POST /3rdparty/v1/messages (policies/x.yaml:34)`."""
    return rule.label(display_path(rule.file))
