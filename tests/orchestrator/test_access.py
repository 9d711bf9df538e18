"""Who may call what: every route the app has, called without, with a wrong and with the
wrong kind of credential; scopes; user tokens; the audit log."""

from __future__ import annotations

import asyncio
import base64
import re
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.routing import Route
from typer.testing import CliRunner

from orchestrator.access import tokens
from orchestrator.access.credentials import UserTokens
from orchestrator.api import create_app
from orchestrator.cli import app as cli
from tests.conftest import StackFactory
from tests.support.db import count, rows
from tests.support.stack import Stack
from tests.support.workspace import (
    ADMIN_KEY,
    ARBITRATE_ONLY_KEY,
    SERVER_KEY,
    USER_TOKEN_SECRET,
    WRITE_KEY,
    user_token,
)
from tests.workflows.test_steps import WELCOME

# Deliberately public: the docs, health, and what is signed by its own secret.
PUBLIC = {
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),  # for Prometheus: keep it off the internet at the load balancer
    ("GET", "/v1/unsubscribe/{token}"),
    ("POST", "/v1/unsubscribe/{token}"),
    ("POST", "/v1/webhooks/receipts/{channel}"),
}
INGESTION = re.compile(r"^/v1/(batch|track|identify|page|screen|alias|group)$")
# Routes a user token opens, for the user it names.
OWN_USER = re.compile(r"^/v1/users/\{user_id\}/(inbox|placements)")
PARAMS = {"user_id": "ada", "message_id": "m-1", "placement": "home", "key": "welcome",
          "channel": "email", "token": "t", "experiment": "holdout", "version": "1"}  # fmt: skip
MADE_UP_KEY = "sk_made_up_but_long_enough_0123"


def bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}


def basic(key: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def every_route(stack: Stack) -> list[tuple[str, str]]:
    """(method, path) of every route the app has, included routers' too."""
    app = create_app(stack.services, sweep=False)
    found = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute | Route) and context.path:
            found += [(m, context.path) for m in sorted(route.methods or ()) if m != "HEAD"]
    return found


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack({"welcome": WELCOME})


async def test_every_route_outside_the_public_list_refuses_the_wrong_caller(
    stack: Stack, engine: AsyncEngine
) -> None:
    routes = every_route(stack)
    assert len(routes) > 20
    document = (await stack.http.get(f"{stack.api_url}/openapi.json")).json()
    documented = {
        (method.upper(), path): operation
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }
    refusals: dict[tuple[str, str], list[int]] = {}
    for method, path in routes:
        if (method, path) in PUBLIC:
            if (method, path) in documented:
                assert documented[method, path]["security"] == [], path
            continue
        # every other operation says what it needs
        assert documented[method, path]["security"], (method, path)
        url = stack.api_url + path.format(**PARAMS)
        attempts: list[dict[str, str]] = [{}, bearer(MADE_UP_KEY), basic("wk_unknown_key")]
        if INGESTION.match(path):
            attempts += [bearer(SERVER_KEY), bearer(user_token("ada"))]
        elif OWN_USER.match(path):
            attempts += [basic(WRITE_KEY), bearer(user_token("bob")),
                         bearer(ARBITRATE_ONLY_KEY)]  # fmt: skip
        else:
            attempts += [basic(WRITE_KEY), bearer(user_token("ada"))]
            if path != "/v1/arbitrate":
                attempts.append(bearer(ARBITRATE_ONLY_KEY))
        statuses = []
        for headers in attempts:
            body = {"json": {}} if method in ("POST", "PUT") else {}
            response = await stack.http.request(method, url, headers=headers, **body)
            statuses.append(response.status_code)
            assert response.headers["content-type"].startswith("application/json"), path
        refusals[method, path] = statuses
    for (method, path), statuses in refusals.items():
        assert statuses[:3] == [401, 401, 401], (method, path, statuses)
        assert set(statuses[3:]) == {403}, (method, path, statuses)
    # and none of that changed anything or read anyone's data
    for table in ("events", "catalog_items", "arbitration_decisions"):
        assert await count(engine, table) == 0, table
    uses = await rows(engine, "SELECT action FROM audit_log WHERE action <> 'journeys.deploy'")
    assert uses == []


async def test_scopes_open_what_they_name(stack: Stack) -> None:
    async def status(method: str, path: str, key: str, **kwargs: Any) -> int:
        return (await stack.call(method, path, key=key, **kwargs)).status_code

    assert await status("GET", "/v1/journeys", SERVER_KEY) == 200
    assert await status("GET", "/v1/journeys", ARBITRATE_ONLY_KEY) == 403
    assert await status("GET", "/v1/users/ada/decisions", SERVER_KEY) == 200
    assert await status("GET", "/v1/audit", SERVER_KEY) == 403  # admin only
    assert await status("GET", "/v1/audit", ADMIN_KEY) == 200
    # admin has every scope
    assert await status("GET", "/v1/users/ada/inbox", ADMIN_KEY) == 200


async def test_a_user_token_opens_its_own_users_inbox_only(stack: Stack) -> None:
    mine = await stack.call("GET", "/v1/users/ada/inbox", key=user_token("ada"))
    assert mine.status_code == 200, mine.text
    theirs = await stack.call("GET", "/v1/users/bob/inbox", key=user_token("ada"))
    assert theirs.status_code == 403
    placement = await stack.call("GET", "/v1/users/ada/placements/home", key=user_token("ada"))
    assert placement.json() == {"placement": "home", "message": None}
    # not the user's decisions or journeys: those are for the backend
    decisions = await stack.call("GET", "/v1/users/ada/decisions", key=user_token("ada"))
    assert decisions.status_code == 403


@pytest.mark.parametrize(
    ("claims", "secret", "error"),
    [
        ({"sub": "ada", "exp": -60}, USER_TOKEN_SECRET, "expired"),
        ({"sub": "ada"}, USER_TOKEN_SECRET, "exp"),
        ({"exp": 600}, USER_TOKEN_SECRET, "sub"),
        ({"sub": "ada", "exp": 30 * 86400}, USER_TOKEN_SECRET, "lives longer"),
        ({"sub": "ada", "exp": 600}, "another_secret_0123456789abcdef01234", "signature"),
        ({"sub": "ada", "exp": 1e308}, USER_TOKEN_SECRET, "lives longer"),
        ({"sub": "ada", "exp": 10**400}, USER_TOKEN_SECRET, "lives longer"),
    ],
    ids=["expired", "no-exp", "no-sub", "too-long", "wrong-secret", "absurd-exp", "huge-exp"],
)
async def test_bad_user_tokens_get_401(
    stack: Stack, claims: dict[str, Any], secret: str, error: str
) -> None:
    now = int(stack.services.clock().timestamp())
    if "exp" in claims:
        claims = {**claims, "exp": now + claims["exp"]}
    token = jwt.encode(claims, secret, algorithm="HS256")
    response = await stack.call("GET", "/v1/users/ada/inbox", key=token)
    assert response.status_code == 401
    assert error in response.json()["error"]
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_an_unsigned_token_is_refused(stack: Stack) -> None:
    token = jwt.encode({"sub": "ada", "exp": 2**40}, key=None, algorithm="none")
    assert (await stack.call("GET", "/v1/users/ada/inbox", key=token)).status_code == 401


async def test_secrets_rotate_with_a_previous_secret(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    new_key, old_key = "sk_new_backend_0123456789abcdefg", "sk_old_backend_0123456789abcdefg"
    new_secret, old_secret = "ut_new_" + "a" * 40, "ut_old_" + "b" * 40
    credentials = f"""
        api_keys:
          - {{name: backend, secret: {new_key}, previous_secret: {old_key}, scopes: [admin]}}
        user_tokens: {{secret: {new_secret}, previous_secret: {old_secret}}}
    """
    stack = await make_stack({"welcome": WELCOME}, workspace={"credentials": credentials})
    for key in (new_key, old_key):
        assert (await stack.call("GET", "/v1/journeys", key=key)).status_code == 200
    for secret in (new_secret, old_secret):
        token = tokens.mint(
            UserTokens(secret=secret), "ada", ttl=timedelta(minutes=5), now=stack.services.clock()
        )
        assert (await stack.call("GET", "/v1/users/ada/inbox", key=token)).status_code == 200
    assert (await stack.call("GET", "/v1/journeys", key=SERVER_KEY)).status_code == 401


async def test_personal_data_reads_and_catalogue_writes_are_audited(
    stack: Stack, engine: AsyncEngine, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await stack.call("GET", "/v1/users/ada/decisions")
    await stack.call("GET", "/v1/users/ada/inbox", key=user_token("ada"))
    items = {"items": [{"id": "A1", "name": "Anorak", "url": "https://shop.example.com/A1"}]}
    assert (await stack.call("PUT", "/v1/catalog/items", json=items)).status_code == 200
    log = await rows(engine, "SELECT actor_kind, actor, action, subject FROM audit_log ORDER BY id")
    assert log[-3:] == [
        {"actor_kind": "server_key", "actor": "backend", "action": "users.decisions.read",
         "subject": "ada"},
        {"actor_kind": "user_token", "actor": "ada", "action": "inbox.read", "subject": "ada"},
        {"actor_kind": "server_key", "actor": "backend", "action": "catalog.write",
         "subject": None},
    ]  # fmt: skip
    # the deploy that made the stack is there too, by the person who ran it
    assert log[0]["action"] == "journeys.deploy"
    assert log[0]["actor_kind"] == "cli"

    page = (await stack.call("GET", "/v1/audit", key=ADMIN_KEY, params={"subject": "ada"})).json()
    assert [e["action"] for e in page["entries"]] == ["inbox.read", "users.decisions.read"]
    assert page["entries"][0]["client"] == "127.0.0.1"

    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", postgres_url)
    shown = await asyncio.to_thread(CliRunner().invoke, cli, ["audit", "--user", "ada"])
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert "user_token:ada" in lines[0]
    assert "inbox.read" in lines[0]
    assert "server_key:backend" in lines[1]


async def test_tokens_mint_makes_a_token_the_api_accepts(stack: Stack) -> None:
    result = await asyncio.to_thread(
        CliRunner().invoke,
        cli,
        ["tokens", "mint", "ada", "--ttl", "15m", "--workspace", str(stack.workspace)],
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert (await stack.call("GET", "/v1/users/ada/inbox", key=token)).status_code == 200
    assert (await stack.call("GET", "/v1/users/bob/inbox", key=token)).status_code == 403
    too_long = await asyncio.to_thread(
        CliRunner().invoke,
        cli,
        ["tokens", "mint", "ada", "--ttl", "30d", "--workspace", str(stack.workspace)],
    )
    assert too_long.exit_code == 1
    assert "at most" in too_long.output


def test_unsafe_credentials_are_refused_at_load(tmp_path: Any) -> None:
    from orchestrator.sources import InvalidSource
    from orchestrator.workspace import load_config
    from tests.support.workspace import write_workspace

    root = write_workspace(
        tmp_path,
        receiver_url="http://127.0.0.1:9",
        journeys={},
        credentials="""
            api_keys:
              - {name: backend, secret: short, scopes: [admin]}
              - {name: backend, secret: sk_long_enough_0123456789abcdef, scopes: [everything]}
            user_tokens: {secret: tiny, allowed_origins: ["https://shop.example.com/path"]}
        """,
    )
    with pytest.raises(InvalidSource) as refused:
        load_config(root)
    problems = str(refused.value)
    for where in ("api_keys.0.secret", "api_keys.1.scopes.0", "user_tokens.secret",
                  "user_tokens.allowed_origins"):  # fmt: skip
        assert where in problems, where


async def test_docs_and_health_stay_public(stack: Stack) -> None:
    async with httpx.AsyncClient() as http:
        for path in ("/docs", "/openapi.json", "/healthz", "/readyz"):
            assert (await http.get(stack.api_url + path)).status_code == 200, path


async def test_every_refusal_is_json_with_an_error(stack: Stack) -> None:
    unknown = await stack.http.get(f"{stack.api_url}/v1/nothing-here")
    wrong_method = await stack.http.delete(f"{stack.api_url}/v1/track")
    not_an_object = await stack.call("PUT", "/v1/catalog/items", json=[1, 2])
    preflight = await stack.http.options(
        f"{stack.api_url}/v1/users/ada/decisions",
        headers={"origin": "https://elsewhere.example", "access-control-request-method": "GET"},
    )
    for response, status in [(unknown, 404), (wrong_method, 405), (not_an_object, 400),
                             (preflight, 403)]:  # fmt: skip
        assert response.status_code == status
        assert isinstance(response.json()["error"], str), response.text
    assert "Value error" not in not_an_object.text
