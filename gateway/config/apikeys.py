"""`keys:`: gateway API keys (`sgk_live_...`/`sgk_test_...`, gateway/keys/).

Keys are stored only as HMAC-SHA256 under `secret` (a server secret of at least 32 bytes, e.g.
`${SMSGUARD_KEY_SECRET}`): every instance sharing a store needs the same one, and changing it
invalidates every key.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from gateway.config.fields import CONFIG, ON_WHEN_PRESENT, Bool, Finite, Min, SecretText, enabled_when_present, fail

__all__ = ["MIN_KEY_SECRET_BYTES", "ApiKeySettings"]

MIN_KEY_SECRET_BYTES = 32


@dataclass(frozen=True, config=CONFIG)
class ApiKeySettings:
    """Gateway API keys: created at {tokens.mount}/auth/keys or with `gateway key create`."""

    enabled: Bool = Field(default=False, json_schema_extra=ON_WHEN_PRESENT)
    secret: SecretText | None = Field(
        default=None, description="The server secret keys are hashed with (HMAC-SHA256), at least 32 bytes."
    )
    rotation_overlap_s: Annotated[int, Min(0)] = Field(
        default=86400, description="How long the old secret keeps working after a rotation (unless the call says)."
    )
    max_rotation_overlap_s: Annotated[int, Min(0)] = 30 * 86400
    cache_s: Annotated[float, Finite(0.0)] = Field(
        default=5.0,
        description="A verified key is trusted this long before its record is read again (revocations are "
        "still checked on every request); bounds how long an instance accepts a rotated-out secret.",
    )

    @model_validator(mode="before")
    @classmethod
    def _present(cls, data: Any) -> Any:
        return enabled_when_present(data)

    @model_validator(mode="after")
    def _usable(self) -> ApiKeySettings:
        if not self.enabled:
            return self
        if self.secret is None:
            raise fail("gateway keys need keys.secret", hint="secret: ${SMSGUARD_KEY_SECRET}, at least 32 bytes")
        if len(self.secret.reveal().encode()) < MIN_KEY_SECRET_BYTES:
            raise fail(f"keys.secret must be at least {MIN_KEY_SECRET_BYTES} bytes", at=("secret",))
        if self.rotation_overlap_s > self.max_rotation_overlap_s:
            raise fail("rotation_overlap_s is greater than max_rotation_overlap_s")
        return self
