"""Rates as policy and config files write them: `N/s`, `N/m`, `N/h`, `N/d` (and windows: `30s`, `1h`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Rate", "parse_rate", "parse_window"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"\s*(\d{1,9})\s*/\s*(\d{0,6})\s*([smhd])\s*")
_WINDOW = re.compile(r"\s*(\d{1,9})\s*([smhd])\s*")


@dataclass(frozen=True, slots=True)
class Rate:
    """`count` units per `period_s` seconds; `interval_us` is GCRA's emission interval."""

    count: int
    period_s: int
    text: str

    @property
    def interval_us(self) -> int:
        return max(1, self.period_s * 1_000_000 // self.count)


def parse_rate(text: str) -> Rate:
    """`60/m` → 60 per 60 s (`10/5m` is 10 per 300 s); ValueError with the accepted shapes otherwise."""
    match = _RATE.fullmatch(text) if isinstance(text, str) else None
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"not a rate: {text!r} (write N/s, N/m, N/h or N/d with N >= 1, e.g. 60/m)")
    multiple = int(match.group(2) or 1)
    if multiple < 1:
        raise ValueError(f"not a rate: {text!r}")
    return Rate(int(match.group(1)), multiple * _UNITS[match.group(3)], text.strip())


def parse_window(text: str) -> int:
    """`1h` → 3600 (seconds); ValueError otherwise."""
    match = _WINDOW.fullmatch(text) if isinstance(text, str) else None
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"not a window: {text!r} (write N followed by s, m, h or d, e.g. 1h)")
    return int(match.group(1)) * _UNITS[match.group(2)]
