"""`gateway policy ...`: the command line of the policy tools (the logic is in `policytools`).

    gateway policy validate [FILE...] [--policy FILE]... [--config C] [--no-secrets] [--strict]
    gateway policy explain METHOD PATH [--policy FILE]... [--config C] [--no-secrets]
    gateway policy check METHOD PATH [--policy FILE]... [--config C] [--no-secrets] [--scope S... | --token JWT]
    gateway policy matrix [FILE...] [--policy FILE]... [--config C] [--no-secrets] [--format text|markdown|json]
    gateway policy test FILE|DIR...
    gateway policy diff OLD NEW [--json] [--exit-code]
    gateway policy schema [--config]
    gateway policy studio [POLICY...] [--config C] [--tests DIR]... [--host H] [--port P]

One convention for where policies come from: the policy files named (`--policy FILE`, repeatable, in every
command that reads policies; `validate` and `matrix` also take them as positional FILEs), else the
`policies:` of the config. The config is `--config C`, by default `config.yaml` like `gateway serve`; it
also supplies upstream URLs, token issuers and the token endpoints' mount. A config named with `--config`
is always read; the default one only when no policy file is named. `--no-secrets` reads the config with
stand-ins for unset `${VAR}`s (`gateway.config.loader.placeholder_environment`), for policy authors who do
not hold the deployment's secrets. PATH may carry a `?query`.

Exit codes: 0 success; 1 the answer is "no" (validate: an error, or a warning with --strict; explain:
no rule matches or the path is refused; check: deny; test: a failed case; diff --exit-code: access
changed); 2 usage errors and inputs that cannot be loaded (explain, check, diff, matrix).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable, Sequence
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import LoadError
from gateway.studio.cli import add_studio_command, run_studio

if TYPE_CHECKING:
    from gateway.config.settings import Settings
    from gateway.policy.matcher import Matcher
    from gateway.policy.model import Policy
    from gateway.policytools import tools

__all__ = ["add_policy_commands", "main", "run_policy_command"]

USAGE_ERROR = 2


class _UsageError(Exception):
    """A command line that cannot be carried out (exit 2)."""


def add_policy_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `policy` and its sub-commands to the `gateway` command's sub-parsers."""
    policy = subparsers.add_parser(
        "policy",
        help="validate, explain, check, test, diff and tabulate policies",
        description="Tools for the people who edit the policy: who can do what, before and after a change.",
    )
    commands = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="report every error and warning with file:line:column")
    _policy_arguments(validate, positional=True)
    validate.add_argument("--strict", action="store_true", help="fail on warnings too")

    explain = commands.add_parser("explain", help="which rule matches a request, and where it would go")
    _request_arguments(explain)

    check = commands.add_parser("check", help="allow or deny a request exactly as the gateway would")
    _request_arguments(check)
    who = check.add_mutually_exclusive_group()
    who.add_argument("--scope", action="append", metavar="S", help="a scope the caller holds (repeatable)")
    who.add_argument("--token", metavar="JWT", help="a real token, verified with the config's issuers")

    test = commands.add_parser("test", help="run policy unit tests (YAML)")
    test.add_argument("paths", nargs="+", metavar="FILE|DIR", help="test files, or directories of them")

    diff = commands.add_parser("diff", help="the access change between two policy versions")
    diff.add_argument("old", metavar="OLD")
    diff.add_argument("new", metavar="NEW")
    diff.add_argument("--json", action="store_true", help="print the changes as a JSON list")
    diff.add_argument("--exit-code", action="store_true", help="exit 1 when access changed, like git diff")

    matrix = commands.add_parser("matrix", help="the who-can-do-what table (routes x scopes)")
    _policy_arguments(matrix, positional=True)
    matrix.add_argument("--format", choices=("text", "markdown", "json"), default="text", help="(default: text)")

    schema = commands.add_parser("schema", help="print the JSON Schema of policy files (or of config.yaml)")
    schema.add_argument("--config", action="store_true", help="print the schema of config.yaml instead")

    add_studio_command(commands)


def _request_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("method", metavar="METHOD", help="HTTP method, case-sensitive (GET, POST, ...)")
    parser.add_argument("path", metavar="PATH", help="request path as sent, optionally with ?query")
    _policy_arguments(parser, positional=False)


DEFAULT_CONFIG = "config.yaml"


def _policy_arguments(parser: argparse.ArgumentParser, *, positional: bool) -> None:
    """Where the policies come from, the same in every command that reads them (see the module docstring)."""
    if positional:
        parser.add_argument("files", nargs="*", metavar="FILE", help="policy files (the same as --policy FILE)")
    parser.add_argument("--policy", action="append", metavar="FILE", help="a policy file to use (repeatable)")
    parser.add_argument(
        "--config",
        metavar="C",
        help=f"config.yaml: its policies (unless policy files are named), upstreams and issuers "
        f"(default: {DEFAULT_CONFIG}, read when no policy file is named)",
    )
    parser.add_argument(
        "--no-secrets",
        action="store_true",
        help="read the config with stand-ins for unset ${VAR}s (no secret values needed; not for serving)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`gateway` with only the `policy` commands (for tests and `python -m`)."""
    parser = argparse.ArgumentParser(prog="gateway")
    add_policy_commands(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else USAGE_ERROR
    return run_policy_command(args)


def run_policy_command(args: argparse.Namespace) -> int:
    """Run the parsed `gateway policy ...` command; returns the exit code."""
    handlers = {
        "validate": _validate,
        "explain": _explain,
        "check": _check,
        "test": _test,
        "diff": _diff,
        "matrix": _matrix,
        "schema": _schema,
        "studio": run_studio,
    }
    try:
        return handlers[args.policy_command](args)
    except LoadError as exc:
        from gateway.policytools import tools

        for error in exc.errors:
            print(tools.Diagnostic.from_error(error).render(), file=sys.stderr)
        _suggest_no_secrets(error.reason for error in exc.errors)
        return USAGE_ERROR
    except _UsageError as exc:
        print(f"gateway policy {args.policy_command}: {exc}", file=sys.stderr)
        return USAGE_ERROR


def _validate(args: argparse.Namespace) -> int:
    from gateway.policytools import tools

    files, config = _sources(args)
    report = tools.validate(files, config=config, placeholders=args.no_secrets)
    sys.stdout.write(tools.render_validation(report, args.strict))
    _suggest_no_secrets(diagnostic.message for diagnostic in report.diagnostics)
    return report.exit_code(args.strict)


def _suggest_no_secrets(messages: Iterable[str]) -> None:
    """One hint after an unset ${VAR}: policy authors seldom hold the deployment's secrets."""
    if any(message.startswith("environment variable ") for message in messages):
        print("(without the secrets at hand, --no-secrets reads the config with stand-ins)", file=sys.stderr)


def _sources(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """The policy files named, and the config to read (None: none), by the convention of the module docstring."""
    files = [*getattr(args, "files", ()), *(args.policy or ())]
    if args.config is not None:
        return files, args.config
    if files:
        return files, None
    if not Path(DEFAULT_CONFIG).is_file():
        raise _UsageError(f"no policy: name policy files (--policy FILE), or --config C ({DEFAULT_CONFIG} is not here)")
    return files, DEFAULT_CONFIG


def _loaded(args: argparse.Namespace) -> tuple[tuple[Policy, ...], Matcher, Settings | None]:
    from gateway.config.settings import load_settings
    from gateway.policytools import tools

    files, config = _sources(args)
    settings = None if config is None else load_settings(config, placeholders=args.no_secrets)
    chosen = files or list(settings.policies if settings is not None else ())
    if not chosen:
        raise _UsageError(f"no policy: {config} has no policies:, and no policy file is named (--policy FILE)")
    policies, matcher = tools.load_matcher(chosen)
    return policies, matcher, settings


def _explain(args: argparse.Namespace) -> int:
    from gateway.policytools import tools

    _, matcher, settings = _loaded(args)
    explanation = tools.explain(args.method, args.path, matcher, settings)
    sys.stdout.write(tools.render_explanation(explanation))
    return 0 if explanation.answered else 1


def _check(args: argparse.Namespace) -> int:
    from gateway.policytools import tools

    policies, matcher, settings = _loaded(args)
    if args.token is not None and settings is None:
        raise _UsageError("--token needs --config C: tokens are verified with the config's issuers")
    result = asyncio.run(_decide(args, policies, matcher, settings))
    sys.stdout.write(tools.render_check(result))
    return 0 if result.allowed else 1


async def _decide(
    args: argparse.Namespace, policies: Sequence[Policy], matcher: Matcher, settings: Settings | None
) -> tools.CheckResult:
    from gateway.guard.authorize import Authorizer
    from gateway.policytools import tools

    if settings is None:
        authorizer = tools.offline_authorizer(matcher)
    else:
        authorizer = Authorizer.from_settings(settings, policies=policies)
    principal = None if args.scope is None else tools.cli_principal(args.scope)
    try:
        return await tools.check(
            authorizer, args.method, args.path, principal=principal, token=args.token, settings=settings
        )
    finally:
        await authorizer.aclose()


def _test(args: argparse.Namespace) -> int:
    from gateway.policytools import tools

    found = tools.find_test_files(args.paths)
    if not found:
        raise _UsageError(f"no test files (*.yaml, *.yml) in {', '.join(args.paths)}")

    async def run_all() -> list[tools.SuiteResult]:
        return [await tools.run_suite(path) for path in found]

    suites = asyncio.run(run_all())
    sys.stdout.write(tools.render_suites(suites))
    return 1 if any(suite.failed for suite in suites) else 0


def _diff(args: argparse.Namespace) -> int:
    from gateway.policytools import tools

    # Both versions must load and compile (no duplicate or ambiguous rules) to be worth comparing.
    old, _ = tools.load_matcher([args.old])
    new, _ = tools.load_matcher([args.new])
    changes = tools.diff_policies(old, new)
    sys.stdout.write(tools.diff_json(changes) if args.json else tools.render_diff(changes))
    return 1 if args.exit_code and changes else 0


def _matrix(args: argparse.Namespace) -> int:
    from gateway.policytools import tools

    policies, _, _ = _loaded(args)
    matrix = tools.build_matrix(policies)
    renderers = {
        "text": tools.render_matrix_text,
        "markdown": tools.render_matrix_markdown,
        "json": tools.matrix_json,
    }
    sys.stdout.write(renderers[args.format](matrix))
    return 0


def _schema(args: argparse.Namespace) -> int:
    if args.config:
        from gateway.config.schema import render_config_schema

        sys.stdout.write(render_config_schema())
        return 0
    sys.stdout.write(files("gateway").joinpath("policy.schema.json").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
