"""gateway/__init__.py: a light, lazy public API (PEP 562) that still offers every name in `__all__`.

An app embedding `GuardMiddleware` must not pay for (or depend on) the reverse proxy and its server:
each check runs in a fresh interpreter, since this test process has long imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import gateway

# Modules (and their submodules) the light entry points must not load.
HEAVY = (
    "uvicorn",
    "redis",
    "httptools",
    "aiohttp",
    "gateway.proxy",
    "fastapi",
    "gateway.guard.fastapi",
    "opentelemetry",  # the otel extra: only with tracing on (tests/test_tracing.py)
)


def _loaded_after(statement: str) -> list[str]:
    """The HEAVY modules present in sys.modules after `statement` runs in a fresh interpreter."""
    probe = (
        "import json, sys\n"
        f"{statement}\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in heavy))))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout)
    return loaded


@pytest.mark.parametrize(
    "statement",
    [
        "import gateway",
        "from gateway import GuardMiddleware",
        "from gateway import Authorizer, Matcher, Settings, load_policies, load_settings",
        "from gateway import MemoryStore, Store, open_store; open_store('memory://')",
    ],
)
def test_light_imports_load_no_server_proxy_or_redis(statement: str) -> None:
    """`import gateway` and the embedding names load none of uvicorn, redis, httptools, aiohttp, the proxy, FastAPI."""
    assert _loaded_after(statement) == [], f"{statement!r} imported heavy modules"


def test_every_public_name_resolves() -> None:
    """Each name in `__all__` resolves to the object its defining module holds, also via `from gateway import *`."""
    import gateway.errors
    import gateway.guard.middleware
    import gateway.store

    for name in gateway.__all__:
        assert getattr(gateway, name) is not None, name
    assert gateway.GuardMiddleware is gateway.guard.middleware.GuardMiddleware
    assert gateway.LoadError is gateway.errors.LoadError
    assert gateway.RedisStore is gateway.store.RedisStore
    namespace: dict[str, object] = {}
    exec("from gateway import *", namespace)
    assert set(gateway.__all__) <= set(namespace)
    assert set(gateway.__all__) <= set(dir(gateway))


def test_unknown_name_is_an_attribute_error() -> None:
    """A misspelled name fails like any module attribute (so hasattr and `from gateway import x` behave)."""
    with pytest.raises(AttributeError, match="GuardMidleware"):
        _ = gateway.GuardMidleware  # type: ignore[attr-defined]
    assert not hasattr(gateway, "proxy_app")
