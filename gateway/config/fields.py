"""The building blocks of the settings models: `Secret`, the field types, `${VAR}` interpolation, errors.

Every settings class is a frozen pydantic dataclass built with `CONFIG`: unknown keys are refused, input
values are never echoed in pydantic's own errors, and scalars are strict (YAML's `"8080"` is not a port,
`yes` is not a boolean). Field types say what a value is read as:

    Str          a plain string (names, algorithms, kids)
    Text         a string with `${VAR}` interpolated from the environment (URLs, issuers, audiences)
    SecretText   a `Text` held in `Secret`, whose repr never shows the value
    Strings      one string or a list of strings, as a tuple (Texts: each interpolated)
    Annotated[int, Min(m)]       an integer >= m (and at most 2**53)
    Annotated[float, Finite(m)]  a finite number >= m

Interpolation and file paths need the loader's context (`env`, `base`); a settings object built in code
(tests, embedding apps) has none and takes its strings literally. A validator refuses a value with
`fail(message, hint=...)`: the loader maps it back to file:line:column and the dotted key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from annotated_types import Ge, GroupedMetadata, Le
from pydantic import (
    AllowInfNan,
    BeforeValidator,
    ConfigDict,
    GetCoreSchemaHandler,
    JsonValue,
    Strict,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError, core_schema

__all__ = [
    "CONFIG",
    "HEADER_NAME",
    "MAX_INTEGER",
    "ON_WHEN_PRESENT",
    "STRING_OR_LIST",
    "Bool",
    "Finite",
    "Min",
    "ReadAs",
    "Secret",
    "SecretText",
    "Str",
    "Strings",
    "Text",
    "Texts",
    "enabled_when_present",
    "fail",
    "interpolate",
    "one_or_many",
    "read_path",
    "secrets_in",
]

MAX_INTEGER = 2**53  # the largest integer a float holds exactly
HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # an RFC 9110 token: header and parameter names
CONFIG = ConfigDict(extra="forbid", hide_input_in_errors=True, arbitrary_types_allowed=True)


class Secret:
    """A secret string: `repr`/`str` are masked so it cannot leak through logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        from_text = core_schema.no_info_after_validator_function(cls, core_schema.str_schema(strict=True))
        return core_schema.json_or_python_schema(
            json_schema=from_text,
            python_schema=core_schema.union_schema(
                [core_schema.is_instance_schema(cls), from_text],
                custom_error_type="string_type",
            ),
            serialization=core_schema.plain_serializer_function_ser_schema(lambda _: "**********"),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return {"type": "string"}


def secrets_in(value: object) -> list[str]:
    """Every non-empty secret value inside `value` (settings, mappings, sequences), for redaction."""
    if isinstance(value, Secret):
        return [value.reveal()] if value.reveal() else []
    if isinstance(value, Mapping):
        return [s for item in value.values() for s in secrets_in(item)]
    if isinstance(value, list | tuple):
        return [s for item in value for s in secrets_in(item)]
    fields = getattr(value, "__dataclass_fields__", None)
    if fields is not None:
        return [s for name in fields for s in secrets_in(getattr(value, name))]
    return []


def fail(message: str, hint: str = "", at: tuple[str | int, ...] = ()) -> PydanticCustomError:
    """The error a validator raises; `at` points below the value validated (e.g. at one key of a model)."""
    return PydanticCustomError("smsguard", message, {"hint": hint, "at": at})


_VAR = re.compile(r"\$\{([^}]*)\}|\$\$")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def interpolate(value: object, info: ValidationInfo) -> object:
    """`${NAME}` from the loader's environment (unset or empty is an error), `$$` a literal dollar."""
    if not isinstance(value, str) or not isinstance(info.context, Mapping) or "env" not in info.context:
        return value
    env: Mapping[str, str] = info.context["env"]

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        if not _VAR_NAME.fullmatch(name):
            raise fail(f"invalid variable reference ${{{name}}}", hint="use ${NAME} with letters, digits, _")
        found = env.get(name)
        if not found:
            raise fail(f"environment variable {name} is not set", hint=f"export {name}=... before starting")
        return found

    return _VAR.sub(substitute, value)


def read_path(text: str, info: ValidationInfo) -> Path:
    """A path relative to the config file's directory (the loader's `base`), or as given without one."""
    path = Path(text)
    base = info.context.get("base") if isinstance(info.context, Mapping) else None
    return path if path.is_absolute() or base is None else Path(base) / path


def one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


Str = Annotated[str, Strict()]
Text = Annotated[str, Strict(), BeforeValidator(interpolate)]
SecretText = Annotated[Secret, BeforeValidator(interpolate)]
Bool = Annotated[bool, Strict()]
STRING_OR_LIST = WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})
Strings = Annotated[tuple[Str, ...], BeforeValidator(one_or_many), STRING_OR_LIST]
Texts = Annotated[tuple[Text, ...], BeforeValidator(one_or_many), STRING_OR_LIST]


@dataclass(frozen=True, slots=True)
class Min(GroupedMetadata):
    """`Annotated[int, Min(m)]`: a strict integer, at least `m`, at most 2**53 (so a float holds it)."""

    minimum: int

    def __iter__(self) -> Iterator[object]:
        yield Strict()
        yield Ge(self.minimum)
        yield Le(MAX_INTEGER)


@dataclass(frozen=True, slots=True)
class Finite(GroupedMetadata):
    """`Annotated[float, Finite(m)]`: a number (an integer is fine), finite, at least `m`."""

    minimum: float

    def __iter__(self) -> Iterator[object]:
        yield Strict()
        yield Ge(self.minimum)
        yield Le(MAX_INTEGER)
        yield AllowInfNan(False)


def enabled_when_present(data: Any) -> Any:
    """A section that is written (`tokens: {...}`, `admin: {...}`) is on unless it says `enabled: false`."""
    if isinstance(data, dict) and "enabled" not in data:
        return {**data, "enabled": True}
    return data


ON_WHEN_PRESENT: dict[str, JsonValue] = {
    "description": "On when the section is present, unless enabled: false.",
    "default": True,
}


@dataclass(frozen=True, slots=True)
class ReadAs:
    """Annotate a runtime type to read it from YAML as `entry`, then convert with `entry.settings(info)`.

    For the few settings whose file shape differs from what the code uses (an issuer's `secret` becomes
    one of its `keys`); an instance of the runtime type given in code passes through unchanged.
    """

    entry: type[Any]

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        def convert(value: object, inner: core_schema.ValidatorFunctionWrapHandler, info: ValidationInfo) -> object:
            if isinstance(value, source):
                return value
            return inner(value).settings(info)

        return core_schema.with_info_wrap_validator_function(convert, handler.generate_schema(self.entry))
