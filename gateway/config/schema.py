"""The JSON Schema of `config.yaml`, generated from the settings classes (`gateway policy schema --config`).

The shipped `gateway/config.schema.json` is this output (a test keeps them equal; regenerate it with
`make schema`). The loader walks the same schema to
name unknown keys, so the keys an editor completes are exactly the keys the gateway reads.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from pydantic import TypeAdapter

from gateway.config.sections import Settings

__all__ = ["config_schema", "render_config_schema"]

_DESCRIPTION = (
    "The gateway's configuration. Secrets come from the environment as ${VAR}. The loader "
    "(gateway policy validate --config) is the authority; this schema lets editors complete keys and flag "
    "mistakes while typing."
)


@cache
def settings_adapter() -> TypeAdapter[Settings]:
    return TypeAdapter(Settings)


@cache
def _generated() -> str:
    schema = settings_adapter().json_schema(mode="validation")
    properties = {"$schema": {"type": "string", "description": "Ignored by the gateway; for editors."}}
    properties.update(schema.pop("properties"))
    root: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "smsguard config.yaml",
        "description": _DESCRIPTION,
        **{key: value for key, value in schema.items() if key not in ("title", "description")},
        "properties": properties,
    }
    return json.dumps(root, indent=2, ensure_ascii=False) + "\n"


def render_config_schema() -> str:
    """The schema as the shipped file holds it (indented JSON, one trailing newline)."""
    return _generated()


def config_schema() -> dict[str, Any]:
    """The schema as a fresh dict (callers may change it)."""
    loaded: dict[str, Any] = json.loads(_generated())
    return loaded
