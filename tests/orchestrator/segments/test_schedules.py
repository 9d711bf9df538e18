"""When audience runs fall due: cron times are wall-clock times in the workspace's zone,
run once even when the clocks go back, and a one-off time runs once it has passed."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from orchestrator.segments.definitions import Definitions
from orchestrator.segments.upkeep import _last_fire
from workflows.spec import Schedule

DAILY = Schedule(cron="30 1 * * *")


@pytest.mark.parametrize(
    ("now", "fired"),
    [
        # London's clocks go back at 02:00 BST on 25 October 2026: 01:30 happens twice,
        # and both times name the same (first) instant, so the run is not repeated.
        ("2026-10-25T00:35:00+00:00", "2026-10-25T01:30:00+01:00"),
        ("2026-10-25T01:35:00+00:00", "2026-10-25T01:30:00+01:00"),
        # Before the day's time: the day before's run.
        ("2026-10-26T01:00:00+00:00", "2026-10-25T01:30:00+01:00"),
        # 01:30 does not exist on 29 March (01:00 GMT -> 02:00 BST): it runs at 01:30 GMT.
        ("2026-03-29T01:40:00+00:00", "2026-03-29T01:30:00+00:00"),
    ],
)
def test_a_daily_cron_fires_once_a_day_in_the_workspace_zone(now: str, fired: str) -> None:
    found = _last_fire(DAILY, datetime.fromisoformat(now), "Europe/London")
    assert found == datetime.fromisoformat(fired)


def test_a_one_off_time_is_local_and_fires_once_passed() -> None:
    once = Schedule.model_validate({"at": "2026-12-01T09:00:00", "timezone": "America/New_York"})
    assert _last_fire(once, datetime.fromisoformat("2026-12-01T13:59:00+00:00"), "UTC") is None
    at = _last_fire(once, datetime.fromisoformat("2026-12-01T14:00:00+00:00"), "UTC")
    assert at == datetime.fromisoformat("2026-12-01T09:00:00-05:00")


def test_expressions_stay_after_what_they_read_when_stored_as_json() -> None:
    # Postgres' jsonb keeps no key order (shorter keys first): `aov` must still come
    # after `revenue`, which it reads.
    stored = json.loads(json.dumps({"traits": {
        "aov": {"expression": "user.revenue / 2 if user.revenue else -1"},
        "revenue": {"sum": {"event": "Order Completed", "property": "revenue"}},
        "rich": {"expression": "user['aov'] > 10"},
    }}))  # fmt: skip
    assert list(Definitions.from_json(stored).traits) == ["revenue", "aov", "rich"]
