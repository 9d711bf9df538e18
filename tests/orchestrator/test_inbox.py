"""The in-app inbox and web placement APIs, filled by journeys through the adapters."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import StackFactory
from tests.support.db import rows
from tests.support.receiver import Receiver
from tests.support.stack import Stack
from tests.support.workspace import user_token

THREE_NOTES = """
journey: notes
name: Notes
category: service
trigger: {event: Signed Up}
start: first
steps:
  first:
    send: {channel: in_app, template: note_1}
    next: gap_1
  gap_1: {wait: 1m, next: second}
  second:
    send: {channel: in_app, template: note_2}
    next: gap_2
  gap_2: {wait: 1m, next: third}
  third:
    send: {channel: in_app, template: note_3}
    next: done
  done:
    exit: {}
"""
NOTES = {
    f"note_{i}": f"""
        in_app:
          title: "Note {i} for {{{{ user.first_name | default('you') }}}}"
          body: Body {i}
          cta_label: Open
          cta_url: northwind://note/{i}
          expires_after: 7d
    """
    for i in (1, 2, 3)
}

BANNERS = """
journey: banners
name: Banners
category: service
trigger: {event: Signed Up}
start: old
steps:
  old:
    send: {channel: web, template: hero_old}
    next: gap
  gap: {wait: 1m, next: new}
  new:
    send: {channel: web, template: hero_new}
    next: side
  side:
    send: {channel: web, template: sidebar}
    next: done
  done:
    exit: {}
"""
HEROES = {
    name: f"""
        web:
          placement: {placement}
          title: {title}
          body: Shop now
          url: https://shop.example.com/{name}
    """
    for name, placement, title in (
        ("hero_old", "home_hero", "Old hero"),
        ("hero_new", "home_hero", "New hero"),
        ("sidebar", "sidebar", "Side"),
    )
}


async def api(stack: Stack, method: str, path: str, *, user: str = "", **options: Any) -> Any:
    """Call as the app of the user in the path (or `user`), with that user's token."""
    user = user or path.split("/")[3]
    return await stack.call(method, path, key=user_token(user), **options)


async def test_the_inbox_lists_unread_first_pages_and_records_reads(
    make_stack: StackFactory, receiver: Receiver, engine: AsyncEngine
) -> None:
    stack = await make_stack({"notes": THREE_NOTES}, templates=NOTES)
    await stack.identify("u1", {"first_name": "Ada"})
    await stack.track("u1", "Signed Up")
    await stack.result("notes", "u1")
    # each message was also posted, signed, to the in-app system
    assert [r.verified for r in receiver.at("/in_app")] == [True, True, True]

    page = (await api(stack, "GET", "/v1/users/u1/inbox")).json()
    assert [m["title"] for m in page["messages"]] == ["Note 3 for Ada", "Note 2 for Ada",
                                                      "Note 1 for Ada"]  # fmt: skip
    assert page["unread"] == 3
    assert page["next_cursor"] is None
    newest, middle, oldest = page["messages"]
    assert (newest["cta_url"], newest["read"], newest["journey"]) == (
        "northwind://note/3", False, "notes"
    )  # fmt: skip

    read = await api(stack, "POST", f"/v1/users/u1/inbox/{middle['id']}/read")
    assert read.status_code == 204
    again = await api(stack, "POST", f"/v1/users/u1/inbox/{middle['id']}/read")
    assert again.status_code == 204
    first = (await api(stack, "GET", "/v1/users/u1/inbox", params={"limit": 2})).json()
    assert [m["title"][:6] for m in first["messages"]] == ["Note 3", "Note 1"]
    assert first["unread"] == 2
    rest = (
        await api(
            stack, "GET", "/v1/users/u1/inbox", params={"limit": 2, "cursor": first["next_cursor"]}
        )
    ).json()
    assert [(m["title"][:6], m["read"]) for m in rest["messages"]] == [("Note 2", True)]
    assert rest["next_cursor"] is None

    # reading is the message's open receipt, once
    opened = await rows(engine, "SELECT properties FROM events WHERE event = 'message_opened'")
    assert [o["properties"]["message_id"] for o in opened] == [middle["id"]]
    [message] = await rows(engine, "SELECT status, opened_at FROM messages WHERE id = :id",
                           id=middle["id"])  # fmt: skip
    assert message["status"] == "delivered"
    assert message["opened_at"] is not None

    # dismissed and expired messages leave the inbox
    assert (
        await api(stack, "POST", f"/v1/users/u1/inbox/{oldest['id']}/dismiss")
    ).status_code == 204
    expire = "UPDATE user_messages SET expires_at = now() - interval '1s' WHERE message_id = :id"
    async with engine.begin() as conn:
        await conn.execute(text(expire), {"id": newest["id"]})
    left = (await api(stack, "GET", "/v1/users/u1/inbox")).json()
    assert [m["id"] for m in left["messages"]] == [middle["id"]]
    assert left["unread"] == 0


async def test_inbox_requests_that_cannot_be_served_change_nothing(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"notes": THREE_NOTES}, templates=NOTES)
    await stack.track("u1", "Signed Up")
    await stack.result("notes", "u1")
    [mine, *_] = (await api(stack, "GET", "/v1/users/u1/inbox")).json()["messages"]
    unauthenticated = await stack.http.get(f"{stack.api_url}/v1/users/u1/inbox")
    assert unauthenticated.status_code == 401
    refused = [
        (await api(stack, "POST", f"/v1/users/u2/inbox/{mine['id']}/read"), 404),
        (await api(stack, "POST", "/v1/users/u1/inbox/nope/dismiss"), 404),
        (await api(stack, "GET", "/v1/users/u1/inbox", params={"cursor": "bm9wZQ"}), 400),
        (await api(stack, "GET", "/v1/users/u1/inbox", params={"limit": 0}), 400),
        (await stack.http.post(f"{stack.api_url}/v1/users/u1/inbox/{mine['id']}/read"), 401),
    ]
    assert [r.status_code for r, _ in refused] == [status for _, status in refused]
    assert await rows(engine, "SELECT 1 FROM user_messages WHERE read_at IS NOT NULL") == []
    assert await rows(engine, "SELECT 1 FROM events WHERE event = 'message_opened'") == []


@pytest.mark.parametrize("posted", [True, False], ids=["posted-too", "stored-only"])
async def test_a_placement_shows_its_newest_live_message(
    make_stack: StackFactory, receiver: Receiver, posted: bool
) -> None:
    stack = await make_stack(
        {"banners": BANNERS},
        templates=HEROES,
        workspace={"channels": ("email", "web"), "stored_only": () if posted else ("web",)},
    )
    await stack.track("u1", "Signed Up")
    await stack.result("banners", "u1")
    assert len(receiver.at("/web")) == (3 if posted else 0)

    async def shown(placement: str, user: str = "u1") -> Any:
        response = await api(stack, "GET", f"/v1/users/{user}/placements/{placement}")
        assert response.status_code == 200
        body = response.json()
        assert body["placement"] == placement
        return body["message"]

    hero = await shown("home_hero")
    assert (hero["title"], hero["url"]) == ("New hero", "https://shop.example.com/hero_new")
    assert (await shown("sidebar"))["title"] == "Side"
    assert await shown("footer") is None
    assert await shown("home_hero", user="u2") is None
    dismissed = await api(stack, "POST", f"/v1/users/u1/placements/home_hero/{hero['id']}/dismiss")
    assert dismissed.status_code == 204
    assert (await shown("home_hero"))["title"] == "Old hero"
    bad = await api(stack, "GET", "/v1/users/u1/placements/Home Hero")
    assert bad.status_code == 400
    assert (
        await stack.http.get(f"{stack.api_url}/v1/users/u1/placements/sidebar")
    ).status_code == 401
