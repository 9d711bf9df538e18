"""Previews on past traffic agree with what the real stack did with the same events:
the stack runs a journey on Temporal and Postgres, then the preview replays the stored
events through the same journey file and the deployed version, and the counts match."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.journey_tests.harness import workspace_catalog
from orchestrator.preview import Counts, Period, candidate, deployed_version, preview, table
from orchestrator.workspace import load_workspace
from tests.conftest import EXAMPLE, StackFactory
from tests.support.db import rows
from tests.support.receiver import Receiver
from tests.support.workspace import REACH_EVERYONE
from workflows.assignment import in_holdout

JOURNEY = """
journey: agree
name: Agree
trigger: {event: Cart Abandoned, when: "event.properties.value >= 10"}
holdout: 20
exit_on: [Unsubscribed]
goal: {event: Order Completed, within: 7d}
start: listen
steps:
  listen:
    wait_for: {event: Order Completed, timeout: 1h, on_event: done, on_timeout: remind}
  remind:
    send: {channels: [email, push], template: hello}
    next: later
  later:
    wait: 1d
    next: again
  again:
    send: {channel: email, template: hello}
    next: done
  done:
    exit: {}
"""

POLICY = REACH_EVERYONE + (
    "caps:\n  - {name: one_email_a_week, max: 1, window: 7d, channel: email}\n"
    "conflicts: {windows: {promotional: 0, service: 0, transactional: 0}}\n"
)


async def test_a_preview_counts_what_the_real_stack_did(
    make_stack: StackFactory, receiver: Receiver, engine: AsyncEngine
) -> None:
    stack = await make_stack({"agree": JOURNEY}, policy=POLICY)
    since = datetime.now(UTC) - timedelta(seconds=1)
    users = [f"u{n}" for n in range(24)]
    for n, user in enumerate(users):
        await stack.identify(user, {"email": f"{user}@example.com"})
        await stack.track(user, "Cart Abandoned", {"value": 5 if n % 6 == 0 else 20 + n})
        # (held-out users who buy convert too: that is how a holdout measures lift)
        if n % 4 == 1 or in_holdout("agree", user, 20):
            await stack.track(user, "Order Completed", {"revenue": 30})
        elif n % 7 == 3:
            await stack.track(user, "Unsubscribed")
    entered = await rows(engine, "SELECT user_id, status FROM enrollments")
    for row in entered:
        if row["status"] != "holdout":
            await stack.result("agree", row["user_id"])
    until = datetime.now(UTC) + timedelta(seconds=1)

    real = Counts("real")
    real.entered = len(entered)
    real.held_out = sum(1 for r in entered if r["status"] == "holdout")
    real.converted = len(
        await rows(engine, "SELECT 1 FROM enrollments WHERE converted_at IS NOT NULL")
    )
    real.steps = Counter(
        r["step"]
        for r in await rows(engine, "SELECT DISTINCT enrollment_id, step FROM enrollment_steps")
    )
    real_messages = Counter(
        r["channel"]
        for r in await rows(engine, "SELECT channel FROM messages WHERE status = 'sent'")
    )
    suppressed = await rows(
        engine, "SELECT reason FROM arbitration_decisions WHERE action = 'suppress'"
    )
    assert real.entered > real.held_out > 0  # the run covers entries, holdouts...
    held_converted = await rows(
        engine, "SELECT 1 FROM enrollments WHERE status = 'holdout' AND converted_at IS NOT NULL"
    )
    assert held_converted  # ...held-out users converting...
    assert real.converted > 0
    assert suppressed
    assert real_messages["email"] > 0

    workspace = load_workspace(stack.workspace)
    journey = candidate(stack.workspace / "journeys" / "agree.yaml", workspace)
    async with engine.connect() as conn:
        deployed = await deployed_version(conn, "agree")
        assert deployed is not None
        versions = [("this file", journey), (f"deployed v{deployed.version}", deployed)]
        period = Period(since, until, run_on=timedelta(days=3))
        counts = await preview(conn, workspace, versions, period, workspace_catalog(workspace))
    for replayed in counts:
        assert (replayed.entered, replayed.held_out, replayed.converted) == (
            real.entered,
            real.held_out,
            real.converted,
        )
        assert replayed.steps == real.steps
        assert Counter({c: n for (_, c), n in replayed.messages.items()}) == real_messages
        assert sum(replayed.suppressed.values()) == len(suppressed)
        assert set(replayed.suppressed) == {"channel email: cap one_email_a_week reached"}
        assert not any(k.startswith("still inside") for k in replayed.outcomes)
    lines = table(counts)
    assert lines[0].split() == ["this", "file", "deployed", "v1"]
    assert f"entered{real.entered:>16}{real.entered:>16}".replace(" ", "") in [
        line.replace(" ", "") for line in lines
    ]
    # and the preview changed nothing
    assert len(await rows(engine, "SELECT 1 FROM enrollments")) == len(entered)


def test_preview_needs_a_valid_journey_file(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    shutil.copytree(EXAMPLE, root)
    broken = root / "journeys" / "cart_abandonment.yaml"
    broken.write_text(broken.read_text().replace("timeout: 1h", "timeout: soon"))
    run = subprocess.run(
        [str(Path(sys.executable).parent / "orchestrator"), "journeys", "preview",
         "journeys/cart_abandonment.yaml", "--since", "7d"],
        capture_output=True, text=True, cwd=root, timeout=120, check=False,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql+asyncpg://127.0.0.1:9/none"},
    )  # fmt: skip
    assert run.returncode == 1
    assert "journeys/cart_abandonment.yaml:" in run.stdout
    assert "'soon' is not a duration" in run.stdout


async def test_a_preview_knows_who_entered_before_its_period(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"agree": JOURNEY}, policy=POLICY)
    users = [u for u in ("a1", "a2", "a3", "a4") if not in_holdout("agree", u, 20)]
    for user in users:
        await stack.track(user, "Cart Abandoned", {"value": 50})
    since = datetime.now(UTC)
    for user in users:  # `re_entry: never`: the router lets none of them in again
        await stack.track(user, "Cart Abandoned", {"value": 50})
    entered = await rows(engine, "SELECT 1 FROM enrollments")
    assert len(entered) == len(users)
    workspace = load_workspace(stack.workspace)
    journey = candidate(stack.workspace / "journeys" / "agree.yaml", workspace)
    async with engine.connect() as conn:
        period = Period(since, datetime.now(UTC) + timedelta(seconds=1))
        [counts] = await preview(conn, workspace, [("file", journey)], period, [])
    assert counts.entered == 0
