"""Conditions compiled into one function answer as `holds` does, condition by condition."""

from __future__ import annotations

from typing import Any

import pytest

from rules.condition_code import compile_tests
from rules.expressions import holds, user_context

BIO = "b" * 32_000
MESSAGE = {"key": "k1", "channel": "push", "channels": ["push", "email"],
           "category": "promotional", "priority": 60, "value": 120.0, "propensity": None,
           "tags": ["cart", "discount"], "journey": "cart", "template": "t",
           "content_key": "t"}  # fmt: skip
USERS = [
    user_context("ada", {"loyalty_tier": "gold", "orders_count": 12, "churn_risk": 0.9,
                         "vip": True, "bio": BIO, "consent": {"push": False},
                         "scores": [3, 1, 2], "country": "DE", "n": None}),
    user_context("bob", {}),
    user_context("eve", {"orders_count": "many", "loyalty_tier": 3, "scores": "abc"}),
]  # fmt: skip

CONDITIONS = [
    "'discount' in message.tags and user.loyalty_reward_active",
    "user.loyalty_tier == 'gold' and message.channel == 'push'",
    "'cross_sell' not in message.tags or user.open_ticket",
    "user.orders_count > 10 and message.category == 'promotional'",
    "user.churn_risk > 0.8",
    "message.value and message.value > 100",
    "1 < user.orders_count < 20",
    "user.missing.deeper.still == none",
    "user.missing.deeper is undefined",
    "user.consent.push is sameas false",
    "user.consent['push'] == false",
    "user.scores | length > 2",
    "user.scores | sort | first == 1",
    "(user.orders_count + 1) * 2 > 20",
    "user.orders_count // 5 == 2 and user.orders_count % 5 == 2",
    "-user.orders_count < 0",
    "not user.vip",
    "user.id == 'ada' if user.vip else user.id == 'bob'",
    "user.traits.loyalty_tier in ['gold', 'silver']",
    "user.loyalty_tier in ('gold',)",
    "[user.loyalty_tier, 'x'] | length == 2",
    "user.items",  # dict.items, as Jinja2 gives it
    "user.bio ~ user.bio ~ user.bio ~ user.bio",  # too large: does not hold
    "user.bio * 10",  # too large
    "user.update({'x': 1})",  # unsafe: does not hold
    "user.missing + 1 > 0",  # arithmetic on a missing value raises: does not hold
    "user.n is none",
    "user.scores[1:] | length == 2",  # a slice: evaluated by rules.expressions
    "message.priority >= 60.0",
]


@pytest.mark.parametrize("user", USERS, ids=lambda u: str(u["id"]))
def test_each_condition_holds_as_holds_says(user: dict[str, Any]) -> None:
    tests = compile_tests(CONDITIONS, ("user", "message"))
    expected = tuple(holds(c, {"user": user, "message": MESSAGE}) for c in CONDITIONS)
    assert tests(user, MESSAGE) == expected
    assert any(expected)  # the cases tell true from false
    assert not all(expected)


def test_a_stopping_condition_leaves_the_rest_unevaluated() -> None:
    tests = compile_tests(
        ["user.vip", "user.loyalty_tier == 'gold'", "user.update({'x': 1})"],
        ("user", "message"),
        stop_after=frozenset({1}),
    )
    assert tests(USERS[0], MESSAGE) == (True, True)
    assert tests(USERS[1], MESSAGE) == (False, False, False)


def test_names_a_condition_cannot_see_are_missing() -> None:
    # A policy validated by its model never names one; one made otherwise still answers.
    tests = compile_tests(["event.name == 'x'", "event is undefined"], ("user", "message"))
    assert tests(USERS[0], MESSAGE) == (False, True)


def test_source_text_cannot_escape_into_the_generated_code() -> None:
    tricky = "user[\"a') or __import__('os').system('false') or ('\"] == 1"
    tests = compile_tests([tricky, "'\\'' in user.id"], ("user", "message"))
    assert tests(USERS[0], MESSAGE) == (False, False)
