"""Input from outside we refuse to store: NUL characters, deep nesting, absurd times.

Postgres stores neither a NUL character in text nor `\\u0000` in jsonb, and deeply
nested JSON runs parsers and serialisers out of stack (orjson refuses to serialise past
254 levels). Every JSON body from outside is checked here before it is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator

# Deeper JSON than this is refused: real events nest a few levels.
MAX_DEPTH = 32
# A tuple, not `dict | list`: isinstance with a union type is three times slower, and
# this runs for every value of every message.
_CONTAINERS = (dict, list)


# A field is named with at most this much of each key (a key can be 100 KB long).
_SHOWN_KEY = 60


@dataclass(frozen=True, slots=True)
class _At:
    """Where a value sits: its container's place and its key or index. The path is
    spelt out only for the one value reported, so walking costs no strings."""

    parent: _At | None
    part: str | int

    def field(self, where: str) -> str:
        parts: list[str | int] = []
        at: _At | None = self
        while at is not None:
            parts.append(at.part)
            at = at.parent
        name = where
        for part in reversed(parts):
            if isinstance(part, int):
                name += f"[{part}]"
            else:
                shown = part if len(part) <= _SHOWN_KEY else part[:_SHOWN_KEY] + "..."
                name += f".{shown}" if name else shown
        return name


def problem(value: Any, where: str = "", *, nul_free: bool = False) -> tuple[str, str] | None:
    """A field of parsed JSON we refuse (the shallowest first), as (field, message).

    Linear in the size of the document, and cheap per value: scalars are checked where
    they stand, and only containers (to be walked later) carry their place.
    `nul_free`: the caller knows no string holds a NUL (the JSON text it was parsed
    from has no `\\u0000`, see `nul_free`), so only the nesting is checked."""
    # With `nul_free`, containers only are walked, with no place kept; the full walk
    # names the field of the rare document it refuses.
    if nul_free and (not isinstance(value, _CONTAINERS) or not _deeper_than(value, MAX_DEPTH - 1)):
        return None
    stack: list[tuple[Any, _At | None, int]] = [(value, None, 1)]
    while stack:
        item, at, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return _field(at, where), NUL
            continue
        if not isinstance(item, _CONTAINERS):
            continue
        if depth > MAX_DEPTH:
            return _field(at, where), f"is nested more than {MAX_DEPTH} levels deep"
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        nested: list[tuple[Any, _At | None, int]] = []
        for part, child in pairs:
            if isinstance(part, str) and "\x00" in part:
                shown = part[:_SHOWN_KEY].replace("\x00", "\\u0000")
                return _field(at, where), f"key '{shown}' must not contain a NUL character"
            if isinstance(child, str):
                if "\x00" in child:
                    return _field(_At(at, part), where), NUL
            elif isinstance(child, _CONTAINERS):
                nested.append((child, _At(at, part), depth + 1))
        stack.extend(reversed(nested))  # the first problem in document order is reported
    return None


NUL = "must not contain a NUL character (\\u0000)"


def nul_free(text: bytes) -> bool:
    """Whether JSON text can hold no NUL character once parsed: JSON spells one only
    as the escape `\\u0000` (a raw control character is invalid JSON)."""
    return b"\\u0000" not in text and b"\x00" not in text


def _deeper_than(item: Any, levels: int) -> bool:
    """Whether a container holds containers more than `levels` deep below it."""
    for child in item.values() if isinstance(item, dict) else item:
        if isinstance(child, _CONTAINERS) and (levels == 0 or _deeper_than(child, levels - 1)):
            return True
    return False


def _field(at: _At | None, where: str) -> str:
    return at.field(where) if at is not None else where


# Real time zones lie within these offsets (Postgres refuses wider ones), and nothing we
# are told about happened before 1970.
MAX_OFFSET = timedelta(hours=14)
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_YEAR = 9000


def sane_instant(value: datetime) -> datetime:
    """A timestamp from outside, made aware (UTC if naive); ValueError if it is absurd."""
    # The year first: near year 1 or 9999, converting to UTC overflows.
    if not 1970 <= value.year <= LATEST_YEAR:
        raise ValueError(f"must be between 1970 and {LATEST_YEAR}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    offset = value.utcoffset()
    if offset is not None and abs(offset) > MAX_OFFSET:
        raise ValueError("the UTC offset must be within ±14:00")
    if value < EARLIEST:
        raise ValueError("must not be before 1970-01-01")
    return value


Instant = Annotated[datetime, AfterValidator(sane_instant)]
