"""What a canary costs: per recommendation when serving, and per message when judging.

Serving: `BuiltInRanker.rank` (the user's history from Postgres, then the model) for
the same users with no canary, with a canary at 10% of everyone, and with a canary at
10% within a segment (whose drawn users' traits are read); the three run interleaved
in rounds, so the machine's noise falls on all alike. Also the choice alone
(`BuiltInRanker.serving`: the hash, and the traits read for drawn users). Judging: the
guard's work (`monitoring.shown` and `compare_canary`) over a number of messages with
ranked content, clicks and purchases.

    PYTHONPATH=$PWD .venv/bin/python -m bench.canary [--users 2000] [--rounds 3] [--messages 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.harness import bench_stack, percentile
from bench.ranking import _events
from channels.ranking import RankRequest
from orchestrator.access.audit import command_line
from orchestrator.catalog import CatalogItem, load_items
from orchestrator.ranking.evaluate_cli import DEFAULT_DATA
from orchestrator.ranking.model import HybridModel, histories
from orchestrator.ranking.monitoring import compare_canary, shown
from orchestrator.ranking.retail import read_retail
from orchestrator.ranking.rollout import (
    Canary,
    activate,
    rollback,
    running_canary,
    start_canary,
)
from orchestrator.ranking.serving import BuiltInRanker
from orchestrator.tables import ranking_models

SEGMENT = 'user.country == "United Kingdom"'


async def run(args: argparse.Namespace) -> None:
    dataset = read_retail(args.data)
    last = max(p.at for p in dataset.purchases)
    blob = HybridModel.train(dataset.purchases, dataset.items, now=last).dump()
    users = sorted(histories(dataset.purchases))[: args.users]
    async with bench_stack({}, worker=False) as stack:
        engine = stack.engine
        first, second = [await _store(engine, blob) for _ in range(2)]
        await activate(engine, first, actor=command_line(), now=datetime.now(UTC))
        await _events(engine, dataset.purchases, users)
        await load_items(
            engine,
            [CatalogItem(id=i.id, name=i.name, price=i.price) for i in dataset.items.values()],
        )
        countries = dataset.customers
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO profiles (user_id, traits) VALUES (:u, CAST(:t AS jsonb))"),
                [{"u": u, "t": f'{{"country": "{countries.get(u, {}).get("Country", "")}"}}'}
                 for u in users],
            )  # fmt: skip
        settings = {"none": None, "10%": None, "10% in a segment": SEGMENT}
        rank_ms: dict[str, list[float]] = {name: [] for name in settings}
        choose_us: dict[str, list[float]] = {name: [] for name in settings}
        for _ in range(args.rounds):
            for name, segment in settings.items():
                if await _canary(engine) is not None:
                    await rollback(engine, actor=command_line(), now=datetime.now(UTC))
                if name != "none":
                    await start_canary(engine, second, share=0.1, segment=segment,
                                       actor=command_line(), now=datetime.now(UTC))  # fmt: skip
                ranker = BuiltInRanker(engine, events=["Order Completed"], check_every=3600)
                await ranker.serving(users[0])  # loads the versions
                for user in users:
                    begun = time.perf_counter()
                    await ranker.serving(user)
                    choose_us[name].append((time.perf_counter() - begun) * 1e6)
                    begun = time.perf_counter()
                    await ranker.rank(RankRequest(user_id=user, slot="bench", k=10))
                    rank_ms[name].append((time.perf_counter() - begun) * 1000)
        base = sum(rank_ms["none"]) / len(rank_ms["none"])
        print(f"{len(users):,} users x {args.rounds} rounds, full catalogue "
              f"({len(dataset.items):,} items), canary share 10%:")  # fmt: skip
        print(
            "| canary | choosing the version: mean | rank: p50 | rank: p99 | rank: mean vs none |"
        )
        print("| --- | --- | --- | --- | --- |")
        for name in settings:
            mean = sum(rank_ms[name]) / len(rank_ms[name])
            print(f"| {name} | {sum(choose_us[name]) / len(choose_us[name]):.1f} µs | "
                  f"{percentile(rank_ms[name], 50):.2f} ms | {percentile(rank_ms[name], 99):.2f} ms"
                  f" | {mean / base:.3f}x |")  # fmt: skip
        await _judging(engine, args.messages)


async def _judging(engine: AsyncEngine, messages: int) -> None:
    """The guard's queries over `messages` sent in the last hour (a third clicked, a
    tenth bought)."""
    at = datetime.now(UTC) - timedelta(hours=1)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO messages (id, journey_key, version, user_id, step, channel,"
                " template, status, content_source, created_at)"
                " SELECT 'b' || n, 'bench', 1, 'bu' || (n % 20000), 'mail', 'email', 'picks',"
                " 'delivered', jsonb_build_object('source', 'model', 'model', 'hybrid-v1',"
                " 'slot', 'home', 'items', jsonb_build_array('i' || (n % 50), 'i' || (n % 70)))"
                ", :at FROM generate_series(1, :n) AS n"
            ),
            {"n": messages, "at": at},
        )
        await conn.execute(
            text(
                "INSERT INTO receipts (channel, webhook_id, message_id, kind, payload,"
                " received_at) SELECT 'email', 'w' || n, 'b' || n, 'clicked',"
                " jsonb_build_object('data', jsonb_build_object('item_id', 'i' || (n % 50))),"
                " :at FROM generate_series(1, :n, 3) AS n"
            ),
            {"n": messages, "at": at},
        )
        await conn.execute(
            text(
                "INSERT INTO events (message_id, source, type, event, user_id, properties,"
                " timestamp, received_at) SELECT 'bo' || n, 'bench', 'track',"
                " 'Order Completed', 'bu' || (n % 20000), jsonb_build_object('products',"
                " jsonb_build_array(jsonb_build_object('product_id', 'i' || (n % 50)))),"
                " :bought, :bought FROM generate_series(1, :n, 10) AS n"
            ),
            {"n": messages, "bought": at + timedelta(minutes=5)},
        )
    canary = Canary(version=2, share=0.1, segment=None, since=at)
    async with engine.connect() as conn:
        begun = time.perf_counter()
        found = await shown(conn, since=at - timedelta(minutes=1), until=datetime.now(UTC),
                            events=["Order Completed"], attribution=timedelta(days=7))  # fmt: skip
        read = time.perf_counter() - begun
        begun = time.perf_counter()
        await compare_canary(conn, canary, found, planning_users=10_000)
        compared = time.perf_counter() - begun
    print(f"judging {len(found):,} messages: reading them with clicks and purchases {read:.2f} s"
          f" ({read / len(found) * 1e6:.1f} µs a message), the comparison"
          f" {compared:.2f} s")  # fmt: skip


async def _canary(engine: AsyncEngine) -> object:
    async with engine.connect() as conn:
        return await running_canary(conn)


async def _store(engine: AsyncEngine, blob: bytes) -> int:
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        version = await conn.scalar(
            ranking_models.insert()
            .values(source="bench", window_start=now, window_end=now, purchases=0, items=0,
                    status="inactive", reason="bench", metrics={}, artifact=blob)
            .returning(ranking_models.c.version)
        )  # fmt: skip
    return int(version or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=100_000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
