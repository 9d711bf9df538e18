"""Arbitration through the HTTP API and in journeys: decisions, reasons, bad requests."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from tests.conftest import StackFactory
from tests.support.clock import ManualClock
from tests.support.db import count, rows
from tests.support.receiver import Receiver
from tests.support.stack import Stack, eventually
from tests.support.workspace import ARBITRATE_ONLY_KEY, user_token

POLICY = """
caps:
  - {name: two_promotions_a_day, max: 2, window: 1d, category: promotional}
conflicts:
  windows: {promotional: 10m, service: 0, transactional: 0}
  losers: suppress
rules:
  - name: no_discount_during_reward
    when: "'discount' in message.tags and user.loyalty_reward_active"
    then: suppress
"""

JOURNEY = """
journey: {key}
name: {key}
priority: {priority}
trigger: {{event: Signed Up}}
start: hello
steps:
  hello:
    send: {{channel: email, template: hello, tags: [{tag}]}}
    next: done
  done:
    exit: {{}}
"""


def journey(key: str, priority: int, tag: str = "news") -> str:
    return JOURNEY.format(key=key, priority=priority, tag=tag)


def ask(user: str, key: str, **changes: Any) -> dict[str, Any]:
    return {"user_id": user, "idempotency_key": key, "channels": ["email"],
            "category": "promotional", "priority": 50, **changes}  # fmt: skip


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack({"quiet": journey("quiet", 10)}, policy=POLICY)


async def test_an_external_system_asks_before_sending(stack: Stack, engine: AsyncEngine) -> None:
    await stack.identify("ada", {"email": "ada@example.com"})
    ext_1 = ask("ada", "ext-1", category="transactional")
    response = await stack.call("POST", "/v1/arbitrate", json=ext_1)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["action"], body["channel"]) == ("send", "email")
    assert {"rule": "channel email", "passed": True, "detail": "allowed"} in body["checks"]
    # a promotion waits for its conflict window, and asking again repeats the answer
    held = (await stack.call("POST", "/v1/arbitrate", json=ask("ada", "ext-2"))).json()
    assert held["action"] == "defer"
    assert held["until"] is not None
    assert (await stack.call("POST", "/v1/arbitrate", json=ask("ada", "ext-2"))).json() == held
    reused = await stack.call("POST", "/v1/arbitrate", json=ask("ada", "ext-2", priority=99))
    assert reused.status_code == 409
    assert reused.json()["field"] == "idempotency_key"
    logged = (await stack.call("GET", "/v1/users/ada/decisions")).json()
    assert [(d["key"], d["action"]) for d in logged] == [("ext-2", "defer"), ("ext-1", "send")]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (ask("ada", "k", channels=["fax"]), "channels[0]"),
        (ask("ada", "k", channels=[]), "channels"),
        (ask("ada", "k", channels=["email", "email"]), "channels"),
        (ask("ada", "k", channels=["web"]), "channels"),  # valid, but not configured
        (ask("ada", "k", category="spam"), "category"),
        (ask("ada", "k", priority=101), "priority"),
        (ask("ada", "k", propensity=2), "propensity"),
        ({k: v for k, v in ask("ada", "k").items() if k != "user_id"}, "user_id"),
        (ask("ada", "k", colour="red"), "colour"),
    ],
)
async def test_bad_arbitration_requests_get_400_and_record_nothing(
    stack: Stack, engine: AsyncEngine, body: dict[str, Any], field: str
) -> None:
    response = await stack.call("POST", "/v1/arbitrate", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert await count(engine, "arbitration_requests") == 0
    assert await count(engine, "arbitration_decisions") == 0


async def test_arbitration_needs_a_server_key_with_its_scope(
    stack: Stack, engine: AsyncEngine
) -> None:
    body = ask("ada", "k")
    refused = [
        (await stack.call("POST", "/v1/arbitrate", json=body, key=None), 401),
        (await stack.call("POST", "/v1/arbitrate", json=body, key="sk_made_up_0123456789ab"), 401),
        # the public write key counted against anyone's caps before
        (await stack.send("/v1/arbitrate", body), 403),
        (await stack.call("POST", "/v1/arbitrate", json=body, key=user_token("ada")), 403),
    ]
    assert [r.status_code for r, _ in refused] == [status for _, status in refused]
    assert await count(engine, "arbitration_decisions") == 0


async def test_idempotency_keys_belong_to_their_caller_and_user(
    stack: Stack, engine: AsyncEngine
) -> None:
    for user in ("ada", "bob"):
        await stack.identify(user, {"email": f"{user}@example.com"})
    first = await stack.call("POST", "/v1/arbitrate", json=ask("ada", "same", category="service"))
    assert first.status_code == 200, first.text
    # the same key for another user, or from another caller, is another request
    other_user = await stack.call("POST", "/v1/arbitrate", json=ask("bob", "same", priority=99))
    other_caller = await stack.call(
        "POST", "/v1/arbitrate", json=ask("ada", "same", priority=99), key=ARBITRATE_ONLY_KEY
    )
    assert (other_user.status_code, other_caller.status_code) == (200, 200)
    again = await stack.call("POST", "/v1/arbitrate", json=ask("ada", "same", category="service"))
    assert again.json() == first.json()
    conflict = await stack.call("POST", "/v1/arbitrate", json=ask("ada", "same", priority=99))
    assert conflict.status_code == 409
    assert "'same'" in conflict.json()["error"]
    assert await count(engine, "arbitration_requests") == 3


async def test_unsubscribe_bounce_and_complaint_events_become_suppressions(
    stack: Stack, engine: AsyncEngine
) -> None:
    await stack.track("ada", "Unsubscribed", {"channel": "email", "category": "promotional"})
    await stack.track("ada", "message_bounced", {"channel": "push", "type": "soft"})
    await stack.track("ada", "message_bounced", {"channel": "push", "type": "hard"})
    await stack.track("ada", "message_complained", {"channel": "email"})
    # a channel or category no message has stops them all, rather than nothing
    await stack.track("bob", "Unsubscribed", {"channel": {"x": [1, 2]}, "category": "x" * 3000})
    stored = await rows(engine, "SELECT user_id, reason, channel, category FROM suppressions "
                                "ORDER BY user_id, reason")  # fmt: skip
    assert stored == [
        {"user_id": "ada", "reason": "bounce", "channel": "push", "category": "*"},
        {"user_id": "ada", "reason": "complaint", "channel": "email", "category": "*"},
        {"user_id": "ada", "reason": "unsubscribe", "channel": "email",
         "category": "promotional"},
        {"user_id": "bob", "reason": "unsubscribe", "channel": "*", "category": "*"},
    ]  # fmt: skip


async def test_two_journeys_competing_for_one_user(
    make_stack: StackFactory,
    receiver: Receiver,
    engine: AsyncEngine,
    time_skipping: WorkflowEnvironment,
) -> None:
    journeys = {"cart": journey("cart", 80), "newsletter": journey("newsletter", 30),
                "offer": journey("offer", 99, tag="discount")}  # fmt: skip
    stack = await make_stack(journeys, policy=POLICY)
    await stack.identify("ada", {"email": "ada@example.com", "loyalty_reward_active": True})
    await stack.track("ada", "Signed Up")
    for key in journeys:
        await stack.result(key, "ada")
    # only the cart message went out; the offer was against a loyalty rule and the
    # newsletter lost the conflict window to the cart
    assert [r.json["data"]["metadata"]["journey"] for r in receiver.requests] == ["cart"]
    logged = (await stack.call("GET", "/v1/users/ada/decisions")).json()
    final = {d["journey"]: d for d in logged if d["action"] != "defer"}
    assert final["cart"]["action"] == "send"
    assert final["newsletter"]["action"] == "suppress"
    assert "lost to cart (score 80 against 30)" in final["newsletter"]["reason"]
    assert final["offer"]["reason"] == "rule no_discount_during_reward: suppresses the message"
    outcomes = await rows(engine, "SELECT e.journey_key, s.outcome FROM enrollment_steps s "
                                  "JOIN enrollments e ON e.id = s.enrollment_id "
                                  "WHERE s.step = 'hello' ORDER BY e.journey_key")  # fmt: skip
    assert [o["outcome"].split(":")[0] for o in outcomes] == [
        "delivered on email", "suppressed", "suppressed"]  # fmt: skip


QUIET = "quiet_hours:\n  - {channels: [email], start: '00:00', end: '23:59'}\n"


async def test_a_deferred_send_waits_in_the_journey_and_goes_out_later(
    make_stack: StackFactory,
    receiver: Receiver,
    time_skipping: WorkflowEnvironment,
) -> None:
    stack = await make_stack({"quiet": journey("quiet", 10)}, policy=QUIET)
    await stack.identify("ada", {"email": "ada@example.com", "timezone": "UTC"})
    await stack.track("ada", "Signed Up")

    async def deferred() -> bool:
        try:
            state = await stack.state("quiet", "ada")
        except Exception:
            return False
        return state.deferred is not None and state.status == "waiting"

    await eventually(deferred)
    assert receiver.requests == []
    result = await stack.result("quiet", "ada")
    assert result.messages_sent == 1
    [message] = receiver.requests
    assert message.path == "/email"


async def test_workflows_and_api_callers_racing_for_the_last_slots(
    make_stack: StackFactory,
    receiver: Receiver,
    engine: AsyncEngine,
) -> None:
    policy = "caps:\n  - {name: two_a_day, max: 2, window: 1d, category: promotional}\n"
    journeys = {f"j{i}": journey(f"j{i}", 50) for i in range(8)}
    stack = await make_stack(journeys, policy=policy)
    await stack.identify("ada", {"email": "ada@example.com"})
    api_calls = [stack.call("POST", "/v1/arbitrate", json=ask("ada", f"ext-{i}")) for i in range(8)]
    responses = await asyncio.gather(stack.track("ada", "Signed Up"), *api_calls)
    for key in journeys:
        await stack.result(key, "ada")
    api_sends = sum(r.json()["action"] == "send" for r in responses[1:])
    assert api_sends + len(receiver.requests) == 2
    sent = await rows(engine, "SELECT count(*) AS n FROM arbitration_requests WHERE state = 'sent'")
    assert sent == [{"n": 2}]


async def test_a_loser_learns_who_won_but_not_their_key(make_stack: StackFactory) -> None:
    clock = ManualClock()
    stack = await make_stack({"quiet": journey("quiet", 10)}, policy=POLICY, clock=clock)
    await stack.identify("ada", {"email": "ada@example.com"})
    mine = ask("ada", "backend-secret-key", priority=80)
    theirs = ask("ada", "gateway-key", priority=50)
    assert (await stack.call("POST", "/v1/arbitrate", json=mine)).json()["action"] == "defer"
    other = await stack.call("POST", "/v1/arbitrate", json=theirs, key=ARBITRATE_ONLY_KEY)
    assert other.json()["action"] == "defer"
    clock.advance(timedelta(minutes=11))
    lost = (await stack.call("POST", "/v1/arbitrate", json=theirs, key=ARBITRATE_ONLY_KEY)).json()
    assert lost["action"] == "suppress"
    assert "lost to api:backend" in lost["reason"]
    assert "backend-secret-key" not in str(lost)
    won = (await stack.call("POST", "/v1/arbitrate", json=mine)).json()
    assert (won["action"], won["channel"]) == ("send", "email")


async def test_decisions_explain_on_the_command_line(
    stack: Stack, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from orchestrator.cli import app

    await stack.identify("ada", {"email": "ada@example.com", "loyalty_reward_active": True})
    ext_9 = ask("ada", "ext-9", tags=["discount"], source="crm")
    await stack.call("POST", "/v1/arbitrate", json=ext_9)
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", postgres_url)
    result = await asyncio.to_thread(CliRunner().invoke, app, ["decisions", "explain", "ada"])
    assert result.exit_code == 0, result.output
    assert "crm  message ext-9  suppressed" in result.stdout
    assert "FAIL rule no_discount_during_reward: suppresses the message" in result.stdout
    empty = await asyncio.to_thread(CliRunner().invoke, app, ["decisions", "explain", "nobody"])
    assert "no decisions for user nobody" in empty.stdout
