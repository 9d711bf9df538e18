"""`orchestrator tracking-plan violations|infer|show`."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncConnection

from rules.durations import DurationError, parse_duration

app = typer.Typer(
    help="The tracking plan: what broke it, the plan in force, a plan proposed from events.",
    no_args_is_help=True,
)
Json = Annotated[bool, typer.Option("--json", help="The JSON the API answers")]
T = TypeVar("T")


def _read(work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    from orchestrator.cli_settings import read_database

    return read_database(work)


def _duration(value: str | None, option: str) -> None:
    if value is None:
        return
    try:
        parse_duration(value)
    except DurationError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def _iso(value: Any) -> str:
    """Times and days as the API writes them."""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


@app.command()
def violations(
    since: Annotated[
        str | None, typer.Option(help="Only days this recent, like 7d (default: every day)")
    ] = None,
    version: Annotated[
        int | None, typer.Option(min=1, help="Plan version (default: the one in force)")
    ] = None,
    as_json: Json = False,
) -> None:
    """Violations stored under `mode: report`, per event, field and problem, most
    frequent first (counted per UTC day: `--since` starts at a day's beginning)."""
    from orchestrator.tracking_plan.store import deployed_plan, list_violations, since_day

    _duration(since, "--since")
    first = since_day(since, datetime.now(UTC))

    async def work(conn: AsyncConnection) -> tuple[int, list[dict[str, Any]]]:
        found = await list_violations(conn, since=first, plan_version=version)
        return version or (await deployed_plan(conn)).version, found

    in_force, found = _read(work)
    if as_json:
        document = {"plan_version": in_force, "since": first, "violations": found}
        typer.echo(json.dumps(document, default=_iso, indent=2))
        return
    if in_force == 0:
        typer.echo("no tracking plan deployed: add tracking_plan.yaml and run "
                   "`orchestrator journeys deploy`")  # fmt: skip
        return
    window = f" since {first}" if first else ""
    if not found:
        typer.echo(f"no violations under plan v{in_force}{window}")
        return
    typer.echo(f"plan v{in_force}{window}")
    typer.echo(f"{'count':>8}  {'event':<24} {'field':<28} {'problem':<22} last seen, example")
    for row in found:
        event = row["event"] or "(identify)"
        typer.echo(
            f"{row['count']:>8}  {event:<24} {row['field']:<28} {row['problem']:<22} "
            f"{row['last_seen']:%Y-%m-%d %H:%M}, {row['example_message_id']}"
        )


@app.command()
def infer(
    since: Annotated[str, typer.Option(help="Events received this recently")] = "30d",
    output: Annotated[
        Path | None, typer.Option(help="Write the plan here (default: print it)")
    ] = None,
) -> None:
    """Propose a tracking plan from the events stored: each property's types, `required`
    when always present, enums for small sets of strings. It validates as it is."""
    from orchestrator.sources import InvalidSource, parse
    from orchestrator.tracking_plan.inference import as_yaml
    from orchestrator.tracking_plan.inference import infer as propose
    from orchestrator.tracking_plan.plan import PLAN_FILE, plan_from

    _duration(since, "--since")
    now = datetime.now(UTC)
    start = now - parse_duration(since)
    plan = _read(lambda conn: propose(conn, since=start))
    text = as_yaml(plan, since=start, now=now)
    try:
        plan_from(parse(text, PLAN_FILE))
    except InvalidSource as exc:  # a bug of ours: say so rather than write a broken file
        typer.echo(f"the proposed plan does not validate:\n{exc}", err=True)
        raise typer.Exit(1) from None
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {output}: {len(plan['events'])} event(s)"
                   + (" and identify traits" if "identify" in plan else ""), err=True)  # fmt: skip


@app.command()
def show(as_json: Json = False) -> None:
    """The plan in force: its version, mode and the events it defines."""
    from orchestrator.tracking_plan.store import deployed_plan

    found = _read(deployed_plan)
    if found.plan is None:
        typer.echo("no tracking plan in force")
        raise typer.Exit(1)
    if as_json:
        body = {"version": found.version, "deployed_at": found.deployed_at,
                **found.plan.as_json()}  # fmt: skip
        typer.echo(json.dumps(body, default=str, indent=2))
        return
    plan = found.plan
    typer.echo(f"v{found.version} deployed {found.deployed_at:%Y-%m-%d %H:%M}: mode {plan.mode}, "
               f"unplanned events: {plan.unplanned_events}")  # fmt: skip
    for name, schema in plan.events.items():
        props = ", ".join(schema.get("properties", {})) or "no properties listed"
        typer.echo(f"  {name}: {props}")
    if plan.identify is not None:
        typer.echo(f"  (identify): {', '.join(plan.identify.get('properties', {})) or '-'}")
