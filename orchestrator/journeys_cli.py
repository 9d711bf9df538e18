"""`orchestrator journeys ...`: validate, test, deploy, list, schema, graph."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from orchestrator.cli_settings import command_settings, database_url
from orchestrator.sources import InvalidSource, Problem
from orchestrator.workspace import Workspace, find_root, load_workspace
from rules.durations import DurationDefaults

app = typer.Typer(help="Validate, deploy and inspect journeys.", no_args_is_help=True)

WorkspaceOption = Annotated[
    Path | None,
    typer.Option(
        help="Workspace directory (default: the one holding the given paths; else "
        "$ORCHESTRATOR_WORKSPACE, the one at or above the current directory, or the example)"
    ),
]


def print_problems(root: Path, problems: list[Problem]) -> None:
    for problem in problems:
        shown = os.path.relpath(root / problem.file)
        typer.echo(str(Problem(shown, problem.line, problem.col, problem.path, problem.message)))


def _open_workspace(root: Path) -> Workspace:
    try:
        return load_workspace(root)
    except InvalidSource as exc:
        print_problems(root, exc.problems)
        raise typer.Exit(1) from None


def root_for(paths: list[Path], workspace: Path | None) -> Path:
    """The workspace a command works on: `--workspace`; else the one holding the first
    path; with no paths, ORCHESTRATOR_WORKSPACE if set, else the one at or above the
    current directory, else the example (what `orchestrator dev` runs)."""
    if workspace is not None:
        return workspace
    if paths:
        found = find_root(paths[0])
        if found is None:
            typer.echo(
                "no orchestrator.yaml found above the given path; pass --workspace", err=True
            )
            raise typer.Exit(2)
        return found
    settings = command_settings()
    if "workspace" in settings.model_fields_set:  # set in the environment
        return settings.workspace
    return find_root(Path.cwd()) or settings.workspace


@app.command()
def validate(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Journey files or directories (default: the workspace's journeys)"),
    ] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Print every problem as `path:line:col: message`; exit 1 if there are any.
    Warnings (`warning: ...`, such as an event property the tracking plan does not
    define) are printed the same way and do not fail."""
    from orchestrator.tracking_plan.journey_checks import journey_warnings
    from orchestrator.validation import check_files

    paths = paths or []
    root = root_for(paths, workspace)
    ws = _open_workspace(root)
    files: list[Path] = [] if paths else list(ws.journey_files)
    for path in paths:
        if path.is_dir():
            files.extend(sorted(path.glob("*.yaml")) or sorted((path / "journeys").glob("*.yaml")))
        else:
            files.append(path)
    problems = check_files(files, ws)
    print_problems(root, problems)
    warnings = journey_warnings(files, ws)
    print_problems(root, warnings)
    if problems:
        raise typer.Exit(1)
    noted = f" ({len(warnings)} warning(s))" if warnings else ""
    typer.echo(f"{len(files)} journey file(s) valid in {os.path.relpath(root)}{noted}", err=True)


@app.command()
def deploy(
    workspace: WorkspaceOption = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Say what would change and who would move; store nothing"),
    ] = False,
) -> None:
    """Validate the whole workspace and store each changed journey as a new version; a
    version with `migrate` says, for each old version and step, how many users are
    there and where they go (a worker then moves them)."""
    from orchestrator.database import create_engine
    from orchestrator.deploy import deploy_workspace
    from orchestrator.tracking_plan.journey_checks import journey_warnings

    root = root_for([], workspace)
    ws = _open_workspace(root)
    url = database_url()
    print_problems(root, journey_warnings(ws.journey_files, ws))  # they do not stop it

    async def work() -> None:
        engine = create_engine(url, pool_size=1)
        try:
            results = await deploy_workspace(engine, ws, dry_run=dry_run)
        finally:
            await engine.dispose()
        for item in results:
            typer.echo(f"{item.key:<28} v{item.version:<4} {item.change}")
        for item in results:
            if item.migration is not None:
                typer.echo("\n".join(item.migration.lines()))
        if dry_run:
            typer.echo("dry run: nothing was deployed", err=True)

    try:
        asyncio.run(work())
    except InvalidSource as exc:
        print_problems(root, exc.problems)
        typer.echo("nothing was deployed", err=True)
        raise typer.Exit(1) from None


@app.command("test")
def run_journey_tests(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Test files or directories (default: the workspace's tests/)"),
    ] = None,
    workspace: WorkspaceOption = None,
    junit_xml: Annotated[
        Path | None, typer.Option("--junit-xml", help="Also write the results as JUnit XML")
    ] = None,
) -> None:
    """Run the workspace's journey tests on Temporal's time-skipping server (nothing is
    sent); print each failure at its test file position; exit 1 if any fails."""
    from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter

    from orchestrator.journey_tests.runner import (
        Outcome,
        deployable,
        find_test_files,
        load_tests,
        run_tests,
    )
    from orchestrator.journey_tests.runner import (
        junit_xml as as_junit,
    )

    paths = paths or []
    root = root_for(paths, workspace)
    ws = _open_workspace(root)
    files = find_test_files(ws, paths)
    if not files:
        typer.echo(f"no journey tests found in {os.path.relpath(root / 'tests')}", err=True)
        raise typer.Exit(1)
    try:
        journeys = deployable(ws)
    except InvalidSource as exc:
        print_problems(root, exc.problems)
        raise typer.Exit(1) from None
    try:
        loaded = load_tests(ws, files, journeys)
    except InvalidSource as exc:
        for problem in exc.problems:
            typer.echo(str(problem))
        raise typer.Exit(1) from None

    def show(outcome: Outcome) -> None:
        mark = "ok  " if outcome.passed else "FAIL"
        typer.echo(f"{mark} {outcome.journey} > {outcome.name} ({outcome.seconds:.1f}s)")
        for failure in outcome.failures:
            typer.echo("     " + str(failure).replace("\n", "\n     "))
        if outcome.error:
            typer.echo(f"     {outcome.error}")

    # A step that fails is reported by its test, not logged with a traceback; and what
    # the test server lacks beside a real one is not news.
    logging.getLogger("temporalio").setLevel(logging.CRITICAL)
    quiet = LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))
    Runtime.set_default(Runtime(telemetry=TelemetryConfig(logging=quiet)))
    outcomes = asyncio.run(run_tests(ws, loaded, journeys, on_result=show))
    failed = [o for o in outcomes if not o.passed]
    if junit_xml is not None:
        junit_xml.write_text(as_junit(outcomes))
    typer.echo(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed")
    # The SDK's Rust threads can abort the interpreter's teardown after many clients
    # (temporalio/sdk-python#300): everything is written, so skip it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if failed else 0)


@app.command()
def preview(
    path: Annotated[Path, typer.Argument(help="A journey file (new, or a changed version)")],
    since: Annotated[str, typer.Option(help="How far back the period starts, like 7d")] = "7d",
    until: Annotated[
        datetime | None, typer.Option(help="When the period ends (default: now)")
    ] = None,
    run_on: Annotated[
        str | None,
        typer.Option(help="Let users inside run on this long after the period, like 3d"),
    ] = None,
    workspace: WorkspaceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON")] = False,
) -> None:
    """Replay the stored events of a period through the journey, beside the deployed
    version: who would have entered, been held out, reached each step, been deferred or
    suppressed and by which rule, and messages per channel per day. Sends nothing,
    stores nothing."""
    from orchestrator.database import create_engine
    from orchestrator.journey_tests.harness import workspace_catalog
    from orchestrator.preview import Period, candidate, deployed_version, table
    from orchestrator.preview import preview as replay
    from rules.durations import DurationError, parse_duration

    try:
        back = parse_duration(since)
        after = parse_duration(run_on) if run_on else timedelta(0)
    except DurationError as exc:
        typer.echo(f"--since/--run-on: {exc}", err=True)
        raise typer.Exit(2) from None
    root = root_for([path], workspace)
    ws = _open_workspace(root)
    try:
        journey = candidate(path, ws)
    except InvalidSource as exc:
        print_problems(Path.cwd(), exc.problems)
        raise typer.Exit(1) from None
    if until is None:
        end = datetime.now(UTC)
    else:  # a time without a zone is UTC
        end = until.astimezone(UTC) if until.tzinfo else until.replace(tzinfo=UTC)
    period = Period(end - back, end, after)
    url = database_url()

    async def work() -> list[Any]:
        engine = create_engine(url, pool_size=1)
        try:
            async with engine.connect() as conn:
                versions = [("this file", journey)]
                if (current := await deployed_version(conn, journey.key)) is not None:
                    versions.append((f"deployed v{current.version}", current))
                return await replay(conn, ws, versions, period, workspace_catalog(ws))
        finally:
            await engine.dispose()

    try:
        counts = asyncio.run(work())
    except (ValueError, RuntimeError) as exc:  # an audience journey; a journey that failed
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    if as_json:
        document = {
            "journey": journey.key,
            "since": period.since.isoformat(),
            "until": period.until.isoformat(),
            "versions": [c.as_dict() for c in counts],
        }
        typer.echo(json.dumps(document, indent=2))
        return
    typer.echo(f"{journey.key}: the events of {period.since:%Y-%m-%d %H:%M} to "
               f"{period.until:%Y-%m-%d %H:%M} UTC, replayed (nothing sent or stored)")  # fmt: skip
    typer.echo("\n".join(table(counts)))


@app.command("list")
def list_journeys() -> None:
    """Deployed journeys, their versions and how many users are in each state."""
    from sqlalchemy import func, select

    from orchestrator.database import create_engine
    from orchestrator.tables import enrollments, journeys

    url = database_url()

    async def work() -> None:
        engine = create_engine(url, pool_size=1)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(select(journeys).order_by(journeys.c.key))).all()
                counts = (
                    await conn.execute(
                        select(
                            enrollments.c.journey_key, enrollments.c.status, func.count()
                        ).group_by(enrollments.c.journey_key, enrollments.c.status)
                    )
                ).all()
        finally:
            await engine.dispose()
        tally: dict[str, dict[str, int]] = {}
        for key, status, n in counts:
            tally.setdefault(key, {})[status] = n
        typer.echo(f"{'JOURNEY':<28} {'VERSION':<8} {'STATE':<8} USERS")
        for row in rows:
            users = ", ".join(f"{s} {n}" for s, n in sorted(tally.get(row.key, {}).items()))
            state = "active" if row.active else "retired"
            typer.echo(f"{row.key:<28} v{row.current_version:<7} {state:<8} {users or '-'}")

    asyncio.run(work())


@app.command()
def schema(
    kind: Annotated[
        Literal["journey", "template", "workspace"], typer.Option(help="Which file's schema")
    ] = "journey",
    output: Annotated[Path | None, typer.Option(help="Write to this file")] = None,
) -> None:
    """JSON Schema for journey, template or orchestrator.yaml files (for editors)."""
    from pydantic import BaseModel

    from channels.templates import Template
    from orchestrator.workspace import WorkspaceConfig
    from workflows.spec import Journey

    models: dict[str, type[BaseModel]] = {
        "journey": Journey,
        "template": Template,
        "workspace": WorkspaceConfig,
    }
    model = models[kind]
    document = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                **model.model_json_schema(schema_generator=DurationDefaults)}  # fmt: skip
    if kind == "workspace":
        document = _with_env_references(document)
    text = json.dumps(document, indent=2) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)


# `${NAME}` or `${NAME:-default}` somewhere in a string (see workspace.py).
_ENV_REFERENCE = {"type": "string", "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}"}


def _with_env_references(schema: Any) -> Any:
    """orchestrator.yaml's strings may be `${ENV}` references, resolved when it loads:
    a constrained string (pattern, length) also accepts one."""
    if isinstance(schema, list):
        return [_with_env_references(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: _with_env_references(value) for key, value in schema.items()}
    constrained = {"pattern", "minLength", "maxLength", "format"} & schema.keys()
    if schema.get("type") == "string" and constrained:
        kept = {k: v for k, v in schema.items() if k in ("title", "description", "default")}
        checked = {k: v for k, v in schema.items() if k not in kept}
        return {**kept, "anyOf": [checked, _ENV_REFERENCE]}
    return schema


@app.command()
def graph(
    path: Annotated[Path, typer.Argument(help="A journey file")],
    svg: Annotated[Path | None, typer.Option(help="Also write an SVG picture here")] = None,
    png: Annotated[
        Path | None,
        typer.Option(help="Also write a PNG picture here (for chat tools that show no SVG)"),
    ] = None,
) -> None:
    """Print the journey as Mermaid text; with --svg or --png, write a picture to open or
    share. An invalid journey is reported at its `file:line:col` and nothing is written."""
    from pydantic import ValidationError

    from orchestrator.graph import PictureError, mermaid
    from orchestrator.graph import png as render_png
    from orchestrator.graph import svg as render_svg
    from orchestrator.sources import load

    # A picture of a step that goes nowhere would hide the mistake: refuse what
    # `journeys validate` refuses in the steps' graph (templates and segments aside).
    from orchestrator.validation import graph_problems
    from workflows.spec import Journey

    try:
        source = load(path, display=os.path.relpath(path))
    except InvalidSource as exc:
        print_problems(Path.cwd(), exc.problems)
        raise typer.Exit(1) from None
    if not isinstance(source.data, dict):
        print_problems(Path.cwd(), [source.problem([], "a journey file must be a mapping")])
        raise typer.Exit(1)
    try:
        journey = Journey.model_validate(source.data)
    except ValidationError as exc:
        print_problems(Path.cwd(), source.problems_from(exc))
        raise typer.Exit(1) from None
    if problems := [source.problem(loc, msg) for loc, msg in graph_problems(journey)]:
        print_problems(Path.cwd(), sorted(problems))
        raise typer.Exit(1)
    pictures: list[tuple[Path, bytes]] = []
    if svg is not None:
        pictures.append((svg, render_svg(journey).encode()))
    if png is not None:
        try:
            pictures.append((png, render_png(journey)))
        except PictureError as exc:
            typer.echo(f"{png}: {exc}", err=True)
            raise typer.Exit(1) from None
    typer.echo(mermaid(journey), nl=False)
    for target, content in pictures:
        try:
            target.write_bytes(content)
        except OSError as exc:
            typer.echo(f"{target}: cannot write: {exc.strerror}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"wrote {target}", err=True)
