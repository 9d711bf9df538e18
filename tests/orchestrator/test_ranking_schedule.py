"""Scheduled retraining on the Temporal dev server: the schedule starts a run, the
worker trains a version from the stored events; with `--when drift`, only when the
stream has drifted from the active version's training."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, ScheduleActionExecutionStartWorkflow
from temporalio.testing import WorkflowEnvironment

from orchestrator.catalog import CatalogItem, load_items
from orchestrator.ranking.schedule import schedule_retraining
from tests.conftest import StackFactory
from tests.orchestrator.test_ranking_drift import (
    LIVE_DAYS,
    ORDERS_A_DAY,
    TRAINING_DAYS,
    live_start,
    shifted,
    steady,
    store,
    trained_version,
)
from tests.support.db import rows
from tests.support.stack import eventually
from tests.support.workspace import NOOP
from workflows.retraining import SCHEDULE_ID, RetrainRanking, RetrainResult


async def test_a_scheduled_run_trains_a_version_from_the_stored_events(
    make_stack: StackFactory, engine: AsyncEngine, dev_server: WorkflowEnvironment
) -> None:
    stack = await make_stack({"noop": NOOP}, env=dev_server)
    await load_items(
        engine, [CatalogItem(id=f"SKU-{i}", name=f"Item {i % 5}", price=i) for i in range(1, 30)]
    )
    start = datetime(2026, 1, 1, tzinfo=UTC)
    orders = [
        {"id": f"order-{n}", "user": f"user-{n % 40}", "at": start + timedelta(hours=n),
         "props": orjson.dumps({"products": [{"product_id": f"SKU-{1 + (n * 5 + j) % 29}"}
                                             for j in range(3)]}).decode()}
        for n in range(400)
    ]  # fmt: skip
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO events (message_id, source, type, event, user_id, properties,"
                " timestamp, received_at) VALUES (:id, 'test', 'track', 'Order Completed',"
                " :user, CAST(:props AS jsonb), :at, :at)"
            ),
            orders,
        )
    client = stack.client
    queue = stack.services.settings.task_queue
    await schedule_retraining(client, every=timedelta(days=1), task_queue=queue)
    handle = client.get_schedule_handle(SCHEDULE_ID)
    try:
        # running it again changes the interval rather than failing
        await schedule_retraining(client, every=timedelta(hours=12), task_queue=queue)
        described = await handle.describe()
        assert described.schedule.spec.intervals[0].every == timedelta(hours=12)

        await handle.trigger()

        async def trained() -> bool:
            return bool(await rows(engine, "SELECT 1 FROM ranking_models"))

        await eventually(trained, timeout=60)
        [version] = await rows(engine, "SELECT source, purchases, items FROM ranking_models")
        assert version == {"source": "events (scheduled)", "purchases": 1200, "items": 29}
    finally:
        await handle.delete()


async def scheduled_run(client: Client, runs: int) -> RetrainResult:
    """Trigger the schedule and wait for its `runs`-th run's result."""
    handle = client.get_schedule_handle(SCHEDULE_ID)
    await handle.trigger()

    async def started() -> bool:
        return len((await handle.describe()).info.recent_actions) >= runs

    await eventually(started, timeout=30)
    action = (await handle.describe()).info.recent_actions[runs - 1].action
    assert isinstance(action, ScheduleActionExecutionStartWorkflow)
    run = client.get_workflow_handle_for(
        RetrainRanking.run, action.workflow_id, run_id=action.first_execution_run_id
    )
    return await asyncio.wait_for(run.result(), 120)


async def test_a_drift_schedule_trains_only_when_the_stream_has_drifted(
    make_stack: StackFactory, engine: AsyncEngine, dev_server: WorkflowEnvironment
) -> None:
    stack = await make_stack({"noop": NOOP}, env=dev_server)
    now = datetime.now(UTC)
    version = await trained_version(engine, now)
    async with engine.begin() as conn:  # trained before the cooldown
        await conn.execute(text("UPDATE ranking_models SET created_at = now() - interval '2d'"))
    await store(engine, steady(live_start(now), LIVE_DAYS, prefix="live", seed=8))
    client = stack.client
    queue = stack.services.settings.task_queue
    await schedule_retraining(
        client, every=timedelta(days=1), task_queue=queue, when="drift",
        check_every=timedelta(hours=1),
    )  # fmt: skip
    handle = client.get_schedule_handle(SCHEDULE_ID)
    try:
        described = await handle.describe()
        assert described.schedule.spec.intervals[0].every == timedelta(hours=1)
        # an undrifted stream: the run measures and trains nothing
        quiet = await scheduled_run(client, 1)
        assert quiet.decision == "skipped"
        assert quiet.reason.startswith(f"version {version}: no drift (item popularity PSI")
        assert quiet.drift is not None
        assert quiet.drift.status == "steady"
        assert len(await rows(engine, "SELECT 1 FROM ranking_models")) == 1
        # the live week shifts to formerly rare items, new items and new users
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM events WHERE message_id LIKE 'live-%'"))
        await store(engine, shifted(live_start(now), LIVE_DAYS, seed=9))
        drifted = await scheduled_run(client, 2)
        assert drifted.decision == "trained"
        assert drifted.reason.startswith(f"version {version}'s input drifted: item popularity")
        assert drifted.outcome is not None
        assert drifted.outcome.startswith(f"version {version + 1}: ")
        [new] = await rows(
            engine, "SELECT source, purchases FROM ranking_models WHERE version > :v",
            v=version,
        )  # fmt: skip
        lines = (TRAINING_DAYS + LIVE_DAYS) * ORDERS_A_DAY * 2
        assert new == {"source": "events (scheduled: drift)", "purchases": lines}
    finally:
        await handle.delete()
