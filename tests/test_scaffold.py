"""scaffold.py: the demo config and the policies ship inside the package, equal to the checkout's copies."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.scaffold import DATA, demo_config, packaged_policies

ROOT = Path(__file__).resolve().parent.parent


def _body(path: Path) -> list[str]:
    """A file without its first line (the `$schema` line, relative to where the file lives)."""
    return path.read_text(encoding="utf-8").splitlines()[1:]


@pytest.mark.parametrize("name", ["config.yaml", *(p.name for p in sorted((ROOT / "policies").glob("*.yaml")))])
def test_packaged_copies_equal_the_checkout(name: str) -> None:
    """gateway/data/ holds config.yaml and policies/*.yaml as in the checkout, but for the $schema line
    (after editing the checkout's copies, `make data` copies them over)."""
    checkout = ROOT / name if name == "config.yaml" else ROOT / "policies" / name
    packaged = demo_config() if name == "config.yaml" else DATA / "policies" / name
    assert _body(packaged) == _body(checkout)


def test_packaged_schema_lines_resolve() -> None:
    """Each packaged file's `$schema` path names a schema that exists inside the package."""
    for path in [demo_config(), *packaged_policies()]:
        first = path.read_text(encoding="utf-8").splitlines()[0]
        relative = first.removeprefix("# yaml-language-server: $schema=")
        assert relative != first
        assert (path.parent / relative).resolve().is_file(), path
    assert len(packaged_policies()) == len(list((ROOT / "policies").glob("*.yaml")))
