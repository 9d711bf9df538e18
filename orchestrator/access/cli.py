"""`orchestrator tokens mint` and `orchestrator audit`."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from orchestrator.access import audit, tokens
from orchestrator.journeys_cli import WorkspaceOption, root_for
from orchestrator.sources import InvalidSource
from orchestrator.workspace import load_config
from rules.durations import parse_duration

tokens_app = typer.Typer(help="User tokens for apps and web pages.", no_args_is_help=True)


@tokens_app.command("mint")
def mint(
    user_id: Annotated[str, typer.Argument(help="The user the token is for")],
    ttl: Annotated[str, typer.Option(help="How long it is valid, e.g. 15m, 1h, 7d")] = "1h",
    workspace: WorkspaceOption = None,
) -> None:
    """Print a user token signed with the workspace's `user_tokens.secret` (for
    development: in production your backend mints them, see README "Security")."""
    root = root_for([], workspace)
    try:
        config = load_config(root)
        lifetime = parse_duration(ttl)
    except InvalidSource as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    except ValueError as exc:
        typer.echo(f"--ttl: {exc}", err=True)
        raise typer.Exit(1) from None
    if config.user_tokens is None:
        typer.echo("orchestrator.yaml has no `user_tokens` section: add its secret", err=True)
        raise typer.Exit(1)
    try:
        token = tokens.mint(config.user_tokens, user_id, ttl=lifetime, now=datetime.now(UTC))
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(token)


def audit_log(
    user: Annotated[str | None, typer.Option(help="Only entries about this user")] = None,
    actor: Annotated[str | None, typer.Option(help="Only this key, user or person")] = None,
    action: Annotated[str | None, typer.Option(help="e.g. catalog.write, inbox.read")] = None,
    since: Annotated[str | None, typer.Option(help="Only the last 7d, 24h, ...")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines")] = False,
) -> None:
    """Who wrote the catalogue, deployed journeys or read a user's data, newest first."""
    from orchestrator.cli_settings import database_url
    from orchestrator.database import create_engine

    try:
        start = datetime.now(UTC) - parse_duration(since) if since else None
    except ValueError as exc:
        typer.echo(f"--since: {exc}", err=True)
        raise typer.Exit(1) from None
    url = database_url()

    async def read() -> list[dict[str, Any]]:
        engine = create_engine(url, pool_size=1)
        try:
            async with engine.connect() as conn:
                return await audit.entries(
                    conn, subject=user, actor=actor, action=action, since=start, limit=limit
                )
        finally:
            await engine.dispose()

    entries = asyncio.run(read())
    for entry in entries:
        if as_json:
            typer.echo(json.dumps(entry, default=str))
            continue
        who = f"{entry['actor_kind']}:{entry['actor']}"
        about = f"  user {entry['subject']}" if entry["subject"] else ""
        details = f"  {json.dumps(entry['details'])}" if entry["details"] else ""
        typer.echo(f"{entry['at']:%Y-%m-%d %H:%M:%S}  {who:<28} {entry['action']}{about}{details}")
    if not entries and not as_json:
        typer.echo("no audit entries match", err=True)
