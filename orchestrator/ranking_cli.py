"""`orchestrator ranking ...`: train, list and schedule versions; measure the active
version's input drift. Offline evaluation: `orchestrator.ranking.evaluate_cli`;
switching versions, cards and online monitoring: `orchestrator.ranking.rollout_cli`."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, cast, get_args

import typer

from orchestrator.cli_settings import command_settings, database_url
from orchestrator.ranking import evaluate_cli, rollout_cli
from orchestrator.ranking.evaluate_cli import bands_option

app = typer.Typer(help="The ranking model behind ranked content.", no_args_is_help=True)
app.add_typer(evaluate_cli.app)  # evaluate, evaluate-logs
app.add_typer(rollout_cli.app)  # activate, canary, promote, rollback, show, monitor


@app.command()
def train(
    data: Annotated[
        Path | None,
        typer.Option(help="Train from this UCI-shaped file instead of the stored events"),
    ] = None,
    by: Annotated[
        str | None,
        typer.Option(
            help="The card's metrics by this trait (a customer column with --data); "
            "default `ranking.monitoring.by`"
        ),
    ] = None,
    bands: Annotated[
        str | None, typer.Option(help="Group a numeric --by trait in bands, e.g. 25,35,50,65")
    ] = None,
) -> None:
    """Train a version; it goes live only if it beats the active one and popularity."""
    from orchestrator.access.audit import command_line
    from orchestrator.database import create_engine
    from orchestrator.journeys_cli import root_for
    from orchestrator.ranking.monitoring import trait_of
    from orchestrator.ranking.retail import DatasetError, read_retail
    from orchestrator.ranking.versions import VersionError, stored_purchases
    from orchestrator.ranking.versions import train as train_version
    from orchestrator.workspace import load_config

    url = database_url()
    ranking = load_config(root_for([], None)).ranking
    trait = by or ranking.monitoring.by
    edges = bands_option(bands) if bands is not None else ranking.monitoring.bands

    async def work() -> None:
        engine = create_engine(url, pool_size=1)
        try:
            groups: dict[str, object] | None = None
            if data is not None:
                dataset = read_retail(data)
                purchases, items, source = dataset.purchases, dataset.items, str(data.resolve())
                if trait:
                    groups = {u: c.get(trait) for u, c in dataset.customers.items()}
            else:
                purchases, items = await stored_purchases(engine, ranking.popularity_events)
                source = "events"
                if trait:
                    groups = await trait_of(engine, (p.user for p in purchases), trait)
            typer.echo(f"training on {len(purchases):,} purchases of {len(items):,} items ...")
            trained = await train_version(
                engine,
                purchases,
                items,
                source=source,
                actor=command_line(),
                groups=groups,
                bands=edges,
                drift_window=ranking.drift.window,
            )
        finally:
            await engine.dispose()
        typer.echo(f"version {trained.version}: {trained.status} ({trained.reason})")

    try:
        asyncio.run(work())
    except (DatasetError, VersionError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


@app.command("list")
def list_versions() -> None:
    """Every trained version, its window, status and why."""
    from orchestrator.database import create_engine
    from orchestrator.ranking.versions import versions

    url = database_url()

    async def work() -> list[dict[str, object]]:
        engine = create_engine(url, pool_size=1)
        try:
            async with engine.connect() as conn:
                return await versions(conn)
        finally:
            await engine.dispose()

    trained = asyncio.run(work())
    if not trained:
        typer.echo("no versions yet: `orchestrator ranking train` makes one (until then the "
                   "popularity baseline answers)")  # fmt: skip
    for row in trained:
        typer.echo(
            f"v{row['version']:<4} {row['status']:<9} {row['window_start']:%Y-%m-%d} to "
            f"{row['window_end']:%Y-%m-%d}  {row['purchases']:>9,} purchases  {row['reason']}"
        )


@app.command()
def schedule(
    when: Annotated[
        str,
        typer.Option(
            help="interval: train every --every; drift: check every --check-every and train "
            "when input drift passes a `ranking.drift` threshold; both: drift, and train "
            "anyway once --every has passed since the last training"
        ),
    ] = "interval",
    every: Annotated[str, typer.Option(help="How often to retrain, e.g. 1d or 12h")] = "1d",
    check_every: Annotated[
        str, typer.Option(help="With drift or both: how often to measure drift")
    ] = "1h",
) -> None:
    """Retrain from the stored events on a Temporal schedule (`ranking-retrain`); each
    run's version goes live only if it wins. Running it again changes the schedule."""
    from orchestrator.ranking.schedule import schedule_retraining
    from orchestrator.temporal import connect
    from rules.durations import DurationError, parse_duration
    from workflows.retraining import When

    if when not in get_args(When):
        typer.echo(f"--when: {when!r} is not one of interval, drift, both", err=True)
        raise typer.Exit(1)
    try:
        interval, check = parse_duration(every), parse_duration(check_every)
    except DurationError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    settings = command_settings()

    async def work() -> None:
        client = await connect(settings.temporal_address, settings.temporal_namespace)
        await schedule_retraining(
            client, every=interval, task_queue=settings.task_queue,
            when=cast(When, when), check_every=check,
        )  # fmt: skip

    asyncio.run(work())
    queue = f"on task queue '{settings.task_queue}'"
    if when == "interval":
        typer.echo(f"retraining every {every} {queue}")
    elif when == "drift":
        typer.echo(f"measuring drift every {check_every}, retraining when it passes a "
                   f"threshold, {queue}")  # fmt: skip
    else:
        typer.echo(f"measuring drift every {check_every}, retraining when it passes a "
                   f"threshold and at least every {every}, {queue}")  # fmt: skip


@app.command()
def drift(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """How far the live traffic of the last `ranking.drift.window` has moved from what
    the active version was trained on: PSI of item popularity and of users' history
    lengths, and the share of purchases of items it never saw bought."""
    from orchestrator.cli_settings import read_database
    from orchestrator.journeys_cli import root_for
    from orchestrator.ranking.drift import describe, measure
    from orchestrator.workspace import load_config

    ranking = load_config(root_for([], None)).ranking
    now = datetime.now(UTC)
    found = read_database(
        lambda conn: measure(conn, config=ranking.drift, events=ranking.popularity_events,
                             now=now)
    )  # fmt: skip
    if as_json:
        typer.echo(json.dumps(found.as_json(), indent=2))
        return
    typer.echo(found.summary)
    if found.since is None:
        return
    counts = found.counts
    typer.echo(
        f"window {found.since:%Y-%m-%d %H:%M} to {found.until:%Y-%m-%d %H:%M} UTC: "
        f"{counts['live_purchases']:,} purchases by {counts['live_users']:,} users "
        f"({counts['unseen_purchases']:,} of unseen items; {counts['outside_catalogue']:,} "
        f"of items outside the catalogue left out); trained on "
        f"{counts['training_purchases']:,} purchases"
    )
    for figure in found.figures:
        typer.echo(f"  {'DRIFT' if figure.passed else 'ok':<6}{describe(figure)}")
