"""The condition language of journeys and the contact policy: sandboxed Jinja2 expressions.

Journeys see `user`, `event` and `journey`; policy rules see `user` and `message`. A
missing attribute is falsy and compares false; it never crashes a journey mid-way.

Conditions run on every routed event, workflow branch and arbitration decision, so
they are compiled once into Python closures over the parsed expression (a few
hundred nanoseconds a node) instead of being rendered as a template each time (about
8 us). Attribute and item access, tests and filters still go through the sandboxed
environment, so the semantics are Jinja2's; a construct the compiler does not know
falls back to Jinja2's own evaluation.

Conditions run over data users send, so both paths go through the bounded, immutable
sandbox of `rules.sandbox` with `CONDITION_LIMITS`: an operation that would make too
large a value raises `TooLarge`, which `holds` counts as "does not match". Conditions
see no globals (`range`, `lipsum`...) and only the filters in `CONDITION_FILTERS`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol, cast

from jinja2 import ChainableUndefined, TemplateSyntaxError, nodes
from jinja2.parser import Parser
from jinja2.utils import _PassArg
from pydantic import AfterValidator

from rules.sandbox import BoundedEnvironment, Limits


class Missing(ChainableUndefined):
    """An attribute the profile or event does not have: chains, is falsy, compares false."""

    __slots__ = ()

    def _false(self, *_: object) -> bool:
        return False

    __lt__ = __le__ = __gt__ = __ge__ = _false  # type: ignore[assignment]

    def __hash__(self) -> int:
        return 0


CONDITION_LIMITS = Limits(max_length=100_000, max_int_bits=256)
# Filters that are useful in a condition and keep sizes bounded (those that could
# multiply a size, such as replace and join, check it first).
CONDITION_FILTERS = frozenset({
    "abs", "capitalize", "count", "d", "default", "first", "float", "int", "items", "join",
    "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr", "replace",
    "reverse", "round", "select", "selectattr", "sort", "string", "sum", "title", "trim",
    "truncate", "unique", "upper", "wordcount",
})  # fmt: skip
ENVIRONMENT = BoundedEnvironment(
    CONDITION_LIMITS, filters=CONDITION_FILTERS, undefined=Missing, autoescape=False
)


JOURNEY_NAMES = ("user", "event", "journey")
POLICY_NAMES = ("user", "message")


@lru_cache(maxsize=4096)
def syntax_error(source: str, names: tuple[str, ...] = JOURNEY_NAMES) -> str | None:
    """A readable problem with an expression (it does not parse, or uses a name it cannot
    see, such as a misspelt `usr.tier`), or None when it is fine."""
    if not isinstance(source, str) or not source.strip():
        return "an expression must be a non-empty string"
    try:
        node = Parser(ENVIRONMENT, source, state="variable").parse_expression()
    except TemplateSyntaxError as exc:
        return f"expression does not parse: {exc.message}"
    every = [node, *node.find_all(nodes.Node)]  # find_all leaves out the node itself
    unknown = sorted({n.name for n in every if isinstance(n, nodes.Name)} - set(names))
    if unknown:
        return f"unknown name {', '.join(unknown)}: conditions can use {', '.join(names)}"
    used = {n.name for n in every if isinstance(n, nodes.Filter)}
    filters = sorted(used - ENVIRONMENT.filters.keys())
    if filters:
        usable = ", ".join(sorted(ENVIRONMENT.filters))
        return f"unknown filter {', '.join(filters)}: conditions can use {usable}"
    try:
        ENVIRONMENT.compile_expression(source)
    except TemplateSyntaxError as exc:
        return f"expression does not parse: {exc.message}"
    return None


def condition_over(names: tuple[str, ...]) -> AfterValidator:
    """Pydantic validation that a string is a condition over `names`."""

    def check(value: str) -> str:
        if error := syntax_error(value, names):
            raise ValueError(error)
        return value

    return AfterValidator(check)


@lru_cache(maxsize=4096)
def _compiled(source: str) -> Callable[[Mapping[str, Any]], Any]:
    node = Parser(ENVIRONMENT, source, state="variable").parse_expression()
    try:
        return _compile(node)
    except _Unsupported:
        expression = ENVIRONMENT.compile_expression(source)
        return lambda context: expression(**context)


def evaluate(source: str, context: Mapping[str, Any]) -> Any:
    """Evaluate an expression; raises on errors such as arithmetic on a missing value."""
    return _compiled(source)(context)


class _Unsupported(Exception):
    pass


Evaluator = Callable[[Mapping[str, Any]], Any]

_DICT_ATTRIBUTES = frozenset(dir(dict))
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "lteq": operator.le,
    "gt": operator.gt,
    "gteq": operator.ge,
    "in": lambda a, b: a in b,
    "notin": lambda a, b: a not in b,
}
# The same bounded operations as Jinja2's path calls through `call_binop`.
_BINARY: dict[type[nodes.Expr], Callable[[Any, Any], Any]] = {
    nodes.Add: CONDITION_LIMITS.add,
    nodes.Sub: CONDITION_LIMITS.sub,
    nodes.Mul: CONDITION_LIMITS.mul,
    nodes.Div: operator.truediv,
    nodes.FloorDiv: operator.floordiv,
    nodes.Mod: CONDITION_LIMITS.mod,
    nodes.Pow: CONDITION_LIMITS.pow,
}


def _needs_context(function: Callable[..., Any]) -> bool:
    """A filter such as `map` or `select` that Jinja2 passes the template context."""
    return getattr(function, "jinja_pass_arg", None) is _PassArg.context


def _compile(node: nodes.Node) -> Evaluator:
    """A closure evaluating `node` over a context mapping, with Jinja2's semantics."""
    env = ENVIRONMENT
    match node:
        case nodes.Const(value=value):
            return lambda _context: value
        case nodes.Name(name=name):
            missing = env.undefined(name=name)
            return lambda context: context.get(name, missing)
        case nodes.Getattr(node=inner, attr=attr):
            of = _compile(inner)
            if attr in _DICT_ATTRIBUTES:  # `user.items` is dict.items to Jinja2 too
                return lambda context: env.getattr(of(context), attr)

            def lookup(context: Mapping[str, Any]) -> Any:
                # Profiles, events and messages are plain dicts: a key lookup is what
                # the sandbox would end up doing, minus its checks for attributes.
                obj = of(context)
                if type(obj) is dict:
                    try:
                        return obj[attr]
                    except KeyError:
                        return env.undefined(obj=obj, name=attr)
                return env.getattr(obj, attr)

            return lookup
        case nodes.Getitem(node=inner, arg=arg):
            of, key = _compile(inner), _compile(arg)
            return lambda context: env.getitem(of(context), key(context))
        case nodes.And(left=left, right=right):
            a, b = _compile(left), _compile(right)
            return lambda context: a(context) and b(context)
        case nodes.Or(left=left, right=right):
            a, b = _compile(left), _compile(right)
            return lambda context: a(context) or b(context)
        case nodes.Not(node=inner):
            of = _compile(inner)
            return lambda context: not of(context)
        case nodes.Neg(node=inner):
            of = _compile(inner)
            return lambda context: -of(context)
        case nodes.Compare(expr=first, ops=ops):
            head = _compile(first)
            chain = [(_COMPARE[op.op], _compile(op.expr)) for op in ops]

            def compare(context: Mapping[str, Any]) -> Any:
                left = head(context)
                for test, right_of in chain:
                    right = right_of(context)
                    if not test(left, right):
                        return False
                    left = right
                return True

            return compare
        case nodes.List(items=items) | nodes.Tuple(items=items):
            parts = [_compile(item) for item in items]
            kind = list if isinstance(node, nodes.List) else tuple
            if all(isinstance(item, nodes.Const) for item in items):  # as long as the source
                return lambda context: kind(part(context) for part in parts)
            sized = env.limits.sized
            return lambda context: sized(kind(part(context) for part in parts))
        case nodes.CondExpr(test=test, expr1=then, expr2=otherwise) if otherwise is not None:
            t, a, b = _compile(test), _compile(then), _compile(otherwise)
            return lambda context: a(context) if t(context) else b(context)
        case nodes.Test(node=inner, name=name, args=args, kwargs=[], dyn_args=None,
                        dyn_kwargs=None) if name in env.tests:  # fmt: skip
            of, extra = _compile(inner), [_compile(arg) for arg in args]
            test_fn = cast(Callable[..., Any], env.tests[name])
            return lambda context: test_fn(of(context), *(e(context) for e in extra))
        case nodes.Filter(node=inner, name=name, args=args, kwargs=[], dyn_args=None,
                          dyn_kwargs=None) if inner and name in env.filters and (
                              not _needs_context(env.filters[name])):  # fmt: skip
            of, extra = _compile(inner), [_compile(arg) for arg in args]
            return lambda context: env.call_filter(name, of(context), [e(context) for e in extra])
    if isinstance(node, nodes.BinExpr) and type(node) in _BINARY:
        apply = _BINARY[type(node)]
        a, b = _compile(node.left), _compile(node.right)
        return lambda context: apply(a(context), b(context))
    raise _Unsupported(type(node).__name__)


def holds(source: str | None, context: Mapping[str, Any]) -> bool:
    """Truth of a condition; no condition holds, and a condition that errors does not."""
    if source is None:
        return True
    try:
        return bool(evaluate(source, context))
    except Exception:
        # A condition must never crash a journey; an error is treated as "does not match".
        return False


def user_context(user_id: str, traits: Mapping[str, Any]) -> dict[str, Any]:
    """The `user` seen by conditions and templates: traits at the top level plus `id`."""
    return {**traits, "id": user_id, "traits": dict(traits)}


def event_context(
    name: str, properties: Mapping[str, Any], timestamp: str | None = None
) -> dict[str, Any]:
    """The `event` seen by conditions and templates."""
    return {"name": name, "properties": dict(properties), "timestamp": timestamp}


class EventLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def properties(self) -> dict[str, Any]: ...
    @property
    def timestamp(self) -> datetime: ...


def context(
    user_id: str,
    traits: Mapping[str, Any],
    event: EventLike | None,
    journey: Mapping[str, Any],
) -> dict[str, Any]:
    """Everything a condition or template sees: `user`, `event` and `journey`."""
    return {
        "user": user_context(user_id, traits),
        "event": event_context(event.name, event.properties, event.timestamp.isoformat())
        if event
        else {},
        "journey": dict(journey),
    }
