"""The token service: issue, refresh, revoke — shared by the HTTP endpoints and the CLI.

It fixes SMSGate's weakness: a caller can never mint a scope it does not hold itself, nor a token that
outlives the one it is minted from. Every issued token is recorded in the Store (identity, family, expiry)
so `DELETE /auth/token/{jti}` can check ownership (by identity: idp and subject) and revoke the right
family; records and revocations expire with the tokens, so the store never grows forever. Lineage,
identities and subject revocation are described in lineage.py.

Audit events (on the `smsguard.audit` logger unless another is given): `token.issued`, `token.refreshed`,
`token.refresh_refused`, `token.revoked`, `token.subject_revoked` and `token.replay_detected`; tokens
appear only as their `jti`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from gateway.auth.jwt import Principal
from gateway.config.settings import TokenSettings
from gateway.errors import BadRequest, Forbidden, HTTPError, NotFound, StoreUnavailable, Unauthorized
from gateway.observe.logs import make_logger
from gateway.policy.scopes import SUPERUSER, is_valid_scope, split_scope
from gateway.store import EpochSource, Store
from gateway.tokens.lineage import (
    OWN_ISSUER,
    Grant,
    Identities,
    ancestors_of,
    cap_of,
    grant_of,
    is_test,
    revocation_ids,
    subject_key,
)
from gateway.tokens.mint import REFRESH_SCOPE, TokenIssuer, TokenPair
from gateway.tokens.narrowing import Narrowing, narrow, narrowing_of

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

__all__ = ["MANAGE_SCOPE", "TokenRecord", "TokenService"]

MANAGE_SCOPE = "tokens:manage"
EPOCH_CLAIM = "ep"  # the store epoch a gateway token was minted in (gateway.store.base.Epoch)
_RECORD = "tok:"


@dataclass(frozen=True, slots=True)
class TokenRecord:
    subject: str
    family: str
    expires_at: float
    idp: str | None = None  # None: recorded before identities existed (only all:any or the CLI may revoke)


class TokenService:
    """Mints, rotates and revokes the gateway's own tokens against a Store."""

    def __init__(
        self,
        settings: TokenSettings,
        store: Store,
        vocabulary: Iterable[str],
        *,
        clock: Callable[[], float] = time.time,
        log: FilteringBoundLogger | None = None,
        grace_s: float = 0.0,
        identities: Identities | None = None,
    ) -> None:
        """`grace_s` is the verifiers' leeway: a token stays accepted that long past `exp`, so its
        revocation (and its record, which revoking needs) must outlive `exp` by as much. `identities`
        (the config's Basic users and issuers) lets every check refuse tokens whose identity is gone."""
        self.settings = settings
        self.identities = identities
        self.grace_s = grace_s
        self.log = log if log is not None else make_logger("smsguard.audit")
        self.store = store
        self.vocabulary = frozenset(vocabulary) | {SUPERUSER}
        self._clock = clock
        self.issuer = TokenIssuer(settings, clock=clock) if settings.enabled else None
        # A store that knows its epoch (MemoryStore, StoreGuard): minted tokens carry it, others are refused.
        self.epochs: EpochSource | None = store if isinstance(store, EpochSource) else None

    def _issuer(self) -> TokenIssuer:
        if self.issuer is None:
            raise RuntimeError("token issuing is disabled")
        return self.issuer

    def check_request(self, caller: Principal | None, scopes: Sequence[str], ttl_s: int | None) -> int:
        """Validate a token request: 400 for malformed input, 403 for a scope the caller lacks; returns the TTL."""
        if not scopes:
            raise BadRequest("scopes must be a non-empty list")
        for scope in scopes:
            if scope == REFRESH_SCOPE:
                raise BadRequest(f"scope {scope} cannot be requested; refresh tokens come with every token")
            if scope != SUPERUSER and not is_valid_scope(scope):
                raise BadRequest(f"malformed scope {scope!r}: scopes look like resource:action")
            if scope not in self.vocabulary:
                raise BadRequest(f"unknown scope {scope}: it is not in any loaded policy")
        if caller is not None:
            for scope in scopes:
                if scope not in caller.scopes and SUPERUSER not in caller.scopes:
                    raise Forbidden(f"cannot grant scope {scope}: the caller does not hold it", required=scope)
        if ttl_s is None:
            return self.settings.default_ttl_s
        if ttl_s <= 0:
            raise BadRequest("ttl must be a positive number of seconds")
        return min(ttl_s, self.settings.max_ttl_s)

    async def issue(
        self,
        subject: str,
        scopes: Sequence[str],
        ttl_s: int | None,
        *,
        caller: Principal | None,
        sms: Narrowing | None = None,
    ) -> TokenPair:
        """Mint an access/refresh pair; `caller=None` is the local operator (CLI) who may grant anything.

        A caller mints for its own identity only (`subject` must be its subject), never beyond its own
        scopes, `exp` or SMS narrowing (`sms`, parsed by narrowing.parse: 403 when wider than the caller's;
        None inherits it), and records itself as the new tokens' grant (lineage.py).
        """
        if caller is not None and subject != caller.subject:
            raise ValueError("a caller mints tokens for its own subject only")
        ttl = self.check_request(caller, scopes, ttl_s)
        grant = grant_of(caller, subject)
        grant = replace(grant, sms=narrow(grant.sms, sms))
        self._check_cap(grant.cap)
        claims = await self._grant_claims(grant)
        pair = self._issuer().mint_pair(subject, scopes, ttl, grant=claims, cap=grant.cap)
        await self.store.start_family(pair.family, pair.refresh.jti, pair.refresh.expires_at + self.grace_s)
        await self._record(pair, grant.idp)
        self.log.info(
            "token.issued",
            subject=subject,
            idp=grant.idp,
            jti=pair.access.jti,
            refresh_jti=pair.refresh.jti,
            family=pair.family,
            parent=grant.ancestors[-1] if grant.ancestors else None,
            depth=len(grant.ancestors),
            scopes=list(scopes),
            ttl_s=ttl,
            expires_at=pair.access.expires_at,
            cap=grant.cap,
            sms=grant.sms,
            **_by(caller),
        )
        return pair

    async def _grant_claims(self, grant: Grant) -> dict[str, object]:
        """The grant's claims plus the store epoch, read now (503 when the store cannot say)."""
        claims = grant.claims()
        if self.epochs is not None:
            claims[EPOCH_CLAIM] = (await self.epochs.confirm_epoch()).id
        return claims

    def check_epoch(self, principal: Principal) -> None:
        """Refuse a gateway token minted in another store epoch, or before epochs existed (no `ep`): its
        revocations may be lost with the store's data. 503 while the store's epoch is not known yet."""
        if self.epochs is None or principal.issuer != OWN_ISSUER or principal.kind == "basic":
            return
        epoch = self.epochs.current_epoch()
        if epoch is None:
            raise StoreUnavailable()
        if principal.claims.get(EPOCH_CLAIM) != epoch.id:
            raise Unauthorized(
                "the token store was reset since this token was minted (its revocations may be lost): "
                "log in again for a new token",
                code="invalid_token:store_reset",
                token_presented=True,
            )

    def _check_cap(self, cap: int | None) -> None:
        """A token capped at a time already past (a parent accepted within the leeway) cannot be minted."""
        if cap is not None and cap - int(self._clock()) < 1:
            raise Unauthorized(
                "the token this one descends from has expired", code="invalid_token:expired", token_presented=True
            )

    async def refresh(self, principal: Principal) -> TokenPair:
        """Rotate a verified refresh token: the old one dies; presenting a dead one again ends the family.

        The used token is dead because the family's live jti moved on, not because it is revoked: a
        replayed token must reach `rotate_refresh`, which is what detects the replay and revokes the family.
        """
        family = principal.claims.get("fam")
        granted = principal.claims.get("grant_scope")
        ttl = principal.claims.get("ttl")
        if not isinstance(family, str) or not isinstance(granted, str) or principal.token_id is None:
            raise Unauthorized(
                "not a refresh token of this gateway", code="invalid_token:malformed", token_presented=True
            )
        idp, subject = principal.identity
        try:
            self.check_identity(principal)  # the identity behind the grant still exists and holds the scopes
            grant = Grant(
                idp, subject, ancestors_of(principal), cap_of(principal), is_test(principal), narrowing_of(principal)
            )
            self._check_cap(grant.cap)
        except HTTPError as exc:
            self.log.warning(
                "token.refresh_refused",
                subject=subject,
                idp=idp,
                jti=principal.token_id,
                family=family,
                reason=exc.message,
            )
            raise
        ttl_s = min(ttl, self.settings.max_ttl_s) if isinstance(ttl, int) and ttl > 0 else self.settings.default_ttl_s
        claims = await self._grant_claims(grant)
        pair = self._issuer().mint_pair(
            principal.subject, split_scope(granted), ttl_s, family=family, grant=claims, cap=grant.cap
        )
        until = pair.refresh.expires_at + self.grace_s
        outcome = await self.store.rotate_refresh(family, principal.token_id, pair.refresh.jti, until)
        if outcome == "replayed":
            self.log.warning(
                "token.replay_detected",
                subject=principal.subject,
                jti=principal.token_id,
                family=family,
                action="family revoked",
            )
            raise Unauthorized(
                "refresh token reuse detected: every token of this family is revoked",
                code="invalid_token:refresh_replayed",
                token_presented=True,
            )
        if outcome != "rotated":
            raise Unauthorized("refresh token has been revoked", code="invalid_token:revoked", token_presented=True)
        await self._record(pair, idp)
        self.log.info(
            "token.refreshed",
            subject=principal.subject,
            idp=idp,
            jti=pair.access.jti,
            refresh_jti=pair.refresh.jti,
            previous_jti=principal.token_id,
            family=family,
            scopes=split_scope(granted),
            ttl_s=ttl_s,
            expires_at=pair.access.expires_at,
        )
        return pair

    async def revoke(self, jti: str, *, caller: Principal | None) -> TokenRecord:
        """Revoke a token and its refresh family (and so its descendants); only its identity (idp and
        subject) or an `all:any` caller may (None = CLI). Its parent is untouched."""
        raw = await self.store.get(_RECORD + jti)
        if raw is None:
            raise NotFound("no such token (unknown, or already expired)", code="no_token")
        data = json.loads(raw)
        idp = data.get("idp")
        record = TokenRecord(data["sub"], data["fam"], data["exp"], idp if isinstance(idp, str) else None)
        owner = record.idp is not None and caller is not None and caller.identity == (record.idp, record.subject)
        if caller is not None and not owner and SUPERUSER not in caller.scopes:
            raise Forbidden("only the token's own identity or an all:any caller may revoke it", required=SUPERUSER)
        family_until = self._clock() + self.settings.refresh_ttl_s + self.grace_s
        await self.store.revoke([jti], record.expires_at + self.grace_s)
        await self.store.revoke([record.family], family_until)
        self.log.info(
            "token.revoked", subject=record.subject, idp=record.idp, jti=jti, family=record.family, **_by(caller)
        )
        return record

    def subject_idps(self) -> list[str]:
        """The idps a subject revocation may name (`basic`, `cli` and the configured external issuers)."""
        return self.identities.names() if self.identities is not None else ["basic", "cli"]

    async def revoke_subject(
        self, idp: str, subject: str, *, caller: Principal | None, reason: str = "request", audit: bool = True
    ) -> int:
        """End every token of identity (idp, subject) issued before now, on every instance; returns the cutoff.

        Access and refresh tokens alike, the gateway's own (any depth) and the external issuer's. JWT `iat`
        is whole seconds, so the cutoff is the next whole second: tokens minted in the same second as the
        revocation are refused too. The entry lives as long as any token issued before it could.
        Authorization (admin or all:any) is the caller's business (the endpoint's); this only validates.
        """
        if not subject:
            raise BadRequest("sub must be a non-empty subject")
        if idp not in self.subject_idps():
            raise BadRequest(f"unknown issuer {idp!r}: one of {', '.join(self.subject_idps())}")
        cutoff = math.floor(self._clock()) + 1
        await self.store.revoke([subject_key(idp, subject)], cutoff + self._longest_lifetime_s(), before=cutoff)
        if audit:
            self.log.warning(
                "token.subject_revoked", subject=subject, idp=idp, before=cutoff, reason=reason, **_by(caller)
            )
        return cutoff

    def _longest_lifetime_s(self) -> float:
        """How long any token accepted now may still live: refresh, access or external, plus the leeway."""
        external = self.identities.max_external_lifetime_s if self.identities is not None else 0
        return max(self.settings.refresh_ttl_s, self.settings.max_ttl_s, external) + self.grace_s

    def check_identity(self, principal: Principal) -> None:
        """Refuse a gateway token whose identity left the config or lost scopes (lineage.Identities.check)."""
        if self.identities is not None:
            self.identities.check(principal)

    async def is_revoked(self, principal: Principal) -> bool:
        """The per-request check of a bearer token: its identity still in the config (raises if not), then
        its store epoch (check_epoch), then one store call for the token, its family, every ancestor and its
        identity's subject revocation."""
        if principal.kind == "basic":
            return False
        self.check_identity(principal)
        self.check_epoch(principal)
        issued = principal.claims.get("iat")
        issued_at = float(issued) if isinstance(issued, int | float) and not isinstance(issued, bool) else None
        revoked = await self.store.is_revoked(*revocation_ids(principal), issued_at=issued_at)
        if not revoked:
            self.check_epoch(principal)  # the store may just have found that it was reset
        return revoked

    async def _record(self, pair: TokenPair, idp: str) -> None:
        now = self._clock()
        for token in (pair.access, pair.refresh):
            record = {"sub": pair.subject, "idp": idp, "fam": pair.family, "exp": token.expires_at}
            value = json.dumps(record).encode()
            await self.store.set(_RECORD + token.jti, value, max(token.expires_at + self.grace_s - now, 1))


def _by(caller: Principal | None) -> dict[str, str | None]:
    """Who asked: the caller's subject and issuer (`cli` for the local operator)."""
    if caller is None:
        return {"by": "cli", "by_issuer": None}
    return {"by": caller.subject, "by_issuer": caller.issuer}
