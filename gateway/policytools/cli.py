"""`gateway policy ...`: the command line of the policy tools (the logic is in `policytools`).

    gateway policy validate [FILE...] [--config C] [--strict]
    gateway policy explain METHOD PATH [--config C] [--policy FILE]...
    gateway policy check METHOD PATH [--config C] [--policy FILE]... [--scope S... | --token JWT]
    gateway policy test FILE|DIR...
    gateway policy diff OLD NEW [--json] [--exit-code]
    gateway policy matrix [FILE...] [--config C] [--format text|markdown|json]
    gateway policy schema [--config]
    gateway policy studio [POLICY...] [--config C] [--tests DIR]... [--host H] [--port P]

Policies come from the FILEs / `--policy` given, else from the `policies:` of `--config` (which also
supplies upstream URLs, token issuers and the token endpoints' mount). PATH may carry a `?query`.

Exit codes: 0 success; 1 the answer is "no" (validate: an error, or a warning with --strict; explain:
no rule matches or the path is refused; check: deny; test: a failed case; diff --exit-code: access
changed); 2 usage errors and inputs that cannot be loaded (explain, check, diff, matrix).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from importlib.resources import files

from gateway.config.settings import Settings, load_settings
from gateway.errors import LoadError
from gateway.guard.authorize import Authorizer
from gateway.policy.matcher import Matcher
from gateway.policy.model import Policy
from gateway.policytools import tools
from gateway.studio.cli import add_studio_command, run_studio

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
    validate.add_argument("files", nargs="*", metavar="FILE", help="policy files (default: the config's policies)")
    validate.add_argument("--config", help="also validate this config.yaml and check the policies against it")
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
    matrix.add_argument("files", nargs="*", metavar="FILE", help="policy files (default: the config's policies)")
    matrix.add_argument("--config", help="take the policies from this config.yaml")
    matrix.add_argument("--format", choices=("text", "markdown", "json"), default="text")

    schema = commands.add_parser("schema", help="print the JSON Schema of policy files (or of config.yaml)")
    schema.add_argument("--config", action="store_true", help="print the schema of config.yaml instead")

    add_studio_command(commands)


def _request_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("method", metavar="METHOD", help="HTTP method, case-sensitive (GET, POST, ...)")
    parser.add_argument("path", metavar="PATH", help="request path as sent, optionally with ?query")
    parser.add_argument("--config", help="config.yaml: its policies, upstream URLs and token issuers")
    parser.add_argument("--policy", action="append", metavar="FILE", help="a policy file to use (repeatable)")


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
        for error in exc.errors:
            print(tools.Diagnostic.from_error(error).render(), file=sys.stderr)
        return USAGE_ERROR
    except _UsageError as exc:
        print(f"gateway policy {args.policy_command}: {exc}", file=sys.stderr)
        return USAGE_ERROR


def _validate(args: argparse.Namespace) -> int:
    if not args.files and args.config is None:
        raise _UsageError("name the policy files to validate, or --config C")
    report = tools.validate(args.files, config=args.config)
    sys.stdout.write(tools.render_validation(report, args.strict))
    return report.exit_code(args.strict)


def _settings(args: argparse.Namespace) -> Settings | None:
    return None if args.config is None else load_settings(args.config)


def _policies(files: Sequence[str] | None, settings: Settings | None) -> tuple[tuple[Policy, ...], Matcher]:
    chosen = list(files or (settings.policies if settings is not None else ()))
    if not chosen:
        raise _UsageError("no policy: give --config C (with policies:) or the policy files")
    return tools.load_matcher(chosen)


def _explain(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _, matcher = _policies(args.policy, settings)
    explanation = tools.explain(args.method, args.path, matcher, settings)
    sys.stdout.write(tools.render_explanation(explanation))
    return 0 if explanation.answered else 1


def _check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    policies, matcher = _policies(args.policy, settings)
    if args.token is not None and settings is None:
        raise _UsageError("--token needs --config C: tokens are verified with the config's issuers")
    result = asyncio.run(_decide(args, policies, matcher, settings))
    sys.stdout.write(tools.render_check(result))
    return 0 if result.allowed else 1


async def _decide(
    args: argparse.Namespace, policies: Sequence[Policy], matcher: Matcher, settings: Settings | None
) -> tools.CheckResult:
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
    found = tools.find_test_files(args.paths)
    if not found:
        raise _UsageError(f"no test files (*.yaml, *.yml) in {', '.join(args.paths)}")

    async def run_all() -> list[tools.SuiteResult]:
        return [await tools.run_suite(path) for path in found]

    suites = asyncio.run(run_all())
    sys.stdout.write(tools.render_suites(suites))
    return 1 if any(suite.failed for suite in suites) else 0


def _diff(args: argparse.Namespace) -> int:
    # Both versions must load and compile (no duplicate or ambiguous rules) to be worth comparing.
    old, _ = tools.load_matcher([args.old])
    new, _ = tools.load_matcher([args.new])
    changes = tools.diff_policies(old, new)
    sys.stdout.write(tools.diff_json(changes) if args.json else tools.render_diff(changes))
    return 1 if args.exit_code and changes else 0


def _matrix(args: argparse.Namespace) -> int:
    policies, _ = _policies(args.files, _settings(args))
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
