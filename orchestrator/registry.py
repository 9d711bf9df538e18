"""What ingestion needs to know about deployed journeys, cached and refreshed on change."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.segments.definitions import Current, deployed
from orchestrator.tables import journey_versions, journeys, segment_definitions, tracking_plans
from orchestrator.tracking_plan.store import DeployedPlan, deployed_plan
from workflows.messages import DeployedJourney


@dataclass(frozen=True)
class Snapshot:
    """Deployed journeys, indexed by the events that matter to them."""

    # Current versions of active journeys, by trigger event: these start new users.
    by_trigger: dict[str, list[DeployedJourney]] = field(default_factory=dict)
    # Journey keys whose running users may care about an event (any version ever
    # deployed, since a user finishes on the version they entered).
    interested: dict[str, set[str]] = field(default_factory=dict)
    versions: dict[tuple[str, int], DeployedJourney] = field(default_factory=dict)
    # The computed traits and segments in force.
    computed: Current = field(default_factory=Current)
    # Current versions of active journeys that enter a segment's members on a schedule,
    # with when each was deployed.
    audiences: list[tuple[DeployedJourney, datetime]] = field(default_factory=list)
    # The tracking plan in force, its schemas compiled.
    tracking_plan: DeployedPlan = field(default_factory=DeployedPlan)

    def routes(self, event: str | None) -> bool:
        """Whether an event needs routing at all (most do not, and never touch Temporal)."""
        return event is not None and (event in self.by_trigger or event in self.interested)


class JourneyRegistry:
    """Reloads the snapshot when a deploy changed the journeys table; checks at most every `ttl`."""

    def __init__(
        self, engine: AsyncEngine, *, ttl: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.engine, self.ttl, self.clock = engine, ttl, clock
        self._snapshot = Snapshot()
        self._fingerprint: tuple[object, ...] | None = None
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()

    async def snapshot(self) -> Snapshot:
        if self.clock() - self._checked_at < self.ttl:
            return self._snapshot
        async with self._lock:
            if self.clock() - self._checked_at >= self.ttl:
                await self._refresh()
        return self._snapshot

    async def reload(self) -> Snapshot:
        """Refresh now (after a deploy in this process)."""
        async with self._lock:
            await self._refresh(force=True)
        return self._snapshot

    async def _refresh(self, *, force: bool = False) -> None:
        async with self.engine.connect() as conn:
            fingerprint = tuple(
                (
                    await conn.execute(
                        select(
                            func.count(), func.max(journeys.c.updated_at),
                            func.sum(journeys.c.current_version),
                            select(func.max(segment_definitions.c.version)).scalar_subquery(),
                            select(func.max(tracking_plans.c.version)).scalar_subquery(),
                        )
                    )
                ).one()
            )  # fmt: skip
            if force or fingerprint != self._fingerprint:
                rows = await conn.execute(
                    select(
                        journey_versions.c.journey_key,
                        journey_versions.c.version,
                        journey_versions.c.spec,
                        journey_versions.c.templates,
                        journeys.c.current_version,
                        journeys.c.active,
                        journey_versions.c.deployed_at,
                    ).join(journeys, journeys.c.key == journey_versions.c.journey_key)
                )
                plan = await deployed_plan(conn)
                if plan.plan is not None:  # compiled here, once, not on a request
                    plan.plan.compile()
                self._snapshot = _index(rows.all(), await deployed(conn), plan)
                self._fingerprint = fingerprint
        self._checked_at = self.clock()


def _index(
    rows: Sequence[Row[Any, Any, Any, Any, Any, Any, Any]], computed: Current, plan: DeployedPlan
) -> Snapshot:
    by_trigger: dict[str, list[DeployedJourney]] = defaultdict(list)
    interested: dict[str, set[str]] = defaultdict(set)
    versions: dict[tuple[str, int], DeployedJourney] = {}
    audiences: list[tuple[DeployedJourney, datetime]] = []
    for row in rows:
        deployed = DeployedJourney.model_validate(
            {
                "key": row.journey_key,
                "version": row.version,
                "spec": row.spec,
                "templates": row.templates,
            }
        )
        versions[(deployed.key, deployed.version)] = deployed
        for name in deployed.spec.interesting_events():
            interested[name].add(deployed.key)
        trigger = deployed.spec.trigger.event
        if row.active and row.version == row.current_version:
            if trigger is not None:
                by_trigger[trigger].append(deployed)
            else:
                audiences.append((deployed, row.deployed_at))
    for journeys_list in by_trigger.values():
        journeys_list.sort(key=lambda j: (-j.spec.priority, j.key))
    return Snapshot(dict(by_trigger), dict(interested), versions, computed, audiences, plan)
