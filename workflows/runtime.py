"""What the journey interpreter needs from its runtime: the parts of `temporalio.workflow`
it calls, so that the same interpreter runs in a Temporal workflow (the module itself)
and in a preview's simulation (`orchestrator.preview`), on virtual time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol


class WorkflowApi(Protocol):
    now: Callable[..., datetime]
    patched: Callable[..., bool]
    execute_activity: Callable[..., Any]
    execute_local_activity: Callable[..., Any]
    wait_condition: Callable[..., Any]
    upsert_search_attributes: Callable[..., None]
    set_current_details: Callable[..., None]
    continue_as_new: Callable[..., Any]
    all_handlers_finished: Callable[..., bool]
    info: Callable[[], Any]
