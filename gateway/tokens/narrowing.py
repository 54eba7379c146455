"""SMS narrowing: a token or gateway key may send to fewer countries, and fewer recipients per request,
than the credential it is minted from — never more.

The narrowing is the `sms` claim the limiter reads (gateway/limits/limiter.py): `{"countries": ["GB"],
"max_recipients": 5}`, either key optional. A Basic user carries its `sms:` from the config as that
claim, an external token may carry one, and every gateway token or key carries the one it was minted
with. A request (`"sms": {...}` in the token or key request) is validated (`parse`, 400) and checked
against the caller's own (`narrow`, 403 when it asks for more); without a request the new credential
inherits the caller's narrowing. The policy's `sms.destinations` still apply on top of all this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.auth.jwt import Principal
from gateway.errors import BadRequest, Forbidden

if TYPE_CHECKING:
    from gateway.config.auth import SmsNarrowing

__all__ = ["SMS_CLAIM", "WIDER_CODE", "Narrowing", "from_config", "narrow", "narrowing_of", "parse", "wider_than"]

SMS_CLAIM = "sms"
WIDER_CODE = "sms_wider_than_caller"
_KEYS = ("countries", "max_recipients")
_EXAMPLE = '"sms": {"countries": ["GB"], "max_recipients": 10}'

Narrowing = dict[str, Any]  # {"countries": [...], "max_recipients": N}, either key optional


def parse(value: object) -> Narrowing | None:
    """Validate a requested `sms` block (None: none requested); anything malformed is a 400 naming it."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest(f"sms must be an object like {_EXAMPLE}")
    unknown = sorted(set(value) - set(_KEYS))
    if unknown:
        raise BadRequest(f"unknown sms field(s): {', '.join(unknown)}: only countries and max_recipients")
    result: Narrowing = {}
    countries = value.get("countries")
    if countries is not None:
        if not isinstance(countries, list) or not countries or not all(_is_country(c) for c in countries):
            raise BadRequest("sms.countries must be a non-empty list of ISO 3166-1 alpha-2 codes, e.g. GB, US")
        result["countries"] = sorted({code.upper() for code in countries})
    most = value.get("max_recipients")
    if most is not None:
        if not isinstance(most, int) or isinstance(most, bool) or most < 1:
            raise BadRequest("sms.max_recipients must be a positive integer")
        result["max_recipients"] = most
    return result or None


def _is_country(code: object) -> bool:
    return isinstance(code, str) and len(code) == 2 and code.isascii() and code.isalpha()


def narrowing_of(principal: Principal | None) -> Narrowing | None:
    """The caller's own narrowing, read as the limiter reads it (a malformed part narrows nothing)."""
    claim = principal.claims.get(SMS_CLAIM) if principal is not None else None
    if not isinstance(claim, Mapping):
        return None
    result: Narrowing = {}
    countries = claim.get("countries")
    if isinstance(countries, list):
        result["countries"] = sorted({str(code) for code in countries})
    most = claim.get("max_recipients")
    if isinstance(most, int) and not isinstance(most, bool):
        result["max_recipients"] = most
    return result or None


def from_config(sms: SmsNarrowing | None) -> Narrowing | None:
    """A Basic user's `sms:` block as the claim its tokens carry."""
    if sms is None:
        return None
    result: Narrowing = {}
    if sms.countries is not None:
        result["countries"] = sorted({code.upper() for code in sms.countries})
    if sms.max_recipients is not None:
        result["max_recipients"] = sms.max_recipients
    return result or None


def wider_than(claimed: Narrowing | None, held: Narrowing | None) -> list[str]:
    """The fields in which a credential's narrowing (`claimed`) allows more than `held` does now.

    A field absent from `claimed` allows anything, so it is wider wherever `held` limits that field: a token
    minted before its Basic user got an `sms:` block is wider than the user."""
    claimed, held = claimed or {}, held or {}
    fields = []
    if "countries" in held:
        mine = {str(code).upper() for code in claimed.get("countries", ["*"])}
        if not mine <= {str(code).upper() for code in held["countries"]}:
            fields.append("countries")
    if "max_recipients" in held and claimed.get("max_recipients", held["max_recipients"] + 1) > held["max_recipients"]:
        fields.append("max_recipients")
    return fields


def narrow(held: Narrowing | None, requested: Narrowing | None) -> Narrowing | None:
    """The narrowing of a new credential: `requested` within `held` (403 naming what is wider), or `held`.

    A key absent from the request is inherited from `held`: a request can only add or tighten limits.
    """
    if requested is None:
        return dict(held) if held else None
    held = held or {}
    result: Narrowing = dict(held)
    if "countries" in requested:
        allowed = held.get("countries")
        if allowed is not None:
            outside = sorted(set(requested["countries"]) - set(allowed))
            if outside:
                raise _wider(
                    "countries",
                    f"cannot grant sms.countries {', '.join(outside)}: the caller may send to "
                    f"{', '.join(allowed) or 'no country'} only",
                )
        result["countries"] = list(requested["countries"])
    if "max_recipients" in requested:
        most = held.get("max_recipients")
        if most is not None and requested["max_recipients"] > most:
            raise _wider(
                "max_recipients",
                f"cannot grant sms.max_recipients {requested['max_recipients']}: the caller may send to "
                f"at most {most} recipients per request",
            )
        result["max_recipients"] = requested["max_recipients"]
    return result or None


def _wider(field: str, message: str) -> Forbidden:
    """403 `sms_wider_than_caller`, the body naming the field (`{"message", "code", "field"}`)."""
    error = Forbidden(message, code=f"{WIDER_CODE}:{field}")
    error.extra = {"code": WIDER_CODE, "field": field}
    return error
