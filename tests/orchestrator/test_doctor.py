"""`orchestrator doctor` on the real stack: all green, then each broken thing named."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from alembic import command
from alembic.script import ScriptDirectory
from google.protobuf.duration_pb2 import Duration
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.database import alembic_config, migrate
from orchestrator.doctor.diagnosis import diagnose
from orchestrator.doctor.report import Finding
from orchestrator.doctor.temporal import check_workers
from orchestrator.settings import Settings
from orchestrator.stack.processes import free_port
from orchestrator.worker import running_worker
from orchestrator.workspace import load_workspace
from tests.support.receiver import Receiver
from tests.support.stack import eventually
from tests.support.workspace import SECRETS, write_workspace
from tests.workflows.test_delivery import ONE_SEND
from workflows import search

runner = CliRunner()
SCRIPT = ScriptDirectory.from_config(alembic_config("postgresql://unused"))
HEAD = SCRIPT.get_current_head()
BEFORE_HEAD = SCRIPT.get_revision(HEAD).down_revision


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


def not_ok(findings: list[Finding]) -> dict[str, tuple[str, str]]:
    return {f.check: (f.status, f.message) for f in findings if f.status != "ok"}


@pytest.fixture
def workspace(tmp_path: Path, receiver: Receiver) -> Path:
    """A test workspace with signing secrets of its own (the tests' usual ones are the
    example's, which the doctor rightly warns about)."""
    root = write_workspace(tmp_path / "ws", receiver_url=receiver.url, journeys={"once": ONE_SEND})
    config = root / "orchestrator.yaml"
    text = config.read_text()
    for secret in SECRETS.values():
        text = text.replace(secret, "whsec_" + base64.b64encode(os.urandom(32)).decode())
    config.write_text(text)
    return root


@pytest.fixture
def settings(workspace: Path, postgres_url: str, dev_server: WorkflowEnvironment) -> Settings:
    return Settings(
        database_url=postgres_url,
        temporal_address=dev_server.client.service_client.config.target_host,
        workspace=workspace,
        task_queue=f"doctor-{uuid.uuid4().hex[:8]}",
    )


@asynccontextmanager
async def polled(
    settings: Settings, dev_server: WorkflowEnvironment, engine: AsyncEngine
) -> AsyncIterator[None]:
    """A worker polls the settings' task queues (and Temporal has seen it poll)."""
    async with running_worker(
        dev_server.client,
        workspace=load_workspace(settings.workspace),
        engine=engine,
        task_queue=settings.task_queue,
    ):

        async def seen() -> bool:
            found = await check_workers(dev_server.client, settings, timeout=3)
            return found.status == "ok"

        await eventually(seen, timeout=30)
        yield


def environment(settings: Settings) -> dict[str, str]:
    return {
        "ORCHESTRATOR_DATABASE_URL": settings.database_url or "",
        "ORCHESTRATOR_TEMPORAL_ADDRESS": settings.temporal_address,
        "ORCHESTRATOR_WORKSPACE": str(settings.workspace),
        "ORCHESTRATOR_TASK_QUEUE": settings.task_queue,
    }


async def test_a_healthy_deployment_is_all_green(
    settings: Settings, dev_server: WorkflowEnvironment, engine: AsyncEngine
) -> None:
    async with polled(settings, dev_server, engine):
        result = await asyncio.to_thread(
            runner.invoke, app, ["doctor", "--json"], env=environment(settings)
        )
        text = await asyncio.to_thread(runner.invoke, app, ["doctor"], env=environment(settings))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    statuses = {c["check"]: c["status"] for c in report["checks"]}
    assert statuses == {
        "settings": "ok", "workspace": "ok", "secrets": "ok", "database": "ok",
        "migrations": "ok", "connections": "ok", "temporal": "ok", "namespace": "ok",
        "search attributes": "ok", "workers": "ok", "channel email": "ok",
        "channel push": "ok", "channel in_app": "ok", "kafka": "ok", "ranking": "ok",
    }  # fmt: skip
    found = {c["check"]: c["message"] for c in report["checks"]}
    assert found["migrations"].startswith(f"schema at head ({HEAD}:")
    assert found["search attributes"] == "all 6 registered in 'default'"
    assert "1 journey(s) and 1 template(s) valid" in found["workspace"]
    # The terminal form: a line per check and a verdict; the password never shows.
    lines = text.stdout.splitlines()
    assert text.exit_code == 0
    assert len(lines) == len(statuses) + 1
    assert lines[-1] == "no problems, 0 warning(s)"
    assert all(line.startswith("ok    ") for line in lines[:-1])
    assert found["database"].startswith(f"{settings.database_url} answers (PostgreSQL ")


@asynccontextmanager
async def database_one_migration_behind(postgres_url: str) -> AsyncIterator[str]:
    """A database of its own (on the test server), migrated, then downgraded one step."""
    name = f"doctor_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres_url.replace("+asyncpg", ""))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = f"{postgres_url.rsplit('/', 1)[0]}/{name}"
        try:
            await migrate(url)
            await asyncio.to_thread(command.downgrade, alembic_config(url), "-1")
            yield url
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_a_database_behind_its_migrations(settings: Settings, postgres_url: str) -> None:
    async with database_one_migration_behind(postgres_url) as url:
        findings = by_check(await diagnose(settings.model_copy(update={"database_url": url})))
    migrations = findings["migrations"]
    assert migrations.status == "fail"
    assert migrations.message == f"schema at {BEFORE_HEAD}, 1 migration(s) behind head {HEAD}"
    assert migrations.fix.startswith("run `orchestrator migrate`")
    assert findings["database"].status == "ok"


async def test_a_database_that_does_not_answer(settings: Settings) -> None:
    closed = f"postgresql://orchestrator:hunter2@127.0.0.1:{free_port()}/orchestrator"
    findings = await diagnose(settings.model_copy(update={"database_url": closed}), timeout=1)
    database = by_check(findings)["database"]
    assert database.status == "fail"
    assert "connection refused" in database.message
    assert "hunter2" not in database.message
    assert "orchestrator:***@127.0.0.1" in database.message
    assert {f.check: f.status for f in findings if f.check in ("migrations", "connections")} == {
        "migrations": "skip", "connections": "skip"
    }  # fmt: skip


async def _fresh_namespace(env: WorkflowEnvironment) -> str:
    namespace = f"doctor-{uuid.uuid4().hex[:8]}"
    await env.client.workflow_service.register_namespace(
        RegisterNamespaceRequest(
            namespace=namespace, workflow_execution_retention_period=Duration(seconds=86400)
        )
    )
    return namespace


async def test_search_attributes_missing_from_a_namespace(
    settings: Settings, dev_server: WorkflowEnvironment
) -> None:
    namespace = await _fresh_namespace(dev_server)
    findings = by_check(await diagnose(settings.model_copy(update={
        "temporal_namespace": namespace})))  # fmt: skip
    missing = findings["search attributes"]
    assert missing.status == "fail"
    assert missing.message.startswith(
        "JourneyKey, JourneyVersion, UserId, JourneyStep, JourneyStatus, JourneyInstance "
        f"not registered in namespace '{namespace}'"
    )
    assert missing.fix == "run `orchestrator register-search-attributes`"
    assert findings["namespace"].status == "ok"

    # All but one registered: the doctor names the one.
    request = AddSearchAttributesRequest(
        namespace=namespace,
        search_attributes={
            key.name: IndexedValueType.ValueType(key.indexed_value_type.value)
            for key in search.ALL
            if key.name != "JourneyStep"
        },
    )

    async def registered() -> bool:
        try:
            await dev_server.client.operator_service.add_search_attributes(request)
        except RPCError:  # a namespace just made may take a moment to be known everywhere
            return False
        return True

    await eventually(registered, timeout=30)
    findings = by_check(await diagnose(settings.model_copy(update={
        "temporal_namespace": namespace})))  # fmt: skip
    assert findings["search attributes"].message.startswith(
        f"JourneyStep not registered in namespace '{namespace}'"
    )


async def test_a_namespace_that_does_not_exist_and_a_temporal_that_does_not_answer(
    settings: Settings,
) -> None:
    findings = by_check(await diagnose(settings.model_copy(update={
        "temporal_namespace": "nowhere"})))  # fmt: skip
    assert findings["namespace"].status == "fail"
    assert findings["namespace"].message.startswith("namespace 'nowhere' does not exist")
    assert findings["search attributes"].status == "skip"

    address = f"127.0.0.1:{free_port()}"
    findings = by_check(
        await diagnose(settings.model_copy(update={"temporal_address": address}), timeout=1)
    )
    assert findings["temporal"].status == "fail"
    assert findings["temporal"].message == (
        f"cannot reach the Temporal frontend at {address}: connection refused"
    )
    assert [findings[n].status for n in ("namespace", "search attributes", "workers")] == [
        "skip", "skip", "skip"
    ]  # fmt: skip


async def test_a_channel_pointing_at_a_closed_port_is_a_warning_with_its_url(
    tmp_path: Path, settings: Settings, dev_server: WorkflowEnvironment, engine: AsyncEngine
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    root = write_workspace(tmp_path / "closed", receiver_url=closed, journeys={"once": ONE_SEND})
    moved = settings.model_copy(update={"workspace": root})
    async with polled(moved, dev_server, engine):
        result = await asyncio.to_thread(runner.invoke, app, ["doctor"], env=environment(moved))
    assert result.exit_code == 0, result.output  # a warning, not a failure
    [email] = [line for line in result.stdout.splitlines() if "channel email" in line]
    assert email.startswith("WARN  channel email")
    assert f"{closed}/email is unreachable: connection refused" in email
    # the three channels, and the tests' secrets, which are the example's
    assert result.stdout.splitlines()[-1] == "no problems, 4 warning(s)"


async def test_secrets_unset_placeholder_or_published(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    monkeypatch.delenv("DOCTOR_BACKEND_KEY", raising=False)
    credentials = """
    api_keys:
      - name: backend
        secret: ${DOCTOR_BACKEND_KEY}
        scopes: [admin]
    """
    root = write_workspace(tmp_path / "unset", receiver_url=receiver.url,
                           journeys={"once": ONE_SEND}, credentials=credentials)  # fmt: skip
    findings = by_check(await diagnose(settings.model_copy(update={"workspace": root})))
    secrets = findings["secrets"]
    assert secrets.status == "fail"
    assert secrets.message.endswith(
        "come from unset environment variables: "
        "orchestrator.yaml:30:13: api_keys.0.secret: ${DOCTOR_BACKEND_KEY} is not set"
    )
    assert findings["workspace"].status == "fail"  # it cannot load either

    monkeypatch.setenv("DOCTOR_BACKEND_KEY", "changeme-changeme-changeme")
    findings = by_check(await diagnose(settings.model_copy(update={"workspace": root})))
    assert findings["secrets"].status == "fail"
    assert findings["secrets"].message == (
        "api_keys.backend.secret look like placeholders, not secrets"
    )
    assert findings["workspace"].status == "ok"


async def test_production_refuses_the_examples_published_secrets(
    settings: Settings, example: Path
) -> None:
    production = Settings(
        environment="production",
        database_url=settings.database_url,
        temporal_address=settings.temporal_address,
        workspace=example,
    )
    findings = by_check(await diagnose(production, timeout=1))
    assert findings["secrets"].status == "fail"
    assert findings["secrets"].message.startswith(
        "api_keys.crm_backend.secret, api_keys.marketing.secret, api_keys.ops.secret, "
    )
    assert "are the example's published secrets" in findings["secrets"].message
    # The example's model is built in, and nothing was trained.
    assert findings["ranking"].status == "warn"
    assert "no version is active" in findings["ranking"].message


async def test_a_journey_problem_is_named_at_its_position(
    settings: Settings, tmp_path: Path, receiver: Receiver
) -> None:
    journey = ONE_SEND.replace("template: hello", "template: helo")
    root = write_workspace(tmp_path / "typo", receiver_url=receiver.url,
                           journeys={"once": journey})  # fmt: skip
    findings = by_check(await diagnose(settings.model_copy(update={"workspace": root})))
    assert findings["workspace"].status == "fail"
    assert findings["workspace"].message == (
        f"{root}: 1 problem(s), the first journeys/once.yaml:7:38: "
        "steps.hello.send.template: unknown template 'helo' (known: hello)"
    )
    assert findings["secrets"].status == "warn"  # the tests' secrets are the example's
    assert findings["channel email"].status == "ok"


def test_bad_settings_are_named_and_nothing_else_is_tried(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["doctor"],
        env={"ORCHESTRATOR_ENVIRONMENT": "prod", "ORCHESTRATOR_API_PORT": "eighty"},
    )  # fmt: skip
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "FAIL  settings   ORCHESTRATOR_* do not parse: ORCHESTRATOR_ENVIRONMENT: Input "
        "should be 'development' or 'production' (and 1 more): correct the variables "
        "named (see README, Production)"
    )
    assert lines[1].strip().startswith("ORCHESTRATOR_API_PORT: Input should be a valid integer")
    assert [line.split()[0] for line in lines[2:-1]] == ["skip"] * 4
    assert lines[-1] == "1 problem(s), 0 warning(s): fix the FAIL lines first"

    # read by the processes, not by the settings: the doctor checks it as they would
    xml = runner.invoke(app, ["doctor"], env={"ORCHESTRATOR_LOG_FORMAT": "xml"})
    assert xml.exit_code == 1
    assert xml.stdout.splitlines()[0] == (
        "FAIL  settings   ORCHESTRATOR_LOG_FORMAT must be text or json, not 'xml': set it to "
        "text or json (see README, Production)"
    )

    as_json = runner.invoke(app, ["doctor", "--json"], env={"ORCHESTRATOR_DB_POOL_SIZE": "x"})
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert report["checks"][0]["message"].startswith(
        "ORCHESTRATOR_* do not parse: ORCHESTRATOR_DB_POOL_SIZE: Input should be a valid integer"
    )


async def test_kafka_that_does_not_answer(
    settings: Settings, tmp_path: Path, receiver: Receiver
) -> None:
    port = free_port()
    kafka = f"kafka:\n  bootstrap_servers: 127.0.0.1:{port}\n  publish: {{topic: facts}}\n"
    root = write_workspace(tmp_path / "kafka", receiver_url=receiver.url,
                           journeys={"once": ONE_SEND}, config=kafka)  # fmt: skip
    findings = by_check(await diagnose(settings.model_copy(update={"workspace": root}), timeout=1))
    assert findings["kafka"].status == "fail"
    assert findings["kafka"].message.startswith(f"cannot reach 127.0.0.1:{port}: ")


async def test_kafka_that_answers_names_the_topics_it_lacks(
    settings: Settings, tmp_path: Path, receiver: Receiver, kafka_broker: str
) -> None:
    topic = f"doctor-facts-{uuid.uuid4().hex[:8]}"
    kafka = f"kafka:\n  bootstrap_servers: {kafka_broker}\n  publish: {{topic: {topic}}}\n"
    root = write_workspace(tmp_path / "kafka", receiver_url=receiver.url,
                           journeys={"once": ONE_SEND}, config=kafka)  # fmt: skip
    moved = settings.model_copy(update={"workspace": root})
    findings = by_check(await diagnose(moved))
    assert findings["kafka"].status == "warn"
    assert findings["kafka"].message == f"{kafka_broker} answers but has no topic {topic}"

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    findings = by_check(await diagnose(moved))
    assert findings["kafka"].status == "ok"
    assert findings["kafka"].message == f"{kafka_broker} answers; topics {topic} present"


async def test_no_worker_polling_is_a_warning(settings: Settings) -> None:
    findings = by_check(await diagnose(settings))
    workers = findings["workers"]
    assert workers.status == "warn"
    assert workers.message == (
        f"no worker has polled task queue '{settings.task_queue}' lately: journeys stand still"
    )
    assert not [f for f in findings.values() if f.status == "fail"]


def test_a_workspace_that_is_not_there(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = runner.invoke(
        app, ["doctor"],
        env={"ORCHESTRATOR_WORKSPACE": str(missing),
             "ORCHESTRATOR_DATABASE_URL": f"postgresql://x@127.0.0.1:{free_port()}/x",
             "ORCHESTRATOR_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"},
    )  # fmt: skip
    assert result.exit_code == 1
    [line] = [x for x in result.stdout.splitlines() if x.startswith("FAIL  workspace")]
    assert line.startswith(f"FAIL  workspace          {missing}/orchestrator.yaml does not exist")
