"""The arbitration store on real Postgres: serialised per user, idempotent, with reasons."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.arbitration import Arbitration
from rules import store
from rules.decision import SendRequest
from rules.policy import Policy
from tests.support.db import rows

NOW = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
TRAITS = {"email": "ada@example.com", "device_tokens": ["t"]}


def request(key: str, **changes: Any) -> SendRequest:
    base = SendRequest(key=key, user_id="ada", channels=("push", "email"),
                       category="promotional", priority=50, requested_at=NOW,
                       journey="welcome", template="hello")  # fmt: skip
    return replace(base, **changes)


async def given_profile(engine: AsyncEngine, user: str, traits: dict[str, Any]) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO profiles (user_id, traits) VALUES (:u, CAST(:t AS jsonb))"),
            {"u": user, "t": json.dumps(traits)},
        )


def arbitration(engine: AsyncEngine, **policy: Any) -> Arbitration:
    return Arbitration(engine, Policy.model_validate(policy), default_timezone="UTC")


CAPPED = {"caps": [{"name": "three_a_day", "max": 3, "window": "1d"}]}


async def test_racing_requests_never_exceed_a_cap(engine: AsyncEngine) -> None:
    for user in ("ada", "grace"):
        await given_profile(engine, user, TRAITS)
    service = arbitration(engine, **CAPPED)
    requests = [
        request(f"{user}-{i}", user_id=user) for user in ("ada", "grace") for i in range(20)
    ]
    random.Random(7).shuffle(requests)
    decisions = await asyncio.gather(*(service.arbitrate(r, now=NOW) for r in requests))
    sent = {"ada": 0, "grace": 0}
    for req, decision in zip(requests, decisions, strict=True):
        if decision.action == "send":
            sent[req.user_id] += 1
        else:
            assert "cap three_a_day reached" in decision.reason
    assert sent == {"ada": 3, "grace": 3}
    stored = await rows(
        engine,
        "SELECT user_id, count(*) AS n FROM arbitration_requests "
        "WHERE state = 'sent' GROUP BY user_id ORDER BY user_id",
    )
    assert stored == [{"user_id": "ada", "n": 3}, {"user_id": "grace", "n": 3}]


async def test_a_retried_request_gets_the_same_answer(engine: AsyncEngine) -> None:
    await given_profile(engine, "ada", TRAITS)
    service = arbitration(engine, caps=[{"name": "one", "max": 1, "window": "1d"}])
    first = await service.arbitrate(request("m1"), now=NOW)
    assert (first.action, first.channel) == ("send", "push")
    # the cap is now full, yet asking again about m1 repeats the answer
    again = await service.arbitrate(request("m1"), now=NOW + timedelta(minutes=5))
    assert (again.action, again.channel, again.reason) == (first.action, first.channel,
                                                           first.reason)  # fmt: skip
    assert (await service.arbitrate(request("m2"), now=NOW)).action == "suppress"
    with pytest.raises(store.IdempotencyConflict):
        await service.arbitrate(request("m1", priority=99), now=NOW)
    log = await rows(engine, "SELECT key, action FROM arbitration_decisions ORDER BY id")
    assert log == [{"key": "m1", "action": "send"}, {"key": "m2", "action": "suppress"}]


async def test_a_deferral_holds_until_its_time_then_is_decided_again(engine: AsyncEngine) -> None:
    await given_profile(engine, "ada", {**TRAITS, "timezone": "Europe/London"})
    service = arbitration(engine, quiet_hours=[{"start": "21:00", "end": "08:00"}])
    night = datetime(2026, 6, 10, 22, 0, tzinfo=UTC)
    first = await service.arbitrate(request("m1", requested_at=night), now=night)
    morning = datetime(2026, 6, 11, 7, 0, tzinfo=UTC)  # 08:00 in London
    assert (first.action, first.until) == ("defer", morning)
    retried = await service.arbitrate(
        request("m1", requested_at=night), now=night + timedelta(hours=1)
    )
    assert (retried.action, retried.until) == ("defer", morning)
    later = await service.arbitrate(request("m1", requested_at=night), now=morning)
    assert (later.action, later.channel) == ("send", "push")


async def test_the_best_request_in_a_window_wins_whatever_order_they_return(
    engine: AsyncEngine,
) -> None:
    await given_profile(engine, "ada", TRAITS)
    service = arbitration(engine, conflicts={"windows": {"promotional": "10m"},
                                             "losers": "suppress"})  # fmt: skip
    contenders = [request("low", priority=20, journey="newsletter"),
                  request("high", priority=80, journey="cart"),
                  request("mid", priority=50, value=1.5, journey="win_back")]  # fmt: skip
    for i, contender in enumerate(contenders):
        at = NOW + timedelta(minutes=i)
        decision = await service.arbitrate(replace(contender, requested_at=at), now=at)
        assert (decision.action, decision.until) == ("defer", NOW + timedelta(minutes=10))
    after = NOW + timedelta(minutes=10)
    order = [contenders[2], contenders[0], contenders[1]]  # the winner comes back last
    outcomes = {}
    for i, contender in enumerate(order):
        first_asked = NOW + timedelta(minutes=contenders.index(contender))
        outcomes[contender.key] = await service.arbitrate(
            replace(contender, requested_at=first_asked), now=after + timedelta(seconds=i)
        )
    assert {k: d.action for k, d in outcomes.items()} == {
        "high": "send", "mid": "suppress", "low": "suppress"}  # fmt: skip
    assert "lost to cart (score 80 against 75)" in outcomes["mid"].reason


async def test_failed_deliveries_release_their_place_under_a_cap(engine: AsyncEngine) -> None:
    await given_profile(engine, "ada", TRAITS)
    service = arbitration(engine, caps=[{"name": "one", "max": 1, "window": "1d"}])
    assert (await service.arbitrate(request("m1"), now=NOW)).action == "send"
    assert (await service.arbitrate(request("m2"), now=NOW)).action == "suppress"
    async with engine.begin() as conn:
        await store.release(conn, "m1")
    assert (await service.arbitrate(request("m3"), now=NOW)).action == "send"


async def test_standing_suppressions_apply(engine: AsyncEngine) -> None:
    await given_profile(engine, "ada", TRAITS)
    async with engine.begin() as conn:
        await store.suppress(conn, "ada", reason="bounce", channel="email", now=NOW)
        await store.suppress(conn, "ada", reason="bounce", channel="email", now=NOW)  # idempotent
        await store.suppress(conn, "ada", reason="unsubscribe", channel="push",
                             category="promotional", now=NOW)  # fmt: skip
    decision = await arbitration(engine).arbitrate(request("m1"), now=NOW)
    assert decision.action == "suppress"
    assert "unsubscribed from promotional push messages" in decision.reason
    assert "suppressed: bounce" in decision.reason
    receipt = await arbitration(engine).arbitrate(request("m2", category="transactional"), now=NOW)
    assert (receipt.action, receipt.channel) == ("send", "push")
