"""Erasure on the real stack (Postgres, the Temporal dev server, the API on loopback): a
user with a running journey, messages, receipts, an inbox, decisions, assignments,
segments, suppressions, facts and audit entries is erased; a scan of every table of the
catalogue then finds no row naming any of their ids, Temporal has no workflow of theirs,
and their next events are dropped until a restore records a new consent."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from orchestrator.users.erasure import ErasureResult
from tests.conftest import StackFactory
from tests.orchestrator.test_receipts import post_receipt, receipt
from tests.support import scan
from tests.support.db import count, enable_outbox, rows
from tests.support.receiver import Receiver
from tests.support.stack import Stack, eventually
from tests.support.workspace import ADMIN_KEY, SERVER_KEY, user_token

ADA = "ada-7f3c"
ANON = "anon-ada-91b2"  # her browser before she signed up
OLD = "old-ada-55"  # an id she had before, aliased to this one
IDS = (ADA, ANON, OLD)
BOB = "bob-2d41"

JOURNEY = """
journey: onboarding
name: Onboarding
category: promotional
trigger: {event: Signed Up}
start: pick
steps:
  pick:
    experiment:
      key: tone
      variants:
        - {name: warm, weight: 1, next: mail}
        - {name: plain, weight: 1, next: mail}
  mail:
    send: {channel: email, template: hello}
    next: note
  note:
    send: {channel: in_app, template: hello}
    next: linger
  linger:
    wait_for: {event: Never Happens, timeout: 30d, on_event: done, on_timeout: done}
  done:
    exit: {}
"""
FILES = {
    "traits.yaml": "traits:\n  orders_count:\n    count: Order Completed\n",
    "segments.yaml": "segments:\n  buyers:\n    when: user.orders_count > 0\n",
}


async def make_user(stack: Stack, receiver: Receiver, user: str, anonymous: str) -> str:
    """A user with a bit of everything; returns their email's message id."""
    page = {"anonymousId": anonymous, "name": "Home", "messageId": str(uuid.uuid4())}
    assert (await stack.send("/v1/page", page)).status_code == 200
    body = {"userId": user, "anonymousId": anonymous, "traits": {"email": f"{user}@example.com"},
            "messageId": str(uuid.uuid4())}  # fmt: skip
    assert (await stack.send("/v1/identify", body)).status_code == 200
    await stack.track(user, "Order Completed", {"revenue": 30})
    await stack.track(user, "Signed Up")
    await eventually(
        lambda: _has(stack, "SELECT 1 FROM user_messages WHERE user_id = :u", u=user), timeout=60
    )
    [message] = await rows(
        stack.services.engine,
        "SELECT id FROM messages WHERE user_id = :u AND channel = 'email'",
        u=user,
    )
    response = await post_receipt(stack, "email", receipt("delivered", message["id"]))
    assert response.status_code == 204, response.text
    await stack.track(user, "unsubscribed", {"channel": "push"})
    return str(message["id"])


async def _has(stack: Stack, sql: str, **params: Any) -> bool:
    return bool(await rows(stack.services.engine, sql, **params))


async def workflows_of(stack: Stack, user: str) -> list[Any]:
    return [w async for w in stack.client.list_workflows(f"UserId = '{user}'")]


@pytest.fixture
async def stack(make_stack: StackFactory, dev_server: WorkflowEnvironment) -> Stack:
    return await make_stack({"onboarding": JOURNEY}, env=dev_server, workspace={"files": FILES})


async def test_erasure_leaves_no_row_naming_the_user_no_workflow_and_drops_their_events(
    stack: Stack, receiver: Receiver, engine: AsyncEngine
) -> None:
    await enable_outbox(engine)
    await make_user(stack, receiver, ADA, ANON)
    await make_user(stack, receiver, BOB, "anon-bob-0c7e")
    alias = {"previousId": OLD, "userId": ADA, "messageId": str(uuid.uuid4())}
    assert (await stack.send("/v1/alias", alias)).status_code == 200
    # her data is read: by a backend's key, and by her app with her token
    for key in (SERVER_KEY, user_token(ADA)):
        assert (await stack.call("GET", f"/v1/users/{ADA}/inbox", key=key)).status_code == 200
    assert (await stack.state("onboarding", ADA)).status == "waiting"
    assert [w.status for w in await workflows_of(stack, ADA)] == [WorkflowExecutionStatus.RUNNING]

    before = await scan.naming(engine, IDS)
    named = {column.split(".")[0] for column in before}
    assert named >= {
        "profiles", "identities", "events", "messages", "user_messages", "arbitration_requests",
        "arbitration_decisions", "suppressions", "enrollments", "assignments",
        "computed_profiles", "segment_memberships", "outbox", "audit_log",
    }, named  # fmt: skip
    bob_before = await scan.naming(engine, [BOB])
    steps_of_bob = await rows(
        engine,
        "SELECT count(*) AS n FROM enrollment_steps s JOIN enrollments e "
        "ON e.id = s.enrollment_id WHERE e.user_id = :u",
        u=BOB,
    )

    response = await stack.call("DELETE", f"/v1/users/{ADA}", key=ADMIN_KEY)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status_url"] == f"/v1/users/{ADA}/erasure"
    assert ADA not in accepted["workflow_id"]
    handle = stack.client.get_workflow_handle(accepted["workflow_id"], result_type=ErasureResult)
    result = await asyncio.wait_for(handle.result(), 120)
    assert result.workflows >= 1
    assert result.counts["events"] >= 4
    assert result.counts["receipts"] == 1

    # no row of any table names any of her ids
    assert await scan.naming(engine, IDS) == {}
    assert len(await scan.tables(engine)) >= 25
    # and Bob's data is all still there
    assert await scan.naming(engine, [BOB]) == bob_before
    assert (
        await rows(
            engine,
            "SELECT count(*) AS n FROM enrollment_steps s JOIN enrollments e "
            "ON e.id = s.enrollment_id WHERE e.user_id = :u",
            u=BOB,
        )
        == steps_of_bob
    )
    assert await count(engine, "receipts") == 1  # Bob's

    # Temporal has no workflow of hers, running or closed
    async def none_listed() -> bool:
        return not any([await workflows_of(stack, i) for i in IDS])

    await eventually(none_listed, timeout=60)
    with pytest.raises(RPCError) as missing:
        await stack.handle("onboarding", ADA).describe()
    assert missing.value.status == RPCStatusCode.NOT_FOUND
    assert [w.status for w in await workflows_of(stack, BOB)] == [WorkflowExecutionStatus.RUNNING]

    state = (await stack.call("GET", f"/v1/users/{ADA}/erasure", key=ADMIN_KEY)).json()
    assert state["status"] == "erased"
    assert state["counts"]["messages"] == 2
    assert state["counts"]["temporal_workflows"] >= 1

    # her next events are dropped, under any of her ids; Bob's are stored
    await stack.track(ADA, "Signed Up")
    for body in ({"anonymousId": ANON, "event": "Viewed"}, {"anonymousId": OLD, "event": "Viewed"},
                 {"userId": "x", "previousId": OLD}):  # fmt: skip
        path = "/v1/alias" if "previousId" in body else "/v1/track"
        assert (await stack.send(path, body)).status_code == 200
    # someone else on the device she used is stored, without her anonymous id
    on_her_device = {"userId": "carol-1", "anonymousId": ANON, "event": "Viewed"}
    assert (await stack.send("/v1/track", on_her_device)).status_code == 200
    assert await rows(
        engine, "SELECT user_id, anonymous_id FROM events WHERE user_id = 'carol-1'"
    ) == [{"user_id": "carol-1", "anonymous_id": None}]
    await stack.track(BOB, "Order Completed")
    await asyncio.sleep(1)  # give a wrongly started journey the time to show up
    assert await scan.naming(engine, IDS) == {}
    assert not any([await workflows_of(stack, i) for i in IDS])
    assert await rows(engine, "SELECT count(*) AS n FROM events WHERE user_id = :u "
                      "AND event = 'Order Completed'", u=BOB) == [{"n": 2}]  # fmt: skip

    # the audit log keeps the proof, by keyed hash
    audit = await rows(
        engine,
        "SELECT action, actor, subject, details FROM audit_log "
        "WHERE action LIKE 'user.%' ORDER BY id",
    )
    assert [(a["action"], a["actor"]) for a in audit] == [
        ("user.erase", "ops"), ("user.erased", "ops")]  # fmt: skip
    assert audit[0]["subject"] == audit[1]["subject"] == "erased:" + accepted["workflow_id"][6:]
    assert audit[1]["details"]["events"] == result.counts["events"]
    reads = await rows(engine, "SELECT actor, subject FROM audit_log WHERE action = 'inbox.read'")
    assert {r["subject"] for r in reads} == {audit[0]["subject"]}

    # asking again is harmless
    again = await stack.call("DELETE", f"/v1/users/{ADA}", key=ADMIN_KEY)
    assert again.status_code == 202
    handle = stack.client.get_workflow_handle(
        again.json()["workflow_id"], result_type=ErasureResult
    )
    assert (await asyncio.wait_for(handle.result(), 120)).counts["events"] == 0


async def test_a_restore_after_new_consent_lets_events_in_again(
    stack: Stack, engine: AsyncEngine
) -> None:
    await stack.track(ADA, "Order Completed")
    response = await stack.call("DELETE", f"/v1/users/{ADA}", key=ADMIN_KEY)
    handle = stack.client.get_workflow_handle(response.json()["workflow_id"])
    await asyncio.wait_for(handle.result(), 120)
    await stack.track(ADA, "Order Completed")
    assert await count(engine, "events") == 0

    # bad requests change nothing
    restore = f"/v1/users/{ADA}/restore"
    for body, field in (({}, "consent"), ({"consent": ""}, "consent"),
                        ({"consent": "ok", "extra": 1}, "extra")):  # fmt: skip
        refused = await stack.call("POST", restore, key=ADMIN_KEY, json=body)
        assert refused.status_code == 400, refused.text
        assert refused.json()["field"] == field
    assert (await stack.call("POST", restore, key=SERVER_KEY,
                             json={"consent": "x"})).status_code == 403  # fmt: skip
    never = await stack.call("POST", f"/v1/users/{BOB}/restore", key=ADMIN_KEY,
                             json={"consent": "ticket 1"})  # fmt: skip
    assert never.status_code == 409
    too_long = await stack.call("DELETE", "/v1/users/" + "x" * 201, key=ADMIN_KEY)
    assert too_long.status_code == 400
    await stack.track(ADA, "Order Completed")
    assert await count(engine, "events") == 0

    restored = await stack.call(
        "POST", restore, key=ADMIN_KEY, json={"consent": "signed up again, ticket 4411"}
    )
    assert restored.status_code == 200, restored.text
    assert restored.json()["status"] == "restored"
    await stack.track(ADA, "Order Completed")
    assert await rows(
        engine, "SELECT event FROM events WHERE user_id = :u AND event = 'Order Completed'", u=ADA
    ) == [{"event": "Order Completed"}]
    [entry] = await rows(engine, "SELECT details FROM audit_log WHERE action = 'user.restore'")
    assert entry["details"] == {"consent": "signed up again, ticket 4411"}
    assert (await stack.call("POST", restore, key=ADMIN_KEY,
                             json={"consent": "again"})).status_code == 409  # fmt: skip


async def test_one_batch_mixing_erased_and_other_users_stores_only_the_others(
    stack: Stack, engine: AsyncEngine
) -> None:
    # Messages naming only a user are checked by the insert itself; those with other ids
    # by the query before it: one batch goes through both, in one transaction.
    await stack.track(ADA, "Order Completed", message_id="before")
    response = await stack.call("DELETE", f"/v1/users/{ADA}", key=ADMIN_KEY)
    handle = stack.client.get_workflow_handle(response.json()["workflow_id"])
    await asyncio.wait_for(handle.result(), 120)
    batch = [
        {"type": "track", "userId": ADA, "event": "Viewed", "messageId": "m1"},
        {"type": "track", "userId": BOB, "event": "Viewed", "messageId": "m2"},
        {"type": "track", "userId": ADA, "event": "Viewed", "messageId": "m3"},
        {"type": "identify", "userId": ADA, "traits": {"plan": "pro"}, "messageId": "m4"},
        {"type": "track", "userId": "carol-1", "anonymousId": "anon-c", "event": "Viewed",
         "messageId": "m5"},
        {"type": "track", "userId": BOB, "event": "Viewed", "messageId": "before"},
    ]  # fmt: skip
    assert (await stack.send("/v1/batch", {"batch": batch})).status_code == 200
    stored = await rows(engine, "SELECT message_id, user_id FROM events ORDER BY message_id")
    assert stored == [
        {"message_id": "tests/before", "user_id": BOB},  # an erased event's id is free
        {"message_id": "tests/m2", "user_id": BOB},
        {"message_id": "tests/m5", "user_id": "carol-1"},
    ]
    assert await rows(engine, "SELECT user_id FROM profiles WHERE user_id = :u", u=ADA) == []
