"""Abuse limits: rate limits and SMS quotas shared through the store, destination rules, prefix velocity.

    sms       reading a send request (recipients, text, SMS parts) and the destination rules (phonenumbers)
    limiter   `Limiter` (the checks of one request, one store call) and `LimitsApp`, the ASGI hook between
              the guard's decision and the forwarder

The algorithm (GCRA) and its store calls live in `gateway.store.gcra` and the stores; Basic auth's
failed-login limits in `gateway.auth.basic`.
"""

from __future__ import annotations

from gateway.limits.limiter import Limiter, LimitsApp

__all__ = ["Limiter", "LimitsApp"]
