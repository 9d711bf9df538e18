"""A bounded, immutable Jinja2 sandbox, shared by conditions and message templates.

Conditions and templates run over data users send (a trait can be any string), so a
`BoundedEnvironment` changes nothing it is given (`user.update(...)` is refused) and
keeps every value it makes within its `Limits`, whether Jinja2 renders the code or
`rules.expressions` evaluates it through its own closures: no operation may make a
string of more than `max_length` characters, a list, tuple or dict of more than
`max_length` items (the characters and items of what it holds counted in), or an
integer of more than `max_int_bits` bits. What can multiply sizes (`*`, `**`, `+`, `~`,
`%` formatting, literals, the output of blocks and macros, the filters `replace`,
`join`, `center`...) works out the size of its result before making it and raises
`TooLarge` instead. An environment offers only the filters and globals it is given, and
no method of a string, list or dict that can grow one.

    jinja2.exceptions.SecurityError
     └── TooLarge          an operation would make a value past the `Limits`
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import filters as builtin
from jinja2 import nodes, pass_environment, pass_eval_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import Environment
from jinja2.exceptions import FilterArgumentError, SecurityError
from jinja2.nodes import EvalContext
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEnvironment,
    modifies_known_mutable,
)
from markupsafe import soft_str


class TooLarge(SecurityError):
    """An operation would make a value larger than the sandbox's `Limits` allow."""


_SEQUENCES = (str, list, tuple)
# A conversion in a printf-style format: `%(key)-08.3f`, `%*d`, `%%`.
_CONVERSION = re.compile(
    r"%(?:\((?P<key>[^()]*)\))?[-#0 +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d*))?"
    r"[hlL]?(?P<kind>.?)",
    re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class Limits:
    """The largest values sandboxed code may make, and the operations that keep to them."""

    max_length: int  # characters of a string; items of a list, tuple or dict, with theirs
    max_int_bits: int

    def size(self, value: Any) -> int:
        """Characters of a string, digits of an integer; for a list, tuple or dict its items
        plus the size of each. Counting stops once past `max_length`, so a list that holds
        another many times over costs no more than a list that size."""
        if isinstance(value, str):
            return len(value)
        if isinstance(value, int):
            return value.bit_length() // 3 + 1
        if not isinstance(value, list | tuple | dict):
            return 1
        total, pending = 0, [value]
        while pending and total <= self.max_length:
            item = pending.pop()
            if isinstance(item, str):
                total += len(item)
            elif isinstance(item, list | tuple):
                total += len(item)
                if total <= self.max_length:
                    pending.extend(item)
            elif isinstance(item, dict):
                total += len(item)
                if total <= self.max_length:
                    pending.extend(item.keys())
                    pending.extend(item.values())
            else:
                total += self.size(item)
        return total

    def check(self, what: str, size: int) -> None:
        """Raise TooLarge if `what` would make a value of `size` characters or items."""
        if size > self.max_length:
            raise TooLarge(
                f"{what} would make {size:,} characters or items; at most "
                f"{self.max_length:,} are allowed"
            )

    def checked(self, what: str, value: str) -> str:
        """`value`, after checking its length (for results whose size is only estimated)."""
        self.check(what, len(value))
        return value

    def _check_bits(self, what: str, bits: float) -> None:
        if bits > self.max_int_bits:
            raise TooLarge(
                f"{what} would make an integer of {bits:,.0f} bits or more; at most "
                f"{self.max_int_bits:,} are allowed"
            )

    def checked_int(self, what: str, result: Any) -> Any:
        """`result`, once checked if it is an integer (one whose making was cheap)."""
        if isinstance(result, int):
            self._check_bits(what, result.bit_length())
        return result

    def sized(self, value: Any) -> Any:
        """A list, tuple or dict literal, once its size is checked."""
        self.check("a literal", self.size(value))
        return value

    def add(self, a: Any, b: Any) -> Any:
        if isinstance(a, _SEQUENCES) and isinstance(b, _SEQUENCES):
            self.check("'+'", self.size(a) + self.size(b))
        return self.checked_int("'+'", a + b)

    def sub(self, a: Any, b: Any) -> Any:
        return self.checked_int("'-'", a - b)

    def mul(self, a: Any, b: Any) -> Any:
        if isinstance(a, int) and isinstance(b, int):
            # The product has as many bits as both together, or one fewer.
            self._check_bits("'*'", a.bit_length() + b.bit_length() - 1)
            return self.checked_int("'*'", a * b)
        if isinstance(a, _SEQUENCES) and isinstance(b, int):
            self._check_repeat(a, b)
        elif isinstance(a, int) and isinstance(b, _SEQUENCES):
            self._check_repeat(b, a)
        return a * b

    def _check_repeat(self, sequence: Any, times: int) -> None:
        if times > 0 and (size := self.size(sequence)) > self.max_length // times:
            self.check("'*'", size * times)

    def pow(self, a: Any, b: Any) -> Any:
        if isinstance(a, int) and isinstance(b, int) and b > 1 and abs(a) > 1:
            # The result has floor(b * log2|a|) + 1 bits: refuse what is surely too big
            # (an exponent too big to turn into a float included), check the rest after.
            if b.bit_length() > self.max_int_bits:
                self._check_bits("'**'", self.max_int_bits + 1)
            if (bits := b * math.log2(abs(a))) - 1 > self.max_int_bits:
                self._check_bits("'**'", math.floor(bits) + 1)
            return self.checked_int("'**'", a**b)
        return a**b

    def mod(self, a: Any, b: Any) -> Any:
        if isinstance(a, str):
            return self.format(a, b)
        return a % b

    def format(self, template: str, values: Any) -> str:
        """`template % values`, refused when the result would be too long: widths and
        precisions (`%0999999999d`, `%*d`) and the values are counted first."""
        positional = values if isinstance(values, tuple) else (values,)
        keyed = values if isinstance(values, Mapping) else {}
        size, position = len(template), 0
        for key, width, precision, kind in _conversions(template):
            for given in (width, precision):
                if given == _STAR:
                    star = positional[position] if position < len(positional) else 0
                    position += 1
                    size += abs(star) if isinstance(star, int) else 0
                elif given:
                    size += given
            if key is not None:
                value = keyed.get(key)
            else:
                value = positional[position] if position < len(positional) else None
                position += 1
            size += self._printed_size(value, kind)
        self.check("'%'", size)
        return self.checked("'%'", template % values)

    def _printed_size(self, value: Any, kind: str) -> int:
        if isinstance(value, list | tuple | dict | str | int):
            return self.size(value)
        return 320 if kind in "fF" else 32  # '%f' % 1e308 prints 316 characters

    def join_operands(self, markup: bool, operands: tuple[Any, ...]) -> str:
        """The `~` operator: its operands as strings, joined."""
        self.check("'~'", sum(self.size(operand) for operand in operands))
        return self.checked("'~'", markup_join(operands) if markup else str_join(operands))

    def buffer(self) -> list[str]:
        """The list a block, macro or filter section collects its output in."""
        return _Buffer(self)

    def concat(self, pieces: Iterable[str]) -> str:
        """`"".join(pieces)` for rendered output and blocks, refused past `max_length`
        characters; a generator is read piece by piece, so a runaway loop stops early."""
        if isinstance(pieces, list):  # a block's buffer, checked as it grew
            self.check("the output", sum(map(len, pieces)))
            return "".join(pieces)
        kept: list[str] = []
        size, limit = 0, self.max_length
        for piece in pieces:
            if piece:  # a loop printing nothing holds nothing
                size += len(piece)
                if size > limit:
                    self.check("the output", size)
                kept.append(piece)
        return "".join(kept)


class _Buffer(list[str]):
    """Output collected before it is joined, refused once past the limits as it grows: a
    loop inside `{% set %}` printing an escaped 32 KB trait makes a new copy each time."""

    __slots__ = ("_limits", "_size")

    def __init__(self, limits: Limits) -> None:
        super().__init__()
        self._limits, self._size = limits, 0

    def append(self, piece: str, /) -> None:
        self._grow(len(piece), 1)
        super().append(piece)

    def extend(self, pieces: Iterable[str], /) -> None:
        pieces = list(pieces)
        self._grow(sum(map(len, pieces)), len(pieces))
        super().extend(pieces)

    def _grow(self, characters: int, items: int) -> None:
        self._size += characters
        self._limits.check("the output", max(self._size, len(self) + items))


_STAR = -1  # a width or precision given by `*`, from the values


@lru_cache(maxsize=1024)
def _conversions(template: str) -> tuple[tuple[str | None, int, int, str], ...]:
    """The conversions of a printf-style format: (key, width, precision, kind) each, with
    0 for no width or precision, and a width too long to read as more than any limit."""
    found = []
    for conversion in _CONVERSION.finditer(template):
        kind = conversion["kind"]
        if kind == "%":
            continue
        if kind == "(":  # Python reads `%(a(b))s` as key `a(b)`; the pattern does not
            raise SecurityError("a format key may not contain parentheses")
        width, precision = (
            _STAR if part == "*" else int(part.lstrip("0")[:12] or 0) if part else 0
            for part in (conversion["width"], conversion["precision"])
        )
        found.append((conversion["key"], width, precision, kind))
    return tuple(found)


def _guarded_filters(limits: Limits) -> dict[str, Callable[..., Any]]:
    """Jinja2's filters that can multiply sizes, checking the size of their result (or
    the arguments that set it) before making it."""

    @pass_eval_context
    def replace(eval_ctx: EvalContext, s: Any, old: Any, new: Any, count: Any = None) -> str:
        text, old_text, new_text = str(s), str(old), str(new)
        times = text.count(old_text)
        if isinstance(count, int) and 0 <= count < times:
            times = count
        limits.check("replace", len(text) + times * (len(new_text) - len(old_text)))
        return limits.checked("replace", builtin.do_replace(eval_ctx, s, old, new, count))

    @pass_eval_context
    def join(eval_ctx: EvalContext, value: Any, d: Any = "", attribute: Any = None) -> str:
        items = list(value)
        limits.check("join", len(str(d)) * max(len(items) - 1, 0) + limits.size(items))
        return limits.checked("join", builtin.sync_do_join(eval_ctx, items, d, attribute))

    def center(value: Any, width: Any = 80) -> str:
        if isinstance(width, int):
            limits.check("center", width)
        return builtin.do_center(value, width)

    def indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> str:
        step = len(width) if isinstance(width, str) else width
        if isinstance(step, int):
            limits.check("indent", step)
            text = str(s)
            limits.check("indent", len(text) + (text.count("\n") + 1) * step)
        return builtin.do_indent(s, width, first, blank)

    @pass_environment
    def wordwrap(environment: Environment, s: Any, width: int = 79,
                 break_long_words: bool = True, wrapstring: str | None = None,
                 break_on_hyphens: bool = True) -> str:  # fmt: skip
        text = str(s)
        joint = environment.newline_sequence if wrapstring is None else str(wrapstring)
        # A line ends when the next word does not fit, so two lines hold over `width`.
        if isinstance(width, int):
            lines = 2 * len(text) // max(width, 1) + len(text.splitlines()) + 1
            limits.check("wordwrap", len(text) + lines * len(joint))
        wrapped = builtin.do_wordwrap(environment, s, width, break_long_words, wrapstring,
                                      break_on_hyphens)  # fmt: skip
        return limits.checked("wordwrap", wrapped)

    def format(value: Any, *args: Any, **kwargs: Any) -> str:
        if args and kwargs:
            raise FilterArgumentError("can't handle positional and keyword arguments at once")
        return limits.format(soft_str(value), kwargs or args)

    def batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
        limits.check("batch", linecount)
        return builtin.do_batch(value, linecount, fill_with)

    def slice_(value: Any, slices: int, fill_with: Any = None) -> Any:
        limits.check("slice", slices)
        return builtin.sync_do_slice(list(value), slices, fill_with)

    @pass_environment
    def sum_(environment: Environment, iterable: Any, attribute: Any = None,
             start: Any = 0) -> Any:  # fmt: skip
        # Adding lists one by one takes time quadratic in their number: numbers only.
        if not isinstance(start, int | float):
            raise TypeError("sum adds numbers")
        total = builtin.sync_do_sum(environment, iterable, attribute, start)
        return limits.checked_int("sum", total)

    return {"replace": replace, "join": join, "center": center, "indent": indent,
            "wordwrap": wordwrap, "format": format, "batch": batch, "slice": slice_,
            "sum": sum_}  # fmt: skip


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja2's code generator, with `~`, list, tuple and dict literals and the output of
    blocks and macros checked as they grow: putting a value in a literal twice, over and
    over (in a recursive macro), would double its size each time without any operator."""

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.limits.buffer()")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self.write("environment.limits.sized(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx != "load":  # `{% for a, b in ... %}` assigns
            super().visit_Tuple(node, frame)
            return
        self.write("environment.limits.sized(")
        super().visit_Tuple(node, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("environment.limits.sized(")
        super().visit_Dict(node, frame)
        self.write(")")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # As Jinja2 chooses between markup_join and str_join.
        markup = "context.eval_ctx.volatile" if frame.eval_ctx.volatile else (
            str(bool(frame.eval_ctx.autoescape)))  # fmt: skip
        self.write(f"environment.limits.join_operands({markup}, (")
        for operand in node.nodes:
            self.visit(operand, frame)
            self.write(", ")
        self.write("))")


# Methods of data that sandboxed code may call: none that can make a large value
# (str.center, ljust, zfill, expandtabs, translate, join, replace, format, encode,
# int.to_bytes, ...); the bounded filters do those jobs.
_SAFE_METHODS = frozenset({
    "capitalize", "casefold", "count", "endswith", "find", "index", "isalnum", "isalpha",
    "isascii", "isdecimal", "isdigit", "islower", "isnumeric", "isspace", "istitle", "isupper",
    "lower", "lstrip", "partition", "removeprefix", "removesuffix", "rfind", "rindex",
    "rpartition", "rsplit", "rstrip", "split", "splitlines", "startswith", "strip", "swapcase",
    "title", "upper",  # str; list and tuple: count, index
    "get", "items", "keys", "values",  # dict
    "is_integer",  # float
})  # fmt: skip
_DATA = (str, bytes, bytearray, int, float, complex, list, tuple, dict, set, frozenset)
# Every method name jinja2.sandbox.modifies_known_mutable knows.
_MUTATING = frozenset({
    "add", "append", "appendleft", "clear", "difference_update", "discard", "extend",
    "extendleft", "insert", "pop", "popitem", "popleft", "remove", "reverse", "rotate",
    "setdefault", "sort", "symmetric_difference_update", "update",
})  # fmt: skip


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """An immutable Jinja2 sandbox whose operations, filters and output keep to `limits`,
    with only the filters named and the globals given."""

    intercepted_binops = frozenset({"+", "-", "*", "**", "%"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(
        self,
        limits: Limits,
        *,
        filters: Iterable[str],
        globals: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.limits = limits
        self.binop_table = {**self.binop_table, "+": limits.add, "-": limits.sub,
                            "*": limits.mul, "**": limits.pow, "%": limits.mod}  # fmt: skip
        guarded = _guarded_filters(limits)
        self.filters = {name: guarded.get(name) or self.filters[name] for name in filters}
        # `'%0999999999d' is divisibleby 3` would format the string.
        self.tests = {**self.tests, "divisibleby": lambda value, num: limits.mod(value, num) == 0}
        self.globals.clear()
        self.globals.update(globals or {})
        self.concat = limits.concat  # type: ignore[method-assign]

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not SandboxedEnvironment.is_safe_attribute(self, obj, attr, value):
            return False
        if isinstance(obj, _DATA):  # no method that mutates is in _SAFE_METHODS
            return attr in _SAFE_METHODS or not callable(value)
        # As ImmutableSandboxedEnvironment, but without its isinstance checks against
        # abstract classes for `loop.last` and the like.
        return attr not in _MUTATING or not modifies_known_mutable(obj, attr)

    def wrap_str_format(self, value: Any) -> None:
        """`str.format` is not offered (its widths allocate): `'...' | format` and `%` are."""
        return None
