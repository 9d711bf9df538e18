"""`orchestrator tracking-plan infer`: a plan proposed from the events stored so far.

For each track event name (and identify traits) over the period: each top-level
property's JSON types (an integer when every number was whole), `required` for those
present in every message, and an `enum` for a string property that took few distinct
values over many messages. Counting happens in Postgres (one pass per question over
the period's events); the result is a plan in `report` mode, to read and edit before
deploying it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from io import StringIO
from typing import Any

from ruamel.yaml import YAML
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# An enum is proposed for a string property with at most this many values, each...
ENUM_MAX_VALUES = 10
# ...seen over at least this many messages (fewer say little about the set).
ENUM_MIN_MESSAGES = 20

_TOTALS = text("""
    SELECT type, coalesce(event, '') AS event, count(*) AS n
    FROM events
    WHERE received_at >= :since AND (type = 'track' OR (type = 'identify' AND traits <> '{}'))
    GROUP BY 1, 2
""")
# The JSON types of each top-level key, and how many of its numbers were whole.
_KEYS = text("""
    SELECT e.type, coalesce(e.event, '') AS event, kv.key, jsonb_typeof(kv.value) AS kind,
           count(*) AS n,
           count(*) FILTER (WHERE jsonb_typeof(kv.value) = 'number'
                            AND (kv.value #>> '{}')::numeric % 1 = 0) AS whole,
           count(DISTINCT kv.value #>> '{}') FILTER (WHERE jsonb_typeof(kv.value) = 'string')
             AS distinct_strings
    FROM events e,
         jsonb_each(CASE WHEN e.type = 'track' THEN e.properties ELSE e.traits END) kv
    WHERE e.received_at >= :since AND e.type IN ('track', 'identify')
    GROUP BY 1, 2, 3, 4
""")
_VALUES = text("""
    SELECT e.type, coalesce(e.event, '') AS event, kv.key,
           array_agg(DISTINCT kv.value #>> '{}' ORDER BY kv.value #>> '{}') AS values_seen
    FROM events e,
         jsonb_each(CASE WHEN e.type = 'track' THEN e.properties ELSE e.traits END) kv
    WHERE e.received_at >= :since AND e.type IN ('track', 'identify')
      AND jsonb_typeof(kv.value) = 'string'
      AND (e.type, coalesce(e.event, ''), kv.key) IN (
          SELECT * FROM unnest(CAST(:types AS text[]), CAST(:events AS text[]),
                               CAST(:keys AS text[])))
    GROUP BY 1, 2, 3
""")


@dataclass
class _Property:
    kinds: dict[str, int] = field(default_factory=dict)
    whole: int = 0
    distinct_strings: int = 0
    values: list[str] | None = None

    @property
    def seen(self) -> int:
        return sum(self.kinds.values())

    def schema(self) -> dict[str, Any]:
        types = []
        for kind in sorted(self.kinds):
            if kind == "number" and self.whole == self.kinds[kind]:
                types.append("integer")
            else:
                types.append(kind)
        found: dict[str, Any] = {"type": types[0] if len(types) == 1 else types}
        if self.values is not None:
            found["enum"] = [*self.values, *([None] if "null" in self.kinds else [])]
        return found


async def infer(conn: AsyncConnection, *, since: datetime) -> dict[str, Any]:
    """A tracking plan (as the file's data) for the events received since `since`."""
    totals = {(r.type, r.event): r.n for r in await conn.execute(_TOTALS, {"since": since})}
    found: dict[tuple[str, str], dict[str, _Property]] = {key: {} for key in totals}
    for r in await conn.execute(_KEYS, {"since": since}):
        prop = found.setdefault((r.type, r.event), {}).setdefault(r.key, _Property())
        prop.kinds[r.kind] = r.n
        prop.whole += r.whole
        prop.distinct_strings += r.distinct_strings
    few = [
        (kind, event, key)
        for (kind, event), props in found.items()
        for key, prop in props.items()
        if set(prop.kinds) <= {"string", "null"} and "string" in prop.kinds
        and prop.distinct_strings <= ENUM_MAX_VALUES
        and prop.kinds["string"] >= ENUM_MIN_MESSAGES
    ]  # fmt: skip
    if few:
        params = {"since": since, "types": [f[0] for f in few], "events": [f[1] for f in few],
                  "keys": [f[2] for f in few]}  # fmt: skip
        for r in await conn.execute(_VALUES, params):
            found[(r.type, r.event)][r.key].values = list(r.values_seen)
    events = {
        event: _object(props, totals[("track", event)])
        for (kind, event), props in sorted(found.items())
        if kind == "track" and event and (kind, event) in totals
    }
    plan: dict[str, Any] = {"mode": "report", "unplanned_events": "report", "events": events}
    if ("identify", "") in totals:
        plan["identify"] = _object(found[("identify", "")], totals[("identify", "")])
    return plan


def _object(props: dict[str, _Property], total: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    if props:
        schema["properties"] = {key: props[key].schema() for key in sorted(props)}
    required = sorted(key for key, prop in props.items() if prop.seen == total)
    if required:
        schema["required"] = required
    return schema


def as_yaml(plan: dict[str, Any], *, since: datetime, now: datetime) -> str:
    """The proposed plan as `tracking_plan.yaml`, with a header saying where it came from."""
    out = StringIO()
    out.write(
        f"# Proposed by `orchestrator tracking-plan infer` on {now:%Y-%m-%d %H:%M} UTC from\n"
        f"# the events received since {since:%Y-%m-%d %H:%M} UTC. Read it, tighten it\n"
        "# (formats, minimums, descriptions), then deploy it with `orchestrator journeys\n"
        "# deploy`; switch to `mode: enforce` once the violations stop.\n"
    )
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 100
    yaml.dump(plan, out)
    return out.getvalue()
