"""`gateway policy studio [POLICY...] [--config C] [--tests DIR]... [--host H] [--port P]`.

Starts the studio on 127.0.0.1 (by default) and prints the URL to open, with a one-time secret in it.
This module stays light (argparse only): the web app and uvicorn are imported when the command runs.
"""

from __future__ import annotations

import argparse
import secrets
import socket
import sys

__all__ = ["add_studio_command", "run_studio"]

DEFAULT_PORT = 8765


def add_studio_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `studio` to the `gateway policy` sub-commands."""
    studio = commands.add_parser(
        "studio",
        help="edit policies in a browser: live validation, who can do what, simulate, review and save",
        description="A local web app for the policy files given (or the config's policies), behind a one-time secret.",
    )
    studio.add_argument("files", nargs="*", metavar="POLICY", help="policy files to edit (default: the config's)")
    studio.add_argument("--config", help="config.yaml: its policies, upstream URLs and token issuers")
    studio.add_argument(
        "--tests", action="append", metavar="FILE|DIR", help="policy tests to run (default: tests/ beside each policy)"
    )
    studio.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    studio.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free)")


def run_studio(args: argparse.Namespace) -> int:
    """Serve the studio until interrupted; 2 when there is nothing to edit (LoadErrors go to the caller)."""
    import uvicorn

    from gateway.config.settings import load_settings
    from gateway.studio.app import create_studio_app
    from gateway.studio.workspace import Workspace

    settings = None if args.config is None else load_settings(args.config)
    paths = list(args.files or (settings.policies if settings is not None else ()))
    if not paths:
        print("gateway policy studio: name the policy files to edit, or --config C", file=sys.stderr)
        return 2
    workspace = Workspace(paths, config=args.config, settings=settings, tests=args.tests)
    secret = secrets.token_urlsafe(32)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    port = listener.getsockname()[1]
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    config = uvicorn.Config(
        create_studio_app(workspace, secret, host=args.host),
        lifespan="off",
        ws="none",
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,
    )
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        print(f"warning: listening on {args.host}: anyone who learns the URL can edit these files", file=sys.stderr)
    print(f"policy studio for {', '.join(f.name for f in workspace.files)}", flush=True)
    print(f"open http://{host}:{port}/?token={secret}", flush=True)
    uvicorn.Server(config).run(sockets=[listener])
    return 0
