"""What a retention run costs on a million events, and what it does to ingestion.

A fresh embedded Postgres (fsync on), migrated, is filled with generate_series: a
million events spread evenly over the last 800 days (so about half are past the
default 395 days), and in proportion the rest of a user's history: 50,000
enrollments (a tenth still running), 100,000 messages with rendered bodies, one
receipt each, 10,000 in-app copies, 100,000 arbitration requests with 150,000
decisions, and 50,000 assignments (half of an ended experiment). Then:

1. ingestion alone: a writer inserts batches of 100 events, one transaction each,
   back to back, for `--baseline` seconds: the latency of each batch;
2. a dry run of retention (counts only), timed;
3. the real run (the worker's code: `orchestrator.retention.sweep`, default batch
   of 5,000 rows) while the same writer goes on: the run's time and counts, and the
   writer's batch latency during it, beside (1).

    .venv/bin/python -m bench.retention [--events 1000000] [--baseline 20]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.harness import percentile
from orchestrator.database import create_engine, migrate
from orchestrator.retention.config import RetentionConfig
from orchestrator.retention.sweep import Cutoffs, Run, open_run, sweep
from orchestrator.stack.postgres import EmbeddedPostgres
from rules.policy import Policy

SPAN = timedelta(days=800)

# :n events; everything else in proportion. `at(g, total)` spreads row g of `total`
# evenly over the last 800 days.
AT = "(CAST(:start AS timestamptz) + ({g}::float8 / ({total})) * interval '800 days')"
SEED = [
    """INSERT INTO journeys (key, name, current_version, active)
       VALUES ('bench', 'Bench', 1, true)""",
    f"""INSERT INTO events (message_id, source, type, event, user_id, properties, context,
           timestamp, received_at, routed_at)
        SELECT 'ev-' || g, 'bench', 'track',
            (ARRAY['Product Viewed', 'Added to Cart', 'Order Completed'])[1 + g % 3],
            'user-' || (g % 50000),
            jsonb_build_object('sku', 'SKU-' || (g % 2000), 'price', (g % 200) + 0.99,
                               'category', 'category-' || (g % 20), 'currency', 'EUR'),
            jsonb_build_object('ip', '10.0.' || (g % 250) || '.1',
                'userAgent', 'Mozilla/5.0 (X11; Linux x86_64) bench',
                'library', jsonb_build_object('name', 'analytics.js', 'version', '2.11.1'),
                'page', jsonb_build_object('path', '/p/' || (g % 2000), 'title', 'Product')),
            {AT.format(g="g", total=":n")}, {AT.format(g="g", total=":n")},
            CASE WHEN g % 1000 = 0 THEN NULL ELSE {AT.format(g="g", total=":n")} END
        FROM generate_series(1, :n) AS g""",
    f"""INSERT INTO enrollments (id, journey_key, version, user_id, status, trigger_message_id,
           entered_at)
        SELECT g, 'bench', 1, 'user-' || (g % 50000),
            CASE WHEN g % 10 = 0 THEN 'active' ELSE 'completed' END, 'ev-' || (g * 20),
            {AT.format(g="g", total=":n / 20")}
        FROM generate_series(1, :n / 20) AS g""",
    f"""INSERT INTO messages (id, enrollment_id, journey_key, version, user_id, step, channel,
           template, status, content, created_at, sent_at)
        SELECT 'msg-' || g, 1 + (g - 1) / 2, 'bench', 1, 'user-' || (g % 50000), 'send',
            CASE WHEN g % 10 = 0 THEN 'in_app' ELSE 'email' END, 'note', 'sent',
            jsonb_build_object('subject', 'Hello user-' || (g % 50000),
                'text', repeat('Your cart holds SKU-' || (g % 2000) || '. ', 8)),
            {AT.format(g="g", total=":n / 10")}, {AT.format(g="g", total=":n / 10")}
        FROM generate_series(1, :n / 10) AS g""",
    f"""INSERT INTO receipts (channel, webhook_id, message_id, kind, payload, received_at)
        SELECT 'email', 'wh-' || g, 'msg-' || g, 'delivered',
            jsonb_build_object('type', 'message.delivered', 'data',
                jsonb_build_object('message_id', 'msg-' || g, 'ip', '10.1.0.' || (g % 250))),
            {AT.format(g="g", total=":n / 10")}
        FROM generate_series(1, :n / 10) AS g""",
    f"""INSERT INTO user_messages (message_id, user_id, channel, content, created_at,
           expires_at)
        SELECT 'msg-' || g, 'user-' || (g % 50000), 'in_app', '{{"title": "Hello"}}',
            {AT.format(g="g", total=":n / 10")},
            {AT.format(g="g", total=":n / 10")} + interval '30 days'
        FROM generate_series(10, :n / 10, 10) AS g""",
    f"""INSERT INTO arbitration_requests (key, user_id, request, fingerprint, requested_at,
           state, channel, decided_at)
        SELECT 'msg-' || g, 'user-' || (g % 50000),
            jsonb_build_object('key', 'msg-' || g, 'channels', jsonb_build_array('email'),
                               'category', 'promotional', 'priority', 50),
            md5(g::text), {AT.format(g="g", total=":n / 10")}, 'sent', 'email',
            {AT.format(g="g", total=":n / 10")}
        FROM generate_series(1, :n / 10) AS g""",
    f"""INSERT INTO arbitration_decisions (key, user_id, journey, decided_at, action, channel,
           score, reason, checks)
        SELECT 'msg-' || (1 + g % (:n / 10)), 'user-' || (g % 50000), 'bench',
            {AT.format(g="(1 + g % (:n / 10))", total=":n / 10")}, 'send', 'email', 1, 'ok',
            '[{{"rule": "cap:weekly", "passed": true, "detail": "2 of 5"}}]'
        FROM generate_series(1, :n * 3 / 20) AS g""",
    """INSERT INTO experiment_archives (journey_key, experiment_key, kind, ended_at, ended_by,
           configuration, results) VALUES ('bench', 'ended', 'experiment', now(), 'cli:bench',
           '{}', '{}')""",
    f"""INSERT INTO assignments (journey_key, version, kind, experiment_key, mode, user_id,
           enrollment_id, arm, assigned_at)
        SELECT 'bench', 1, 'experiment', CASE WHEN g % 2 = 0 THEN 'ended' ELSE 'open' END,
            'fixed', 'user-' || g, g, 'a', {AT.format(g="g", total=":n / 20")}
        FROM generate_series(1, :n / 20) AS g""",
]
SIZES = """SELECT relname, n_live_tup FROM pg_stat_user_tables WHERE relname = ANY(:names)
           ORDER BY relname"""
TABLES = ["events", "messages", "receipts", "user_messages", "arbitration_requests",
          "arbitration_decisions", "assignments", "enrollments"]  # fmt: skip


async def fill(engine: AsyncEngine, events: int, start: datetime) -> float:
    began = time.perf_counter()
    async with engine.begin() as conn:
        for statement in SEED:
            await conn.execute(text(statement), {"n": events, "start": start})
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE"))
    return time.perf_counter() - began


class Writer:
    """Batches of 100 events, one transaction each, back to back; each batch's latency."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine, self.running = engine, True
        self.latencies: list[float] = []

    async def run(self) -> None:
        statement = text(
            """INSERT INTO events (message_id, source, type, event, user_id, properties,
                   timestamp, received_at)
               SELECT 'live-' || :batch || '-' || g, 'bench', 'track', 'Product Viewed',
                   'user-' || g, jsonb_build_object('sku', 'SKU-' || g), now(), now()
               FROM generate_series(1, 100) AS g"""
        )
        while self.running:
            began = time.perf_counter()
            async with self.engine.begin() as conn:
                await conn.execute(statement, {"batch": uuid.uuid4().hex})
            self.latencies.append((time.perf_counter() - began) * 1000)
            await asyncio.sleep(0.01)


def latency_line(values: list[float]) -> str:
    return (f"{len(values)} batches, p50 {percentile(values, 50):.1f} ms, "
            f"p99 {percentile(values, 99):.1f} ms, max {max(values):.1f} ms")  # fmt: skip


async def one_run(engine: AsyncEngine, now: datetime, *, dry_run: bool) -> tuple[Run, float]:
    cutoffs = Cutoffs.at(now, config=RetentionConfig(), policy=Policy(), global_control=False)
    run = await open_run(engine, workflow_id=f"bench-{uuid.uuid4().hex}", trigger="cli",
                         dry_run=dry_run, cutoffs=cutoffs)  # fmt: skip
    began = time.perf_counter()
    done = await sweep(engine, run, cutoffs=cutoffs, batch=RetentionConfig().batch)
    return done, time.perf_counter() - began


async def main(events: int, baseline: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-retention-") as state:
        postgres = EmbeddedPostgres(Path(state) / "postgres")  # fsync on, as in production
        postgres.start()
        try:
            url = postgres.create_database("bench")
            await migrate(url)
            engine = create_engine(url, pool_size=4)
            now = datetime.now(UTC)
            seconds = await fill(engine, events, now - SPAN)
            async with engine.connect() as conn:
                sizes = (await conn.execute(text(SIZES), {"names": TABLES})).all()
            print(f"filled in {seconds:.1f} s: " + ", ".join(f"{n} {c:,}" for n, c in sizes))

            writer = Writer(engine)
            task = asyncio.create_task(writer.run())
            await asyncio.sleep(baseline)
            alone = list(writer.latencies)
            writer.latencies.clear()
            print(f"ingestion alone: {latency_line(alone)}")

            dry, dry_seconds = await one_run(engine, now, dry_run=True)
            writer.latencies.clear()
            print(f"dry run: {dry_seconds:.1f} s (ingestion going on)")

            done, run_seconds = await one_run(engine, now, dry_run=False)
            during = list(writer.latencies)
            writer.running = False
            await task
            print(f"retention run: {run_seconds:.1f} s")
            for step, counts in done.counts.items():
                print(f"  {step:<15} " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
            print(f"ingestion during the run: {latency_line(during)}")
            same = "the same as" if dry.counts == done.counts else "NOT the same as"
            print(f"the dry run's counts are {same} the run's")
            await engine.dispose()
        finally:
            postgres.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--baseline", type=float, default=20.0, help="seconds of ingestion alone")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.baseline))
