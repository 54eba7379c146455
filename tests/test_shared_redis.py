"""Two gateway processes sharing one Redis: a token revoked through one is refused by the other."""

from __future__ import annotations

from pathlib import Path

import httpx
from fakes import RecordingUpstream, Reply
from gatewayconfig import OPS_PASSWORD, GatewayConfig
from processes import gateway_process

TOKEN = "/3rdparty/v1/auth/token"


async def test_revocation_through_one_instance_is_seen_by_the_other(tmp_path: Path) -> None:
    """Instance B rejects, on its very next request, a token that instance A revoked."""
    async with RecordingUpstream(Reply(200, body=b"[]")) as upstream:
        cfg = GatewayConfig(tmp_path, upstream.url + "/3rdparty/v1", store="redis://127.0.0.1:6379/0")
        path = cfg.write()
        with gateway_process(path, cfg.env) as first, gateway_process(path, cfg.env) as second:
            a, b = first.url, second.url
            async with httpx.AsyncClient() as client:
                issued = await client.post(a + TOKEN, json={"scopes": ["messages:list"]}, auth=("ops", OPS_PASSWORD))
                assert issued.status_code == 201
                pair = issued.json()
                bearer = {"authorization": f"Bearer {pair['access_token']}"}
                assert (await client.get(b + "/3rdparty/v1/messages", headers=bearer)).status_code == 200
                revoked = await client.delete(f"{a}{TOKEN}/{pair['id']}", auth=("ops", OPS_PASSWORD))
                assert revoked.status_code == 204
                after = await client.get(b + "/3rdparty/v1/messages", headers=bearer)
                assert after.status_code == 401
                assert "revoked" in after.json()["message"]
                # and a refresh through B of the family A revoked is refused too
                refresh = await client.post(
                    b + TOKEN + "/refresh", headers={"authorization": f"Bearer {pair['refresh_token']}"}
                )
                assert refresh.status_code == 401
    assert len(upstream.requests) == 1
