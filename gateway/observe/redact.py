"""Redaction: the safety net every log event passes through, and the JSON spelling the logs share.

`Redactor` masks values under sensitive keys (authorization, cookie, password, token, api_key, ... and
every configured credential header and query name), replaces every configured secret value wherever it
occurs inside a string, and turns anything shaped like a JWT into `jwt:<first 8 hex of its sha256>`
(`fingerprint`), so a token can be correlated, never reused. The JSON format takes a cheap path
(`Redactor.json_line`: key names checked once, the rendered line searched as a whole, the thorough pass
only when something is found); the other sinks always run the thorough pass (`Redactor.__call__`).
`json_string` is how the JSON format writes a string (the access line's direct renderer uses it too).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from urllib.parse import quote

from structlog.typing import EventDict, WrappedLogger

__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "SENSITIVE_KEYS", "Redactor", "fingerprint", "json_string"]

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 4  # shorter values are not searched for (they would mangle every line); keys still mask them
SENSITIVE_KEYS = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "bearer",
        "api_key",
        "apikey",
        "x_api_key",
        "credentials",
    }
)
_SENSITIVE_SUFFIXES = ("password", "secret", "_token", "api_key", "apikey")
# A JWS/JWT: a base64url JSON header (always `eyJ`), a payload, and a signature (possibly stripped).
_JWT = r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}(?:\.[A-Za-z0-9_-]*)?"
_SCALARS = (int, float, bool, type(None))


def _json_encoder() -> Callable[[object], str]:
    """`json.dumps(obj, default=str)` (ensure_ascii), with the C encoder built once instead of per call."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C speedups (another Python implementation)
        return json.JSONEncoder(default=str).encode
    encoder = make(None, str, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True)

    def encode(obj: object) -> str:
        return "".join(encoder(obj, 0))

    return encode


_encode = _json_encoder()
json_string: Callable[[str], str] = json.encoder.encode_basestring_ascii  # a str as the JSON format writes it


def fingerprint(token: str) -> str:
    """`jwt:<8 hex>`: the first 8 hex digits of the token's sha256, enough to correlate, useless to replay."""
    return "jwt:" + hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _normal_key(key: str) -> str:
    return key.lower().replace("-", "_").replace(".", "_")


class Redactor:
    """A structlog processor that removes secrets from an event dict (see the module docstring).

    `add` teaches it more secret values and sensitive names (a reload can bring new credentials); it
    never forgets any, since the previous version's requests may still be logging.
    """

    def __init__(self, secrets: Iterable[str] = (), names: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._keys: set[str] = set(SENSITIVE_KEYS)
        self._verdicts: dict[str, bool] = {}
        self._safe_keys: set[str] = set()
        self._line_secrets: tuple[str, ...] = ()
        self._pattern = re.compile(_JWT)
        self.generation = 0  # bumped by `add`: whoever caches a verdict of this redactor knows it is stale
        self.add(secrets, names)

    def add(self, secrets: Iterable[str] = (), names: Iterable[str] = ()) -> None:
        for secret in secrets:
            if len(secret) >= MIN_SECRET_LENGTH:
                self._secrets.add(secret)
                encoded = quote(secret, safe="")
                if encoded != secret:
                    self._secrets.add(encoded)  # as it appears in a query string or a form body
        self._keys.update(_normal_key(name) for name in names)
        self._verdicts = {}
        self._safe_keys = set()
        escaped = {json.dumps(secret)[1:-1] for secret in self._secrets}  # as JSON writes them
        self._line_secrets = tuple(sorted(self._secrets | escaped))
        alternatives = "".join("|" + re.escape(s) for s in sorted(self._secrets, key=len, reverse=True))
        self._pattern = re.compile(_JWT + alternatives)
        self.generation += 1

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        """The thorough pass: every key checked, every string searched (sinks that keep the dict use it)."""
        result: EventDict = {"event": None}  # the event name first in every rendered line
        for key, value in event_dict.items():
            result[key] = self._field(key, value)
        if "event" not in event_dict:
            del result["event"]
        return result

    def json_line(self, event_dict: EventDict) -> str:
        """The event as one redacted JSON line, cheaply in the common case.

        Keys are checked against the sensitive names (each key name once: safe ones are remembered);
        then the line is rendered and searched as a whole for `eyJ` (a JWT) and every secret (also in
        its JSON-escaped spelling); only when something is found, or the event nests objects, is the
        event rendered again from the thorough pass.
        """
        event = {"event": event_dict.pop("event", None), **event_dict}
        if not self._safe_keys.issuperset(event):
            for key in event.keys() - self._safe_keys:
                if self.sensitive(key):
                    value = event[key]
                    if value is not None and value != "":
                        event[key] = REDACTED
                elif len(self._safe_keys) < 4096:
                    self._safe_keys.add(key)
        line = _encode(event)
        if '": {' in line or "[{" in line or self.dirty(line):
            line = _encode(self(None, "", event))
        return line

    def dirty(self, text: str) -> bool:
        """Whether `text` (a rendered line) may hold a token or a secret, in its raw or JSON-escaped spelling."""
        if "eyJ" in text:
            return True
        for secret in self._line_secrets:  # noqa: SIM110 (a plain loop: cheaper than any() on the hot path)
            if secret in text:
                return True
        return False

    def sensitive(self, key: str) -> bool:
        """Whether values under `key` are masked whole (case, `-` and `.` do not matter)."""
        verdict = self._verdicts.get(key)
        if verdict is None:
            normal = _normal_key(key)
            verdict = normal in self._keys or normal.endswith(_SENSITIVE_SUFFIXES)
            if len(self._verdicts) > 4096:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict

    def _field(self, key: object, value: object) -> object:
        if value == REDACTED:
            return value
        if isinstance(key, str) and value is not None and value != "" and self.sensitive(key):
            return REDACTED
        return self.scrub(value)

    def scrub(self, value: object) -> object:
        """`value` with secrets and tokens replaced, recursing into dicts, lists and tuples."""
        if isinstance(value, str):
            return self._pattern.sub(self._replace, value)
        if isinstance(value, _SCALARS):
            return value
        if isinstance(value, dict):
            return {key: self._field(key, item) for key, item in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.scrub(item) for item in value]
        if isinstance(value, bytes):
            return self.scrub(value.decode("latin-1"))
        return self.scrub(str(value))  # as the JSON format prints it (str), which may carry a secret

    @staticmethod
    def _replace(match: re.Match[str]) -> str:
        text = match.group(0)
        return fingerprint(text) if text.startswith("eyJ") and "." in text else REDACTED
