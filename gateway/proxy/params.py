"""Request parameters where credentials may hide: the query string and form-encoded bodies.

An upstream whose credentials are parameters (SMSGatewayCenter's `userId`/`password`) reads them from the
query and from an `application/x-www-form-urlencoded` body alike, so the client's copies are dropped from
both (`drop_params`, names compared decoded and without case, `;` read as a separator as well as `&`).
A multipart body cannot be cleaned without re-encoding it: such upstreams refuse it (`form_kind`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal
from urllib.parse import quote, unquote_plus, urlencode

__all__ = ["append_params", "drop_params", "form_kind", "param_names"]

_SEPARATOR = re.compile(r"([&;])")
_FORM = "application/x-www-form-urlencoded"
_MULTIPART = "multipart/form-data"


def _name(param: str) -> str:
    return unquote_plus(param.partition("=")[0]).lower()


def drop_params(raw: str, names: frozenset[str]) -> str:
    """`raw` (a query or form body) without parameters whose decoded, lowercased name is in `names`.

    `;` separates parameters as well as `&` (W3C's old advice, and what some servers still honour), so
    `x=1;apiKey=evil` loses `apiKey`; the kept parameters keep their bytes and the separators they had.
    """
    if not raw or not names:
        return raw
    pieces = _SEPARATOR.split(raw)  # [param, separator, param, separator, param, ...]
    kept: list[str] = []
    for index in range(0, len(pieces), 2):
        param = pieces[index]
        if _name(param) in names:
            continue
        if kept:
            kept.append(pieces[index - 1])
        kept.append(param)
    return "".join(kept)


def param_names(raw: str) -> frozenset[str]:
    """The decoded, lowercased names of the parameters in `raw` (empty pieces skipped)."""
    return frozenset(_name(param) for param in _SEPARATOR.split(raw)[::2] if param)


def append_params(raw: str, params: Iterable[tuple[str, str]]) -> str:
    """`raw` with `params` appended, percent-encoded (nothing left unescaped)."""
    added = urlencode(list(params), quote_via=quote, safe="")
    if not added:
        return raw
    return f"{raw}&{added}" if raw else added


def form_kind(headers: Sequence[tuple[str, str]]) -> Literal["form", "multipart", None]:
    """Whether the request's body is form-encoded, multipart, or something else (its last Content-Type)."""
    content_type = ""
    for name, value in headers:
        if name.lower() == "content-type":
            content_type = value
    media = content_type.partition(";")[0].strip().lower()
    if media == _FORM:
        return "form"
    if media == _MULTIPART:
        return "multipart"
    return None
