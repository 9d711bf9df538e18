"""`orchestrator`: run the stack (dev, api, worker, migrate) and manage journeys."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Literal

import typer

from orchestrator.access.cli import audit_log, tokens_app
from orchestrator.arbitration_cli import decisions_app, policy_app
from orchestrator.catalog_cli import app as catalog_app
from orchestrator.cli_settings import (
    DEV_STATE_DIR,
    command_settings,
    serving_settings,
    settings_with_database,
)
from orchestrator.doctor.cli import doctor
from orchestrator.experiments.cli import app as experiments_app
from orchestrator.journeys_cli import app as journeys_app
from orchestrator.ranking_cli import app as ranking_app
from orchestrator.reports.cli import app as report_app
from orchestrator.retention.cli import app as retention_app
from orchestrator.segments.cli import segments_app, traits_app
from orchestrator.settings import EXAMPLE_WORKSPACE, Settings
from orchestrator.tracking_plan.cli import app as tracking_plan_app
from orchestrator.users.cli import users_app

app = typer.Typer(
    help="Cross-channel journey orchestration on Temporal.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(journeys_app, name="journeys")
app.add_typer(policy_app, name="policy")
app.add_typer(decisions_app, name="decisions")
app.add_typer(catalog_app, name="catalog")
app.add_typer(ranking_app, name="ranking")
app.add_typer(experiments_app, name="experiments")
app.add_typer(tokens_app, name="tokens")
app.add_typer(report_app, name="report")
app.add_typer(segments_app, name="segments")
app.add_typer(traits_app, name="traits")
app.add_typer(tracking_plan_app, name="tracking-plan")
app.add_typer(retention_app, name="retention")
app.add_typer(users_app, name="users")
app.command("audit")(audit_log)
app.command("doctor")(doctor)
events_app = typer.Typer(help="The facts the product publishes.", no_args_is_help=True)
app.add_typer(events_app, name="events")


@events_app.command("schema")
def events_schema(
    kind: Annotated[
        str | None, typer.Option("--type", help="One type (default: all, as one document)")
    ] = None,
) -> None:
    """The JSON Schema of each published record type (versioned), for consumers."""
    import json

    from orchestrator.kafka.facts import KINDS, schema

    if kind is not None and kind not in KINDS:
        typer.echo(f"unknown type {kind!r}; the types are: {', '.join(KINDS)}", err=True)
        raise typer.Exit(2)
    document = schema(kind) if kind else {k: schema(k) for k in KINDS}
    typer.echo(json.dumps(document, indent=2))


def main() -> None:
    app()


def run_until_stopped(work: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `work(stop)` where `stop` is set on Ctrl-C or SIGTERM."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await work(stop)

    asyncio.run(runner())


LogLevel = Annotated[
    Literal["debug", "info", "warning", "error"],
    typer.Option(help="How much to log (debug adds the traceback of each failed activity)"),
]


def _logging(level: str) -> None:
    from orchestrator.logs.formats import configure, log_format

    try:
        configure(level, log_format())  # text, or JSON lines with ORCHESTRATOR_LOG_FORMAT=json
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


@app.command()
def dev(
    workspace: Annotated[
        Path, typer.Option(help="Workspace to run: orchestrator.yaml, journeys/, templates/")
    ] = EXAMPLE_WORKSPACE,
    state_dir: Annotated[
        Path,
        typer.Option(
            help="Where Postgres and Temporal keep their data (with the default, other "
            "commands run in this directory use its database)"
        ),
    ] = DEV_STATE_DIR,
    api_port: Annotated[
        int,
        typer.Option(help="HTTP API port (ORCHESTRATOR_PUBLIC_URL for the workspace, unless set)"),
    ] = 8000,
    temporal_port: Annotated[int, typer.Option(help="Temporal frontend (gRPC) port")] = 7233,
    ui_port: Annotated[int, typer.Option(help="Temporal Web UI port")] = 8233,
    sink_port: Annotated[
        int,
        typer.Option(help="Local webhook sink port (ORCHESTRATOR_SINK_URL for the workspace)"),
    ] = 8750,
    postgres_port: Annotated[int, typer.Option(help="Postgres port (0: any free)")] = 0,
    kafka_port: Annotated[
        int,
        typer.Option(
            help="Local Kafka broker port, when the workspace uses Kafka "
            "(ORCHESTRATOR_KAFKA for the workspace)"
        ),
    ] = 9092,
    temporal_metrics_port: Annotated[
        int, typer.Option(help="Port of the Temporal SDK's Prometheus metrics (0: off)")
    ] = 9465,
    log_level: LogLevel = "warning",
) -> None:
    """Run everything locally: Postgres, Temporal + UI, API, worker and a webhook sink."""
    from orchestrator.stack.dev import DevOptions, run_dev
    from orchestrator.tracing.provider import exporting

    _logging(log_level)
    options = DevOptions(
        workspace=workspace,
        state_dir=state_dir,
        api_port=api_port,
        temporal_port=temporal_port,
        ui_port=ui_port,
        sink_port=sink_port,
        postgres_port=postgres_port,
        kafka_port=kafka_port,
        temporal_metrics_port=temporal_metrics_port,
    )
    with exporting(command_settings(), service="orchestrator-dev"):
        run_until_stopped(lambda stop: run_dev(options, stop))


@app.command()
def api(log_level: LogLevel = "info") -> None:
    """Serve the HTTP API (settings from ORCHESTRATOR_* environment variables).

    With ORCHESTRATOR_API_PROCESSES above 1, that many processes share the port.
    """
    from orchestrator.stack.servers import listening_socket

    settings = serving_settings()
    _logging(log_level)
    sock = listening_socket(settings.api_host, settings.api_port)
    if settings.api_processes == 1:
        _serve_api(settings, sock)
        return
    from orchestrator.metrics.exposition import shared_by_processes

    with shared_by_processes() as ended:  # /metrics adds up every process's values
        _serve_api_processes(settings, sock, ended)


def _serve_api_processes(
    settings: Settings, sock: socket.socket, ended: Callable[[int], None]
) -> None:
    children = []
    for _ in range(settings.api_processes):
        pid = os.fork()
        if pid == 0:  # the child serves until SIGTERM (from us) or SIGINT (from a terminal)
            # Until its event loop takes over the signal, a stop request ends it outright.
            signal.signal(signal.SIGTERM, _exit_now)
            code = 1
            try:
                _serve_api(settings, sock)
                code = 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)  # never return into the parent's code
        children.append(pid)
    url = f"http://{settings.api_host}:{settings.api_port}"
    typer.echo(f"API on {url} in {len(children)} processes; metrics of all at {url}/metrics")

    def forward(sig: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    codes = [os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) for child in children]
    for child in children:
        ended(child)
    raise typer.Exit(max(codes, key=abs))


def _exit_now(_sig: int, _frame: object) -> None:
    raise SystemExit(0)


def _serve_api(settings: Settings, sock: socket.socket) -> None:
    from orchestrator.api import create_app
    from orchestrator.services import open_services
    from orchestrator.stack.servers import serving
    from orchestrator.tracing.provider import exporting

    async def work(stop: asyncio.Event) -> None:
        async with (
            open_services(settings) as services,
            serving(
                create_app(services),
                sock=sock,
                log_level="info",
                forwarded_allow_ips=settings.forwarded_allow_ips,
            ) as url,
        ):
            typer.echo(f"API on {url} (docs at {url}/docs), pid {os.getpid()}")
            await stop.wait()

    with exporting(settings, service="orchestrator-api"):  # per process: after the fork
        run_until_stopped(work)


@app.command()
def worker(log_level: LogLevel = "info") -> None:
    """Run a journey worker (settings from ORCHESTRATOR_* environment variables)."""
    from orchestrator.database import create_engine
    from orchestrator.metrics.processes import WORKER_PORT, exported
    from orchestrator.temporal import connect
    from orchestrator.tracing.provider import exporting, tracing_enabled
    from orchestrator.worker import running_worker
    from orchestrator.workspace import load_workspace

    settings = serving_settings()
    _logging(log_level)

    async def work(stop: asyncio.Event) -> None:
        engine = create_engine(settings.require_database_url(), pool_size=settings.db_pool_size)
        try:
            client = await connect(settings.temporal_address, settings.temporal_namespace,
                                   tracing=tracing_enabled(settings),
                                   runtime=metrics.runtime)  # fmt: skip
            async with running_worker(
                client,
                workspace=load_workspace(settings.workspace),
                engine=engine,
                task_queue=settings.task_queue,
                upkeep=True,
            ):
                typer.echo(f"worker polling task queue '{settings.task_queue}'; "
                           f"{metrics.describe()}")  # fmt: skip
                await stop.wait()
        finally:
            await engine.dispose()

    with (
        exporting(settings, service="orchestrator-worker"),
        exported(settings, default_port=WORKER_PORT, sdk=True) as metrics,
    ):
        run_until_stopped(work)


@app.command()
def consume(
    status: Annotated[
        bool, typer.Option("--status", help="Print each partition's lag and exit")
    ] = False,
    log_level: LogLevel = "info",
) -> None:
    """Consume the workspace's Kafka topics (`kafka.consume` in orchestrator.yaml): each
    record is ingested as /v1/batch ingests a message; offsets are committed once it is
    stored. Settings from ORCHESTRATOR_* environment variables, like `api` and `worker`."""
    from orchestrator.kafka.consumer import EventConsumer, lag
    from orchestrator.metrics.processes import exported
    from orchestrator.services import open_services
    from orchestrator.tracing.provider import exporting
    from orchestrator.workspace import load_workspace

    settings = serving_settings()
    _logging(log_level)
    kafka = load_workspace(settings.workspace).config.kafka
    if kafka is None or kafka.consume is None:
        typer.echo("orchestrator.yaml has no `kafka.consume`: nothing to consume", err=True)
        raise typer.Exit(2)
    if status:
        rows = asyncio.run(lag(kafka, kafka.consume))
        typer.echo(f"{'TOPIC':<32} {'PARTITION':>9} {'COMMITTED':>10} {'END':>10} {'LAG':>8}")
        for row in rows:
            committed = "-" if row.committed is None else str(row.committed)
            typer.echo(f"{row.topic:<32} {row.partition:>9} {committed:>10} {row.end:>10} "
                       f"{row.behind:>8}")  # fmt: skip
        return

    cluster, consumes = kafka, kafka.consume

    async def work(stop: asyncio.Event) -> None:
        async with open_services(settings) as services:
            consumer = EventConsumer(services, cluster)
            typer.echo(f"consuming {', '.join(consumes.topics)} as group "
                       f"'{consumes.group_id}', pid {os.getpid()}; "
                       f"{metrics.describe()}")  # fmt: skip
            await consumer.run(stop)

    with exporting(settings, service="orchestrator-consumer"), exported(settings) as metrics:
        run_until_stopped(work)


@app.command()
def relay(log_level: LogLevel = "info") -> None:
    """Publish every fact (messages, decisions, journey steps, assignments) to the topic
    `kafka.publish` names, or else to `facts_webhook` in signed batches, through the
    transactional outbox; one relay publishes at a time, others wait to take over.
    Settings from ORCHESTRATOR_* environment variables."""
    from orchestrator.database import create_engine
    from orchestrator.kafka.relay import Relay, sink_for
    from orchestrator.metrics.processes import exported
    from orchestrator.workspace import load_workspace

    settings = serving_settings()
    _logging(log_level)
    sink = sink_for(load_workspace(settings.workspace).config)
    if sink is None:
        typer.echo("orchestrator.yaml has neither `kafka.publish` nor `facts_webhook`: "
                   "nothing to publish to", err=True)  # fmt: skip
        raise typer.Exit(2)
    found = sink

    async def work(stop: asyncio.Event) -> None:
        engine = create_engine(settings.require_database_url(), pool_size=2)
        try:
            typer.echo(f"publishing the outbox, pid {os.getpid()}; {metrics.describe()}")
            await Relay(engine, found).run(stop)
        finally:
            await engine.dispose()

    with exported(settings) as metrics:
        run_until_stopped(work)


@app.command()
def migrate() -> None:
    """Bring the database schema up to date."""
    from orchestrator.database import migrate_sync

    migrate_sync(settings_with_database().require_database_url())
    typer.echo("database is up to date")


@app.command("register-search-attributes")
def register_search_attributes() -> None:
    """Register the journey search attributes on a Temporal cluster (idempotent)."""
    from orchestrator.temporal import connect
    from orchestrator.temporal import register_search_attributes as register

    settings = command_settings()

    async def work() -> None:
        client = await connect(settings.temporal_address, settings.temporal_namespace)
        await register(client, settings.temporal_namespace)

    asyncio.run(work())
    typer.echo("search attributes registered")
