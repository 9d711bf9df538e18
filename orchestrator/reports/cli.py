"""`orchestrator report journey|experiment|workspace [--json]`: the reports in a terminal."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.reports import design, service
from orchestrator.reports.formats import amount, p_value, points, rate, relative, with_interval

app = typer.Typer(help="What journeys and their experiments did, with the statistics.",
                  no_args_is_help=True)  # fmt: skip
Json = Annotated[bool, typer.Option("--json", help="The JSON the API answers")]
T = TypeVar("T")


def _read(work: Callable[[AsyncConnection, float], Awaitable[T]]) -> T:
    from orchestrator.cli_settings import settings_with_database
    from orchestrator.database import create_engine
    from orchestrator.workspace import load_config

    settings = settings_with_database()
    percent = load_config(settings.workspace).global_control

    async def run() -> T:
        engine = create_engine(settings.require_database_url(), pool_size=1)
        try:
            async with engine.connect() as conn:
                return await work(conn, percent)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except design.UnknownReport as exc:
        typer.echo(exc.args[0], err=True)
        raise typer.Exit(1) from None


def _json(report: Any) -> None:
    typer.echo(json.dumps(dataclasses.asdict(report), default=str, indent=2))


@app.command()
def experiment(
    key: Annotated[str, typer.Argument(help="The experiment's key, or `holdout`")],
    journey: Annotated[
        str | None, typer.Option(help="The journey (needed when two have the key)")
    ] = None,
    as_json: Json = False,
) -> None:
    """Arms with their intervals, lift against the control, the sample-ratio check."""
    now = datetime.now(UTC)

    async def work(conn: AsyncConnection, percent: float) -> service.ExperimentResult:
        found = journey or await design.journey_of(conn, key)
        return await service.experiment(conn, journey=found, key=key, now=now,
                                        global_control=percent)  # fmt: skip

    result = _read(work)
    if as_json:
        _json(result)
        return
    for line in experiment_lines(result):
        typer.echo(line)


@app.command("journey")
def journey_command(key: Annotated[str, typer.Argument()], as_json: Json = False) -> None:
    """Funnel, holdout, experiments and attribution by channel."""
    now = datetime.now(UTC)

    async def work(conn: AsyncConnection, percent: float) -> service.JourneyReport:
        return await service.journey_report(conn, journey=key, now=now)

    report = _read(work)
    if as_json:
        _json(report)
        return
    typer.echo(f"{report.name} ({report.key} v{report.version}): {report.users} users, "
               f"{report.converted} converted")  # fmt: skip
    statuses = ", ".join(f"{n} {status}" for status, n in sorted(report.enrollments.items()))
    typer.echo(f"enrollments: {statuses or 'none'}")
    typer.echo("\nfunnel")
    for step in report.funnel:
        typer.echo(f"  {step.step:<24} {step.kind:<12} {step.users:>7} users")
    if report.holdout is not None:
        typer.echo("")
        for line in experiment_lines(report.holdout):
            typer.echo(line)
    for result in report.experiments:
        typer.echo("")
        for line in experiment_lines(result):
            typer.echo(line)
    if report.attribution:
        typer.echo("\nby channel    sent  delivered  opened  clicked  first touch  last touch")
        for c in report.attribution:
            typer.echo(f"  {c.channel:<10} {c.sent:>5} {c.delivered:>10} {c.opened:>7} "
                       f"{c.clicked:>8} {c.first_touch:>12} {c.last_touch:>11}")  # fmt: skip


@app.command()
def workspace(as_json: Json = False) -> None:
    """The global control group against everyone else, and each journey's headline."""
    now = datetime.now(UTC)

    async def work(conn: AsyncConnection, percent: float) -> service.WorkspaceReport:
        return await service.workspace_report(conn, global_control=percent, now=now)

    report = _read(work)
    if as_json:
        _json(report)
        return
    if report.global_control is None:
        typer.echo("no global control group (set global_control in orchestrator.yaml)")
    else:
        for line in experiment_lines(report.global_control):
            typer.echo(line)
        conversions = with_interval(report.incremental_conversions, amount)
        typer.echo(f"incremental conversions: {conversions}")
        typer.echo(f"incremental revenue: {with_interval(report.incremental_revenue, amount)}")
    typer.echo("\njourney                    users  converted")
    for headline in report.journeys:
        typer.echo(f"  {headline.key:<24} {headline.users:>6} {headline.converted:>10}")


def experiment_lines(result: service.ExperimentResult) -> list[str]:
    """An experiment as text: the sample-ratio check first, as the rest depends on it."""
    where = "the workspace" if result.journey == "*" else f"journey {result.journey}"
    named = result.kind in ("experiment", "template")
    title = f"{result.kind} {result.key}" if named else result.kind.replace("_", " ")
    lines = [f"{title} in {where} ({result.mode}, control: {result.control}), "
             f"{result.users} users"]  # fmt: skip
    if result.ended_at is not None:
        lines.append(f"  ended {result.ended_at:%Y-%m-%d %H:%M} UTC: its results as archived then")
    if result.users_earlier_split:
        lines.append(f"  ({result.users_earlier_split} more assigned under an earlier split are "
                     "left out)")  # fmt: skip
    if result.bandit is not None:
        lines.append("  a bandit: each arm's rate had everyone got it, by inverse propensity")
        for drawn in result.bandit:
            estimate = with_interval(drawn.hajek, rate)
            lines.append(f"  {drawn.arm:<16} {drawn.users:>6} users  {estimate}")
        if result.users_without_propensity:
            lines.append(f"  ({result.users_without_propensity} users logged without a "
                         "propensity are left out)")  # fmt: skip
        return lines
    analysis = result.analysis
    if analysis is None:
        return [*lines, "  no users yet"]
    srm = analysis.sample_ratio
    if srm is not None and srm.p_value is not None:
        verdict = "MISMATCH: the split is not what was configured; distrust what follows" if (
            srm.mismatch) else "as configured"  # fmt: skip
        lines.append(f"  sample ratio: {verdict} (p = {p_value(srm.p_value)})")
    for arm in analysis.arms:
        lines.append(f"  {arm.arm:<16} {arm.conversions}/{arm.users} converted  "
                     f"{with_interval(arm.conversion_rate, rate)}  "
                     f"revenue/user {with_interval(arm.revenue_per_user, amount)}")  # fmt: skip
    for c in analysis.comparisons:
        lift = c.conversion
        sequential = lift.sequential
        verdict = "significant" if sequential.significant else "not significant yet"
        fixed = with_interval(lift.absolute, points, " points")
        lift_shown = with_interval(lift.relative, relative)
        lines.append(f"  {c.arm} vs {c.control}: {fixed}, relative {lift_shown}, "
                     f"p = {p_value(lift.p_value)}")  # fmt: skip
        always = with_interval(sequential.difference, points, " points")
        lines.append(f"    always valid (look any day): {always}: {verdict}")
        detectable = lift.minimum_detectable.absolute
        if detectable is not None:
            lines.append(f"    detectable now: {points(detectable)} points")
    needed = [f"{relative(n.relative_lift)}: {n.users_per_arm:,}" for n in analysis.users_needed
              if n.users_per_arm is not None]  # fmt: skip
    if needed:
        lines.append(f"  users per arm to find a lift over {result.control}: {', '.join(needed)}")
    return lines
