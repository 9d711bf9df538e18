"""Input that once gave a 500 (or was stored wrongly) now gets a 400 naming the field,
and nothing is stored."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import StackFactory
from tests.orchestrator.test_receipts import post_receipt
from tests.support.db import count, rows
from tests.support.stack import Stack
from tests.workflows.test_steps import WELCOME


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


def track(**fields: Any) -> dict[str, Any]:
    return {"type": "track", "userId": "ada", "event": "Signed Up",
            "messageId": str(uuid.uuid4()), **fields}  # fmt: skip


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack({"welcome": WELCOME})


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/track", track(event="Signed\u0000Up"), "event"),
        ("/v1/track", track(userId="a\u0000da"), "userId"),
        ("/v1/track", track(properties={"pl\u0000an": "pro"}), "properties"),
        ("/v1/track", track(properties={"plan": {"tier": "pr\u0000o"}}), "properties.plan.tier"),
        ("/v1/identify", {"userId": "ada", "traits": {"name": "A\u0000"}}, "traits.name"),
        ("/v1/batch", {"batch": [track(), track(properties={"x": ["ok", "\u0000"]})]},
         "batch[1].properties.x[1]"),
        ("/v1/track", track(properties=nested(300)), "properties"),
        ("/v1/track", track(timestamp="2026-11-27T10:00:00+23:59"), "timestamp"),
        ("/v1/track", track(timestamp="1969-12-31T23:59:59Z"), "timestamp"),
        ("/v1/identify", {"userId": "ada", "traits": {"email": "ada@example.com\r\nBcc: x@y.z"}},
         "traits.email"),
        ("/v1/identify", {"userId": "ada", "traits": {"email": "a@b.com, c@d.com"}},
         "traits.email"),
        ("/v1/track", track(context={"traits": {"email": ["ada@example.com"]}}),
         "context.traits.email"),
    ],
    ids=["nul-event", "nul-user", "nul-key", "nul-value", "nul-trait", "nul-in-batch",
         "depth-300", "offset", "before-1970", "email-crlf", "email-list", "email-not-text"],
)  # fmt: skip
async def test_ingestion_refuses_with_the_field(
    stack: Stack, engine: AsyncEngine, path: str, body: dict[str, Any], field: str
) -> None:
    response = await stack.send(path, body)
    assert response.status_code == 400, response.text
    assert response.json()["field"].startswith(field), response.json()
    assert await count(engine, "events") == 0
    assert await count(engine, "profiles") == 0


@pytest.mark.parametrize("depth", [1_000, 5_000, 200_000])
async def test_json_deeper_than_parsers_go_is_refused(
    stack: Stack, engine: AsyncEngine, depth: int
) -> None:
    body = '{"userId": "ada", "event": "E", "properties": ' + "[" * depth + "]" * depth + "}"
    response = await stack.http.post(
        f"{stack.api_url}/v1/track",
        content=body,
        headers={"content-type": "application/json"},
        auth=("wk_test_0123456789", ""),
    )
    assert response.status_code in (400, 413), response.text
    assert await count(engine, "events") == 0


async def test_a_timestamp_far_in_the_future_becomes_the_receive_time(
    stack: Stack, engine: AsyncEngine
) -> None:
    # a number is read as milliseconds since 1970: this one is in the year 5138
    response = await stack.send("/v1/track", track(timestamp=99999999999999))
    assert response.status_code == 200, response.text
    [event] = await rows(engine, "SELECT timestamp, received_at, context FROM events")
    assert event["timestamp"] == event["received_at"]
    assert event["context"]["originalTimestamp"].startswith("5138-")
    # a day's clock skew is kept as sent
    tomorrow = stack.services.clock() + timedelta(hours=20)
    await stack.send("/v1/track", track(timestamp=tomorrow.isoformat()))
    stored = await rows(engine, "SELECT timestamp FROM events ORDER BY id")
    assert stored[1]["timestamp"] == tomorrow


@pytest.mark.parametrize(
    ("method", "path", "options", "field"),
    [
        ("GET", "/v1/users/ada/decisions", {"params": {"limit": -1}}, "limit"),
        ("GET", "/v1/users/ada/decisions", {"params": {"limit": "many"}}, "limit"),
        ("GET", "/v1/users/ada/decisions", {"params": {"journey": "w\u0000"}}, "journey"),
        ("GET", "/v1/users/a%00da/decisions", {}, "user_id"),
        ("GET", "/v1/users/a%00da/inbox", {}, "user_id"),
        ("PUT", "/v1/catalog/items", {"json": {"items": [{"id": "A1", "name": "An\u0000orak"}]}},
         "items[0].name"),
        ("PUT", "/v1/catalog/items", {"json": {"items": [{"id": "A1", "name": "Anorak",
                                                          "attributes": nested(100)}]}},
         "items[0].attributes"),
        ("PUT", "/v1/catalog/items", {"json": {"items": [{"id": "A1", "name": "Anorak",
                                                          "url": "javascript:alert(1)"}]}},
         "items[0].url"),
        ("POST", "/v1/arbitrate", {"json": {"user_id": "a\u0000", "idempotency_key": "k",
                                            "channels": ["email"], "category": "service"}},
         "user_id"),
        ("POST", "/v1/rank", {"content": b'{"user_id": "ada", "slot": "s"', }, ""),
        ("GET", "/v1/audit", {"params": {"since": "2026-01-01T00:00:00+23:59"}}, "since"),
        ("GET", "/v1/users/ada/decisions", {"params": [("limit", "1"), ("limit", "2")]}, "limit"),
        ("GET", "/v1/users/ada/decisions", {"params": {"limt": "5"}}, "limt"),
        ("GET", "/v1/audit?=", {}, ""),
    ],
    ids=["negative-limit", "text-limit", "nul-query", "nul-path", "nul-path-inbox",
         "nul-catalogue", "deep-catalogue", "script-url", "nul-arbitrate", "bad-json",
         "offset-query", "repeated-query", "unknown-query", "nameless-query"],
)  # fmt: skip
async def test_management_routes_refuse_with_the_field(
    stack: Stack, engine: AsyncEngine, method: str, path: str, options: dict[str, Any], field: str
) -> None:
    from tests.support.workspace import ADMIN_KEY

    response = await stack.call(method, path, key=ADMIN_KEY, **options)
    assert response.status_code == 400, response.text
    if field:
        assert response.json()["field"].startswith(field), response.json()
    assert await count(engine, "catalog_items") == 0
    assert await count(engine, "arbitration_decisions") == 0


async def test_a_receipt_with_a_nul_character_is_refused(stack: Stack, engine: AsyncEngine) -> None:
    data = {"message_id": "m1", "bounce_type": "hard", "reason": "no\u0000such user"}
    body = {"type": "bounced", "timestamp": "2026-11-27T10:00:00Z", "data": data}
    response = await post_receipt(stack, "email", body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "data.reason"
    assert await count(engine, "receipts") == 0


async def test_an_oversized_management_body_gets_413(stack: Stack, engine: AsyncEngine) -> None:
    item = {"id": "A", "name": "x" * 1000}
    body = {"items": [item] * 5000}
    response = await stack.call("PUT", "/v1/catalog/items", json=body)
    assert response.status_code == 413
    assert await count(engine, "catalog_items") == 0


async def test_a_public_source_cannot_speak_for_receipts_or_consent(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"welcome": WELCOME}, workspace={"public_source": True})
    for event in ("message_complained", "message_opened", "Unsubscribed", "message_bounced"):
        forged = await stack.send("/v1/track", track(userId="victim", event=event))
        assert (forged.status_code, forged.json()["field"]) == (403, "event"), event
    in_batch = await stack.send("/v1/batch", {"batch": [track(), track(event="unsubscribed")]})
    assert (in_batch.status_code, in_batch.json()["field"]) == (403, "batch[1].event")
    # nor set the traits that decide where messages go, or whether they may
    protected = [
        ("do_not_contact", True),
        ("consent", {"email": False}),
        ("email", "attacker@evil.example"),
        ("device_tokens", ["mine"]),
    ]
    for trait, value in protected:
        body = {"userId": "victim", "traits": {"plan": "pro", trait: value}}
        refused = await stack.send("/v1/identify", body)
        assert (refused.status_code, refused.json()["field"]) == (403, f"traits.{trait}")
        in_context = track(userId="victim", context={"traits": {trait: value}})
        via_context = await stack.send("/v1/track", in_context)
        assert via_context.status_code == 403
    assert await count(engine, "events") == 0
    assert await count(engine, "suppressions") == 0
    assert await count(engine, "profiles") == 0
    # what a public source may send still goes in
    assert (await stack.send("/v1/track", track(userId="victim"))).status_code == 200


async def test_message_ids_are_each_sources_own(stack: Stack, engine: AsyncEngine) -> None:
    # the product's own ids (a one-click unsubscribe's) and another source's are apart
    first = await stack.send("/v1/track", track(messageId="unsubscribe:msg-1", event="E"))
    assert first.status_code == 200
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO events (message_id, source, type, event, user_id, timestamp,"
                " received_at, routed_at) VALUES ('other/m-2', 'other', 'track', 'E', 'ada',"
                " now(), now(), now())"
            )
        )
    second = await stack.send("/v1/track", track(messageId="m-2", event="E"))
    assert second.status_code == 200
    stored = await rows(engine, "SELECT message_id FROM events ORDER BY message_id")
    assert [r["message_id"] for r in stored] == ["other/m-2", "tests/m-2",
                                                  "tests/unsubscribe:msg-1"]  # fmt: skip


async def test_a_group_calls_traits_stay_off_the_users_profile(
    stack: Stack, engine: AsyncEngine
) -> None:
    await stack.identify("ada", {"email": "ada@example.com"})
    office = {"email": "office@northwind.example", "name": "Northwind"}
    group = {"userId": "ada", "groupId": "northwind", "traits": office}
    assert (await stack.send("/v1/group", group)).status_code == 200
    [profile] = await rows(engine, "SELECT traits FROM profiles WHERE user_id = 'ada'")
    assert profile["traits"] == {"email": "ada@example.com"}


@pytest.mark.parametrize("zone", [123, True, ["Europe/Paris"], "Mars/Olympus_Mons", ""])
async def test_a_timezone_trait_must_name_a_zone(
    stack: Stack, engine: AsyncEngine, zone: Any
) -> None:
    response = await stack.send("/v1/identify", {"userId": "ada", "traits": {"timezone": zone}})
    assert (response.status_code, response.json()["field"]) == (400, "traits.timezone")
    assert await count(engine, "profiles") == 0


def test_a_field_name_stays_short_however_long_the_key() -> None:
    from orchestrator.json_checks import problem

    field, _ = problem({"items": {"k" * 50_000: [0, "\u0000"]}}) or ("", "")
    assert field.startswith("items.kkkk")
    assert field.endswith("...[1]")
    assert len(field) < 100


@pytest.mark.parametrize(
    "cursor",
    [
        '[false, "2026-01-01T00:00:00+00:00", "a\\u0000b"]',  # NUL
        '[false, "2026-01-01T00:00:00+00:00", "\\ud800"]',  # a lone surrogate
        '[false, "0001-01-01T00:00:00+14:00", "x"]',  # before year 1 in UTC
        '[false, "9999-12-31T23:59:59-14:00", "x"]',  # after year 9999 in UTC
        '["no", "2026-01-01T00:00:00+00:00", "x"]',
        '[false, 5, "x"]',
    ],
)
async def test_a_cursor_that_is_not_ours_gets_400(stack: Stack, cursor: str) -> None:
    import base64

    from tests.support.workspace import user_token

    encoded = base64.urlsafe_b64encode(cursor.encode()).decode().rstrip("=")
    response = await stack.call(
        "GET", "/v1/users/ada/inbox", key=user_token("ada"), params={"cursor": encoded}
    )
    assert (response.status_code, response.json()["field"]) == (400, "cursor")


async def test_refused_reads_leave_no_audit_entry(stack: Stack, engine: AsyncEngine) -> None:
    from tests.support.workspace import user_token

    refused = [
        await stack.call("GET", "/v1/users/ada/decisions", params={"limit": -1}),
        await stack.call("GET", f"/v1/users/{'x' * 6000}/journeys"),
        await stack.call(
            "GET", "/v1/users/ada/inbox", key=user_token("ada"), params={"cursor": "bm9wZQ"}
        ),
        await stack.call("GET", "/v1/audit", params={"before": 2**63}),
    ]
    assert {r.status_code for r in refused} <= {400, 403}
    entries = await rows(engine, "SELECT action FROM audit_log WHERE action <> 'journeys.deploy'")
    assert entries == []


async def test_malformed_credentials_and_slashes(stack: Stack) -> None:
    import httpx

    async with httpx.AsyncClient() as http:
        latin = await http.get(
            f"{stack.api_url}/v1/journeys", headers={"authorization": b"Basic \xe9"}
        )
        slashed = await http.get(f"{stack.api_url}/v1/journeys/", headers={"host": "evil.example"})
    assert latin.status_code == 401
    assert (slashed.status_code, "location" in slashed.headers) == (404, False)


async def test_gzip_must_be_whole(stack: Stack, engine: AsyncEngine) -> None:
    import gzip
    import json

    body = gzip.compress(json.dumps(track()).encode())
    for broken in (body[:-8], body + b"trailing"):
        response = await stack.http.post(
            f"{stack.api_url}/v1/track",
            content=broken,
            headers={"content-encoding": "gzip", "content-type": "application/json"},
            auth=("wk_test_0123456789", ""),
        )
        assert response.status_code == 400, response.text
    assert await count(engine, "events") == 0


@pytest.mark.parametrize(
    "occurred", ["2026-11-27T10:00:00+23:59", "0001-01-01T00:00:00+01:00", "1900-01-01T00:00:00Z"]
)
async def test_a_receipts_time_is_checked_like_an_events(stack: Stack, occurred: str) -> None:
    body = {"type": "delivered", "timestamp": "2026-11-27T10:00:00Z",
            "data": {"message_id": "m1", "occurred_at": occurred}}  # fmt: skip
    response = await post_receipt(stack, "email", body)
    assert (response.status_code, response.json()["field"]) == (400, "data.occurred_at")


def test_text_without_a_nul_escape_is_checked_for_nesting_alone() -> None:
    import orjson

    from orchestrator.json_checks import nul_free, problem

    deep: object = "end"
    for i in range(40):
        deep = {"k": [deep]} if i % 2 else [1, {"x": deep}]
    document = {"batch": [{"fine": {"a": [1, 2]}}, {"props": deep}]}
    text = orjson.dumps(document)
    assert nul_free(text)
    assert problem(document, nul_free=True) == problem(document)
    assert problem(document, nul_free=True) is not None
    assert problem({"a": [{"b": 1}]}, nul_free=True) is None
    for levels in (31, 32, 33):  # the limit is 32 levels, the document itself the first
        nested: object = {}
        for _ in range(levels - 1):
            nested = [nested]
        assert problem(nested, nul_free=True) == problem(nested)
        assert (problem(nested) is None) == (levels <= 32)
    assert not nul_free(orjson.dumps({"a": "x\u0000"}))  # the escape JSON spells it with
    assert not nul_free(b'{"a": "x\x00"}')
