"""lineage.py + the token service: grant claims, caps, identity checks and subject revocation, in process.

The cross-process behaviour (two instances on one Redis, hot reload by file edit) is in test_lineage_e2e.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import jwt
import pytest
from fakes import RecordingUpstream, Reply, UvicornServer
from gatewayconfig import CORP_ISS, CORP_SECRET, OPS_PASSWORD, SENDER_PASSWORD, TOKEN_SECRET, GatewayConfig

from gateway.app import create_app
from gateway.auth.jwt import Principal, TokenVerifier
from gateway.cli import main as cli_main
from gateway.config.settings import parse_settings
from gateway.errors import BadRequest, Forbidden, Unauthorized
from gateway.observe.logs import LogCapture
from gateway.store import MemoryStore
from gateway.tokens.lineage import MAX_ANCESTORS, Identities, external_id, grant_of, subject_key
from gateway.tokens.mint import TokenIssuer
from gateway.tokens.service import TokenService

NOW = 1_800_000_000.0
TOKEN = "/3rdparty/v1/auth/token"
SETTINGS = parse_settings(
    "auth: {leeway_s: 30}\ntokens:\n  enabled: true\n  default_ttl_s: 600\n  max_ttl_s: 3600\n  keys:\n"
    f"    - {{kid: k1, algorithm: HS256, secret: {TOKEN_SECRET}}}\n",
    env={},
)
VOCABULARY = ["messages:send", "messages:read", "tokens:manage"]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def identities() -> Identities:
    return Identities(
        {"ops": frozenset({"all:any"}), "sender": frozenset({"messages:send", "messages:read"})},
        frozenset({"corp"}),
    )


@pytest.fixture
def service(clock: Clock, identities: Identities) -> TokenService:
    store = MemoryStore(clock=clock)
    return TokenService(SETTINGS.tokens, store, VOCABULARY, clock=clock, grace_s=30, identities=identities)


@pytest.fixture
async def verifier(clock: Clock) -> AsyncIterator[TokenVerifier]:
    v = TokenVerifier(SETTINGS.all_issuers(), leeway_s=30, max_token_lifetime_s=86400, clock=clock)
    yield v
    await v.aclose()


def basic(user: str, *scopes: str) -> Principal:
    return Principal(user, frozenset(scopes), "basic", None, None, MappingProxyType({}), "basic")


def external(sub: str, *scopes: str, jti: str | None = "ext-1", exp: float = NOW + 5) -> Principal:
    claims: dict[str, Any] = {"iss": CORP_ISS, "sub": sub, "exp": exp, "iat": NOW}
    if jti:
        claims["jti"] = jti
    return Principal(sub, frozenset(scopes), "corp", jti, exp, MappingProxyType(claims), "access")


def payload(token: str) -> dict[str, Any]:
    data: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return data


async def test_grant_claims_follow_the_lineage(service: TokenService, verifier: TokenVerifier) -> None:
    """Basic → child → grandchild: idp inherited, ancestors grow by (jti, family), exp capped by the parent."""
    parent = await service.issue("ops", ["tokens:manage"], 3600, caller=basic("ops", "all:any"))
    claims = payload(parent.access.token)
    assert (claims["idp"], claims["anc"], "cap" in claims) == ("basic", ["basic:ops"], False)
    parent_principal = await verifier.verify(parent.access.token)
    assert parent_principal.identity == ("basic", "ops")
    child = await service.issue("ops", ["tokens:manage"], 3600, caller=parent_principal)
    claims = payload(child.refresh.token)
    assert claims["anc"] == ["basic:ops", parent.access.jti, parent.family]
    assert claims["cap"] == claims["exp"] == parent.access.expires_at
    assert payload(child.access.token)["exp"] == parent.access.expires_at
    grandchild = await service.issue("ops", ["tokens:manage"], 60, caller=await verifier.verify(child.access.token))
    assert payload(grandchild.access.token)["anc"][-2:] == [child.access.jti, child.family]
    assert payload(grandchild.refresh.token)["exp"] <= child.access.expires_at


async def test_refresh_keeps_idp_ancestors_and_cap(service: TokenService, verifier: TokenVerifier) -> None:
    """A refreshed pair is still in the lineage and still capped."""
    pair = await service.issue("ops", ["messages:send"], 600, caller=external("ops", "messages:send", exp=NOW + 300))
    refreshed = await service.refresh(await verifier.verify(pair.refresh.token, refresh=True))
    old, new = payload(pair.refresh.token), payload(refreshed.refresh.token)
    assert (
        (new["idp"], new["anc"], new["cap"])
        == (old["idp"], old["anc"], old["cap"])
        == ("corp", ["ext:corp:ext-1"], NOW + 300)
    )
    assert payload(refreshed.access.token)["exp"] <= NOW + 300


async def test_the_lineage_is_bounded(service: TokenService, verifier: TokenVerifier) -> None:
    """Ancestors never exceed MAX_ANCESTORS: a deeper mint is a 403 naming the lineage."""
    caller: Principal = basic("ops", "all:any")
    for _ in range((MAX_ANCESTORS - 1) // 2 + 1):
        pair = await service.issue("ops", ["tokens:manage"], 600, caller=caller)
        caller = await verifier.verify(pair.access.token)
        assert len(payload(pair.access.token)["anc"]) <= MAX_ANCESTORS
    with pytest.raises(Forbidden, match="lineage too deep"):
        await service.issue("ops", ["tokens:manage"], 600, caller=caller)


async def test_a_parent_past_its_exp_within_the_leeway_mints_nothing(service: TokenService, clock: Clock) -> None:
    """A verifier accepts a parent up to leeway after exp; a child capped in the past is refused (401)."""
    clock.now = NOW + 10
    with pytest.raises(Unauthorized, match="has expired"):
        await service.issue("ops", ["messages:send"], 600, caller=external("ops", "messages:send", exp=NOW + 5))


def test_external_ids_use_jti_or_a_hash_of_iss_sub_exp() -> None:
    """ext:<issuer>:<jti>; without a jti a stable hash that changes with exp."""
    assert external_id(external("a", jti="j-1")) == "ext:corp:j-1"
    hashed = external_id(external("a", jti=None))
    assert hashed.startswith("ext:corp:h:")
    assert hashed == external_id(external("a", jti=None))
    assert hashed != external_id(external("a", jti=None, exp=NOW + 6))
    assert grant_of(external("a", jti=None), "a").ancestors == (hashed,)


def test_subject_keys_cannot_collide_through_a_colon() -> None:
    """An issuer name containing ':' cannot forge another identity's key."""
    assert subject_key("a:b", "c") != subject_key("a", "b:c")


async def test_tokens_minted_before_lineage_still_work(service: TokenService, verifier: TokenVerifier) -> None:
    """A token without idp/anc/cap (older gateway) verifies, is checked and refreshes; its identity is (self, sub).

    (It carries the store epoch: a token minted before epochs existed is refused, see test_store_guard.py.)
    """
    epoch = service.epochs.current_epoch() if service.epochs else None
    assert epoch is not None
    legacy = TokenIssuer(SETTINGS.tokens, clock=lambda: NOW).mint_pair(
        "svc", ["messages:send"], 600, grant={"ep": epoch.id}
    )
    await service.store.start_family(legacy.family, legacy.refresh.jti, NOW + 3600)
    principal = await verifier.verify(legacy.access.token)
    assert principal.identity == ("self", "svc")
    assert not await service.is_revoked(principal)
    refreshed = await service.refresh(await verifier.verify(legacy.refresh.token, refresh=True))
    assert payload(refreshed.access.token)["sub"] == "svc"


@pytest.mark.parametrize(
    ("user", "scopes", "kind", "error", "needle"),
    [
        ("gone", ["messages:send"], "access", Unauthorized, "no longer exists"),
        ("gone", ["messages:send"], "refresh", Unauthorized, "no longer exists"),
        ("sender", ["devices:list"], "access", Unauthorized, "no longer holds devices:list"),
        ("sender", ["devices:list"], "refresh", Forbidden, "no longer holds devices:list"),
        ("sender", ["messages:send"], "access", None, None),
        ("ops", ["devices:list"], "refresh", None, None),  # all:any holds everything
    ],
)
def test_identity_check_of_basic_grants(
    identities: Identities, user: str, scopes: list[str], kind: str, error: type[Exception] | None, needle: str | None
) -> None:
    """A Basic grant is refused when the user is gone (401) or lost a scope (401 access, 403 refresh)."""
    claims: dict[str, Any] = {"idp": "basic", "fam": "f"}
    if kind == "refresh":
        claims["grant_scope"] = " ".join(scopes)
    principal = Principal(user, frozenset(scopes), "self", "j", NOW + 60, MappingProxyType(claims), kind)  # type: ignore[arg-type]
    if error is None:
        identities.check(principal)
        return
    with pytest.raises(error, match=needle):
        identities.check(principal)


@pytest.mark.parametrize(
    ("claim", "kind", "error"),
    [
        (None, "access", Unauthorized),  # minted before sender got an sms: block: wider in both fields
        ({"countries": ["GB", "US"], "max_recipients": 5}, "access", Unauthorized),
        ({"countries": ["gb"], "max_recipients": 50}, "refresh", Forbidden),
        ({"countries": ["GB"]}, "access", Unauthorized),  # no max_recipients: any number
        ({"countries": ["GB"], "max_recipients": 5}, "access", None),
        ({"countries": ["GB"], "max_recipients": 3}, "refresh", None),
    ],
)
def test_identity_check_of_a_basic_grant_against_the_users_live_sms(
    claim: dict[str, Any] | None, kind: str, error: type[Exception] | None
) -> None:
    """A token whose `sms` claim allows more than its Basic user's current `sms:` is refused (401, refresh 403)."""
    identities = Identities(
        {"sender": frozenset({"messages:send"})},
        frozenset(),
        basic_sms={"sender": {"countries": ["GB"], "max_recipients": 5}},
    )
    claims: dict[str, Any] = {"idp": "basic", "fam": "f", **({"sms": claim} if claim is not None else {})}
    if kind == "refresh":
        claims["grant_scope"] = "messages:send"
    principal = Principal(
        "sender",
        frozenset({"messages:send"}),
        "self",
        "j",
        NOW + 60,
        MappingProxyType(claims),
        kind,  # type: ignore[arg-type]
    )
    if error is None:
        identities.check(principal)
        return
    with pytest.raises(error, match="may no longer send as widely"):
        identities.check(principal)


def test_identity_check_of_external_and_cli_grants(identities: Identities) -> None:
    """A token minted from an issuer no longer configured is refused; cli and pre-lineage tokens are the operator's."""

    def own(idp: str | None) -> Principal:
        claims = {"fam": "f"} if idp is None else {"idp": idp, "fam": "f"}
        return Principal("x", frozenset(), "self", "j", NOW + 60, MappingProxyType(claims), "access")

    identities.check(own("corp"))
    identities.check(own("cli"))
    identities.check(own(None))
    with pytest.raises(Unauthorized, match="issuer gone this token was minted from is no longer configured"):
        identities.check(own("gone"))


async def test_subject_revocation_refuses_earlier_tokens_of_that_identity_only(
    service: TokenService, verifier: TokenVerifier, clock: Clock
) -> None:
    """Tokens of (basic, ops) issued up to the revocation's second are refused; later ones, corp's ops and
    the external token's own later issues are not."""
    basic_pair = await service.issue("ops", ["messages:send"], 600, caller=basic("ops", "all:any"))
    corp_pair = await service.issue(
        "ops", ["messages:send"], 600, caller=external("ops", "messages:send", exp=NOW + 60)
    )
    clock.now = NOW + 0.5
    cutoff = await service.revoke_subject("basic", "ops", caller=None)
    assert cutoff == NOW + 1
    assert await service.is_revoked(await verifier.verify(basic_pair.access.token))
    assert await service.is_revoked(await verifier.verify(basic_pair.refresh.token, refresh=True))
    assert not await service.is_revoked(await verifier.verify(corp_pair.access.token))
    same_second = await service.issue("ops", ["messages:send"], 600, caller=basic("ops", "all:any"))
    assert await service.is_revoked(await verifier.verify(same_second.access.token))  # documented
    clock.now = NOW + 1
    later = await service.issue("ops", ["messages:send"], 600, caller=basic("ops", "all:any"))
    assert not await service.is_revoked(await verifier.verify(later.access.token))
    assert await service.is_revoked(external("ops", "messages:send", exp=NOW + 60)) is False
    await service.revoke_subject("corp", "ops", caller=None)
    assert await service.is_revoked(external("ops", "messages:send", exp=NOW + 60))
    with pytest.raises(BadRequest, match="unknown issuer 'nope'"):
        await service.revoke_subject("nope", "ops", caller=None)


# ----------------------------------------------------------------------------------------- over HTTP


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, LogCapture, GatewayConfig]]:
    async with RecordingUpstream(Reply(200, body=b"[]")) as up:
        cfg = GatewayConfig(
            tmp_path,
            up.url + "/3rdparty/v1",
            corp_issuer=True,
            extra="reload: {watch: false}\nadmin: {issuer: self, scope: settings:read}\n",
        )
        capture = LogCapture()
        gateway = create_app(cfg.settings(), env=cfg.env, log_sink=capture)
        async with UvicornServer(gateway, lifespan="on") as server, httpx.AsyncClient(base_url=server.url) as client:
            client.gateway = gateway  # type: ignore[attr-defined]
            yield client, capture, cfg


@pytest.mark.parametrize(
    ("query", "status", "needle"),
    [
        ("", 400, "sub is required"),
        ("?issuer=basic", 400, "sub is required"),
        ("?sub=a&sub=b", 400, "once each"),
        ("?sub=a&who=b", 400, "unknown parameter(s): who"),
        ("?sub=a&issuer=nope", 400, "unknown issuer 'nope'"),
        ("?sub=a&issuer=corp", 204, None),
        ("?sub=a", 204, None),
    ],
)
async def test_subject_revocation_query_is_validated(
    http: tuple[httpx.AsyncClient, LogCapture, GatewayConfig], query: str, status: int, needle: str | None
) -> None:
    """DELETE {mount}/auth/token?sub=&issuer=: a clear 400 for anything malformed; 204 otherwise."""
    client, capture, _ = http
    response = await client.delete(TOKEN + query, auth=("ops", OPS_PASSWORD))
    assert response.status_code == status
    if needle:
        assert needle in response.json()["message"]
    else:
        (event,) = capture.events("token.subject_revoked")
        assert (event["subject"], event["by"], event["by_issuer"]) == ("a", "ops", "basic")


async def test_subject_revocation_is_for_all_any_or_the_admin_identity(
    http: tuple[httpx.AsyncClient, LogCapture, GatewayConfig],
) -> None:
    """A Basic user without all:any gets 403; a gateway token with the admin scope (admin.issuer self) gets 204."""
    client, _, _ = http
    assert (await client.delete(TOKEN + "?sub=x", auth=("sender", SENDER_PASSWORD))).status_code == 403
    assert (await client.delete(TOKEN + "?sub=x")).status_code == 401
    admin = (await client.post(TOKEN, json={"scopes": ["settings:read"]}, auth=("ops", OPS_PASSWORD))).json()
    response = await client.delete(TOKEN + "?sub=x", headers={"authorization": f"Bearer {admin['access_token']}"})
    assert response.status_code == 204
    now = int(time.time())
    claims = {"iss": CORP_ISS, "aud": "sms-api", "sub": "boss", "iat": now, "exp": now + 300, "scope": "settings:read"}
    corp = jwt.encode(claims, CORP_SECRET, algorithm="HS256")
    # the same scope from another issuer is not the admin identity
    assert (await client.delete(TOKEN + "?sub=x", headers={"authorization": f"Bearer {corp}"})).status_code == 403


async def test_a_reload_that_narrows_a_user_revokes_them_with_one_audit_line(
    http: tuple[httpx.AsyncClient, LogCapture, GatewayConfig],
) -> None:
    """Removing sender and narrowing ops in one edit: one token.subjects_revoked line naming both."""
    client, capture, cfg = http
    gateway = client.gateway  # type: ignore[attr-defined]
    text = cfg.directory.joinpath("config.yaml").read_text()
    text = text.replace("scopes: [all:any]", "scopes: [messages:send]")
    text = "\n".join(line for line in text.splitlines() if "username: sender" not in line) + "\n"
    cfg.directory.joinpath("config.yaml").write_text(text)
    assert await gateway.reload()
    (event,) = capture.events("token.subjects_revoked")
    assert (event["idp"], event["subjects"]) == ("basic", ["ops", "sender"])
    assert await gateway.store.is_revoked(subject_key("basic", "sender"), issued_at=event["before"] - 1)


def test_cli_revoke_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`token revoke` takes a jti or --sub (with --issuer), not both; an unknown issuer is one clear line."""
    cfg = GatewayConfig(tmp_path, "http://127.0.0.1:9/3rdparty/v1", store="redis://127.0.0.1:6379/0")
    path = str(cfg.write())
    for key, value in cfg.env.items():
        monkeypatch.setenv(key, value)
    assert cli_main(["token", "revoke", "--config", path, "some-jti", "--sub", "x"]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli_main(["token", "revoke", "--config", path, "--issuer", "corp"]) == 2
    assert cli_main(["token", "revoke", "--config", path, "--sub", "x", "--issuer", "nope"]) == 1
    assert "unknown issuer 'nope'" in capsys.readouterr().err
    assert cli_main(["token", "revoke", "--config", path, "--sub", "x", "--issuer", "cli"]) == 0
    assert "revoked every token of cli:x issued before" in capsys.readouterr().out
