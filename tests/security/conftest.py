"""Suite-wide fixtures of the security suite: the leak watch (canary secrets and issued tokens).

Every test here runs with a root log handler at DEBUG feeding `harness.WATCH`, and every response the
suite's clients and raw sockets receive is recorded there too. When the session ends, no canary may
appear in any recorded response, log record or exception text, and no issued token in any log record.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from harness import WATCH, CaptureHandler

QUIET = ("httpx", "httpcore", "hpack")


@pytest.fixture(scope="session", autouse=True)
def _no_secret_leaks_in_the_whole_suite() -> Iterator[None]:
    """After the last test: nothing the gateway said, logged or raised contains a secret."""
    yield
    leaks = WATCH.leaks()
    assert not leaks, "secrets leaked during the security suite:\n" + "\n".join(leaks[:20])


@pytest.fixture(autouse=True)
def _capture_logs() -> Iterator[None]:
    """Every log record at any level, for the duration of each security test."""
    root = logging.getLogger()
    handler = CaptureHandler(logging.DEBUG)
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    quiet = {name: logging.getLogger(name).level for name in QUIET}
    for name in QUIET:  # the test's own HTTP client: thousands of debug lines, none of them the gateway's
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        for name, old in quiet.items():
            logging.getLogger(name).setLevel(old)
