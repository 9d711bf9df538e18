from datetime import timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from tests.support.receiver import Receiver
from tests.support.stack import eventually, running_stack
from tests.support.workspace import write_workspace

JOURNEY = """
journey: welcome
name: Welcome
trigger: {event: Signed Up}
start: hello
steps:
  hello:
    send: {channel: email, template: hello}
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


async def test_smoke(time_skipping: WorkflowEnvironment, engine: AsyncEngine, postgres_url: str,
                     receiver: Receiver, tmp_path: Path) -> None:
    ws = write_workspace(tmp_path, receiver_url=receiver.url, journeys={"welcome": JOURNEY})
    async with running_stack(client=time_skipping.client, engine=engine, database_url=postgres_url,
                             workspace=ws) as stack:
        await stack.identify("u1", {"first_name": "Ada"})
        await stack.track("u1", "Signed Up")
        await receiver.wait_for(lambda rs: len(rs) >= 1)
        print(receiver.requests[0].json, receiver.requests[0].verified)
        await eventually(lambda: _has(receiver, 2), skip=lambda: time_skipping.sleep(timedelta(hours=12)))
        print(receiver.requests[1].json)
        result = await stack.handle("welcome", "u1").result()
        print(result)


async def _has(receiver, n):
    return len(receiver.requests) >= n
