"""Durations as marketers write them: `90s`, `15m`, `2h`, `3d`, `1w`, `1d12h`."""

from __future__ import annotations

import re
from datetime import timedelta
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema
from pydantic.json_schema import GenerateJsonSchema

_PART = re.compile(r"(\d+)\s*(w|d|h|m|s)")
_WHOLE = re.compile(r"^\s*(\d+\s*(w|d|h|m|s)\s*)+$")
_UNIT_SECONDS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


class DurationError(ValueError):
    """The text is not a duration we understand."""


def parse_duration(text: str) -> timedelta:
    """Parse `2h`, `1d12h` or `45m` into a timedelta; raise DurationError otherwise."""
    if not isinstance(text, str) or not _WHOLE.match(text):
        raise DurationError(
            f"{text!r} is not a duration: use a number and a unit, like 30m, 2h, 3d, 1w or 1d12h"
        )
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(text))
    if seconds <= 0:
        raise DurationError(f"{text!r} is not a positive duration")
    return timedelta(seconds=seconds)


@lru_cache(maxsize=256)
def format_duration(value: timedelta) -> str:
    """Render a timedelta back in the compact form, e.g. `1d12h`."""
    seconds = int(value.total_seconds())
    parts = []
    for unit in ("w", "d", "h", "m", "s"):
        n, seconds = divmod(seconds, _UNIT_SECONDS[unit])
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts) or "0s"


def _as_duration(value: Any) -> timedelta:
    return value if isinstance(value, timedelta) else parse_duration(value)


DURATION_SCHEMA = {"type": "string", "pattern": r"^(\d+\s*[wdhms]\s*)+$",
                   "examples": ["30m", "24h", "7d"]}  # fmt: skip

Duration = Annotated[
    timedelta,
    BeforeValidator(_as_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(DURATION_SCHEMA),
]
"""A field written like `30m`, `2h`, `3d`, `1w` or `1d12h` in journeys and policies."""


class DurationDefaults(GenerateJsonSchema):
    """JSON Schema generation that writes duration defaults as people write them
    (`30d`), not as ISO 8601 (`P30D`), which the pattern above would refuse."""

    def encode_default(self, dft: Any) -> Any:
        if isinstance(dft, timedelta):
            return format_duration(dft)
        return super().encode_default(dft)
