"""Commands find the database of the `orchestrator dev` started in their directory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.database import migrate
from orchestrator.stack.postgres import EmbeddedPostgres

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "retail"
runner = CliRunner()
NO_DATABASE = (
    "no database: set ORCHESTRATOR_DATABASE_URL, or start `orchestrator dev` in this "
    "directory (its Postgres keeps its data in .state/)\n"
)


@pytest.fixture
def plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "WORKSPACE", "ENVIRONMENT"):
        monkeypatch.delenv(f"ORCHESTRATOR_{name}", raising=False)


@pytest.mark.usefixtures("plain_environment")
async def test_commands_use_the_database_of_the_dev_stack_running_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where `orchestrator dev` keeps Postgres when started in tmp_path.
    server = EmbeddedPostgres(tmp_path / ".state" / "postgres", durable=False)
    await asyncio.to_thread(server.start)
    try:
        await migrate(server.url)
        (tmp_path / "notes").mkdir()
        monkeypatch.chdir(tmp_path / "notes")  # a folder below works too
        deployed = await asyncio.to_thread(runner.invoke, app, ["journeys", "deploy"])
        assert deployed.exit_code == 0, deployed.output
        assert "welcome_series" in deployed.stdout  # no workspace here: the example
        listed = await asyncio.to_thread(runner.invoke, app, ["journeys", "list"])
        assert "welcome_series" in listed.stdout
        explained = await asyncio.to_thread(runner.invoke, app, ["decisions", "explain", "ada"])
        assert (explained.exit_code, explained.stdout) == (0, "no decisions for user ada\n")
        left_behind = (server.data_dir / "postmaster.pid").read_text()
    finally:
        await asyncio.to_thread(server.stop)

    # A server killed outright leaves its postmaster.pid: that is no database.
    (server.data_dir / "postmaster.pid").write_text(left_behind)
    result = await asyncio.to_thread(runner.invoke, app, ["decisions", "explain", "ada"])
    assert (result.exit_code, result.stderr) == (1, NO_DATABASE)


@pytest.mark.usefixtures("plain_environment")
@pytest.mark.parametrize(
    "command",
    [
        ["decisions", "explain", "ada"],
        ["journeys", "deploy"],
        ["journeys", "list"],
        ["ranking", "train"],
        ["ranking", "list"],
        ["ranking", "activate", "1"],
        ["ranking", "drift"],
        ["catalog", "load", str(EXAMPLE / "catalog.csv")],
        ["migrate"],
        ["worker"],
        ["api"],
    ],
)
def test_without_a_database_commands_say_what_to_set(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, command)
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", NO_DATABASE)


@pytest.mark.usefixtures("plain_environment")
def test_unsafe_production_settings_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ORCHESTRATOR_ENVIRONMENT", "production")
    result = runner.invoke(app, ["migrate"])
    assert (result.exit_code, result.stderr) == (
        1,
        "ORCHESTRATOR_DATABASE_URL is required in production\n",
    )
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", "postgresql://db/orchestrator")
    monkeypatch.setenv("ORCHESTRATOR_API_PORT", "eighty")
    result = runner.invoke(app, ["api"])
    assert result.exit_code == 1
    assert result.stderr.startswith("ORCHESTRATOR_API_PORT: Input should be a valid integer")
    assert len(result.stderr.splitlines()) == 1
