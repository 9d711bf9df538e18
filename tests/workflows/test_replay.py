"""Replaying recorded histories catches interpreter changes that would break running users.

Histories under `histories/` were recorded from earlier versions of the interpreter; a
change that makes them fail to replay needs `workflow.patched()`. To record a new one,
run this module with RECORD_HISTORY=<name>.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from orchestrator.temporal import SANDBOX
from tests.conftest import StackFactory
from tests.support.receiver import Receiver
from workflows.journey import JourneyWorkflow

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
