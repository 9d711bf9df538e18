"""`orchestrator segments list|show|preview` and `orchestrator traits list|show`."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.segments import service
from orchestrator.segments.definitions import Current, deployed

segments_app = typer.Typer(help="Segments: who is in them, since when, and previews.",
                           no_args_is_help=True)  # fmt: skip
traits_app = typer.Typer(help="Computed traits: what is deployed, and a user's values.",
                         no_args_is_help=True)  # fmt: skip
Json = Annotated[bool, typer.Option("--json", help="The JSON the API answers")]
T = TypeVar("T")


def _read(work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    from orchestrator.cli_settings import read_database

    try:
        return read_database(work)
    except service.UnknownSegment as exc:
        typer.echo(exc.args[0], err=True)
        raise typer.Exit(1) from None


def _json(value: Any) -> None:
    typer.echo(json.dumps(value, default=str, indent=2))


@segments_app.command("list")
def list_segments(as_json: Json = False) -> None:
    """Deployed segments: members now, entries and exits in the last 24 hours."""
    now = datetime.now(UTC)
    found = _read(lambda conn: service.summaries(conn, now))
    if as_json:
        _json(found)
        return
    if not found:
        typer.echo("no segments deployed: add segments.yaml and run `orchestrator journeys deploy`")
        return
    typer.echo(f"{'segment':<24} {'members':>8} {'+24h':>7} {'-24h':>7}  condition")
    for s in found:
        typer.echo(f"{s['key']:<24} {s['members']:>8} {s['entered_24h']:>7} "
                   f"{s['exited_24h']:>7}  {s['when']}")  # fmt: skip


@segments_app.command()
def show(
    key: Annotated[str, typer.Argument()],
    days: Annotated[int, typer.Option(min=1, max=365, help="Days of history")] = 14,
    members: Annotated[int, typer.Option(min=0, help="Also list this many members")] = 0,
    as_json: Json = False,
) -> None:
    """A segment's size at the end of each day, with the day's entries and exits."""
    now = datetime.now(UTC)

    async def work(conn: AsyncConnection) -> dict[str, Any]:
        found = await service.detail(conn, key, now, days=days)
        if members:
            found["member_list"] = await service.members(conn, key, at=now, limit=members)
        return found

    found = _read(work)
    if as_json:
        _json(found)
        return
    typer.echo(f"{found['key']}: {found['when']}")
    if found["description"]:
        typer.echo(f"  {found['description']}")
    typer.echo(f"{'day ending':<18} {'members':>8} {'entered':>8} {'exited':>8}")
    for day in found["history"]:
        at = day["at"].strftime("%Y-%m-%d %H:%M")
        typer.echo(f"{at:<18} {day['members']:>8} {day['entered']:>8} {day['exited']:>8}")
    for member in found.get("member_list", []):
        typer.echo(f"  {member['user_id']}  since {member['entered_at']:%Y-%m-%d %H:%M}")


@segments_app.command()
def preview(
    workspace: Annotated[
        Path | None, typer.Option(help="Workspace (default: as `journeys validate` finds it)")
    ] = None,
) -> None:
    """How many users each segment of the workspace's files would hold now, before you
    deploy them: every known user is evaluated under them (nothing is written)."""
    from orchestrator.journeys_cli import print_problems, root_for
    from orchestrator.segments.definitions import load_definitions
    from orchestrator.sources import InvalidSource

    root = root_for([], workspace)
    try:
        definitions = load_definitions(root)
    except InvalidSource as exc:
        print_problems(root, exc.problems)
        raise typer.Exit(1) from None
    if not definitions.segments:
        typer.echo(f"no segments in {root / 'segments.yaml'}")
        raise typer.Exit(1)
    now = datetime.now(UTC)
    users, found = _read(lambda conn: service.preview(conn, definitions, now))
    typer.echo(f"{users} users evaluated at {now:%Y-%m-%d %H:%M} UTC")
    typer.echo(f"{'segment':<24} {'would hold':>10} {'deployed':>9} {'entering':>9} {'leaving':>8}")
    for p in found:
        typer.echo(f"{p.key:<24} {p.matching:>10} {p.members:>9} {p.entering:>9} {p.leaving:>8}")


@traits_app.command("list")
def list_traits() -> None:
    """The computed traits in force, and how far the backfill of their version is."""
    from orchestrator.tables import segment_definitions

    async def work(conn: AsyncConnection) -> tuple[Current, Any]:
        in_force = await deployed(conn)
        row = (
            await conn.execute(
                select(segment_definitions).where(segment_definitions.c.version == in_force.version)
            )
        ).one_or_none()
        return in_force, row

    in_force, row = _read(work)
    if row is None:
        typer.echo(
            "no computed traits deployed: add traits.yaml and run `orchestrator journeys deploy`"
        )
        return
    state = (
        f"every user computed at {row.backfilled_at:%Y-%m-%d %H:%M}"
        if row.backfilled_at
        else f"backfill running (users up to {row.backfill_cursor!r} done)"
        if row.backfill_cursor
        else "backfill not started"
    )
    typer.echo(f"version {in_force.version}, deployed {row.deployed_at:%Y-%m-%d %H:%M}: {state}")
    for name, trait in in_force.definitions.traits.items():
        over = trait.over
        detail = (
            trait.expression
            if trait.expression is not None
            else trait.sequence.model_dump_json(exclude_none=True)
            if trait.sequence is not None
            else over.model_dump_json(exclude_none=True)
            if over is not None
            else ""
        )
        typer.echo(f"{name:<28} {trait.kind:<15} {detail}")


@traits_app.command("show")
def show_user(user_id: Annotated[str, typer.Argument()], as_json: Json = False) -> None:
    """A user's computed traits (when computed and last changed) and segments."""
    found = _read(lambda conn: service.profile(conn, user_id))
    if found is None:
        typer.echo(f"no profile for user {user_id!r}", err=True)
        raise typer.Exit(1)
    if as_json:
        _json(found)
        return
    for name, item in found["computed"].items():
        typer.echo(f"{name:<28} {json.dumps(item['value'], default=str):<28} "
                   f"changed {item['changed_at'] or '-'}")  # fmt: skip
    for stay in found["segments"]:
        typer.echo(f"in segment {stay['key']} since {stay['entered_at']:%Y-%m-%d %H:%M}")
