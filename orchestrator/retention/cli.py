"""`orchestrator retention run [--dry-run]` and `orchestrator retention status`."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Annotated, Any

import typer

from orchestrator.retention.config import KINDS, RetentionConfig, days

app = typer.Typer(
    help="Retention: what is kept about users and for how long; runs and their counts.",
    no_args_is_help=True,
)
Json = Annotated[bool, typer.Option("--json", help="As JSON")]

# Steps as `status` and `run` name them, in the run's order.
STEP_LABELS = {
    "message_bodies": "message bodies",
    "inbox": "in-app/web copies",
    "receipts": "receipts",
    "decisions": "decisions",
    "assignments": "assignments",
    "events": "events",
}


def _config() -> RetentionConfig:
    from orchestrator.cli_settings import command_settings
    from orchestrator.sources import InvalidSource
    from orchestrator.workspace import load_workspace

    try:
        return load_workspace(command_settings().workspace).config.retention
    except InvalidSource as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        raise typer.Exit(1) from None


def counts_lines(counts: dict[str, dict[str, int]], *, dry_run: bool) -> list[str]:
    lines = []
    for step, label in STEP_LABELS.items():
        found = counts.get(step)
        if found is None:
            continue
        changed = {k: v for k, v in found.items() if k != "kept"}
        verb = "would change" if dry_run else "changed"
        said = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in changed.items())
        lines.append(f"  {label:<20} {verb}: {said}; kept (still needed) {found['kept']:,}")
    return lines


@app.command()
def run(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would go; change nothing")
    ] = False,
    wait: Annotated[bool, typer.Option(help="Wait for the run to finish")] = True,
) -> None:
    """Run retention now, on a worker of this task queue (beside the schedule's runs),
    and print what it removed and kept per kind."""
    from orchestrator.cli_settings import command_settings
    from orchestrator.retention.schedule import start_run
    from orchestrator.temporal import connect, retention_queue

    settings = command_settings()
    _config()  # refuse a workspace whose periods would not load in the worker

    async def work() -> Any:
        client = await connect(settings.temporal_address, settings.temporal_namespace)
        handle = await start_run(client, task_queue=settings.task_queue, dry_run=dry_run)
        typer.echo(
            f"started {handle.id} on {retention_queue(settings.task_queue)} "
            "(a worker of this task queue runs it)"
        )
        return await handle.result() if wait else None

    result = asyncio.run(work())
    if result is not None:
        typer.echo(f"run {result.run_id}{' (dry run)' if result.dry_run else ''} finished:")
        for line in counts_lines(result.counts, dry_run=result.dry_run):
            typer.echo(line)


@app.command()
def status(
    limit: Annotated[int, typer.Option(min=1, max=200, help="Runs to list")] = 10,
    as_json: Json = False,
) -> None:
    """The periods in force and the latest runs: when, how long, and per kind what they
    removed and what they kept because it is still needed."""
    from orchestrator.cli_settings import database_url
    from orchestrator.database import create_engine
    from orchestrator.retention.sweep import recent_runs

    config = _config()
    url = database_url()

    async def work() -> list[dict[str, Any]]:
        engine = create_engine(url, pool_size=1)
        try:
            async with engine.connect() as conn:
                return await recent_runs(conn, limit=limit)
        finally:
            await engine.dispose()

    runs = asyncio.run(work())
    if as_json:
        periods = {kind: days(config.period(kind)) for kind in KINDS}
        typer.echo(json.dumps({"periods": periods, "runs": runs}, default=str, indent=2))
        return
    timing = f"cron {config.cron} (UTC)" if config.cron else f"every {days(config.every)}"
    typer.echo("kept for: " + ", ".join(f"{k} {days(config.period(k))}" for k in KINDS))
    typer.echo(f"runs {timing}" + ("" if config.enabled else " (paused: enabled is false)"))
    if not runs:
        typer.echo("no runs yet: a worker schedules them; `orchestrator retention run` runs now")
        return
    for row in runs:
        took = row["finished_at"] - row["started_at"] if row["finished_at"] else None
        typer.echo(
            f"run {row['id']}  {row['started_at']:%Y-%m-%d %H:%M:%S}  {row['trigger']:<8} "
            f"{'dry run  ' if row['dry_run'] else ''}{row['status']}"
            + (f" in {_took(took)}" if took is not None else "")
        )
        for line in counts_lines(row["counts"], dry_run=row["dry_run"]):
            typer.echo(line)


def _took(value: timedelta) -> str:
    seconds = value.total_seconds()
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}m"
