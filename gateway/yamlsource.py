"""Strict YAML reading with positions, shared by the config and policy loaders.

PyYAML's plain `safe_load` forgets where a value came from and silently keeps the last of two duplicate
keys. Here a file is composed into nodes and read through `Node` and `Fields`, so every error names
file:line:column and the dotted key (`auth.issuers[0].audience`), duplicate keys are errors, and a
mapping closed with `Fields.close()` rejects any key nobody asked for (no silent fail-open on a typo).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import yaml

from gateway.errors import LoadError

__all__ = ["MAX_INTEGER", "Fields", "Node", "load_file", "load_text"]

MAX_INTEGER = 2**53  # the largest integer a float holds exactly; NaN and infinities fail the range check too


# libyaml's loader composes the same nodes with the same marks, about 3.5x faster on large policies.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_text(text: str, file: str) -> Node:
    """Compose `text` into a root node; YAML syntax errors become LoadErrors with a position."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise LoadError(
            f"invalid YAML: {exc.problem}",
            file=file,
            line=mark.line + 1 if mark else 0,
            column=mark.column + 1 if mark else 0,
        ) from None
    except yaml.YAMLError as exc:
        raise LoadError(f"invalid YAML: {exc}", file=file) from None
    if root is None:
        raise LoadError("the file is empty", file=file, line=1, column=1)
    return Node(root, file, "")


def load_file(path: str | Path) -> Node:
    """Read and compose a YAML file; an unreadable file is a LoadError naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LoadError(
            f"cannot read file: {exc.__class__.__name__}: {getattr(exc, 'strerror', exc)}", file=str(path)
        ) from None
    return load_text(text, str(path))


_constructor = yaml.SafeLoader("")


class Node:
    """One YAML node with its file position and dotted key path."""

    __slots__ = ("column", "file", "key", "line", "raw")

    def __init__(self, raw: yaml.Node, file: str, key: str) -> None:
        self.raw = raw
        self.file = file
        self.key = key
        self.line = raw.start_mark.line + 1
        self.column = raw.start_mark.column + 1

    def fail(self, message: str, hint: str = "") -> NoReturn:
        raise LoadError(message, file=self.file, line=self.line, column=self.column, key=self.key, hint=hint)

    def _expect(self, kind: type[yaml.Node], what: str) -> None:
        if not isinstance(self.raw, kind):
            self.fail(f"expected {what}, got {self.describe()}")

    def describe(self) -> str:
        if isinstance(self.raw, yaml.MappingNode):
            return "a mapping"
        if isinstance(self.raw, yaml.SequenceNode):
            return "a list"
        value = self.value()
        return "null" if value is None else f"{type(value).__name__} {value!r}"

    def value(self) -> object:
        """The plain Python value of a scalar (str, int, float, bool or None)."""
        self._expect(yaml.ScalarNode, "a single value")
        try:
            return _constructor.construct_object(self.raw, deep=True)
        except Exception as exc:  # PyYAML's constructors on hostile scalars: `<<`, `!!bool x`, 2001-13-45, 5000 digits
            problem = getattr(exc, "problem", None) or type(exc).__name__
            self.fail(f"unreadable value ({problem})", hint="quote it to make it a string")

    def value_or_none(self) -> object:
        """The scalar value, or None for a mapping or list."""
        return self.value() if isinstance(self.raw, yaml.ScalarNode) else None

    def is_null(self) -> bool:
        return isinstance(self.raw, yaml.ScalarNode) and self.value() is None

    def fields(self) -> Fields:
        self._expect(yaml.MappingNode, "a mapping")
        return Fields(self)

    def items(self) -> Iterator[Node]:
        """The elements of a list."""
        self._expect(yaml.SequenceNode, "a list")
        assert isinstance(self.raw, yaml.SequenceNode)
        for index, child in enumerate(self.raw.value):
            yield Node(child, self.file, f"{self.key}[{index}]")

    def entries(self) -> Iterator[tuple[str, Node]]:
        """The (key, value) pairs of a mapping whose keys are data, e.g. a scope vocabulary."""
        yield from self.fields().pairs()

    def string(self) -> str:
        value = self.value()
        if not isinstance(value, str):
            self.fail(f"expected a string, got {self.describe()}")
        return value

    def integer(self, minimum: int | None = None) -> int:
        value = self.value()
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(f"expected an integer, got {self.describe()}")
        if abs(value) > MAX_INTEGER:  # no setting needs more, and a float (timeouts, lifetimes) must hold it
            self.fail(f"must be at most {MAX_INTEGER} in size")
        if minimum is not None and value < minimum:
            self.fail(f"must be at least {minimum}, got {value}")
        return value

    def number(self, minimum: float | None = None) -> float:
        value = self.value()
        if not isinstance(value, int | float) or isinstance(value, bool) or not -MAX_INTEGER <= value <= MAX_INTEGER:
            self.fail(f"expected a finite number, got {self.describe()}")
        if minimum is not None and value < minimum:
            self.fail(f"must be at least {minimum}, got {value}")
        return float(value)

    def boolean(self) -> bool:
        value = self.value()
        if not isinstance(value, bool):
            self.fail(f"expected true or false, got {self.describe()}")
        return value

    def strings(self) -> list[str]:
        """A list of strings; a single string is accepted as a one-element list."""
        if isinstance(self.raw, yaml.ScalarNode):
            return [self.string()]
        return [item.string() for item in self.items()]


class Fields:
    """A mapping being read key by key; `close()` rejects the keys nobody read."""

    __slots__ = ("_children", "_keys", "_read", "node")

    def __init__(self, node: Node) -> None:
        self.node = node
        self._children: dict[str, Node] = {}
        self._keys: dict[str, Node] = {}
        self._read: set[str] = set()
        assert isinstance(node.raw, yaml.MappingNode)
        prefix = f"{node.key}." if node.key else ""
        for key_raw, value_raw in node.raw.value:
            key_node = Node(key_raw, node.file, node.key)
            key = key_node.value()
            if not isinstance(key, str):
                key_node.fail(f"keys must be strings, got {key_node.describe()}")
            if key in self._children:
                Node(key_raw, node.file, prefix + key).fail("duplicate key", hint="each key may appear once")
            self._children[key] = Node(value_raw, node.file, prefix + key)
            self._keys[key] = Node(key_raw, node.file, prefix + key)

    def __contains__(self, key: str) -> bool:
        return key in self._children

    def pairs(self) -> Iterator[tuple[str, Node]]:
        for key, child in self._children.items():
            self._read.add(key)
            yield key, child

    def get(self, key: str) -> Node | None:
        """The value at `key`, or None when absent or null."""
        self._read.add(key)
        child = self._children.get(key)
        if child is None or child.is_null():
            return None
        return child

    def require(self, key: str) -> Node:
        child = self.get(key)
        if child is None:
            prefix = f"{self.node.key}." if self.node.key else ""
            raise LoadError(
                "required key is missing",
                file=self.node.file,
                line=self.node.line,
                column=self.node.column,
                key=prefix + key,
            )
        return child

    def close(self, hint: str = "") -> None:
        """Fail on the first key that was never read: a misspelling must not be ignored."""
        for key, key_node in self._keys.items():
            if key not in self._read:
                known = ", ".join(sorted(self._read))
                key_node.fail("unknown key", hint=hint or (f"known keys here: {known}" if known else ""))
