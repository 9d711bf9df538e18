"""YAML files that remember where each value came from, so errors point at `file:line:col`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

Loc = Sequence[str | int]


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a workspace file, at a 1-based line and column."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}:{self.col}: {where}{self.message}"


class InvalidSource(Exception):
    """Raised with every problem found, never only the first."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Source:
    """A parsed YAML document: plain data for validation, the node tree for positions."""

    file: str
    text: str
    data: Any
    node: Any

    def position(self, loc: Loc, *, key: bool = False) -> tuple[int, int]:
        """The line and column of the deepest node on `loc` that exists in the file.

        A scalar is located at its value, unless `key` asks for the key that holds it
        (an unknown key is an error about the key, not its value).
        """
        node, line, col = self.node, 0, 0
        for i, part in enumerate(loc):
            if isinstance(node, CommentedMap) and part in node:
                line, col = node.lc.key(part)
                value = node[part]
                last = i == len(loc) - 1
                if not isinstance(value, CommentedMap | CommentedSeq) and not (key and last):
                    line, col = node.lc.value(part)
                node = value
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
                line, col = node.lc.item(part)
                node = node[part]
            else:
                break
        return line + 1, col + 1

    def problem(
        self, loc: Loc, message: str, *, line_in_value: int | None = None, key: bool = False
    ) -> Problem:
        """A problem at `loc`; `line_in_value` points inside a multi-line string value."""
        line, col = self.position(loc, key=key)
        if line_in_value is not None:
            lines = self.text.splitlines()
            # A block scalar (`|` or `>`) starts on the line after its indicator.
            block = 0 < line <= len(lines) and lines[line - 1][col - 1 : col] in ("|", ">")
            target = line + line_in_value - (0 if block else 1)
            if target != line and 0 < target <= len(lines):
                text = lines[target - 1]
                line, col = target, len(text) - len(text.lstrip()) + 1
        return Problem(self.file, line, col, dotted(loc), message)

    def problems_from(self, error: ValidationError, *, prefix: Loc = ()) -> list[Problem]:
        """Map each pydantic error back to the YAML node it is about."""
        found = []
        for err in error.errors():
            loc = [*prefix, *_without_union_tags(err["loc"])]
            found.append(self.problem(loc, _message(err), key=err["type"] == "extra_forbidden"))
        return found


def dotted(loc: Loc) -> str:
    return ".".join(str(part) for part in loc)


def _without_union_tags(loc: Sequence[str | int]) -> list[str | int]:
    # Tagged unions put their tag (written `<kind>`) into error locations, as in
    # `steps.a.<send>.send.template`; the marketer never wrote it, so drop it.
    return [p for p in loc if not (isinstance(p, str) and p.startswith("<"))]


def _message(err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return f"missing required key '{err['loc'][-1]}'"
    message = str(err["msg"])
    return message.removeprefix("Value error, ")


def parse(text: str, file: str) -> Source:
    """Parse YAML text, raising InvalidSource with the position of a syntax error."""
    yaml = YAML(typ="rt")
    try:
        node = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise InvalidSource([Problem(file, line, col, "", f"YAML: {exc.problem}")]) from None
    return Source(file=file, text=text, data=_plain(node), node=node)


def load(path: Path, *, display: str | None = None) -> Source:
    """Read and parse a YAML file; the display name is what errors show."""
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidSource([Problem(name, 1, 1, "", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise InvalidSource([Problem(name, 1, 1, "", "not UTF-8 text")]) from None
    return parse(text, name)


def _plain(node: Any) -> Any:
    if isinstance(node, CommentedMap):
        return {str(k) if not isinstance(k, str) else k: _plain(v) for k, v in node.items()}
    if isinstance(node, CommentedSeq):
        return [_plain(v) for v in node]
    if hasattr(node, "__str__") and type(node).__module__.startswith("ruamel"):
        # ruamel scalar subclasses (ScalarFloat, ...) become plain Python values
        for plain in (bool, int, float, str):
            if isinstance(node, plain):
                return plain(node)
    return node
