"""What ships inside the package (`gateway/data/`): the demo's config and the provider policies.

`gateway demo` runs `gateway/data/config.yaml` (so it works from an installed wheel, anywhere), and
`gateway init DIR` copies that config and the policies into DIR as a starting point, their
`# yaml-language-server: $schema=...` lines pointing at the installed schemas (file:// URLs), so editors
complete and check keys wherever DIR is. The checkout's `config.yaml` and `policies/` are the same files with
`$schema` paths relative to the checkout (`tests/test_scaffold.py` keeps the copies equal).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["DATA", "demo_config", "init_project", "packaged_policies"]

DATA = Path(str(files("gateway"))) / "data"
_SCHEMA_LINE = "# yaml-language-server: $schema="


def demo_config() -> Path:
    """The config `gateway demo` runs unless given `--config`."""
    return DATA / "config.yaml"


def packaged_policies() -> list[Path]:
    """The shipped provider policies (`policies/*.yaml` of the checkout)."""
    return sorted((DATA / "policies").glob("*.yaml"))


def init_project(directory: Path) -> list[Path]:
    """Write DIR/config.yaml and DIR/policies/*.yaml; returns the files written.

    Refuses (FileExistsError naming the file) before writing anything if one of them exists already.
    """
    package = DATA.parent
    plan = [(directory / "config.yaml", demo_config(), package / "config.schema.json")]
    plan += [(directory / "policies" / p.name, p, package / "policy.schema.json") for p in packaged_policies()]
    for target, _, _ in plan:
        if target.exists():
            raise FileExistsError(f"{target} exists already: gateway init writes only new files")
    for target, source, schema in plan:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_with_schema(source.read_text(encoding="utf-8"), schema), encoding="utf-8")
    return [target for target, _, _ in plan]


def _with_schema(text: str, schema: Path) -> str:
    """The file with its `$schema` line pointing at `schema` (absolute, as a file:// URL)."""
    first, newline, rest = text.partition("\n")
    if first.startswith(_SCHEMA_LINE):
        return f"{_SCHEMA_LINE}{schema.resolve().as_uri()}{newline}{rest}"
    return text
