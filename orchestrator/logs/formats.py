"""How a process logs: text lines (the default) or JSON lines (`ORCHESTRATOR_LOG_FORMAT=json`).

A JSON line is one object: `time` (UTC, ISO 8601), `level`, `logger`, `message`, the
ids bound for the work under way (`journey_key`, `user_id`, `workflow_id`,
`message_id`, `activity_type`, see `ids`) or given in the call's `extra`, Temporal's
(`workflow.logger` and `activity.logger` add them), `trace_id` and `span_id` when a
trace is under way, `exception` with a traceback, and any other `extra`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from opentelemetry import trace
from pythonjsonlogger.orjson import OrjsonFormatter

from orchestrator.logs import ids

LogFormat = Literal["text", "json"]
FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
VARIABLE = "ORCHESTRATOR_LOG_FORMAT"

# What Temporal's loggers attach (`temporal_workflow`, `temporal_activity`): the ids are
# lifted into the line's own fields, as these names.
_TEMPORAL = {
    "workflow_id": "workflow_id",
    "run_id": "run_id",
    "activity_type": "activity_type",
    "workflow_type": "workflow_type",
    "attempt": "attempt",
}


def log_format(environ: Mapping[str, str] = os.environ) -> LogFormat:
    """The format ORCHESTRATOR_LOG_FORMAT asks for; a value other than text or json is
    an error that names the variable."""
    value = environ.get(VARIABLE, "text").strip().lower() or "text"
    if value not in FORMATS:
        raise ValueError(f"{VARIABLE} must be text or json, not {environ[VARIABLE]!r}")
    return "json" if value == "json" else "text"


class JsonLines(OrjsonFormatter):
    """One JSON object per record (python-json-logger, serialised by orjson)."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "exc_info": "exception"},
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["time"] = datetime.fromtimestamp(record.created, UTC).isoformat(
            timespec="milliseconds"
        )
        super().add_fields(log_data, record, message_dict)
        for name in ("temporal_workflow", "temporal_activity"):
            details = log_data.pop(name, None)
            if isinstance(details, Mapping):
                for key, field in _TEMPORAL.items():
                    if details.get(key) is not None:
                        log_data.setdefault(field, details[key])
        for name, value in ids.current().items():
            log_data.setdefault(name, value)  # an explicit `extra` wins
        workflow_id = log_data.get("workflow_id")
        journey = ids.journey_of(workflow_id) if isinstance(workflow_id, str) else None
        if journey and "journey_key" not in log_data:
            log_data["journey_key"] = journey
        context = trace.get_current_span().get_span_context()
        if context.is_valid:  # else those bound, if any (an activity's, after its span)
            log_data["trace_id"] = format(context.trace_id, "032x")
            log_data["span_id"] = format(context.span_id, "016x")
        for name in [k for k in log_data if k.startswith("_") or k == "color_message"]:
            del log_data[name]  # private markers (the SDK's) and uvicorn's coloured copy


def configure(level: str, fmt: LogFormat = "text") -> None:
    """Log to stderr at `level`, in `fmt`: what `orchestrator api`, `worker` and the
    other long-running commands do first."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=fmt == "json")


def json_configured() -> bool:
    """Whether the root logger writes JSON lines (uvicorn is then told not to install
    its own text handlers, so its lines are JSON too)."""
    return any(isinstance(h.formatter, JsonLines) for h in logging.getLogger().handlers)


def uvicorn_log_config() -> dict[str, Any] | None:
    """uvicorn's `log_config`: its own as usual; none with JSON lines, so that its
    loggers reach ours."""
    if json_configured():
        return None
    from uvicorn.config import LOGGING_CONFIG

    return LOGGING_CONFIG
