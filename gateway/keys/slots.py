"""Gateway keys in a provider's own slot, on the mounts whose policy says `keys: <provider>`.

    bsg_v1            X-API-KEY: sgk_...
    smsgatewaycenter  apiKey: sgk_...   or   ?userId=<key id>&password=<secret>
    bsg_v2, smsportal (their logins are endpoints: endpoints.py; Basic(key id:secret) works anywhere)

Read only when the request has no `Authorization` header. A value in the slot that is not a gateway key
(the provider's own `live_...` key, say) is a 401: it is never forwarded. The proxy drops these names
(any spelling of the header) before forwarding, whatever the upstream's credentials are
(`SLOT_HEADERS`, `SLOT_PARAMS`), so a client key never reaches a provider.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import parse_qsl

from gateway.auth.authenticate import Authenticator
from gateway.auth.jwt import Principal
from gateway.errors import BadRequest, Unauthorized
from gateway.keys.format import KEY_PREFIX
from gateway.policy.model import Policy, Rule

__all__ = ["SLOT_HEADERS", "SLOT_PARAMS", "KeySlots", "slot_styles"]

SLOT_HEADERS: Mapping[str, tuple[str, ...]] = {"bsg_v1": ("X-API-KEY",), "smsgatewaycenter": ("apiKey",)}
SLOT_PARAMS: Mapping[str, tuple[str, str]] = {"smsgatewaycenter": ("userId", "password")}


def slot_styles(policies: Sequence[Policy]) -> dict[str, str]:
    """mount → the policy's key slot, for the policies that enable one."""
    return {policy.mount: policy.keys for policy in policies if policy.keys}


def _not_a_key(where: str) -> Unauthorized:
    return Unauthorized(
        f"{where} must hold a gateway key (sgk_...) on this mount; the provider's credentials are the gateway's",
        code="invalid_key:not_a_key",
        token_presented=True,
    )


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    found: bytes | None = None
    for key, value in headers:
        if key.lower() == name:
            if found is not None:
                raise BadRequest(f"more than one {name.decode()} header", code="bad_request:duplicate_key")
            found = value
    return None if found is None else found.decode("latin-1").strip()


def _params(query: bytes, names: tuple[str, str]) -> tuple[str, str] | None:
    try:
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    except ValueError:
        return None
    found = [value for name, value in pairs if name in names]
    values = dict((name, value) for name, value in pairs if name in names)
    if not values:
        return None
    if len(found) != len(values) or set(values) != set(names):
        raise Unauthorized(
            f"give {names[0]} (the key id) and {names[1]} (the secret) once each",
            code="invalid_key:malformed",
            token_presented=True,
        )
    return values[names[0]], values[names[1]]


class KeySlots:
    """The Authorizer's `slot`: the principal of a gateway key in the rule's provider slot, None without one."""

    def __init__(self, styles: Mapping[str, str], authenticator: Authenticator) -> None:
        """`styles`: mount → key slot (`slot_styles(policies)`)."""
        self.styles = dict(styles)
        self.authenticator = authenticator

    async def __call__(self, rule: Rule, headers: Sequence[tuple[bytes, bytes]], query: bytes) -> Principal | None:
        style = self.styles.get(rule.mount)
        if style is None:
            return None
        for name in SLOT_HEADERS.get(style, ()):
            value = _header(headers, name.lower().encode())
            if value is not None:
                if not value.startswith(KEY_PREFIX):
                    raise _not_a_key(name)
                return await self.authenticator.key(value)
        names = SLOT_PARAMS.get(style)
        if names is not None and query:
            pair = _params(query, names)
            if pair is not None:
                if not pair[0].startswith(KEY_PREFIX):
                    raise _not_a_key(names[0])
                return await self.authenticator.key_pair(*pair)
        return None
