"""`retention:` in orchestrator.yaml: defaults, and periods refused at load, at their
position, when a feature reads further back than they keep."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from orchestrator.sources import InvalidSource
from orchestrator.workspace import load_workspace
from tests.support.workspace import write_workspace

CAPS = """
reachability: {email: null, push: null, in_app: null, web: null}
caps:
  - {name: monthly, max: 8, window: 30d}
  - {name: half_year, max: 40, window: 200d}
"""
TRAITS = """
traits:
  orders_last_year:
    count: {event: Order Completed, window: 400d}
  browsed_then_left:
    sequence: {first: Product Viewed, then_not: Order Completed, within: 1d}
"""


def problems(root: Path) -> list[str]:
    with pytest.raises(InvalidSource) as caught:
        load_workspace(root)
    return [str(p) for p in caught.value.problems]


def test_defaults_a_dpo_can_read(tmp_path: Path) -> None:
    config = load_workspace(write_workspace(tmp_path, receiver_url="http://127.0.0.1:1",
                                            journeys={})).config.retention  # fmt: skip
    assert (config.events, config.message_bodies, config.decisions, config.receipts,
            config.assignments, config.every) == (
        timedelta(days=395), timedelta(days=90), timedelta(days=180), timedelta(days=90),
        timedelta(days=395), timedelta(days=1))  # fmt: skip
    assert config.enabled
    assert config.batch == 5000


def test_periods_shorter_than_what_features_read_are_refused_at_their_place(
    tmp_path: Path,
) -> None:
    root = write_workspace(
        tmp_path, receiver_url="http://127.0.0.1:1", journeys={}, policy=CAPS,
        files={"traits.yaml": TRAITS},
        config="retention:\n  events: 395d\n  decisions: 90d\n  receipts: 30d\n",
    )  # fmt: skip
    lines = (root / "orchestrator.yaml").read_text().splitlines()
    events_line = lines.index("  events: 395d") + 1
    decisions_line = lines.index("  decisions: 90d") + 1
    assert problems(root) == [
        f"orchestrator.yaml:{events_line}:11: retention.events: 395d is shorter than 400d, "
        "which trait 'orders_last_year' (traits.yaml) recomputes from stored events over: "
        "keep events at least 400d",
        f"orchestrator.yaml:{decisions_line}:14: retention.decisions: 90d is shorter than "
        "200d, which the policy's longest cap (or dedupe) window counts sends over: keep "
        "decisions at least 200d",
    ]


def test_the_ranking_baseline_window_bounds_events(tmp_path: Path) -> None:
    root = write_workspace(
        tmp_path, receiver_url="http://127.0.0.1:1", journeys={},
        config="ranking:\n  popularity_window: 60d\nretention:\n  events: 45d\n",
    )  # fmt: skip
    [problem] = problems(root)
    assert problem.endswith(
        "retention.events: 45d is shorter than 60d, which ranking.popularity_window reads "
        "purchases back over: keep events at least 60d"
    )


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("events: 2h", "retention.events: 2h is shorter than a day"),
        ("every: 10m", "retention.every: run at most hourly"),
        ("cron: 'every night'", "retention.cron: 'every night' is not a cron"),
        ("receipts: soon", "retention.receipts: 'soon' is not a duration"),
        ("batch: 10", "retention.batch: Input should be greater than or equal to 100"),
        ("keep_forever: true", "retention.keep_forever: unknown key"),
    ],
)
def test_bad_settings_name_their_field(tmp_path: Path, setting: str, message: str) -> None:
    root = write_workspace(tmp_path, receiver_url="http://127.0.0.1:1", journeys={},
                           config=f"retention:\n  {setting}\n")  # fmt: skip
    [problem] = problems(root)
    assert message in problem
    last_line = len((root / "orchestrator.yaml").read_text().splitlines())
    assert problem.startswith(f"orchestrator.yaml:{last_line}:")
