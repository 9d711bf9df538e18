"""`orchestrator dev`: the whole product on one machine, as one process tree.

Embedded PostgreSQL and the Temporal dev server run as children (and die with us);
the API, the worker and the webhook sink run in this process's event loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.api import create_app
from orchestrator.catalog import load_items, read_items
from orchestrator.database import create_engine, migrate
from orchestrator.deploy import deploy_workspace
from orchestrator.kafka.consumer import EventConsumer
from orchestrator.kafka.relay import KafkaSink, Relay
from orchestrator.metrics.sdk import runtime_with_metrics
from orchestrator.services import Services, build_services
from orchestrator.settings import Settings
from orchestrator.sources import InvalidSource
from orchestrator.stack.kafka import LocalBroker, ensure_topics
from orchestrator.stack.postgres import EmbeddedPostgres
from orchestrator.stack.servers import serving
from orchestrator.stack.sink import create_sink
from orchestrator.stack.temporal import TemporalDevServer
from orchestrator.temporal import connect
from orchestrator.tracing.provider import tracing_enabled
from orchestrator.worker import running_worker
from orchestrator.workspace import KafkaConfig, load_workspace


@dataclass(frozen=True)
class DevOptions:
    workspace: Path
    state_dir: Path
    api_port: int
    temporal_port: int
    ui_port: int
    sink_port: int
    postgres_port: int = 0
    kafka_port: int = 9092
    temporal_metrics_port: int = 9465  # the Temporal SDK's metrics (0: off)


CATALOG_FILE = "catalog.csv"
# What orchestrator.yaml can say to follow the ports `dev` was given, as the example does:
# `url: ${ORCHESTRATOR_SINK_URL:-http://127.0.0.1:8750}/email`.
SINK_URL = "ORCHESTRATOR_SINK_URL"
PUBLIC_URL = "ORCHESTRATOR_PUBLIC_URL"
# `bootstrap_servers: ${ORCHESTRATOR_KAFKA:-127.0.0.1:9092}`: the local broker's address.
KAFKA = "ORCHESTRATOR_KAFKA"


def say(text: str) -> None:
    print(text, flush=True)


async def run_dev(options: DevOptions, stop: asyncio.Event) -> None:
    """Start everything, deploy the workspace, serve until `stop`, then stop everything."""
    try:
        with _environment(_workspace_environment(options)):
            workspace = load_workspace(options.workspace)
    except InvalidSource as exc:
        say(f"the workspace {options.workspace} is invalid:\n{exc}")
        sys.exit(1)
    if busy := _ports_in_use(options):
        flag, port = busy[0]
        say(f"port {port} is in use (another `make run`?): stop what holds it, or pass "
            f"{flag} with a free port (make run ARGS=\"{flag} ...\")")  # fmt: skip
        sys.exit(1)
    state = options.state_dir.resolve()
    postgres = EmbeddedPostgres(state / "postgres", port=options.postgres_port)
    temporal = TemporalDevServer(
        state_dir=state / "temporal", port=options.temporal_port, ui_port=options.ui_port
    )
    kafka = workspace.config.kafka
    broker = LocalBroker(port=options.kafka_port, log_dir=state / "kafka") if kafka else None
    say(f"starting PostgreSQL and Temporal{' and Kafka' if broker else ''} (state in {state}) ...")
    try:
        temporal.start()
        if broker is not None:
            broker.start()
        database_url = await asyncio.to_thread(postgres.start)
        await migrate(database_url)
        await temporal.wait_ready()
        engine = create_engine(database_url)
        try:
            try:
                deployed = await deploy_workspace(engine, workspace)
            except InvalidSource as exc:
                say(f"not deploying: the journeys are invalid:\n{exc}")
                return
            catalog = options.workspace / CATALOG_FILE
            if catalog.exists():
                loaded = await load_items(engine, read_items(catalog))
                say(f"loaded {loaded} catalogue items from {CATALOG_FILE}")
            settings = Settings(
                database_url=database_url,
                temporal_address=temporal.address,
                workspace=options.workspace,
                api_port=options.api_port,
            )
            runtime = runtime_with_metrics("127.0.0.1", options.temporal_metrics_port)
            client = await connect(
                temporal.address, tracing=tracing_enabled(settings), runtime=runtime
            )
            services = build_services(settings, workspace=workspace, engine=engine, client=client)
            consuming = await _start_kafka(broker, kafka, services, stop)
            async with (
                serving(create_app(services), port=options.api_port) as api_url,
                serving(create_sink(workspace.config, receipts_to=api_url),
                        port=options.sink_port) as sink_url,
                running_worker(client, workspace=workspace, engine=engine,
                               task_queue=settings.task_queue, upkeep=True),
            ):  # fmt: skip
                # A backend's key: an identify with an email address is a server's to send.
                sources = workspace.config.sources
                key = next((s for s in sources if s.server_side), sources[0]).write_key
                keys = workspace.config.api_keys  # the narrowest key that opens the reports
                reader = next((k for k in keys if k.scopes == ["reports:read"]), None) or next(
                    (k for k in keys if k.allows("reports:read")), None
                )
                _banner(api_url, temporal, sink_url, database_url, key,
                        reader.secret if reader else None,
                        options.temporal_metrics_port)  # fmt: skip
                for item in deployed:
                    say(f"  journey {item.key:<24} v{item.version:<3} {item.change}")
                if consuming is not None:
                    say(consuming[1])
                say("\nready; Ctrl-C stops everything\n")
                await stop.wait()
                say("\nstopping ...")
                if consuming is not None:
                    await consuming[0]
        finally:
            await engine.dispose()
    finally:
        if broker is not None:
            await asyncio.to_thread(broker.stop)
        await asyncio.to_thread(temporal.stop)
        await asyncio.to_thread(postgres.stop)
        say("stopped")


async def _start_kafka(
    broker: LocalBroker | None,
    kafka: KafkaConfig | None,
    services: Services,
    stop: asyncio.Event,
) -> tuple[asyncio.Task[None], str] | None:
    """With `kafka` configured: the local broker's topics, the consumer and the relay
    until `stop` (and the banner's line about them)."""
    if broker is None or kafka is None:
        return None
    await broker.wait_ready()
    work, said = [], []
    if kafka.consume is not None:
        topics = {topic: 4 for topic in kafka.consume.topics}
        dead = kafka.consume.dead_letter_topic
        await ensure_topics(kafka.client_options(), {**topics, dead: 1})
        work.append(EventConsumer(services, kafka, shared=True).run(stop))
        said.append(f"consuming {', '.join(topics)}; set aside: {dead}")
    if kafka.publish is not None:
        await ensure_topics(kafka.client_options(), {kafka.publish.topic: 4})
        work.append(Relay(services.engine, KafkaSink(kafka)).run(stop))
        said.append(f"publishing facts to {kafka.publish.topic}")
    line = f"  Kafka          {kafka.bootstrap_servers}  ({'; '.join(said)})"
    return asyncio.create_task(_all(work)), line


async def _all(work: list[Coroutine[Any, Any, None]]) -> None:
    await asyncio.gather(*work)


def _workspace_environment(options: DevOptions) -> dict[str, str]:
    """The variables orchestrator.yaml sees: our sink's URL, and the API's as the public
    URL unless the caller set one (a tunnel, say)."""
    return {
        SINK_URL: f"http://127.0.0.1:{options.sink_port}",
        PUBLIC_URL: os.environ.get(PUBLIC_URL) or f"http://127.0.0.1:{options.api_port}",
        KAFKA: f"127.0.0.1:{options.kafka_port}",
    }


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set `values` in os.environ for the block only (the workspace is loaded once, at
    start), so they do not reach the servers we start or outlive `run_dev`."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _ports_in_use(options: DevOptions) -> list[tuple[str, int]]:
    """The ports we were given that something on 127.0.0.1 already listens on."""
    wanted = [("--api-port", options.api_port), ("--temporal-port", options.temporal_port),
              ("--ui-port", options.ui_port), ("--sink-port", options.sink_port),
              ("--postgres-port", options.postgres_port),
              ("--kafka-port", options.kafka_port),
              ("--temporal-metrics-port", options.temporal_metrics_port)]  # fmt: skip
    busy = []
    for flag, port in wanted:
        if not port:
            continue
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                busy.append((flag, port))
    return busy


def _banner(
    api_url: str,
    temporal: TemporalDevServer,
    sink_url: str,
    database_url: str,
    write_key: str,
    report_key: str | None,
    sdk_metrics_port: int = 0,
) -> None:
    namespace_ui = f"{temporal.ui_url}/namespaces/default/workflows"
    reports = f"  (password {report_key}, any user name)" if report_key else ""
    sdk = f"http://127.0.0.1:{sdk_metrics_port}/metrics" if sdk_metrics_port else "off"
    say(
        "\n"
        f"  API            {api_url}\n"
        f"  OpenAPI docs   {api_url}/docs\n"
        f"  Reports        {api_url}/reports/{reports}\n"
        f"  Metrics        {api_url}/metrics  (API and worker: one process here)\n"
        f"  SDK metrics    {sdk}  (the Temporal SDK's own)\n"
        f"  Temporal UI    {namespace_ui}\n"
        f"  Temporal gRPC  {temporal.address}\n"
        f"  Webhook sink   {sink_url}  (messages are printed below)\n"
        f"  Postgres       {database_url.replace('+asyncpg', '')}\n"
        "\n"
        "  try (see README.md):\n"
        f"    curl -u {write_key}: {api_url}/v1/identify -H 'content-type: application/json' \\\n"
        """      -d '{"userId": "ada", "traits": {"email": "ada@example.com"}}'\n"""
        f"    curl -u {write_key}: {api_url}/v1/track -H 'content-type: application/json' \\\n"
        """      -d '{"userId": "ada", "event": "Signed Up"}'\n"""
    )
