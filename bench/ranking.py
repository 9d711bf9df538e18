"""Ranking speed: training a version on the full retail dataset, and top-10 latency.

Training runs the whole `orchestrator ranking train` pipeline (tuning, the gate on
held-out purchases, the final model, storing it) against the bench stack's Postgres,
and reports its time and the process's peak memory. Latency: the model alone, and the
served path (`BuiltInRanker`: the user's purchase history from the event store, then
the model), for users with history, over the full catalogue. Throughput: `POST
/v1/rank` against `orchestrator api` from concurrent keep-alive clients.

    .venv/bin/python -m bench.ranking [--calls 2000] [--clients 16]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.harness import SERVER_KEY, bench_stack, percentile
from channels.ranking import RankRequest
from orchestrator.access.audit import command_line
from orchestrator.catalog import CatalogItem, load_items
from orchestrator.ranking.evaluate_cli import DEFAULT_DATA
from orchestrator.ranking.model import HybridModel, histories
from orchestrator.ranking.retail import Purchase, read_retail
from orchestrator.ranking.serving import BuiltInRanker
from orchestrator.ranking.versions import train


async def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    dataset = read_retail(args.data)
    read = time.perf_counter() - started
    async with bench_stack({}, worker=False, config=CONFIG) as stack:
        engine = stack.engine
        started = time.perf_counter()
        trained = await train(
            engine, dataset.purchases, dataset.items, source="bench", actor=command_line()
        )
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
        await load_items(
            engine,
            [CatalogItem(id=i.id, name=i.name, price=i.price) for i in dataset.items.values()],
        )
        ranker = BuiltInRanker(engine, events=["Order Completed"])
        took_ms = []
        for user in sample:
            begun = time.perf_counter()
            await ranker.rank(RankRequest(user_id=user, slot="bench", k=10))
            took_ms.append((time.perf_counter() - begun) * 1000)
        p50, p99 = percentile(took_ms, 50), percentile(took_ms, 99)
        print(f"served in process (history from Postgres, then the model): "
              f"p50 {p50:.2f} ms, p99 {p99:.2f} ms")  # fmt: skip
        await _over_http(stack.api_url, sample, args.clients)


async def _over_http(api_url: str, users: list[str], clients: int) -> None:
    """POST /v1/rank from `clients` concurrent keep-alive connections."""
    queue = iter(users * 2)
    took_ms: list[float] = []
    sources: Counter[str] = Counter()
    bearer = {"authorization": f"Bearer {SERVER_KEY}"}
    async with httpx.AsyncClient(headers=bearer, timeout=30) as http:

        async def client() -> None:
            for user in queue:
                begun = time.perf_counter()
                response = await http.post(
                    f"{api_url}/v1/rank", json={"user_id": user, "slot": "bench", "k": 10}
                )
                took_ms.append((time.perf_counter() - begun) * 1000)
                response.raise_for_status()
                sources[response.json()["source"]] += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    print(f"POST /v1/rank over HTTP, {clients} clients: {len(took_ms) / elapsed:,.0f} per second,"
          f" p50 {percentile(took_ms, 50):.1f} ms, p99 {percentile(took_ms, 99):.1f} ms"
          f" (answered by: {dict(sources)})")  # fmt: skip


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


# The model's deadline is generous here so the HTTP figures measure the model, not the
# fallback (the channels' 8 ms default would turn slow answers into baseline ones).
CONFIG = "ranking:\n  builtin: true\n  deadline_ms: 1000\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
