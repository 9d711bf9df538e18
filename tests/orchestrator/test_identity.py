"""Identity resolution on the real stack: anonymous profiles, identify and alias merges,
running journeys that follow their user, caps across both ids, and the races."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import jsonschema
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from orchestrator.kafka.facts import envelope, schema
from orchestrator.users.following import IdentityActivities
from orchestrator.users.identity import Traits, merge_traits, merge_users, stricter_consent
from tests.conftest import StackFactory
from tests.support.db import count, enable_outbox, enrollments, rows
from tests.support.receiver import Receiver, Script
from tests.support.stack import Stack, eventually
from tests.support.workspace import ADMIN_KEY
from workflows import search
from workflows.messages import MERGED, AdoptInput, JourneyResult, JourneyState

BROWSE = """
journey: browse
name: Browse follow-up
trigger: {event: Product Viewed}
start: hello
steps:
  hello:
    send: {channel: email, template: hello}
    next: wait_order
  wait_order:
    wait_for: {event: Order Completed, timeout: 3d, on_event: thanks, on_timeout: done}
  thanks:
    send: {channel: push, template: hello}
    next: done
  done:
    exit: {}
"""

PROMO = """
journey: promo
name: Promotion
category: promotional
trigger: {event: Promo Eligible}
start: offer
steps:
  offer:
    send: {channel: email, template: hello}
    next: done
  done:
    exit: {}
"""

ONE_A_DAY = """
reachability: {email: null, push: null, in_app: null, web: null}
caps:
  - {name: one_a_day, max: 1, window: 1d, category: promotional}
"""


def message(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "messageId": str(uuid.uuid4()), **fields}


async def send(stack: Stack, kind: str, **fields: Any) -> None:
    response = await stack.send(f"/v1/{kind}", message(kind, **fields))
    assert response.status_code == 200, response.text


async def workflow_user(stack: Stack, workflow_id: str) -> str | None:
    description = await stack.client.get_workflow_handle(workflow_id).describe()
    return description.typed_search_attributes.get(search.USER_ID)


async def rows_naming(engine: AsyncEngine, user_id: str) -> dict[str, int]:
    """Rows of every table whose `user_id` is this id."""
    tables = await rows(
        engine,
        "SELECT table_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND column_name = 'user_id' ORDER BY table_name",
    )
    found = {}
    for table in (t["table_name"] for t in tables):
        async with engine.connect() as conn:
            n = await conn.scalar(
                text(f'SELECT count(*) FROM "{table}" WHERE user_id = :u'), {"u": user_id}
            )
        if n:
            found[table] = n
    return found


async def test_a_journey_entered_anonymously_continues_as_the_known_user(
    make_stack: StackFactory, engine: AsyncEngine, receiver: Receiver
) -> None:
    stack = await make_stack({"browse": BROWSE})
    await send(stack, "track", anonymousId="a1", event="Product Viewed")
    await receiver.wait_for(lambda rs: len(rs) == 1)
    workflow_id = search.workflow_id("browse", "anonymous:a1")
    assert receiver.requests[0].json["data"]["recipient"]["user_id"] == "anonymous:a1"

    await send(stack, "identify", userId="u1", anonymousId="a1", traits={"first_name": "Ada"})
    # the enrollment, its message and the workflow now belong to the known user
    [enrollment] = await enrollments(engine, "browse")
    assert (enrollment["user_id"], enrollment["status"]) == ("u1", "active")
    assert await rows(engine, "SELECT workflow_id FROM enrollments") == [
        {"workflow_id": workflow_id}
    ]

    async def followed() -> bool:
        return await workflow_user(stack, workflow_id) == "u1"

    await eventually(followed)
    state: JourneyState = await stack.client.get_workflow_handle(workflow_id).query(
        "state", result_type=JourneyState
    )
    assert (state.user_id, state.step) == ("u1", "wait_order")
    assert await rows(engine, "SELECT told_at IS NOT NULL AS told FROM identity_merges") == [
        {"told": True}
    ]
    # the known user viewing again does not enter a second time
    await stack.track("u1", "Product Viewed")
    assert len(await enrollments(engine, "browse")) == 1
    # and their order reaches the journey that began anonymously
    await stack.track("u1", "Order Completed")
    await receiver.wait_for(lambda rs: len(rs) == 2)
    thanks = receiver.requests[1].json["data"]
    assert (thanks["recipient"]["user_id"], thanks["content"]["title"]) == ("u1", "Hi Ada")
    handle = stack.client.get_workflow_handle(workflow_id, result_type=JourneyResult)
    assert (await handle.result()).status == "completed"
    assert await rows_naming(engine, "anonymous:a1") == {}
    assert await rows_naming(engine, "u1") == {
        "arbitration_decisions": 2,
        "arbitration_requests": 2,
        "enrollments": 1,
        "events": 4,
        "identities": 1,
        "messages": 2,
        "profiles": 1,
    }


async def test_traits_merge_newest_wins_stricter_consent_and_every_device(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"browse": BROWSE})
    await send(stack, "identify", userId="u2", traits={"plan": "pro", "consent": {"email": True}},
               context={"device": {"token": "phone-1"}})  # fmt: skip
    await send(stack, "identify", anonymousId="a2",
               traits={"plan": "free", "color": "red", "consent": {"email": False, "push": True},
                       "do_not_contact": True},
               context={"device": {"token": "tablet-2"}})  # fmt: skip
    await send(stack, "identify", userId="u2", traits={"color": "blue"})
    await send(stack, "track", anonymousId="a2", event="Unsubscribed",
               properties={"channel": "email"})  # fmt: skip
    [anonymous] = await rows(engine, "SELECT traits FROM profiles WHERE user_id = 'anonymous:a2'")
    assert anonymous["traits"]["device_tokens"] == ["tablet-2"]

    await send(stack, "identify", userId="u2", anonymousId="a2")
    [profile] = await rows(engine, "SELECT user_id, traits FROM profiles")
    assert profile == {
        "user_id": "u2",
        "traits": {
            "plan": "free",  # the anonymous one changed last
            "color": "blue",  # the known one changed last
            "consent": {"email": False, "push": True},  # a no anywhere stays no
            "do_not_contact": True,
            "device_tokens": ["phone-1", "tablet-2"],
        },
    }
    assert await rows(engine, "SELECT user_id, channel, reason FROM suppressions") == [
        {"user_id": "u2", "channel": "email", "reason": "unsubscribe"}
    ]
    # the anonymous visitor's events count for the user; later ones too
    await send(stack, "track", anonymousId="a2", event="Searched")
    events = await rows(engine, "SELECT DISTINCT user_id FROM events")
    assert events == [{"user_id": "u2"}]


async def test_caps_count_the_contacts_of_both_ids(
    make_stack: StackFactory, engine: AsyncEngine, receiver: Receiver
) -> None:
    second = PROMO.replace("journey: promo", "journey: second_promo").replace(
        "Promo Eligible", "Promo Two"
    )
    stack = await make_stack({"promo": PROMO, "second_promo": second}, policy=ONE_A_DAY)
    await send(stack, "track", anonymousId="a3", event="Promo Eligible")
    await receiver.wait_for(lambda rs: len(rs) == 1)
    await eventually(lambda: _ended(engine, "promo", 1))
    await send(stack, "identify", userId="u3", anonymousId="a3")
    # the known user's own promotion is the second promotional message today
    await stack.track("u3", "Promo Two")
    await eventually(lambda: _ended(engine, "second_promo", 1), skip=stack.skip)
    decisions = await rows(
        engine, "SELECT user_id, action, reason FROM arbitration_decisions ORDER BY id"
    )
    assert [(d["user_id"], d["action"]) for d in decisions] == [
        ("u3", "send"),
        ("u3", "suppress"),
    ]
    assert "one_a_day" in decisions[1]["reason"]
    assert len(receiver.requests) == 1


async def _ended(engine: AsyncEngine, journey: str, n: int) -> bool:
    found = await enrollments(engine, journey)
    return len(found) == n and all(e["status"] != "active" for e in found)


async def test_alias_merges_two_known_users_from_a_server_side_source_only(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"browse": BROWSE})
    await send(stack, "identify", userId="old-crm-id", traits={"consent": {"push": False}})
    await send(stack, "track", userId="old-crm-id", event="Unsubscribed",
               properties={"channel": "email", "category": "promotional"})  # fmt: skip
    await send(stack, "identify", userId="new-id", traits={"consent": {"push": True}})
    await send(stack, "alias", previousId="old-crm-id", userId="new-id")
    assert await rows_naming(engine, "old-crm-id") == {}
    [profile] = await rows(engine, "SELECT user_id, traits FROM profiles")
    assert profile == {"user_id": "new-id", "traits": {"consent": {"push": False}}}
    assert await rows(engine, "SELECT user_id, category FROM suppressions") == [
        {"user_id": "new-id", "category": "promotional"}
    ]
    # the old id keeps counting for the new one
    await send(stack, "track", userId="old-crm-id", event="Searched")
    assert await rows_naming(engine, "new-id") == {
        "events": 5,
        "identities": 1,
        "profiles": 1,
        "suppressions": 1,
    }


async def test_a_public_source_cannot_merge_known_users(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"browse": BROWSE}, workspace={"public_source": True})
    await send(stack, "identify", userId="victim", traits={"plan": "pro"})
    await send(stack, "alias", previousId="victim", userId="attacker")
    # `previousId` from a browser is an anonymous id: the known user stays whole
    assert await rows_naming(engine, "victim") == {"events": 1, "profiles": 1}
    assert await rows(engine, "SELECT anonymous_id, user_id FROM identities") == [
        {"anonymous_id": "anonymous:victim", "user_id": "attacker"}
    ]
    # nor can it give a user a device: push tokens come from server-side sources only
    await send(stack, "track", userId="victim", event="Opened App",
               context={"device": {"token": "attacker-phone"}})  # fmt: skip
    [profile] = await rows(engine, "SELECT traits FROM profiles WHERE user_id = 'victim'")
    assert profile["traits"] == {"plan": "pro"}


async def test_a_journey_both_ids_run_ends_for_the_anonymous_one(
    make_stack: StackFactory, engine: AsyncEngine, receiver: Receiver
) -> None:
    stack = await make_stack({"browse": BROWSE})
    await stack.track("u4", "Product Viewed")
    await send(stack, "track", anonymousId="a4", event="Product Viewed")
    await receiver.wait_for(lambda rs: len(rs) == 2)
    await send(stack, "identify", userId="u4", anonymousId="a4")
    anonymous = search.workflow_id("browse", "anonymous:a4")
    handle = stack.client.get_workflow_handle(anonymous, result_type=JourneyResult)
    result = await asyncio.wait_for(handle.result(), 30)
    assert (result.status, result.end_reason) == ("exited", MERGED)
    found = await rows(engine, "SELECT user_id, status, end_reason FROM enrollments ORDER BY id")
    assert found == [
        {"user_id": "u4", "status": "active", "end_reason": None},
        {"user_id": "u4", "status": "exited", "end_reason": MERGED},
    ]
    # the known user's own journey goes on: their order reaches it
    await stack.track("u4", "Order Completed")
    await receiver.wait_for(lambda rs: len(rs) == 3)
    assert (await stack.result("browse", "u4")).status == "completed"


async def test_identify_while_a_step_for_the_anonymous_id_is_running(
    make_stack: StackFactory, engine: AsyncEngine, receiver: Receiver
) -> None:
    stack = await make_stack({"browse": BROWSE})
    receiver.script("/email", Script(200, delay=1.0))
    await send(stack, "track", anonymousId="a5", event="Product Viewed")
    await asyncio.wait_for(receiver.arriving.wait(), 30)  # the send is under way
    await send(stack, "identify", userId="u5", anonymousId="a5", traits={"first_name": "Bo"})
    workflow_id = search.workflow_id("browse", "anonymous:a5")

    async def followed() -> bool:
        return await workflow_user(stack, workflow_id) == "u5"

    await eventually(followed)
    # what the step wrote while the merge ran is the known user's
    sent = await rows(engine, "SELECT user_id, status FROM messages")
    assert sent == [{"user_id": "u5", "status": "sent"}]
    assert await rows_naming(engine, "anonymous:a5") == {}
    await stack.track("u5", "Order Completed")
    await receiver.wait_for(lambda rs: len(rs) == 2)
    assert receiver.requests[1].json["data"]["recipient"]["user_id"] == "u5"


async def test_a_shared_device_moves_only_later_events(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"browse": BROWSE})
    await send(stack, "track", anonymousId="kiosk", event="Searched")
    await send(stack, "identify", userId="first", anonymousId="kiosk")
    await send(stack, "identify", userId="second", anonymousId="kiosk")
    await send(stack, "track", anonymousId="kiosk", event="Searched")
    assert await rows_naming(engine, "first") == {"events": 2}
    assert await rows_naming(engine, "second") == {"events": 2, "identities": 1}


async def test_a_user_id_in_the_anonymous_namespace_is_refused(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"browse": BROWSE})
    batch = [message("track", userId="u6", event="Searched"),
             message("identify", userId="anonymous:a6", traits={"plan": "pro"})]  # fmt: skip
    refused = await stack.send("/v1/batch", {"batch": batch})
    assert refused.status_code == 400
    assert refused.json()["field"] == "batch[1].userId"
    assert "anonymous" in refused.json()["error"]
    assert await count(engine, "events") == 0
    assert await count(engine, "profiles") == 0


def test_merged_traits_take_the_newest_change_and_the_stricter_stop() -> None:
    older, newer = "2026-11-01T00:00:00+00:00", "2026-11-02T00:00:00+00:00"
    source = Traits(
        {"a": 1, "b": 1, "do_not_contact": False, "device_tokens": ["x", "y"]},
        {"a": newer, "b": older, "do_not_contact": newer, "device_tokens": older},
    )
    target = Traits(
        {"a": 2, "b": 2, "c": 2, "do_not_contact": True, "device_tokens": ["y", "z"]},
        {"a": older, "b": newer, "c": older, "do_not_contact": older, "device_tokens": newer},
    )
    values, times = merge_traits(source, target, consent="consent", stop="do_not_contact")
    assert values == {
        "a": 1, "b": 2, "c": 2, "do_not_contact": True, "device_tokens": ["x", "y", "z"]
    }  # fmt: skip
    assert (times["a"], times["c"]) == (newer, older)
    assert stricter_consent({"email": True}, {"email": {"news": False}}) == {
        "email": {"news": False}
    }
    assert stricter_consent({"email": False}, {"email": {"news": True}}) == {"email": False}
    assert stricter_consent(None, {"push": True}) == {"push": True}
    assert stricter_consent({"sms": True}, {"sms": False, "push": True}) == {
        "push": True,
        "sms": False,
    }


VIEWS = """
traits:
  views:
    count: Product Viewed
"""
BROWSERS = """
segments:
  browsers:
    when: user.views >= 3
"""


async def test_computed_traits_and_segments_count_the_anonymous_events(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    files = {"traits.yaml": VIEWS, "segments.yaml": BROWSERS}
    stack = await make_stack({"promo": PROMO}, workspace={"files": files})
    await stack.track("u7", "Product Viewed")
    for _ in range(2):
        await send(stack, "track", anonymousId="a7", event="Product Viewed")
    computed = 'SELECT user_id, "values", segments FROM computed_profiles ORDER BY user_id'
    assert await rows(engine, computed) == [
        {"user_id": "anonymous:a7", "values": {"views": 2}, "segments": []},
        {"user_id": "u7", "values": {"views": 1}, "segments": []},
    ]
    await send(stack, "identify", userId="u7", anonymousId="a7")
    assert await rows(engine, computed) == [
        {"user_id": "u7", "values": {"views": 3}, "segments": ["browsers"]}
    ]
    entered = await rows(engine, "SELECT user_id FROM segment_memberships WHERE exited_at IS NULL")
    assert entered == [{"user_id": "u7"}]


QUIET = """
reachability: {email: null, push: null, in_app: null, web: null}
quiet_hours:
  - {channels: [email], start: '00:00', end: '23:59'}
"""


async def test_identify_while_a_send_is_deferred_sends_as_the_known_user(
    make_stack: StackFactory, engine: AsyncEngine, receiver: Receiver
) -> None:
    stack = await make_stack({"promo": PROMO}, policy=QUIET)
    await send(stack, "track", anonymousId="a8", event="Promo Eligible")
    workflow_id = search.workflow_id("promo", "anonymous:a8")
    handle = stack.client.get_workflow_handle(workflow_id, result_type=JourneyResult)

    async def deferred() -> bool:
        try:
            state = await handle.query("state", result_type=JourneyState)
        except Exception:
            return False
        return state.deferred is not None

    await eventually(deferred)
    await send(stack, "identify", userId="u8", anonymousId="a8", traits={"first_name": "Cy"})

    async def followed() -> bool:
        return await workflow_user(stack, workflow_id) == "u8"

    await eventually(followed)
    assert receiver.requests == []
    # the deferral ends (time skips): the message goes out as the known user's
    result = await stack.result("promo", "anonymous:a8")
    assert result.messages_sent == 1
    [sent] = receiver.requests
    assert (sent.json["data"]["recipient"]["user_id"], sent.json["data"]["content"]["subject"]) == (
        "u8",
        "Hello Cy",
    )
    decisions = await rows(engine, "SELECT user_id, action FROM arbitration_decisions ORDER BY id")
    assert decisions == [{"user_id": "u8", "action": "defer"}, {"user_id": "u8", "action": "send"}]
    assert await rows_naming(engine, "anonymous:a8") == {}


async def test_events_racing_their_identify_all_count_for_the_known_user(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"browse": BROWSE})
    views = [send(stack, "track", anonymousId="a9", event="Searched") for _ in range(30)]
    identify = send(stack, "identify", userId="u9", anonymousId="a9")
    await asyncio.gather(*views[:15], identify, *views[15:])
    assert await rows_naming(engine, "anonymous:a9") == {}
    assert (await rows_naming(engine, "u9"))["events"] == 31


async def test_a_late_adopt_moves_stragglers_and_follows_later_merges(
    make_stack: StackFactory, engine: AsyncEngine, time_skipping: WorkflowEnvironment
) -> None:
    stack = await make_stack({"browse": BROWSE})
    activities = IdentityActivities(
        engine=engine, client=time_skipping.client, policy=stack.services.policy
    )
    adopt = ActivityEnvironment()
    await send(stack, "identify", userId="u10", anonymousId="a10")
    # a step of the anonymous journey wrote after the merge had moved everything
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO profiles (user_id, traits) VALUES ('anonymous:a10', :t)"),
            {"t": '{"visits": 3}'},
        )
    assert await adopt.run(activities.adopt_user, AdoptInput(source="anonymous:a10",
                                                             target="u10")) == "u10"  # fmt: skip
    assert await rows(engine, "SELECT user_id, traits FROM profiles") == [
        {"user_id": "u10", "traits": {"visits": 3}}
    ]
    # told late, after the user was merged on: the journey follows to the end of the chain
    await send(stack, "alias", previousId="u10", userId="u11")
    followed = await adopt.run(
        activities.adopt_user, AdoptInput(source="anonymous:a10", target="u10")
    )
    assert followed == "u11"
    assert await rows(engine, "SELECT anonymous_id, user_id FROM identities ORDER BY 1") == [
        {"anonymous_id": "anonymous:a10", "user_id": "u11"},
        {"anonymous_id": "u10", "user_id": "u11"},
    ]
    # a device that changed hands since is not pointed back
    await send(stack, "identify", userId="u12", anonymousId="a10")
    await adopt.run(activities.adopt_user, AdoptInput(source="anonymous:a10", target="u11"))
    assert await rows(
        engine, "SELECT user_id FROM identities WHERE anonymous_id = 'anonymous:a10'"
    ) == [{"user_id": "u12"}]


async def test_a_public_sources_merge_leaves_the_addresses_behind(
    engine: AsyncEngine, make_stack: StackFactory
) -> None:
    stack = await make_stack({"browse": BROWSE})
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO profiles (user_id, traits) VALUES ('anonymous:kiosk-2',"
                ' \'{"email": "someone@example.com", "device_tokens": ["t"], "plan": "x"}\')'
            )
        )
        await merge_users(conn, source="anonymous:kiosk-2", target="victim-2",
                          policy=stack.services.policy, now=datetime.now(UTC),
                          trusted=False)  # fmt: skip
    assert await rows(engine, "SELECT user_id, traits FROM profiles") == [
        {"user_id": "victim-2", "traits": {"plan": "x"}}
    ]


async def test_erasure_and_export_name_a_user_not_an_id_merged_away(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"browse": BROWSE})
    await send(stack, "identify", userId="u13", anonymousId="a13")
    for method, path in (("DELETE", "/v1/users/anonymous:a13"),
                         ("GET", "/v1/users/anonymous:a13/export")):  # fmt: skip
        refused = await stack.call(method, path, key=ADMIN_KEY)
        assert refused.status_code == 409, path
        assert "merged into user 'u13'" in refused.json()["error"]
    assert await count(engine, "erasures") == 0


async def test_a_merge_is_published_as_a_fact(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"browse": BROWSE})
    await enable_outbox(engine)
    await send(stack, "track", anonymousId="a14", event="Searched")
    await send(stack, "identify", userId="u14", anonymousId="a14")
    merged = "SELECT fact, kind, user_id, occurred_at, data FROM outbox WHERE kind = 'user.merged'"
    [fact] = await rows(engine, merged)
    assert (fact["user_id"], fact["data"]) == ("u14", {"merged_from": "anonymous:a14"})
    record = envelope(fact["fact"], fact["kind"], fact["user_id"], fact["occurred_at"],
                      fact["data"])  # fmt: skip
    jsonschema.validate(record, schema("user.merged"))
