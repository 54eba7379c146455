"""`gateway demo`: the shipped config.yaml in front of a built-in SMSGate sandbox, zero configuration.

The demo fills the config's `${VAR}`s with throwaway values (a random signing secret, random sandbox
credentials the client never sees) and a fixed loopback-only Basic login, so the README walk-through
works verbatim. It never binds beyond 127.0.0.1.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from gateway.config.settings import load_settings

__all__ = ["demo_banner", "demo_environment", "run_demo"]

DEMO_USER = "ops"
DEMO_PASSWORD = "smsguard-demo"


def demo_environment(sandbox_url: str, sandbox_user: str, sandbox_password: str) -> dict[str, str]:
    """The variables config.yaml needs, with demo values (real environment values are not used)."""
    from gateway.auth.basic import hash_password

    return {
        "SMSGUARD_TOKEN_SECRET": secrets.token_urlsafe(48),
        "SMSGUARD_OPS_PASSWORD_HASH": hash_password(DEMO_PASSWORD),
        "SMSGATE_URL": sandbox_url,
        "SMSGATE_USER": sandbox_user,
        "SMSGATE_PASSWORD": sandbox_password,
    }


def demo_banner(base: str) -> str:
    """What the demo prints: a ready Basic credential and copy-paste curl lines."""
    api = f"{base}/3rdparty/v1"
    take = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'"
    return f"""
smsguard demo is running at {base} in front of a sandbox SMSGate (made-up data; nothing is sent).

  Basic credential (demo only):  {DEMO_USER}:{DEMO_PASSWORD}

  # 1. get a short-lived token that may only send, read and list messages
  TOKEN=$(curl -s -u {DEMO_USER}:{DEMO_PASSWORD} -X POST {api}/auth/token \\
    -H 'content-type: application/json' -d '{{"scopes":["messages:send","messages:read","messages:list"],"ttl":900}}' \\
    | {take})

  # 2. send a message through the gateway (the sandbox credentials are injected for you)
  curl -si -H "Authorization: Bearer $TOKEN" -X POST {api}/messages \\
    -H 'content-type: application/json' -d '{{"textMessage":{{"text":"Hello"}},"phoneNumbers":["+15555550100"]}}'

  # 3. a scope the token lacks is refused with 403
  curl -si -H "Authorization: Bearer $TOKEN" {api}/devices

Press Ctrl+C to stop.
"""


def run_demo(config: Path, *, port: int | None = None, log_format: str = "auto") -> int:
    import uvloop

    uvloop.run(_demo(config, port, log_format))
    return 0


async def _demo(config: Path, port: int | None, log_format: str) -> None:
    import uvicorn

    from gateway.app import create_app
    from gateway.observe.logs import StreamSink, configure_stdlib_logging, resolve_format
    from gateway.sandbox.app import Sandbox
    from gateway.serving import StartupError, bind_listener, start_metrics_listener, uvicorn_options

    sandbox_user, sandbox_password = "sandbox", secrets.token_urlsafe(24)
    sandbox = Sandbox(sandbox_user, sandbox_password)
    url = await sandbox.start()
    try:
        env = {**os.environ, **demo_environment(url, sandbox_user, sandbox_password)}
        settings = load_settings(config, env=env)
        options = uvicorn_options(settings, host="127.0.0.1", port=port)
        options.pop("loop")
        with bind_listener(options["host"], options["port"]) as listener:  # a port in use fails here, first
            fmt = resolve_format(log_format)
            gateway = create_app(settings, log_sink=StreamSink(fmt))
            configure_stdlib_logging(fmt, level=settings.log.level, redactor=gateway.loggers.redactor)
            if settings.metrics.enabled and settings.metrics.port is not None:
                start_metrics_listener(settings, gateway.metrics.registry)
            server = uvicorn.Server(uvicorn.Config(gateway, **options))
            print(demo_banner(f"http://127.0.0.1:{options['port']}"), flush=True)
            await server.serve(sockets=[listener])
        if not server.started:
            raise StartupError("the demo gateway did not start (the reason is logged above)")
    finally:
        await sandbox.stop()
