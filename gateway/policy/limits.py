"""Reading a policy's `limits:` and `sms:` blocks (the loader calls `read_limits` and `read_sms`).

```yaml
limits:
  - {name: sends-per-minute, routes: ["POST /messages"], per: subject, rate: 60/m, burst: 10, cost: requests}
sms:
  send:
    - {route: "POST /messages", recipients: phoneNumbers, text: textMessage.text}
  destinations:
    countries: [US, GB]
    deny_number_types: [PREMIUM_RATE, SHARED_COST, UNKNOWN]
    max_recipients: 100
    prefix_velocity: {limit: 20, window: 1h}
```

A route is written `"METHOD path"` as in the rules of the same file and must name one of them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import cast

from gateway.policy.model import Destinations, Limit, LimitCost, LimitPer, Rule, SendSpec, SmsPolicy
from gateway.policy.rates import parse_rate, parse_window
from gateway.yamlsource import Node

__all__ = ["COSTS", "LIMIT_KEYS", "NUMBER_TYPES", "PER", "read_limits", "read_sms"]

LIMIT_KEYS = ("name", "routes", "per", "rate", "burst", "cost")
PER = ("subject", "token", "client", "issuer")
COSTS = ("requests", "recipients", "segments")
# libphonenumber's PhoneNumberType names
NUMBER_TYPES = (
    "FIXED_LINE",
    "MOBILE",
    "FIXED_LINE_OR_MOBILE",
    "TOLL_FREE",
    "PREMIUM_RATE",
    "SHARED_COST",
    "VOIP",
    "PERSONAL_NUMBER",
    "PAGER",
    "UAN",
    "VOICEMAIL",
    "UNKNOWN",
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_FIELD_PATH = re.compile(r"[A-Za-z_][\w-]*(\[\])?(\.[A-Za-z_][\w-]*(\[\])?)*")
_ROUTE = re.compile(r"([A-Z][A-Z0-9_-]*) +(/\S*)")


def _route(node: Node, rules: Sequence[Rule]) -> tuple[str, str]:
    text = node.string().strip()
    match = _ROUTE.fullmatch(text)
    if match is None:
        node.fail(f"not a route: {text!r}", hint='write "METHOD path" as in the rules, e.g. "POST /messages"')
    method, path = match.group(1), match.group(2)
    if not any(method in rule.methods and rule.path == path for rule in rules):
        node.fail(f"no rule of this policy covers {method} {path}", hint="name a rule's method and path exactly")
    return method, path


def _choice(node: Node | None, choices: tuple[str, ...], default: str) -> str:
    if node is None:
        return default
    value = node.string()
    if value not in choices:
        node.fail(f"unknown value {value!r}", hint="one of: " + ", ".join(choices))
    return value


def _limit(node: Node, rules: Sequence[Rule], seen: set[str]) -> Limit:
    fields = node.fields()
    name_node = fields.require("name")
    name = name_node.string()
    if _NAME.fullmatch(name) is None:
        name_node.fail(
            f"malformed limit name {name!r}", hint="letters, digits, '-', '_' and '.', e.g. sends-per-minute"
        )
    if name in seen:
        name_node.fail(f"limit {name!r} is defined twice")
    routes_node = fields.get("routes")
    routes = tuple(_route(item, rules) for item in routes_node.items()) if routes_node is not None else ()
    per = _choice(fields.get("per"), PER, "subject")
    rate_node = fields.require("rate")
    try:
        rate = parse_rate(rate_node.string())
    except ValueError as exc:
        rate_node.fail(str(exc))
    burst_node = fields.get("burst")
    burst = rate.count if burst_node is None else burst_node.integer(minimum=1)
    cost = _choice(fields.get("cost"), COSTS, "requests")
    fields.close(hint=f"limit keys: {', '.join(LIMIT_KEYS)}")
    return Limit(
        name=name,
        routes=routes,
        per=cast(LimitPer, per),
        rate=rate,
        burst=burst,
        cost=cast(LimitCost, cost),
        line=node.line,
    )


def read_limits(node: Node | None, rules: Sequence[Rule]) -> tuple[Limit, ...]:
    if node is None:
        return ()
    seen: set[str] = set()
    limits: list[Limit] = []
    for item in node.items():
        limit = _limit(item, rules, seen)
        seen.add(limit.name)
        limits.append(limit)
    return tuple(limits)


def _field_path(node: Node) -> str:
    text = node.string().strip()
    if _FIELD_PATH.fullmatch(text) is None:
        node.fail(f"not a field path: {text!r}", hint="a dotted path, e.g. textMessage.text or messages[].destination")
    return text


def _send(node: Node, rules: Sequence[Rule]) -> SendSpec:
    fields = node.fields()
    method, path = _route(fields.require("route"), rules)
    recipients_node = fields.require("recipients")
    if recipients_node.value_or_none() is None:
        recipients = tuple(_field_path(item) for item in recipients_node.items())
    else:
        recipients = (_field_path(recipients_node),)
    if not recipients:
        recipients_node.fail("name at least one field")
    text_node = fields.get("text")
    text = None if text_node is None else _field_path(text_node)
    fields.close(hint="send keys: route, recipients, text")
    return SendSpec(method=method, path=path, recipients=recipients, text=text, line=node.line)


def _countries(node: Node) -> frozenset[str]:
    codes: set[str] = set()
    for item in node.items():
        code = item.string()
        if len(code) != 2 or not code.isascii() or not code.isalpha() or not code.isupper():
            item.fail(f"not an ISO 3166-1 alpha-2 country code: {code!r}", hint="uppercase, e.g. GB, US")
        codes.add(code)
    return frozenset(codes)


def _number_types(node: Node) -> frozenset[str]:
    kinds: set[str] = set()
    for item in node.items():
        kind = item.string()
        if kind not in NUMBER_TYPES:
            item.fail(f"unknown number type {kind!r}", hint="libphonenumber's: " + ", ".join(NUMBER_TYPES))
        kinds.add(kind)
    return frozenset(kinds)


def _velocity(node: Node) -> tuple[int, int]:
    fields = node.fields()
    limit = fields.require("limit").integer(minimum=1)
    window_node = fields.require("window")
    try:
        window = parse_window(window_node.string())
    except ValueError as exc:
        window_node.fail(str(exc))
    fields.close(hint="prefix_velocity keys: limit, window")
    return limit, window


def _destinations(node: Node) -> Destinations:
    fields = node.fields()
    countries = fields.get("countries")
    deny = fields.get("deny_number_types")
    most = fields.get("max_recipients")
    velocity = fields.get("prefix_velocity")
    fields.close(hint="destinations keys: countries, deny_number_types, max_recipients, prefix_velocity")
    return Destinations(
        countries=None if countries is None else _countries(countries),
        deny_number_types=frozenset() if deny is None else _number_types(deny),
        max_recipients=None if most is None else most.integer(minimum=1),
        prefix_velocity=None if velocity is None else _velocity(velocity),
    )


def read_sms(node: Node | None, rules: Sequence[Rule]) -> SmsPolicy | None:
    if node is None:
        return None
    fields = node.fields()
    send_node = fields.get("send")
    destinations = fields.get("destinations")
    fields.close(hint="sms keys: send, destinations")
    send = tuple(_send(item, rules) for item in send_node.items()) if send_node is not None else ()
    return SmsPolicy(send=send, destinations=None if destinations is None else _destinations(destinations))
