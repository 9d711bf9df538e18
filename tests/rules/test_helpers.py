"""The deterministic helpers the interpreter relies on."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from rules.durations import DurationError, format_duration, parse_duration
from rules.expressions import event_context, holds, syntax_error, user_context
from rules.local_time import next_local_time, zone
from workflows.assignment import in_holdout, pick_variant


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("15m", 900),
        ("2h", 7200),
        ("3d", 259200),
        ("1w", 604800),
        ("1d12h", 129600),
        ("1h 30m", 5400),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert parse_duration(format_duration(parse_duration(text))) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "2", "h", "2 hours", "0m", "-1h", "1.5h", "2y"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("now", "clock", "tz", "expected"),
    [
        # later today, and tomorrow once today's time has passed
        (
            datetime(2026, 6, 1, 7, 0, tzinfo=UTC),
            "09:00",
            LONDON,
            datetime(2026, 6, 1, 8, 0, tzinfo=UTC),
        ),
        (
            datetime(2026, 6, 1, 8, 0, tzinfo=UTC),
            "09:00",
            LONDON,
            datetime(2026, 6, 2, 8, 0, tzinfo=UTC),
        ),
        # across midnight in the user's zone, not ours
        (
            datetime(2026, 1, 15, 3, 0, tzinfo=UTC),
            "21:30",
            NEW_YORK,
            datetime(2026, 1, 16, 2, 30, tzinfo=UTC),
        ),
        # the night clocks go forward in London (29 March 2026, 01:00 -> 02:00)
        (
            datetime(2026, 3, 28, 12, 0, tzinfo=UTC),
            "09:00",
            LONDON,
            datetime(2026, 3, 29, 8, 0, tzinfo=UTC),
        ),
        # a wall time skipped by the change still resolves, just after the gap
        (
            datetime(2026, 3, 28, 12, 0, tzinfo=UTC),
            "01:30",
            LONDON,
            datetime(2026, 3, 29, 1, 30, tzinfo=UTC),
        ),
        # the night clocks go back (25 October 2026): 01:30 happens twice, first one wins
        (
            datetime(2026, 10, 24, 12, 0, tzinfo=UTC),
            "01:30",
            LONDON,
            datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
        ),
    ],
)
def test_next_local_time(now: datetime, clock: str, tz: ZoneInfo, expected: datetime) -> None:
    assert next_local_time(now, clock, tz) == expected


def test_zone_falls_back_to_the_default_then_utc() -> None:
    assert zone("Asia/Tokyo", "UTC").key == "Asia/Tokyo"
    assert zone(None, "Europe/Paris").key == "Europe/Paris"
    assert zone("Not/AZone", "Europe/Paris").key == "Europe/Paris"
    assert zone("Not/AZone", "Nor/This").key == "UTC"
    # a trait is whatever some system sent
    for sent in (123, 1.5, True, ["Europe/Paris"], {"name": "x"}, ""):
        assert zone(sent, "Europe/Paris").key == "Europe/Paris"


def test_variants_are_sticky_and_follow_weights() -> None:
    picks = [pick_variant("offer", f"user-{i}", [70, 30]) for i in range(20_000)]
    share = Counter(picks)[0] / len(picks)
    assert 0.68 < share < 0.72
    assert picks == [pick_variant("offer", f"user-{i}", [70, 30]) for i in range(20_000)]
    # a different experiment key reshuffles users independently
    other = [pick_variant("other", f"user-{i}", [70, 30]) for i in range(20_000)]
    assert sum(a != b for a, b in zip(picks, other, strict=True)) > 5_000


def test_holdout_share_and_stickiness() -> None:
    held = [in_holdout("welcome", f"user-{i}", 10) for i in range(20_000)]
    assert 0.09 < sum(held) / len(held) < 0.11
    assert held == [in_holdout("welcome", f"user-{i}", 10) for i in range(20_000)]
    assert not any(in_holdout("welcome", f"user-{i}", 0) for i in range(1000))


CONTEXT = {
    "user": user_context("u1", {"tier": "gold", "age": 40, "tags": ["vip"]}),
    "event": event_context("Cart Abandoned", {"total": 30, "items": [1, 2]}),
}


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("user.tier == 'gold'", True),
        ("user.age > 30 and event.properties.total >= 30", True),
        ("'vip' in user.tags", True),
        ("user.id == 'u1'", True),
        ("event.name == 'Cart Abandoned'", True),
        ("event.properties['items'] | length == 2", True),
        # missing attributes are falsy and compare false, never crash
        ("user.missing", False),
        ("user.missing.deeper > 3", False),
        ("user.missing < 3", False),
        ("not user.missing", True),
        ("user.missing * 2", False),
        (None, True),
    ],
)
def test_conditions(condition: str | None, expected: bool) -> None:
    assert holds(condition, CONTEXT) is expected


def test_sandbox_refuses_unsafe_access() -> None:
    assert holds("user.__class__.__mro__", CONTEXT) is False
    assert syntax_error("user.tier ==") is not None
    assert syntax_error("user.tier == 'gold'") is None


EQUIVALENCE = [
    "user.tier == 'gold'",
    "user.tier != 'gold' or user.age >= 40",
    "1 < user.age < 50",
    "user.age in [30, 40]",
    "'vip' not in user.tags",
    "event.properties['items'] | length",
    "event.properties.total * 2 - 1",
    "event.properties.total / 4",
    "event.properties.total // 4 + event.properties.total % 4",
    "-user.age",
    "user.tier | upper",
    "user.missing | default('none')",
    "user.missing is defined",
    "user.tier is string",
    "user.age if user.tier == 'gold' else 0",
    "(user.age, user.tier)",
    "user.missing.deeper.still",
    "not (user.age > 30)",
    "user['tier']",
    "user.tier ~ '!'",  # not compiled: falls back to Jinja2
]


@pytest.mark.parametrize("source", EQUIVALENCE)
def test_compiled_conditions_agree_with_jinja(source: str) -> None:
    from rules.expressions import ENVIRONMENT, evaluate

    expected = ENVIRONMENT.compile_expression(source, undefined_to_none=False)(**CONTEXT)
    got = evaluate(source, CONTEXT)
    if type(expected).__name__ == "Missing":
        assert type(got).__name__ == "Missing"
    else:
        assert got == expected
    assert holds(source, CONTEXT) == bool(expected)
