"""Entering and leaving journeys: exit_on, goals, re-entry, holdout, versions, history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from tests.conftest import StackFactory
from tests.support.clock import ManualClock
from tests.support.db import enrollments, rows
from tests.support.receiver import Receiver
from tests.support.stack import eventually
from tests.workflows.test_steps import WELCOME, _step_is, skipper
from workflows.assignment import in_holdout
from workflows.messages import EnterSignal, EventSignal

LONG_WAIT = """
journey: nurture
name: Nurture
trigger: {event: Signed Up}
re_entry: {policy}
exit_on:
  - Unsubscribed
  - event: Plan Changed
    where: event.properties.plan == 'enterprise'
goal: {event: Order Completed, within: 7d, where: event.properties.total > 0}
start: hello
steps:
  hello:
    send: {channel: email, template: hello}
    next: pause
  pause:
    wait: 3d
    next: nudge
  nudge:
    send: {channel: push, template: hello}
    next: done
  done:
    exit: {}
"""


def nurture(policy: str = "never") -> str:
    return LONG_WAIT.replace("{policy}", policy)


async def test_exit_on_ends_the_journey_mid_wait(
    make_stack: StackFactory,
    receiver: Receiver,
    engine: AsyncEngine,
) -> None:
    stack = await make_stack({"nurture": nurture()})
    await stack.track("u1", "Signed Up")
    await eventually(lambda: _step_is(stack, "nurture", "u1", "pause", "waiting"))
    await stack.track("u1", "Plan Changed", {"plan": "pro"})  # `where` does not hold
    await stack.track("u1", "Page Viewed")  # no journey cares: never reaches Temporal
    assert (await stack.state("nurture", "u1")).status == "waiting"
    await stack.track("u1", "Unsubscribed")
    result = await stack.result("nurture", "u1")
    assert (result.status, result.end_reason) == ("exited", "exit on Unsubscribed")
    assert len(receiver.requests) == 1
    [enrollment] = await enrollments(engine, "nurture")
    assert (enrollment["status"], enrollment["current_step"]) == ("exited", "pause")
    unrouted = await rows(engine, "SELECT event FROM events WHERE routed_at IS NULL")
    assert unrouted == []


async def test_goal_converts_and_ends_the_journey(
    make_stack: StackFactory,
    receiver: Receiver,
    engine: AsyncEngine,
) -> None:
    stack = await make_stack({"nurture": nurture()})
    await stack.track("u1", "Signed Up")
    await eventually(lambda: _step_is(stack, "nurture", "u1", "pause", "waiting"))
    await stack.track("u1", "Order Completed", {"total": 0})  # `where` does not hold
    assert (await stack.state("nurture", "u1")).status == "waiting"
    await stack.track("u1", "Order Completed", {"total": 42})
    result = await stack.result("nurture", "u1")
    assert (result.status, result.end_reason) == ("converted", "goal Order Completed")
    [enrollment] = await enrollments(engine, "nurture")
    assert enrollment["status"] == "converted"
    assert enrollment["converted_at"] is not None


async def test_conversions_count_after_the_journey_and_only_within_the_window(
    make_stack: StackFactory,
    engine: AsyncEngine,
) -> None:
    clock = ManualClock()
    journey = nurture().replace("    wait: 3d\n", "    wait: 1h\n")
    stack = await make_stack({"nurture": journey}, clock=clock)
    await stack.track("late", "Signed Up")
    await stack.track("ontime", "Signed Up")
    for user in ("late", "ontime"):
        assert (await stack.result("nurture", user)).status == "completed"
    await stack.track("ontime", "Order Completed", {"total": 10})
    clock.advance(timedelta(days=8))
    await stack.track("late", "Order Completed", {"total": 10})
    got = {e["user_id"]: e["converted_at"] for e in await enrollments(engine, "nurture")}
    assert got["ontime"] is not None
    assert got["late"] is None


async def test_re_entry_never(make_stack: StackFactory, engine: AsyncEngine) -> None:
    stack = await make_stack({"nurture": nurture("never").replace("wait: 3d", "wait: 1h")})
    await stack.track("u1", "Signed Up")
    await stack.track("u1", "Signed Up")  # while in the journey: ignored
    await stack.result("nurture", "u1")
    await stack.track("u1", "Signed Up")  # after it: refused by the policy
    assert len(await enrollments(engine, "nurture")) == 1


async def test_re_entry_always_starts_a_new_run_with_new_messages(
    make_stack: StackFactory,
    receiver: Receiver,
    engine: AsyncEngine,
) -> None:
    stack = await make_stack({"nurture": nurture("always").replace("wait: 3d", "wait: 1h")})
    await stack.track("u1", "Signed Up")
    first = await stack.result("nurture", "u1")
    await stack.track("u1", "Signed Up")
    await eventually(lambda: _enrolled(engine, 2))
    second = await stack.result("nurture", "u1")
    assert first.status == second.status == "completed"
    assert len(receiver.requests) == 4
    assert len({r.msg_id for r in receiver.requests}) == 4
    statuses = [e["status"] for e in await enrollments(engine, "nurture")]
    assert statuses == ["completed", "completed"]


async def test_re_entry_after_a_cooldown(
    make_stack: StackFactory,
    engine: AsyncEngine,
) -> None:
    clock = ManualClock()
    journey = nurture("{after: 2d}").replace("wait: 3d", "wait: 1h")
    stack = await make_stack({"nurture": journey}, clock=clock)
    await stack.track("u1", "Signed Up")
    await stack.result("nurture", "u1")
    clock.advance(timedelta(days=1))
    await stack.track("u1", "Signed Up")  # inside the cooldown
    assert len(await enrollments(engine, "nurture")) == 1
    clock.advance(timedelta(days=1, minutes=1))
    await stack.track("u1", "Signed Up")
    await eventually(lambda: _enrolled(engine, 2))


async def _enrolled(engine: AsyncEngine, n: int) -> bool:
    return len(await enrollments(engine, "nurture")) >= n


HOLDOUT = WELCOME.replace(
    "start: hello", "holdout: 50\ngoal: {event: Order Completed}\nstart: hello"
).replace("wait: 2d", "wait: 1h")


async def test_holdout_users_are_recorded_but_get_nothing(
    make_stack: StackFactory,
    receiver: Receiver,
    engine: AsyncEngine,
) -> None:
    stack = await make_stack({"welcome": HOLDOUT})
    users = [f"user-{i}" for i in range(16)]
    held = {u for u in users if in_holdout("welcome", u, 50)}
    assert 0 < len(held) < len(users)
    for user in users:
        await stack.track(user, "Signed Up")
    for user in set(users) - held:
        await stack.result("welcome", user)
    got = {e["user_id"]: e["status"] for e in await enrollments(engine, "welcome")}
    assert {u for u, s in got.items() if s == "holdout"} == held
    mailed = {r.json["data"]["recipient"]["user_id"] for r in receiver.requests}
    assert mailed == set(users) - held
    # the control group's conversions are measured too
    control = sorted(held)[0]
    await stack.track(control, "Order Completed")
    [row] = [e for e in await enrollments(engine, "welcome") if e["user_id"] == control]
    assert row["converted_at"] is not None
    # and holdout is sticky: a held-out user stays out
    assert len([e for e in await enrollments(engine, "welcome") if e["user_id"] == control]) == 1
    # the users API points at a workflow only for users who have one
    mine = (await stack.call("GET", f"/v1/users/{control}/journeys")).json()
    assert [(j["status"], j["workflow_id"]) for j in mine] == [("holdout", None)]
    treated = sorted(set(users) - held)[0]
    theirs = (await stack.call("GET", f"/v1/users/{treated}/journeys")).json()
    assert theirs[0]["workflow_id"] == f"journey:welcome:{treated}"


async def test_users_finish_on_the_version_they_entered(
    make_stack: StackFactory,
    receiver: Receiver,
    engine: AsyncEngine,
    time_skipping: WorkflowEnvironment,
) -> None:
    stack = await make_stack({"welcome": WELCOME})
    await stack.track("early", "Signed Up")
    await eventually(lambda: _step_is(stack, "welcome", "early", "pause", "waiting"))
    # the marketer changes the journey: the follow-up now goes by in-app message
    edited = WELCOME.replace(
        "send: {channel: push, template: hello}", "send: {channel: in_app, template: hello}"
    )
    (stack.workspace / "journeys" / "welcome.yaml").write_text(edited.lstrip())
    await stack.redeploy()
    await stack.track("late", "Signed Up")
    await eventually(lambda: _step_is(stack, "welcome", "late", "pause", "waiting"))
    await eventually(lambda: _follow_ups(receiver, 2), skip=skipper(time_skipping))
    follow_ups = {
        r.json["data"]["recipient"]["user_id"]: (r.path, r.json["data"]["metadata"]["version"])
        for r in receiver.requests
        if r.path != "/email"
    }
    assert follow_ups == {"early": ("/push", 1), "late": ("/in_app", 2)}
    versions = {e["user_id"]: e["version"] for e in await enrollments(engine, "welcome")}
    assert versions == {"early": 1, "late": 2}


async def _follow_ups(receiver: Receiver, n: int) -> bool:
    return len([r for r in receiver.requests if r.path != "/email"]) >= n


PINGS = """
journey: pings
name: Pings
trigger: {event: Started}
start: listen
steps:
  listen:
    wait_for: {event: Ping, timeout: 10d, on_event: listen, on_timeout: done}
  done:
    exit: {}
"""


async def test_long_histories_continue_as_new_without_losing_state(
    make_stack: StackFactory,
    engine: AsyncEngine,
) -> None:
    stack = await make_stack({"pings": PINGS}, history_limit=40)
    await stack.track("u1", "Started")
    for i in range(25):
        # each visit of the waiting step is stored when the wait begins
        await eventually(lambda i=i: _stored_visits(engine, i + 1))
        await stack.track("u1", "Ping", {"n": i})
    await eventually(lambda: _stored_visits(engine, 26))
    state = await stack.state("pings", "u1")
    assert state.runs > 1
    assert state.visits["listen"] == 26
    assert state.last_event is not None
    assert state.last_event.properties == {"n": 24}
    assert state.status == "waiting"


async def _stored_visits(engine: AsyncEngine, n: int) -> bool:
    [row] = await rows(engine, "SELECT count(*) AS n FROM enrollment_steps")
    return int(row["n"]) >= n


async def test_an_entry_signalled_while_a_run_ends_continues_in_the_same_workflow(
    make_stack: StackFactory,
    receiver: Receiver,
    engine: AsyncEngine,
) -> None:
    """The race the `enter` signal exists for: a re-entry is decided (the previous
    enrollment already ended in Postgres) while the previous run is still closing, so
    signal-with-start reaches that run; it must carry on as the new enrollment."""
    stack = await make_stack({"nurture": nurture("always")})
    await stack.track("u1", "Signed Up")
    await eventually(lambda: _step_is(stack, "nurture", "u1", "pause", "waiting"))
    [first] = await enrollments(engine, "nurture")
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE enrollments SET status = 'completed' WHERE id = :id"), {"id": first["id"]}
        )
        second = (
            await conn.execute(
                text(
                    "INSERT INTO enrollments (journey_key, version, user_id, status, "
                    "trigger_message_id, entered_at) "
                    "VALUES ('nurture', 1, 'u1', 'active', 'again', now()) RETURNING id"
                )
            )
        ).scalar_one()
    trigger = EventSignal(message_id="again", name="Signed Up", timestamp=datetime.now(UTC))
    handle = stack.handle("nurture", "u1")
    first_run = (await handle.describe()).run_id
    await handle.signal("enter", EnterSignal(enrollment_id=second, version=1, trigger=trigger))
    await stack.track("u1", "Plan Changed", {"plan": "enterprise"})  # the first run ends...
    await receiver.wait_for(lambda rs: len(rs) == 2)  # ...and the second one says hello
    description = await handle.describe()
    assert description.run_id != first_run
    statuses = {e["id"]: e["status"] for e in await enrollments(engine, "nurture")}
    assert statuses == {first["id"]: "exited", second: "active"}
    await eventually(lambda: _step_is(stack, "nurture", "u1", "pause", "waiting"))
    visits = await rows(
        engine, "SELECT step FROM enrollment_steps WHERE enrollment_id = :id ORDER BY id", id=second
    )
    assert [v["step"] for v in visits] == ["hello", "pause"]
