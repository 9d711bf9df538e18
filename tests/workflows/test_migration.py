"""Moving users already inside a journey onto a new version (`migrate:`): a dry run
counts who goes where and stores nothing, an incomplete map is refused, and users
waiting, waiting for an event, deferred by quiet hours or at a step mapped to `exit`
move at a safe point and go on in the new version."""

from __future__ import annotations

import asyncio
from datetime import UTC, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from orchestrator.deploy import deploy_workspace
from orchestrator.migration import move_users
from orchestrator.segments.upkeep import start_upkeep
from orchestrator.sources import InvalidSource
from orchestrator.workspace import load_workspace
from tests.conftest import StackFactory
from tests.support.db import rows
from tests.support.receiver import Receiver, Script
from tests.support.stack import Stack, eventually
from tests.support.workspace import REACH_EVERYONE
from workflows import search

V1 = """
journey: moves
name: Moves
trigger: {event: Go}
start: route
steps:
  route:
    branch:
      - {when: "event.properties.kind == 'wait'", next: pause}
      - {when: "event.properties.kind == 'listen'", next: listen}
      - {when: "event.properties.kind == 'night'", next: night_send}
      - next: linger
  pause:
    wait: 2d
    next: done
  listen:
    wait_for: {event: Ping, timeout: 3d, on_event: done, on_timeout: done}
  night_send:
    send: {channel: push, template: hello}
    next: done
  linger:
    wait: 5d
    next: done
  done:
    exit: {}
"""

# v2: the pause becomes a longer rest, the listener waits a day more and thanks, the
# night push becomes an email, lingering users leave.
V2 = """
journey: moves
name: Moves
trigger: {event: Go}
migrate:
  from: [1]
  steps: {pause: rest, linger: exit}
start: route
steps:
  route:
    branch:
      - {when: "event.properties.kind == 'wait'", next: rest}
      - {when: "event.properties.kind == 'listen'", next: listen}
      - next: night_send
  rest:
    wait: 3d
    next: done
  listen:
    wait_for: {event: Ping, timeout: 4d, on_event: thanks, on_timeout: done}
  thanks:
    send: {channel: in_app, template: hello}
    next: done
  night_send:
    send: {channel: email, template: hello}
    next: done
  done:
    exit: {}
"""

QUIET_PUSH = REACH_EVERYONE + 'quiet_hours:\n  - {channels: [push], start: "21:00", end: "08:00"}\n'


async def _state_is(stack: Stack, user: str, step: str, status: str) -> bool:
    try:
        state = await stack.state("moves", user)
    except Exception:
        return False
    return (state.step, state.status) == (step, status)


async def test_users_inside_move_at_a_safe_point_and_go_on_in_the_new_version(
    make_stack: StackFactory,
    receiver: Receiver,
    engine: AsyncEngine,
    time_skipping: WorkflowEnvironment,
) -> None:
    stack = await make_stack({"moves": V1}, policy=QUIET_PUSH)
    # 02:00 UTC: inside the night's quiet hours for push.
    now = await time_skipping.get_current_time()
    two = now.astimezone(UTC).replace(hour=2, minute=0, second=0, microsecond=0)
    await time_skipping.sleep((two if two > now else two + timedelta(days=1)) - now)
    for user in ("wait", "listen", "night", "other"):
        await stack.identify(user, {"email": f"{user}@example.com", "timezone": "UTC"})
        await stack.track(user, "Go", {"kind": user})
    for user, step in (("wait", "pause"), ("listen", "listen"), ("night", "night_send"),
                       ("other", "linger")):  # fmt: skip
        await eventually(lambda u=user, s=step: _state_is(stack, u, s, "waiting"))
    # When each began to wait, on the workflows' clock (the server's, skipping time).
    began = {user: (await stack.state("moves", user)).recent_steps[-1].at
             for user in ("wait", "listen")}  # fmt: skip
    await time_skipping.sleep(timedelta(hours=1))  # they have waited an hour
    assert receiver.requests == []  # the push is held until 08:00

    journey_file = stack.workspace / "journeys" / "moves.yaml"
    # A map that leaves a step of v1 without a target is refused, and stores nothing.
    journey_file.write_text(V2.replace(", linger: exit", ""))
    with pytest.raises(InvalidSource) as refused:
        await deploy_workspace(engine, load_workspace(stack.workspace))
    [problem] = refused.value.problems
    assert (problem.line, problem.path) == (7, "migrate.steps")
    assert "step 'linger' of v1 has no target" in problem.message

    # The dry run: who is where, and where they would go; nothing stored.
    journey_file.write_text(V2)
    [plan] = await deploy_workspace(engine, load_workspace(stack.workspace), dry_run=True)
    assert (plan.version, plan.change) == (2, "updated")
    assert plan.migration is not None
    moves = {(m.step, m.users, m.target) for m in plan.migration.moves}
    assert moves == {
        ("route", 0, "route"), ("pause", 1, "rest"), ("listen", 1, "listen"),
        ("night_send", 1, "night_send"), ("linger", 1, "exit"), ("done", 0, "done"),
    }  # fmt: skip
    [row] = await rows(engine, "SELECT current_version FROM journeys")
    assert row["current_version"] == 1

    await stack.redeploy()
    assert await move_users(engine, stack.client) == 4
    assert await move_users(engine, stack.client) == 0  # told once; the version is done

    # Waiting two days became resting three, counting the hour already waited.
    await eventually(lambda: _state_is(stack, "wait", "rest", "waiting"))
    state = await stack.state("moves", "wait")
    assert state.wake_at == began["wait"] + timedelta(days=3)
    # Waiting for Ping keeps waiting, now up to four days from when it began.
    await eventually(lambda: _state_is(stack, "listen", "listen", "waiting"))
    state = await stack.state("moves", "listen")
    assert state.wake_at == began["listen"] + timedelta(days=4)
    # The held push is asked again on v2: an email, which quiet hours do not hold.
    [email] = await receiver.wait_for(lambda rs: len(rs) == 1)
    assert email.path == "/email"
    assert email.json["data"]["metadata"]["version"] == 2
    # ...and the held push gave up its place in arbitration (it would compete otherwise)
    requests = await rows(
        engine, "SELECT state FROM arbitration_requests WHERE user_id = 'night' ORDER BY state"
    )
    assert [r["state"] for r in requests] == ["released", "sent"]
    # Lingering users leave.
    other = await stack.result("moves", "other")
    assert other.status == "exited"
    assert other.end_reason == "moved to version 2: exit from 'linger'"

    # They go on in the new version: Ping now leads to v2's `thanks`.
    await stack.track("listen", "Ping")
    listen = await stack.result("moves", "listen")
    assert listen.messages_sent == 1
    visits = await rows(
        engine,
        "SELECT s.step, s.outcome FROM enrollment_steps s JOIN enrollments e "
        "ON e.id = s.enrollment_id WHERE e.user_id = 'listen' ORDER BY s.at, s.id",
    )
    assert [v["step"] for v in visits] == ["route", "listen", "listen", "thanks", "done"]
    assert visits[1]["outcome"] == "moved to version 2: step 'listen'"
    versions = await rows(engine, "SELECT user_id, version FROM enrollments ORDER BY user_id")
    assert {r["user_id"]: r["version"] for r in versions} == {
        "listen": 2, "night": 2, "other": 2, "wait": 2,
    }  # fmt: skip
    handle = stack.client.get_workflow_handle(search.workflow_id("moves", "wait"))
    attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(search.JOURNEY_VERSION) == 2
    # The resting user wakes three days after they began to wait, in v2.
    wait = await stack.result("moves", "wait")
    assert wait.status == "completed"
    assert (await time_skipping.get_current_time()) >= began["wait"] + timedelta(days=3)


async def test_users_stay_on_their_version_without_migrate(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"moves": V1})
    await stack.track("u1", "Go", {"kind": "wait"})
    await eventually(lambda: _state_is(stack, "u1", "pause", "waiting"))
    (stack.workspace / "journeys" / "moves.yaml").write_text(
        V2.replace("migrate:\n  from: [1]\n  steps: {pause: rest, linger: exit}\n", "")
    )
    await stack.redeploy()
    assert await move_users(engine, stack.client) == 0
    state = await stack.state("moves", "u1")
    assert state.step == "pause"
    [row] = await rows(engine, "SELECT version FROM enrollments")
    assert row["version"] == 1


async def test_the_workers_upkeep_moves_users_after_a_deploy(make_stack: StackFactory) -> None:
    stack = await make_stack({"moves": V1})
    await stack.track("u1", "Go", {"kind": "wait"})
    await eventually(lambda: _state_is(stack, "u1", "pause", "waiting"))
    (stack.workspace / "journeys" / "moves.yaml").write_text(V2)
    await stack.redeploy()
    # As every production worker and `orchestrator dev` do:
    await start_upkeep(stack.client, stack.services.settings.task_queue, every=timedelta(minutes=1))
    await eventually(lambda: _state_is(stack, "u1", "rest", "waiting"), skip=stack.skip)
    handle = stack.client.get_workflow_handle(search.workflow_id("moves", "u1"))
    assert (await handle.describe()).typed_search_attributes.get(search.JOURNEY_VERSION) == 2


SEND_THEN_PAUSE = """
journey: moves
name: Moves
trigger: {event: Go}
start: hello
steps:
  hello:
    send: {channel: email, template: hello}
    next: pause
  pause:
    wait: 2d
    next: done
  done:
    exit: {}
"""


async def test_a_user_told_to_move_during_a_send_moves_once_it_is_done(
    make_stack: StackFactory, receiver: Receiver, engine: AsyncEngine
) -> None:
    stack = await make_stack({"moves": SEND_THEN_PAUSE})
    receiver.script("/email", Script(200, delay=3.0))  # the send takes a while
    await stack.track("u1", "Go")
    await asyncio.wait_for(receiver.arriving.wait(), 30)  # ...and is under way
    (stack.workspace / "journeys" / "moves.yaml").write_text(
        SEND_THEN_PAUSE.replace(
            "start: hello", "migrate: {from: [1], steps: {pause: rest}}\nstart: hello"
        )
        .replace("  pause:\n    wait: 2d", "  rest:\n    wait: 3d")
        .replace("next: pause", "next: rest")
    )
    await stack.redeploy()
    assert await move_users(engine, stack.client) == 1
    # The send finishes on v1; the next step, v1's `pause`, is where v2's `rest` begins.
    await eventually(lambda: _state_is(stack, "u1", "rest", "waiting"))
    visits = await rows(engine, "SELECT step, outcome FROM enrollment_steps ORDER BY at, id")
    assert [(v["step"], v["outcome"]) for v in visits] == [
        ("hello", "delivered on email"),
        ("rest", None),
    ]
    [message] = await rows(engine, "SELECT version, status FROM messages")
    assert message == {"version": 1, "status": "sent"}


async def test_a_keyed_journey_and_an_unkeyed_one_do_not_exchange_users(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack(
        {"moves": V1.replace("start: route", "instance: event.properties.id\nstart: route")}
    )
    (stack.workspace / "journeys" / "moves.yaml").write_text(V2)
    with pytest.raises(InvalidSource) as refused:
        await deploy_workspace(engine, load_workspace(stack.workspace))
    [problem] = refused.value.problems
    assert problem.path == "migrate.from.0"
    assert "v1 is keyed by event.properties.id and this version by nothing" in problem.message
