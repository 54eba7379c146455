"""Helpers for the embedding tests: a uvicorn server in a thread (websockets on), shared per module."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import uvicorn
from processes import free_port

__all__ = ["served"]


def _run(server: uvicorn.Server) -> None:
    with suppress(SystemExit):  # uvicorn exits when the app's lifespan start-up fails
        server.run()


@contextmanager
def served(app: Any, *, lifespan: str = "on") -> Iterator[str]:
    """Run `app` under uvicorn (httptools, websockets-sansio) on loopback in a thread; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        ws="websockets-sansio",
        lifespan=lifespan,
        log_config=None,
        log_level="critical",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=_run, args=(server,), name=f"uvicorn:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited during startup")
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
