"""A retention run on Postgres: what goes, what stays and why, dry runs, and a run that
crashes half-way and is resumed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.retention.config import RetentionConfig
from orchestrator.retention.sweep import Cutoffs, Run, open_run, sweep
from rules.policy import Cap, Policy
from tests.orchestrator.retention.seed import NOW, seed
from tests.support.db import rows

# A year-long cap: a send 300 days ago still counts, past the 180-day decisions period.
# (Loading a workspace refuses decisions kept less long than its caps; the run keeps
# the contact history its policy counts all the same.)
POLICY = Policy(caps=[Cap(name="yearly", max=50, window=timedelta(days=365))])


def cutoffs(*, global_control: bool = True) -> Cutoffs:
    return Cutoffs.at(NOW, config=RetentionConfig(), policy=POLICY, global_control=global_control)


async def run(engine: AsyncEngine, *, dry_run: bool = False, name: str = "run-1",
              batch: int = 1000, **options: bool) -> Run:  # fmt: skip
    found = cutoffs(**options)
    opened = await open_run(engine, workflow_id=name, trigger="cli", dry_run=dry_run,
                            cutoffs=found)  # fmt: skip
    return await sweep(engine, opened, cutoffs=found, batch=batch)


async def keys(engine: AsyncEngine, sql: str) -> list[object]:
    return [next(iter(r.values())) for r in await rows(engine, sql)]


async def test_old_rows_go_and_what_is_still_needed_stays(engine: AsyncEngine) -> None:
    await seed(engine)
    done = await run(engine)

    # events: the unrouted one and a running journey's trigger stay
    assert await keys(engine, "SELECT message_id FROM events ORDER BY id") == [
        "ev-unrouted", "ev-trigger-running", "ev-recent"]  # fmt: skip
    # bodies: blanked past the period unless the journey runs; the rows all stay
    assert await rows(engine, "SELECT id, content, status FROM messages ORDER BY id") == [
        {"id": "m-ended", "content": {}, "status": "sent"},
        {"id": "m-ended-2", "content": {}, "status": "sent"},
        {"id": "m-recent", "content": {"subject": "Hi again"}, "status": "sent"},
        {"id": "m-running", "content": {"subject": "Hi Ada"}, "status": "sent"},
    ]
    # the inbox copy that has not expired stays (with its body: the user still sees it)
    assert await keys(engine, "SELECT message_id FROM user_messages") == ["m-ended-2"]
    assert await keys(engine, "SELECT webhook_id FROM receipts") == ["wh-recent"]
    # decisions: the pending deferral, the send a yearly cap still counts, the running
    # journey's and the recent one stay; the ended journey's request goes with both
    # of its decisions
    assert await keys(engine, "SELECT key FROM arbitration_requests ORDER BY key") == [
        "api-capped", "api-pending", "m-recent", "m-running"]  # fmt: skip
    assert await keys(engine, "SELECT DISTINCT key FROM arbitration_decisions ORDER BY key") == [
        "api-capped", "api-pending", "m-recent", "m-running"]  # fmt: skip
    # assignments: the open experiment's, the running journey's, the global control
    # group's (the workspace keeps one) and the recent one stay
    assert await keys(engine, "SELECT id FROM assignments ORDER BY id") == [2, 3, 4, 5]

    assert done.status == "finished"
    assert done.counts == {
        "message_bodies": {"kept": 1, "blanked": 2},
        "inbox": {"kept": 1, "removed": 1},
        "receipts": {"kept": 0, "removed": 1},
        "decisions": {"kept": 3, "removed": 2, "requests_removed": 1},
        "assignments": {"kept": 3, "removed": 1},
        "events": {"kept": 2, "removed": 2},
    }
    [stored] = await rows(engine, "SELECT status, counts, finished_at FROM retention_runs")
    assert stored["status"] == "finished"
    assert stored["counts"] == done.counts
    assert stored["finished_at"] is not None


async def test_the_global_control_group_ages_out_once_the_workspace_has_none(
    engine: AsyncEngine,
) -> None:
    await seed(engine)
    await run(engine, global_control=False)
    assert await keys(engine, "SELECT id FROM assignments ORDER BY id") == [2, 3, 5]


async def test_a_dry_run_counts_the_same_and_changes_nothing(engine: AsyncEngine) -> None:
    await seed(engine)
    tables = ["events", "messages", "user_messages", "receipts", "arbitration_requests",
              "arbitration_decisions", "assignments"]  # fmt: skip
    before = {t: await rows(engine, f"SELECT * FROM {t} ORDER BY 1, 2") for t in tables}
    dry = await run(engine, dry_run=True, name="dry")
    assert {t: await rows(engine, f"SELECT * FROM {t} ORDER BY 1, 2") for t in tables} == before
    real = await run(engine, name="real")
    assert dry.counts == real.counts
    assert [r["dry_run"] for r in await rows(engine, "SELECT dry_run FROM retention_runs "
                                             "ORDER BY id")] == [True, False]  # fmt: skip


class Crash(Exception):
    pass


async def test_a_run_that_crashed_resumes_where_it_stopped(engine: AsyncEngine) -> None:
    await seed(engine)
    found = cutoffs()
    pages = 0

    def crash_on_the_second_page(_: Run) -> None:
        nonlocal pages
        pages += 1
        if pages == 2:
            raise Crash

    first = await open_run(engine, workflow_id="crashy", trigger="schedule", dry_run=False,
                           cutoffs=found)  # fmt: skip
    with pytest.raises(Crash):
        await sweep(engine, first, cutoffs=found, batch=1, beat=crash_on_the_second_page)
    [half] = await rows(engine, "SELECT status, counts, progress FROM retention_runs")
    assert half["status"] == "running"
    assert half["counts"] == {"message_bodies": {"kept": 0, "blanked": 2}}
    assert half["progress"]["message_bodies"]["key"] == ["m-ended-2"]
    assert not half["progress"]["message_bodies"]["done"]

    again = await open_run(engine, workflow_id="crashy", trigger="schedule", dry_run=False,
                           cutoffs=found)  # fmt: skip
    assert again.id == first.id
    assert again.progress == half["progress"]
    done = await sweep(engine, again, cutoffs=found, batch=1)
    # page by page (a row a page), crash and all, the same as one run in one go
    assert done.counts == {
        "message_bodies": {"kept": 1, "blanked": 2},
        "inbox": {"kept": 1, "removed": 1},
        "receipts": {"kept": 0, "removed": 1},
        "decisions": {"kept": 3, "removed": 2, "requests_removed": 1},
        "assignments": {"kept": 3, "removed": 1},
        "events": {"kept": 2, "removed": 2},
    }
    assert await rows(engine, "SELECT count(*) AS n FROM retention_runs") == [{"n": 1}]
