"""The example workspace on the real Temporal dev server, fed by Segment's own client library."""

from __future__ import annotations

import asyncio
from pathlib import Path

from segment.analytics import Client as SegmentClient
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from orchestrator.catalog import load_items, read_items
from tests.support.db import enrollments
from tests.support.receiver import Receiver
from tests.support.stack import eventually, running_stack

# The example backend's key: it may set email addresses (a public key may not).
WRITE_KEY = "wk_dev_backend_c04b6d"


async def listed(client: Client, query: str) -> list[str]:
    return [w.id async for w in client.list_workflows(query)]


async def test_example_journeys_end_to_end(
    dev_server: WorkflowEnvironment,
    engine: AsyncEngine,
    postgres_url: str,
    receiver: Receiver,
    example: Path,
) -> None:
    client = dev_server.client
    await load_items(engine, read_items(example / "catalog.csv"))
    async with running_stack(
        client=client, engine=engine, database_url=postgres_url, workspace=example
    ) as stack:
        segment = SegmentClient(
            WRITE_KEY, host=stack.api_url, sync_mode=True, max_retries=0, gzip=True
        )
        errors: list[Exception] = []
        segment.on_error = lambda error, _items: errors.append(error)

        def send_with_segment() -> None:
            segment.identify(
                "ada",
                {
                    "first_name": "Ada",
                    "email": "ada@example.com",
                    "orders_count": 0,
                    "timezone": "Europe/Paris",
                },
            )
            segment.track("ada", "Signed Up", {"plan": "free"})
            segment.track("ada", "Demo Requested")

        await asyncio.to_thread(send_with_segment)
        assert errors == []

        # the welcome email arrives at once, signed
        await receiver.wait_for(lambda rs: any(r.path == "/email" for r in rs))
        [welcome] = receiver.at("/email")
        assert welcome.verified
        content = welcome.json["data"]["content"]
        assert content["subject"] == "Welcome to Northwind, Ada"
        # three catalogue items filled by the popularity baseline (no model configured)
        assert content["html"].count('<li><a href="https://shop.example.com/p/NW-') == 3
        assert content["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

        # ops find the user's journeys in Temporal by journey, user, step and status
        waiting = (
            "JourneyKey = 'welcome_series' AND UserId = 'ada' "
            "AND JourneyStep = 'settle_in' AND JourneyStatus = 'waiting'"
        )
        await eventually(lambda: _found(client, waiting, ["journey:welcome_series:ada"]))
        handle = stack.handle("welcome_series", "ada")
        description = await handle.describe()
        assert await description.static_summary() == "Welcome series v1 · user ada"
        assert "entered on `Signed Up`" in (await description.static_details() or "")
        metadata = await handle.query("__temporal_workflow_metadata")
        # the UI's "current details" say where the user is and why
        assert "At `settle_in`: waiting until" in metadata.current_details
        assert "Path: welcome → home_page → inbox_hello → settle_in" in metadata.current_details

        # a real two-second timer on the dev server, then an in-app message
        await receiver.wait_for(
            lambda rs: any(
                r.path == "/in_app" and r.json["data"]["metadata"]["journey"] == "quick_follow_up"
                for r in rs
            ),
            timeout=30,
        )
        assert (await stack.result("quick_follow_up", "ada")).status == "completed"

        # buying ends the welcome series as converted
        await asyncio.to_thread(segment.track, "ada", "Order Completed", {"total": 80})
        result = await stack.result("welcome_series", "ada")
        assert (result.status, result.end_reason) == ("converted", "goal Order Completed")
        # (other tests on the session's dev server convert users of their own)
        converted = (
            "JourneyKey = 'welcome_series' AND UserId = 'ada' AND JourneyStatus = 'converted'"
        )
        await eventually(lambda: _found(client, converted, ["journey:welcome_series:ada"]))
        statuses = {
            e["journey_key"]: e["status"] for e in await enrollments(engine, "welcome_series")
        }
        assert statuses == {"welcome_series": "converted"}


async def _found(client: Client, query: str, expected: list[str]) -> bool:
    return await listed(client, query) == expected
