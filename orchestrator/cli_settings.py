"""How commands get their settings: the environment, else the running dev stack's database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orchestrator.settings import Settings
from orchestrator.sources import InvalidSource
from orchestrator.stack.postgres import running_url
from orchestrator.workspace import CONFIG_FILE, load_config, published_secrets

# Where `orchestrator dev` keeps its data unless told otherwise (--state-dir), relative
# to the directory it was started in; Postgres is in its `postgres` folder.
DEV_STATE_DIR = Path(".state")


def command_settings() -> Settings:
    """Settings from ORCHESTRATOR_*; a bad or missing one is a line each and exit 1."""
    try:
        return Settings()
    except ValidationError as exc:
        for line in settings_problems(exc):
            typer.echo(line, err=True)
        raise typer.Exit(1) from None


def settings_problems(exc: ValidationError) -> list[str]:
    """Each problem with the settings, named by its variable (`ORCHESTRATOR_API_PORT: ...`)."""
    lines = []
    for error in exc.errors():
        name = "ORCHESTRATOR_" + "_".join(str(part) for part in error["loc"]).upper()
        message = error["msg"].removeprefix("Value error, ")
        lines.append(message if not error["loc"] else f"{name}: {message}")
    return lines


def settings_with_database() -> Settings:
    """The settings, their database being ORCHESTRATOR_DATABASE_URL or else that of the
    `orchestrator dev` running from this directory or one above it; when there is
    neither, one line saying what to set, and exit 1."""
    settings = command_settings()
    if settings.database_url:
        return settings
    url = dev_database_url()
    if url is not None:
        return settings.model_copy(update={"database_url": url})
    typer.echo(
        "no database: set ORCHESTRATOR_DATABASE_URL, or start `orchestrator dev` in this "
        f"directory (its Postgres keeps its data in {DEV_STATE_DIR}/)",
        err=True,
    )
    raise typer.Exit(1)


def dev_database_url() -> str | None:
    """The database of the `orchestrator dev` running from this directory or one above."""
    here = Path.cwd()
    for directory in (here, *here.parents):
        url = running_url(directory / DEV_STATE_DIR / "postgres")
        if url is not None:
            return url
    return None


def database_url() -> str:
    """The database a command should use (see `settings_with_database`)."""
    return settings_with_database().require_database_url()


T = TypeVar("T")


def read_database(work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run `work` on one connection to the database a command uses (`database_url`)."""

    async def connected(engine: AsyncEngine) -> T:
        async with engine.connect() as conn:
            return await work(conn)

    return use_database(connected)


def use_database(work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run `work` with a one-connection engine on the database a command uses."""
    from orchestrator.database import create_engine

    url = database_url()

    async def run() -> T:
        engine = create_engine(url, pool_size=1)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def serving_settings() -> Settings:
    """Settings for `orchestrator api` and `worker`: `settings_with_database`, and in
    production a workspace holding none of the example's secrets (they are published
    in this repository, so a copied example would let anyone in); else one line, exit 1."""
    settings = settings_with_database()
    if settings.environment != "production":
        return settings
    try:
        published = published_secrets(load_config(settings.workspace))
    except InvalidSource as exc:
        typer.echo(f"the workspace {settings.workspace} is invalid:\n{exc}", err=True)
        raise typer.Exit(1) from None
    if published:
        typer.echo(
            f"refusing to serve in production: {', '.join(published)} in "
            f"{settings.workspace / CONFIG_FILE} are the example's published secrets; "
            "set your own (as ${ENV} references)",
            err=True,
        )
        raise typer.Exit(1)
    return settings
