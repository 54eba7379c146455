"""The sandbox's state: its made-up devices, inbox and logs, and the messages and webhooks it was given.

Messages move Pending → Sent → Delivered on a clock, computed when asked (no background tasks). Everything
lives in one `SandboxState` per app, never in module globals, so two sandboxes share nothing.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn

__all__ = [
    "BASE_PATH",
    "MAX_BODY_BYTES",
    "Clock",
    "Failure",
    "Json",
    "Message",
    "Received",
    "SandboxState",
    "fail",
    "new_id",
    "new_state",
]

BASE_PATH = "/3rdparty/v1"
MAX_BODY_BYTES = 64 * 1024
MAX_RECEIVED = 256

_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
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

Clock = Callable[[], float]
Json = dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Received:
    """One request as the sandbox saw it: method, undecoded path and query, and selected headers."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]


class Failure(Exception):
    """An SMSGate-shaped error answer: `{"message": ...}` with a status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def fail(status: int, message: str) -> NoReturn:
    raise Failure(status, message)


@dataclasses.dataclass(slots=True)
class Message:
    id: str
    device_id: str
    phone_numbers: list[str]
    created: float  # on the injected clock
    with_delivery_report: bool
    is_encrypted: bool
    cancelled: float | None = None


@dataclasses.dataclass(slots=True)
class SandboxState:
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
    messages: dict[str, Message] = dataclasses.field(default_factory=dict)
    webhooks: dict[str, Json] = dataclasses.field(default_factory=dict)
    received: collections.deque[Received] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=MAX_RECEIVED)
    )

    def stamp(self, at: float) -> str:
        """RFC 3339 (UTC, milliseconds) for a point on the injected clock."""
        moment = datetime.fromtimestamp(self.wall0 + (at - self.clock0), UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def timeline(self, msg: Message) -> list[tuple[str, float]]:
        """Every state the message has reached by now, in order, with the clock time it was reached."""
        now = self.clock()
        if msg.cancelled is not None:
            steps = [("Pending", msg.created), ("Cancelled", msg.cancelled)]
        else:
            steps = [("Pending", msg.created), ("Sent", msg.created + self.step)]
            if msg.with_delivery_report:
                steps.append(("Delivered", msg.created + 2 * self.step))
        return [steps[0], *(s for s in steps[1:] if s[1] <= now)]

    def render(self, msg: Message) -> Json:
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


def new_id() -> str:
    """A 21-character URL-safe random id, the shape SMSGate (nanoid) uses."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(21))


def _seed(state: SandboxState) -> None:
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
                "id": new_id(),
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


def new_state(username: str, password: str, *, clock: Clock, delivery_step_s: float) -> SandboxState:
    """A fresh sandbox state with its made-up data; each message advances a state every `delivery_step_s`."""
    if not username or not password:
        raise ValueError("sandbox needs a non-empty username and password")
    if delivery_step_s < 0:
        raise ValueError("delivery_step_s must not be negative")
    clock0 = clock()
    state = SandboxState(
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
    return state
