"""The sandbox's endpoints: SMSGate's 3rdparty/v1 request shapes checked, its response shapes answered.

Each handler takes the sandbox's state and the request; a refusal raises `Failure` (`fail(...)`), which
the app answers in SMSGate's `{"message": ...}` shape.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, NoReturn
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from gateway.sandbox.state import BASE_PATH, MAX_BODY_BYTES, Json, Message, SandboxState, fail, new_id

__all__ = ["ROUTES", "Handler", "answer", "error"]

MAX_MESSAGES = 1000  # oldest are forgotten first, so a long-running demo stays bounded
MAX_WEBHOOKS = 100
MAX_RECIPIENTS = 100
MAX_ID_LEN = 36
DEFAULT_LIMIT = 50
MAX_LIMIT = 100

_PHONE = re.compile(r"\+?[0-9]{5,15}")
_UINT = re.compile(r"[0-9]{1,9}")
_WEBHOOK_EVENTS = frozenset(
    {
        "sms:received",
        "sms:data-received",
        "sms:sent",
        "sms:delivered",
        "sms:failed",
        "mms:received",
        "system:ping",
    }
)
_SETTINGS_SECTIONS = frozenset({"encryption", "gateway", "logs", "messages", "ping", "webhooks"})

Handler = Callable[[SandboxState, Request], Awaitable[Response]]


def answer(status: int, body: object, headers: Mapping[str, str] | None = None) -> Response:
    """A compact JSON answer."""
    content = json.dumps(body, separators=(",", ":"))
    return Response(content, status_code=status, headers=headers, media_type="application/json; charset=utf-8")


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """SMSGate's error shape, `{"message": ...}`."""
    return answer(status, {"message": message}, headers)


# --- request helpers ----------------------------------------------------------------------------------------


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"invalid JSON constant {name}")


async def _json_object(request: Request) -> Json:
    """The body as a JSON object; 413 past MAX_BODY_BYTES (read no further), 400 otherwise."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            fail(413, f"request body too large (limit {MAX_BODY_BYTES} bytes)")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        fail(400, "malformed JSON body")
    if not isinstance(data, dict):
        fail(400, "request body must be a JSON object")
    return data


def _query(request: Request, name: str) -> str | None:
    """The first value of a query parameter (a repeated one counts once, as it is first given)."""
    values = request.query_params.getlist(name)
    return values[0] if values else None


def _query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = _query(request, name)
    if raw is None:
        return default
    if not _UINT.fullmatch(raw) or not low <= int(raw) <= high:
        fail(400, f"{name} must be an integer between {low} and {high}")
    return int(raw)


def _page(request: Request, items: list[Json]) -> Response:
    """`limit`/`offset` paging with the unpaged total in X-Total-Count, as SMSGate lists do."""
    limit = _query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _query_int(request, "offset", 0, 0, 10**9)
    return answer(200, items[offset : offset + limit], {"X-Total-Count": str(len(items))})


def _optional(body: Json, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    """`body[key]` if present and not null, checked against `kind` (bools are never ints here)."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        fail(400, f"{key} must be {what}")
    return value


def _id_field(body: Json, key: str) -> str | None:
    value: str | None = _optional(body, key, str, "a string")
    if value is not None and not 0 < len(value) <= MAX_ID_LEN:
        fail(400, f"{key} must be 1 to {MAX_ID_LEN} characters")
    return value


def _timestamp(body: Json, key: str) -> datetime:
    value = body.get(key)
    if not isinstance(value, str):
        fail(400, f"{key} is required (RFC 3339 timestamp)")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        fail(400, f"{key} must be an RFC 3339 timestamp")


def _time_range(body: Json) -> None:
    since, until = _timestamp(body, "since"), _timestamp(body, "until")
    try:
        backwards = since > until
    except TypeError:  # one naive, one aware
        fail(400, "since and until must both carry a time zone")
    if backwards:
        fail(400, "since must not be after until")


# --- handlers ---------------------------------------------------------------------------------------------


async def _health(state: SandboxState, request: Request) -> Response:
    return answer(
        200,
        {
            "status": "pass",
            "version": "sandbox",
            "releaseId": 0,
            "checks": {
                "messages:failed": {
                    "status": "pass",
                    "description": "Failed messages for last hour",
                    "observedValue": 0,
                    "observedUnit": "messages",
                }
            },
        },
    )


def _message_content(body: Json) -> None:
    """Exactly one of textMessage {text}, dataMessage {data, port} or the legacy `message` string."""
    present = [key for key in ("textMessage", "dataMessage", "message") if body.get(key) is not None]
    if len(present) != 1:
        fail(400, "exactly one of textMessage, dataMessage or message is required")
    key = present[0]
    value = body[key]
    if key == "message":
        if not isinstance(value, str) or not value:
            fail(400, "message must be a non-empty string")
    elif key == "textMessage":
        if not isinstance(value, dict) or not isinstance(value.get("text"), str) or not value["text"]:
            fail(400, "textMessage.text must be a non-empty string")
    elif (
        not isinstance(value, dict)
        or not isinstance(value.get("data"), str)
        or not value["data"]
        or not isinstance(value.get("port"), int)
        or isinstance(value["port"], bool)
        or not 0 <= value["port"] <= 65535
    ):
        fail(400, "dataMessage needs a non-empty data string and a port between 0 and 65535")


def _phone_numbers(body: Json, *, check_format: bool) -> list[str]:
    numbers = body.get("phoneNumbers")
    if (
        not isinstance(numbers, list)
        or not 0 < len(numbers) <= MAX_RECIPIENTS
        or not all(isinstance(n, str) and n for n in numbers)
    ):
        fail(400, f"phoneNumbers must be a list of 1 to {MAX_RECIPIENTS} non-empty strings")
    if check_format:
        for number in numbers:
            if not _PHONE.fullmatch(number):
                fail(400, f"invalid phone number {number!r}: expected E.164 like +15555550123")
    return list(numbers)


async def _send(state: SandboxState, request: Request) -> Response:
    body = await _json_object(request)
    _message_content(body)
    is_encrypted = bool(_optional(body, "isEncrypted", bool, "a boolean"))
    skip_check = (_query(request, "skipPhoneValidation") or "").lower() == "true"
    numbers = _phone_numbers(body, check_format=not (is_encrypted or skip_check))
    with_report = _optional(body, "withDeliveryReport", bool, "a boolean")
    ttl = _optional(body, "ttl", int, "an integer")
    if ttl is not None and ttl < 0:
        fail(400, "ttl must not be negative")
    if ttl is not None and body.get("validUntil") is not None:
        fail(400, "ttl and validUntil are mutually exclusive")
    if body.get("validUntil") is not None:
        _timestamp(body, "validUntil")
    sim = _optional(body, "simNumber", int, "an integer")
    if sim is not None and not 1 <= sim <= 3:
        fail(400, "simNumber must be between 1 and 3")
    priority = _optional(body, "priority", int, "an integer")
    if priority is not None and not -128 <= priority <= 127:
        fail(400, "priority must be between -128 and 127")
    device_id = _id_field(body, "deviceId")
    if device_id is None:
        if not state.devices:
            fail(400, "no devices registered")
        device_id = next(iter(state.devices))
    elif device_id not in state.devices:
        fail(400, f"device {device_id} not found")
    msg_id = _id_field(body, "id") or new_id()
    if msg_id in state.messages:
        fail(409, f"message {msg_id} already exists")

    msg = Message(msg_id, device_id, numbers, state.clock(), with_report is not False, is_encrypted)
    state.messages[msg_id] = msg
    while len(state.messages) > MAX_MESSAGES:
        del state.messages[next(iter(state.messages))]
    return answer(202, state.render(msg), {"Location": f"{BASE_PATH}/messages/{msg_id}"})


async def _list_messages(state: SandboxState, request: Request) -> Response:
    sort = _query(request, "sort") or "-created_at"
    if sort not in ("created_at", "-created_at"):
        fail(400, "sort must be created_at or -created_at")
    found = [state.render(m) for m in state.messages.values()]
    if "state" in request.query_params:
        found = [m for m in found if m["state"] == _query(request, "state")]
    if "deviceId" in request.query_params:
        found = [m for m in found if m["deviceId"] == _query(request, "deviceId")]
    if sort == "-created_at":
        found.reverse()  # insertion order is creation order, even when the clock stands still
    return _page(request, found)


def _message(state: SandboxState, request: Request) -> Message:
    msg = state.messages.get(request.path_params["id"])
    if msg is None:
        fail(404, "message not found")
    return msg


async def _get_message(state: SandboxState, request: Request) -> Response:
    return answer(200, state.render(_message(state, request)))


async def _cancel_message(state: SandboxState, request: Request) -> Response:
    """Pending → Cancelled (204, and again 204 if already cancelled); once sent it is too late (409)."""
    msg = _message(state, request)
    current = state.timeline(msg)[-1][0]
    if current == "Pending":
        msg.cancelled = state.clock()
    elif current != "Cancelled":
        fail(409, f"message is already {current}; only Pending messages can be cancelled")
    return Response(status_code=204)


async def _export_inbox(state: SandboxState, request: Request) -> Response:
    body = await _json_object(request)
    device_id = _id_field(body, "deviceId")
    if device_id is None:
        fail(400, "deviceId is required")
    if device_id not in state.devices:
        fail(400, f"device {device_id} not found")
    _time_range(body)
    return Response(status_code=202)


async def _list_inbox(state: SandboxState, request: Request) -> Response:
    return _page(request, state.inbox)


async def _refresh_inbox(state: SandboxState, request: Request) -> Response:
    body = await _json_object(request)
    device_id = _id_field(body, "deviceId")
    if device_id is not None and device_id not in state.devices:
        fail(400, f"device {device_id} not found")
    _time_range(body)
    return Response(status_code=202)


async def _list_devices(state: SandboxState, request: Request) -> Response:
    return answer(200, list(state.devices.values()))


async def _delete_device(state: SandboxState, request: Request) -> Response:
    if state.devices.pop(request.path_params["id"], None) is None:
        fail(404, "device not found")
    return Response(status_code=204)


async def _get_settings(state: SandboxState, request: Request) -> Response:
    return answer(200, state.settings)


def _merge_patch(target: Json, patch: Json) -> Json:
    """RFC 7396 JSON merge patch: objects merge recursively, null deletes, anything else replaces."""
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge_patch(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


async def _write_settings(state: SandboxState, request: Request) -> Response:
    """PUT replaces, PATCH merges; sections are the ones SMSGate clients know and must be objects."""
    body = await _json_object(request)
    for key, value in body.items():
        if key not in _SETTINGS_SECTIONS:
            fail(400, f"unknown settings section {key!r}")
        if not isinstance(value, dict) and not (value is None and request.method == "PATCH"):
            fail(400, f"settings section {key!r} must be an object")
    new = body if request.method == "PUT" else _merge_patch(state.settings, body)
    if len(json.dumps(new)) > MAX_BODY_BYTES:  # repeated PATCHes must not grow the settings without bound
        fail(413, f"settings too large (limit {MAX_BODY_BYTES} bytes)")
    state.settings = new
    return answer(200, new)


async def _list_webhooks(state: SandboxState, request: Request) -> Response:
    return answer(200, list(state.webhooks.values()))


async def _create_webhook(state: SandboxState, request: Request) -> Response:
    """Creates, or replaces when the id already exists (SMSGate's upsert), a webhook."""
    body = await _json_object(request)
    url = body.get("url")
    if not isinstance(url, str) or not 0 < len(url) <= 2048:
        fail(400, "url must be a string of 1 to 2048 characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        fail(400, "url must be an absolute http or https URL")
    event = body.get("event")
    if event not in _WEBHOOK_EVENTS:
        fail(400, f"event must be one of {', '.join(sorted(_WEBHOOK_EVENTS))}")
    device_id = _id_field(body, "deviceId")
    if device_id is not None and device_id not in state.devices:
        fail(400, f"device {device_id} not found")
    hook_id = _id_field(body, "id") or new_id()
    if hook_id not in state.webhooks and len(state.webhooks) >= MAX_WEBHOOKS:
        fail(400, f"webhook limit reached ({MAX_WEBHOOKS})")
    hook: Json = {"id": hook_id, "url": url, "event": event}
    if device_id is not None:
        hook["deviceId"] = device_id
    state.webhooks[hook_id] = hook
    return answer(201, hook)


async def _delete_webhook(state: SandboxState, request: Request) -> Response:
    if state.webhooks.pop(request.path_params["id"], None) is None:
        fail(404, "webhook not found")
    return Response(status_code=204)


async def _list_logs(state: SandboxState, request: Request) -> Response:
    return answer(200, state.logs)


# The routes under BASE_PATH; a GET route answers HEAD too, as HTTP expects.
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/health", _health),
    ("GET", "/health/live", _health),
    ("GET", "/health/ready", _health),
    ("GET", "/health/startup", _health),
    ("GET", "/messages", _list_messages),
    ("POST", "/messages", _send),
    ("GET", "/messages/{id}", _get_message),
    ("DELETE", "/messages/{id}", _cancel_message),
    ("POST", "/messages/inbox/export", _export_inbox),
    ("GET", "/inbox", _list_inbox),
    ("POST", "/inbox/refresh", _refresh_inbox),
    ("GET", "/devices", _list_devices),
    ("DELETE", "/devices/{id}", _delete_device),
    ("GET", "/settings", _get_settings),
    ("PUT", "/settings", _write_settings),
    ("PATCH", "/settings", _write_settings),
    ("GET", "/webhooks", _list_webhooks),
    ("POST", "/webhooks", _create_webhook),
    ("DELETE", "/webhooks/{id}", _delete_webhook),
    ("GET", "/logs", _list_logs),
)
