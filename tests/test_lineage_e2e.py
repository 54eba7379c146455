"""Token lifecycle across real processes: two `gateway serve` instances sharing a private redis-server.

Lineage (a child dies with its parent and never outlives it), subject revocation (CLI and API, on every
instance), a Basic user removed or narrowed by a hot reload, and ownership by identity (issuer, subject).
The instances trust an external issuer `corp` whose tokens the tests sign; leeway is 0 so expiry is exact.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fakes import RecordingUpstream, Reply
from gatewayconfig import ADMIN_BY_BASIC, CORP_ISS, CORP_SECRET, OPS_PASSWORD, SENDER_PASSWORD, GatewayConfig
from processes import gateway_process
from redisserver import PrivateRedis, private_redis

TOKEN = "/3rdparty/v1/auth/token"
MESSAGES = "/3rdparty/v1/messages"
READ = "/3rdparty/v1/messages/m-1"  # messages:read, which sender holds (GET /messages needs messages:list)
OPS = ("ops", OPS_PASSWORD)
SENDER = ("sender", SENDER_PASSWORD)
SENDER_LINE = '    - {username: sender, password_hash: "${T_SENDER_HASH}", scopes: [messages:send, messages:read]}\n'


@dataclass
class Pair:
    """Two instances (a, b) on one Redis, their shared config file and a client."""

    a: str
    b: str
    config: Path
    env: dict[str, str]
    redis: PrivateRedis
    client: httpx.Client

    def mint(self, base: str, scopes: list[str], auth: Any = OPS, bearer: str | None = None) -> dict[str, Any]:
        response = self.issue(base, scopes, auth=auth, bearer=bearer)
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    def issue(self, base: str, scopes: list[str], auth: Any = OPS, bearer: str | None = None) -> httpx.Response:
        headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
        return self.client.post(base + TOKEN, json={"scopes": scopes}, auth=None if bearer else auth, headers=headers)

    def get(self, base: str, token: str, path: str = MESSAGES) -> int:
        return self.client.get(base + path, headers={"authorization": f"Bearer {token}"}).status_code

    def refresh(self, base: str, refresh_token: str) -> httpx.Response:
        return self.client.post(base + TOKEN + "/refresh", headers={"authorization": f"Bearer {refresh_token}"})

    def reloads(self, base: str) -> int:
        count: int = self.client.get(base + "/readyz", auth=OPS).json()["policy"]["reloads"]
        return count

    def edit(self, old: str, new: str) -> None:
        """Edit config.yaml and wait until both instances have reloaded it."""
        before = {base: self.reloads(base) for base in (self.a, self.b)}
        text = self.config.read_text()
        assert old in text
        self.config.write_text(text.replace(old, new))
        for base in (self.a, self.b):
            eventually(lambda base=base: self.reloads(base) > before[base], 5.0, f"{base} reloaded")  # type: ignore[misc]


def corp_token(sub: str, scopes: str, ttl_s: int = 300, **extra: Any) -> str:
    """A token of the external issuer `corp` (what its IdP would hand out)."""
    now = int(time.time())
    claims = {"iss": CORP_ISS, "aud": "sms-api", "sub": sub, "iat": now, "exp": now + ttl_s, "scope": scopes, **extra}
    return jwt.encode(claims, CORP_SECRET, algorithm="HS256")


def claims(token: str) -> dict[str, Any]:
    payload: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return payload


def eventually(condition: Callable[[], bool], within_s: float, what: str) -> float:
    """Poll until `condition()` holds; return how long it took (fails after `within_s`)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < within_s, f"not within {within_s} s: {what}"
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    import asyncio
    import threading

    directory = tmp_path_factory.mktemp("lineage")
    ready = threading.Event()
    stop = threading.Event()
    box: dict[str, str] = {}

    def upstream() -> None:  # a recording upstream on its own loop, for the module's lifetime
        async def main() -> None:
            async with RecordingUpstream(Reply(200, body=b"[]")) as up:
                box["url"] = up.url
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.05)

        asyncio.run(main())

    thread = threading.Thread(target=upstream, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        with private_redis() as server:
            cfg = GatewayConfig(
                directory,
                box["url"] + "/3rdparty/v1",
                store=server.url,
                corp_issuer=True,
                auth_extra="  leeway_s: 0\n",
                extra="reload: {watch: true, debounce_ms: 50}\n" + ADMIN_BY_BASIC,
            )
            path = cfg.write()
            with (
                gateway_process(path, cfg.env) as first,
                gateway_process(path, cfg.env) as second,
                httpx.Client(timeout=10) as client,
            ):
                yield Pair(first.url, second.url, path, cfg.env, server, client)
    finally:
        stop.set()
        thread.join(10)


def test_revoking_a_parent_ends_its_descendants_on_the_other_instance(pair: Pair) -> None:
    """Parent revoked through A → child, grandchild and their refresh tokens refused by B within 1 s."""
    scopes = ["tokens:manage", "messages:list"]
    parent = pair.mint(pair.a, scopes)
    child = pair.mint(pair.a, scopes, bearer=parent["access_token"])
    grandchild = pair.mint(pair.b, scopes, bearer=child["access_token"])
    for token in (parent, child, grandchild):
        assert pair.get(pair.b, token["access_token"]) == 200
    assert claims(child["access_token"])["exp"] <= claims(parent["access_token"])["exp"]
    assert claims(child["refresh_token"])["exp"] <= claims(parent["access_token"])["exp"]
    assert claims(grandchild["refresh_token"])["exp"] <= claims(child["access_token"])["exp"]
    # a refreshed child stays in the lineage: its new tokens die with the parent too
    refreshed = pair.refresh(pair.b, child["refresh_token"])
    assert refreshed.status_code == 201, refreshed.text
    child = refreshed.json()
    assert claims(child["refresh_token"])["exp"] <= claims(parent["access_token"])["exp"]

    assert pair.client.delete(f"{pair.a}{TOKEN}/{parent['id']}", auth=OPS).status_code == 204

    def all_refused() -> bool:
        return all(pair.get(pair.b, t["access_token"]) == 401 for t in (parent, child, grandchild))

    eventually(all_refused, 1.0, "descendants refused on B")
    for token in (child, grandchild):
        response = pair.refresh(pair.b, token["refresh_token"])
        assert response.status_code == 401
        assert "revoked" in response.json()["message"]
    refused = pair.issue(pair.b, ["messages:list"], bearer=grandchild["access_token"])
    assert refused.status_code == 401


def test_revoking_a_child_leaves_its_parent_alone(pair: Pair) -> None:
    """DELETE of a child's jti ends the child only."""
    parent = pair.mint(pair.a, ["tokens:manage", "messages:list"])
    child = pair.mint(pair.a, ["messages:list"], bearer=parent["access_token"])
    assert pair.client.delete(f"{pair.a}{TOKEN}/{child['id']}", auth=OPS).status_code == 204
    eventually(lambda: pair.get(pair.b, child["access_token"]) == 401, 1.0, "child refused on B")
    assert pair.get(pair.b, parent["access_token"]) == 200
    assert pair.refresh(pair.b, parent["refresh_token"]).status_code == 201


def test_a_child_never_outlives_a_short_external_token(pair: Pair) -> None:
    """A 5 s IdP token mints a pair; access and refresh exp are capped at its exp and stop working then."""
    external = corp_token("app-7", "tokens:manage messages:list", ttl_s=5)
    external_exp = claims(external)["exp"]
    child = pair.mint(pair.a, ["messages:list"], bearer=external)
    assert claims(child["access_token"])["exp"] <= external_exp
    assert claims(child["refresh_token"])["exp"] <= external_exp
    assert pair.get(pair.b, child["access_token"]) == 200
    time.sleep(max(external_exp - time.time(), 0) + 0.2)
    assert pair.get(pair.b, child["access_token"]) == 401
    assert pair.get(pair.a, external) == 401
    assert pair.refresh(pair.b, child["refresh_token"]).status_code == 401


def test_lineage_depth_is_bounded(pair: Pair) -> None:
    """Minting deeper than the bounded lineage is a 403 naming why."""
    token = pair.mint(pair.a, ["tokens:manage"])["access_token"]
    for _ in range(3):  # Basic → 1 → 2 → 3 → 4: 1 + 2 x 3 = 7 ancestors
        token = pair.mint(pair.a, ["tokens:manage"], bearer=token)["access_token"]
    response = pair.issue(pair.a, ["tokens:manage"], bearer=token)
    assert response.status_code == 403
    assert "lineage" in response.json()["message"]


def test_ownership_is_by_identity_not_subject(pair: Pair) -> None:
    """An external token with sub=ops can neither revoke nor mint as the Basic user ops."""
    basic_ops = pair.mint(pair.a, ["tokens:manage", "messages:list"])
    corp_ops = corp_token("ops", "tokens:manage messages:list")
    response = pair.client.delete(f"{pair.a}{TOKEN}/{basic_ops['id']}", headers={"authorization": f"Bearer {corp_ops}"})
    assert response.status_code == 403
    assert pair.get(pair.b, basic_ops["access_token"]) == 200
    minted = pair.mint(pair.a, ["messages:list"], bearer=corp_ops)
    assert claims(minted["access_token"])["idp"] == "corp"
    # the Basic user ops (not all:any here: a tokens:manage token) cannot revoke corp's ops token either
    denied = pair.client.delete(
        f"{pair.a}{TOKEN}/{minted['id']}", headers={"authorization": f"Bearer {basic_ops['access_token']}"}
    )
    assert denied.status_code == 403
    own = pair.client.delete(f"{pair.a}{TOKEN}/{minted['id']}", headers={"authorization": f"Bearer {corp_ops}"})
    assert own.status_code == 204


def cli(pair: Pair, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "token", *args],
        env={**os.environ, **pair.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def wait_for_next_second() -> None:
    time.sleep(int(time.time()) + 1.05 - time.time())


def test_subject_revocation_by_cli_ends_every_token_of_that_identity_only(pair: Pair) -> None:
    """`token revoke --sub sender` ends sender's tokens on both instances; corp's `sender` is untouched."""
    basic = pair.mint(pair.a, ["messages:send", "messages:read"], auth=SENDER)
    refreshed = pair.refresh(pair.b, basic["refresh_token"])
    assert refreshed.status_code == 201
    basic = refreshed.json()
    corp_sender = corp_token("sender", "tokens:manage messages:read")
    corp_child = pair.mint(pair.b, ["messages:read"], bearer=corp_sender)
    result = cli(pair, "revoke", "--config", str(pair.config), "--sub", "sender")
    assert result.returncode == 0, result.stderr
    assert "basic:sender" in result.stdout
    for base in (pair.a, pair.b):
        eventually(lambda b=base: pair.get(b, basic["access_token"], READ) == 401, 1.0, "sender refused")  # type: ignore[misc]
        assert pair.get(base, corp_sender, READ) == 200
        assert pair.get(base, corp_child["access_token"], READ) == 200
    assert pair.refresh(pair.a, basic["refresh_token"]).status_code == 401
    wait_for_next_second()  # tokens minted in the second of the revocation are refused too (iat is whole seconds)
    fresh = pair.mint(pair.b, ["messages:read"], auth=SENDER)
    assert pair.get(pair.a, fresh["access_token"], READ) == 200


def test_subject_revocation_by_api_needs_admin_and_reaches_external_tokens(pair: Pair) -> None:
    """DELETE /auth/token?sub=&issuer=: 403 for a mere tokens:manage caller, 204 for all:any; then the
    external identity's own IdP tokens and the tokens minted from them are refused, Basic's namesake kept."""
    corp_ops = corp_token("ops", "tokens:manage messages:list")
    corp_child = pair.mint(pair.a, ["messages:list"], bearer=corp_ops)
    basic_ops = pair.mint(pair.a, ["messages:list"])
    sender = pair.mint(pair.a, ["messages:read"], auth=SENDER)
    target = f"{pair.a}{TOKEN}?sub=ops&issuer=corp"
    assert pair.client.delete(target, auth=SENDER).status_code == 403
    assert pair.client.delete(target, headers={"authorization": f"Bearer {sender['access_token']}"}).status_code == 403
    unknown = pair.client.delete(f"{pair.a}{TOKEN}?sub=ops&issuer=nope", auth=OPS)
    assert unknown.status_code == 400
    assert pair.client.delete(target, auth=OPS).status_code == 204
    for base in (pair.a, pair.b):
        eventually(lambda b=base: pair.get(b, corp_child["access_token"]) == 401, 1.0, "corp ops refused")  # type: ignore[misc]
        assert pair.get(base, corp_ops) == 401
        assert pair.get(base, basic_ops["access_token"]) == 200
    assert pair.refresh(pair.b, corp_child["refresh_token"]).status_code == 401


def test_removing_a_basic_user_ends_their_tokens(pair: Pair) -> None:
    """sender deleted from config.yaml (hot reload on both instances) → access and refresh refused."""
    wait_for_next_second()  # clear of any earlier subject revocation of sender
    tokens = pair.mint(pair.a, ["messages:read"], auth=SENDER)
    second = pair.mint(pair.a, ["messages:read"], auth=SENDER)
    assert pair.get(pair.b, tokens["access_token"], READ) == 200
    pair.edit(SENDER_LINE, "")
    try:
        for base in (pair.a, pair.b):
            assert pair.get(base, tokens["access_token"], READ) == 401
            assert pair.get(base, second["access_token"], READ) == 401
        response = pair.refresh(pair.b, tokens["refresh_token"])
        assert response.status_code == 401
        assert pair.client.post(pair.a + TOKEN, json={"scopes": ["messages:read"]}, auth=SENDER).status_code == 401
    finally:
        pair.edit("  basic_users:\n", "  basic_users:\n" + SENDER_LINE)


def test_narrowing_a_basic_user_refuses_the_refresh(pair: Pair) -> None:
    """sender loses messages:send → a refresh of a token holding it is 403 naming the scope, never the old scopes."""
    wait_for_next_second()
    tokens = pair.mint(pair.a, ["messages:send", "messages:read"], auth=SENDER)
    pair.edit("scopes: [messages:send, messages:read]", "scopes: [messages:read]")
    try:
        assert pair.get(pair.b, tokens["access_token"], READ) == 401
        assert pair.get(pair.a, tokens["access_token"], READ) == 401
        response = pair.refresh(pair.b, tokens["refresh_token"])
        assert response.status_code == 403
        assert "messages:send" in response.json()["message"]
    finally:
        pair.edit("scopes: [messages:read]", "scopes: [messages:send, messages:read]")


def test_tightening_a_basic_users_sms_reaches_the_tokens_they_minted(pair: Pair) -> None:
    """sender gets `sms: {countries: [GB]}` by a hot reload → the token minted before (no sms claim: any
    country) is refused on both instances, its refresh is 403; a token minted now carries the narrowing."""
    wait_for_next_second()
    tokens = pair.mint(pair.a, ["messages:read"], auth=SENDER)
    assert pair.get(pair.b, tokens["access_token"], READ) == 200
    narrowed = SENDER_LINE.replace("}\n", ", sms: {countries: [GB]}}\n")
    pair.edit(SENDER_LINE, narrowed)
    try:
        for base in (pair.a, pair.b):
            response = pair.client.get(base + READ, headers={"authorization": f"Bearer {tokens['access_token']}"})
            assert response.status_code == 401
            assert "sms.countries" in response.json()["message"]
        assert pair.refresh(pair.b, tokens["refresh_token"]).status_code == 403
        fresh = pair.mint(pair.a, ["messages:read"], auth=SENDER)
        assert claims(fresh["access_token"])["sms"] == {"countries": ["GB"]}
        assert pair.get(pair.b, fresh["access_token"], READ) == 200
    finally:
        pair.edit(narrowed, SENDER_LINE)
