"""Every failure smsguard reports, in one hierarchy.

    SmsguardError
    ├── LoadError              a config or policy file is wrong (file:line:column, key, hint)
    └── HTTPError              a request is refused; carries status, message and response headers
        ├── BadRequest         400  (non-canonical path, two Authorization headers, bad body)
        ├── Unauthorized       401  (missing or invalid credentials; RFC 6750 challenge)
        ├── Forbidden          403  (insufficient scope; RFC 6750 challenge naming the scope)
        ├── NotFound           404  (no policy rule matches: default deny)
        ├── PayloadTooLarge    413
        ├── TooManyRequests    429  (a rate limit, quota or failed-login limit; Retry-After)
        ├── NotImplementedHTTP 501  (a disabled feature)
        ├── BadGateway         502  (upstream refused, reset or sent garbage)
        ├── ServiceUnavailable 503  (upstream pool exhausted; Retry-After)
        │   └── StoreUnavailable    (the shared store is down, frozen or unreachable)
        └── GatewayTimeout     504

Messages of HTTPError are shown to clients as `{"message": ...}`: they never carry a secret.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BadGateway",
    "BadRequest",
    "Forbidden",
    "GatewayTimeout",
    "HTTPError",
    "LoadError",
    "NotFound",
    "NotImplementedHTTP",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "SmsguardError",
    "StoreUnavailable",
    "TooManyRequests",
    "Unauthorized",
]

REALM = "smsguard"


class SmsguardError(Exception):
    """Base class of every error smsguard raises on purpose."""


class LoadError(SmsguardError):
    """A config or policy file cannot be used; the message names file, line, column and key.

    One LoadError may report several mistakes of the same file (`LoadError.of`): its own attributes are
    the first one's, `errors` lists them all, and `str()` gives one line per mistake, the first one first.
    """

    def __init__(
        self, message: str, *, file: str = "", line: int = 0, column: int = 0, key: str = "", hint: str = ""
    ) -> None:
        self.file = file
        self.line = line
        self.column = column
        self.key = key
        self.hint = hint
        self.reason = message
        self.errors: tuple[LoadError, ...] = (self,)
        where = f"{file}:{line}:{column}: " if file else ""
        what = f"{key}: " if key else ""
        tail = f" (hint: {hint})" if hint else ""
        self.line_text = f"{where}{what}{message}{tail}"
        super().__init__(self.line_text)

    @classmethod
    def of(cls, errors: Sequence[LoadError]) -> LoadError:
        """One error reporting all of `errors` (at least one), in the order given."""
        first = errors[0]
        combined = cls(
            first.reason, file=first.file, line=first.line, column=first.column, key=first.key, hint=first.hint
        )
        combined.errors = tuple(errors)
        combined.args = ("\n".join(error.line_text for error in errors),)
        return combined


class HTTPError(SmsguardError):
    """A refusal with the status and headers the client gets; `code` is a stable reason code for logs."""

    status = 500
    code = "error"

    def __init__(self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})
        self.extra: dict[str, object] = {}  # more fields of the JSON error body, next to "message"


class BadRequest(HTTPError):
    status = 400
    code = "bad_request"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


class Unauthorized(HTTPError):
    """401 with an RFC 6750 challenge; `error="invalid_token"` only when a token was presented."""

    status = 401
    code = "missing_token"

    def __init__(self, message: str, *, code: str = "missing_token", token_presented: bool = False) -> None:
        challenge = f'Bearer realm="{REALM}"'
        if token_presented:
            challenge += f', error="invalid_token", error_description="{_quote(message)}"'
        super().__init__(message, code=code, headers={"www-authenticate": challenge})


class Forbidden(HTTPError):
    """403 insufficient_scope naming the scope(s) the route requires."""

    status = 403
    code = "insufficient_scope"

    def __init__(self, message: str, *, required: str = "", code: str = "insufficient_scope") -> None:
        challenge = f'Bearer realm="{REALM}", error="insufficient_scope"'
        if required:
            challenge += f', scope="{_quote(required)}"'
        super().__init__(message, code=code, headers={"www-authenticate": challenge})


class NotFound(HTTPError):
    status = 404
    code = "no_route"


class PayloadTooLarge(HTTPError):
    status = 413
    code = "body_too_large"


class TooManyRequests(HTTPError):
    status = 429
    code = "rate_limited"

    def __init__(
        self, message: str, *, retry_after_s: int = 1, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, code=code, headers={**(headers or {}), "retry-after": str(max(1, retry_after_s))})


class NotImplementedHTTP(HTTPError):
    status = 501
    code = "disabled"


class BadGateway(HTTPError):
    status = 502
    code = "upstream_error"


class ServiceUnavailable(HTTPError):
    status = 503
    code = "upstream_busy"

    def __init__(self, message: str, *, retry_after_s: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"retry-after": str(retry_after_s)})


class StoreUnavailable(ServiceUnavailable):
    """503: a request needed the token store (revocations, refresh families) and it did not answer in time."""

    code = "store_unavailable"

    def __init__(
        self,
        message: str = "the token store is unavailable; retry shortly",
        *,
        retry_after_s: int = 1,
    ) -> None:
        super().__init__(message, retry_after_s=retry_after_s, code="store_unavailable")


class GatewayTimeout(HTTPError):
    status = 504
    code = "upstream_timeout"
