"""Ranking speed: training a version on the full retail dataset, and top-10 latency.

Training runs the whole `orchestrator ranking train` pipeline (tuning, the gate on
held-out purchases, the final model, storing it) on embedded Postgres, and reports
its time and the process's peak memory. Latency: the model alone, and the served
path (`BuiltInRanker`: the user's purchase history from the event store, then the
model), for users with history, over the full catalogue.

    .venv/bin/python -m bench.ranking [--calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.harness import percentile
from channels.ranking import RankRequest
from orchestrator.database import create_engine, migrate
from orchestrator.ranking.model import HybridModel, histories
from orchestrator.ranking.retail import Purchase, read_retail
from orchestrator.ranking.serving import BuiltInRanker
from orchestrator.ranking.versions import train
from orchestrator.ranking_cli import DEFAULT_DATA
from orchestrator.stack.postgres import EmbeddedPostgres


async def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    dataset = read_retail(args.data)
    read = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="orchestrator-bench-") as tmp:
        postgres = EmbeddedPostgres(Path(tmp) / "postgres")
        try:
            url = await asyncio.to_thread(postgres.start)
            await migrate(url)
            engine = create_engine(url)
            started = time.perf_counter()
            trained = await train(engine, dataset.purchases, dataset.items, source="bench")
            took = time.perf_counter() - started
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"read {dataset.rows:,} rows in {read:.1f} s; trained version "
                  f"{trained.version} ({trained.status}: {trained.reason}) in {took:.1f} s; "
                  f"peak resident memory of this process {peak:,.0f} MB")  # fmt: skip

            model = HybridModel.train(
                dataset.purchases, dataset.items, now=max(p.at for p in dataset.purchases)
            )
            users = histories(dataset.purchases)
            sample = sorted(users)[: args.calls]
            took_ms = []
            for user in sample:
                begun = time.perf_counter()
                model.recommend(users[user], 10)
                took_ms.append((time.perf_counter() - begun) * 1000)
            print(f"model alone, top-10 over {len(model.items):,} items: p50 "
                  f"{percentile(took_ms, 50):.2f} ms, p99 {percentile(took_ms, 99):.2f} ms, "
                  f"{len(took_ms) / (sum(took_ms) / 1000):,.0f} per second")  # fmt: skip

            await _events(engine, dataset.purchases, sample)
            ranker = BuiltInRanker(engine, events=["Order Completed"])
            took_ms = []
            for user in sample:
                begun = time.perf_counter()
                await ranker.rank(RankRequest(user_id=user, slot="bench", k=10))
                took_ms.append((time.perf_counter() - begun) * 1000)
            print(f"served (history from Postgres + model): p50 {percentile(took_ms, 50):.2f} ms,"
                  f" p99 {percentile(took_ms, 99):.2f} ms")  # fmt: skip
            await engine.dispose()
        finally:
            await asyncio.to_thread(postgres.stop)


async def _events(engine: AsyncEngine, purchases: list[Purchase], users: list[str]) -> None:
    """The sampled users' purchases as Order Completed events, one per invoice, moved
    in time so that the dataset's last day is yesterday."""
    wanted = set(users)
    shift = datetime.now(UTC) - timedelta(days=1) - max(p.at for p in purchases).replace(tzinfo=UTC)
    baskets: dict[tuple[str, datetime], list[str]] = defaultdict(list)
    for p in purchases:
        if p.user in wanted:
            baskets[(p.user, p.at)].append(p.item)
    rows = [
        {"id": f"{user}-{n}", "user": user, "at": at.replace(tzinfo=UTC) + shift,
         "props": orjson.dumps({"products": [{"product_id": i} for i in items]}).decode()}
        for n, ((user, at), items) in enumerate(baskets.items())
    ]  # fmt: skip
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO events (message_id, source, type, event, user_id, properties,"
                " timestamp, received_at) VALUES (:id, 'bench', 'track', 'Order Completed',"
                " :user, CAST(:props AS jsonb), :at, :at)"
            ),
            rows,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--calls", type=int, default=2000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
