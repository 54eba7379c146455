"""The import graph of gateway/ points one way: a module never imports one of a higher layer, and no modules
import each other in a circle.

Every module under gateway/ is parsed (not imported) and every import counts, also one inside a function
(a lazy import is still a dependency); only imports under `if TYPE_CHECKING:` are left out of the circle
check, since they never run (they must still point down). A new subpackage or top-level module must be
given its place in LAYERS before this test passes.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "gateway"

# Lowest first. A module may import modules of its own layer or of lower ones. The groups of the first layer
# depend on nothing else of the gateway; `serving` (uvicorn options shared by `serve` and `demo`) and `demo`
# sit above `app`, since both run the app (`demo` = app + sandbox + uvicorn); `cli` is the top.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "yamlsource", "web", "sandbox"),
    ("policy",),
    ("config",),
    ("store",),
    ("auth",),
    ("observe",),
    ("guard",),
    ("tokens",),
    ("keys",),  # gateway API keys: grants in the token lineage, read by the proxy (test twins, slots)
    ("limits",),
    ("proxy",),
    # The studio is the policy tools' web front end: it imports them, and policytools.cli imports only
    # studio.cli (the `policy studio` sub-command's arguments; test_only_the_cli_reaches_the_studio).
    ("policytools", "studio"),
    ("app",),
    ("serving",),
    ("demo", "scaffold"),
    ("cli",),
    ("__init__", "__main__"),  # gateway itself: the lazy public API and `python -m gateway`
]

# Groups that must stay independent although one sits above the other: the policy tools validate, explain
# and test a policy without the data plane.
INDEPENDENT: list[tuple[str, str]] = [("policytools", "proxy")]


RANK = {group: rank for rank, groups in enumerate(LAYERS) for group in groups}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _group(module: str) -> str:
    """The layer group of a gateway module: its subpackage or top-level module ("__init__" for gateway)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, typing_only: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement with whether it sits under `if TYPE_CHECKING:` (its else branch runs)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, typing_only
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), True)
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), typing_only)
        else:
            yield from _imports(node, typing_only)


def _targets(importer: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The gateway modules one import statement loads (a `from package import submodule` names the submodule)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    for name in names:
        while name and name not in MODULES:  # `import gateway.x.y` of a name that is not a module: its package
            name = name.rpartition(".")[0]
        if name.split(".")[0] == "gateway" and name:
            yield name


def _edges() -> dict[tuple[str, str], bool]:
    """(importer, imported) -> True if the import only ever runs for type checkers."""
    edges: dict[tuple[str, str], bool] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, typing_only in _imports(tree):
            for target in _targets(module, node):
                if target != module:
                    edges[module, target] = edges.get((module, target), True) and typing_only
    return edges


EDGES = _edges()


def test_every_module_has_a_layer() -> None:
    """Each subpackage and top-level module of gateway/ is placed in LAYERS (a new one must be placed)."""
    unplaced = sorted({_group(module) for module in MODULES} - RANK.keys())
    assert not unplaced, f"give these a place in LAYERS (tests/test_layers.py): {unplaced}"


def test_imports_point_down() -> None:
    """No module imports a module of a higher layer (lazy imports inside functions included)."""
    upward = sorted(
        f"{importer} imports {imported} ({_group(importer)} is below {_group(imported)})"
        for importer, imported in EDGES
        if RANK.get(_group(importer), -1) < RANK.get(_group(imported), -1)
    )
    assert not upward, "imports pointing up:\n  " + "\n  ".join(upward)


def test_independent_groups_do_not_import_each_other() -> None:
    """Groups declared independent (INDEPENDENT) never import one another."""
    crossing = sorted(
        f"{importer} imports {imported}"
        for importer, imported in EDGES
        for pair in INDEPENDENT
        if {_group(importer), _group(imported)} == set(pair)
    )
    assert not crossing, "imports between independent groups:\n  " + "\n  ".join(crossing)


def test_only_the_cli_reaches_the_studio() -> None:
    """The policy tools do not depend on the studio: only policytools.cli imports it, and only studio.cli."""
    reaching = sorted(
        f"{importer} imports {imported}"
        for importer, imported in EDGES
        if _group(importer) == "policytools"
        and _group(imported) == "studio"
        and (importer, imported) != ("gateway.policytools.cli", "gateway.studio.cli")
    )
    assert not reaching, "policytools importing the studio:\n  " + "\n  ".join(reaching)


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    """No modules import each other in a circle, also within one subpackage (TYPE_CHECKING imports aside)."""
    graph: dict[str, set[str]] = {}
    for (importer, imported), typing_only in EDGES.items():
        if not typing_only:
            graph.setdefault(importer, set()).add(imported)
    cycles = [sorted(cycle) for cycle in _cycles(graph)]
    assert not cycles, "modules importing each other in a circle:\n  " + "\n  ".join(map(str, sorted(cycles)))


def test_the_checker_sees_lazy_and_typing_imports() -> None:
    """Self-check on known facts: cli imports demo lazily; the store's url module imports redis only lazily."""
    assert ("gateway.cli", "gateway.demo") in EDGES
    assert EDGES["gateway.demo", "gateway.app"] is False  # inside a function, still a dependency
    assert EDGES["gateway.store.url", "gateway.store.redis"] is False  # lazy import counts, TYPE_CHECKING too
    assert EDGES["gateway.cli", "gateway.policytools.cli"] is False
    assert ("gateway.guard.middleware", "gateway.proxy.forward") not in EDGES
