"""Arbitration speed: the pure decision alone, and the stored path on Postgres.

Pure: `decide()` with a policy of 10 caps and 10 CRM/loyalty rules, for a user with
20 messages in their history. Stored: the Arbitration service (per-user lock, load,
decide, record) on embedded PostgreSQL with fsync on, 16 concurrent callers over
2,000 users, each call a new message.

    .venv/bin/python -m bench.arbitration [--decisions 100000] [--calls 4000] [--callers 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.harness import summary
from orchestrator.arbitration import Arbitration
from orchestrator.database import create_engine, migrate
from orchestrator.stack.postgres import EmbeddedPostgres
from rules.decision import Contact, SendRequest, UserState, decide
from rules.policy import Policy

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
TRAITS = {"email": "ada@example.com", "device_tokens": ["t"], "timezone": "Europe/Paris",
          "loyalty_tier": "silver", "orders_count": 3}  # fmt: skip

POLICY = Policy.model_validate(
    {
        "caps": [
            {"name": "promo_week", "max": 10, "window": "7d", "category": "promotional"},
            {"name": "push_day", "max": 3, "window": "24h", "channel": "push"},
            {"name": "email_week", "max": 7, "window": "7d", "channel": "email"},
            {"name": "in_app_day", "max": 5, "window": "24h", "channel": "in_app"},
            {"name": "cart_day", "max": 2, "window": "24h", "journey": "cart"},
            {"name": "win_back_week", "max": 2, "window": "7d", "journey": "win_back"},
            {"name": "discount_week", "max": 3, "window": "7d", "tag": "discount"},
            {"name": "service_day", "max": 6, "window": "24h", "category": "service"},
            {"name": "everything_day", "max": 12, "window": "24h"},
            {"name": "everything_month", "max": 60, "window": "30d", "counts_transactional": True},
        ],
        "quiet_hours": [{"channels": ["push"], "start": "22:00", "end": "08:00"}],
        "rules": [
            {"name": f"rule_{i}", "when": when, "then": then}
            for i, (when, then) in enumerate(
                [
                    ("'discount' in message.tags and user.loyalty_reward_active", "suppress"),
                    ("user.loyalty_tier == 'gold' and message.channel == 'push'",
                     {"reroute": "email"}),
                    ("'cross_sell' in message.tags and user.open_ticket", "suppress"),
                    ("message.journey == 'receipts'", {"require_channel": "email"}),
                    ("user.vip", "exempt_from_caps"),
                    ("user.orders_count > 10 and message.category == 'promotional'",
                     {"priority": 90}),
                    ("user.country == 'DE' and 'sms_only' in message.tags", "suppress"),
                    ("user.churn_risk > 0.8", {"priority": 95}),
                    ("message.value and message.value > 100", "exempt_from_caps"),
                    ("user.segment == 'employees'", "suppress"),
                ]
            )
        ],
    }
)  # fmt: skip


def request(key: str, user: str = "ada") -> SendRequest:
    return SendRequest(
        key=key, user_id=user, channels=("push", "email"), category="promotional",
        priority=60, requested_at=NOW, value=20, tags=("cart",), journey="cart",
        template="cart_reminder",
    )  # fmt: skip


def history() -> list[Contact]:
    kinds = [("email", "promotional", "welcome"), ("push", "service", "orders"),
             ("in_app", "promotional", "cart")]  # fmt: skip
    return [
        Contact(
            key=f"c{i}",
            channel=kinds[i % 3][0],
            category=kinds[i % 3][1],
            sent_at=NOW - timedelta(hours=36 * i + 1),
            journey=kinds[i % 3][2],
            tags=("news",),
            content_key=f"t{i}",
        )
        for i in range(20)
    ]


def pure(decisions: int) -> tuple[float, float]:
    """Decisions per second of wall time, and per second of this process's CPU time:
    on a machine other work shares, the second is what the function itself costs."""
    state = UserState(traits=TRAITS, contacts=history())
    requests = [request(f"m{i}") for i in range(1000)]
    decide(requests[0], state, POLICY, NOW)  # compile the policy
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(decisions):
        decide(requests[i % 1000], state, POLICY, NOW)
    return (
        decisions / (time.perf_counter() - started),
        decisions / (time.process_time() - cpu),
    )


async def stored(calls: int, callers: int) -> tuple[list[float], float]:
    with tempfile.TemporaryDirectory(prefix="arbitration-bench-") as tmp:
        postgres = EmbeddedPostgres(Path(tmp) / "pg")
        url = await asyncio.to_thread(postgres.start)
        try:
            await migrate(url)
            engine = create_engine(url, pool_size=callers)
            users = [f"user-{i}" for i in range(2000)]
            async with engine.begin() as conn:
                await conn.exec_driver_sql(
                    "INSERT INTO profiles (user_id, traits) "
                    "SELECT 'user-' || i, CAST($1 AS jsonb) FROM generate_series(0, 1999) i",
                    (json.dumps(TRAITS),),
                )
            service = Arbitration(engine, POLICY, default_timezone="UTC")
            rng = random.Random(3)
            todo = [request(f"m{i}", rng.choice(users)) for i in range(calls + 200)]
            for item in todo[:200]:  # warm up
                await service.arbitrate(item, now=NOW)
            queue = list(reversed(todo[200:]))
            latencies: list[float] = []

            async def caller() -> None:
                while queue:
                    item = queue.pop()
                    started = time.perf_counter()
                    await service.arbitrate(item, now=NOW)
                    latencies.append((time.perf_counter() - started) * 1000)

            started = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(callers)))
            rate = calls / (time.perf_counter() - started)
            await engine.dispose()
            return latencies, rate
        finally:
            await asyncio.to_thread(postgres.stop)


def main(decisions: int, calls: int, callers: int) -> None:
    rate, per_cpu = pure(decisions)
    print(f"pure decide(), 10 caps and 10 rules, 20 contacts: {rate:,.0f} decisions/s, "
          f"{per_cpu:,.0f} per CPU-second (target: over 100,000)")  # fmt: skip
    latencies, stored_rate = asyncio.run(stored(calls, callers))
    print(f"stored path, {callers} concurrent callers: {stored_rate:,.0f} decisions/s, "
          f"{summary(latencies)} (target: p99 under 5 ms)")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decisions", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--callers", type=int, default=16)
    args = parser.parse_args()
    main(args.decisions, args.calls, args.callers)
