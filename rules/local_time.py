"""The next occurrence of a local time of day in a timezone, correct across DST changes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, WithJsonSchema

_CLOCK = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def _time_of_day(value: str) -> str:
    if not isinstance(value, str) or not _CLOCK.match(value):
        raise ValueError(f"{value!r} is not a time of day: use HH:MM, like 09:00")
    return value


TimeOfDay = Annotated[
    str,
    AfterValidator(_time_of_day),
    WithJsonSchema({"type": "string", "pattern": _CLOCK.pattern, "examples": ["09:00"]}),
]
"""A local time of day, `HH:MM`."""


def zone(name: object, default: str) -> ZoneInfo:
    """The named zone, else the default. A profile's `timezone` trait is whatever some
    system sent: a name that is unknown, or not text at all, falls back too."""
    if type(name) is str:  # every decision with quiet hours asks: remembered by name
        return _zone(name, default)
    return _find_zone(name, default)


@lru_cache(maxsize=1024)
def _zone(name: str, default: str) -> ZoneInfo:
    return _find_zone(name, default)


def _find_zone(name: object, default: str) -> ZoneInfo:
    for candidate in (name, default, "UTC"):
        if isinstance(candidate, str) and candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def next_local_time(now: datetime, clock: str, tz: ZoneInfo) -> datetime:
    """The first instant strictly after `now` when the wall clock in `tz` reads `clock`.

    A wall time that does not exist (skipped by a spring-forward change) resolves to
    the same offset as before the change, i.e. slightly later in real time; a wall
    time that happens twice resolves to the first.
    """
    hour, minute = (int(part) for part in clock.split(":"))
    local_now = now.astimezone(tz)
    for days in range(0, 3):
        day = local_now.date() + timedelta(days=days)
        candidate = datetime.combine(day, time(hour, minute), tzinfo=tz).astimezone(UTC)
        if candidate > now:
            return candidate
    raise AssertionError("unreachable: a time of day recurs within two days")
