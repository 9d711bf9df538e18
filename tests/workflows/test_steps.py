"""Each step kind, run for real: time-skipping Temporal, Postgres, a loopback receiver."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from tests.conftest import StackFactory
from tests.support.db import enrollments, rows
from tests.support.receiver import Receiver, Script
from tests.support.stack import eventually
from workflows.assignment import pick_variant

WELCOME = """
journey: welcome
name: Welcome
trigger: {event: Signed Up}
start: hello
steps:
  hello:
    send: {channel: email, template: hello, tags: [onboarding]}
    next: pause
  pause:
    wait: 2d
    next: nudge
  nudge:
    send: {channel: push, template: hello}
    next: done
  done:
    exit: {}
"""


def skipper(env: WorkflowEnvironment, hours: float = 6):
    async def skip() -> None:
        await env.sleep(timedelta(hours=hours))

    return skip


async def test_send_wait_send_exit(
    make_stack: StackFactory,
    receiver: Receiver,
    engine: AsyncEngine,
    time_skipping: WorkflowEnvironment,
) -> None:
    stack = await make_stack({"welcome": WELCOME})
    await stack.identify("u1", {"first_name": "Ada", "email": "ada@example.com"})
    await stack.track("u1", "Signed Up")
    [email] = await receiver.wait_for(lambda rs: len(rs) >= 1)
    assert email.path == "/email"
    assert email.verified
    assert email.json["data"]["content"]["subject"] == "Hello Ada"
    assert email.json["data"]["recipient"] == {"user_id": "u1", "email": "ada@example.com"}
    assert email.json["data"]["metadata"]["tags"] == ["onboarding"]
    # nothing more until two days have passed
    await eventually(lambda: _step_is(stack, "welcome", "u1", "pause", "waiting"))
    assert len(receiver.requests) == 1
    await eventually(lambda: _at_least(receiver, 2), skip=skipper(time_skipping))
    push = receiver.requests[1]
    assert push.path == "/push"
    assert push.verified
    assert push.msg_id != email.msg_id
    result = await stack.result("welcome", "u1")
    assert (result.status, result.messages_sent, result.steps) == ("completed", 2, 4)
    [enrollment] = await enrollments(engine, "welcome")
    assert (enrollment["status"], enrollment["end_reason"]) == ("completed", "exit step 'done'")
    visits = await rows(engine, "SELECT step, outcome FROM enrollment_steps ORDER BY at, id")
    assert [v["step"] for v in visits] == ["hello", "pause", "nudge", "done"]
    assert visits[0]["outcome"] == "delivered on email"
    messages = await rows(engine, "SELECT channel, status FROM messages ORDER BY created_at")
    assert messages == [
        {"channel": "email", "status": "sent"},
        {"channel": "push", "status": "sent"},
    ]


async def _at_least(receiver: Receiver, n: int) -> bool:
    return len(receiver.requests) >= n


LOCAL_MORNING = """
journey: morning
name: Morning
trigger: {event: Signed Up}
start: morning
steps:
  morning:
    wait: {until: "09:00", timezone: user}
    next: hello
  hello:
    send: {channel: email, template: hello}
    next: done
  done:
    exit: {}
"""


async def test_wait_until_a_local_time_in_the_users_timezone(
    make_stack: StackFactory,
    receiver: Receiver,
    engine: AsyncEngine,
    time_skipping: WorkflowEnvironment,
) -> None:
    stack = await make_stack({"morning": LOCAL_MORNING})
    await stack.identify("ny", {"timezone": "America/New_York"})
    await stack.identify("nozone", {})
    await stack.track("ny", "Signed Up")
    await stack.track("nozone", "Signed Up")
    await eventually(lambda: _at_least(receiver, 2), skip=skipper(time_skipping, 1))
    for user, zone in (("ny", "America/New_York"), ("nozone", "UTC")):
        state = await stack.state("morning", user)
        [hello] = [v for v in state.recent_steps if v.step == "hello"]
        local = hello.at.astimezone(ZoneInfo(zone))
        assert (local.hour, local.minute) == (9, 0), (user, local)


WAIT_FOR = """
journey: cart
name: Cart
trigger: {event: Cart Abandoned}
start: wait
steps:
  wait:
    wait_for:
      event: Order Completed
      where: event.properties.total > 10
      timeout: 1d
      on_event: thanks
      on_timeout: reminder
  thanks:
    send: {channel: email, template: hello}
    next: done
  reminder:
    send: {channel: push, template: hello}
    next: done
  done:
    exit: {}
"""


async def test_wait_for_takes_the_event_path_when_a_matching_event_arrives(
    make_stack: StackFactory,
    receiver: Receiver,
) -> None:
    stack = await make_stack({"cart": WAIT_FOR})
    await stack.track("u1", "Cart Abandoned", {"cart_value": 50})
    await eventually(lambda: _step_is(stack, "cart", "u1", "wait", "waiting"))
    await stack.track("u1", "Order Completed", {"total": 5})  # does not match `where`
    await stack.track("u1", "Order Completed", {"total": 25})
    result = await stack.result("cart", "u1")
    assert result.status == "completed"
    [message] = receiver.requests
    assert message.path == "/email"
    # the message renders the awaited event, not the trigger
    assert message.json["data"]["content"]["text"].endswith("event Order Completed")


async def test_wait_for_takes_the_timeout_path_when_nothing_arrives(
    make_stack: StackFactory,
    receiver: Receiver,
    time_skipping: WorkflowEnvironment,
) -> None:
    stack = await make_stack({"cart": WAIT_FOR})
    await stack.track("u1", "Cart Abandoned", {"cart_value": 50})
    await eventually(lambda: _at_least(receiver, 1), skip=skipper(time_skipping))
    [message] = receiver.requests
    assert message.path == "/push"
    assert message.json["data"]["content"]["body"] == "Cart 50"
    state = await stack.state("cart", "u1")
    assert next(v.outcome for v in state.recent_steps) == "no Order Completed before timeout"


async def _step_is(stack, journey: str, user: str, step: str, status: str) -> bool:
    try:
        state = await stack.state(journey, user)
    except Exception:
        return False
    return (state.step, state.status) == (step, status)


BRANCH_AND_PROFILE = """
journey: tiers
name: Tiers
trigger: {event: Signed Up}
start: tier
steps:
  tier:
    branch:
      - when: user.tier == 'gold' and event.properties.plan == 'annual'
        next: vip
      - when: user.tier == 'gold'
        next: gold
      - next: tag
  vip:
    send: {channel: push, template: hello}
    next: tag
  gold:
    send: {channel: email, template: hello}
    next: tag
  tag:
    update_profile:
      set: {welcomed_by: "{{ journey.key }}-{{ user.tier | default('none') }}", step_count: 3}
      unset: [pending_welcome]
    next: done
  done:
    exit: {}
"""


async def test_branch_arms_and_profile_updates(
    make_stack: StackFactory,
    receiver: Receiver,
    engine: AsyncEngine,
) -> None:
    stack = await make_stack({"tiers": BRANCH_AND_PROFILE})
    for user, traits in (
        ("vip", {"tier": "gold"}),
        ("gold", {"tier": "gold"}),
        ("plain", {"pending_welcome": True}),
    ):
        await stack.identify(user, traits)
    await stack.track("vip", "Signed Up", {"plan": "annual"})
    await stack.track("gold", "Signed Up", {"plan": "monthly"})
    await stack.track("plain", "Signed Up")
    for user in ("vip", "gold", "plain"):
        await stack.result("tiers", user)
    by_user = {r.json["data"]["recipient"]["user_id"]: r.path for r in receiver.requests}
    assert by_user == {"vip": "/push", "gold": "/email"}
    profiles = {
        r["user_id"]: r["traits"]
        for r in await rows(engine, "SELECT user_id, traits FROM profiles")
    }
    assert profiles["vip"] == {"tier": "gold", "welcomed_by": "tiers-gold", "step_count": 3}
    assert profiles["plain"] == {"welcomed_by": "tiers-none", "step_count": 3}
    outcomes = await rows(
        engine, "SELECT outcome FROM enrollment_steps WHERE step = 'tier' ORDER BY enrollment_id"
    )
    assert [o["outcome"].split(":")[0] for o in outcomes] == ["arm 1", "arm 2", "default"]


EXPERIMENT = """
journey: offer
name: Offer
trigger: {event: Lapsed}
re_entry: always
start: split
steps:
  split:
    experiment:
      key: offer_test
      variants:
        - {name: control, weight: 1, next: done}
        - {name: discount, weight: 1, next: mail}
  mail:
    send: {channel: email, template: hello}
    next: done
  done:
    exit: {}
"""


async def test_experiment_assignment_is_sticky_per_user(
    make_stack: StackFactory,
    receiver: Receiver,
    engine: AsyncEngine,
) -> None:
    stack = await make_stack({"offer": EXPERIMENT})
    users = [f"user-{i}" for i in range(12)]
    # keyed by journey and experiment, so another journey's `offer_test` splits apart
    scoped = "offer/offer_test"
    expected = {u: ["control", "discount"][pick_variant(scoped, u, [1, 1])] for u in users}
    assert len(set(expected.values())) == 2
    for round_ in range(2):  # re-entering gets the same variant
        for user in users:
            await stack.track(user, "Lapsed")
            await stack.result("offer", user)
        outcomes = await rows(
            engine,
            "SELECT e.user_id, s.outcome FROM enrollment_steps s JOIN enrollments e "
            "ON e.id = s.enrollment_id WHERE s.step = 'split' ORDER BY s.id",
        )
        got = {r["user_id"]: r["outcome"].removeprefix("variant ") for r in outcomes}
        assert got == expected, round_
    mailed = sorted({r.json["data"]["recipient"]["user_id"] for r in receiver.requests})
    assert mailed == sorted(u for u, v in expected.items() if v == "discount")
    assert len(receiver.requests) == 2 * len(mailed)
    # each user's assignment is one row, with the arm's configured share, kept from the
    # first entry
    logged = await rows(
        engine,
        "SELECT user_id, arm, propensity, mode, experiment_key FROM assignments "
        "WHERE kind = 'experiment' ORDER BY user_id",
    )
    assert {r["user_id"]: r["arm"] for r in logged} == expected
    assert len(logged) == len(users)
    assert {(r["propensity"], r["mode"], r["experiment_key"]) for r in logged} == {
        (0.5, "fixed", "offer_test")
    }


WEBHOOK = """
journey: crm
name: CRM
trigger: {event: Signed Up}
start: notify
steps:
  notify:
    webhook:
      url: "{{ journey.key }}"
      body: {user: "{{ user.id }}", plan: "{{ event.properties.plan }}", static: 7}
    next: done
  done:
    exit: {}
"""


async def test_webhook_step_posts_signed_json_and_survives_refusal(
    make_stack: StackFactory,
    receiver: Receiver,
    engine: AsyncEngine,
) -> None:
    stack = await make_stack(
        {"crm": WEBHOOK.replace('"{{ journey.key }}"', f"{receiver.url}/hooks/crm")}
    )
    await stack.track("u1", "Signed Up", {"plan": "pro"})
    result = await stack.result("crm", "u1")
    [call] = receiver.requests
    assert call.path == "/hooks/crm"
    assert call.verified
    assert call.json == {"user": "u1", "plan": "pro", "static": 7}
    assert result.status == "completed"
    # a 4xx is final: the journey records it and moves on
    receiver.script("/hooks/crm", Script(422))
    await stack.track("u2", "Signed Up", {"plan": "free"})
    result = await stack.result("crm", "u2")
    assert result.status == "completed"
    [outcome] = await rows(
        engine,
        "SELECT s.outcome FROM enrollment_steps s JOIN enrollments e "
        "ON e.id = s.enrollment_id WHERE e.user_id = 'u2' "
        "AND s.step = 'notify'",
    )
    assert outcome["outcome"].startswith("failed:")
    assert "422" in outcome["outcome"]
    assert len(receiver.at("/hooks/crm")) == 2
