"""Gateway keys in a provider's own slot, on the mounts whose policy says `keys: <provider>`.

    bsg_v1            X-API-KEY: sgk_...
    smsgatewaycenter  apiKey: sgk_...   or   ?userId=<key id>&password=<secret>
                      or   userId/password in an application/x-www-form-urlencoded POST body
    bsg_v2, smsportal (their logins are endpoints: endpoints.py; Basic(key id:secret) works anywhere)

Read only when the request has no `Authorization` header; a form body only when neither the header nor the
query holds the slot, and only up to `form_bytes` (`proxy.retry_buffer_bytes`: a bigger body is a 413, a
multipart one a 400, since neither could be cleaned before forwarding). The guard reads that body through
its `BodyReader` and replays it to the forwarder, which drops `userId`/`password` from it.

A value in the slot that is not a gateway key (the provider's own `live_...` key, say) is a 401: it is
never forwarded. The proxy drops these names
(any spelling of the header) before forwarding, whatever the upstream's credentials are
(`SLOT_HEADERS`, `SLOT_PARAMS`; the parameters from the query and from a form body), so a client key
never reaches a provider.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from gateway.auth.authenticate import Authenticator
from gateway.auth.jwt import Principal
from gateway.errors import BadRequest, PayloadTooLarge, Unauthorized
from gateway.keys.format import KEY_PREFIX
from gateway.policy.model import Policy, Rule

if TYPE_CHECKING:
    from gateway.guard.authorize import BodyReader

__all__ = ["SLOT_HEADERS", "SLOT_PARAMS", "KeySlots", "slot_styles"]

SLOT_HEADERS: Mapping[str, tuple[str, ...]] = {"bsg_v1": ("X-API-KEY",), "smsgatewaycenter": ("apiKey",)}
SLOT_PARAMS: Mapping[str, tuple[str, str]] = {"smsgatewaycenter": ("userId", "password")}
_FORM = b"application/x-www-form-urlencoded"
_MULTIPART = b"multipart/form-data"


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


def _media_type(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The body's media type, lowercased (the last Content-Type, as the forwarder reads it: proxy/params.py)."""
    content_type = b""
    for name, value in headers:
        if name.lower() == b"content-type":
            content_type = value
    return content_type.partition(b";")[0].strip().lower()


def _declared_length(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length when it is plain digits (the forwarder judges framing; this only refuses early)."""
    values = [value.strip() for name, value in headers if name.lower() == b"content-length"]
    return int(values[-1]) if values and values[-1].isdigit() and len(values[-1]) <= 15 else None


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

    def __init__(self, styles: Mapping[str, str], authenticator: Authenticator, *, form_bytes: int = 0) -> None:
        """`styles`: mount → key slot (`slot_styles(policies)`); `form_bytes`: the largest form body read for
        the slot's parameters (`proxy.retry_buffer_bytes`; 0: form bodies are not read)."""
        self.styles = dict(styles)
        self.authenticator = authenticator
        self.form_bytes = form_bytes

    async def __call__(
        self,
        rule: Rule,
        headers: Sequence[tuple[bytes, bytes]],
        query: bytes,
        body: BodyReader | None = None,
    ) -> Principal | None:
        """`body`, when given, reads the request body (the guard replays it to the app)."""
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
        if names is None:
            return None
        pair = _params(query, names) if query else None
        if pair is None and body is not None and self.form_bytes > 0:
            pair = await self._form_params(headers, body, names)
        if pair is None:
            return None
        if not pair[0].startswith(KEY_PREFIX):
            raise _not_a_key(names[0])
        return await self.authenticator.key_pair(*pair)

    async def _form_params(
        self, headers: Sequence[tuple[bytes, bytes]], body: BodyReader, names: tuple[str, str]
    ) -> tuple[str, str] | None:
        """The slot's parameters in a form-encoded body (None for another kind of body, or none of them)."""
        kind = _media_type(headers)
        if kind == _MULTIPART:
            raise BadRequest(
                f"multipart bodies are not forwarded on this mount: send {names[0]}/{names[1]} in an "
                "application/x-www-form-urlencoded body or the query, or the key in the header",
                code="bad_request:multipart",
            )
        if kind != _FORM:
            return None
        length = _declared_length(headers)
        if length is not None and length > self.form_bytes:
            raise self._too_large(names)
        raw = await body(self.form_bytes)
        if raw is None:
            raise self._too_large(names)
        return _params(raw, names)

    def _too_large(self, names: tuple[str, str]) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"a form body larger than {self.form_bytes} bytes is not read for {names[0]}/{names[1]}: "
            "send them in the query, or the key in the header"
        )
