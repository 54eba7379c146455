"""Token lineage and identities: what every minted token descends from, and whose it is.

An identity is `(idp, subject)`: `idp` is the configured issuer name for an external token, `basic` for a
Basic login, and for the gateway's own tokens the `idp` claim, which records the identity the token was
minted for (`cli` for `gateway token issue`; a child inherits its parent's). Ownership (revoke) and
subject revocation compare identities, never subjects alone: an IdP's `sub=ops` is not the Basic user ops.

Every minted token also records its grant, in three claims that both halves of a pair carry and a
refresh copies:

    idp   the identity provider of `sub` (above)
    anc   the ancestor ids, oldest first: `basic:<user>` for a Basic login, `ext:<issuer>:<jti>` for an
          external token (`ext:<issuer>:h:<hash of iss, sub, exp>` when it has no jti), and for a
          token minted with a gateway token the parent's `anc` + its jti + its family. At most
          `MAX_ANCESTORS`: minting deeper is a 403.
    cap   the latest `exp` any token of this lineage may have: the parent's (gateway or external) `exp`.
    kmode `test` when the lineage descends from a test gateway key (`sgk_test_`): such tokens reach an
          upstream only with its test credentials or test URL (gateway/keys/). Absent: live.
    sms   the SMS narrowing (countries, max_recipients: narrowing.py), the parent's or narrower; absent:
          none beyond the policy's. Like the scopes, it is re-checked on every request against the live
          config: a token wider than its Basic user's current `sms:` is refused.

A gateway API key is a grant too: its principal has the jti `key:<key id>` (its revocation id), so
tokens minted from it carry `key:<key id>` in `anc` and die with it.

The per-request revocation check asks the store about the token's jti, its family, every ancestor and its
identity's subject-revocation entry (`sub:<idp>:<subject>`, a revocation with a cutoff) in one call, so
revoking any ancestor ends its descendants, and revoking a child never touches its parent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from gateway.auth.jwt import Principal
from gateway.errors import Forbidden, Unauthorized
from gateway.policy.scopes import SUPERUSER, split_scope
from gateway.tokens.narrowing import SMS_CLAIM, Narrowing, from_config, narrowing_of, wider_than

if TYPE_CHECKING:
    from gateway.config.settings import Settings

__all__ = [
    "ANCESTORS_CLAIM",
    "BASIC_IDP",
    "CAP_CLAIM",
    "CLI_IDP",
    "IDP_CLAIM",
    "MAX_ANCESTORS",
    "MODE_CLAIM",
    "TEST_MODE",
    "Grant",
    "Identities",
    "external_id",
    "grant_of",
    "is_test",
    "revocation_ids",
    "subject_key",
]

IDP_CLAIM = "idp"
ANCESTORS_CLAIM = "anc"
CAP_CLAIM = "cap"
MODE_CLAIM = "kmode"
TEST_MODE = "test"
MAX_ANCESTORS = 8  # Basic or IdP login → gateway token → 3 generations of children (2 ids per generation)
BASIC_IDP = "basic"
CLI_IDP = "cli"
OWN_ISSUER = "self"  # the configured name of the gateway's own issuer (reserved in config)


@dataclass(frozen=True, slots=True)
class Grant:
    """What a new token descends from: the identity it is minted for, its ancestors and its exp cap."""

    idp: str
    subject: str
    ancestors: tuple[str, ...] = ()
    cap: int | None = None
    test: bool = False  # descends from a test gateway key
    sms: Narrowing | None = None  # the SMS narrowing every token of the lineage carries (narrowing.py)

    def claims(self) -> dict[str, Any]:
        """The grant claims every token of the pair carries."""
        claims: dict[str, Any] = {IDP_CLAIM: self.idp}
        if self.ancestors:
            claims[ANCESTORS_CLAIM] = list(self.ancestors)
        if self.cap is not None:
            claims[CAP_CLAIM] = self.cap
        if self.test:
            claims[MODE_CLAIM] = TEST_MODE
        if self.sms:
            claims[SMS_CLAIM] = dict(self.sms)
        return claims


@dataclass(frozen=True)
class Identities:
    """The identities the current config knows: Basic users with their scopes (and `sms:` narrowing), external
    issuer names."""

    basic_users: Mapping[str, frozenset[str]]
    issuers: frozenset[str]
    max_external_lifetime_s: int = 86400
    basic_sms: Mapping[str, Narrowing] = field(default_factory=dict)  # users with an `sms:` block only

    @classmethod
    def from_settings(cls, settings: Settings) -> Identities:
        auth = settings.auth
        enabled = auth.basic_users if auth.basic_enabled else ()
        users = {user.username: user.scopes for user in enabled}
        sms = {user.username: narrowing for user in enabled if (narrowing := from_config(user.sms))}
        return cls(users, frozenset(issuer.name for issuer in auth.issuers), auth.max_token_lifetime_s, sms)

    def names(self) -> list[str]:
        """Every idp a subject revocation may name."""
        return sorted({BASIC_IDP, CLI_IDP, *self.issuers})

    def check(self, principal: Principal) -> None:
        """Refuse a gateway token whose identity is gone from the config, or no longer holds its scopes.

        Basic: the user must exist, hold every scope of the token and allow at least what the token's `sms`
        claim allows (401 for an access token; 403 for a refresh token, which would otherwise renew scopes or
        destinations the user lost). External: the issuer must still be configured. `cli` and tokens minted
        before lineage existed (no `idp`) are the operator's.
        """
        if principal.issuer != OWN_ISSUER or principal.kind == "basic":
            return
        idp, subject = principal.identity
        refresh = principal.kind == "refresh"
        if idp == BASIC_IDP:
            held = self.basic_users.get(subject)
            if held is None:
                raise Unauthorized(
                    f"the Basic user {subject} no longer exists",
                    code="invalid_token:subject_removed",
                    token_presented=True,
                )
            scopes = granted_scopes(principal)
            missing = sorted(scopes - held) if SUPERUSER not in held else []
            if missing:
                message = f"the Basic user {subject} no longer holds {' '.join(missing)}"
                if refresh:
                    raise Forbidden(message + ": log in again for a token with the current scopes", required=missing[0])
                raise Unauthorized(message, code="invalid_token:scope_withdrawn", token_presented=True)
            self._check_sms(principal, subject, refresh)
        elif idp not in (CLI_IDP, OWN_ISSUER) and idp not in self.issuers:
            raise Unauthorized(
                f"the issuer {idp} this token was minted from is no longer configured",
                code="invalid_token:issuer_removed",
                token_presented=True,
            )

    def _check_sms(self, principal: Principal, subject: str, refresh: bool) -> None:
        """A Basic user's `sms:` tightened by a reload reaches the tokens they minted: wider ones are refused."""
        wider = wider_than(narrowing_of(principal), self.basic_sms.get(subject))
        if not wider:
            return
        message = f"the Basic user {subject} may no longer send as widely as this token allows (sms.{wider[0]})"
        if refresh:
            raise Forbidden(message + ": log in again for a token with the current sms limits", code="sms_narrowed")
        raise Unauthorized(message, code="invalid_token:sms_narrowed", token_presented=True)


def granted_scopes(principal: Principal) -> frozenset[str]:
    """The scopes a gateway token grants: its own, or for a refresh token the ones it renews."""
    if principal.kind == "refresh":
        granted = principal.claims.get("grant_scope")
        return frozenset(split_scope(granted)) if isinstance(granted, str) else frozenset()
    return principal.scopes


def subject_key(idp: str, subject: str) -> str:
    """The revocation id of a whole identity (its revocations carry a cutoff); `idp` escaped so ':' splits."""
    return f"sub:{quote(idp, safe='')}:{subject}"


def external_id(principal: Principal) -> str:
    """The id of an external token: issuer and jti, or issuer and a hash of (iss, sub, exp) without a jti."""
    issuer = quote(principal.issuer, safe="")
    if principal.token_id is not None:
        return f"ext:{issuer}:{principal.token_id}"
    material = "\0".join(str(principal.claims.get(name)) for name in ("iss", "sub", "exp"))
    return f"ext:{issuer}:h:{hashlib.sha256(material.encode()).hexdigest()[:32]}"


def ancestors_of(principal: Principal) -> tuple[str, ...]:
    """The `anc` claim of a gateway token (empty before lineage existed); anything else is a malformed token."""
    value = principal.claims.get(ANCESTORS_CLAIM, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise Unauthorized(
            "token anc claim is not a list of strings", code="invalid_token:malformed", token_presented=True
        )
    return tuple(value)


def cap_of(principal: Principal) -> int | None:
    """The `cap` claim of a gateway token (None: uncapped)."""
    value = principal.claims.get(CAP_CLAIM)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise Unauthorized("token cap claim is not an integer", code="invalid_token:malformed", token_presented=True)
    return value


def is_test(principal: Principal | None) -> bool:
    """Whether a principal is a test gateway key or descends from one (only the gateway's own can)."""
    return principal is not None and principal.issuer == OWN_ISSUER and principal.claims.get(MODE_CLAIM) == TEST_MODE


def grant_of(caller: Principal | None, subject: str) -> Grant:
    """The grant a token minted by `caller` (None: the local operator, for `subject`) descends from."""
    if caller is None:
        return Grant(CLI_IDP, subject)
    sms = narrowing_of(caller)  # a Basic user's `sms:`, an external token's or a gateway token's `sms` claim
    if caller.kind == "basic":
        return Grant(BASIC_IDP, caller.subject, (f"basic:{caller.subject}",), sms=sms)
    exp = None if caller.expires_at is None else int(caller.expires_at)
    if caller.issuer != OWN_ISSUER:
        return Grant(caller.issuer, caller.subject, (external_id(caller),), exp, sms=sms)
    family = caller.claims.get("fam")
    own = (caller.token_id,) if caller.token_id else ()
    ancestors = ancestors_of(caller) + own + ((family,) if isinstance(family, str) else ())
    if len(ancestors) > MAX_ANCESTORS:
        raise Forbidden(
            f"token lineage too deep: a token descends from at most {MAX_ANCESTORS} ancestors; "
            "mint this one from a Basic login or an identity provider's token instead"
        )
    cap = cap_of(caller)
    idp, _ = caller.identity
    if exp is None:
        exp = cap
    elif cap is not None:
        exp = min(cap, exp)
    return Grant(idp, caller.subject, ancestors, exp, is_test(caller), sms)


def revocation_ids(principal: Principal) -> Sequence[str]:
    """Every id whose revocation ends this bearer token: itself, its family, its ancestors, its identity."""
    idp, subject = principal.identity
    if principal.issuer != OWN_ISSUER:
        return [external_id(principal), subject_key(idp, subject)]
    ids = [principal.token_id] if principal.token_id else []
    family = principal.claims.get("fam")
    if isinstance(family, str):
        ids.append(family)
    ids.extend(ancestors_of(principal))
    ids.append(subject_key(idp, subject))
    return ids
