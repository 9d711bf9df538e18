"""Message ids are unique per installation, and stable across retries, continue-as-new
and replays of journeys recorded before installations had ids (and across a worker
crash: tests/test_worker_crash.py)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import (
    Interceptor,
    Replayer,
    StartActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner
from temporalio.workflow import ActivityHandle

from orchestrator.tables import metadata
from orchestrator.temporal import SANDBOX
from rules.store import metadata as rules_metadata
from tests.conftest import StackFactory
from tests.support.db import enrollments, rows
from tests.support.receiver import Receiver, Script
from tests.support.stack import Stack, eventually
from tests.workflows.test_delivery import ONE_SEND
from tests.workflows.test_replay import HISTORIES
from workflows.journey import JourneyWorkflow
from workflows.messages import JourneyInput, SendInput

CHATTY = """
journey: chatty
name: Chatty
trigger: {event: Started}
start: hello
steps:
  hello:
    send: {channel: email, template: hello}
    next: listen
  listen:
    wait_for: {event: Ping, timeout: 10d, on_event: hello, on_timeout: done}
  done:
    exit: {}
"""


async def empty_database(engine: AsyncEngine) -> None:
    """What deleting `.state` does to the database: every table empty, ids from 1 again."""
    tables = ", ".join(t.name for m in (metadata, rules_metadata) for t in m.sorted_tables)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


async def stored_installation_id(engine: AsyncEngine) -> uuid.UUID:
    [row] = await rows(engine, "SELECT id FROM installation")
    found: uuid.UUID = row["id"]
    return found


async def started_with(stack: Stack, journey: str, user_id: str) -> JourneyInput:
    """The input of the user's current run (after continue-as-new, the carried one)."""
    history = await stack.handle(journey, user_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    [input] = pydantic_data_converter.payload_converter.from_payloads(
        started.input.payloads, [JourneyInput]
    )
    assert isinstance(input, JourneyInput)
    return input


def scheduled_sends(history: WorkflowHistory) -> list[str]:
    """The message ids of the deliveries a history scheduled, in order."""
    sends = []
    for event in history.events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            scheduled = event.activity_task_scheduled_event_attributes
            if scheduled.activity_type.name == "send_message":
                [send] = pydantic_data_converter.payload_converter.from_payloads(
                    scheduled.input.payloads, [SendInput]
                )
                sends.append(send.message_id)
    return sends


async def test_a_new_installation_sends_new_message_ids_for_the_same_enrollment(
    make_stack: StackFactory,
    receiver: Receiver,
    engine: AsyncEngine,
) -> None:
    first = await make_stack({"once": ONE_SEND})
    await first.track("u1", "Signed Up")
    assert (await first.result("once", "u1")).messages_sent == 1
    [before] = await enrollments(engine, "once")
    first_installation = await stored_installation_id(engine)

    await empty_database(engine)
    second = await make_stack({"once": ONE_SEND})  # a new process on the new database
    await second.track("u1", "Signed Up")
    assert (await second.result("once", "u1")).messages_sent == 1
    [after] = await enrollments(engine, "once")

    assert before["id"] == after["id"] == 1
    assert await stored_installation_id(engine) != first_installation
    assert (await started_with(second, "once", "u1")).installation_id == (
        await stored_installation_id(engine)
    )
    [old, new] = [r.msg_id for r in receiver.requests]
    assert old != new
    [stored] = await rows(engine, "SELECT id FROM messages")
    assert stored["id"] == new


async def test_message_ids_survive_retries_and_continue_as_new(
    make_stack: StackFactory,
    receiver: Receiver,
    engine: AsyncEngine,
) -> None:
    stack = await make_stack({"chatty": CHATTY}, history_limit=40)
    await stack.track("u1", "Started")
    for sent in range(1, 6):
        # an event that arrives before the wait begins is not the one it waits for
        await eventually(lambda sent=sent: _listening(engine, sent))
        if sent == 5:  # the last delivery fails once
            receiver.script("/email", Script(503))
        await stack.track("u1", "Ping")
    await eventually(lambda: _listening(engine, 6))

    installation = await stored_installation_id(engine)
    expected = [str(uuid.uuid5(installation, f"chatty:u1:1:hello:{n}")) for n in range(1, 7)]
    ids = [r.msg_id for r in receiver.requests]
    assert ids == [*expected, expected[-1]]  # the retry kept its id
    carried = await started_with(stack, "chatty", "u1")
    assert carried.carried is not None  # this run was continued as new...
    assert carried.installation_id == installation
    current = await stack.handle("chatty", "u1").fetch_history()
    assert expected[-1] in scheduled_sends(current)  # ...and sent the retried message


async def _listening(engine: AsyncEngine, visit: int) -> bool:
    """The journey waits for its `visit`th Ping (a visit is stored as its wait begins)."""
    found = await rows(engine, "SELECT 1 FROM enrollment_steps WHERE step = 'listen'")
    return len(found) >= visit


# ---- replays of histories recorded before installation ids ----------------------


class RecordActivities(Interceptor):
    """Records the inputs of the activities a replayed workflow schedules."""

    def __init__(self) -> None:
        self.scheduled: list[tuple[str, Any]] = []

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        scheduled = self.scheduled

        class Outbound(WorkflowOutboundInterceptor):
            def start_activity(self, input: StartActivityInput) -> ActivityHandle[Any]:
                scheduled.append((input.activity, input.args[0]))
                return super().start_activity(input)

        class Inbound(WorkflowInboundInterceptor):
            def init(self, outbound: WorkflowOutboundInterceptor) -> None:
                super().init(Outbound(outbound))

        return Inbound


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.stem)
async def test_recorded_journeys_replay_with_the_message_ids_they_sent(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    recorded = scheduled_sends(history)
    assert recorded  # the history does send
    recorder = RecordActivities()
    replayer = Replayer(
        workflows=[JourneyWorkflow],
        data_converter=pydantic_data_converter,
        workflow_runner=SandboxedWorkflowRunner(restrictions=SANDBOX),
        interceptors=[recorder],
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure
    replayed = [arg.message_id for name, arg in recorder.scheduled if name == "send_message"]
    assert replayed == recorded
