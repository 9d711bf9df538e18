"""Scheduled retraining on the Temporal dev server: the schedule starts a run, the
worker trains a version from the stored events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from orchestrator.catalog import CatalogItem, load_items
from orchestrator.ranking.schedule import schedule_retraining
from tests.conftest import StackFactory
from tests.support.db import rows
from tests.support.stack import eventually
from workflows.retraining import SCHEDULE_ID

NOOP = """
journey: noop
name: Noop
trigger: {event: Never Happens}
start: done
steps:
  done:
    exit: {}
"""


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
