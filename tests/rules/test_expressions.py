"""The condition sandbox: immutable, without globals, and bounded on both evaluation paths."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from jinja2 import TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError

from rules.expressions import (
    CONDITION_LIMITS,
    ENVIRONMENT,
    evaluate,
    holds,
    syntax_error,
    user_context,
)
from rules.sandbox import TooLarge

BIO = "b" * 32_000  # a 32 KB trait, as anyone can send through identify
CONTEXT = {
    "user": user_context("u1", {"name": "Ada", "bio": BIO, "n": 10, "score": 4.25,
                                "tags": ["vip", "new"]}),
    "event": {"name": "Cart Abandoned", "properties": {"total": 30}},
    "journey": {},
}  # fmt: skip


def jinja(source: str, context: dict[str, Any]) -> Any:
    """Jinja2's own evaluation, which `evaluate` falls back to for what it does not compile."""
    return ENVIRONMENT.compile_expression(source, undefined_to_none=False)(**context)


def both_paths(source: str, context: dict[str, Any]) -> list[Any]:
    return [evaluate(source, context), jinja(source, context)]


@pytest.mark.parametrize(
    ("source", "error", "message"),
    [
        # changing the data a condition is given
        ("user.update({'x': 1})", SecurityError, "'update' of 'dict' object is unsafe"),
        ("user.update({'x': 1}) or user.x", SecurityError, "unsafe"),
        ("user.tags.append('x')", SecurityError, "unsafe"),
        ("user.pop('name')", SecurityError, "unsafe"),
        # operators that multiply sizes
        ("'a' * 10**8", TooLarge, "'\\*' would make 100,000,000 characters"),
        ("user.name * 10**9", TooLarge, "'\\*' would make 3,000,000,000 characters"),
        ("[user.bio] * 4", TooLarge, "'\\*' would make"),  # items count what they hold
        ("user.bio + user.bio + user.bio + user.bio", TooLarge, "'\\+' would make"),
        ("user.bio ~ user.bio ~ user.bio ~ user.bio", TooLarge, "'~' would make 128,000"),
        ("[user.bio, user.bio, user.bio, user.bio]", TooLarge, "a literal would make"),
        ("(user.bio, user.bio, user.bio, user.bio)", TooLarge, "a literal would make"),
        ("{'a': user.bio, 'b': user.bio, 'c': user.bio, 'd': user.bio}", TooLarge, "literal"),
        # integers: Jinja2 reads `10 ** 10 ** 10` as (10 ** 10) ** 10, a 333-bit number
        ("10 ** 10 ** 10", TooLarge, "integer of 333 bits"),
        ("10 ** (10 ** 10)", TooLarge, "'\\*\\*' would make an integer"),
        ("2 ** 200 * 2 ** 100", TooLarge, "'\\*' would make an integer"),
        # printf-style formatting: widths allocate before anything is printed
        ("'%0999999999d' % 1", TooLarge, "'%' would make 1,000,000,012"),
        ("'%.999999999f' % 1.5", TooLarge, "'%' would make"),
        ("'%*d' % (-10**9, 1)", TooLarge, "'%' would make"),
        ("'%0999999999d' is divisibleby 3", TooLarge, "'%' would make"),
        ("'%(a(b))s' % {}", SecurityError, "parentheses"),
        # filters: the ones that multiply check first; the others are not offered
        ("user.bio | replace('', user.bio)", TooLarge, "replace would make 1,024,064,000"),
        ("user.bio | join(user.bio)", TooLarge, "join would make"),
        ("([user.bio] * 3) | join(user.bio)", TooLarge, "join would make"),
        ("([[1]] * 3) | sum(start=[])", TypeError, "sum adds numbers"),
        ("'x' | center(10**9)", TemplateSyntaxError, "No filter named 'center'"),
        ("'x' | indent(10**9)", TemplateSyntaxError, "No filter named 'indent'"),
        ("'%09999d' | format(1)", TemplateSyntaxError, "No filter named 'format'"),
        # methods of data that could grow it
        ("user.name.ljust(10**9)", SecurityError, "'ljust' of 'str' object is unsafe"),
        ("user.name.center(10**9)", SecurityError, "unsafe"),
        ("'{:>999999999}'.format(1)", SecurityError, "'format' of 'str' object is unsafe"),
        ("(1).to_bytes(10**9, 'big')", SecurityError, "'to_bytes' of 'int' object is unsafe"),
        ("user.bio.encode() * 2", SecurityError, "unsafe"),
        # no globals
        ("range(10**5) | list", UndefinedError, "'range' is undefined"),
        ("lipsum(10**9)", UndefinedError, "'lipsum' is undefined"),
        ("namespace(a=1)", UndefinedError, "'namespace' is undefined"),
    ],
)
def test_a_condition_cannot_change_its_data_or_make_huge_values(
    source: str, error: type[Exception], message: str
) -> None:
    context = copy.deepcopy(CONTEXT)
    assert holds(source, context) is False
    with pytest.raises(error, match=message):
        evaluate(source, context)
    # Jinja2's own evaluation (the fallback path) refuses the same way
    with pytest.raises(error, match=message):
        jinja(source, context)
    assert context == CONTEXT


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # compiled into closures
        ("user.n * 3 + 1", 31),
        ("user.name * 3", "AdaAdaAda"),
        ("2 ** 10 ** 2", 2**20),  # Jinja2's `**` groups from the left
        ("2 ** 255 > 0", True),
        ("-2 ** 3", -8),
        ("user.n - 1 in [8, 9]", True),
        ("(user.name, user.n)", ("Ada", 10)),
        ("'%05.1f|%s' % (user.score, user.name)", "004.2|Ada"),
        ("'%(name)s' % user", "Ada"),
        ("user.n % 3", 1),
        ("user.tags | join(', ')", "vip, new"),
        ("user.name | replace('a', 'å')", "Adå"),
        ("[user.n, 5] | sum", 15),
        ("user.tags | map('upper') | list", ["VIP", "NEW"]),  # filters given the context
        ("user.tags | select('equalto', 'vip') | list", ["vip"]),
        ("user.score | round", 4.0),
        ("user.missing | default('none')", "none"),
        ("user.name | truncate(2, true, '', 0)", "Ad"),
        ("user.n is divisibleby 5", True),
        ("('a' * 100000) | length", 100_000),  # exactly the limit
        ("(user.bio * 3) | length", 96_000),
        # left to Jinja2: calls, slices and `~`
        ("user.name[:2]", "Ad"),
        ("user.name.upper()", "ADA"),
        ("user.name.startswith('A')", True),
        ("user.get('name')", "Ada"),
        ("user.items() | list | length > 3", True),
        ("user.name ~ '!'", "Ada!"),
        ("{'a': user.n}['a']", 10),
        ("(user.name ~ '') * 2", "AdaAda"),
    ],
)
def test_ordinary_conditions_still_work_on_both_paths(source: str, expected: Any) -> None:
    assert both_paths(source, CONTEXT) == [expected, expected]


@pytest.mark.parametrize(
    ("source", "ok"),
    [
        ("'a' * 100_000", True),
        ("'a' * 100_001", False),
        ("['a'] * 50_000", True),  # each item counts itself and its one character
        ("['a'] * 50_001", False),
        ("2 ** 255", True),  # 256 bits
        ("2 ** 256", False),
        ("2 ** 128 * 2 ** 127", True),
        ("2 ** 255 + 2 ** 255", False),
    ],
)
def test_the_bounds_are_where_the_limits_say(source: str, ok: bool) -> None:
    assert (CONDITION_LIMITS.max_length, CONDITION_LIMITS.max_int_bits) == (100_000, 256)
    if ok:
        assert evaluate(source, CONTEXT) == jinja(source, CONTEXT)
    else:
        with pytest.raises(TooLarge):
            evaluate(source, CONTEXT)
        with pytest.raises(TooLarge):
            jinja(source, CONTEXT)


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("'x' | center(3)", "unknown filter center: conditions can use abs, capitalize"),
        ("user.tier | upper | pprint", "unknown filter pprint"),
        ("range(3)", "unknown name range: conditions can use user, event, journey"),
        ("usr", "unknown name usr"),  # a name alone, not only inside an expression
        ("user.tier | upper", None),
        ("'a' * 10**8 == ''", None),  # valid: refused when evaluated, not folded at deploy
    ],
)
def test_validation_names_what_conditions_cannot_use(source: str, problem: str | None) -> None:
    error = syntax_error(source)
    if problem is None:
        assert error is None
    else:
        assert error is not None
        assert error.startswith(problem)


def test_conditions_see_no_globals() -> None:
    assert ENVIRONMENT.globals == {}
