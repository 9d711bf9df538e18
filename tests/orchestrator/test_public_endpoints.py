"""What public endpoints face: floods with a public write key, and browsers on other
origins (a page sending events, a page reading its user's inbox with a user token)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from segment.analytics import Client as SegmentClient
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import StackFactory
from tests.support.browser import blank_page_server, chromium
from tests.support.db import count
from tests.support.workspace import CREDENTIALS, SERVER_KEY, WRITE_KEY, user_token
from tests.workflows.test_steps import WELCOME

TIGHT = "rate_limit: {per_second: 2, burst: 4}"


def event(n: int) -> dict[str, Any]:
    return {"userId": f"u{n}", "event": "Page Viewed", "messageId": f"flood-{n}"}


async def test_a_flood_with_one_write_key_gets_429_with_retry_after(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"welcome": WELCOME}, workspace={"source": TIGHT})
    responses = await asyncio.gather(*(stack.send("/v1/track", event(n)) for n in range(20)))
    accepted = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    assert len(accepted) + len(limited) == 20
    # the burst, plus what refilled while the requests were in flight
    assert 4 <= len(accepted) < 20
    for response in limited:
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["success"] is False
    assert await count(engine, "events") == len(accepted)
    # another source has its own budget
    other = await stack.call("GET", "/v1/journeys", key=SERVER_KEY)
    assert other.status_code == 200


async def test_segments_library_waits_out_the_limit_and_loses_nothing(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"welcome": WELCOME}, workspace={"source": TIGHT})
    errors: list[Exception] = []
    clients = [
        SegmentClient(
            WRITE_KEY, host=stack.api_url, upload_size=1, on_error=lambda e, _: errors.append(e)
        )
        for _ in range(4)
    ]

    def send(client: SegmentClient, n: int) -> None:
        # each message in its own request, from a background thread that honours 429
        for i in range(3):
            client.track(f"user-{n}", "Page Viewed", message_id=f"segment-{n}-{i}")
        client.flush()
        client.join()

    await asyncio.gather(*(asyncio.to_thread(send, client, n) for n, client in enumerate(clients)))
    assert errors == []
    assert await count(engine, "events") == 12


@pytest.fixture
async def browser_stack(make_stack: StackFactory) -> Any:
    async with blank_page_server() as allowed, blank_page_server() as other:
        origin = allowed.rstrip("/")
        credentials = CREDENTIALS.replace(
            "user_tokens:\n", f"user_tokens:\n  allowed_origins: [{origin!r}]\n"
        )
        stack = await make_stack(
            {"welcome": WELCOME},
            workspace={"source": f"allowed_origins: [{origin!r}]", "credentials": credentials},
        )
        yield stack, allowed, other


CALLS = """
async ([api, writeKey, token, serverKey]) => {
  const attempt = async (url, init) => {
    try { return (await fetch(url, init)).status; } catch (e) { return "blocked"; }
  };
  const json = {"content-type": "application/json"};
  return {
    track: await attempt(api + "/v1/track", {method: "POST",
      headers: {...json, authorization: "Basic " + btoa(writeKey + ":")},
      body: JSON.stringify({userId: "ada", event: "Page Viewed",
                            messageId: crypto.randomUUID()})}),
    inbox: await attempt(api + "/v1/users/ada/inbox",
                         {headers: {authorization: "Bearer " + token}}),
    decisions: await attempt(api + "/v1/users/ada/decisions",
                             {headers: {authorization: "Bearer " + serverKey}}),
  };
}
"""


async def test_browsers_on_allowed_origins_only(browser_stack: Any, engine: AsyncEngine) -> None:
    stack, allowed, other = browser_stack
    args = [stack.api_url, WRITE_KEY, user_token("ada"), SERVER_KEY]
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(allowed)
        from_allowed = await page.evaluate(CALLS, args)
        await page.goto(other)
        from_other = await page.evaluate(CALLS, args)
    # a server key is never for browsers: no origin may call those routes
    assert from_allowed == {"track": 200, "inbox": 200, "decisions": "blocked"}
    assert from_other == {"track": "blocked", "inbox": "blocked", "decisions": "blocked"}
    assert await count(engine, "events") == 1


async def test_the_preflight_a_browser_sends(browser_stack: Any) -> None:
    stack, allowed, other = browser_stack
    origin = allowed.rstrip("/")

    async def preflight(path: str, origin: str, method: str = "POST") -> httpx.Response:
        headers = {
            "origin": origin,
            "access-control-request-method": method,
            "access-control-request-headers": "authorization,content-type",
        }
        return await stack.http.options(f"{stack.api_url}{path}", headers=headers)

    answered = await preflight("/v1/batch", origin)
    assert answered.status_code == 204
    assert answered.headers["access-control-allow-origin"] == origin
    assert "authorization" in answered.headers["access-control-allow-headers"]
    inbox = await preflight("/v1/users/ada/inbox", origin, "GET")
    assert inbox.headers["access-control-allow-origin"] == origin
    for path, asking in [
        ("/v1/batch", other.rstrip("/")),
        ("/v1/users/ada/decisions", origin),
        ("/v1/catalog/items", origin),
    ]:
        refused = await preflight(path, asking)
        assert refused.status_code == 403, path
        assert "access-control-allow-origin" not in refused.headers
    # a simple request from elsewhere is answered, but without CORS headers the
    # browser does not let the page read it
    plain = await stack.http.post(
        f"{stack.api_url}/v1/track",
        json={"userId": "ada", "event": "E", "messageId": str(uuid.uuid4()),
              "writeKey": WRITE_KEY},
        headers={"origin": other.rstrip("/")},
    )  # fmt: skip
    assert "access-control-allow-origin" not in plain.headers


async def test_one_sender_cannot_spend_a_public_keys_budget(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack(
        {"welcome": WELCOME},
        workspace={"public_source": True, "source": "client_rate_limit: {per_second: 1, burst: 3}"},
    )

    async def send(n: int, client: str) -> int:
        response = await stack.http.post(
            f"{stack.api_url}/v1/track",
            json=event(n),
            auth=(WRITE_KEY, ""),
            headers={"x-forwarded-for": client},  # as a proxy in front of the API says
        )
        return response.status_code

    flood = [await send(n, "203.0.113.9") for n in range(10)]
    assert flood.count(200) <= 4
    assert flood.count(429) >= 6
    # a visitor elsewhere is not held back by the flood
    assert await send(100, "198.51.100.7") == 200
    assert await count(engine, "events") == flood.count(200) + 1


async def test_one_users_token_is_rate_limited(make_stack: StackFactory) -> None:
    credentials = CREDENTIALS.replace(
        "user_tokens:\n", "user_tokens:\n  rate_limit: {per_second: 1, burst: 2}\n"
    )
    stack = await make_stack({"welcome": WELCOME}, workspace={"credentials": credentials})
    token = user_token("ada")
    answers = [(await stack.call("GET", "/v1/users/ada/inbox", key=token)) for _ in range(6)]
    statuses = [a.status_code for a in answers]
    assert statuses[:2] == [200, 200]
    assert 429 in statuses
    limited = answers[statuses.index(429)]
    assert int(limited.headers["retry-after"]) >= 1
    # another user's app is not held back
    assert (
        await stack.call("GET", "/v1/users/bob/inbox", key=user_token("bob"))
    ).status_code == 200
