"""Load `config.yaml` into `Settings`, reporting every mistake of the file at once.

    YAML text ──compose──► nodes ──plain()──► Python data + the position of every key and value
              ──schema walk──► unknown keys (with "did you mean"), null values dropped (null = absent)
              ──pydantic──► Settings, or its errors mapped back to file:line:column and the dotted key

Fail closed everywhere: an unknown key, a wrong type, a missing required key or an unset `${VAR}` is
an error naming file:line:column and the key; all of them are raised together as one `LoadError`
(`errors` lists them, `str()` has one line each). Messages never show a secret.
"""

from __future__ import annotations

import difflib
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from gateway.config.credentials import CREDENTIAL_KINDS, CredentialSettings
from gateway.config.fields import MAX_INTEGER
from gateway.config.presets import PRESETS
from gateway.config.schema import config_schema, settings_adapter
from gateway.config.sections import Settings, UpstreamSettings
from gateway.errors import LoadError
from gateway.yamlsource import Node, load_file, load_text

__all__ = ["load_settings", "parse_settings", "placeholder_environment", "read_credentials"]

Path_ = tuple[str | int, ...]
MAX_DEPTH = 32  # no setting nests deeper than 8; a config is small
MAX_VALUES = 100_000  # aliases can make a small file expand without bound ("billion laughs")


def load_settings(path: str | Path, env: Mapping[str, str] | None = None, *, placeholders: bool = False) -> Settings:
    """Load `config.yaml`; `env` defaults to the process environment.

    With `placeholders` (the policy tools' `--no-secrets`), a `${VAR}` that is unset stands in for its value
    instead of failing: see `placeholder_environment`. Never for serving: nothing real can be reached with them.
    """
    path = Path(path)
    return _parse(load_file(path), env if env is not None else os.environ, path.resolve().parent, placeholders)


def parse_settings(
    text: str, file: str = "config.yaml", env: Mapping[str, str] | None = None, base: Path | None = None
) -> Settings:
    """Parse config text (tests, `policy validate --config`)."""
    return _parse(load_text(text, file), env if env is not None else os.environ, base or Path.cwd())


def read_credentials(options: Mapping[str, object], url: str = "https://upstream.invalid") -> CredentialSettings:
    """An upstream's `credentials:` block given as data (values may already be `Secret`), checked like the
    file's; a preset expands against `url`. Errors are LoadErrors keyed `credentials.*`."""
    reading = _Reading("")
    data: dict[str, Any] = {"url": url, "credentials": dict(options)}
    schema = config_schema()
    upstream = schema["$defs"]["UpstreamSettings"]
    reading.walk(schema, upstream, data, ())
    data["name"] = "upstream"
    try:
        settings = UpstreamSettings(**data)
    except ValidationError as exc:
        reading.add_validation(exc, data)
    reading.raise_errors()
    return settings.credentials


def _parse(root: Node, env: Mapping[str, str], base: Path, placeholders: bool = False) -> Settings:
    reading = _Reading(root.file)
    data = reading.plain(root.raw, ())
    schema = config_schema()
    reading.walk(schema, schema, data, ())
    if placeholders:
        env = placeholder_environment(data, env)
    if isinstance(data, dict):
        data.pop("$schema", None)
        upstreams = data.get("upstreams")
        for name, upstream in upstreams.items() if isinstance(upstreams, dict) else ():
            if isinstance(upstream, dict):
                upstream["name"] = name
        data["file"] = root.file
    try:
        settings = settings_adapter().validate_python(data, context={"env": env, "base": base})
    except ValidationError as exc:
        reading.add_validation(exc, data)
    reading.raise_errors()
    return settings


# ---------------------------------------------------------------------------------- --no-secrets

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# an argon2id hash of a random password nobody kept: no Basic login can succeed against it
_NO_PASSWORD_HASH = "$argon2id$v=19$m=65536,t=3,p=4$ZzZBVt64A7ui5DTarNFd3g$52MM9ilMFGx1CRw0wr4JdXv9EH6tIoBd3Wlkr5eY/q8"


def placeholder_environment(data: Any, env: Mapping[str, str]) -> dict[str, str]:
    """`env` plus a stand-in for every `${VAR}` the config uses but the environment does not set.

    The stand-in fits the key the variable is written under, so the config still loads: a `url` becomes
    `https://var-name.invalid` (a reserved name that never resolves), a `password_hash` the hash of a
    password nobody knows, a `secret` a random 48-character string (tokens signed with it are accepted by
    nothing else), anything else the text `${VAR}` itself. Key files and PEM keys are not stood in for.
    """
    filled = dict(env)
    for key, text in _strings(data, ""):
        for name in _REFERENCE.findall(text.replace("$$", "")):
            if not filled.get(name):
                filled[name] = _stand_in(key, name, whole=text == f"${{{name}}}")
    return filled


def _strings(data: Any, key: str) -> list[tuple[str, str]]:
    if isinstance(data, str):
        return [(key, data)]
    if isinstance(data, dict):
        return [found for name, value in data.items() for found in _strings(value, str(name))]
    if isinstance(data, list):
        return [found for value in data for found in _strings(value, key)]
    return []


def _stand_in(key: str, name: str, *, whole: bool) -> str:
    if key == "url" or key.endswith("_url"):
        host = f"{name.lower().replace('_', '-')}.invalid"
        return f"https://{host}" if whole else host
    if key == "password_hash":
        return _NO_PASSWORD_HASH
    if key == "secret":
        return secrets.token_urlsafe(36)
    return f"${{{name}}}"


# --------------------------------------------------------------------------------------- the reading


@dataclass
class _Reading:
    """One file being read: where each value and key sits, and the errors found so far."""

    file: str
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    errors: list[tuple[Path_, LoadError]] = field(default_factory=list)
    open: set[yaml.Node] = field(default_factory=set)  # the collections being read (an alias to one recurses)
    budget: int = MAX_VALUES

    def error(self, path: Path_, message: str, hint: str = "", *, at_key: bool = False) -> None:
        line, column = self.position(path, at_key=at_key)
        found = LoadError(message, file=self.file, line=line, column=column, key=_dotted(path), hint=hint)
        self.errors.append((path, found))

    def position(self, path: Path_, *, at_key: bool = False) -> tuple[int, int]:
        if at_key and path in self.keys:
            return self.keys[path]
        while path not in self.values and path:
            path = path[:-1]
        return self.values.get(path, (0, 0))

    def raise_errors(self) -> None:
        if self.errors:
            ordered = sorted((error for _, error in self.errors), key=lambda e: (e.line, e.column))
            raise LoadError.of(ordered)

    # ------------------------------------------------------------------------------ YAML to data

    def plain(self, raw: yaml.Node, path: Path_) -> Any:
        """The Python value of a node, recording positions; YAML-level mistakes become errors."""
        self.values[path] = (raw.start_mark.line + 1, raw.start_mark.column + 1)
        self.budget -= 1
        if len(path) > MAX_DEPTH or self.budget < 0 or raw in self.open:
            if self.budget >= -1:  # report a runaway once, not once per value
                self.error(path, "nested too deeply, recursive, or too large (aliases expand too far)")
            return None
        if isinstance(raw, yaml.MappingNode | yaml.SequenceNode):
            self.open.add(raw)
            try:
                if isinstance(raw, yaml.MappingNode):
                    return self._mapping(raw, path)
                return [self.plain(item, (*path, index)) for index, item in enumerate(raw.value)]
            finally:
                self.open.discard(raw)
        try:
            return Node(raw, self.file, _dotted(path)).value()
        except LoadError as exc:
            self.errors.append((path, exc))
            return None

    def _mapping(self, raw: yaml.MappingNode, path: Path_) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_raw, value_raw in raw.value:
            try:
                key = Node(key_raw, self.file, _dotted(path)).value()
            except LoadError as exc:
                self.errors.append((path, exc))
                continue
            if not isinstance(key, str):
                self.error(path, f"keys must be strings, got {_describe(key)}")
                continue
            self.keys.setdefault((*path, key), (key_raw.start_mark.line + 1, key_raw.start_mark.column + 1))
            if key in result:
                line, column = key_raw.start_mark.line + 1, key_raw.start_mark.column + 1
                duplicate = LoadError(
                    "duplicate key", file=self.file, line=line, column=column, key=_dotted((*path, key)),
                    hint="each key may appear once",
                )  # fmt: skip
                self.errors.append(((*path, key), duplicate))
                continue
            result[key] = self.plain(value_raw, (*path, key))
        return result

    # ----------------------------------------------------------------------------- the schema walk

    def walk(self, root: dict[str, Any], schema: dict[str, Any], data: Any, path: Path_) -> None:
        """Refuse keys the schema does not know (and drop them), drop null values, descend."""
        schema = _resolve(root, schema, data)
        if isinstance(data, list) and "items" in schema:
            for index, item in enumerate(data):
                self.walk(root, schema["items"], item, (*path, index))
        if not isinstance(data, dict):
            return
        properties: dict[str, Any] | None = schema.get("properties")
        if properties is None:
            extra = schema.get("additionalProperties")
            for key, value in data.items():
                if isinstance(extra, dict):
                    self.walk(root, extra, value, (*path, key))
            return
        for key in list(data):
            if key not in properties:
                self._unknown(path, key, properties)
                del data[key]
            elif data[key] is None:
                del data[key]
            else:
                self.walk(root, properties[key], data[key], (*path, key))

    def _unknown(self, path: Path_, key: str, properties: Mapping[str, Any]) -> None:
        known = sorted(properties)
        close = difflib.get_close_matches(key, known, n=1)
        message = f"unknown key, did you mean {close[0]}?" if close else "unknown key"
        self.error((*path, key), message, f"known keys here: {', '.join(known)}" if known else "", at_key=True)

    # ------------------------------------------------------------------------ pydantic's errors

    def add_validation(self, exc: ValidationError, data: Any) -> None:
        for details in exc.errors(include_url=False):
            path, value = _locate(details["loc"], data, missing=details["type"] in _MISSING)
            message, hint, below = _message(details, value)
            path = (*path, *below)
            if any(path[: len(seen)] == seen for seen, _ in self.errors):
                continue  # already reported there (a YAML-level mistake)
            at_key = details["type"] in _UNKNOWN
            self.error(path, message, hint, at_key=at_key)


def _resolve(root: dict[str, Any], schema: dict[str, Any], data: Any) -> dict[str, Any]:
    """The schema that applies to `data`: references followed, a union narrowed to the branch it takes."""
    while True:
        if "$ref" in schema:
            schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
        elif "discriminator" in schema:
            tag = data.get("type") if isinstance(data, dict) else None
            target = schema["discriminator"]["mapping"].get(tag) if isinstance(tag, str) else None
            if target is None:
                return {}
            schema = {"$ref": target}
        elif "anyOf" in schema or "oneOf" in schema:
            branches = [b for b in schema.get("anyOf", schema.get("oneOf", ())) if b.get("type") != "null"]
            schema = branches[0] if len(branches) == 1 else {}
        else:
            return schema


def _locate(loc: tuple[str | int, ...], data: Any, *, missing: bool) -> tuple[Path_, Any]:
    """pydantic's location as a path in the data (union tags and validator names skipped), and its value;
    with `missing`, the last element is a key absent from the data."""
    path: list[str | int] = []
    value = data
    for part in loc[:-1] if missing else loc:
        step = _step(value, part)
        if step is not _SKIP:
            value = step
            path.append(part)
    if missing and loc:
        path.append(loc[-1])
        value = None
    return tuple(path), value


_SKIP = object()


def _step(value: Any, part: str | int) -> Any:
    if isinstance(value, dict):
        return value.get(part, _SKIP)
    if isinstance(value, list) and isinstance(part, int):
        return value[part] if 0 <= part < len(value) else _SKIP
    return _SKIP


def _dotted(path: Path_) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "null" if value is None else f"{type(value).__name__} {value!r}"


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a finite number",
    "float_parsing": "a finite number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "tuple_type": "a list",
    "list_type": "a list",
    "frozen_set_type": "a list",
    "set_type": "a list",
    "dict_type": "a mapping",
    "dataclass_type": "a mapping",
    "dataclass_args_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "is_instance_of": "a mapping",
}
_MISSING = frozenset({"missing", "missing_argument", "missing_keyword_only_argument"})
_UNKNOWN = frozenset({"extra_forbidden", "unexpected_keyword_argument"})
_KINDS = (*CREDENTIAL_KINDS, *PRESETS)


def _message(details: ErrorDetails, value: object) -> tuple[str, str, Path_]:
    """(message, hint, path below the located value) for one pydantic error."""
    kind, ctx = details["type"], details.get("ctx") or {}
    if kind == "smsguard":
        return details["msg"], str(ctx.get("hint", "")), tuple(ctx.get("at", ()))
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_describe(value)}", "", ()
    if kind in _MISSING:
        return "required key is missing", "", ()
    if kind in _UNKNOWN:
        return "unknown key", "", ()
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}, got {value}", "", ()
    if kind == "less_than_equal":
        if isinstance(value, float):
            return f"expected a finite number, got {_describe(value)}", "", ()
        return f"must be at most {MAX_INTEGER} in size", "", ()
    if kind == "union_tag_not_found":
        return "required key is missing", "", ("type",)
    if kind == "union_tag_invalid":
        return _unknown_kind(str(ctx.get("tag", "")))
    return details["msg"], "", ()


def _unknown_kind(tag: str) -> tuple[str, str, Path_]:
    close = difflib.get_close_matches(tag, _KINDS, n=1)
    suggestion = f", did you mean {close[0]}?" if close else ""
    return f"unknown credentials type {tag!r}{suggestion}", "one of: " + ", ".join(_KINDS), ("type",)
