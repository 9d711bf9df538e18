"""`orchestrator doctor`: check a deployment and say what is wrong, a line per check."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="As one JSON document")] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds each network check waits for an answer", min=0.1)
    ] = 3.0,
) -> None:
    """Check the deployment the ORCHESTRATOR_* variables describe: settings, the
    workspace and its secrets, Postgres and its migrations, Temporal (namespace, search
    attributes, workers), channel and webhook endpoints, Kafka and the ranking model.
    One line per check (ok, WARN or FAIL with what to do); exit 1 if any check fails."""
    from orchestrator.cli_settings import dev_database_url
    from orchestrator.doctor.diagnosis import diagnose, diagnose_settings
    from orchestrator.doctor.report import as_json as document
    from orchestrator.doctor.report import failed, skip, text_lines

    first, settings = diagnose_settings()
    if settings is None:
        rest = ("workspace", "secrets", "database", "temporal")
        findings = [first, *(skip(name, "the settings do not parse") for name in rest)]
    else:
        if not settings.database_url and (url := dev_database_url()) is not None:
            settings = settings.model_copy(update={"database_url": url})
        findings = [first, *asyncio.run(diagnose(settings, timeout=timeout))]
    if as_json:
        typer.echo(json.dumps(document(findings), indent=2))
    else:
        for line in text_lines(findings):
            typer.echo(line)
    if failed(findings):
        raise typer.Exit(1)
