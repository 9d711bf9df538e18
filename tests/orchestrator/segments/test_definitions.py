"""Bad traits.yaml and segments.yaml, and journeys that misuse segments, are reported at
their positions, and nothing is deployed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.deploy import deploy_workspace
from orchestrator.sources import InvalidSource
from orchestrator.workspace import load_workspace
from tests.support.db import count
from tests.support.workspace import write_workspace

BAD_TRAITS = """
traits:
  orders:
    count: Order Completed
    sum: {event: Order Completed, property: revenue}
  since:
    days_since: {event: Order Completed, window: 30d}
  spent:
    sum: {event: Order Completed}
  trend:
    count: {event: Email Opened, window: 7d, half_life: 3d}
  recent:
    count: {event: Order Completed, window: 3 days}
  shoes:
    count: {event: Product Viewed, where: "user.tier == 'gold'"}
  a:
    expression: "user.b + 1"
  b:
    expression: "user.a + 1"
  id:
    count: Signed Up
  odd:
    sequence: {first: Product Viewed, within: 1d}
  typo:
    cuont: Order Completed
"""
BAD_SEGMENTS = """
segments:
  gold:
    when: "usr.tier == 'gold'"
  Big-Spenders:
    when: user.spent > 100
  empty: {}
"""


def _problems(root: Path) -> list[tuple[str, int, int, str]]:
    with pytest.raises(InvalidSource) as caught:
        load_workspace(root)
    return [(p.file, p.line, p.col, p.message) for p in caught.value.problems]


def test_every_problem_in_traits_and_segments_is_reported_at_its_position(tmp_path: Path) -> None:
    files = {"traits.yaml": BAD_TRAITS, "segments.yaml": BAD_SEGMENTS}
    root = write_workspace(tmp_path, receiver_url="http://127.0.0.1:9", journeys={}, files=files)
    found = _problems(root)
    kinds = (
        "a trait needs exactly one of: count, sum, average, min, max, first_time, "
        "last_time, days_since, distinct_count, most_frequent, sequence, expression"
    )
    expected = [
        ("segments.yaml", 3, 11, "unknown name usr: conditions can use user"),
        ("segments.yaml", 4, 3, "a name is lowercase letters, digits and _, starting with "
         "a letter"),
        ("segments.yaml", 6, 3, "missing required key 'when'"),
        ("traits.yaml", 2, 3, kinds),
        ("traits.yaml", 6, 50, "`days_since` takes no `window`: it reads every event"),
        ("traits.yaml", 8, 5, "`sum` needs the `property` it aggregates"),
        ("traits.yaml", 10, 5, "give `window` or `half_life`, not both"),
        ("traits.yaml", 12, 45, "'3 days' is not a duration: use a number and a unit, like "
         "30m, 2h, 3d, 1w or 1d12h"),
        ("traits.yaml", 14, 43, "unknown name user: conditions can use event"),
        ("traits.yaml", 16, 17, "expressions loop: a -> b -> a"),
        ("traits.yaml", 19, 3, "'id' is the profile's own name"),
        ("traits.yaml", 22, 5, "give either `then` or `then_not`"),
        ("traits.yaml", 24, 5, "unknown key"),
    ]  # fmt: skip
    assert found == expected


SEGMENTS = "segments:\n  lapsed:\n    when: user.days_since_last_order >= 90\n"
TRAITS = "traits:\n  days_since_last_order:\n    days_since: Order Completed\n"
MISUSED = """
journey: misused
name: Misused
trigger: {event: Segment Entered, segment: lost}
exit_on:
  - {event: Order Completed, segment: lapsed}
start: wait
steps:
  wait:
    wait_for: {event: Segment Exited, segment: lapsd, timeout: 1d, on_event: mark,
               on_timeout: mark}
  mark:
    update_profile:
      set: {days_since_last_order: 0}
    next: done
  done:
    exit: {}
"""
BAD_AUDIENCE = """
journey: letters
name: Letters
trigger:
  audience: {segment: lapsed, schedule: {cron: "0 99 * * *"}, entry_rate: fast}
start: done
steps:
  done:
    exit: {}
"""


def test_journeys_name_only_deployed_segments_and_never_set_computed_traits(
    tmp_path: Path,
) -> None:
    root = write_workspace(tmp_path, receiver_url="http://127.0.0.1:9",
                           journeys={"misused": MISUSED},
                           files={"traits.yaml": TRAITS, "segments.yaml": SEGMENTS})  # fmt: skip
    result = CliRunner().invoke(app, ["journeys", "validate", "--workspace", str(root)])
    assert result.exit_code == 1
    lines = [line.split(": ", 1)[1] if ": " in line else line
             for line in result.stdout.strip().splitlines()]  # fmt: skip
    assert lines == [
        "exit_on.0: `segment` goes with event 'Segment Entered' or 'Segment Exited'",
    ]
    misused = (root / "journeys" / "misused.yaml").read_text()
    (root / "journeys" / "misused.yaml").write_text(
        misused.replace("{event: Order Completed, segment: lapsed}", "Order Completed")
    )
    result = CliRunner().invoke(app, ["journeys", "validate", "--workspace", str(root)])
    assert result.exit_code == 1
    assert [line.split("journeys/", 1)[-1] for line in result.stdout.strip().splitlines()] == [
        "misused.yaml:3:44: trigger.segment: unknown segment 'lost' (known: lapsed)",
        "misused.yaml:9:48: steps.wait.wait_for.segment: unknown segment 'lapsd' (known: lapsed)",
        "misused.yaml:13:13: steps.mark.update_profile.set.days_since_last_order: "
        "'days_since_last_order' is a computed trait (traits.yaml): events change it, not journeys",
    ]


def test_an_audience_schedule_and_rate_are_checked(tmp_path: Path) -> None:
    root = write_workspace(tmp_path, receiver_url="http://127.0.0.1:9",
                           journeys={"letters": BAD_AUDIENCE},
                           files={"traits.yaml": TRAITS, "segments.yaml": SEGMENTS})  # fmt: skip
    result = CliRunner().invoke(app, ["journeys", "validate", "--workspace", str(root)])
    assert result.exit_code == 1
    assert [line.split("journeys/", 1)[-1] for line in result.stdout.strip().splitlines()] == [
        "letters.yaml:4:75: trigger.audience.entry_rate: 'fast' is not a rate: "
        "write it like 500/s, 100/m or 1000/h",
    ]
    fixed = BAD_AUDIENCE.replace("entry_rate: fast", "entry_rate: 50/s")
    (root / "journeys" / "letters.yaml").write_text(textwrap.dedent(fixed).lstrip())
    result = CliRunner().invoke(app, ["journeys", "validate", "--workspace", str(root)])
    assert [line.split("journeys/", 1)[-1] for line in result.stdout.strip().splitlines()] == [
        "letters.yaml:4:48: trigger.audience.schedule.cron: '0 99 * * *' is not a cron schedule",
    ]


async def test_invalid_definitions_deploy_nothing(tmp_path: Path, engine: AsyncEngine) -> None:
    root = write_workspace(tmp_path, receiver_url="http://127.0.0.1:9", journeys={},
                           files={"traits.yaml": TRAITS, "segments.yaml": SEGMENTS})  # fmt: skip
    await deploy_workspace(engine, load_workspace(root))
    assert await count(engine, "segment_definitions") == 1
    (root / "segments.yaml").write_text(SEGMENTS.replace(">= 90", ">= ninety days"))
    with pytest.raises(InvalidSource):
        await deploy_workspace(engine, load_workspace(root))
    assert await count(engine, "segment_definitions") == 1
    # Unchanged files deploy no new version.
    (root / "segments.yaml").write_text(SEGMENTS)
    await deploy_workspace(engine, load_workspace(root))
    assert await count(engine, "segment_definitions") == 1
