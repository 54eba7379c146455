"""The key service: create, list, rotate, revoke gateway API keys, and verify them on the hot path.

A key is a grant in the token lineage (gateway/tokens/lineage.py). Its principal is a gateway access
principal (issuer `self`) with the jti `key:<key id>`, the creator's identity (`idp`, `sub`), the
creator's ancestors (`anc`), a `cap` when the creator's own grant had one, `iat` = creation, and
`kmode: test` for a test key. So the per-request revocation check ends a key when it is revoked
(`key:<id>`), when an ancestor is (a key created with a token dies with it), or when its identity is
revoked or leaves the config; and every token minted from the key carries `key:<id>` and dies with it.

Records live in the store (`apikey:<key id>`, JSON, no secret: the secrets' HMAC-SHA256 under
`keys.secret`), with an index per identity (`apikeys:<idp>:<sub>`) for listing and a separate
last-used stamp (`apikey-used:<key id>`) so a stamp never races a rotation. Verification is one HMAC and
one store read on a cache miss, a dict lookup on a hit: a verified key is trusted for `keys.cache_s`
at most (and never past its expiry or its secret's end), revocations are still checked every request.

Audit events: `key.created`, `key.rotated`, `key.revoked`; keys appear as their id, never their secret.
"""

from __future__ import annotations

import hmac
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from gateway.auth.jwt import Principal
from gateway.config.apikeys import ApiKeySettings
from gateway.errors import BadRequest, Forbidden, NotFound, Unauthorized
from gateway.keys.format import KeyParts, Mode, is_key_id, key_hash, new_key, new_secret, parse_key, parse_pair
from gateway.observe.logs import make_logger
from gateway.policy.scopes import SUPERUSER
from gateway.store import Store
from gateway.tokens.lineage import (
    ANCESTORS_CLAIM,
    BASIC_IDP,
    CAP_CLAIM,
    IDP_CLAIM,
    MODE_CLAIM,
    OWN_ISSUER,
    TEST_MODE,
    Grant,
    grant_of,
    is_test,
)
from gateway.tokens.narrowing import SMS_CLAIM, Narrowing, narrow
from gateway.tokens.service import EPOCH_CLAIM, TokenService

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

__all__ = ["KEY_ID_CLAIM", "KeyRecord", "KeyService"]

KEY_ID_CLAIM = "key"
FOREVER_S = 10 * 365 * 86400  # the store TTL of a key without expiry
MAX_NAME = 200
_RECORD = "apikey:"
_USED = "apikey-used:"
_INDEX = "apikeys:"


def revocation_id(key_id: str) -> str:
    """The lineage id of a key: revoking it ends the key and every token minted from it."""
    return f"key:{key_id}"


def _invalid(message: str, code: str) -> Unauthorized:
    return Unauthorized(message, code=code, token_presented=True)


@dataclass(slots=True)
class KeyRecord:
    """What the store holds about a key (no secret: the secrets' hashes, each with the end of its overlap)."""

    key_id: str
    name: str
    scopes: tuple[str, ...]
    idp: str
    subject: str
    ancestors: tuple[str, ...]
    cap: int | None
    created_at: float
    expires_at: float | None
    secrets: list[tuple[str, float | None]]  # (hmac hex, valid until; None: the current secret)
    sms: Narrowing | None = None  # the key's SMS narrowing (gateway/tokens/narrowing.py), its `sms` claim

    @property
    def mode(self) -> Mode:
        return "test" if self.key_id.startswith("sgk_test_") else "live"

    def dump(self) -> bytes:
        return json.dumps(
            {
                "id": self.key_id,
                "name": self.name,
                "scopes": list(self.scopes),
                "idp": self.idp,
                "sub": self.subject,
                "anc": list(self.ancestors),
                "cap": self.cap,
                "created_at": self.created_at,
                "expires_at": self.expires_at,
                "secrets": [[digest, until] for digest, until in self.secrets],
                "sms": self.sms,
            }
        ).encode()

    @classmethod
    def load(cls, raw: bytes) -> KeyRecord:
        data = json.loads(raw)
        return cls(
            key_id=data["id"],
            name=data["name"],
            scopes=tuple(data["scopes"]),
            idp=data["idp"],
            subject=data["sub"],
            ancestors=tuple(data["anc"]),
            cap=data["cap"],
            created_at=data["created_at"],
            expires_at=data["expires_at"],
            secrets=[(digest, until) for digest, until in data["secrets"]],
            sms=data.get("sms"),  # absent in records written before keys could be narrowed
        )

    def public(self, last_used: float | None) -> dict[str, Any]:
        """What the API lists: never a secret nor a hash."""
        return {
            "id": self.key_id,
            "name": self.name,
            "mode": self.mode,
            "scopes": list(self.scopes),
            "owner": {"issuer": self.idp, "sub": self.subject},
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "last_used_at": last_used,
            "rotating_until": max((until for _, until in self.secrets if until is not None), default=None),
            "sms": self.sms,
        }

    def principal(self, until: float | None, epoch: str | None = None) -> Principal:
        """The principal a verified key stands for (`until`: when this verification stops counting)."""
        claims: dict[str, Any] = {
            "sub": self.subject,
            "jti": revocation_id(self.key_id),
            "iat": int(self.created_at),
            "scope": " ".join(self.scopes),
            IDP_CLAIM: self.idp,
            ANCESTORS_CLAIM: list(self.ancestors),
            KEY_ID_CLAIM: self.key_id,
        }
        if self.cap is not None:
            claims[CAP_CLAIM] = self.cap
        if self.mode == "test":
            claims[MODE_CLAIM] = TEST_MODE
        if self.sms:
            claims[SMS_CLAIM] = dict(self.sms)
        if epoch is not None:  # the store epoch the record was read in: a reset store refuses cached keys too
            claims[EPOCH_CLAIM] = epoch
        return Principal(
            subject=self.subject,
            scopes=frozenset(self.scopes),
            issuer=OWN_ISSUER,
            token_id=revocation_id(self.key_id),
            expires_at=until,
            claims=claims,
            kind="access",
        )


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A new key or a new secret: the only time the whole key is seen."""

    record: KeyRecord
    key: KeyParts

    def answer(self) -> dict[str, Any]:
        return {**self.record.public(None), "key": self.key.full, "secret": self.key.secret}


def _earliest(*times: float | None) -> float | None:
    present = [t for t in times if t is not None]
    return min(present) if present else None


class KeyService:
    """Keys against a Store; the token service checks scopes (vocabulary, caller's own) and mints logins."""

    def __init__(
        self,
        settings: ApiKeySettings,
        store: Store,
        tokens: TokenService,
        *,
        clock: Callable[[], float] = time.time,
        log: FilteringBoundLogger | None = None,
        cache_size: int = 10_000,
    ) -> None:
        if settings.secret is None:
            raise ValueError("gateway keys need keys.secret")
        self.settings = settings
        self.store = store
        self.tokens = tokens
        self.log = log if log is not None else make_logger("smsguard.audit")
        self._server_secret = settings.secret.reveal().encode()
        self._clock = clock
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._cache_size = cache_size

    # ------------------------------------------------------------------------------------- management

    async def create(
        self,
        caller: Principal | None,
        *,
        subject: str | None = None,
        idp: str | None = None,
        name: str = "",
        scopes: Sequence[str],
        mode: str = "live",
        ttl_s: int | None = None,
        sms: Narrowing | None = None,
    ) -> CreatedKey:
        """A new key for the caller's own identity (None: the CLI, for `subject` under `idp`, default `cli`).

        Never wider than the caller: its scopes, its `exp` (a key created with a token ends with it), its
        mode (a test caller creates test keys only), its SMS narrowing (`sms`, parsed by narrowing.parse:
        403 when wider than the caller's; None inherits it).
        """
        if mode not in ("live", "test"):
            raise BadRequest("mode must be live or test")
        if len(name) > MAX_NAME:
            raise BadRequest(f"name is longer than {MAX_NAME} characters")
        if ttl_s is not None and ttl_s <= 0:
            raise BadRequest("ttl must be a positive number of seconds")
        self.tokens.check_request(caller, scopes, None)  # vocabulary and the caller's own scopes
        if is_test(caller) and mode != TEST_MODE:
            raise Forbidden("a test key or a token minted from one can create test keys only")
        grant = self._grant(caller, subject, idp)
        narrowed = narrow(grant.sms, sms)
        now = self._clock()
        expires_at = _earliest(now + ttl_s if ttl_s is not None else None, grant.cap)
        if expires_at is not None and expires_at - now < 1:
            raise Unauthorized("the credential this key would descend from has expired", code="invalid_token:expired")
        parts = new_key("test" if mode == TEST_MODE else "live")
        record = KeyRecord(
            key_id=parts.key_id,
            name=name,
            scopes=tuple(sorted(set(scopes))),
            idp=grant.idp,
            subject=grant.subject,
            ancestors=grant.ancestors,
            cap=grant.cap,
            created_at=now,
            expires_at=expires_at,
            secrets=[(key_hash(self._server_secret, parts), None)],
            sms=narrowed,
        )
        await self._save(record)
        await self._index(record, add=True)
        self.log.info(
            "key.created",
            key_id=record.key_id,
            name=name,
            subject=record.subject,
            idp=record.idp,
            mode=record.mode,
            scopes=list(record.scopes),
            expires_at=expires_at,
            sms=narrowed,
            **_by(caller),
        )
        return CreatedKey(record, parts)

    def _grant(self, caller: Principal | None, subject: str | None, idp: str | None) -> Grant:
        if caller is not None:
            return grant_of(caller, caller.subject)
        if not subject:
            raise BadRequest("a key needs a subject")
        idp = idp or "cli"
        if idp not in self.tokens.subject_idps():
            raise BadRequest(f"unknown issuer {idp!r}: one of {', '.join(self.tokens.subject_idps())}")
        return Grant(idp, subject, (f"basic:{subject}",) if idp == BASIC_IDP else ())

    async def list_keys(
        self, caller: Principal | None, *, idp: str | None = None, subject: str | None = None
    ) -> list[dict[str, Any]]:
        """The caller's keys (the CLI: those of `idp`/`subject`), without secrets, oldest first."""
        owner = caller.identity if caller is not None else (idp or "cli", subject or "")
        ids = await self._index_ids(*owner)
        answer = []
        for key_id in ids:
            record = await self._load(key_id)
            if record is None:
                continue
            used = await self.store.get(_USED + key_id)
            answer.append(record.public(float(used) if used else None))
        return sorted(answer, key=lambda item: item["created_at"])

    async def rotate(self, caller: Principal | None, key_id: str, overlap_s: int | None = None) -> CreatedKey:
        """A new secret for the same key; the old ones keep working for `overlap_s` (default from config)."""
        overlap = self.settings.rotation_overlap_s if overlap_s is None else overlap_s
        if not 0 <= overlap <= self.settings.max_rotation_overlap_s:
            raise BadRequest(f"overlap_s must be between 0 and {self.settings.max_rotation_overlap_s}")
        async with self.store.lock(_RECORD + key_id, ttl_s=10.0, wait_s=10.0):
            record = await self._owned(caller, key_id)
            now = self._clock()
            parts = new_secret(key_id)
            kept = [
                (digest, _earliest(until, now + overlap))
                for digest, until in record.secrets
                if overlap > 0 and (until is None or until > now)
            ]
            record.secrets = [(key_hash(self._server_secret, parts), None), *kept]
            await self._save(record)
        self._forget(key_id)
        self.log.info(
            "key.rotated", key_id=key_id, subject=record.subject, idp=record.idp, overlap_s=overlap, **_by(caller)
        )
        return CreatedKey(record, parts)

    async def revoke(self, caller: Principal | None, key_id: str) -> KeyRecord:
        """End the key and every token minted from it, on every instance sharing the store."""
        record = await self._owned(caller, key_id)
        tokens = self.tokens.settings
        until = self._clock() + max(tokens.refresh_ttl_s, tokens.max_ttl_s) + self.tokens.grace_s
        until += self.settings.cache_s + 1
        await self.store.revoke([revocation_id(key_id)], until)
        await self.store.delete(_RECORD + key_id)
        await self.store.delete(_USED + key_id)
        await self._index(record, add=False)
        self._forget(key_id)
        self.log.info("key.revoked", key_id=key_id, subject=record.subject, idp=record.idp, **_by(caller))
        return record

    async def _owned(self, caller: Principal | None, key_id: str) -> KeyRecord:
        """The record of a key the caller owns (its identity), or any key for all:any and the CLI; else 404."""
        record = await self._load(key_id) if is_key_id(key_id) else None
        if record is None:
            raise NotFound("no such key (unknown, expired or revoked)", code="no_key")
        if caller is not None and caller.identity != (record.idp, record.subject) and SUPERUSER not in caller.scopes:
            raise NotFound("no such key (unknown, expired or revoked)", code="no_key")  # never confirm others' ids
        return record

    # ----------------------------------------------------------------------------------- verification

    async def verify(self, key: str) -> Principal:
        """The principal of a whole key (`Authorization: Bearer sgk_...`, `X-API-KEY`, ...); 401 otherwise.

        Revocation is the caller's business (the Authenticator checks it on every request).
        """
        parts = parse_key(key)
        if parts is None:
            raise _invalid("malformed gateway key", "invalid_key:malformed")
        return await self.verify_parts(parts)

    async def verify_pair(self, key_id: str, secret: str) -> Principal:
        """A key given as key id and secret (Basic client id:secret, SMSGatewayCenter userId/password)."""
        parts = parse_pair(key_id, secret)
        if parts is None:
            raise _invalid("malformed gateway key id or secret", "invalid_key:malformed")
        return await self.verify_parts(parts)

    async def verify_parts(self, parts: KeyParts) -> Principal:
        now = self._clock()
        cache_key = parts.full
        entry = self._cache.get(cache_key)
        if entry is not None:
            if entry[1] > now:
                self._cache.move_to_end(cache_key)
                return entry[0]
            del self._cache[cache_key]
        record = await self._load(parts.key_id)
        if record is None:
            raise _invalid("unknown or revoked gateway key", "invalid_key:unknown")
        if record.expires_at is not None and record.expires_at <= now:
            raise _invalid("the gateway key has expired", "invalid_key:expired")
        digest = key_hash(self._server_secret, parts)
        secret_until = self._match(record, digest, now)
        until = _earliest(record.expires_at, secret_until)
        principal = record.principal(until, self._epoch())
        self._remember(cache_key, principal, _earliest(until, now + self.settings.cache_s) or now)
        await self.store.set(_USED + parts.key_id, repr(now).encode(), self._ttl(record, now))
        return principal

    @staticmethod
    def _match(record: KeyRecord, digest: str, now: float) -> float | None:
        """The end of the matching secret's validity (None: current); 401 when none matches."""
        for stored, until in record.secrets:
            if hmac.compare_digest(stored, digest):
                if until is not None and until <= now:
                    break
                return until
        raise _invalid("invalid gateway key secret", "invalid_key:secret")

    async def principal_of(self, key_id: str) -> Principal:
        """The principal of a key by id, without its secret: for renewing a token already minted from it."""
        record = await self._load(key_id)
        now = self._clock()
        if record is None or (record.expires_at is not None and record.expires_at <= now):
            raise _invalid("the gateway key this token was minted from is gone", "invalid_key:unknown")
        return record.principal(record.expires_at, self._epoch())

    def _epoch(self) -> str | None:
        """The store's current epoch id, when the store keeps epochs (a key read now belongs to it)."""
        epochs = self.tokens.epochs
        current = epochs.current_epoch() if epochs is not None else None
        return current.id if current is not None else None

    def _remember(self, cache_key: str, principal: Principal, until: float) -> None:
        if self._cache_size <= 0 or self.settings.cache_s <= 0:
            return
        self._cache[cache_key] = (principal, until)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _forget(self, key_id: str) -> None:
        for cached in [k for k in self._cache if k.startswith(key_id + "_")]:
            del self._cache[cached]

    # ------------------------------------------------------------------------------------------ store

    def _ttl(self, record: KeyRecord, now: float) -> float:
        if record.expires_at is None:
            return FOREVER_S
        return max(record.expires_at - now + self.tokens.grace_s, 1.0)

    async def _load(self, key_id: str) -> KeyRecord | None:
        raw = await self.store.get(_RECORD + key_id)
        return None if raw is None else KeyRecord.load(raw)

    async def _save(self, record: KeyRecord) -> None:
        await self.store.set(_RECORD + record.key_id, record.dump(), self._ttl(record, self._clock()))

    async def _index_ids(self, idp: str, subject: str) -> list[str]:
        raw = await self.store.get(_index_name(idp, subject))
        return [] if raw is None else list(json.loads(raw))

    async def _index(self, record: KeyRecord, *, add: bool) -> None:
        name = _index_name(record.idp, record.subject)
        async with self.store.lock(name, ttl_s=10.0, wait_s=10.0):
            ids = [key_id for key_id in await self._index_ids(record.idp, record.subject) if key_id != record.key_id]
            if add:
                ids.append(record.key_id)
            await self.store.set(name, json.dumps(ids).encode(), FOREVER_S)


def _index_name(idp: str, subject: str) -> str:
    return f"{_INDEX}{quote(idp, safe='')}:{quote(subject, safe='')}"


def _by(caller: Principal | None) -> dict[str, str | None]:
    if caller is None:
        return {"by": "cli", "by_issuer": None}
    return {"by": caller.subject, "by_issuer": caller.issuer}
