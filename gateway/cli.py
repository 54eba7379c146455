"""The `gateway` command (also `python -m gateway`).

    gateway serve --config config.yaml [--host H] [--port P] [--workers N]
    gateway demo [--config config.yaml] [--port P]
    gateway token issue --config C --sub S --scope messages:send [--scope ...] [--ttl 900]
    gateway token revoke --config C JTI
    gateway hash-password [--stdin]
    gateway policy validate|explain|check|test|diff|matrix|schema ...

Every failure prints one clear line to stderr (a config error names file:line:column and key) and exits
non-zero; nothing here prints a secret except what the user asked for (a token, a hash).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import Settings, load_settings
from .errors import HTTPError, LoadError

__all__ = ["main"]

CONFIG_ENV = "SMSGUARD_CONFIG"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="smsguard: a scope-aware gateway for SMS APIs")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the reverse proxy")
    serve.add_argument("--config", default="config.yaml")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, default=1)

    demo = commands.add_parser("demo", help="run the gateway in front of a built-in SMSGate sandbox")
    demo.add_argument("--config", default="config.yaml")
    demo.add_argument("--port", type=int)

    token = commands.add_parser("token", help="issue or revoke the gateway's own tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    issue = token_commands.add_parser("issue", help="print a new access token")
    issue.add_argument("--config", default="config.yaml")
    issue.add_argument("--sub", required=True, help="the token's subject")
    issue.add_argument("--scope", action="append", required=True, help="a scope to grant (repeatable)")
    issue.add_argument("--ttl", type=int, help="lifetime in seconds (capped by tokens.max_ttl_s)")
    issue.add_argument("--json", action="store_true", help="print the whole token response as JSON")
    revoke = token_commands.add_parser("revoke", help="revoke a token (and its refresh family) by jti")
    revoke.add_argument("--config", default="config.yaml")
    revoke.add_argument("jti")

    from .policy_cli import add_policy_commands

    add_policy_commands(commands)

    hash_password = commands.add_parser("hash-password", help="print an argon2id hash for config.yaml")
    hash_password.add_argument("--stdin", action="store_true", help="read the password from standard input")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(Path(args.config), port=args.port)
        if args.command == "token":
            return asyncio.run(_token(args))
        if args.command == "hash-password":
            return _hash_password(args)
        if args.command == "policy":
            from .policy_cli import run_policy_command

            return run_policy_command(args)
    except LoadError as exc:
        print(f"gateway: config error: {exc}", file=sys.stderr)
        return 2
    except HTTPError as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = load_settings(args.config)
    from .app import create_app

    create_app(settings)  # validate policies and upstreams before any worker starts
    os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
    uvicorn.run(
        "gateway.cli:app_from_environment",
        factory=True,
        **uvicorn_options(settings, host=args.host, port=args.port),
        workers=args.workers,
    )
    return 0


def uvicorn_options(settings: Settings, *, host: str | None = None, port: int | None = None) -> dict[str, Any]:
    """The server settings: httptools + uvloop, no proxy-header trust, a drain longer than any upstream timeout."""
    longest = max((up.read_timeout_s + up.connect_timeout_s for up in settings.upstreams.values()), default=30.0)
    return {
        "host": host or settings.listen.host,
        "port": port if port is not None else settings.listen.port,
        "http": "httptools",
        "loop": "uvloop",
        "lifespan": "on",
        "proxy_headers": False,
        "server_header": False,
        "timeout_graceful_shutdown": int(longest) + 5,
        "log_level": "info",
    }


def app_from_environment() -> object:
    """The uvicorn factory for `serve` (each worker loads the config named by SMSGUARD_CONFIG)."""
    from .app import create_app

    return create_app(load_settings(os.environ[CONFIG_ENV]))


async def _token(args: argparse.Namespace) -> int:
    import json

    from .app import create_app
    from .tokens_api import token_response

    settings = load_settings(args.config)
    gateway = create_app(settings)
    try:
        if gateway.tokens.issuer is None:
            print("gateway: token issuing is disabled (tokens.enabled: false)", file=sys.stderr)
            return 1
        if args.token_command == "issue":
            pair = await gateway.tokens.issue(args.sub, args.scope, args.ttl, caller=None)
            print(json.dumps(token_response(pair), indent=2) if args.json else pair.access.token)
        else:
            record = await gateway.tokens.revoke(args.jti, caller=None)
            print(f"revoked {args.jti} (subject {record.subject}) and its refresh family")
        return 0
    finally:
        await gateway.shutdown()


def _hash_password(args: argparse.Namespace) -> int:
    from .passwords import hash_password

    if args.stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
        if secrets.compare_digest(password, getpass.getpass("again: ")) is False:
            print("gateway: the passwords differ", file=sys.stderr)
            return 1
    if not password:
        print("gateway: empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0
