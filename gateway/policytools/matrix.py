"""`gateway policy matrix`: who can do what, one row per (method, route) and one column per scope."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.policy.model import Policy, Rule
from gateway.policy.scopes import SUPERUSER
from gateway.policytools.common import rule_where
from gateway.policytools.requirement import Requirement

__all__ = ["Cell", "Matrix", "MatrixRow", "build_matrix", "matrix_json", "render_matrix_markdown", "render_matrix_text"]


Cell = bool | Literal["public"]


@dataclass(frozen=True, slots=True)
class MatrixRow:
    method: str
    rule: Rule
    cells: tuple[Cell, ...]


@dataclass(frozen=True, slots=True)
class Matrix:
    """Who can do what: one row per (method, route), one column per scope (+ all:any)."""

    scopes: tuple[str, ...]
    rows: tuple[MatrixRow, ...]


def build_matrix(policies: Sequence[Policy]) -> Matrix:
    """A cell is true when that one scope alone satisfies the rule; public rules are `public` everywhere."""
    vocabulary = [scope for policy in policies for scope in policy.scopes]
    scopes = (*dict.fromkeys(vocabulary), SUPERUSER)
    rows = []
    for policy in policies:
        for rule in policy.rules:
            cells: tuple[Cell, ...] = tuple(
                "public" if rule.public else rule.allows(frozenset({scope})) for scope in scopes
            )
            rows += [MatrixRow(method, rule, cells) for method in sorted(rule.methods)]
    return Matrix(scopes, tuple(rows))


def _table(matrix: Matrix, blank: str) -> tuple[list[str], list[list[str]]]:
    header = ["METHOD", "PATH", *matrix.scopes, "REQUIRES"]
    body = [
        [
            row.method,
            row.rule.full_path,
            *("public" if cell == "public" else "✓" if cell else blank for cell in row.cells),
            Requirement.of(row.rule).text(),
        ]
        for row in matrix.rows
    ]
    return header, body


def render_matrix_text(matrix: Matrix) -> str:
    header, body = _table(matrix, "·")
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *body]
    ]
    return "\n".join(lines) + "\n"


def render_matrix_markdown(matrix: Matrix) -> str:
    header, body = _table(matrix, "")
    lines = ["| " + " | ".join(f"`{c}`" if i > 1 and i < len(header) - 1 else c for i, c in enumerate(header)) + " |"]
    lines.append("|" + "|".join([" --- ", " --- "] + [" :-: "] * len(matrix.scopes) + [" --- "]) + "|")
    for row in body:
        cells = [row[0], f"`{row[1]}`", *row[2:-1], f"`{row[-1]}`"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def matrix_json(matrix: Matrix) -> str:
    routes = [
        {
            "method": row.method,
            "path": row.rule.full_path,
            "rule": rule_where(row.rule),
            "requires": Requirement.of(row.rule).as_json(),
            "cells": dict(zip(matrix.scopes, row.cells, strict=True)),
        }
        for row in matrix.rows
    ]
    return json.dumps({"scopes": list(matrix.scopes), "routes": routes}, indent=2, ensure_ascii=False) + "\n"
