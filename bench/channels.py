"""Channel speed: messages built and delivered per second per channel, and the latency
ranked content adds (model, and every fallback path).

One process plays the worker: it runs the `send_message` activity's code (profile
load, recommendations, render within limits, claim in Postgres, signed POST, mark
sent) for many messages at once, as a worker's activity slots do, without Temporal's
task round trips (bench.latency measures those). The channel provider and the
ranking model are another process on loopback (`bench/provider.py`) that verifies
every signature; Postgres is embedded with fsync on. The catalogue has `--items`
items, with popularity from 20,000 purchases.

    .venv/bin/python -m bench.channels [--messages 3000] [--concurrency 64] [--items 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.harness import _wait_http, percentile
from channels.ranking import HttpRanker, Recommendations, Recommender
from channels.templates import Template
from orchestrator.arbitration import Arbitration
from orchestrator.catalog import CatalogCache, CatalogItem, load_items
from orchestrator.database import create_engine, migrate
from orchestrator.journey_store import PostgresJourneyStore
from orchestrator.stack.postgres import EmbeddedPostgres
from orchestrator.stack.processes import free_port
from orchestrator.worker import build_activities, build_channel_deps, channel_clients
from orchestrator.workspace import WorkspaceConfig
from rules.policy import Policy
from workflows.activities import JourneyActivities
from workflows.messages import SendInput

SECRET = "whsec_SN6HEFrrhJp7Ygw3WCXl9y60mXqXOufBv2Nogw2ifLU="
USERS = 1000
TEMPLATE = Template.model_validate(
    {
        "email": {
            "subject": "{{ user.first_name }}, picked for you",
            "preheader": "New in {{ user.favourite_category }}",
            "html": "<h1>Hi {{ user.first_name }}</h1><ul>{% for item in recommendations %}"
            '<li><a href="{{ item.url }}"><img src="{{ item.image }}">{{ item.name }}</a> '
            "£{{ '%.2f' | format(item.price) }}</li>{% endfor %}</ul>"
            '<a href="{{ unsubscribe_url }}">Unsubscribe</a>',
            "text": "{% for item in recommendations %}{{ item.name }}: {{ item.url }}\n"
            "{% endfor %}Unsubscribe: {{ unsubscribe_url }}",
            "from_name": "Northwind",
        },
        "push": {
            "title": "{{ user.first_name }}, your cart is waiting",
            "body": "Your £{{ event.properties.cart_value }} cart is saved.",
            "deep_link": "northwind://cart",
            "data": {"cart": "{{ event.properties.cart_value }}"},
        },
        "in_app": {
            "title": "Welcome back, {{ user.first_name }}",
            "body": "Thanks for your order; your points are on their way.",
            "cta_label": "See points",
            "cta_url": "northwind://loyalty",
        },
        "web": {
            "placement": "home_hero",
            "title": "Picked for {{ user.first_name }}",
            "body": "{% for item in recommendations %}{{ item.name }} {% endfor %}",
            "url": "https://shop.example.com/picks",
        },
    }
)
RANKED = Recommendations(slot="bench", k=4)


def config(
    provider: str, *, model: str | None, deadline_ms: float = 8, in_flight: int
) -> WorkspaceConfig:
    return WorkspaceConfig.model_validate(
        {
            "workspace": "bench",
            "sources": [{"name": "bench", "write_key": "wk_bench_0123456789"}],
            "channels": {
                name: {
                    "url": f"{provider}/{name}",
                    "signing_secret": SECRET,
                    "max_in_flight": in_flight,
                }
                for name in ("email", "push", "in_app", "web")
            },
            "links": {"signing_secret": SECRET},
            "ranking": {"url": model, "deadline_ms": deadline_ms} if model else {},
        }
    )


async def seed(engine: AsyncEngine, items: int) -> int:
    """Catalogue, users, 20,000 purchases (a long tail), and a journey enrollment."""
    rng = random.Random(7)
    await load_items(
        engine,
        [
            CatalogItem(
                id=f"SKU-{i:05d}", name=f"Item {i}", category=f"category-{i % 40}",
                price=round(rng.uniform(5, 200), 2), url=f"https://shop.example.com/p/{i}",
                image=f"https://shop.example.com/img/{i}.jpg",
            )
            for i in range(items)
        ],
    )  # fmt: skip
    now = datetime.now(UTC)
    rows = []
    for n in range(20_000):
        bought = {min(items - 1, int(rng.paretovariate(1.2))) for _ in range(rng.randint(1, 4))}
        products = [{"product_id": f"SKU-{i:05d}", "price": 10} for i in bought]
        rows.append(
            {"id": f"order-{n}", "user": f"user-{n % USERS}", "at": now - timedelta(hours=n % 600),
             "props": orjson.dumps({"products": products}).decode()}
        )  # fmt: skip
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO events (message_id, source, type, event, user_id, properties,"
                " timestamp, received_at) VALUES (:id, 'bench', 'track', 'Order Completed',"
                " :user, CAST(:props AS jsonb), :at, :at)"
            ),
            rows,
        )
        await conn.execute(
            text("INSERT INTO profiles (user_id, traits) VALUES (:user, CAST(:traits AS jsonb))"),
            [
                {"user": f"user-{u}", "traits": orjson.dumps({
                    "first_name": f"User{u}", "email": f"user{u}@example.com",
                    "device_tokens": [f"token-{u}"], "favourite_category": "outerwear",
                }).decode()}
                for u in range(USERS)
            ],
        )  # fmt: skip
        await conn.execute(
            text(
                "INSERT INTO journeys (key, name, current_version, active)"
                " VALUES ('bench', 'Bench', 1, true)"
            )
        )
        return int(
            await conn.scalar(
                text(
                    "INSERT INTO enrollments (journey_key, version, user_id, status,"
                    " trigger_message_id, entered_at) VALUES ('bench', 1, 'user-0', 'active',"
                    " 'bench', now()) RETURNING id"
                )
            )
            or 0
        )


def send_input(channel: str, enrollment: int, n: int, ranked: bool) -> SendInput:
    return SendInput(
        message_id=str(uuid.uuid4()),
        enrollment_id=enrollment,
        journey_key="bench",
        version=1,
        journey_name="Bench",
        category="promotional",
        priority=50,
        user_id=f"user-{n % USERS}",
        step="send",
        channels=[channel],
        channel=channel,
        template_name="bench",
        template={channel: TEMPLATE.fields(channel)},
        recommendations=RANKED if ranked else None,
    )


async def throughput(
    acts: JourneyActivities, channel: str, enrollment: int, messages: int, concurrency: int,
    ranked: bool,
) -> float:  # fmt: skip
    inputs = [send_input(channel, enrollment, n, ranked) for n in range(messages)]
    queue = iter(inputs)

    async def slot() -> None:
        for request in queue:
            result = await acts.send_message(request)
            assert result.outcome == "delivered", result

    started = time.perf_counter()
    await asyncio.gather(*(slot() for _ in range(concurrency)))
    return messages / (time.perf_counter() - started)


async def latencies(call: Callable[[int], Awaitable[Any]], calls: int) -> list[float]:
    for n in range(50):  # warm up
        await call(n)
    took = []
    for n in range(calls):
        started = time.perf_counter()
        await call(n)
        took.append((time.perf_counter() - started) * 1000)
    return took


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="orchestrator-bench-") as tmp:
        postgres = EmbeddedPostgres(Path(tmp) / "postgres")
        port = free_port()
        model_items = ",".join(f"SKU-{i:05d}" for i in range(100, 110))
        provider = subprocess.Popen(
            [sys.executable, "-m", "bench.provider", "--port", str(port), "--secret", SECRET,
             "--items", model_items]
        )  # fmt: skip
        try:
            database_url = await asyncio.to_thread(postgres.start)
            await migrate(database_url)
            engine = create_engine(database_url, pool_size=args.concurrency)
            enrollment = await seed(engine, args.items)
            base = f"http://127.0.0.1:{port}"
            await _wait_http(f"{base}/healthz", timeout=30)
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
            async with httpx.AsyncClient(limits=limits) as http:
                await report_throughput(args, engine, http, base, enrollment)
                await report_latency(args, engine, http, base)
            await engine.dispose()
        finally:
            provider.terminate()
            provider.wait(10)
            await asyncio.to_thread(postgres.stop)


async def report_throughput(
    args: argparse.Namespace, engine: AsyncEngine, http: httpx.AsyncClient, base: str,
    enrollment: int,
) -> None:  # fmt: skip
    print(f"messages built and delivered per second, one process, {args.concurrency} at once,"
          f" {args.messages} per row (catalogue of {args.items} items):")  # fmt: skip
    everything = [("email", True), ("email", False), ("push", False), ("in_app", False),
                  ("web", True)]  # fmt: skip
    runs = [(None, args.in_flight, everything), (f"{base}/rank", args.in_flight, [("email", True)]),
            (None, 16, [("email", True)])]  # fmt: skip
    for model, in_flight, rows in runs:
        cfg = config(base, model=model, in_flight=in_flight)
        deps = build_channel_deps(cfg, engine=engine, http=http, clock=lambda: datetime.now(UTC))
        async with channel_clients(cfg) as clients:
            acts = build_activities(
                cfg, store=PostgresJourneyStore(engine), http=http, clients=clients, deps=deps,
                arbiter=Arbitration(engine, Policy(), default_timezone="UTC"),
            )  # fmt: skip
            for channel, ranked in rows:
                await throughput(acts, channel, enrollment, 200, args.concurrency, ranked)
                rate = await throughput(
                    acts, channel, enrollment, args.messages, args.concurrency, ranked
                )
                content = "no ranked content"
                if ranked:
                    content = "ranked: " + ("external model" if model else "popularity baseline")
                print(f"  {channel:<7} {content:<32} max_in_flight {in_flight:<3}"
                      f" {rate:>8,.0f} messages/s")  # fmt: skip


async def report_latency(
    args: argparse.Namespace, engine: AsyncEngine, http: httpx.AsyncClient, base: str
) -> None:
    catalog = CatalogCache(
        engine, events=["Order Completed"], window=timedelta(days=30),
        refresh_every=timedelta(minutes=5),
    )  # fmt: skip
    await catalog.ready()
    deadline = 0.008
    print(f"\nlatency ranked content adds to a message ({args.calls} calls each, k=4,"
          f" deadline {deadline * 1000:g} ms, min confidence 0.2):")  # fmt: skip
    cases: list[tuple[str, str | None, dict[str, Any], bool]] = [
        ("popularity baseline (no model configured)", None, {}, False),
        ("external model over HTTP, answered", "/rank", {}, False),
        ("external model, exclude purchased (+1 query)", "/rank", {}, True),
        ("fallback: model answers 500", "/rank/error", {}, False),
        ("fallback: model unsure (confidence 0.05)", "/rank/unsure", {}, False),
        ("fallback: model too slow (deadline)", "/rank/slow", {}, False),
        ("fallback: user opted out of personalisation", "/rank", {"personalization": False},
         False),
    ]  # fmt: skip
    for label, path, traits, exclude in cases:
        model = HttpRanker(url=f"{base}{path}", client=http, timeout=deadline) if path else None
        recommender = Recommender(catalog=catalog, model=model, deadline=deadline)
        wanted = RANKED.model_copy(update={"exclude_purchased": exclude})

        async def call(n: int, r: Recommender = recommender, w: Recommendations = wanted,
                       t: dict[str, Any] = traits) -> Any:  # fmt: skip
            return await r.recommend(f"user-{n % USERS}", t, w)

        calls = args.calls if path != "/rank/slow" else max(200, args.calls // 10)
        took = await latencies(call, calls)
        sources = {(await call(0)).source}
        print(f"  {label:<48} p50 {percentile(took, 50):6.2f} ms   p99 "
              f"{percentile(took, 99):6.2f} ms   ({sources.pop()})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--items", type=int, default=4000)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument(
        "--in-flight", type=int, default=4, help="max_in_flight of the (loopback) providers"
    )
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(run(args))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
