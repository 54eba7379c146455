"""Abuse limits across real processes: two `gateway serve` instances sharing a private redis-server.

One module fixture (two instances, one recording upstream, one Redis) serves every test; each test uses
its own subjects (tokens of the external issuer `corp`) and its own number ranges, so buckets never mix.
Counts are asserted, never timings: the figures are in bench/ABUSE.md.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fakes import RecordingUpstream, Reply
from gatewayconfig import CORP_ISS, CORP_SECRET, SENDER_PASSWORD, SMSGATE_POLICY, GatewayConfig
from processes import gateway_process
from redisserver import private_redis

MESSAGES = "/3rdparty/v1/messages"
LIMITS = """
limits:
  - {name: sends, routes: ["POST /messages"], per: subject, rate: 6/h, burst: 6}
  - {name: recipients, routes: ["POST /messages"], per: subject, rate: 40/h, cost: recipients}
  - {name: segments, routes: ["POST /messages"], per: subject, rate: 100/h, cost: segments}
sms:
  send:
    - {route: "POST /messages", recipients: phoneNumbers, text: textMessage.text}
  destinations:
    countries: [US, GB]
    deny_number_types: [PREMIUM_RATE, SHARED_COST, UNKNOWN]
    max_recipients: 30
    prefix_velocity: {limit: 5, window: 1h}
"""


def us(i: int, area: str = "202") -> str:
    """A US number of its own prefix (the number minus its last 4 digits differs with i)."""
    return f"+1{area}{200 + i:03d}0123"


@dataclass
class Pair:
    a: str
    b: str
    upstream: RecordingUpstream
    client: httpx.Client

    def send(self, base: str, token: str, numbers: list[str], text: str = "hi") -> httpx.Response:
        body = {"phoneNumbers": numbers, "textMessage": {"text": text}}
        headers = {"authorization": f"Bearer {token}"}
        return self.client.post(base + MESSAGES, json=body, headers=headers)

    @property
    def forwarded(self) -> int:
        return sum(1 for r in self.upstream.requests if r.method == "POST")


def corp(sub: str, **extra: Any) -> str:
    now = int(time.time())
    claims = {"iss": CORP_ISS, "aud": "sms-api", "sub": sub, "iat": now, "exp": now + 600, "scope": "messages:send"}
    return jwt.encode({**claims, **extra}, CORP_SECRET, algorithm="HS256")


def remaining(response: httpx.Response, name: str) -> int:
    for member in response.headers["ratelimit"].split(","):
        label, *params = member.strip().split(";")
        if label == f'"{name}"':
            return int(dict(p.split("=") for p in params)["r"])
    raise AssertionError(f"{name} not in {response.headers['ratelimit']}")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    directory = tmp_path_factory.mktemp("limits")
    policy = directory / "smsgate.yaml"
    shipped = SMSGATE_POLICY.read_text()
    policy.write_text(shipped[: shipped.index("\nsms:\n")] + LIMITS)  # the shipped `sms.send` plus limits
    ready, stop = threading.Event(), threading.Event()
    box: dict[str, Any] = {}

    def upstream() -> None:
        async def main() -> None:
            async with RecordingUpstream(Reply(202, body=b"{}")) as up:
                box["up"] = up
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.05)

        asyncio.run(main())

    thread = threading.Thread(target=upstream, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        with private_redis() as server:
            cfg = GatewayConfig(directory, box["up"].url + "/3rdparty/v1", store=server.url, corp_issuer=True)
            cfg.policy = Path(policy)
            path = cfg.write()
            text = path.read_text().replace(
                "scopes: [messages:send, messages:read]}",
                "scopes: [messages:send, messages:read], sms: {countries: [GB]}}",
            )
            path.write_text(text + "proxy: {client_write_timeout_s: 1, body_timeout_s: 1}\n")
            with (
                gateway_process(path, cfg.env) as first,
                gateway_process(path, cfg.env) as second,
                httpx.Client(timeout=10) as client,
            ):
                yield Pair(first.url, second.url, box["up"], client)
    finally:
        stop.set()
        thread.join(10)


def test_a_rate_limit_holds_across_instances_within_its_burst(pair: Pair) -> None:
    token = corp("rate-a")
    before = pair.forwarded
    statuses = [pair.send(base, token, [us(i)]).status_code for i, base in enumerate([pair.a, pair.b] * 4)]
    assert statuses == [202] * 6 + [429, 429]
    assert pair.forwarded - before == 6
    refused = pair.send(pair.a, token, [us(9)])
    assert refused.status_code == 429
    assert refused.json()["limit"] == "sends"
    assert int(refused.headers["retry-after"]) >= 1
    assert '"sends";q=6;w=3600' in refused.headers["ratelimit-policy"]
    assert remaining(refused, "sends") == 0


def test_allowed_answers_carry_ratelimit_headers_and_costs_count_recipients_and_segments(pair: Pair) -> None:
    token = corp("costs")
    first = pair.send(pair.a, token, [us(i, "212") for i in range(3)])
    assert first.status_code == 202
    assert remaining(first, "sends") == 5
    assert remaining(first, "recipients") == 37
    assert remaining(first, "segments") == 97  # 3 recipients x 1 part
    gsm = pair.send(pair.b, token, [us(5, "212")], "a" * 161)  # GSM-7: 161 septets = 2 parts of 153
    assert remaining(gsm, "segments") == 95
    gsm_one = pair.send(pair.a, token, [us(6, "212")], "{" * 80)  # extension characters count two: 160
    assert remaining(gsm_one, "segments") == 94
    ucs = pair.send(pair.b, token, [us(7, "212")], "ж" * 71)  # UCS-2: 71 units = 2 parts of 67
    assert remaining(ucs, "segments") == 92
    ucs_one = pair.send(pair.a, token, [us(8, "212")], "ж" * 70)
    assert remaining(ucs_one, "segments") == 91
    assert remaining(ucs_one, "recipients") == 33


def test_too_many_recipients_for_the_quota_is_refused_whole(pair: Pair) -> None:
    token = corp("recipients")
    assert pair.send(pair.a, token, [us(i, "305") for i in range(25)]).status_code == 202
    before = pair.forwarded
    refused = pair.send(pair.b, token, [us(i, "312") for i in range(20)])
    assert refused.status_code == 429
    assert refused.json()["limit"] == "recipients"
    assert pair.forwarded == before


@pytest.mark.parametrize(
    ("numbers", "reason"),
    [
        (["+19005550123"], "number type"),  # premium rate
        (["+12025550123", "+33612345678"], "countries"),  # France
        (["12345"], "E.164"),  # unparseable
        ([us(i, "415") for i in range(31)], "at most 30"),
    ],
)
def test_destinations_are_refused_with_nothing_forwarded(pair: Pair, numbers: list[str], reason: str) -> None:
    before = pair.forwarded
    refused = pair.send(pair.a, corp("destinations"), numbers)
    assert refused.status_code == 403
    body = refused.json()
    assert body["code"] == "destination_not_allowed"
    assert reason in body["message"]
    assert all(number not in refused.text for number in numbers if len(number) > 6)  # masked
    assert pair.forwarded == before


def test_prefix_velocity_trips_across_subjects(pair: Pair) -> None:
    numbers = [f"+1617555{i:04d}" for i in range(100, 106)]  # one prefix: +1617555
    assert pair.send(pair.a, corp("velocity-1"), numbers[:3]).status_code == 202
    assert pair.send(pair.b, corp("velocity-2"), numbers[3:5]).status_code == 202
    before = pair.forwarded
    refused = pair.send(pair.a, corp("velocity-3"), numbers[5:])
    assert refused.status_code == 429
    assert refused.json()["limit"] == "prefix_velocity"
    assert pair.forwarded == before


def test_a_narrowed_caller_cannot_send_where_its_policy_allows(pair: Pair) -> None:
    sender = ("sender", SENDER_PASSWORD)
    body = {"phoneNumbers": ["+12125550199"], "textMessage": {"text": "hi"}}
    narrowed = pair.client.post(pair.a + MESSAGES, json=body, auth=sender)
    assert narrowed.status_code == 403
    assert "countries" in narrowed.json()["message"]
    body["phoneNumbers"] = ["+447400123456"]
    assert pair.client.post(pair.b + MESSAGES, json=body, auth=sender).status_code == 202
    wider = corp("narrow", sms={"countries": ["GB", "FR"]})  # a claim cannot widen the policy
    assert pair.send(pair.a, wider, ["+33612345678"]).status_code == 403
    assert pair.send(pair.a, corp("narrow-us", sms={"countries": ["GB"]}), ["+12125550199"]).status_code == 403
    assert pair.send(pair.a, corp("holder"), ["+12125550199"]).status_code == 202


def test_a_body_that_is_not_the_configured_shape_is_400(pair: Pair) -> None:
    headers = {"authorization": f"Bearer {corp('shape')}", "content-type": "application/json"}
    before = pair.forwarded
    assert pair.client.post(pair.a + MESSAGES, content=b"{not json", headers=headers).status_code == 400
    assert pair.client.post(pair.a + MESSAGES, json={"phoneNumbers": "x"}, headers=headers).status_code == 403
    assert pair.client.post(pair.a + MESSAGES, json={"to": ["+12125550199"]}, headers=headers).status_code == 400
    assert pair.forwarded == before


def _closed_by_gateway(sock: socket.socket, idle_s: float = 0.0) -> bool:
    """Stay idle `idle_s` (not reading), then read everything: True when the gateway ended the connection
    (EOF or reset) before the whole answer came, False when the answer completed or nothing happened."""
    time.sleep(idle_s)
    sock.settimeout(10)
    received = 0
    try:
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    except TimeoutError:
        return False  # still open: the answer completed (keep-alive) or nobody closed it
    except OSError:
        return True
    return received < 8 * 1024 * 1024


def test_a_client_that_never_reads_is_dropped_and_frees_its_slot(pair: Pair) -> None:
    pair.upstream.queue(Reply(200, stream_bytes=8 * 1024 * 1024))
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window stays small
        sock.connect(("127.0.0.1", int(pair.a.rsplit(":", 1)[1])))
        token = corp("slow-reader", scope="messages:read")
        sock.sendall(
            f"GET /3rdparty/v1/messages/big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        assert _closed_by_gateway(sock, idle_s=4.0)  # the write deadline is 1 s


def test_a_slow_request_body_is_dropped(pair: Pair) -> None:
    with socket.create_connection(("127.0.0.1", int(pair.b.rsplit(":", 1)[1]))) as sock:
        head = f"POST {MESSAGES} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {corp('slow-body')}\r\n"
        sock.sendall((head + "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{").encode())
        assert _closed_by_gateway(sock)


def test_basic_failed_logins_are_limited_per_client(pair: Pair) -> None:
    statuses = [
        pair.client.get(pair.b + "/3rdparty/v1/messages/x", auth=("sender", f"wrong-{i}")).status_code
        for i in range(14)
    ]
    assert statuses[:10] == [401] * 10
    assert 429 in statuses[10:]
    metrics = pair.client.get(pair.b + "/metrics").text
    assert 'smsguard_basic_logins_total{outcome="limited_client"}' in metrics
    assert 'smsguard_limit_refusals_total{limit="destinations"' in pair.client.get(pair.a + "/metrics").text


# ------------------------------------------------------------------------- tokens narrower than their holder

TOKEN = "/3rdparty/v1/auth/token"
MANAGER = "messages:send tokens:manage"


def gb(i: int) -> str:
    """A GB mobile number of its own prefix."""
    return f"+4477{20 + i:02d}123456"


def mint(pair: Pair, base: str, body: dict[str, Any], **auth: Any) -> httpx.Response:
    return pair.client.post(base + TOKEN, json=body, **auth)


def minted(pair: Pair, base: str, body: dict[str, Any], **auth: Any) -> dict[str, Any]:
    response = mint(pair, base, body, **auth)
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


def bearer(token: str) -> dict[str, dict[str, str]]:
    return {"headers": {"authorization": f"Bearer {token}"}}


def claims_of(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def test_a_token_narrowed_to_gb_cannot_send_to_the_us_while_its_holder_can(pair: Pair) -> None:
    holder = corp("narrowing-holder", scope=MANAGER)
    body = {"scopes": ["messages:send"], "sms": {"countries": ["gb"], "max_recipients": 2}}
    token = minted(pair, pair.a, body, **bearer(holder))["access_token"]
    assert claims_of(token)["sms"] == {"countries": ["GB"], "max_recipients": 2}
    before = pair.forwarded
    refused = pair.send(pair.b, token, [us(1, "646")])
    assert refused.status_code == 403
    assert refused.json()["code"] == "destination_not_allowed"
    assert "countries" in refused.json()["message"]
    too_many = pair.send(pair.a, token, [gb(1), gb(2), gb(3)])  # the policy allows 30, the token 2
    assert too_many.status_code == 403
    assert "at most 2" in too_many.json()["message"]
    assert pair.forwarded == before
    assert pair.send(pair.a, token, [gb(4)]).status_code == 202
    assert pair.send(pair.b, holder, [us(2, "646")]).status_code == 202


def test_a_narrowing_wider_than_the_caller_is_403_never_widened(pair: Pair) -> None:
    sender = {"auth": ("sender", SENDER_PASSWORD)}  # the Basic user carries `sms: {countries: [GB]}`
    wider = mint(pair, pair.a, {"scopes": ["messages:send"], "sms": {"countries": ["GB", "US"]}}, **sender)
    assert wider.status_code == 403
    assert wider.json()["code"] == "sms_wider_than_caller"
    assert "US" in wider.json()["message"]
    inherited = minted(pair, pair.b, {"scopes": ["messages:send"]}, **sender)["access_token"]
    assert claims_of(inherited)["sms"] == {"countries": ["GB"]}  # no request: the caller's own narrowing
    assert pair.send(pair.a, inherited, ["+12125550199"]).status_code == 403
    capped = corp("narrowing-capped", scope=MANAGER, sms={"max_recipients": 3})
    more = mint(pair, pair.b, {"scopes": ["messages:send"], "sms": {"max_recipients": 4}}, **bearer(capped))
    assert more.status_code == 403
    assert "at most 3" in more.json()["message"]
    fewer = minted(pair, pair.b, {"scopes": ["messages:send"], "sms": {"max_recipients": 1}}, **bearer(capped))
    assert claims_of(fewer["access_token"])["sms"] == {"max_recipients": 1}


@pytest.mark.parametrize(
    ("sms", "reason"),
    [
        ({"countries": ["GB"], "regions": ["EU"]}, "unknown sms field"),
        ({"countries": ["GBR"]}, "alpha-2"),
        ({"countries": []}, "alpha-2"),
        ({"countries": "GB"}, "alpha-2"),
        ({"max_recipients": 0}, "positive"),
        ({"max_recipients": True}, "positive"),
        (["GB"], "object"),
    ],
)
def test_a_malformed_narrowing_is_400(pair: Pair, sms: Any, reason: str) -> None:
    refused = mint(
        pair, pair.a, {"scopes": ["messages:send"], "sms": sms}, **bearer(corp("narrowing-bad", scope=MANAGER))
    )
    assert refused.status_code == 400
    assert reason in refused.json()["message"]


def test_a_refresh_keeps_the_narrowing(pair: Pair) -> None:
    holder = corp("narrowing-refresh", scope=MANAGER)
    first = minted(pair, pair.a, {"scopes": ["messages:send"], "sms": {"countries": ["GB"]}}, **bearer(holder))
    assert claims_of(first["refresh_token"])["sms"] == {"countries": ["GB"]}
    refreshed = pair.client.post(pair.b + TOKEN + "/refresh", **bearer(first["refresh_token"]))
    assert refreshed.status_code == 201, refreshed.text
    token = refreshed.json()["access_token"]
    assert claims_of(token)["sms"] == {"countries": ["GB"]}
    before = pair.forwarded
    assert pair.send(pair.a, token, [us(3, "646")]).status_code == 403
    assert pair.forwarded == before
    assert pair.send(pair.a, token, [gb(5)]).status_code == 202


def test_a_child_of_a_narrowed_token_cannot_widen_it(pair: Pair) -> None:
    holder = corp("narrowing-parent", scope=MANAGER)
    body = {"scopes": ["messages:send", "tokens:manage"], "sms": {"countries": ["GB"], "max_recipients": 2}}
    parent = minted(pair, pair.a, body, **bearer(holder))["access_token"]
    for wider in ({"countries": ["GB", "US"]}, {"countries": ["US"]}, {"max_recipients": 3}):
        refused = mint(pair, pair.b, {"scopes": ["messages:send"], "sms": wider}, **bearer(parent))
        assert refused.status_code == 403, wider
        assert refused.json()["code"] == "sms_wider_than_caller"
    inherited = minted(pair, pair.b, {"scopes": ["messages:send"]}, **bearer(parent))["access_token"]
    assert claims_of(inherited)["sms"] == {"countries": ["GB"], "max_recipients": 2}
    child = minted(pair, pair.a, {"scopes": ["messages:send"], "sms": {"max_recipients": 1}}, **bearer(parent))
    token = child["access_token"]
    assert claims_of(token)["sms"] == {"countries": ["GB"], "max_recipients": 1}  # countries inherited
    before = pair.forwarded
    assert pair.send(pair.a, token, [us(4, "646")]).status_code == 403
    assert pair.send(pair.b, token, [gb(6), gb(7)]).status_code == 403
    assert pair.forwarded == before
    assert pair.send(pair.b, token, [gb(8)]).status_code == 202
