"""What every upstream credential injector is: the `Credentials` contract and the request it edits.

An injector's `flow` is an async generator shaped like httpx's auth flows: it yields the request to send
with its credentials added, and receives the upstream's status code back. Static injectors
(`credentials.py`) yield once; a token exchange (`exchange.py`) yields a second time after a 401 to ask
for one retry with a fresh token. Both modules build on this one, so neither imports the other's base.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import ClassVar

from gateway.config.credentials import CredentialErrorRule
from gateway.observe.tracing import OFF, Tracer

__all__ = ["RESPONSE_DROP", "Credentials", "OutgoingRequest"]

RESPONSE_DROP = frozenset({b"set-cookie", b"set-cookie2", b"www-authenticate"})


@dataclass(slots=True)
class OutgoingRequest:
    """What the forwarder is about to send; an injector edits it in place and yields it.

    `raw_query` is the client's query string, validated, minus the client's copies of `query_names`;
    `query` (None unless an injector adds parameters) is appended to it, percent-encoded.
    `replayable` is False when the body is streamed: a retry after a 401 is then impossible. `form` is the
    form-encoded body (as latin-1 text, the client's credential parameters already dropped) when the
    upstream takes parameter credentials and the client sent a form; an injector may append to it, and
    the forwarder then sends it, with its own Content-Length, instead of the client's body.
    """

    method: str
    headers: list[tuple[str, str]]
    query: list[tuple[str, str]] | None = None
    raw_query: str = ""
    replayable: bool = True
    form: str | None = None


class Credentials(ABC):
    """One upstream's way of authenticating; see the module docstring for the flow contract.

    `header_names` and `query_names` tell the forwarder what to strip from the client's request (with
    aliases; query names from form bodies too) so the upstream receives exactly one credential, ours;
    `secret_values` feed log redaction; `refused` and `response_drop` are explained where they are set.
    """

    kind: ClassVar[str] = ""
    header_names: frozenset[str] = frozenset()
    query_names: frozenset[str] = frozenset()
    secret_values: tuple[str, ...] = ()
    credential_error: CredentialErrorRule | None = None
    # Upstream statuses that mean "the gateway's own credentials were refused" (the client cannot send any):
    # the forwarder answers them with a 502 `upstream_credentials`, never passes them on as the client's 401.
    refused: frozenset[int] = frozenset({401})
    # Upstream response headers a client must not see: a provider session cookie is bound to the gateway's
    # credentials, a provider's challenge describes the gateway's credential, not the client's.
    response_drop: frozenset[bytes] = RESPONSE_DROP
    # What a preset knows about the credential: its mode ("live", "test") and warnings for the operator,
    # logged at start-up and shown to admin callers of /readyz.
    mode: str = ""
    notices: tuple[str, ...] = ()
    # The app's tracer (set by `build_runtime`): a token exchange's provider login is a CLIENT span.
    tracer: Tracer = OFF

    @abstractmethod
    def flow(self, request: OutgoingRequest) -> AsyncGenerator[OutgoingRequest, int]:
        """Yield `request` with credentials added; receive the upstream status; maybe yield once more."""

    async def aclose(self) -> None:
        """Release what the injector holds (HTTP clients of a token exchange); static ones hold nothing."""
        return None

    def __repr__(self) -> str:
        names = ", ".join(sorted(self.header_names | self.query_names))
        return f"<{type(self).__name__} kind={self.kind!r} injects=[{names}]>"
