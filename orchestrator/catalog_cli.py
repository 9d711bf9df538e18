"""`orchestrator catalog load FILE`: the items templates can recommend."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.catalog import CatalogFileError, load_items, read_items
from orchestrator.cli_settings import database_url

app = typer.Typer(help="The item catalogue behind ranked content.", no_args_is_help=True)


@app.command()
def load(
    file: Annotated[Path, typer.Argument(help="CSV (with a header) or JSON lines")],
) -> None:
    """Insert or update every item in FILE; a bad line loads nothing."""
    from orchestrator.database import create_engine

    try:
        items = read_items(file)
    except CatalogFileError as exc:
        typer.echo(str(exc), err=True)
        typer.echo("nothing was loaded", err=True)
        raise typer.Exit(1) from None
    url = database_url()

    async def work() -> int:
        engine = create_engine(url, pool_size=1)
        try:
            return await load_items(engine, items)
        finally:
            await engine.dispose()

    typer.echo(f"loaded {asyncio.run(work())} items")
