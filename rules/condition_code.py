"""Conditions as Python source: several conditions compiled into one function.

`rules.expressions` evaluates a condition through a tree of closures, one Python call
per node. Code that runs a fixed set of conditions on every call (a contact policy's
CRM and loyalty rules, on every arbitration decision) does better with all of them
in one generated function: `compile_tests` writes each condition as a Python
expression over the names it may see, so an attribute lookup on a profile is an
inline dict lookup and a comparison is an operator, with no call in between.

The semantics are the closures' (and so Jinja2's): a missing attribute is `Missing`,
attribute and item access on anything but a plain dict, tests, filters and arithmetic
go through the same bounded sandbox, and a condition that raises does not hold. A
construct the generator does not know is evaluated by `rules.expressions` for that
condition alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from jinja2 import nodes
from jinja2.parser import Parser

from rules.expressions import _BINARY, _DICT_ATTRIBUTES, ENVIRONMENT, _compiled, _needs_context

Tests = Callable[..., tuple[bool, ...]]

_OPERATORS = {"eq": "==", "ne": "!=", "lt": "<", "lteq": "<=", "gt": ">", "gteq": ">=",
              "in": "in", "notin": "not in"}  # fmt: skip
# Literals whose repr is their source; anything else is passed in as a constant.
_LITERALS = (str, int, bool, type(None))


class _Unsupported(Exception):
    pass


class _Writer:
    """Python source for expression nodes, with the constants it refers to."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)
        self.namespace: dict[str, Any] = {
            "_getattr": ENVIRONMENT.getattr,
            "_getitem": ENVIRONMENT.getitem,
            "_filter": ENVIRONMENT.call_filter,
            "_sized": ENVIRONMENT.limits.sized,
        }
        self._count = 0

    def constant(self, value: Any) -> str:
        name = f"_k{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def temporary(self) -> str:
        self._count += 1
        return f"_t{self._count}"

    def write(self, node: nodes.Node) -> str:
        match node:
            case nodes.Const(value=value):
                if type(value) in _LITERALS:
                    return repr(value)
                return self.constant(value)
            case nodes.Name(name=name):
                if name in self.names:
                    return name
                # Conditions see only their names: any other is missing.
                return self.constant(ENVIRONMENT.undefined(name=name))
            case nodes.Getattr(node=inner, attr=attr):
                of = self.write(inner)
                if attr in _DICT_ATTRIBUTES:  # `user.items` is dict.items to Jinja2 too
                    return f"_getattr({of}, {attr!r})"
                # Profiles and messages are plain dicts: a key lookup is what the sandbox
                # would end up doing. The `Missing` for an absent key is made once (it is
                # the same for every dict but in error messages, which only say that the
                # condition does not hold).
                t, missing = self.temporary(), self.constant(ENVIRONMENT.undefined(name=attr))
                return f"({t}.get({attr!r}, {missing}) if type({t} := {of}) is dict " \
                       f"else _getattr({t}, {attr!r}))"  # fmt: skip
            case nodes.Getitem(node=inner, arg=arg):
                return f"_getitem({self.write(inner)}, {self.write(arg)})"
            case nodes.And(left=left, right=right):
                return f"({self.write(left)} and {self.write(right)})"
            case nodes.Or(left=left, right=right):
                return f"({self.write(left)} or {self.write(right)})"
            case nodes.Not(node=inner):
                return f"(not {self.write(inner)})"
            case nodes.Neg(node=inner):
                return f"(-{self.write(inner)})"
            case nodes.Compare(expr=first, ops=ops):
                # Python's chained comparison evaluates each operand once and stops at the
                # first false link, as Jinja2's does; the result is a bool as there.
                chain = " ".join(f"{_OPERATORS[op.op]} {self.write(op.expr)}" for op in ops)
                return f"(True if {self.write(first)} {chain} else False)"
            case nodes.List(items=items) | nodes.Tuple(items=items):
                parts = [self.write(item) for item in items]
                literal = f"[{', '.join(parts)}]" if isinstance(node, nodes.List) else (
                    f"({''.join(part + ', ' for part in parts)})")  # fmt: skip
                if all(isinstance(item, nodes.Const) for item in items):  # as long as the source
                    return literal
                return f"_sized({literal})"
            case nodes.CondExpr(test=test, expr1=then, expr2=otherwise) if otherwise is not None:
                return f"({self.write(then)} if {self.write(test)} else {self.write(otherwise)})"
            case nodes.Test(node=inner, name=name, args=args, kwargs=[], dyn_args=None,
                            dyn_kwargs=None) if name in ENVIRONMENT.tests:  # fmt: skip
                function = self.constant(ENVIRONMENT.tests[name])
                return f"{function}({', '.join(self.write(n) for n in [inner, *args])})"
            case nodes.Filter(node=inner, name=name, args=args, kwargs=[], dyn_args=None,
                              dyn_kwargs=None) if inner and name in ENVIRONMENT.filters and (
                                  not _needs_context(ENVIRONMENT.filters[name])):  # fmt: skip
                extra = ", ".join(self.write(arg) for arg in args)
                return f"_filter({name!r}, {self.write(inner)}, [{extra}])"
        if isinstance(node, nodes.BinExpr) and type(node) in _BINARY:
            apply = self.constant(_BINARY[type(node)])
            return f"{apply}({self.write(node.left)}, {self.write(node.right)})"
        raise _Unsupported(type(node).__name__)

    def condition(self, source: str) -> str:
        """The expression for `source`'s truth (before the error handling around it)."""
        node = Parser(ENVIRONMENT, source, state="variable").parse_expression()
        try:
            return self.write(node)
        except _Unsupported:
            fallback = self.constant(_compiled(source))
            context = ", ".join(f"{name!r}: {name}" for name in sorted(self.names))
            return f"{fallback}({{{context}}})"


def compile_tests(
    conditions: Sequence[str], names: Sequence[str], *, stop_after: frozenset[int] = frozenset()
) -> Tests:
    """One function of `names` (positional, in that order) returning whether each condition
    holds, in order. Once a condition whose index is in `stop_after` holds, the function
    returns the results so far (those after it are not evaluated)."""
    writer = _Writer(names)
    lines = [f"def tests({', '.join(names)}):"]
    results: list[str] = []
    for i, source in enumerate(conditions):
        expression = writer.condition(source)
        result = f"c{i}"
        results.append(result)
        lines += [
            "    try:",
            f"        {result} = True if {expression} else False",
            "    except Exception:",  # a condition that errors does not hold
            f"        {result} = False",
        ]
        if i in stop_after:
            lines.append(f"    if {result}:")
            lines.append(f"        return ({''.join(r + ', ' for r in results)})")
    lines.append(f"    return ({''.join(r + ', ' for r in results)})")
    code = compile("\n".join(lines), "<conditions>", "exec")
    exec(code, writer.namespace)
    tests: Tests = writer.namespace["tests"]
    return tests
