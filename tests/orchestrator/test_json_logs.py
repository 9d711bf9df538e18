"""Logs as JSON lines carrying the ids of the work they are about; text by default."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator.logs.formats import JsonLines, log_format
from orchestrator.logs.ids import bound, journey_of
from tests.conftest import StackFactory
from tests.support.receiver import Receiver, Script
from tests.support.spans import recording_exporter
from tests.support.stack import BIN
from tests.workflows.test_delivery import ONE_SEND


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = recording_exporter()
    yield exporter
    exporter.shutdown()


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the process logs, as `orchestrator worker` writes it with
    ORCHESTRATOR_LOG_FORMAT=json."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield out
    finally:
        root.removeHandler(handler)


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


async def test_a_worker_line_during_a_send_carries_its_ids(
    make_stack: StackFactory,
    receiver: Receiver,
    json_lines: io.StringIO,
    exporter: InMemorySpanExporter,
) -> None:
    receiver.script("/email", Script(503))  # the first attempt fails: the worker says so
    stack = await make_stack({"once": ONE_SEND}, tracing=True)
    await stack.track("ada", "Signed Up")
    assert (await stack.result("once", "ada")).messages_sent == 1
    [failed] = [
        line
        for line in lines(json_lines)
        if line["message"].startswith("send_message failed (attempt 1")
    ]
    [first, _second] = receiver.at("/email")
    assert failed["level"] == "WARNING"
    assert failed["logger"] == "temporalio.activity"
    assert failed["journey_key"] == "once"
    assert failed["user_id"] == "ada"
    assert failed["workflow_id"] == "journey:once:ada"
    assert failed["message_id"] == first.msg_id
    assert failed["activity_type"] == "send_message"
    assert failed["attempt"] == 1
    assert datetime.fromisoformat(failed["time"]).utcoffset() == UTC.utcoffset(None)
    # the trace of that attempt: the webhook it sent is in it
    assert failed["trace_id"] == first.headers["traceparent"].split("-")[1]
    sends = [s for s in exporter.get_finished_spans() if s.name == "RunActivity:send_message"]
    assert any(s.context and format(s.context.span_id, "016x") == failed["span_id"] for s in sends)


def test_bound_ids_and_extras_reach_the_line(json_lines: io.StringIO) -> None:
    log = logging.getLogger("orchestrator.routing")
    with bound(user_id="ada", journey_key="welcome"):
        log.warning("routing events of user %s failed", "ada", extra={"message_id": "m-1"})
        with bound(journey_key="win_back"):
            log.warning("inner")
    log.warning("outside")
    outer, inner, outside = lines(json_lines)
    assert {k: outer[k] for k in ("user_id", "journey_key", "message_id", "message")} == {
        "user_id": "ada",
        "journey_key": "welcome",
        "message_id": "m-1",
        "message": "routing events of user ada failed",
    }
    assert (inner["user_id"], inner["journey_key"]) == ("ada", "win_back")
    assert set(outside) == {"time", "level", "logger", "message"}  # no trace under way


def test_an_exception_is_one_field_of_its_line(json_lines: io.StringIO) -> None:
    try:
        raise ValueError("the profile is too large")
    except ValueError:
        logging.getLogger("orchestrator").exception("updating traits failed")
    [line] = lines(json_lines)
    assert line["exception"].startswith("Traceback (most recent call last)")
    assert line["exception"].endswith("ValueError: the profile is too large")


@pytest.mark.parametrize(
    ("workflow_id", "journey"),
    [
        ("journey:welcome:ada", "welcome"),
        ("journey:cart:user:with:colons:cart%3A1", "cart"),
        ("segments:journeys", None),
        ("journey:", None),
    ],
)
def test_the_journey_of_a_workflow(workflow_id: str, journey: str | None) -> None:
    assert journey_of(workflow_id) == journey


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({}, "text"), ({"ORCHESTRATOR_LOG_FORMAT": "JSON"}, "json"),
     ({"ORCHESTRATOR_LOG_FORMAT": "text"}, "text")],
)  # fmt: skip
def test_the_format_asked_for(environ: dict[str, str], expected: str) -> None:
    assert log_format(environ) == expected


# Logs as the commands do (`_logging`), then a line from our code and uvicorn's own.
SCRIPT = """
import asyncio, logging
from starlette.applications import Starlette
from orchestrator.logs.formats import configure, log_format
from orchestrator.stack.servers import serving

configure("info", log_format())
logging.getLogger("orchestrator.routing").info("routed %d events", 3)

async def serve():
    async with serving(Starlette(), log_level="info"):
        pass

asyncio.run(serve())
"""


def run_script(**environ: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "ORCHESTRATOR_LOG_FORMAT"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env={**env, **environ}, capture_output=True,
        text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stderr


def test_text_stays_the_default() -> None:
    first, *rest = run_script().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(rf"{stamp} INFO orchestrator\.routing routed 3 events", first)
    assert any(line.startswith("INFO:     Uvicorn running on http://127.0.0.1:") for line in rest)


def test_json_lines_cover_uvicorn_too() -> None:
    parsed = [json.loads(line) for line in run_script(ORCHESTRATOR_LOG_FORMAT="json").splitlines()]
    assert parsed[0]["message"] == "routed 3 events"
    assert (parsed[0]["level"], parsed[0]["logger"]) == ("INFO", "orchestrator.routing")
    running = [p for p in parsed if p["message"].startswith("Uvicorn running on")]
    assert [p["logger"] for p in running] == ["uvicorn.error"]
    assert all("color_message" not in p for p in parsed)


def test_a_bad_format_stops_a_command_by_name() -> None:
    done = subprocess.run(
        [str(BIN / "orchestrator"), "worker"],
        env={**os.environ, "ORCHESTRATOR_LOG_FORMAT": "xml",
             "ORCHESTRATOR_DATABASE_URL": "postgresql://127.0.0.1:9/none"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "ORCHESTRATOR_LOG_FORMAT must be text or json, not 'xml'"


def test_a_bad_otlp_endpoint_stops_a_command_by_name() -> None:
    done = subprocess.run(
        [str(BIN / "orchestrator"), "worker"],
        env={**os.environ, "ORCHESTRATOR_OTLP_ENDPOINT": "collector:4318",
             "ORCHESTRATOR_DATABASE_URL": "postgresql://127.0.0.1:9/none"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "ORCHESTRATOR_OTLP_ENDPOINT: an http(s) URL such as http://127.0.0.1:4318, "
        "not 'collector:4318'"
    )
