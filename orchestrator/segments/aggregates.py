"""The state each computed trait keeps per user, updated one event at a time.

Pure functions over JSON-able state (timestamps are seconds since 1970):

- `apply(trait, state, at, properties)`: fold one event in, in any arrival order;
- `value(trait, state, now)`: the trait's value at `now` (None: the user has none);
- `next_change(trait, state, now)`: when the value next changes with no event (a
  window lets an event go, a day passes for `days_since`, a sequence's deadline), or
  None when it only changes with events.

All-time aggregates keep running totals, so an event costs the same whatever the
history. A window keeps the events inside it (at most `MAX_ENTRIES`, the oldest go
first); a half-life keeps one decayed total, referred to the newest event.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from orchestrator.segments.definitions import Trait

State = dict[str, Any]
MAX_ENTRIES = 10_000  # events kept per windowed trait and user
MAX_VALUES = 1_000  # distinct values kept per trait and user
DAY = 86_400.0
# A decayed total is materialised again after it has lost this share of its value.
DECAY_STEP = 0.05
NEGLIGIBLE = 1e-3


def lookup(properties: Mapping[str, Any], path: str) -> Any:
    """`properties` at a dotted path, or None."""
    value: Any = properties
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def key_of(value: Any) -> str | None:
    """A scalar property value as a stable key (lists and objects are not counted)."""
    if isinstance(value, str | int | bool) or (isinstance(value, float) and math.isfinite(value)):
        return orjson.dumps(value).decode()
    return None


def apply(trait: Trait, state: State | None, at: float, name: str, properties: Mapping[str, Any]
          ) -> State:  # fmt: skip
    """Fold in one event named `name` at time `at` (the trait's filter has passed)."""
    state = dict(state or {})
    if trait.sequence is not None:
        return _apply_sequence(trait, state, at, name)
    kind, over = trait.kind, trait.over
    assert over is not None
    raw = lookup(properties, over.property) if over.property else None
    if kind in ("first_time", "last_time", "days_since"):
        state["first"] = min(state.get("first", at), at)
        state["last"] = max(state.get("last", at), at)
        return state
    if kind in ("distinct_count", "most_frequent"):
        key = key_of(raw)
        if key is None:
            return state
        if over.half_life is not None:
            return _decay_add(state, at, over.half_life.total_seconds(), key)
        if over.window is not None and kind == "distinct_count":
            seen = state.setdefault("seen", {})
            if key in seen or len(seen) < MAX_VALUES:
                seen[key] = max(seen.get(key, at), at)
            return state
        if over.window is None:
            counts = state.setdefault("by", {})
            if key in counts or len(counts) < MAX_VALUES:
                counts[key] = counts.get(key, 0) + 1
            return state
        return _window_add(state, at, key)
    amount = number(raw) if over.property else 1.0
    if kind != "count" and amount is None:
        return state
    assert amount is not None
    if over.half_life is not None:
        return _decay_add(state, at, over.half_life.total_seconds(), None, amount)
    if over.window is not None:
        return _window_add(state, at, amount)
    state["n"] = state.get("n", 0) + 1
    state["sum"] = state.get("sum", 0.0) + amount
    state["min"] = min(state.get("min", amount), amount)
    state["max"] = max(state.get("max", amount), amount)
    return state


def prune(trait: Trait, state: State | None, now: float) -> State | None:
    """Drop what a window no longer holds (keeps state small between events)."""
    over = trait.over
    if state is None or over is None or over.window is None:
        return state
    start = now - over.window.total_seconds()
    if "entries" in state:
        entries = state["entries"]
        cut = bisect.bisect_right(entries, start, key=lambda e: e[0])
        if cut:
            state = {**state, "entries": entries[cut:]}
    if "seen" in state:
        state = {**state, "seen": {k: t for k, t in state["seen"].items() if t > start}}
    return state


def value(trait: Trait, state: State | None, now: float) -> Any:
    """The trait's value at `now`; None when the user has none (it reads as missing)."""
    kind, state = trait.kind, state or {}
    if trait.sequence is not None:
        return _sequence_value(trait, state, now)
    over = trait.over
    assert over is not None
    if kind in ("first_time", "last_time"):
        at = state.get("first" if kind == "first_time" else "last")
        return None if at is None else _iso(at)
    if kind == "days_since":
        last = state.get("last")
        return None if last is None else max(0, math.floor((now - last) / DAY))
    if over.half_life is not None:
        return _decayed_value(kind, state, now, over.half_life.total_seconds())
    if over.window is not None:
        start = now - over.window.total_seconds()
        if kind == "distinct_count":
            return sum(1 for t in state.get("seen", {}).values() if t > start)
        inside = [e[1] for e in state.get("entries", []) if e[0] > start]
        return _summary(kind, inside)
    if kind == "distinct_count":
        return len(state.get("by", {}))
    if kind == "most_frequent":
        return _most_frequent(state.get("by", {}))
    n = state.get("n", 0)
    if kind == "count":
        return n
    if kind == "sum":
        return state.get("sum", 0.0)
    if not n:
        return None
    if kind == "average":
        return state["sum"] / n
    return state[kind]  # min, max


def next_change(trait: Trait, state: State | None, now: float) -> float | None:
    """The next time the value changes with no event, or None."""
    state = state or {}
    if trait.sequence is not None:
        first, within = state.get("first"), trait.sequence.within.total_seconds()
        if trait.sequence.then_not is None or first is None or now >= first + within:
            return None
        return None if _followed(state, first, within) else first + within
    over = trait.over
    assert over is not None
    if trait.kind == "days_since":
        last = state.get("last")
        if last is None:
            return None
        return float(last + (max(0, math.floor((now - last) / DAY)) + 1) * DAY)
    if over.half_life is not None:
        if trait.kind in ("most_frequent", "average"):
            return None  # every weight decays alike: the value does not change
        current = _decayed_value("sum" if trait.kind == "sum" else "count", state, now,
                                 over.half_life.total_seconds())  # fmt: skip
        if not current or abs(current) < NEGLIGIBLE:
            return None
        return now + over.half_life.total_seconds() * math.log2(1 / (1 - DECAY_STEP))
    if over.window is not None:
        span = over.window.total_seconds()
        times = list(state.get("seen", {}).values()) or [e[0] for e in state.get("entries", [])]
        later = [t + span for t in times if t + span > now]
        return min(later) if later else None
    return None


# ---- windows ---------------------------------------------------------------


def _window_add(state: State, at: float, item: Any) -> State:
    entries = list(state.get("entries", []))
    bisect.insort(entries, [at, item], key=lambda e: e[0])
    state["entries"] = entries[-MAX_ENTRIES:]
    return state


def _summary(kind: str, items: list[Any]) -> Any:
    if kind == "count":
        return len(items)
    if kind == "most_frequent":
        counts: dict[str, int] = {}
        for key in items:
            counts[key] = counts.get(key, 0) + 1
        return _most_frequent(counts)
    if kind == "sum":
        return float(sum(items))
    if not items:
        return None
    if kind == "average":
        return sum(items) / len(items)
    return min(items) if kind == "min" else max(items)


def _most_frequent(weights: Mapping[str, float]) -> Any:
    """The value with the most weight; a tie goes to the smallest (a stable answer)."""
    if not weights:
        return None
    best = min(weights, key=lambda k: (-weights[k], k))
    return orjson.loads(best)


# ---- half-lives ------------------------------------------------------------


def _decay_add(
    state: State, at: float, half_life: float, key: str | None, amount: float = 1.0
) -> State:
    """Add a weight of 1 (and `amount`) at time `at` to totals referred to `state['t']`."""
    ref = state.get("t", at)
    if at > ref:  # a newer event: refer everything to it
        shrink = 2 ** ((ref - at) / half_life)
        state["c"] = state.get("c", 0.0) * shrink
        state["s"] = state.get("s", 0.0) * shrink
        if "by" in state:
            state["by"] = {k: w * shrink for k, w in state["by"].items()}
        ref = at
    weight = 2 ** ((at - ref) / half_life)
    state["t"] = ref
    if key is not None:
        by = state.setdefault("by", {})
        if key in by or len(by) < MAX_VALUES:
            by[key] = by.get(key, 0.0) + weight
        return state
    state["c"] = state.get("c", 0.0) + weight
    state["s"] = state.get("s", 0.0) + weight * amount
    return state


def _decayed_value(kind: str, state: State, now: float, half_life: float) -> Any:
    if kind == "most_frequent":
        return _most_frequent(state.get("by", {}))
    if "t" not in state:
        return None if kind == "average" else 0.0
    factor = 2 ** ((state["t"] - now) / half_life)
    if kind == "count":
        return state["c"] * factor
    if kind == "sum":
        return state["s"] * factor
    return state["s"] / state["c"] if state["c"] else None  # average: the factor cancels


# ---- sequences -------------------------------------------------------------


def _apply_sequence(trait: Trait, state: State, at: float, name: str) -> State:
    sequence = trait.sequence
    assert sequence is not None
    first = state.get("first")
    if name == sequence.first and (first is None or at > first):
        state["first"] = first = at
        state["then"] = [t for t in state.get("then", []) if t >= at]
    if name in (sequence.then, sequence.then_not) and (first is None or at >= first):
        followers = list(state.get("then", []))
        bisect.insort(followers, at)
        state["then"] = followers[:100]  # only the earliest after `first` matters
    return state


def _followed(state: State, first: float, within: float) -> bool:
    return any(first <= t <= first + within for t in state.get("then", []))


def _sequence_value(trait: Trait, state: State, now: float) -> bool:
    sequence, first = trait.sequence, state.get("first")
    assert sequence is not None
    if first is None:
        return False
    within = sequence.within.total_seconds()
    if sequence.then is not None:
        return _followed(state, first, within)
    return now >= first + within and not _followed(state, first, within)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()
