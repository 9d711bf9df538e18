"""How long a preview on past traffic takes: a week of a shop's events replayed through
the example cart journey (and its deployed version beside it, as `journeys preview`
does), at two sizes in the same run so the ratio shows how it scales.

The week: each user has a profile (email, timezone; half have a push token), views
products (events no journey hears: the preview's query leaves them out), abandons
0-3 carts (each with its id and value) and completes an order after 40% of them,
within three hours; a fifth sign up. Events are stored straight into embedded
PostgreSQL with their arrival spread over the seven days.

    .venv/bin/python -m bench.preview [--users 5000 20000] [--views 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from orchestrator.database import create_engine, migrate
from orchestrator.deploy import deploy_workspace
from orchestrator.journey_tests.harness import workspace_catalog
from orchestrator.preview import Period, candidate, deployed_version, preview
from orchestrator.stack.postgres import EmbeddedPostgres
from orchestrator.workspace import load_workspace

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "retail"
WEEK = timedelta(days=7)


def week_of_traffic(
    users: int, views: int, until: datetime, seed: int = 7
) -> tuple[list[tuple[str, str]], list[tuple[object, ...]]]:
    """Profiles (user id, traits JSON) and event rows for a week ending at `until`."""
    rng = random.Random(seed)
    profiles, rows = [], []
    start = until - WEEK

    def at(when: datetime, user: str, name: str, properties: dict[str, object]) -> None:
        rows.append((str(uuid.uuid4()), "bench", "track", name, user,
                     json.dumps(properties), when, when))  # fmt: skip

    for n in range(users):
        user = f"shopper-{n}"
        traits: dict[str, object] = {"email": f"{user}@example.com", "first_name": "Sam",
                                     "timezone": "Europe/London"}  # fmt: skip
        if n % 2:
            traits["device_tokens"] = [f"token-{n}"]
        profiles.append((user, json.dumps(traits)))
        if rng.random() < 0.2:
            at(start + rng.random() * WEEK, user, "Signed Up", {})
        for _ in range(views):
            at(start + rng.random() * WEEK, user, "Product Viewed",
               {"sku": f"NW-{rng.randint(1001, 1040)}", "price": rng.randint(10, 200)})  # fmt: skip
        for cart in range(rng.choice((0, 1, 1, 2, 3))):
            left = start + rng.random() * (WEEK - timedelta(hours=3))
            value = rng.randint(10, 200)
            at(left, user, "Cart Abandoned", {"cart_id": f"{user}-c{cart}", "cart_value": value})
            if rng.random() < 0.4:
                at(left + rng.random() * timedelta(hours=3), user, "Order Completed",
                   {"order_id": f"{user}-o{cart}", "revenue": value})  # fmt: skip
    return profiles, rows


async def measure(url: str, users: int, views: int) -> None:
    engine = create_engine(url, pool_size=2)
    until = datetime.now(UTC).replace(microsecond=0)
    profiles, rows = week_of_traffic(users, views, until)
    async with engine.begin() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        await driver.execute("TRUNCATE events, profiles RESTART IDENTITY CASCADE")
        await driver.copy_records_to_table(
            "profiles", records=[(u, t) for u, t in profiles], columns=["user_id", "traits"]
        )
        await driver.copy_records_to_table(
            "events", records=rows,
            columns=["message_id", "source", "type", "event", "user_id", "properties",
                     "timestamp", "received_at"],
        )  # fmt: skip
    workspace = load_workspace(EXAMPLE)
    journey = candidate(EXAMPLE / "journeys" / "cart_abandonment.yaml", workspace)
    async with engine.connect() as conn:
        deployed = await deployed_version(conn, journey.key)
        assert deployed is not None
        started = time.perf_counter()
        counts = await preview(
            conn, workspace, [("this file", journey), ("deployed", deployed)],
            Period(until - WEEK, until), workspace_catalog(workspace),
        )  # fmt: skip
        elapsed = time.perf_counter() - started
    await engine.dispose()
    heard = sum(1 for r in rows if r[3] in ("Cart Abandoned", "Order Completed"))
    print(f"{users:>7,} users, {len(rows):>9,} events in the week ({heard:,} the journey "
          f"hears): both versions in {elapsed:.1f} s ({counts[0].seconds:.1f} s and "
          f"{counts[1].seconds:.1f} s); {counts[0].entered:,} entries, "
          f"{sum(counts[0].messages.values()):,} messages each")  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--views", type=int, default=10, help="Product views per user")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg", durable=False)
        server.start()
        try:
            url = server.create_database("bench_preview")
            await migrate(url)
            engine = create_engine(url, pool_size=1)
            await deploy_workspace(engine, load_workspace(EXAMPLE))
            await engine.dispose()
            for users in args.users:
                await measure(url, users, args.views)
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
