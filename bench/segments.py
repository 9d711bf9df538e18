"""What computed traits and segments cost, how fresh they are, and how fast an audience
journey enters users, each next to its baseline in the same run.

1. Events per second accepted by /v1/batch with 20 computed traits and 10 segments
   deployed (most of them reading the ingested event), next to none deployed: rounds
   interleave, redeploying between them.
2. Freshness: an event's traits and segment entries are computed in the transaction
   that stores it, so they are current when the request answers (the request latency,
   next to the same request with nothing deployed). A change that comes from time
   passing (a 10-second window letting an event go) is applied by the upkeep workflow:
   the lag from the boundary to the `Segment Exited` event, with `refresh_every` at its
   default (15 seconds).
3. An audience journey's entries per second into running workflows, next to bare
   signal-with-start of the same workflows (as bench.entries measures it).

    .venv/bin/python -m bench.segments [--events 20000] [--audience 2000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import text as sql

from bench.entries import bare, enroll_for_bare
from bench.harness import WRITE_KEY, BenchStack, bench_stack, summary
from bench.ingest import through_api
from orchestrator.deploy import deploy_workspace
from orchestrator.workspace import load_workspace

TRAITS = """
traits:
  views:                {count: Product Viewed}
  views_1d:             {count: {event: Product Viewed, window: 1d}}
  views_7d:             {count: {event: Product Viewed, window: 7d}}
  interest:             {count: {event: Product Viewed, half_life: 7d}}
  viewed_value:         {sum: {event: Product Viewed, property: price}}
  viewed_value_7d:      {sum: {event: Product Viewed, property: price, window: 7d}}
  average_price:        {average: {event: Product Viewed, property: price}}
  cheapest_7d:          {min: {event: Product Viewed, property: price, window: 7d}}
  dearest:              {max: {event: Product Viewed, property: price}}
  skus_seen:            {distinct_count: {event: Product Viewed, property: sku}}
  skus_seen_1d:         {distinct_count: {event: Product Viewed, property: sku, window: 1d}}
  favourite_category:   {most_frequent: {event: Product Viewed, property: category, half_life: 30d}}
  first_view_at:        {first_time: Product Viewed}
  last_view_at:         {last_time: Product Viewed}
  days_since_view:      {days_since: Product Viewed}
  orders:               {count: Order Completed}
  days_since_order:     {days_since: Order Completed}
  browsed_not_bought:   {sequence: {first: Product Viewed, then_not: Order Completed, within: 1d}}
  outerwear_views:
    count: {event: Product Viewed, where: "event.properties.category == 'outerwear'"}
  value_per_view:       {expression: "user.viewed_value / user.views if user.views else 0"}
"""
SEGMENTS = """
segments:
  browsers:        {when: user.views_7d >= 3}
  heavy_browsers:  {when: user.views_1d >= 20}
  big_ticket:      {when: user.dearest >= 100}
  bargain_hunters: {when: user.cheapest_7d < 20}
  explorers:       {when: user.skus_seen_1d >= 5}
  outdoorsy:       {when: "user.favourite_category == 'outerwear'"}
  window_shoppers: {when: user.browsed_not_bought and user.orders == 0}
  engaged:         {when: user.interest > 2}
  never_ordered:   {when: user.orders == 0}
  valuable:        {when: user.value_per_view > 50}
"""
PINGS = """
traits:
  pings_10s: {count: {event: Ping, window: 10s}}
segments:
  pinged: {when: user.pings_10s > 0}
"""
WAITING = """
journey: {key}
name: Audience benchmark
trigger: {trigger}
start: pause
steps:
  pause:
    wait: 7d
    next: done
  done:
    exit: {{}}
"""


async def deploy(stack: BenchStack, *, traits: str = "", segments: str = "") -> None:
    """Write the workspace's traits and segments and deploy them (the API and the worker
    see them within a second)."""
    for name, text in (("traits.yaml", traits), ("segments.yaml", segments)):
        path = stack.workspace / name
        if text:
            path.write_text(text.lstrip())
        elif path.exists():
            path.unlink()
    await deploy_workspace(stack.engine, load_workspace(stack.workspace))
    await asyncio.sleep(1.5)


async def request_latency(stack: BenchStack, count: int) -> list[float]:
    """Milliseconds per `/v1/track` of a `Product Viewed` for a new user, 20 a second."""
    latencies = []
    async with httpx.AsyncClient(auth=(WRITE_KEY, "")) as http:
        for i in range(count):
            properties = {"sku": "SKU-1", "price": 120.0, "category": "outerwear"}
            user = f"fresh-{uuid.uuid4().hex[:8]}-{i}"
            body = {"userId": user, "event": "Product Viewed", "properties": properties}
            started = time.perf_counter()
            response = await http.post(f"{stack.api_url}/v1/track", json=body)
            latencies.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.text
            await asyncio.sleep(0.05)  # within the source's per-address limit (50/s)
    return latencies


async def boundary_lag(stack: BenchStack, users: int) -> list[float]:
    """Milliseconds from a window letting a Ping go to the user's `Segment Exited`, with
    `segments.refresh_every` at its default."""
    traits, segments = PINGS.split("segments:")
    await deploy(stack, traits=traits, segments="segments:" + segments)
    every = "run"
    sent: dict[str, datetime] = {}
    async with httpx.AsyncClient(auth=(WRITE_KEY, "")) as http:
        for i in range(users):
            user = f"ping-{every}-{i}"
            at = datetime.now(UTC)
            body = {"userId": user, "event": "Ping", "timestamp": at.isoformat()}
            assert (await http.post(f"{stack.api_url}/v1/track", json=body)).status_code == 200
            sent[user] = at
            await asyncio.sleep(0.5)
    deadline = time.monotonic() + 180
    lags: dict[str, float] = {}
    while len(lags) < users and time.monotonic() < deadline:
        async with stack.engine.connect() as conn:
            rows = await conn.execute(
                sql("SELECT user_id, received_at FROM events WHERE event = 'Segment Exited' "
                    "AND user_id LIKE :p"), {"p": f"ping-{every}-%"}
            )  # fmt: skip
            for user, received in rows:
                boundary = sent[user] + timedelta(seconds=10)
                lags[user] = (received - boundary).total_seconds() * 1000
        await asyncio.sleep(0.5)
    return list(lags.values())


async def audience_rate(stack: BenchStack, users: int) -> tuple[float, float]:
    """(audience entries/s, bare signal-with-start/s) into workflows waiting in a journey."""
    names = [f"aud-{i:06d}" for i in range(users)]
    async with httpx.AsyncClient(auth=(WRITE_KEY, ""), timeout=120) as http:
        for start in range(0, users, 500):
            batch = [{"type": "identify", "userId": u, "traits": {"plan": "pro"}}
                     for u in names[start : start + 500]]  # fmt: skip
            response = await http.post(f"{stack.api_url}/v1/batch", json={"batch": batch})
            assert response.status_code == 200, response.text
    await deploy(stack, segments="segments:\n  pro: {when: \"user.plan == 'pro'\"}\n")
    # Bare first: the same journey shape entered by signal-with-start.
    bare_journey = WAITING.format(key="entry", trigger="{event: Signed Up}")
    (stack.workspace / "journeys" / "entry.yaml").write_text(bare_journey.lstrip())
    await deploy_workspace(stack.engine, load_workspace(stack.workspace))
    entries = await enroll_for_bare(stack, [f"bare-{u}" for u in names])
    started = time.perf_counter()
    await bare(stack, entries, 32)
    while await waiting(stack, "entry") < users:
        await asyncio.sleep(0.2)
    bare_rate = users / (time.perf_counter() - started)
    # Then the audience run: the workflow starts when the schedule says.
    at = datetime.now(UTC) + timedelta(seconds=3)
    trigger = (
        f'{{audience: {{segment: pro, schedule: {{at: "{at.isoformat()}"}}, entry_rate: 2000/s}}}}'
    )
    (stack.workspace / "journeys" / "everyone.yaml").write_text(
        WAITING.format(key="everyone", trigger=trigger).lstrip()
    )
    await deploy_workspace(stack.engine, load_workspace(stack.workspace))
    while await waiting(stack, "everyone") < users:
        await asyncio.sleep(0.2)
    audience = users / (datetime.now(UTC) - at).total_seconds()
    return audience, bare_rate


async def waiting(stack: BenchStack, key: str) -> int:
    query = f"JourneyKey = '{key}' AND JourneyStatus = 'waiting'"
    return (await stack.client.count_workflows(query)).count


async def main(events: int, audience: int, rounds: int) -> None:
    async with bench_stack({}) as stack:
        await through_api(stack, 2000, 4)  # warm up
        none, some = [], []
        for r in range(rounds):
            await deploy(stack)
            none.append(await through_api(stack, events, 4))
            await deploy(stack, traits=TRAITS, segments=SEGMENTS)
            some.append(await through_api(stack, events, 4))
            print(f"round {r + 1}: nothing deployed {none[-1]:.0f} events/s, "
                  f"20 traits + 10 segments {some[-1]:.0f} events/s")  # fmt: skip
        a, b = sum(some) / rounds, sum(none) / rounds
        print(f"ingest with 20 computed traits and 10 segments: {a:.0f} events/s")
        print(f"ingest with none:                               {b:.0f} events/s  ({a / b:.0%})")

        with_traits = await request_latency(stack, 200)
        await deploy(stack)
        bare_latency = await request_latency(stack, 200)
        print(f"event to updated trait and segment event (request latency), ms: "
              f"{summary(with_traits)}; nothing deployed: {summary(bare_latency)}")  # fmt: skip

        lags = await boundary_lag(stack, 60)
        print(f"time boundary to Segment Exited (refresh_every 15s): {summary(lags)}")

        rate, bare_rate = await audience_rate(stack, audience)
        print(f"audience journey entries into running workflows: {rate:.1f}/s")
        print(f"bare signal-with-start of the same workflows:    {bare_rate:.1f}/s "
              f"({rate / bare_rate:.0%})")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--audience", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.audience, args.rounds))
