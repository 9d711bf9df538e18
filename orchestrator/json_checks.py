"""Input from outside we refuse to store: NUL characters, deep nesting, absurd times.

Postgres stores neither a NUL character in text nor `\\u0000` in jsonb, and deeply
nested JSON runs parsers and serialisers out of stack (orjson refuses to serialise past
254 levels). Every JSON body from outside is checked here before it is used.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator

# Deeper JSON than this is refused: real events nest a few levels.
MAX_DEPTH = 32


def problem(value: Any, where: str = "") -> tuple[str, str] | None:
    """The first field of parsed JSON we refuse, as (field, message), or None."""
    stack: list[tuple[Any, str, int]] = [(value, where, 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return path, "must not contain a NUL character (\\u0000)"
            continue
        if not isinstance(item, dict | list):
            continue
        if depth > MAX_DEPTH:
            return path, f"is nested more than {MAX_DEPTH} levels deep"
        children: list[tuple[Any, str, int]] = []
        if isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in key:
                    shown = key.replace("\x00", "\\u0000")
                    return path, f"key '{shown}' must not contain a NUL character"
                children.append((child, f"{path}.{key}" if path else key, depth + 1))
        else:
            children = [(child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item)]
        stack.extend(reversed(children))  # the first problem in document order is reported
    return None


# Real time zones lie within these offsets (Postgres refuses wider ones), and nothing we
# are told about happened before 1970.
MAX_OFFSET = timedelta(hours=14)
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)


def sane_instant(value: datetime) -> datetime:
    """A timestamp from outside, made aware (UTC if naive); ValueError if it is absurd."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    offset = value.utcoffset()
    if offset is not None and abs(offset) > MAX_OFFSET:
        raise ValueError("the UTC offset must be within ±14:00")
    if value < EARLIEST:
        raise ValueError("must not be before 1970-01-01")
    return value


Instant = Annotated[datetime, AfterValidator(sane_instant)]
