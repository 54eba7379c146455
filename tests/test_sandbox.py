"""The demo sandbox: a real loopback server answering SMSGate's 3rdparty/v1 shapes with made-up data."""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from android_sms_gateway import client as sms_client
from android_sms_gateway import domain
from android_sms_gateway.errors import UnauthorizedError

from gateway.sandbox.app import BASE_PATH, MAX_BODY_BYTES, Sandbox, create_sandbox

USER, PASSWORD = "sandbox-user", "s3cret-sandbox"
TEXT = {"phoneNumbers": ["+15555550123"], "textMessage": {"text": "hello"}}
ID_SHAPE = re.compile(r"[A-Za-z0-9_-]{21}")


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sandbox(clock: FakeClock) -> AsyncIterator[Sandbox]:
    async with Sandbox(USER, PASSWORD, clock=clock, delivery_step_s=2.0) as running:
        yield running


@pytest.fixture
async def api(sandbox: Sandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sandbox.base_url, auth=(USER, PASSWORD)) as http:
        yield http


@pytest.fixture
async def anon(sandbox: Sandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sandbox.base_url) as http:
        yield http


async def send(api: httpx.AsyncClient, **extra: Any) -> dict[str, Any]:
    response = await api.post("/messages", json={**TEXT, **extra})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --- auth -------------------------------------------------------------------------------------------------

PROTECTED = [
    ("GET", "/messages"),
    ("POST", "/messages"),
    ("GET", "/messages/abc"),
    ("DELETE", "/messages/abc"),
    ("POST", "/messages/inbox/export"),
    ("GET", "/inbox"),
    ("POST", "/inbox/refresh"),
    ("GET", "/devices"),
    ("DELETE", "/devices/abc"),
    ("GET", "/settings"),
    ("PUT", "/settings"),
    ("PATCH", "/settings"),
    ("GET", "/webhooks"),
    ("POST", "/webhooks"),
    ("DELETE", "/webhooks/abc"),
    ("GET", "/logs"),
    ("GET", "/no-such-route"),
]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


BAD_AUTH = [
    pytest.param(basic(USER, "wrong"), id="wrong-password"),
    pytest.param(basic("someone", PASSWORD), id="wrong-user"),
    pytest.param(basic(USER, PASSWORD + "x"), id="password-prefix"),
    pytest.param(basic(USER, ""), id="empty-password"),
    pytest.param("Basic " + base64.b64encode(USER.encode()).decode(), id="no-colon"),
    pytest.param("Basic !!!not-base64!!!", id="bad-base64"),
    pytest.param(f"Bearer {PASSWORD}", id="bearer"),
    pytest.param("", id="empty-header"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_every_route_but_health_needs_basic_auth(anon: httpx.AsyncClient, method: str, path: str) -> None:
    """Without credentials every route, known or not, answers 401 with a Basic challenge."""
    response = await anon.request(method, path)
    assert response.status_code == 401
    assert response.json() == {"message": "Unauthorized"}
    assert response.headers["www-authenticate"] == 'Basic realm="sandbox"'


@pytest.mark.parametrize("header", BAD_AUTH)
async def test_wrong_credentials_are_refused(anon: httpx.AsyncClient, header: str) -> None:
    """Only the exact configured username and password pass."""
    response = await anon.get("/messages", headers={"Authorization": header})
    assert response.status_code == 401


@pytest.mark.parametrize("path", ["/health", "/health/live", "/health/ready", "/health/startup"])
async def test_health_is_public(anon: httpx.AsyncClient, path: str) -> None:
    """Health answers without credentials, in SMSGate's health shape."""
    response = await anon.get(path)
    assert response.status_code == 200
    assert response.json()["status"] == "pass"
    assert response.json()["version"] == "sandbox"


async def test_head_health_is_public_and_bodiless(anon: httpx.AsyncClient) -> None:
    """HEAD works wherever GET does, health included."""
    response = await anon.head("/health")
    assert response.status_code == 200
    assert response.content == b""


async def test_auth_is_checked_before_the_body_is_read(anon: httpx.AsyncClient) -> None:
    """An oversized body from an unauthenticated caller is refused as 401, not read."""
    response = await anon.post("/messages", content=b"x" * (MAX_BODY_BYTES + 1))
    assert response.status_code == 401


# --- messages ---------------------------------------------------------------------------------------------


async def test_send_answers_202_with_location_and_pending_state(api: httpx.AsyncClient) -> None:
    """A valid send is accepted as Pending, with a Location pointing at the new message."""
    response = await api.post("/messages", json={**TEXT, "phoneNumbers": ["+15555550123", "+15555550124"]})
    assert response.status_code == 202
    body = response.json()
    assert ID_SHAPE.fullmatch(body["id"])
    assert response.headers["location"] == f"{BASE_PATH}/messages/{body['id']}"
    assert body["state"] == "Pending"
    assert body["deviceId"] == "sandbox-pixel-7a"
    assert body["isHashed"] is False
    assert body["isEncrypted"] is False
    assert body["recipients"] == [
        {"phoneNumber": "+15555550123", "state": "Pending"},
        {"phoneNumber": "+15555550124", "state": "Pending"},
    ]
    assert list(body["states"]) == ["Pending"]
    assert parse_time(body["states"]["Pending"]) == parse_time(body["createdAt"])
    assert body["createdAt"].endswith("Z")


async def test_send_keeps_given_id_device_and_legacy_message(api: httpx.AsyncClient) -> None:
    """A caller-chosen id and deviceId are used; the legacy `message` field is accepted."""
    body = {"id": "my-id-1", "deviceId": "sandbox-galaxy-a54", "message": "hi", "phoneNumbers": ["+15555550123"]}
    response = await api.post("/messages", json=body)
    assert response.status_code == 202
    assert response.json()["id"] == "my-id-1"
    assert response.json()["deviceId"] == "sandbox-galaxy-a54"
    again = await api.post("/messages", json=body)
    assert again.status_code == 409


@pytest.mark.parametrize(
    ("elapsed", "expected", "reached"),
    [
        (0.0, "Pending", ["Pending"]),
        (1.999, "Pending", ["Pending"]),
        (2.0, "Sent", ["Pending", "Sent"]),
        (3.5, "Sent", ["Pending", "Sent"]),
        (4.0, "Delivered", ["Pending", "Sent", "Delivered"]),
        (3600.0, "Delivered", ["Pending", "Sent", "Delivered"]),
    ],
)
async def test_state_advances_with_the_clock(
    api: httpx.AsyncClient, clock: FakeClock, elapsed: float, expected: str, reached: list[str]
) -> None:
    """Pending, then Sent after one step, then Delivered after two; each transition is time-stamped."""
    sent = await send(api)
    clock.now += elapsed
    body = (await api.get(f"/messages/{sent['id']}")).json()
    assert body["state"] == expected
    assert [r["state"] for r in body["recipients"]] == [expected]
    assert list(body["states"]) == reached
    times = [parse_time(body["states"][name]) for name in reached]
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(times)] == [2.0] * (len(reached) - 1)


async def test_without_delivery_report_a_message_stops_at_sent(api: httpx.AsyncClient, clock: FakeClock) -> None:
    """No delivery report was asked for, so none ever arrives."""
    sent = await send(api, withDeliveryReport=False)
    clock.now += 100
    assert (await api.get(f"/messages/{sent['id']}")).json()["state"] == "Sent"


async def test_list_is_newest_first_with_paging(api: httpx.AsyncClient) -> None:
    """GET /messages lists newest first, honours limit/offset, and counts all matches in X-Total-Count."""
    ids = [(await send(api))["id"] for _ in range(3)]
    response = await api.get("/messages", params={"limit": 2})
    assert response.status_code == 200
    assert [m["id"] for m in response.json()] == ids[::-1][:2]
    assert response.headers["x-total-count"] == "3"
    rest = await api.get("/messages", params={"limit": 2, "offset": 2})
    assert [m["id"] for m in rest.json()] == ids[:1]
    oldest_first = await api.get("/messages", params={"sort": "created_at"})
    assert [m["id"] for m in oldest_first.json()] == ids


async def test_list_filters_by_state(api: httpx.AsyncClient) -> None:
    """The `state` filter sees the lazily computed state."""
    kept = await send(api)
    cancelled = await send(api)
    assert (await api.delete(f"/messages/{cancelled['id']}")).status_code == 204
    response = await api.get("/messages", params={"state": "Pending"})
    assert [m["id"] for m in response.json()] == [kept["id"]]
    assert response.headers["x-total-count"] == "1"


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "101"}, {"limit": "-1"}, {"limit": "ten"}, {"offset": "-5"}, {"sort": "id"}],
)
async def test_bad_list_parameters_are_400(api: httpx.AsyncClient, params: dict[str, str]) -> None:
    """Paging and sort parameters are validated, not silently clamped."""
    response = await api.get("/messages", params=params)
    assert response.status_code == 400
    assert response.json()["message"]


async def test_cancel_pending_then_too_late_once_sent(api: httpx.AsyncClient, clock: FakeClock) -> None:
    """A Pending message cancels (204, idempotent) and stays Cancelled; a Sent one cannot (409)."""
    pending = await send(api)
    clock.now += 0.5
    assert (await api.delete(f"/messages/{pending['id']}")).status_code == 204
    assert (await api.delete(f"/messages/{pending['id']}")).status_code == 204
    clock.now += 100
    body = (await api.get(f"/messages/{pending['id']}")).json()
    assert body["state"] == "Cancelled"
    assert list(body["states"]) == ["Pending", "Cancelled"]

    sent = await send(api)
    clock.now += 2
    refused = await api.delete(f"/messages/{sent['id']}")
    assert refused.status_code == 409
    assert "Sent" in refused.json()["message"]


SEND_400 = [
    ({"textMessage": {"text": "x"}}, "phoneNumbers"),
    ({**TEXT, "phoneNumbers": []}, "phoneNumbers"),
    ({**TEXT, "phoneNumbers": "+15555550123"}, "phoneNumbers"),
    ({**TEXT, "phoneNumbers": [123]}, "phoneNumbers"),
    ({**TEXT, "phoneNumbers": ["+1555555012" + "3" * 20]}, "invalid phone number"),
    ({**TEXT, "phoneNumbers": ["+1"] * 101}, "phoneNumbers"),
    ({"phoneNumbers": ["+15555550123"]}, "exactly one of"),
    ({**TEXT, "message": "also"}, "exactly one of"),
    ({**TEXT, "textMessage": {"text": ""}}, "textMessage.text"),
    ({**TEXT, "textMessage": "hello"}, "textMessage.text"),
    ({"phoneNumbers": ["+15555550123"], "dataMessage": {"data": "AA==", "port": 70000}}, "dataMessage"),
    ({**TEXT, "ttl": -1}, "ttl"),
    ({**TEXT, "ttl": "60"}, "ttl"),
    ({**TEXT, "ttl": 60, "validUntil": "2030-01-01T00:00:00Z"}, "mutually exclusive"),
    ({**TEXT, "simNumber": 4}, "simNumber"),
    ({**TEXT, "priority": 128}, "priority"),
    ({**TEXT, "withDeliveryReport": "yes"}, "withDeliveryReport"),
    ({**TEXT, "isEncrypted": 1}, "isEncrypted"),
    ({**TEXT, "deviceId": "unknown-device"}, "device"),
    ({**TEXT, "id": "x" * 37}, "id"),
]


@pytest.mark.parametrize(("body", "mentions"), SEND_400)
async def test_invalid_sends_are_400_with_a_clear_message(
    api: httpx.AsyncClient, body: dict[str, Any], mentions: str
) -> None:
    """Each malformed field is refused with a message naming it."""
    response = await api.post("/messages", json=body)
    assert response.status_code == 400
    assert mentions in response.json()["message"]


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"isEncrypted": True, "phoneNumbers": ["b64-ciphertext=="]}, id="encrypted-skips-format"),
        pytest.param({"dataMessage": {"data": "AA==", "port": 53739}, "textMessage": None}, id="data-message"),
        pytest.param({"ttl": 60, "simNumber": 2, "priority": 100}, id="options"),
    ],
)
async def test_valid_variants_are_accepted(api: httpx.AsyncClient, extra: dict[str, Any]) -> None:
    """Encrypted recipients skip number format checks; data messages and send options are accepted."""
    assert (await api.post("/messages", json={**TEXT, **extra})).status_code == 202


@pytest.mark.parametrize(
    ("content", "mentions"),
    [(b"{not json", "malformed"), (b"[1, 2]", "JSON object"), (b'{"ttl": NaN}', "malformed"), (b"", "malformed")],
)
async def test_malformed_json_is_400(api: httpx.AsyncClient, content: bytes, mentions: str) -> None:
    """Bodies must be a JSON object; broken JSON and non-standard constants are refused."""
    response = await api.post("/messages", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert mentions in response.json()["message"]


@pytest.mark.parametrize("path", ["/messages", "/settings", "/webhooks"])
async def test_body_over_64_kib_is_413(api: httpx.AsyncClient, path: str) -> None:
    """Bodies past 64 KiB are refused as 413 in SMSGate's error shape; exactly 64 KiB is still read."""
    method = "PUT" if path == "/settings" else "POST"
    response = await api.request(method, path, content=b" " * (MAX_BODY_BYTES + 1))
    assert response.status_code == 413
    assert "too large" in response.json()["message"]
    at_limit = await api.request(method, path, content=b"{}" + b" " * (MAX_BODY_BYTES - 2))
    assert at_limit.status_code in (200, 400)


# --- not found / wrong method -----------------------------------------------------------------------------

NOT_FOUND = [
    ("GET", "/messages/nope", "message not found"),
    ("DELETE", "/messages/nope", "message not found"),
    ("DELETE", "/devices/nope", "device not found"),
    ("DELETE", "/webhooks/nope", "webhook not found"),
    ("GET", "/nope", "not found"),
    ("GET", "/messages/", "not found"),
    ("POST", "/auth/token", "not found"),
]


@pytest.mark.parametrize(("method", "path", "message"), NOT_FOUND)
async def test_unknown_things_are_404(api: httpx.AsyncClient, method: str, path: str, message: str) -> None:
    """Unknown ids and routes answer 404 with a JSON message."""
    response = await api.request(method, path)
    assert response.status_code == 404
    assert response.json() == {"message": message}


async def test_outside_the_base_path_is_404(sandbox: Sandbox) -> None:
    """Only /3rdparty/v1 is served."""
    root = sandbox.base_url.removesuffix(BASE_PATH)
    async with httpx.AsyncClient(auth=(USER, PASSWORD)) as http:
        response = await http.get(root + "/3rdparty/v2/messages")
    assert response.status_code == 404
    assert response.json() == {"message": "not found"}


@pytest.mark.parametrize(("method", "path"), [("PUT", "/messages"), ("POST", "/devices"), ("PATCH", "/logs")])
async def test_wrong_method_is_405(api: httpx.AsyncClient, method: str, path: str) -> None:
    """A known path with the wrong method answers 405 with Allow and a JSON message."""
    response = await api.request(method, path)
    assert response.status_code == 405
    assert method in response.json()["message"]
    assert response.headers["allow"]


# --- settings, webhooks, devices, inbox, logs -------------------------------------------------------------


async def test_settings_patch_merges_and_put_replaces(api: httpx.AsyncClient) -> None:
    """PATCH is a JSON merge patch (null deletes); PUT replaces the whole document."""
    original = (await api.get("/settings")).json()
    assert original["messages"]["limit_period"] == "Disabled"

    patched = await api.patch("/settings", json={"messages": {"limit_value": 5, "limit_period": None}})
    assert patched.status_code == 200
    assert patched.json()["messages"]["limit_value"] == 5
    assert "limit_period" not in patched.json()["messages"]
    assert patched.json()["webhooks"] == original["webhooks"]
    assert (await api.get("/settings")).json() == patched.json()

    replaced = await api.put("/settings", json={"ping": {"interval_seconds": 60}})
    assert replaced.status_code == 200
    assert replaced.json() == {"ping": {"interval_seconds": 60}}
    assert (await api.get("/settings")).json() == {"ping": {"interval_seconds": 60}}


@pytest.mark.parametrize(
    ("method", "body"),
    [("PUT", [1]), ("PATCH", "x"), ("PUT", {"bogus": {}}), ("PUT", {"ping": 5}), ("PUT", {"ping": None})],
)
async def test_bad_settings_are_400(api: httpx.AsyncClient, method: str, body: object) -> None:
    """Settings bodies are objects of known sections, each an object (null only deletes, in PATCH)."""
    assert (await api.request(method, "/settings", json=body)).status_code == 400


async def test_webhooks_create_list_upsert_delete(api: httpx.AsyncClient) -> None:
    """POST creates (201, generated id), the same id replaces, DELETE removes once and then 404s."""
    created = await api.post("/webhooks", json={"url": "https://example.com/hook", "event": "sms:received"})
    assert created.status_code == 201
    hook = created.json()
    assert ID_SHAPE.fullmatch(hook["id"])
    assert hook == {"id": hook["id"], "url": "https://example.com/hook", "event": "sms:received"}

    replaced = await api.post("/webhooks", json={"id": hook["id"], "url": "http://example.com/b", "event": "sms:sent"})
    assert replaced.status_code == 201
    listed = (await api.get("/webhooks")).json()
    assert listed == [{"id": hook["id"], "url": "http://example.com/b", "event": "sms:sent"}]

    assert (await api.delete(f"/webhooks/{hook['id']}")).status_code == 204
    assert (await api.delete(f"/webhooks/{hook['id']}")).status_code == 404
    assert (await api.get("/webhooks")).json() == []


@pytest.mark.parametrize(
    "body",
    [
        {"url": "ftp://example.com/x", "event": "sms:received"},
        {"url": "https://", "event": "sms:received"},
        {"url": "/relative", "event": "sms:received"},
        {"event": "sms:received"},
        {"url": "https://example.com/x", "event": "sms:exploded"},
        {"url": "https://example.com/x"},
        {"url": "https://example.com/x", "event": "sms:sent", "deviceId": "unknown"},
    ],
)
async def test_bad_webhooks_are_400(api: httpx.AsyncClient, body: dict[str, Any]) -> None:
    """Webhook URLs must be absolute http(s), events from SMSGate's list, devices known."""
    assert (await api.post("/webhooks", json=body)).status_code == 400


async def test_devices_list_and_delete(api: httpx.AsyncClient) -> None:
    """Made-up devices can be listed and removed; a removed device can no longer be sent from."""
    devices = (await api.get("/devices")).json()
    assert [d["id"] for d in devices] == ["sandbox-pixel-7a", "sandbox-galaxy-a54"]
    assert all(set(d) == {"id", "name", "createdAt", "updatedAt", "lastSeen"} for d in devices)
    assert (await api.delete("/devices/sandbox-galaxy-a54")).status_code == 204
    assert [d["id"] for d in (await api.get("/devices")).json()] == ["sandbox-pixel-7a"]
    refused = await api.post("/messages", json={**TEXT, "deviceId": "sandbox-galaxy-a54"})
    assert refused.status_code == 400


async def test_inbox_export_and_refresh(api: httpx.AsyncClient) -> None:
    """The inbox lists made-up messages; export and refresh are accepted (202) when well-formed."""
    inbox = await api.get("/inbox", params={"limit": 2})
    assert len(inbox.json()) == 2
    assert inbox.headers["x-total-count"] == "3"
    span = {"since": "2024-01-01T00:00:00Z", "until": "2024-01-02T00:00:00Z"}
    assert (await api.post("/inbox/refresh", json=span)).status_code == 202
    assert (await api.post("/messages/inbox/export", json={**span, "deviceId": "sandbox-pixel-7a"})).status_code == 202
    assert (await api.post("/messages/inbox/export", json=span)).status_code == 400
    backwards = {"since": span["until"], "until": span["since"]}
    assert (await api.post("/inbox/refresh", json=backwards)).status_code == 400


async def test_made_up_data_parses_with_the_smsgate_client_types(api: httpx.AsyncClient) -> None:
    """Devices, inbox, logs and settings have exactly the shapes android_sms_gateway reads."""
    devices = [domain.Device.from_dict(d) for d in (await api.get("/devices")).json()]
    inbox = [domain.IncomingMessage.from_dict(m) for m in (await api.get("/inbox")).json()]
    logs = [domain.LogEntry.from_dict(e) for e in (await api.get("/logs")).json()]
    settings = domain.DeviceSettings.from_dict((await api.get("/settings")).json())
    assert devices[0].last_seen is not None
    assert inbox[0].sender.startswith("+1555")
    assert len(logs) == 4
    assert settings.messages is not None
    assert settings.messages.limit_period is not None


# --- the real SMSGate client ------------------------------------------------------------------------------


async def test_the_android_sms_gateway_client_works_unchanged(sandbox: Sandbox, clock: FakeClock) -> None:
    """SMSGate's own async client sends, reads state, manages webhooks and is refused with a wrong password."""
    async with sms_client.AsyncAPIClient(USER, PASSWORD, base_url=sandbox.base_url) as sms:
        state = await sms.send(domain.Message(phone_numbers=["+15555550123"], text_message=domain.TextMessage("hello")))
        assert state.state.value == "Pending"
        assert state.created_at is not None
        clock.now += 4
        delivered = await sms.get_state(state.id)
        assert delivered.state.value == "Delivered"
        assert [r.state.value for r in delivered.recipients] == ["Delivered"]
        assert [m.id for m in await sms.get_messages()] == [state.id]
        hook = await sms.create_webhook(
            domain.Webhook(id=None, url="https://example.com/h", event=domain.WebhookEvent.SMS_DELIVERED)
        )
        assert [w.id for w in await sms.get_webhooks()] == [hook.id]
        await sms.delete_webhook(hook.id)
        assert (await sms.health_check()).status.value == "pass"
    async with sms_client.AsyncAPIClient(USER, "wrong", base_url=sandbox.base_url) as bad:
        with pytest.raises(UnauthorizedError):
            await bad.get_messages()


async def test_the_sync_client_works_from_a_thread(sandbox: Sandbox) -> None:
    """The blocking client (run off the loop that serves the sandbox) sends and reads back a message."""

    def round_trip() -> str:
        with sms_client.APIClient(USER, PASSWORD, base_url=sandbox.base_url) as sms:
            sent = sms.send(domain.Message(phone_numbers=["+15555550123"], text_message=domain.TextMessage("hi")))
            return str(sms.get_state(sent.id).state.value)

    assert await asyncio.to_thread(round_trip) == "Pending"


# --- the runner and the request record --------------------------------------------------------------------


async def test_received_records_requests_including_refused_ones(sandbox: Sandbox, anon: httpx.AsyncClient) -> None:
    """Every request is recorded with its raw path, query and selected headers, bounded in length."""
    await anon.get("/messages", params={"limit": "1"}, headers={"Authorization": basic(USER, PASSWORD)})
    await anon.get("/devices", headers={"X-Request-Id": "r1", "X-Not-Recorded": "x"})
    first, second = list(sandbox.received)[-2:]
    assert (first.method, first.path, first.query) == ("GET", f"{BASE_PATH}/messages", "limit=1")
    assert first.headers["authorization"] == basic(USER, PASSWORD)
    assert second.path == f"{BASE_PATH}/devices"
    assert second.headers["x-request-id"] == "r1"
    assert "x-not-recorded" not in second.headers
    assert "authorization" not in second.headers
    assert sandbox.received.maxlen is not None


async def test_sandbox_lifecycle() -> None:
    """start() returns the loopback base URL, refuses a second start, and stop() is idempotent."""
    sandbox = Sandbox(USER, PASSWORD)
    url = await sandbox.start()
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/3rdparty/v1", url)
        with pytest.raises(RuntimeError):
            await sandbox.start()
        async with httpx.AsyncClient() as http:
            assert (await http.get(url + "/health")).status_code == 200
    finally:
        await sandbox.stop()
    await sandbox.stop()


async def test_two_sandboxes_share_nothing() -> None:
    """State is per app: a message sent to one sandbox is unknown to another."""
    async with (
        Sandbox(USER, PASSWORD) as one,
        Sandbox(USER, PASSWORD) as two,
        httpx.AsyncClient(auth=(USER, PASSWORD)) as http,
    ):
        sent = (await http.post(one.base_url + "/messages", json=TEXT)).json()
        assert (await http.get(f"{one.base_url}/messages/{sent['id']}")).status_code == 200
        assert (await http.get(f"{two.base_url}/messages/{sent['id']}")).status_code == 404


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"username": "", "password": "p"}, "non-empty"),
        ({"username": "u", "password": ""}, "non-empty"),
        ({"username": "u", "password": "p", "delivery_step_s": -1.0}, "negative"),
    ],
)
def test_create_sandbox_rejects_bad_configuration(kwargs: dict[str, Any], error: str) -> None:
    """Empty credentials or a negative step are configuration errors."""
    with pytest.raises(ValueError, match=error):
        create_sandbox(**kwargs)
