"""Retention on Temporal (the dev server): a worker with upkeep creates the schedule
from `retention:` and brings it up to date; a scheduled run and `orchestrator retention
run` delete on the worker and store their counts; `status` shows them."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.retention.config import RetentionConfig
from orchestrator.retention.schedule import schedule_id, schedule_retention
from tests.conftest import StackFactory
from tests.orchestrator.retention.seed import seed
from tests.support.db import rows
from tests.support.stack import eventually
from tests.support.workspace import NOOP

runner = CliRunner()


async def events_left(engine: AsyncEngine) -> list[str]:
    return [
        r["message_id"] for r in await rows(engine, "SELECT message_id FROM events ORDER BY id")
    ]


async def test_the_schedule_follows_the_config_and_its_runs_delete(
    make_stack: StackFactory, engine: AsyncEngine, dev_server: WorkflowEnvironment
) -> None:
    stack = await make_stack({"noop": NOOP}, env=dev_server, upkeep=True,
                             workspace={"config": "retention:\n  every: 12h\n"})  # fmt: skip
    await seed(engine, now=datetime.now(UTC), journey="noop")
    queue = stack.services.settings.task_queue
    handle = stack.client.get_schedule_handle(schedule_id(queue))
    described = await handle.describe()
    assert described.schedule.spec.intervals[0].every == timedelta(hours=12)
    assert not described.schedule.state.paused

    await handle.trigger()

    async def finished() -> bool:
        return bool(await rows(engine, "SELECT 1 FROM retention_runs WHERE status = 'finished'"))

    await eventually(finished, timeout=60)
    assert await events_left(engine) == ["ev-unrouted", "ev-trigger-running", "ev-recent"]
    [run] = await rows(engine, "SELECT trigger, dry_run, counts FROM retention_runs")
    assert run["trigger"] == "schedule"
    assert not run["dry_run"]
    assert run["counts"]["events"] == {"kept": 2, "removed": 2}
    assert run["counts"]["receipts"] == {"kept": 0, "removed": 1}

    # a worker started with other settings brings the schedule to them
    await schedule_retention(stack.client, config=RetentionConfig(enabled=False), task_queue=queue)
    described = await handle.describe()
    assert described.schedule.state.paused
    assert described.schedule.spec.intervals[0].every == timedelta(days=1)


async def test_the_cli_runs_now_and_shows_the_runs(
    make_stack: StackFactory,
    engine: AsyncEngine,
    dev_server: WorkflowEnvironment,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stack = await make_stack({"noop": NOOP}, env=dev_server)
    await seed(engine, now=datetime.now(UTC), journey="noop")
    settings = stack.services.settings
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", postgres_url)
    monkeypatch.setenv("ORCHESTRATOR_WORKSPACE", str(stack.workspace))
    monkeypatch.setenv("ORCHESTRATOR_TASK_QUEUE", settings.task_queue)
    monkeypatch.setenv(
        "ORCHESTRATOR_TEMPORAL_ADDRESS", dev_server.client.service_client.config.target_host
    )

    dry = await asyncio.to_thread(runner.invoke, app, ["retention", "run", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "(dry run) finished:" in dry.stdout
    assert "events               would change: removed 2; kept (still needed) 2" in dry.stdout
    assert len(await events_left(engine)) == 5  # a dry run changes nothing

    done = await asyncio.to_thread(runner.invoke, app, ["retention", "run"])
    assert done.exit_code == 0, done.output
    assert "events               changed: removed 2; kept (still needed) 2" in done.stdout
    assert "message bodies       changed: blanked 2; kept (still needed) 1" in done.stdout
    assert await events_left(engine) == ["ev-unrouted", "ev-trigger-running", "ev-recent"]

    shown = await asyncio.to_thread(runner.invoke, app, ["retention", "status"])
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0] == ("kept for: events 395d, message_bodies 90d, decisions 180d, "
                        "receipts 90d, assignments 395d")  # fmt: skip
    assert lines[1] == "runs every 1d"
    runs = [line for line in lines if line.startswith("run ")]
    assert len(runs) == 2
    assert re.search(r" cli      finished in [0-9.]+s$", runs[0])  # newest first
    assert re.search(r" cli      dry run  finished in [0-9.]+s$", runs[1])


def test_a_workspace_that_does_not_load_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "orchestrator.yaml").write_text(
        "workspace: w\nsources: [{name: s, write_key: wk_0123456789}]\nretention:\n  events: 12h\n"
    )
    monkeypatch.setenv("ORCHESTRATOR_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("ORCHESTRATOR_TEMPORAL_ADDRESS", "127.0.0.1:9")  # never reached
    result = runner.invoke(app, ["retention", "run"])
    assert result.exit_code == 1
    assert "orchestrator.yaml:4:11: retention.events: 12h is shorter than a day" in result.stderr
