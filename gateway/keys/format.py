"""What a gateway API key looks like.

    sgk_live_7Hq2xK9mW3pL0aZb_Xr4...(32)        the whole key: `<key id>_<secret>`
    └─ key id ─────────────┘ └─ secret ─┘

The key id (`sgk_live_` or `sgk_test_` and 16 base62 characters) is public: it names the key in the API,
logs and revocations. The secret (32 base62 characters, 190 bits) is shown once and stored only as an
HMAC-SHA256 under the server's `keys.secret`. Slots that take a user name and a password (SMSPortal's
Basic client id:secret, SMSGatewayCenter's userId/password) take the key id and the secret separately.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass
from typing import Literal

__all__ = ["KEY_PREFIX", "MODES", "KeyParts", "Mode", "key_hash", "new_key", "parse_key", "parse_pair"]

KEY_PREFIX = "sgk_"
Mode = Literal["live", "test"]
MODES: tuple[Mode, ...] = ("live", "test")
_ALPHABET = string.ascii_letters + string.digits
ID_CHARS = 16
SECRET_CHARS = 32
_KEY_ID = re.compile(r"sgk_(live|test)_[A-Za-z0-9]{16}")
_SECRET = re.compile(r"[A-Za-z0-9]{32}")
_KEY = re.compile(r"(sgk_(live|test)_[A-Za-z0-9]{16})_([A-Za-z0-9]{32})")


@dataclass(frozen=True, slots=True)
class KeyParts:
    """A key split into its public id and its secret."""

    key_id: str
    secret: str

    @property
    def mode(self) -> Mode:
        return "test" if self.key_id.startswith("sgk_test_") else "live"

    @property
    def full(self) -> str:
        return f"{self.key_id}_{self.secret}"


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_key(mode: Mode) -> KeyParts:
    """A fresh random key id and secret of `mode`."""
    return KeyParts(f"{KEY_PREFIX}{mode}_{_random(ID_CHARS)}", _random(SECRET_CHARS))


def new_secret(key_id: str) -> KeyParts:
    """A fresh secret for an existing key id (rotation)."""
    return KeyParts(key_id, _random(SECRET_CHARS))


def parse_key(text: str) -> KeyParts | None:
    """The parts of a whole key, None when `text` is not shaped like one."""
    match = _KEY.fullmatch(text)
    return None if match is None else KeyParts(match.group(1), match.group(3))


def parse_pair(key_id: str, secret: str) -> KeyParts | None:
    """A key given as id and secret separately (Basic, userId/password), None when either is malformed."""
    if _KEY_ID.fullmatch(key_id) is None or _SECRET.fullmatch(secret) is None:
        return None
    return KeyParts(key_id, secret)


def is_key_id(text: str) -> bool:
    return _KEY_ID.fullmatch(text) is not None


def key_hash(server_secret: bytes, parts: KeyParts) -> str:
    """The stored form of a secret: HMAC-SHA256 under the server secret, over the key id and the secret."""
    return hmac.new(server_secret, f"{parts.key_id}\0{parts.secret}".encode(), hashlib.sha256).hexdigest()
