"""Reading a send request the way its provider will: recipients, text, SMS parts, destinations.

`extract` finds the recipients and texts where the policy's `sms.send` says (dotted paths into a JSON
body, `messages[].destination` for arrays of objects; a parameter name for a form body or a query
string; a comma-separated value is split). `segments` counts SMS parts: GSM-7 (160 septets, 153 per part
when concatenated, extension characters count two) or UCS-2 (70 UTF-16 units, 67 per part).
`check_destinations` parses every recipient with libphonenumber (`phonenumbers`) and refuses the whole
request if any one is unparseable, in a country not allowed, of a refused number type, or if there are
too many; a bare run of digits is read as an international number without its `+` (BSG's format).
Numbers in errors and logs are masked (`mask`): country code and the last two digits.

phonenumbers is imported on first use, never at import: its metadata is megabytes a worker whose policies
limit no destinations would carry for nothing (bench/MEMORY.md; tests/test_serve_imports.py checks it).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from gateway.errors import BadRequest, Forbidden
from gateway.policy.model import Destinations, SendSpec

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["Recipient", "RecipientCache", "SendRequest", "check_destinations", "extract", "mask", "segments"]

_GSM7 = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")
_FORM = re.compile(r"\s*application/x-www-form-urlencoded\s*(;.*)?", re.IGNORECASE | re.DOTALL)
MAX_DEPTH = 32


def _phonenumbers() -> ModuleType:
    """libphonenumber, loaded when a number is first parsed (not by workers that never parse one)."""
    import phonenumbers

    return phonenumbers


@functools.cache
def _type_names() -> dict[int, str]:
    """libphonenumber's number types by value: `{1: "MOBILE", ...}`."""
    kinds = _phonenumbers().PhoneNumberType
    return {getattr(kinds, name): name for name in dir(kinds) if name.isupper()}


def segments(text: str) -> int:
    """SMS parts for `text`: GSM-7 160/153 septets, else UCS-2 70/67 UTF-16 code units; at least 1."""
    if all(char in _GSM7 or char in _GSM7_EXTENSION for char in text):
        septets = sum(2 if char in _GSM7_EXTENSION else 1 for char in text)
        return 1 if septets <= 160 else math.ceil(septets / 153)
    units = len(text.encode("utf-16-le")) // 2
    return 1 if units <= 70 else math.ceil(units / 67)


def mask(number: str) -> str:
    """`+447700900123` → `+44*******23`: the country code and the last two digits, never the rest."""
    digits = re.sub(r"\D", "", number)
    phonenumbers = _phonenumbers()
    try:
        code = str(phonenumbers.parse(_international(number), None).country_code)
    except phonenumbers.NumberParseException:
        code = ""
    if len(digits) <= len(code) + 2:
        return "+" + "*" * len(digits) if digits else "*"
    return "+" + code + "*" * (len(digits) - len(code) - 2) + digits[-2:]


@dataclass(frozen=True, slots=True)
class SendRequest:
    """What a send request asks: its recipients as written, and its texts (one per message when paired)."""

    recipients: tuple[str, ...]
    texts: tuple[str, ...]

    def segments(self) -> int:
        """Parts the provider will send: per recipient when texts pair with recipients, else the text times each."""
        if not self.texts:
            return len(self.recipients)
        if len(self.texts) == len(self.recipients):
            return sum(segments(text) for text in self.texts)
        return max(segments(text) for text in self.texts) * len(self.recipients)


def _walk(value: object, parts: Sequence[str], depth: int = 0) -> Iterator[object]:
    """The values at a dotted path; `name[]` walks every element of the list at `name`."""
    if depth > MAX_DEPTH:
        raise BadRequest("the request body is nested too deeply", code="bad_body:depth")
    if not parts:
        yield value
        return
    head, rest = parts[0], parts[1:]
    many = head.endswith("[]")
    name = head[:-2] if many else head
    if not isinstance(value, Mapping) or name not in value:
        return
    found = value[name]
    if not many:
        yield from _walk(found, rest, depth + 1)
        return
    if not isinstance(found, list):
        raise BadRequest(f"{name} must be a list", code="bad_body:shape")
    for item in found:
        yield from _walk(item, rest, depth + 1)


def _strings(values: Iterator[object], what: str) -> list[str]:
    out: list[str] = []
    for value in values:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, str | int) or isinstance(item, bool):
                raise BadRequest(f"every {what} must be a string", code="bad_body:shape")
            out += [part.strip() for part in str(item).split(",") if part.strip()]
    return out


def _json_fields(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("the send request body is not JSON", code="bad_body:json") from None


def extract(spec: SendSpec, content_type: str, body: bytes, query: bytes) -> SendRequest:
    """The recipients and texts of a send request; 400 when the body cannot be read as configured, or names none."""
    if _FORM.fullmatch(content_type) or not body.strip():
        try:
            pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
            pairs += parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("the send request's form is malformed", code="bad_body:form") from None
        recipients = _strings(iter(value for name, value in pairs if name in spec.recipients), "recipient")
        texts = [value for name, value in pairs if name == spec.text] if spec.text else []
    else:
        document = _json_fields(body)
        recipients = []
        for path in spec.recipients:
            recipients += _strings(_walk(document, path.split(".")), "recipient")
        texts = _strings_or_text(document, spec.text)
    if not recipients:
        raise BadRequest("the send request names no recipient where the policy says", code="bad_body:no_recipients")
    return SendRequest(tuple(recipients), tuple(texts))


def _strings_or_text(document: object, path: str | None) -> list[str]:
    if path is None:
        return []
    texts: list[str] = []
    for value in _walk(document, path.split(".")):
        if not isinstance(value, str):
            raise BadRequest("the message text must be a string", code="bad_body:shape")
        texts.append(value)
    return texts


@dataclass(frozen=True, slots=True)
class Recipient:
    """A parsed recipient: E.164, its country (ISO 3166-1 alpha-2) and its libphonenumber type name."""

    e164: str
    country: str
    kind: str


def _international(number: str) -> str:
    """`380661231231` → `+380661231231`: BSG (and others) write international numbers without the `+`.

    Only a bare run of digits is read so; a national number written that way (`07700900123`) is then
    not a possible number and is refused, never guessed into a country."""
    return "+" + number if number.isdigit() else number


def _parse(number: str) -> Recipient | None:
    phonenumbers = _phonenumbers()
    try:
        parsed = phonenumbers.parse(_international(number), None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    country = phonenumbers.region_code_for_number(parsed) or phonenumbers.region_code_for_country_code(
        parsed.country_code or 0
    )
    kind = _type_names().get(phonenumbers.number_type(parsed), "UNKNOWN")
    return Recipient(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), country, kind)


class RecipientCache:
    """Recipients parsed before, by number as written (at most `size`, the oldest dropped first).

    libphonenumber's parse, type and region lookups cost ~30 µs a number, more than the rest of a limited
    request; a sender repeats its numbers, and a number's country and type do not change while the
    process runs. One cache per limiter (per policy version), never global."""

    __slots__ = ("_parsed", "_size")

    def __init__(self, size: int = 4096) -> None:
        self._parsed: dict[str, Recipient | None] = {}
        self._size = size

    def parse(self, number: str) -> Recipient | None:
        try:
            return self._parsed[number]
        except KeyError:
            pass
        recipient = _parse(number)
        if len(self._parsed) >= self._size:
            del self._parsed[next(iter(self._parsed))]
        self._parsed[number] = recipient
        return recipient


def _refuse(message: str, numbers: Sequence[str], reason: str) -> Forbidden:
    error = Forbidden(message, code=f"destination_not_allowed:{reason}")
    error.extra = {"code": "destination_not_allowed", "recipients": sorted({mask(n) for n in numbers})}
    return error


def check_destinations(
    numbers: Sequence[str],
    rules: Destinations | None,
    countries: frozenset[str] | None,
    max_recipients: int | None,
    parse: Callable[[str], Recipient | None] = _parse,
) -> list[Recipient]:
    """Parse every recipient (with `parse`: a `RecipientCache`'s); 403 `destination_not_allowed` (nothing
    sent) when any one breaks a rule.

    `countries` and `max_recipients` are the effective ones (the policy's narrowed by the caller's)."""
    if max_recipients is not None and len(numbers) > max_recipients:
        raise _refuse(f"at most {max_recipients} recipients per request", [], "max_recipients")
    parsed = [(number, parse(number)) for number in numbers]
    bad = [number for number, recipient in parsed if recipient is None]
    if bad:
        raise _refuse("recipients must be international phone numbers (E.164, country code first)", bad, "unparseable")
    recipients = [recipient for _, recipient in parsed if recipient is not None]
    if countries is not None:
        outside = [r.e164 for r in recipients if r.country not in countries]
        if outside:
            raise _refuse("sending to these countries is not allowed", outside, "country")
    denied = rules.deny_number_types if rules is not None else frozenset()
    refused = [r.e164 for r in recipients if r.kind in denied]
    if refused:
        raise _refuse("sending to these number types is not allowed", refused, "number_type")
    return recipients
