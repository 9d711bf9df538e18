"""`orchestrator users erase|status|restore|export`: the API's user-data calls, from a shell.

They act as the person running them (`cli` and the operating-system user in the audit
log), on the database and Temporal the settings name (see `cli_settings`).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.access import audit
from orchestrator.users import erased, erasure, export
from orchestrator.users.identity import MergedAway, refuse_merged

users_app = typer.Typer(help="A user's data: erase it everywhere, or export it.",
                        no_args_is_help=True)  # fmt: skip
UserArg = Annotated[str, typer.Argument(help="The user id")]
T = TypeVar("T")


def _user(user_id: str) -> str:
    if not 1 <= len(user_id) <= 200:
        typer.echo("USER_ID: must be 1 to 200 characters", err=True)
        raise typer.Exit(2)
    return user_id


@asynccontextmanager
async def _engine() -> AsyncIterator[AsyncEngine]:
    from orchestrator.cli_settings import database_url
    from orchestrator.database import create_engine

    engine = create_engine(database_url(), pool_size=2)
    try:
        yield engine
    finally:
        await engine.dispose()


def _run(work: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(work())  # type: ignore[arg-type]
    except (MergedAway, erasure.Erased) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


@users_app.command("erase")
def erase(
    user_id: UserArg,
    wait: Annotated[bool, typer.Option(help="Wait until it is done and print the counts")] = False,
) -> None:
    """Erase the user everywhere (a durable workflow: it finishes after crashes). Their
    events are dropped from now on, until `users restore`."""
    from orchestrator.cli_settings import settings_with_database
    from orchestrator.temporal import connect

    user_id = _user(user_id)
    settings = settings_with_database()

    async def work() -> dict[str, Any]:
        client = await connect(settings.temporal_address, settings.temporal_namespace)
        async with _engine() as engine:
            hashed = await erasure.request_erasure(
                engine=engine, client=client, erased_ids=erased.ErasedIds(engine),
                user_id=user_id, actor=audit.command_line(), task_queue=settings.task_queue,
                now=datetime.now(UTC),
            )  # fmt: skip
            wid = erasure.workflow_id(hashed)
            if not wait:
                return {"workflow_id": wid, "status": "requested"}
            handle = client.get_workflow_handle(wid, result_type=erasure.ErasureResult)
            result = await handle.result()
            return {"workflow_id": wid, "status": "erased", "temporal_workflows": result.workflows,
                    "counts": result.counts}  # fmt: skip

    typer.echo(json.dumps(_run(work), indent=2))


@users_app.command("status")
def status(user_id: UserArg) -> None:
    """Where the user's erasure is (requested, erasing, erased, restored) and its counts."""
    user_id = _user(user_id)

    async def work() -> dict[str, Any] | None:
        async with _engine() as engine:
            hashed = await erased.ErasedIds(engine).hash(user_id)
            async with engine.connect() as conn:
                return await erasure.status(conn, hashed)

    found = _run(work)
    if found is None:
        typer.echo("no erasure was requested for this user", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(found, indent=2, default=str))


@users_app.command("restore")
def restore(
    user_id: UserArg,
    consent: Annotated[
        str,
        typer.Option(
            help="Where the new explicit consent is recorded (a ticket, a form's "
            "reference); kept in the audit log"
        ),
    ],
) -> None:
    """After a new explicit consent: the user's ids leave the suppression list, so their
    events are stored again. Nothing erased comes back."""
    user_id = _user(user_id)
    if not 1 <= len(consent.strip()) <= 500:
        typer.echo("--consent: must be 1 to 500 characters", err=True)
        raise typer.Exit(2)

    async def work() -> None:
        async with _engine() as engine:
            hashed = await erased.ErasedIds(engine).hash(user_id)
            now = datetime.now(UTC)
            async with engine.begin() as conn:
                await erased.restore(conn, erasure=hashed, now=now)
                await audit.record(conn, audit.command_line(), "user.restore",
                                   subject=erased.subject(hashed),
                                   details={"consent": consent}, now=now)  # fmt: skip

    try:
        _run(work)
    except erased.NotRestorable as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo("restored: the user's events are stored again")


@users_app.command("export")
def export_user(
    user_id: UserArg,
    output: Annotated[
        Path | None, typer.Option(help="Write the JSON document here (default: stdout)")
    ] = None,
) -> None:
    """Everything held about the user, as one JSON document (written as it is read)."""
    user_id = _user(user_id)
    if output is not None and not output.parent.is_dir():
        typer.echo(f"--output: {output.parent} is not a directory", err=True)
        raise typer.Exit(2)

    async def work() -> None:
        async with _engine() as engine:
            now = datetime.now(UTC)
            async with engine.begin() as conn:
                await refuse_merged(conn, user_id)
                await erasure.refuse_erased(conn, erased.ErasedIds(engine), user_id)
                await audit.record(conn, audit.command_line(), "user.export",
                                   subject=user_id, now=now)  # fmt: skip
            partial = output.with_name(output.name + ".partial") if output else None
            sink = partial.open("wb") if partial else sys.stdout.buffer
            try:
                async for piece in export.stream(engine, user_id, now=now):
                    sink.write(piece)
                sink.flush()
            finally:
                if partial is not None:
                    sink.close()
            if partial is not None and output is not None:
                partial.replace(output)  # a document appears whole or not at all

    _run(work)
    if output is not None:
        typer.echo(f"wrote {output}", err=True)
