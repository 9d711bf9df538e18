"""The Segment-compatible tracking API: what it stores, routes and refuses."""

from __future__ import annotations

import gzip
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import StackFactory
from tests.support.db import count, enrollments, rows
from tests.support.receiver import Receiver
from tests.support.stack import Stack, eventually
from tests.support.workspace import WRITE_KEY
from tests.workflows.test_steps import WELCOME


def track(user: str, event: str = "Signed Up", **extra: object) -> dict[str, object]:
    return {
        "type": "track",
        "userId": user,
        "event": event,
        "messageId": str(uuid.uuid4()),
        **extra,
    }


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack({"welcome": WELCOME})


async def test_a_batch_is_stored_with_its_traits_and_routed(
    stack: Stack,
    engine: AsyncEngine,
    receiver: Receiver,
) -> None:
    batch = [
        {
            "type": "identify",
            "userId": "u1",
            "traits": {"first_name": "Ada", "plan": "pro"},
            "messageId": "m-1",
        },
        {
            "type": "track",
            "userId": "u1",
            "event": "Viewed Product",
            "properties": {"sku": "X1"},
            "context": {"traits": {"plan": "team"}},
            "messageId": "m-2",
            "timestamp": "2026-11-20T10:00:00Z",
        },
        {"type": "page", "anonymousId": "anon-9", "name": "Home", "messageId": "m-3"},
        track("u1", messageId="m-4"),
    ]
    response = await stack.send("/v1/batch", {"batch": batch, "sentAt": "2026-11-20T10:00:01Z"})
    assert response.status_code == 200
    assert response.json() == {"success": True}
    stored = await rows(
        engine,
        "SELECT message_id, type, event, user_id, source, timestamp, "
        "routed_at IS NOT NULL AS routed FROM events ORDER BY id",
    )
    # each source's message ids are its own: stored under the source's name
    assert [(r["message_id"], r["type"], r["event"], r["user_id"]) for r in stored] == [
        ("tests/m-1", "identify", None, "u1"),
        ("tests/m-2", "track", "Viewed Product", "u1"),
        ("tests/m-3", "page", "Home", "anonymous:anon-9"),
        ("tests/m-4", "track", "Signed Up", "u1"),
    ]
    assert {r["source"] for r in stored} == {"tests"}
    assert stored[1]["timestamp"] == datetime(2026, 11, 20, 10, tzinfo=UTC)
    assert all(r["routed"] for r in stored)
    [profile] = await rows(engine, "SELECT traits FROM profiles WHERE user_id = 'u1'")
    assert profile["traits"] == {"first_name": "Ada", "plan": "team"}
    assert len(await enrollments(engine, "welcome")) == 1
    await receiver.wait_for(lambda rs: len(rs) == 1)
    assert receiver.requests[0].json["data"]["content"]["subject"] == "Hello Ada"


async def test_a_retried_request_changes_nothing(
    stack: Stack,
    engine: AsyncEngine,
    receiver: Receiver,
) -> None:
    body = {
        "batch": [
            track("u1"),
            {"type": "identify", "userId": "u1", "traits": {"n": 1}, "messageId": "same-identify"},
        ]
    }
    for _ in range(3):
        assert (await stack.send("/v1/batch", body)).status_code == 200
    await receiver.wait_for(lambda rs: len(rs) == 1)
    assert await count(engine, "events") == 2
    assert len(await enrollments(engine, "welcome")) == 1
    # the same message id twice within one request counts once too
    twice = track("u2")
    assert (await stack.send("/v1/batch", {"batch": [twice, twice]})).status_code == 200
    assert await count(engine, "events") == 3
    # a message without messageId gets one derived from its content, so retries dedupe
    bare = {"userId": "u3", "event": "Viewed", "timestamp": "2026-11-20T10:00:00Z"}
    for sent_at in ("2026-11-20T10:00:01Z", "2026-11-20T10:00:09Z"):
        assert (await stack.send("/v1/track", {**bare, "sentAt": sent_at})).status_code == 200
    assert await count(engine, "events") == 4


BAD_BATCHES = [
    pytest.param(
        {"batch": [track("u1"), {"type": "track", "userId": "u1"}]},
        "batch[1].event",
        id="track-without-event",
    ),
    pytest.param({"batch": [{"type": "track", "event": "E"}]}, "batch[0].userId", id="no-user"),
    pytest.param({"batch": [{"type": "dance", "userId": "u"}]}, "batch[0].type", id="unknown-type"),
    pytest.param(
        {"batch": [track("u1", timestamp="yesterday")]}, "batch[0].timestamp", id="bad-timestamp"
    ),
    pytest.param(
        {"batch": [track("u1", properties=[1, 2])]},
        "batch[0].properties",
        id="properties-not-object",
    ),
    pytest.param(
        {"batch": [{"type": "alias", "userId": "u1"}]},
        "batch[0].previousId",
        id="alias-without-previous",
    ),
    pytest.param({"batch": [track("u1", userId="")]}, "batch[0].userId", id="empty-user"),
    pytest.param(
        {"batch": [track("u1", messageId="x" * 300)]}, "batch[0].messageId", id="long-message-id"
    ),
    pytest.param({"batch": {"type": "track"}}, "batch", id="batch-not-a-list"),
    pytest.param({"batch": ["not an object"]}, "batch[0]", id="message-not-object"),
    pytest.param({"events": []}, "batch", id="no-batch"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BATCHES)
async def test_bad_messages_get_400_naming_the_field_and_store_nothing(
    stack: Stack,
    engine: AsyncEngine,
    body: dict[str, object],
    field: str,
) -> None:
    response = await stack.send("/v1/batch", body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert response.json()["success"] is False
    assert await count(engine, "events") == 0
    assert await count(engine, "profiles") == 0


async def test_a_single_call_endpoint_checks_its_type(stack: Stack, engine: AsyncEngine) -> None:
    response = await stack.send("/v1/identify", {"type": "track", "userId": "u1", "event": "E"})
    assert (response.status_code, response.json()["field"]) == (400, "type")
    response = await stack.send("/v1/track", {"userId": "u1"})
    assert (response.status_code, response.json()["field"]) == (400, "event")
    assert await count(engine, "events") == 0


async def test_malformed_bodies_get_400(stack: Stack, engine: AsyncEngine) -> None:
    for content in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        response = await stack.http.post(
            f"{stack.api_url}/v1/batch", content=content, auth=(WRITE_KEY, "")
        )
        assert response.status_code == 400, content
    response = await stack.http.post(
        f"{stack.api_url}/v1/batch",
        content=b"not gzip at all",
        headers={"content-encoding": "gzip"},
        auth=(WRITE_KEY, ""),
    )
    assert (response.status_code, response.json()["error"]) == (400, "body is not valid gzip")
    assert await count(engine, "events") == 0


async def test_write_keys(stack: Stack, engine: AsyncEngine) -> None:
    body = {"batch": [track("u1")]}
    url = f"{stack.api_url}/v1/batch"
    no_auth = await stack.http.post(url, json=body)
    assert no_auth.status_code == 401
    assert no_auth.headers["www-authenticate"].startswith("Basic")
    assert (await stack.send("/v1/batch", body, key="wk_someone_else")).status_code == 401
    wrong_in_body = await stack.http.post(url, json={**body, "writeKey": "wk_nope_nope"})
    assert wrong_in_body.status_code == 401
    garbled = await stack.http.post(url, json=body, headers={"authorization": "Basic %%%"})
    assert garbled.status_code == 401
    assert await count(engine, "events") == 0
    in_body = await stack.http.post(url, json={**body, "writeKey": WRITE_KEY})
    assert in_body.status_code == 200
    assert await count(engine, "events") == 1


async def test_size_limits_get_413_and_store_nothing(stack: Stack, engine: AsyncEngine) -> None:
    big_event = track("u1", properties={"blob": "x" * 40_000})
    response = await stack.send("/v1/batch", {"batch": [track("u2"), big_event]})
    assert (response.status_code, response.json()["field"]) == (413, "batch[1]")
    huge = {"batch": [track(f"u{i}", properties={"pad": "y" * 20_000}) for i in range(30)]}
    assert (await stack.send("/v1/batch", huge)).status_code == 413
    # a gzip bomb is measured after decompression
    bomb = gzip.compress(json.dumps({"batch": [], "pad": "z" * 2_000_000}).encode())
    assert len(bomb) < 500 * 1024
    response = await stack.http.post(
        f"{stack.api_url}/v1/batch",
        content=bomb,
        headers={"content-encoding": "gzip", "content-type": "application/json"},
        auth=(WRITE_KEY, ""),
    )
    assert response.status_code == 413

    # a chunked upload with no length is cut off too
    async def chunks():
        for _ in range(100):
            yield b" " * 10_000

    response = await stack.http.post(
        f"{stack.api_url}/v1/batch", content=chunks(), auth=(WRITE_KEY, "")
    )
    assert response.status_code == 413
    assert await count(engine, "events") == 0


async def test_gzip_bodies_are_accepted(stack: Stack, engine: AsyncEngine) -> None:
    body = gzip.compress(json.dumps({"batch": [track("u1")]}).encode())
    response = await stack.http.post(
        f"{stack.api_url}/v1/batch",
        content=body,
        headers={"content-encoding": "gzip", "content-type": "application/json"},
        auth=(WRITE_KEY, ""),
    )
    assert response.status_code == 200
    assert await count(engine, "events") == 1


async def test_anonymous_events_follow_identify_and_alias(
    stack: Stack,
    engine: AsyncEngine,
    receiver: Receiver,
) -> None:
    # an identify that carries both ids links them
    await stack.send(
        "/v1/identify", {"userId": "u1", "anonymousId": "anon-1", "traits": {"first_name": "Ada"}}
    )
    await stack.send("/v1/track", {"anonymousId": "anon-1", "event": "Signed Up"})
    # alias links an old id to the user
    await stack.send("/v1/alias", {"previousId": "old-device", "userId": "u2"})
    await stack.send("/v1/track", {"anonymousId": "old-device", "event": "Signed Up"})
    await stack.send("/v1/track", {"anonymousId": "stranger", "event": "Signed Up"})
    # a visitor never identified has a profile of their own, and enters journeys
    got = {e["user_id"] for e in await enrollments(engine, "welcome")}
    assert got == {"u1", "u2", "anonymous:stranger"}
    stored = await rows(engine, "SELECT user_id FROM events WHERE anonymous_id = 'stranger'")
    assert stored == [{"user_id": "anonymous:stranger"}]


async def test_unrouted_events_are_routed_by_the_sweeper(
    stack: Stack,
    engine: AsyncEngine,
    receiver: Receiver,
) -> None:
    # As if an API process died between storing an event and telling Temporal.
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO events (message_id, source, type, event, user_id, timestamp, "
                "received_at) VALUES ('lost-1', 'tests', 'track', 'Signed Up', 'u9', now(), "
                "now() - interval '1 minute')"
            )
        )
    assert await stack.services.router.sweep(older_than=timedelta(seconds=30)) == 1
    await receiver.wait_for(lambda rs: len(rs) == 1)
    assert receiver.requests[0].json["data"]["recipient"]["user_id"] == "u9"
    assert await rows(engine, "SELECT count(*) AS n FROM events WHERE routed_at IS NULL") == [
        {"n": 0}
    ]
    # sweeping again finds nothing, and routing is idempotent anyway
    assert await stack.services.router.sweep(older_than=timedelta(seconds=30)) == 0
    assert len(await enrollments(engine, "welcome")) == 1


async def test_the_openapi_document_describes_ingestion(stack: Stack) -> None:
    document = (await stack.http.get(f"{stack.api_url}/openapi.json")).json()
    for path in (
        "/v1/batch",
        "/v1/track",
        "/v1/identify",
        "/v1/page",
        "/v1/screen",
        "/v1/alias",
        "/v1/journeys",
        "/v1/users/{user_id}/journeys",
    ):
        assert path in document["paths"], path
    batch = document["paths"]["/v1/batch"]["post"]
    assert "batch" in batch["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"400", "401", "403", "413", "429"} <= set(batch["responses"])
    assert batch["security"] == [{"writeKey": []}]


async def test_read_endpoints(stack: Stack, receiver: Receiver) -> None:
    await stack.track("u1", "Signed Up")
    await receiver.wait_for(lambda rs: len(rs) == 1)
    journeys = (await stack.call("GET", "/v1/journeys")).json()
    assert [(j["key"], j["current_version"], j["trigger"]) for j in journeys] == [
        ("welcome", 1, "Signed Up")
    ]
    assert journeys[0]["enrollments"] == {"active": 1}

    async def step_recorded() -> bool:
        # The step is recorded once the send activity has returned, after delivery.
        return bool((await stack.call("GET", "/v1/journeys/welcome")).json()["steps"])

    await eventually(step_recorded)
    detail = (await stack.call("GET", "/v1/journeys/welcome")).json()
    assert [v["version"] for v in detail["versions"]] == [1]
    assert detail["steps"][0]["step"] == "hello"
    mine = (await stack.call("GET", "/v1/users/u1/journeys")).json()
    assert [(m["journey_key"], m["workflow_id"]) for m in mine] == [
        ("welcome", "journey:welcome:u1")
    ]
    assert (await stack.call("GET", "/v1/journeys/nope")).status_code == 404
    assert (await stack.http.get(f"{stack.api_url}/healthz")).json() == {"status": "ok"}
