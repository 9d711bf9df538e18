"""Replaying recorded histories catches interpreter changes that would break running users.

Histories under `histories/` were recorded from earlier versions of the interpreter; a
change that makes them fail to replay needs `workflow.patched()`. To record a new one,
run this module with RECORD_HISTORY=<name>.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowExecutionStatus, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from orchestrator.migration import move_users
from orchestrator.temporal import SANDBOX
from tests.conftest import StackFactory
from tests.support.receiver import Receiver, Script
from tests.support.stack import eventually
from workflows import search
from workflows.journey import JourneyWorkflow
from workflows.messages import JourneyState

HISTORIES = Path(__file__).parent / "histories"

EVERY_STEP = """
journey: tour
name: Tour of every step
trigger: {event: Signed Up, when: "event.properties.plan != 'test'"}
exit_on: [Unsubscribed]
goal: {event: Order Completed, within: 30d, exit: false}
start: split
steps:
  split:
    experiment:
      key: tour_split
      variants:
        - {name: a, weight: 1, next: hello}
        - {name: b, weight: 1, next: hello}
  hello:
    send:
      channels: [push, email]
      template: hello
      content: {recommendations: {slot: tour, k: 2}}
    next: pause
  pause:
    wait: 1d
    next: morning
  morning:
    wait: {until: "09:00", timezone: user}
    next: listen
  listen:
    wait_for: {event: Order Completed, timeout: 2d, on_event: thank, on_timeout: thank}
  thank:
    branch:
      - when: user.vip
        next: tag
      - next: tag
  tag:
    update_profile: {set: {toured: "{{ journey.key }}"}}
    next: done
  done:
    exit: {}
"""


def replayer() -> Replayer:
    return Replayer(
        workflows=[JourneyWorkflow],
        data_converter=pydantic_data_converter,
        workflow_runner=SandboxedWorkflowRunner(restrictions=SANDBOX),
    )


async def test_a_fresh_history_of_every_step_kind_replays(
    make_stack: StackFactory,
    receiver: Receiver,
) -> None:
    stack = await make_stack({"tour": EVERY_STEP})
    await stack.identify("u1", {"timezone": "Asia/Tokyo", "vip": True})
    await stack.track("u1", "Signed Up", {"plan": "pro"})
    await receiver.wait_for(lambda rs: len(rs) == 1)
    await stack.track("u1", "Order Completed", {"total": 10})
    result = await stack.result("tour", "u1")
    assert result.status == "completed"
    history = await stack.handle("tour", "u1").fetch_history()
    await replayer().replay_workflow(history)
    if name := os.environ.get("RECORD_HISTORY"):
        (HISTORIES / f"{name}.json").write_text(history.to_json())


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.stem)
async def test_recorded_histories_still_replay(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


KEYED = """
journey: tour_keyed
name: Keys, events heard between waits, a move
trigger: {event: Cart Abandoned}
instance: event.properties.cart_id
re_entry: always
start: hello
steps:
  hello:
    send: {channel: email, template: hello}
    next: listen
  listen:
    wait_for: {event: Checkout Started, timeout: 1d, on_event: pause, on_timeout: pause}
  pause:
    wait: 2d
    next: done
  done:
    exit: {}
"""


async def test_a_fresh_history_with_keys_heard_events_and_a_move_replays(
    make_stack: StackFactory, receiver: Receiver, engine: AsyncEngine
) -> None:
    stack = await make_stack({"tour_keyed": KEYED})
    receiver.script("/email", Script(200, delay=2.0))
    await stack.track("u1", "Cart Abandoned", {"cart_id": "c1"})
    await asyncio.wait_for(receiver.arriving.wait(), 30)
    await stack.track("u1", "Checkout Started", {"cart_id": "c1"})  # heard during the send
    handle = stack.client.get_workflow_handle(search.workflow_id("tour_keyed", "u1", "c1"))

    async def pausing() -> bool:
        state = await handle.query("state", result_type=JourneyState)
        return (state.step, state.status) == ("pause", "waiting")

    await eventually(pausing)
    moved = KEYED.replace("start: hello", "migrate: {from: [1]}\nstart: hello")
    (stack.workspace / "journeys" / "tour_keyed.yaml").write_text(moved.replace("2d", "3d"))
    await stack.redeploy()
    assert await move_users(engine, stack.client) == 1
    await eventually(lambda: _closed(handle), skip=stack.skip)
    history = await handle.fetch_history()
    await replayer().replay_workflow(history)
    if name := os.environ.get("RECORD_HISTORY"):
        (HISTORIES / f"{name}.json").write_text(history.to_json())


async def _closed(handle: Any) -> bool:
    return (await handle.describe()).status != WorkflowExecutionStatus.RUNNING


FOLLOWED = """
journey: tour_followed
name: An anonymous visitor identified on the way
trigger: {event: Product Viewed}
start: hello
steps:
  hello:
    send: {channel: email, template: hello}
    next: listen
  listen:
    wait_for: {event: Order Completed, timeout: 3d, on_event: thank, on_timeout: done}
  thank:
    send: {channel: push, template: hello}
    next: done
  done:
    exit: {}
"""


async def test_a_fresh_history_following_an_identify_replays(
    make_stack: StackFactory, receiver: Receiver
) -> None:
    stack = await make_stack({"tour_followed": FOLLOWED})
    viewed = {"anonymousId": "a1", "event": "Product Viewed", "messageId": "m-1"}
    assert (await stack.send("/v1/track", viewed)).status_code == 200
    await receiver.wait_for(lambda rs: len(rs) == 1)
    identify = {"userId": "u1", "anonymousId": "a1", "messageId": "m-2"}
    assert (await stack.send("/v1/identify", identify)).status_code == 200
    handle = stack.client.get_workflow_handle(search.workflow_id("tour_followed", "anonymous:a1"))

    async def followed() -> bool:
        state = await handle.query("state", result_type=JourneyState)
        return state.user_id == "u1"

    await eventually(followed)
    await stack.track("u1", "Order Completed")
    await eventually(lambda: _closed(handle), skip=stack.skip)
    assert len(receiver.requests) == 2
    history = await handle.fetch_history()
    await replayer().replay_workflow(history)
    if name := os.environ.get("RECORD_HISTORY"):
        (HISTORIES / f"{name}.json").write_text(history.to_json())
