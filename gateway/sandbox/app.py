"""An in-process stand-in for SMSGate's 3rdparty/v1 API with made-up data, for `gateway demo` and tests.

Like a provider's test keys it accepts real request shapes and answers real response shapes, but sends
nothing: messages move Pending → Sent → Delivered on a clock (computed lazily, no background tasks), and
devices, inbox and logs are invented. All state lives in the aiohttp application, never in module globals.
"""

from __future__ import annotations

import base64
import binascii
import collections
import copy
import dataclasses
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import urlsplit

from aiohttp import web

__all__ = [
    "BASE_PATH",
    "MAX_BODY_BYTES",
    "Received",
    "Sandbox",
    "create_sandbox",
]

log = logging.getLogger(__name__)

BASE_PATH = "/3rdparty/v1"
MAX_BODY_BYTES = 64 * 1024
MAX_MESSAGES = 1000  # oldest are forgotten first, so a long-running demo stays bounded
MAX_WEBHOOKS = 100
MAX_RECEIVED = 256
MAX_RECIPIENTS = 100
MAX_ID_LEN = 36
DEFAULT_LIMIT = 50
MAX_LIMIT = 100

_PUBLIC = frozenset(f"{BASE_PATH}/health{suffix}" for suffix in ("", "/live", "/ready", "/startup"))
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
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
_DEFAULT_SETTINGS: dict[str, Any] = {
    "encryption": {},
    "gateway": {"notification_channel": "AUTO"},
    "logs": {"lifetime_days": 30},
    "messages": {
        "limit_period": "Disabled",
        "limit_value": 0,
        "log_lifetime_days": 30,
        "processing_order": "LIFO",
        "send_interval_min": 0,
        "send_interval_max": 0,
        "sim_selection_mode": "OSDefault",
    },
    "ping": {"interval_seconds": 0},
    "webhooks": {"internet_required": True, "retry_count": 3},
}
# Recorded per request so tests can see what a proxy forwarded (credentials swapped, hop-by-hop dropped).
_RECORDED_HEADERS = (
    "authorization",
    "connection",
    "content-length",
    "content-type",
    "cookie",
    "forwarded",
    "host",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-request-id",
)

Clock = Callable[[], float]
Json = dict[str, Any]
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass(frozen=True, slots=True)
class Received:
    """One request as the sandbox saw it: method, undecoded path and query, and selected headers."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]


class _Failure(Exception):
    """An SMSGate-shaped error answer: `{"message": ...}` with a status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _fail(status: int, message: str) -> NoReturn:
    raise _Failure(status, message)


@dataclasses.dataclass(slots=True)
class _Message:
    id: str
    device_id: str
    phone_numbers: list[str]
    created: float  # on the injected clock
    with_delivery_report: bool
    is_encrypted: bool
    cancelled: float | None = None


@dataclasses.dataclass(slots=True)
class _State:
    username: bytes
    password: bytes
    clock: Clock
    step: float
    clock0: float
    wall0: float
    devices: dict[str, Json]
    inbox: list[Json]
    logs: list[Json]
    settings: Json
    messages: dict[str, _Message] = dataclasses.field(default_factory=dict)
    webhooks: dict[str, Json] = dataclasses.field(default_factory=dict)
    received: collections.deque[Received] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=MAX_RECEIVED)
    )

    def stamp(self, at: float) -> str:
        """RFC 3339 (UTC, milliseconds) for a point on the injected clock."""
        moment = datetime.fromtimestamp(self.wall0 + (at - self.clock0), UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def timeline(self, msg: _Message) -> list[tuple[str, float]]:
        """Every state the message has reached by now, in order, with the clock time it was reached."""
        now = self.clock()
        if msg.cancelled is not None:
            steps = [("Pending", msg.created), ("Cancelled", msg.cancelled)]
        else:
            steps = [("Pending", msg.created), ("Sent", msg.created + self.step)]
            if msg.with_delivery_report:
                steps.append(("Delivered", msg.created + 2 * self.step))
        return [steps[0], *(s for s in steps[1:] if s[1] <= now)]

    def render(self, msg: _Message) -> Json:
        reached = self.timeline(msg)
        state = reached[-1][0]
        return {
            "id": msg.id,
            "deviceId": msg.device_id,
            "state": state,
            "isHashed": False,
            "isEncrypted": msg.is_encrypted,
            "recipients": [{"phoneNumber": p, "state": state} for p in msg.phone_numbers],
            "states": {name: self.stamp(at) for name, at in reached},
            "createdAt": self.stamp(msg.created),
        }


_STATE = web.AppKey("sandbox_state", _State)


def _new_id() -> str:
    """A 21-character URL-safe random id, the shape SMSGate (nanoid) uses."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(21))


def _answer(status: int, body: object, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers, dumps=lambda o: json.dumps(o, separators=(",", ":")))


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return _answer(status, {"message": message}, headers)


# --- middlewares (outermost first) ------------------------------------------------------------------------


@web.middleware
async def _record(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Remember every request, even refused ones, so tests can assert what did or did not arrive."""
    headers = {name: request.headers[name] for name in _RECORDED_HEADERS if name in request.headers}
    url = request.rel_url
    request.app[_STATE].received.append(Received(request.method, url.raw_path, url.raw_query_string, headers))
    return await handler(request)


@web.middleware
async def _errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Every failure, including aiohttp's own 404/405/413, answers SMSGate's `{"message": ...}` shape."""
    try:
        return await handler(request)
    except _Failure as exc:
        return _error(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            return _error(404, "not found")
        if exc.status == 405:
            return _error(405, f"method {request.method} not allowed", {"Allow": exc.headers.get("Allow", "")})
        if exc.status == 413:
            return _error(413, f"request body too large (limit {MAX_BODY_BYTES} bytes)")
        return _error(exc.status, (exc.reason or "error").lower())
    except Exception:
        log.exception("sandbox handler failed: %s %s", request.method, request.path)
        return _error(500, "internal server error")


@web.middleware
async def _basic_auth(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """HTTP Basic with exactly the configured pair on everything but health; checked before any body is read."""
    if request.method in ("GET", "HEAD") and request.path in _PUBLIC:
        return await handler(request)
    state = request.app[_STATE]
    if not _credentials_match(request.headers.get("Authorization", ""), state.username, state.password):
        return _error(401, "Unauthorized", {"WWW-Authenticate": 'Basic realm="sandbox"'})
    return await handler(request)


def _credentials_match(header: str, username: bytes, password: bytes) -> bool:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    user, sep, pwd = decoded.partition(b":")
    # Both comparisons always run: neither which half was wrong nor how much matched leaks through timing.
    user_ok = hmac.compare_digest(user, username)
    pwd_ok = hmac.compare_digest(pwd, password)
    return bool(sep) and user_ok and pwd_ok


# --- request helpers ----------------------------------------------------------------------------------------


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"invalid JSON constant {name}")


async def _json_object(request: web.Request) -> Json:
    """The body as a JSON object; 413 past MAX_BODY_BYTES (aiohttp's client_max_size), 400 otherwise."""
    raw = await request.read()
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        _fail(400, "malformed JSON body")
    if not isinstance(data, dict):
        _fail(400, "request body must be a JSON object")
    return data


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not _UINT.fullmatch(raw) or not low <= int(raw) <= high:
        _fail(400, f"{name} must be an integer between {low} and {high}")
    return int(raw)


def _page(request: web.Request, items: list[Json]) -> web.Response:
    """`limit`/`offset` paging with the unpaged total in X-Total-Count, as SMSGate lists do."""
    limit = _query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _query_int(request, "offset", 0, 0, 10**9)
    return _answer(200, items[offset : offset + limit], {"X-Total-Count": str(len(items))})


def _optional(body: Json, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    """`body[key]` if present and not null, checked against `kind` (bools are never ints here)."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        _fail(400, f"{key} must be {what}")
    return value


def _id_field(body: Json, key: str) -> str | None:
    value: str | None = _optional(body, key, str, "a string")
    if value is not None and not 0 < len(value) <= MAX_ID_LEN:
        _fail(400, f"{key} must be 1 to {MAX_ID_LEN} characters")
    return value


def _timestamp(body: Json, key: str) -> datetime:
    value = body.get(key)
    if not isinstance(value, str):
        _fail(400, f"{key} is required (RFC 3339 timestamp)")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        _fail(400, f"{key} must be an RFC 3339 timestamp")


def _time_range(body: Json) -> None:
    since, until = _timestamp(body, "since"), _timestamp(body, "until")
    try:
        backwards = since > until
    except TypeError:  # one naive, one aware
        _fail(400, "since and until must both carry a time zone")
    if backwards:
        _fail(400, "since must not be after until")


# --- handlers ---------------------------------------------------------------------------------------------


async def _health(request: web.Request) -> web.Response:
    return _answer(
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
        _fail(400, "exactly one of textMessage, dataMessage or message is required")
    key = present[0]
    value = body[key]
    if key == "message":
        if not isinstance(value, str) or not value:
            _fail(400, "message must be a non-empty string")
    elif key == "textMessage":
        if not isinstance(value, dict) or not isinstance(value.get("text"), str) or not value["text"]:
            _fail(400, "textMessage.text must be a non-empty string")
    elif (
        not isinstance(value, dict)
        or not isinstance(value.get("data"), str)
        or not value["data"]
        or not isinstance(value.get("port"), int)
        or isinstance(value["port"], bool)
        or not 0 <= value["port"] <= 65535
    ):
        _fail(400, "dataMessage needs a non-empty data string and a port between 0 and 65535")


def _phone_numbers(body: Json, *, check_format: bool) -> list[str]:
    numbers = body.get("phoneNumbers")
    if (
        not isinstance(numbers, list)
        or not 0 < len(numbers) <= MAX_RECIPIENTS
        or not all(isinstance(n, str) and n for n in numbers)
    ):
        _fail(400, f"phoneNumbers must be a list of 1 to {MAX_RECIPIENTS} non-empty strings")
    if check_format:
        for number in numbers:
            if not _PHONE.fullmatch(number):
                _fail(400, f"invalid phone number {number!r}: expected E.164 like +15555550123")
    return list(numbers)


async def _send(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    body = await _json_object(request)
    _message_content(body)
    is_encrypted = bool(_optional(body, "isEncrypted", bool, "a boolean"))
    skip_check = request.query.get("skipPhoneValidation", "").lower() == "true"
    numbers = _phone_numbers(body, check_format=not (is_encrypted or skip_check))
    with_report = _optional(body, "withDeliveryReport", bool, "a boolean")
    ttl = _optional(body, "ttl", int, "an integer")
    if ttl is not None and ttl < 0:
        _fail(400, "ttl must not be negative")
    if ttl is not None and body.get("validUntil") is not None:
        _fail(400, "ttl and validUntil are mutually exclusive")
    if body.get("validUntil") is not None:
        _timestamp(body, "validUntil")
    sim = _optional(body, "simNumber", int, "an integer")
    if sim is not None and not 1 <= sim <= 3:
        _fail(400, "simNumber must be between 1 and 3")
    priority = _optional(body, "priority", int, "an integer")
    if priority is not None and not -128 <= priority <= 127:
        _fail(400, "priority must be between -128 and 127")
    device_id = _id_field(body, "deviceId")
    if device_id is None:
        if not state.devices:
            _fail(400, "no devices registered")
        device_id = next(iter(state.devices))
    elif device_id not in state.devices:
        _fail(400, f"device {device_id} not found")
    msg_id = _id_field(body, "id") or _new_id()
    if msg_id in state.messages:
        _fail(409, f"message {msg_id} already exists")

    msg = _Message(msg_id, device_id, numbers, state.clock(), with_report is not False, is_encrypted)
    state.messages[msg_id] = msg
    while len(state.messages) > MAX_MESSAGES:
        del state.messages[next(iter(state.messages))]
    return _answer(202, state.render(msg), {"Location": f"{BASE_PATH}/messages/{msg_id}"})


async def _list_messages(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    sort = request.query.get("sort", "-created_at")
    if sort not in ("created_at", "-created_at"):
        _fail(400, "sort must be created_at or -created_at")
    found = [state.render(m) for m in state.messages.values()]
    if "state" in request.query:
        found = [m for m in found if m["state"] == request.query["state"]]
    if "deviceId" in request.query:
        found = [m for m in found if m["deviceId"] == request.query["deviceId"]]
    if sort == "-created_at":
        found.reverse()  # insertion order is creation order, even when the clock stands still
    return _page(request, found)


def _message(request: web.Request) -> _Message:
    msg = request.app[_STATE].messages.get(request.match_info["id"])
    if msg is None:
        _fail(404, "message not found")
    return msg


async def _get_message(request: web.Request) -> web.Response:
    return _answer(200, request.app[_STATE].render(_message(request)))


async def _cancel_message(request: web.Request) -> web.Response:
    """Pending → Cancelled (204, and again 204 if already cancelled); once sent it is too late (409)."""
    state = request.app[_STATE]
    msg = _message(request)
    current = state.timeline(msg)[-1][0]
    if current == "Pending":
        msg.cancelled = state.clock()
    elif current != "Cancelled":
        _fail(409, f"message is already {current}; only Pending messages can be cancelled")
    return web.Response(status=204)


async def _export_inbox(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    body = await _json_object(request)
    device_id = _id_field(body, "deviceId")
    if device_id is None:
        _fail(400, "deviceId is required")
    if device_id not in state.devices:
        _fail(400, f"device {device_id} not found")
    _time_range(body)
    return web.Response(status=202)


async def _list_inbox(request: web.Request) -> web.Response:
    return _page(request, request.app[_STATE].inbox)


async def _refresh_inbox(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    body = await _json_object(request)
    device_id = _id_field(body, "deviceId")
    if device_id is not None and device_id not in state.devices:
        _fail(400, f"device {device_id} not found")
    _time_range(body)
    return web.Response(status=202)


async def _list_devices(request: web.Request) -> web.Response:
    return _answer(200, list(request.app[_STATE].devices.values()))


async def _delete_device(request: web.Request) -> web.Response:
    if request.app[_STATE].devices.pop(request.match_info["id"], None) is None:
        _fail(404, "device not found")
    return web.Response(status=204)


async def _get_settings(request: web.Request) -> web.Response:
    return _answer(200, request.app[_STATE].settings)


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


async def _write_settings(request: web.Request) -> web.Response:
    """PUT replaces, PATCH merges; sections are the ones SMSGate clients know and must be objects."""
    state = request.app[_STATE]
    body = await _json_object(request)
    for key, value in body.items():
        if key not in _SETTINGS_SECTIONS:
            _fail(400, f"unknown settings section {key!r}")
        if not isinstance(value, dict) and not (value is None and request.method == "PATCH"):
            _fail(400, f"settings section {key!r} must be an object")
    new = body if request.method == "PUT" else _merge_patch(state.settings, body)
    if len(json.dumps(new)) > MAX_BODY_BYTES:  # repeated PATCHes must not grow the settings without bound
        _fail(413, f"settings too large (limit {MAX_BODY_BYTES} bytes)")
    state.settings = new
    return _answer(200, new)


async def _list_webhooks(request: web.Request) -> web.Response:
    return _answer(200, list(request.app[_STATE].webhooks.values()))


async def _create_webhook(request: web.Request) -> web.Response:
    """Creates, or replaces when the id already exists (SMSGate's upsert), a webhook."""
    state = request.app[_STATE]
    body = await _json_object(request)
    url = body.get("url")
    if not isinstance(url, str) or not 0 < len(url) <= 2048:
        _fail(400, "url must be a string of 1 to 2048 characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        _fail(400, "url must be an absolute http or https URL")
    event = body.get("event")
    if event not in _WEBHOOK_EVENTS:
        _fail(400, f"event must be one of {', '.join(sorted(_WEBHOOK_EVENTS))}")
    device_id = _id_field(body, "deviceId")
    if device_id is not None and device_id not in state.devices:
        _fail(400, f"device {device_id} not found")
    hook_id = _id_field(body, "id") or _new_id()
    if hook_id not in state.webhooks and len(state.webhooks) >= MAX_WEBHOOKS:
        _fail(400, f"webhook limit reached ({MAX_WEBHOOKS})")
    hook: Json = {"id": hook_id, "url": url, "event": event}
    if device_id is not None:
        hook["deviceId"] = device_id
    state.webhooks[hook_id] = hook
    return _answer(201, hook)


async def _delete_webhook(request: web.Request) -> web.Response:
    if request.app[_STATE].webhooks.pop(request.match_info["id"], None) is None:
        _fail(404, "webhook not found")
    return web.Response(status=204)


async def _list_logs(request: web.Request) -> web.Response:
    return _answer(200, request.app[_STATE].logs)


# --- made-up data -----------------------------------------------------------------------------------------


def _seed(state: _State) -> None:
    """Invented devices, inbox and logs; phone numbers are from the fictional 555-01xx range."""
    now = state.clock0
    day = 86400.0
    for dev_id, name, age in (("sandbox-pixel-7a", "Pixel 7a", 30), ("sandbox-galaxy-a54", "Galaxy A54", 12)):
        state.devices[dev_id] = {
            "id": dev_id,
            "name": name,
            "createdAt": state.stamp(now - age * day),
            "updatedAt": state.stamp(now - day),
            "lastSeen": state.stamp(now - 60),
        }
    texts = ("Your code is 042817", "Running 10 min late, sorry!", "STOP")
    for n, text in enumerate(texts):
        state.inbox.append(
            {
                "id": _new_id(),
                "type": "SMS",
                "sender": f"+1555555010{n + 1}",
                "recipient": "+15555550100",
                "simNumber": 1,
                "contentPreview": text,
                "createdAt": state.stamp(now - (n + 1) * 3600),
            }
        )
    entries: tuple[tuple[str, str, str, Json], ...] = (
        ("INFO", "gateway", "Device registered", {"deviceId": "sandbox-pixel-7a"}),
        ("INFO", "messages", "Message sent", {"recipients": 1}),
        ("WARN", "webhooks", "Webhook delivery retried", {"attempt": 2}),
        ("INFO", "gateway", "Ping received", {}),
    )
    for n, (priority, module, message, context) in enumerate(entries, start=1):
        state.logs.append(
            {
                "id": n,
                "priority": priority,
                "module": module,
                "message": message,
                "context": context,
                "createdAt": state.stamp(now - (len(entries) - n + 1) * 600),
            }
        )


def create_sandbox(
    username: str, password: str, *, clock: Clock = time.monotonic, delivery_step_s: float = 2.0
) -> web.Application:
    """The sandbox app; routes live under /3rdparty/v1 and each message advances a state every `delivery_step_s`."""
    if not username or not password:
        raise ValueError("sandbox needs a non-empty username and password")
    if delivery_step_s < 0:
        raise ValueError("delivery_step_s must not be negative")
    app = web.Application(middlewares=[_record, _errors, _basic_auth], client_max_size=MAX_BODY_BYTES)
    clock0 = clock()
    state = _State(
        username=username.encode(),
        password=password.encode(),
        clock=clock,
        step=delivery_step_s,
        clock0=clock0,
        wall0=time.time(),
        devices={},
        inbox=[],
        logs=[],
        settings=copy.deepcopy(_DEFAULT_SETTINGS),
    )
    _seed(state)
    app[_STATE] = state
    routes = (
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
    for method, path, handler in routes:
        if method == "GET":
            app.router.add_get(BASE_PATH + path, handler)  # and HEAD, as HTTP expects
        else:
            app.router.add_route(method, BASE_PATH + path, handler)
    return app


class Sandbox:
    """Runs `create_sandbox` on a loopback port inside the current event loop; `async with` starts and stops it."""

    def __init__(
        self,
        username: str,
        password: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        delivery_step_s: float = 2.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.app = create_sandbox(username, password, clock=clock, delivery_step_s=delivery_step_s)
        self.received: collections.deque[Received] = self.app[_STATE].received
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        """Binds and serves; returns the base URL, e.g. http://127.0.0.1:41234/3rdparty/v1."""
        if self._runner is not None:
            raise RuntimeError("sandbox already started")
        runner = web.AppRunner(self.app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{shown}:{port}{BASE_PATH}"
        return self.base_url

    async def stop(self) -> None:
        """Closes the listener and open connections; safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
