"""How long erasing a user takes: 10,000 events and 100 messages (each with a receipt, an
arbitration request and decision, and an inbox row), among other users' data.

The production-like stack of `bench/harness.py` (API and worker processes, embedded
Postgres, the Temporal dev server). Users are written straight into Postgres (it is
the erasure being timed, not ingestion); then `DELETE /v1/users/{id}` and the wait for
its workflow's result. The time includes the workflow's fixed settle pause (5 s, see
`orchestrator.users.erasure`), so the work alone is printed beside it.

    .venv/bin/python -m bench.erasure [--users 3] [--events 10000] [--messages 100]
                                      [--others 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.harness import SERVER_KEY, bench_stack
from orchestrator.users.erasure import SETTLE, ErasureResult

FILL = [
    """INSERT INTO profiles (user_id, traits) VALUES (:u, '{"email": "someone@example.com"}')""",
    "INSERT INTO identities (anonymous_id, user_id) VALUES ('anon-' || :u, :u)",
    """INSERT INTO events (message_id, source, type, event, user_id, anonymous_id, properties,
                           timestamp, received_at, routed_at)
       SELECT 'bench/' || :u || '/' || g, 'bench', 'track', 'Product Viewed', :u,
              'anon-' || :u, jsonb_build_object('sku', 'SKU-' || g % 500, 'price', g % 90),
              now() - g * interval '1 minute', now(), now()
       FROM generate_series(1, :events) g""",
    """INSERT INTO messages (id, journey_key, version, user_id, step, channel, template,
                             status, content, sent_at, delivered_at)
       SELECT :u || '-m' || g, 'bench', 1, :u, 'mail', 'email', 'note', 'delivered',
              '{"subject": "Hello", "text": "Your cart"}', now(), now()
       FROM generate_series(1, :messages) g""",
    """INSERT INTO receipts (channel, webhook_id, message_id, kind, payload, received_at)
       SELECT 'email', 'w-' || :u || '-' || g, :u || '-m' || g, 'delivered',
              jsonb_build_object('type', 'delivered'), now()
       FROM generate_series(1, :messages) g""",
    """INSERT INTO user_messages (message_id, user_id, channel, content, created_at, expires_at)
       SELECT :u || '-m' || g, :u, 'in_app', '{"title": "Hi"}', now(), now() + interval '7 days'
       FROM generate_series(1, :messages) g""",
    """INSERT INTO arbitration_requests (key, user_id, request, fingerprint, requested_at,
                                         state, channel, decided_at)
       SELECT :u || '-m' || g, :u, jsonb_build_object('user_id', :u), 'f', now(), 'sent',
              'email', now()
       FROM generate_series(1, :messages) g""",
    """INSERT INTO arbitration_decisions (key, user_id, journey, decided_at, action, channel,
                                          score, reason, checks)
       SELECT :u || '-m' || g, :u, 'bench', now(), 'send', 'email', 1, 'allowed', '[]'
       FROM generate_series(1, :messages) g""",
]


async def fill(engine: AsyncEngine, user: str, *, events: int, messages: int) -> None:
    async with engine.begin() as conn:
        for statement in FILL:
            await conn.execute(text(statement), {"u": user, "events": events,
                                                 "messages": messages})  # fmt: skip


async def main(users: int, events: int, messages: int, others: int) -> None:
    async with bench_stack({}) as stack, httpx.AsyncClient(timeout=60) as http:
        print(f"writing {others} other users and {users} to erase, {events:,} events and "
              f"{messages} messages each ...")  # fmt: skip
        for i in range(others):
            await fill(stack.engine, f"other-{i}", events=events // 10, messages=messages // 10)
        for i in range(users):
            await fill(stack.engine, f"erase-{i}", events=events, messages=messages)
        async with stack.engine.begin() as conn:
            await conn.execute(text("ANALYZE"))
        totals = []
        for i in range(users):
            began = time.perf_counter()
            response = await http.delete(
                f"{stack.api_url}/v1/users/erase-{i}",
                headers={"authorization": f"Bearer {SERVER_KEY}"},
            )
            assert response.status_code == 202, response.text
            handle = stack.client.get_workflow_handle(
                response.json()["workflow_id"], result_type=ErasureResult
            )
            result = await handle.result()
            took = time.perf_counter() - began
            totals.append(took)
            assert result.counts["events"] == events, result.counts
            assert result.counts["messages"] == messages, result.counts
            print(f"erase-{i}: {took:.2f} s from DELETE to done "
                  f"({took - SETTLE.total_seconds():.2f} s without the settle pause); "
                  f"{sum(result.counts.values()):,} rows")  # fmt: skip
        async with stack.engine.connect() as conn:
            left = await conn.scalar(
                text("SELECT count(*) FROM events WHERE user_id LIKE 'erase-%'")
            )
            kept = await conn.scalar(text("SELECT count(*) FROM events"))
        assert left == 0
        print(f"median {statistics.median(totals):.2f} s "
              f"({statistics.median(totals) - SETTLE.total_seconds():.2f} s of work); "
              f"{kept:,} other users' events left untouched")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--others", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.users, args.events, args.messages, args.others))
