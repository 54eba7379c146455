"""The `gateway` command (also `python -m gateway`).

    gateway serve --config config.yaml [--host H] [--port P] [--workers N] [--log-format auto|json|console]
    gateway demo [--config C] [--port P] [--log-format auto|json|console]
    gateway init [DIR]
    gateway --version
    gateway token issue --config C --sub S --scope messages:send [--scope ...] [--ttl 900]
                        [--country GB [--country US ...]] [--max-recipients N]
    gateway token revoke --config C JTI
    gateway token revoke --config C --sub S [--issuer basic|cli|NAME]
    gateway hash-password [--stdin]
    gateway policy validate|explain|check|test|diff|matrix|schema ...

Every failure prints one clear line to stderr (a config error names file:line:column and key) and exits
non-zero; nothing here prints a secret except what the user asked for (a token, a hash).

`serve` and `demo` set up what is process-wide, so `create_app` never has to: the gateway's events and
every stdlib record (uvicorn, httpx) as JSON lines or console lines on stderr, through the
gateway's redactor (`logs.configure_stdlib_logging`); and, for `--workers N > 1` or `metrics.port`,
prometheus_client's multiprocess directory (a fresh temporary one unless PROMETHEUS_MULTIPROC_DIR is set),
created before prometheus_client is first imported and removed on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from gateway.config.settings import Settings, load_settings
from gateway.errors import HTTPError, LoadError
from gateway.serving import StartupError, check_listener, start_metrics_listener, uvicorn_options

__all__ = ["main"]

CONFIG_ENV = "SMSGUARD_CONFIG"
LOG_FORMAT_ENV = "SMSGUARD_LOG_FORMAT"
LOG_FORMATS = ("auto", "json", "console")
LOG_FORMAT_HELP = "log lines on stderr: json, console, or auto: console on a terminal, else json (default: auto)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="smsguard: a scope-aware gateway for SMS APIs")
    parser.add_argument("--version", action="version", version=f"gateway (smsguard) {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run the reverse proxy", description="Run the reverse proxy (uvicorn, httptools, uvloop)."
    )
    serve.add_argument("--config", default="config.yaml", metavar="C", help="the config file (default: config.yaml)")
    serve.add_argument(
        "--host", metavar="H", help="address to listen on (default: listen.host of the config, else 127.0.0.1)"
    )
    serve.add_argument(
        "--port", type=int, metavar="P", help="port to listen on (default: listen.port of the config, else 8080)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes on one port; N > 1 needs a shared store: redis://... (default: 1)",
    )
    serve.add_argument("--log-format", choices=LOG_FORMATS, default="auto", help=LOG_FORMAT_HELP)

    demo = commands.add_parser(
        "demo",
        help="run the gateway in front of a built-in SMSGate sandbox",
        description="Run the gateway, on 127.0.0.1 only, in front of a built-in sandbox that answers like "
        "SMSGate's 3rdparty API with made-up data; prints a Basic login and curl lines to try.",
    )
    demo.add_argument(
        "--config",
        metavar="C",
        help="a config to run instead of the demo's own (default: the config.yaml shipped in the package)",
    )
    demo.add_argument(
        "--port", type=int, metavar="P", help="port to listen on (default: listen.port of the config, else 8080)"
    )
    demo.add_argument("--log-format", choices=LOG_FORMATS, default="auto", help=LOG_FORMAT_HELP)

    token = commands.add_parser("token", help="issue or revoke the gateway's own tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    issue = token_commands.add_parser("issue", help="print a new access token")
    issue.add_argument("--config", default="config.yaml")
    issue.add_argument("--sub", required=True, help="the token's subject")
    issue.add_argument("--scope", action="append", required=True, help="a scope to grant (repeatable)")
    issue.add_argument("--ttl", type=int, help="lifetime in seconds (capped by tokens.max_ttl_s)")
    issue.add_argument("--json", action="store_true", help="print the whole token response as JSON")
    issue.add_argument(
        "--country",
        action="append",
        metavar="CC",
        help="narrow: send only to this ISO 3166-1 alpha-2 country (repeatable; the token's sms.countries)",
    )
    issue.add_argument(
        "--max-recipients", type=int, metavar="N", help="narrow: at most N recipients per send (sms.max_recipients)"
    )
    revoke = token_commands.add_parser(
        "revoke", help="revoke a token (its refresh family and descendants) by jti, or every token of a subject"
    )
    revoke.add_argument("--config", default="config.yaml")
    revoke.add_argument("jti", nargs="?", help="the token's id (the `id` of the token response)")
    revoke.add_argument("--sub", help="revoke every token of this subject issued before now, on every instance")
    revoke.add_argument(
        "--issuer",
        help="whose subject: basic (the default: Basic users), cli (tokens of `token issue`) or an issuer name",
    )

    _add_key_commands(commands)

    from gateway.policytools.cli import add_policy_commands

    add_policy_commands(commands)

    init = commands.add_parser(
        "init",
        help="write a starter config.yaml and the provider policies into a folder",
        description="Write DIR/config.yaml (the demo's config: every secret a ${VAR}) and DIR/policies/*.yaml "
        "(SMSGate, BSG v1/v2, SMSPortal, SMSGatewayCenter), with $schema lines for editors. Existing files "
        "are never overwritten.",
    )
    init.add_argument("directory", metavar="DIR", nargs="?", default=".", help="the folder (default: .)")

    hash_password = commands.add_parser("hash-password", help="print an argon2id hash for config.yaml")
    hash_password.add_argument("--stdin", action="store_true", help="read the password from standard input")
    return parser


def _add_key_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    key = commands.add_parser("key", help="create, list, rotate or revoke gateway API keys (sgk_...)")
    key_commands = key.add_subparsers(dest="key_command", required=True)
    create = key_commands.add_parser("create", help="print a new key (shown once)")
    create.add_argument("--sub", required=True, help="the subject that owns the key")
    create.add_argument("--issuer", help="the owner's issuer: cli (the default), basic or an issuer name")
    create.add_argument("--scope", action="append", required=True, help="a scope to grant (repeatable)")
    create.add_argument("--name", default="", help="a label, e.g. the integration using it")
    create.add_argument("--ttl", type=int, help="lifetime in seconds (default: no expiry)")
    create.add_argument("--test", action="store_true", help="a test key (sgk_test_): test credentials only")
    listing = key_commands.add_parser("list", help="list a subject's keys (never their secrets)")
    listing.add_argument("--sub", required=True)
    listing.add_argument("--issuer")
    rotate = key_commands.add_parser("rotate", help="print a new secret for a key; the old one works for the overlap")
    rotate.add_argument("key_id")
    rotate.add_argument("--overlap-s", type=int, help="default: keys.rotation_overlap_s")
    revoke = key_commands.add_parser("revoke", help="revoke a key and every token minted from it")
    revoke.add_argument("key_id")
    for command in (create, listing, rotate, revoke):
        command.add_argument("--config", default="config.yaml")
        command.add_argument("--json", action="store_true", help="print JSON")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("smsguard")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "demo":
            from gateway.demo import run_demo
            from gateway.scaffold import demo_config

            config = Path(args.config) if args.config else demo_config()
            return run_demo(config, port=args.port, log_format=args.log_format)
        if args.command == "init":
            return _init(Path(args.directory))
        if args.command == "token":
            return asyncio.run(_token(args))
        if args.command == "key":
            return asyncio.run(_key(args))
        if args.command == "hash-password":
            return _hash_password(args)
        if args.command == "policy":
            from gateway.policytools.cli import run_policy_command

            return run_policy_command(args)
    except LoadError as exc:
        for error in exc.errors:
            print(f"gateway: config error: {error.line_text}", file=sys.stderr)
        return 2
    except HTTPError as exc:
        print(f"gateway: {exc.message}", file=sys.stderr)
        return 1
    except StartupError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.observe.logs import resolve_format

    settings = load_settings(args.config)
    unshared = unshared_state(settings, args.workers)
    if unshared is not None:
        print(f"gateway: {unshared}", file=sys.stderr)
        return 2
    options = uvicorn_options(settings, host=args.host, port=args.port)
    check_listener(options["host"], options["port"])  # a port in use is the one line printed, before anything
    log_format = resolve_format(args.log_format)
    with _metrics_directory(settings, args.workers) as directory:  # before prometheus_client is imported
        from gateway.app import create_app
        from gateway.observe.logs import NullSink, StreamSink, configure_stdlib_logging

        if args.workers == 1:
            # One process: the gateway built here to validate the config is the one that serves, so the
            # process never holds two (bench/MEMORY.md); a config error still stops it before anything runs.
            gateway = create_app(settings, log_sink=StreamSink(log_format))
            configure_stdlib_logging(log_format, level=settings.log.level, redactor=gateway.loggers.redactor)
            if directory is not None and settings.metrics.port is not None:
                from gateway.observe.metrics import aggregate_registry

                start_metrics_listener(settings, aggregate_registry(directory))
            freeze_startup_objects()
            uvicorn.run(gateway, **options)
            return 0
        checked = create_app(settings, log_sink=NullSink())  # validate policies and upstreams before any worker
        checked.metrics.process_exiting()  # this process serves no requests: keep its gauges out of the aggregate
        configure_stdlib_logging(log_format, level=settings.log.level, redactor=checked.loggers.redactor)
        del checked  # the workers build their own; this process only supervises them
        if directory is not None and settings.metrics.port is not None:
            from gateway.observe.metrics import aggregate_registry

            start_metrics_listener(settings, aggregate_registry(directory))
        os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
        os.environ[LOG_FORMAT_ENV] = log_format
        uvicorn.run(
            "gateway.cli:app_from_environment",
            factory=True,
            **options,
            workers=args.workers,
        )
    return 0


def unshared_state(settings: Settings, workers: int) -> str | None:
    """Why these processes would not share revocations and refresh families (None: they would).

    Each worker of `--workers N` is its own process: with `store: memory://` a token revoked in one is
    still accepted by the others, and a refresh token rotated in one is a replay in the next.
    """
    if workers < 1:
        return f"--workers must be at least 1, not {workers}"
    if workers > 1 and settings.store.startswith("memory:"):
        return (
            f"--workers {workers} needs a shared store: with store: memory:// every worker keeps its own revocations; "
            "set store: redis://host:6379/0 in the config (or run one worker)"
        )
    return None


@contextlib.contextmanager
def _metrics_directory(settings: Settings, workers: int) -> Iterator[str | None]:
    """prometheus_client's multiprocess directory, when several processes must be aggregated (else None)."""
    from gateway.observe.metrics import MULTIPROC_ENV

    if not settings.metrics.enabled or (workers <= 1 and settings.metrics.port is None):
        yield None
        return
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        yield given
        return
    directory = tempfile.mkdtemp(prefix="smsguard-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def app_from_environment() -> object:
    """The uvicorn factory for `serve`: each worker loads the config named by SMSGUARD_CONFIG and logs its
    events, and the process's stdlib records, in the format named by SMSGUARD_LOG_FORMAT."""
    from gateway.app import create_app
    from gateway.observe.logs import StreamSink, configure_stdlib_logging, resolve_format

    log_format = resolve_format(os.environ.get(LOG_FORMAT_ENV, "json"))
    settings = load_settings(os.environ[CONFIG_ENV])
    gateway = create_app(settings, log_sink=StreamSink(log_format))
    configure_stdlib_logging(log_format, level=settings.log.level, redactor=gateway.loggers.redactor)
    freeze_startup_objects()
    return gateway


def freeze_startup_objects() -> None:
    """Move everything built at start-up (config, compiled policy, keys) out of the GC's reach.

    Full collections otherwise re-scan these long-lived objects again and again; `bench/RESULTS.md`
    measured p99 at 32 connections falling from about 40 ms to 11 ms, and a 10,000-rule policy no longer
    costing more than a 10-rule one. A worker process does this once, before serving.
    """
    import gc

    gc.collect()
    gc.freeze()


def _sms_flags(args: argparse.Namespace) -> dict[str, object] | None:
    """`--country`/`--max-recipients` as the token request's `sms` block, validated like it (400 → exit 1)."""
    from gateway.tokens.narrowing import parse

    requested: dict[str, object] = {}
    if args.country is not None:
        requested["countries"] = args.country
    if args.max_recipients is not None:
        requested["max_recipients"] = args.max_recipients
    return parse(requested) if requested else None


async def _token(args: argparse.Namespace) -> int:
    import json
    from datetime import UTC, datetime

    from gateway.app import create_app
    from gateway.tokens.endpoints import token_response

    settings = load_settings(args.config)
    gateway = create_app(settings)
    try:
        if gateway.tokens.issuer is None:
            print("gateway: token issuing is disabled (tokens.enabled: false)", file=sys.stderr)
            return 1
        if args.token_command == "issue":
            if settings.store.startswith("memory:"):
                print(
                    "gateway: token issue needs a shared store: with store: memory:// every process is its own "
                    "store epoch and no running gateway would accept the token; set store: redis://host:6379/0, "
                    f"or mint through POST {settings.tokens.mount}/auth/token",
                    file=sys.stderr,
                )
                return 1
            pair = await gateway.tokens.issue(args.sub, args.scope, args.ttl, caller=None, sms=_sms_flags(args))
            print(json.dumps(token_response(pair), indent=2) if args.json else pair.access.token)
        elif args.sub is not None:
            if args.jti is not None:
                print("gateway: give a jti or --sub, not both", file=sys.stderr)
                return 2
            from gateway.tokens.lineage import BASIC_IDP

            idp = args.issuer or BASIC_IDP
            if settings.store == "memory://":
                print("gateway: note: with store memory:// this reaches no running gateway", file=sys.stderr)
            cutoff = await gateway.tokens.revoke_subject(idp, args.sub, caller=None)
            issued = datetime.fromtimestamp(cutoff, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            print(f"revoked every token of {idp}:{args.sub} issued before {issued}")
        elif args.jti is None or args.issuer is not None:
            print("gateway: give a jti, or --sub (with --issuer)", file=sys.stderr)
            return 2
        elif settings.store.startswith("memory:"):
            print(
                "gateway: token revoke JTI needs a shared store: with store: memory:// each gateway process keeps its "
                "tokens in its own memory, out of this command's reach; revoke through "
                f"DELETE {settings.tokens.mount}/auth/token/JTI on the running gateway, or set store: redis://...",
                file=sys.stderr,
            )
            return 1
        else:
            record = await gateway.tokens.revoke(args.jti, caller=None)
            print(f"revoked {args.jti} (subject {record.subject}) and its refresh family")
        return 0
    finally:
        await gateway.shutdown()


async def _key(args: argparse.Namespace) -> int:
    import json

    from gateway.app import create_app

    settings = load_settings(args.config)
    gateway = create_app(settings)
    try:
        endpoints = gateway.runtime.key_endpoints
        service = endpoints.service if endpoints is not None else None
        if service is None:
            print("gateway: gateway keys are not enabled (keys: in config.yaml)", file=sys.stderr)
            return 1
        if settings.store == "memory://" and args.key_command != "create":
            print("gateway: note: with store memory:// this reaches no running gateway", file=sys.stderr)
        answer: object
        if args.key_command == "create":
            mode = "test" if args.test else "live"
            created = await service.create(
                None, subject=args.sub, idp=args.issuer, name=args.name, scopes=args.scope, mode=mode, ttl_s=args.ttl
            )
            answer, text = created.answer(), created.key.full
        elif args.key_command == "list":
            answer = await service.list_keys(None, idp=args.issuer, subject=args.sub)
            text = "\n".join(f"{k['id']}  {k['name'] or '-'}  {' '.join(k['scopes'])}" for k in answer)
        elif args.key_command == "rotate":
            rotated = await service.rotate(None, args.key_id, args.overlap_s)
            answer, text = rotated.answer(), rotated.key.full
        else:
            record = await service.revoke(None, args.key_id)
            answer = {"id": record.key_id, "revoked": True}
            text = f"revoked {record.key_id} and every token minted from it"
        print(json.dumps(answer, indent=2) if args.json else text)
        return 0
    finally:
        await gateway.shutdown()


def _init(directory: Path) -> int:
    from gateway.scaffold import init_project

    try:
        written = init_project(directory)
    except FileExistsError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    config = directory / "config.yaml"
    print(
        f"\nnext: gateway policy validate --config {config} --no-secrets\n"
        f"      export the ${{VAR}}s config.yaml names, then: gateway serve --config {config}"
    )
    return 0


def _hash_password(args: argparse.Namespace) -> int:
    from gateway.auth.basic import hash_password

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
