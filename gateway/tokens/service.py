"""The token service: issue, refresh, revoke — shared by the HTTP endpoints and the CLI.

It fixes SMSGate's weakness: a caller can never mint a scope it does not hold itself. Every issued token
is recorded in the Store (subject, family, expiry) so `DELETE /auth/token/{jti}` can check ownership and
revoke the right family; records and revocations expire with the tokens, so the store never grows forever.

Audit events (on the `smsguard.audit` logger unless another is given): `token.issued`, `token.refreshed`,
`token.revoked` and `token.replay_detected`; tokens appear only as their `jti`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.auth.jwt import Principal
from gateway.config.settings import TokenSettings
from gateway.errors import BadRequest, Forbidden, NotFound, Unauthorized
from gateway.observe.logs import make_logger
from gateway.policy.scopes import SUPERUSER, is_valid_scope
from gateway.store import Store
from gateway.tokens.mint import REFRESH_SCOPE, TokenIssuer, TokenPair

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

__all__ = ["MANAGE_SCOPE", "TokenRecord", "TokenService"]

MANAGE_SCOPE = "tokens:manage"
_RECORD = "tok:"


@dataclass(frozen=True, slots=True)
class TokenRecord:
    subject: str
    family: str
    expires_at: float


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
    ) -> None:
        """`grace_s` is the verifiers' leeway: a token stays accepted that long past `exp`, so its
        revocation (and its record, which revoking needs) must outlive `exp` by as much."""
        self.settings = settings
        self.grace_s = grace_s
        self.log = log if log is not None else make_logger("smsguard.audit")
        self.store = store
        self.vocabulary = frozenset(vocabulary) | {SUPERUSER}
        self._clock = clock
        self.issuer = TokenIssuer(settings, clock=clock) if settings.enabled else None

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
        self, subject: str, scopes: Sequence[str], ttl_s: int | None, *, caller: Principal | None
    ) -> TokenPair:
        """Mint an access/refresh pair; `caller=None` is the local operator (CLI) who may grant anything."""
        ttl = self.check_request(caller, scopes, ttl_s)
        pair = self._issuer().mint_pair(subject, scopes, ttl)
        await self.store.start_family(pair.family, pair.refresh.jti, pair.refresh.expires_at + self.grace_s)
        await self._record(pair)
        self.log.info(
            "token.issued",
            subject=subject,
            jti=pair.access.jti,
            refresh_jti=pair.refresh.jti,
            family=pair.family,
            scopes=list(scopes),
            ttl_s=ttl,
            expires_at=pair.access.expires_at,
            **_by(caller),
        )
        return pair

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
        ttl_s = min(ttl, self.settings.max_ttl_s) if isinstance(ttl, int) and ttl > 0 else self.settings.default_ttl_s
        pair = self._issuer().mint_pair(principal.subject, granted.split(), ttl_s, family=family)
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
        await self._record(pair)
        self.log.info(
            "token.refreshed",
            subject=principal.subject,
            jti=pair.access.jti,
            refresh_jti=pair.refresh.jti,
            previous_jti=principal.token_id,
            family=family,
            scopes=granted.split(),
            ttl_s=ttl_s,
            expires_at=pair.access.expires_at,
        )
        return pair

    async def revoke(self, jti: str, *, caller: Principal | None) -> TokenRecord:
        """Revoke a token and its refresh family; only its subject or an `all:any` caller may (None = CLI)."""
        raw = await self.store.get(_RECORD + jti)
        if raw is None:
            raise NotFound("no such token (unknown, or already expired)", code="no_token")
        data = json.loads(raw)
        record = TokenRecord(data["sub"], data["fam"], data["exp"])
        if caller is not None and caller.subject != record.subject and SUPERUSER not in caller.scopes:
            raise Forbidden("only the token's subject or an all:any caller may revoke it", required=SUPERUSER)
        family_until = self._clock() + self.settings.refresh_ttl_s + self.grace_s
        await self.store.revoke([jti], record.expires_at + self.grace_s)
        await self.store.revoke([record.family], family_until)
        self.log.info("token.revoked", subject=record.subject, jti=jti, family=record.family, **_by(caller))
        return record

    async def is_revoked(self, principal: Principal) -> bool:
        """The per-request revocation check: the token itself, or its whole family."""
        ids = [principal.token_id] if principal.token_id else []
        family = principal.claims.get("fam") if principal.kind != "basic" else None
        if isinstance(family, str):
            ids.append(family)
        return bool(ids) and await self.store.is_revoked(*ids)

    async def _record(self, pair: TokenPair) -> None:
        now = self._clock()
        for token in (pair.access, pair.refresh):
            value = json.dumps({"sub": pair.subject, "fam": pair.family, "exp": token.expires_at}).encode()
            await self.store.set(_RECORD + token.jti, value, max(token.expires_at + self.grace_s - now, 1))


def _by(caller: Principal | None) -> dict[str, str | None]:
    """Who asked: the caller's subject and issuer (`cli` for the local operator)."""
    if caller is None:
        return {"by": "cli", "by_issuer": None}
    return {"by": caller.subject, "by_issuer": caller.issuer}
