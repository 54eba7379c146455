"""Who is on the other end of a request: the client address (after trusted proxies) and whether it left.

Basic auth limits failed logins per client address and drops argon2 work for clients that hung up; rate
limits can be kept `per: client`. Both read a `Peer`, built from the ASGI scope by `peer_of`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DISCONNECT_EXTENSION", "Network", "Peer", "is_trusted", "peer_of"]

DISCONNECT_EXTENSION = "smsguard.disconnect"  # gateway.web.server.DisconnectSignal, when the server offers it

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Peer:
    """The client's address ("" when unknown) and the server's disconnect signal (anything with `.fired`)."""

    address: str
    signal: Any = None

    def gone(self) -> bool:
        """Whether the client has disconnected (known only under `gateway serve`'s protocol)."""
        return bool(getattr(self.signal, "fired", False))


def is_trusted(address: str, networks: Sequence[Network]) -> bool:
    """Whether `address` (an IP literal; anything else is not) lies inside one of `networks`."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in networks)


def peer_of(scope: Mapping[str, Any], trusted_proxies: Sequence[Network] = ()) -> Peer:
    """The request's Peer: the direct peer, or, when that is a trusted proxy, the rightmost address of
    `X-Forwarded-For` that is not itself a trusted proxy (what the proxies vouch for, nothing the client wrote)."""
    client = scope.get("client")
    address = str(client[0]) if client else ""
    if trusted_proxies and address and is_trusted(address, trusted_proxies):
        chain: list[str] = []
        for name, value in scope.get("headers", ()):
            if name == b"x-forwarded-for":
                chain += [part.strip() for part in value.decode("latin-1").split(",") if part.strip()]
        for hop in reversed(chain):
            address = hop
            if not is_trusted(hop, trusted_proxies):
                break
    extensions = scope.get("extensions") or {}
    return Peer(address, extensions.get(DISCONNECT_EXTENSION))
