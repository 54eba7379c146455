"""Imports point one way: the policy and its tools sit below the proxy, the app and the CLI.

A static check (the modules' `import` statements), so it holds whatever `gateway/__init__` loads.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"

# package → the gateway modules it must not import (a prefix covers its submodules)
FORBIDDEN = {
    "policy": ("gateway.policytools", "gateway.proxy", "gateway.app", "gateway.cli", "gateway.guard", "gateway.auth"),
    "policytools": ("gateway.proxy", "gateway.app", "gateway.cli"),
}


def imported(file: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package: str) -> None:
    wrong = {
        f"{file.name}: {name}"
        for file in sorted((GATEWAY / package).glob("*.py"))
        for name in imported(file)
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[package])
    }
    assert not wrong
