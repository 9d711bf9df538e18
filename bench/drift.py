"""What measuring input drift costs: the live profile of the last week over the event store,
and the training profile a version stores when it is trained.

A fresh embedded Postgres (fsync on), migrated, gets a catalogue of `--items` items and
Order Completed events of two lines each, filled by generate_series: `--live` purchase
lines in the last 7 days and `--past` lines over the 358 days before, from `--users`
users, items drawn log-uniformly (a long tail like a shop's). A version is trained on
the past purchases and made active, then `measure` (what the alert check, `ranking
drift` and each `--when drift` run do) is timed over the default `ranking.drift`.

    PYTHONPATH=$PWD .venv/bin/python -m bench.drift [--live 100000] [--past 300000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.access.audit import command_line
from orchestrator.catalog import CatalogItem, load_items
from orchestrator.database import create_engine, migrate
from orchestrator.ranking.config import DriftConfig
from orchestrator.ranking.drift import measure, training_profile
from orchestrator.ranking.rollout import activate
from orchestrator.ranking.versions import stored_purchases, train
from orchestrator.stack.postgres import EmbeddedPostgres

EVENTS = ["Order Completed"]
FILL = text(
    """
    INSERT INTO events (message_id, source, type, event, user_id, properties, timestamp,
                        received_at)
    SELECT CAST(:prefix AS text) || g, 'bench', 'track', 'Order Completed',
        'u' || floor(random() * CAST(:users AS int))::int,
        jsonb_build_object('products', jsonb_build_array(
            jsonb_build_object('product_id',
                'I' || floor(exp(random() * ln(CAST(:items AS float8))))::int),
            jsonb_build_object('product_id',
                'I' || floor(exp(random() * ln(CAST(:items AS float8))))::int))),
        at, at
    FROM generate_series(1, CAST(:orders AS int)) AS g,
        LATERAL (SELECT CAST(:until AS timestamptz) - random()
                 * (CAST(:until AS timestamptz) - CAST(:since AS timestamptz))
                 + g * interval '0' AS at) AS t
    """
)


async def fill(
    engine: AsyncEngine, *, prefix: str, lines: int, users: int, items: int,
    since: datetime, until: datetime,
) -> None:  # fmt: skip
    async with engine.begin() as conn:
        await conn.execute(FILL, {"prefix": prefix, "orders": lines // 2, "users": users,
                                  "items": items, "since": since, "until": until})  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as state:
        postgres = EmbeddedPostgres(Path(state) / "postgres")  # fsync on, as in production
        postgres.start()
        try:
            url = postgres.create_database("bench")
            await migrate(url)
            engine = create_engine(url, pool_size=2)
            await run(engine, args)
            await engine.dispose()
        finally:
            postgres.stop()


async def run(engine: AsyncEngine, args: argparse.Namespace) -> None:
    now = datetime.now(UTC)
    window = DriftConfig().window
    await load_items(engine, [CatalogItem(id=f"I{n}", name=f"Item {n}")
                              for n in range(1, args.items + 1)])  # fmt: skip
    began = time.perf_counter()
    await fill(engine, prefix="p", lines=args.past, users=args.users, items=args.items,
               since=now - timedelta(days=365), until=now - window)  # fmt: skip
    filled = time.perf_counter() - began
    print(f"{args.past:,} past purchase lines stored in {filled:.1f} s")

    began = time.perf_counter()
    purchases, items = await stored_purchases(engine, EVENTS)
    read = time.perf_counter() - began
    began = time.perf_counter()
    profile = training_profile(purchases, window=window)
    profiled = time.perf_counter() - began
    print(f"training profile: {len(purchases):,} purchases read in {read:.1f} s (as training "
          f"reads them), profiled in {profiled:.2f} s ({len(profile['item_counts']) - 1} item "
          f"bins, {profile['users']:,} users' history lengths)")  # fmt: skip
    began = time.perf_counter()
    trained = await train(engine, purchases, items, source="bench", actor=command_line())
    print(f"(trained version {trained.version} in {time.perf_counter() - began:.1f} s)")
    await activate(engine, trained.version, actor=command_line(), now=datetime.now(UTC))

    await fill(engine, prefix="l", lines=args.live, users=args.users, items=args.items,
               since=now - window, until=now)  # fmt: skip
    async with engine.connect() as conn:
        await conn.execute(text("ANALYZE events"))
        stored = await conn.scalar(text("SELECT count(*) FROM events"))
        took = []
        for _ in range(args.repeat):
            began = time.perf_counter()
            found = await measure(conn, config=DriftConfig(), events=EVENTS, now=now)
            took.append(time.perf_counter() - began)
    counts = found.counts
    median = statistics.median(took)
    print(f"live profile over the last {window.days} days ({counts['live_purchases']:,} "
          f"purchases by {counts['live_users']:,} users; {stored:,} events stored): "
          f"median {median:.2f} s, max {max(took):.2f} s of {args.repeat}")  # fmt: skip
    print(f"  {found.summary}")


def cli() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--live", type=int, default=100_000, help="purchase lines, last 7 days")
    parser.add_argument("--past", type=int, default=300_000, help="purchase lines before")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=5)
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
