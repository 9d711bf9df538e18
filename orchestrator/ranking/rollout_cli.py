"""`orchestrator ranking activate | canary | promote | rollback | show | monitor`: which
versions serve, their cards, and how they do online (merged into `orchestrator ranking`)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.cli_settings import use_database

app = typer.Typer()
T = TypeVar("T")
SWITCHED = "workers switch within 30 s"


def _run(work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """`work` on the command's database; a VersionError is one line and exit 1."""
    from orchestrator.ranking.rollout import VersionError

    try:
        return use_database(work)
    except VersionError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


@app.command()
def activate(version: int) -> None:
    """Make VERSION the live model (also how to roll back to any version)."""
    from orchestrator.access.audit import command_line
    from orchestrator.ranking.rollout import activate as activate_version

    previous = _run(lambda engine: activate_version(
        engine, version, actor=command_line(), now=datetime.now(UTC)))  # fmt: skip
    instead = f" instead of version {previous}" if previous else ""
    typer.echo(f"version {version} is active{instead}; {SWITCHED}")


@app.command()
def canary(
    version: int,
    share: Annotated[float, typer.Option(help="Percent of the users it serves (up to 50)")] = 10,
    segment: Annotated[
        str | None,
        typer.Option(
            help="Only users this condition holds for, e.g. \"user.country == 'UK'\"; "
            'for a running canary kept unless given ("" for everyone)'
        ),
    ] = None,
) -> None:
    """Serve VERSION to a stable share of users beside the active version; its online
    results are compared with the active one's (`ranking monitor`), and the guard rolls
    it back when it is clearly worse or falls back too often. Again with the same
    version: a new share or segment (users already in stay in)."""
    from orchestrator.access.audit import command_line
    from orchestrator.ranking.rollout import start_canary

    started = _run(lambda engine: start_canary(
        engine, version, share=share / 100, segment=segment, actor=command_line(),
        now=datetime.now(UTC)))  # fmt: skip
    where = f" where {started.segment}" if started.segment else ""
    typer.echo(f"version {version} serves {started.share:.0%} of the users{where}; {SWITCHED}")


@app.command()
def promote() -> None:
    """The canary becomes the active version."""
    from orchestrator.access.audit import command_line
    from orchestrator.ranking.rollout import promote as promote_canary

    version = _run(lambda engine: promote_canary(
        engine, actor=command_line(), now=datetime.now(UTC)))  # fmt: skip
    typer.echo(f"version {version} is active; {SWITCHED}")


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Why, for the audit log")] = "by hand",
) -> None:
    """Stop the canary; with none running, go back to the version active before."""
    from orchestrator.access.audit import command_line
    from orchestrator.ranking.rollout import rollback as roll_back

    said = _run(lambda engine: roll_back(
        engine, actor=command_line(), now=datetime.now(UTC), reason=reason))  # fmt: skip
    typer.echo(f"{said}; {SWITCHED}")


@app.command()
def show(
    version: int,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """VERSION's model card: data, features, parameters, offline metrics overall and by
    group, the gate it passed, and who activated it when."""
    from orchestrator.ranking.cards import card, render

    async def work(engine: AsyncEngine) -> dict[str, Any] | None:
        async with engine.connect() as conn:
            return await card(conn, version)

    found = _run(work)
    if found is None:
        typer.echo(f"there is no version {version} (`orchestrator ranking list`)", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(found, indent=2) if as_json else render(found))


@app.command()
def monitor(
    since: Annotated[str, typer.Option(help="How far back, e.g. 1d or 7d")] = "1d",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    check: Annotated[
        bool, typer.Option("--guard", help="Also run the guard now (roll back, degrade)")
    ] = False,
    by: Annotated[
        str | None, typer.Option(help="Also by this trait (default `ranking.monitoring.by`)")
    ] = None,
) -> None:
    """Ranked content online: clicks and conversions on recommended items per message by
    version, slot and channel; fallbacks by why; the active version's offline figures
    beside its online ones; by a trait, with groups served clearly worse flagged; a
    running canary against the active version."""
    from fastapi.encoders import jsonable_encoder

    from orchestrator.journeys_cli import root_for
    from orchestrator.ranking import guard
    from orchestrator.ranking.fairness import GroupingError
    from orchestrator.ranking.monitoring import LONGEST, report
    from orchestrator.ranking.report_text import render
    from orchestrator.workspace import load_config
    from rules.durations import DurationError, parse_duration

    try:
        window = parse_duration(since)
    except DurationError as exc:
        typer.echo(f"--since: {exc}", err=True)
        raise typer.Exit(1) from None
    if window > LONGEST:
        typer.echo(f"--since: at most {LONGEST.days}d", err=True)
        raise typer.Exit(1)
    ranking = load_config(root_for([], None)).ranking

    async def work(engine: AsyncEngine) -> tuple[list[str], dict[str, Any]]:
        now = datetime.now(UTC)
        done = []
        if check:
            done = await guard.check(engine, ranking.monitoring,
                                     events=ranking.popularity_events, now=now)  # fmt: skip
        async with engine.connect() as conn:
            return done, await report(conn, ranking, since=window, now=now, by=by)

    try:
        done, found = _run(work)
    except GroupingError as exc:
        typer.echo(f"--by {by or ranking.monitoring.by}: {exc}", err=True)
        raise typer.Exit(1) from None
    for act in done:
        typer.echo(f"guard: {act}")
    if check and not done:
        typer.echo("guard: nothing to do (no canary to roll back, no version under its floor)")
    if as_json:
        typer.echo(json.dumps(jsonable_encoder(found), indent=2))
    else:
        typer.echo(render(found))
