"""`orchestrator policy ...` and `orchestrator decisions explain`."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from orchestrator.arbitration import shown_key
from orchestrator.cli_settings import database_url
from orchestrator.journeys_cli import WorkspaceOption, print_problems, root_for
from orchestrator.sources import InvalidSource, load
from orchestrator.workspace import POLICY_FILE, load_config, load_policy
from rules.durations import DurationDefaults

policy_app = typer.Typer(help="Validate, export and try the contact policy.", no_args_is_help=True)
decisions_app = typer.Typer(help="Why a user did or did not get a message.", no_args_is_help=True)


@policy_app.command("validate")
def validate(workspace: WorkspaceOption = None) -> None:
    """Print every problem in policy.yaml as `path:line:col: message`; exit 1 if any."""
    root = root_for([], workspace)
    try:
        load_policy(root)
    except InvalidSource as exc:
        print_problems(root, exc.problems)
        raise typer.Exit(1) from None
    path = root / POLICY_FILE
    shown = os.path.relpath(path) if path.exists() else "no policy.yaml (nothing restricted)"
    typer.echo(f"{shown} is valid", err=True)


@policy_app.command("schema")
def schema(output: Annotated[Path | None, typer.Option(help="Write to this file")] = None) -> None:
    """JSON Schema for policy.yaml (for editors)."""
    from rules.policy import Policy

    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **Policy.model_json_schema(schema_generator=DurationDefaults),
    }
    text = json.dumps(document, indent=2) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)


@policy_app.command("simulate")
def simulate(
    traffic_file: Annotated[Path, typer.Argument(help="Users and send requests (YAML or JSON)")],
    workspace: WorkspaceOption = None,
    policy_file: Annotated[
        Path | None, typer.Option("--policy", help="Try this policy instead of the workspace's")
    ] = None,
) -> None:
    """Replay send requests against a policy and print what each gets, and why."""
    from orchestrator.simulation import Traffic
    from orchestrator.simulation import simulate as run
    from rules.policy import Policy

    try:
        if policy_file is not None:
            source = load(policy_file, display=os.path.relpath(policy_file))
            try:
                policy = Policy.model_validate(source.data or {})
            except ValidationError as exc:
                raise InvalidSource(source.problems_from(exc)) from None
            default_timezone = "UTC"
        else:
            root = root_for([traffic_file], workspace)
            policy = load_policy(root)
            default_timezone = load_config(root).default_timezone
        traffic_source = load(traffic_file, display=os.path.relpath(traffic_file))
        try:
            traffic = Traffic.model_validate(traffic_source.data)
        except ValidationError as exc:
            raise InvalidSource(traffic_source.problems_from(exc)) from None
    except InvalidSource as exc:
        print_problems(Path.cwd(), exc.problems)
        raise typer.Exit(1) from None
    outcomes = run(traffic, policy, default_timezone=default_timezone)
    for item in outcomes:
        decision, request = item.decision, item.request
        what = {
            "send": f"send on {decision.channel}",
            "defer": f"defer until {decision.until:%Y-%m-%d %H:%M}" if decision.until else "defer",
            "suppress": "suppress",
        }[decision.action]
        label = request.journey or request.key
        typer.echo(f"{item.at:%Y-%m-%d %H:%M}  {request.user_id:<12} {label:<22} {what:<28} "
                   f"{decision.reason}")  # fmt: skip
    final = Counter(o.decision.action for o in outcomes if o.decision.action != "defer")
    typer.echo(f"\n{len(traffic.requests)} requests: {final['send']} sent, "
               f"{final['suppress']} suppressed", err=True)  # fmt: skip


@decisions_app.command("explain")
def explain(
    user: Annotated[str, typer.Argument(help="The user id")],
    journey: Annotated[str | None, typer.Option(help="Only this journey's messages")] = None,
    limit: Annotated[int, typer.Option(help="How many decisions, newest first")] = 50,
) -> None:
    """Every decision about a user's messages, with each rule that was checked."""
    from orchestrator.database import create_engine
    from rules import store

    url = database_url()

    async def work() -> list[dict[str, Any]]:
        engine = create_engine(url, pool_size=1)
        try:
            async with engine.connect() as conn:
                return await store.decisions_for(conn, user, journey=journey, limit=limit)
        finally:
            await engine.dispose()

    rows = asyncio.run(work())
    if not rows:
        typer.echo(f"no decisions for user {user}" + (f" in {journey}" if journey else ""))
        return
    for row in rows:
        action = str(row["action"])
        target = {
            "send": f"sent on {row['channel']}",
            "suppress": "suppressed",
            "defer": f"deferred until {row['until']:%Y-%m-%d %H:%M}" if row["until"] else "",
        }[action]
        typer.echo(f"{row['decided_at']:%Y-%m-%d %H:%M:%S}  {row['journey'] or '-'}  "
                   f"message {shown_key(str(row['key']))[:13]}  {target}")  # fmt: skip
        for check in row["checks"]:
            mark = "ok  " if check["passed"] else "FAIL"
            typer.echo(f"    {mark} {check['rule']}: {check['detail']}")
