"""The policy tools behind `gateway policy ...`, in one namespace: validate, explain, check, test, diff, matrix.

Each tool is a function returning plain data, plus a renderer that turns it into the text a person reads
(`gateway.policytools.cli` wires them to the command line). Requests are decided by `Authorizer.route`
and `Authorizer.decide` (or `Authorizer.authorize` for a real token), the very functions the running
gateway calls, so a check or a policy test cannot disagree with the gateway.

Each tool has its module: `validate`, `explain`, `check`, `testing` (policy tests; the test-file format
is in its docstring), `diff` and `matrix`, over what they share (`common`, `requirement`, `routes`).

Messages name their place as `file:line:column: error|warning: key: message (hint: ...)`.
"""

from __future__ import annotations

from gateway.policy.model import display_path
from gateway.policytools.check import CheckResult, check, render_check
from gateway.policytools.common import Diagnostic, cli_principal, load_matcher, offline_authorizer
from gateway.policytools.diff import AccessChange, access_map, diff_json, diff_policies, render_diff
from gateway.policytools.explain import Explanation, explain, render_explanation
from gateway.policytools.matrix import Matrix, build_matrix, matrix_json, render_matrix_markdown, render_matrix_text
from gateway.policytools.requirement import Requirement
from gateway.policytools.routes import GatewayRoute, gateway_routes
from gateway.policytools.testing import (
    CaseResult,
    PolicyCase,
    SuiteResult,
    find_test_files,
    load_suite,
    render_suites,
    run_suite,
)
from gateway.policytools.validate import ValidationReport, render_validation, validate

__all__ = [
    "AccessChange",
    "CaseResult",
    "CheckResult",
    "Diagnostic",
    "Explanation",
    "GatewayRoute",
    "Matrix",
    "PolicyCase",
    "Requirement",
    "SuiteResult",
    "ValidationReport",
    "access_map",
    "build_matrix",
    "check",
    "cli_principal",
    "diff_json",
    "diff_policies",
    "display_path",
    "explain",
    "find_test_files",
    "gateway_routes",
    "load_matcher",
    "load_suite",
    "matrix_json",
    "offline_authorizer",
    "render_check",
    "render_diff",
    "render_explanation",
    "render_matrix_markdown",
    "render_matrix_text",
    "render_suites",
    "render_validation",
    "run_suite",
    "validate",
]
