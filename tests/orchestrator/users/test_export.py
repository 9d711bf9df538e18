"""Export: everything held about a user as one JSON document, by API and CLI, audited; and
the CLI's erase, status and restore."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.orchestrator.users.test_erasure import ANON, make_user
from tests.orchestrator.users.test_erasure import stack as stack
from tests.support import scan
from tests.support.db import enable_outbox, rows
from tests.support.receiver import Receiver
from tests.support.stack import Stack
from tests.support.workspace import ADMIN_KEY, SERVER_KEY, user_token

ADA = "ada-e4x9"
OLD = "old-ada-e4x9"
KINDS = (
    "identities", "merges", "segment_memberships", "events", "messages", "receipts", "inbox",
    "arbitration_requests", "decisions", "suppressions", "enrollments", "enrollment_steps",
    "assignments", "facts", "audit",
)  # fmt: skip


async def test_the_export_holds_every_kind_of_data_the_user_has(
    stack: Stack,
    receiver: Receiver,
    engine: AsyncEngine,
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await enable_outbox(engine)
    email = await make_user(stack, receiver, ADA, ANON)
    await make_user(stack, receiver, "bob-77", "anon-bob-77")
    alias = {"previousId": OLD, "userId": ADA, "messageId": str(uuid.uuid4())}
    assert (await stack.send("/v1/alias", alias)).status_code == 200
    assert (await stack.call("GET", f"/v1/users/{ADA}/inbox",
                             key=user_token(ADA))).status_code == 200  # fmt: skip

    refused = await stack.call("GET", f"/v1/users/{ADA}/export", key=SERVER_KEY)
    assert refused.status_code == 403  # users:read is not users:export
    response = await stack.call("GET", f"/v1/users/{ADA}/export", key=ADMIN_KEY)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()

    assert document["user_id"] == ADA
    # her anonymous visits and the id aliased to her were merged into her profile
    assert set(document["ids"]) == {ADA, f"anonymous:{ANON}", f"anonymous:{OLD}"}
    assert document["profile"]["traits"]["email"] == f"{ADA}@example.com"
    assert document["computed"]["values"]["orders_count"] == 1
    empty = [kind for kind in KINDS if not document[kind]]
    assert empty == []
    # only hers, and all of hers
    for kind in ("events", "messages", "inbox", "decisions", "enrollments", "assignments"):
        assert all(row["user_id"] == ADA for row in document[kind]), kind
    [stored] = await rows(engine, "SELECT count(*) AS n FROM events WHERE user_id = :u", u=ADA)
    assert len(document["events"]) == stored["n"]
    assert any(e["anonymous_id"] == ANON for e in document["events"])
    [mail] = [m for m in document["messages"] if m["channel"] == "email"]
    assert mail["id"] == email
    assert mail["content"]["subject"]  # the message as it was sent
    assert [r["message_id"] for r in document["receipts"]] == [email]
    assert {m["channel"] for m in document["inbox"]} == {"in_app"}
    assert {s["reason"] for s in document["suppressions"]} == {"unsubscribe"}
    assert document["segment_memberships"][0]["segment_key"] == "buyers"
    assert {a["action"] for a in document["audit"]} >= {"inbox.read", "user.export"}
    assert {f["kind"] for f in document["facts"]} >= {"journey.entered", "message.sent"}

    # the CLI writes the same document to a file, and is audited as the person
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", postgres_url)
    runner = CliRunner()
    out = tmp_path / "ada.json"
    result = await asyncio.to_thread(
        runner.invoke, app, ["users", "export", ADA, "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    from_cli = json.loads(out.read_text())
    for kind in KINDS:
        if kind != "audit":
            assert from_cli[kind] == document[kind], kind
    assert len(from_cli["audit"]) == len(document["audit"]) + 1
    assert from_cli["audit"][-1]["actor_kind"] == "cli"
    bad = await asyncio.to_thread(
        runner.invoke, app, ["users", "export", ADA, "--output", str(tmp_path / "no" / "f")]
    )
    assert bad.exit_code == 2
    assert "--output" in bad.output

    # the CLI erases, reports and restores
    monkeypatch.setenv(
        "ORCHESTRATOR_TEMPORAL_ADDRESS", stack.client.service_client.config.target_host
    )
    monkeypatch.setenv("ORCHESTRATOR_TASK_QUEUE", stack.services.settings.task_queue)
    erased = await asyncio.to_thread(runner.invoke, app, ["users", "erase", ADA, "--wait"])
    assert erased.exit_code == 0, erased.output
    report = json.loads(erased.stdout)
    assert report["status"] == "erased"
    assert report["counts"]["events"] == stored["n"]
    assert await scan.naming(engine, [ADA, ANON, OLD]) == {}
    # nothing is held any more: an export says so, and its audit entry does not name her
    gone = await stack.call("GET", f"/v1/users/{ADA}/export", key=ADMIN_KEY)
    assert gone.status_code == 410, gone.text
    refused = await asyncio.to_thread(runner.invoke, app, ["users", "export", ADA])
    assert refused.exit_code == 1
    assert "erased" in refused.output
    assert await scan.naming(engine, [ADA, ANON, OLD]) == {}
    shown = await asyncio.to_thread(runner.invoke, app, ["users", "status", ADA])
    assert json.loads(shown.stdout)["status"] == "erased"
    no_consent = await asyncio.to_thread(runner.invoke, app, ["users", "restore", ADA])
    assert no_consent.exit_code == 2
    restored = await asyncio.to_thread(
        runner.invoke, app, ["users", "restore", ADA, "--consent", "form 88"]
    )
    assert restored.exit_code == 0, restored.output
    again = await asyncio.to_thread(
        runner.invoke, app, ["users", "restore", ADA, "--consent", "form 88"]
    )
    assert again.exit_code == 1
    assert "restored" in again.output
    [entry] = await rows(engine, "SELECT actor_kind, details FROM audit_log "
                         "WHERE action = 'user.restore'")  # fmt: skip
    assert entry == {"actor_kind": "cli", "details": {"consent": "form 88"}}
