"""Experiments in bandit mode: Thompson sampling with an exploration floor, sticky users."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.validation import check_files
from orchestrator.workspace import load_workspace
from tests.conftest import StackFactory
from tests.support.db import rows
from tests.support.receiver import Receiver
from tests.support.stack import eventually
from tests.support.workspace import write_workspace
from workflows.assignment import thompson
from workflows.spec import Experiment


def simulate(rates: list[float], users: int, min_share: float, seed: int) -> list[int]:
    """Users arrive one by one; each converts with their variant's true rate."""
    rng = random.Random(seed)
    stats = [[0, 0] for _ in rates]
    chosen = []
    for _ in range(users):
        arm = thompson([(t, w) for t, w in stats], min_share=min_share, rng=rng)
        stats[arm][0] += 1
        stats[arm][1] += rng.random() < rates[arm]
        chosen.append(arm)
    return chosen


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_bandit_shifts_traffic_to_the_better_variant_and_keeps_exploring(seed: int) -> None:
    chosen = simulate([0.04, 0.12], users=4000, min_share=0.1, seed=seed)
    first, last = Counter(chosen[:200]), Counter(chosen[-1000:])
    # early on it explores both; by the end most users get the better variant ...
    assert first[0] > 25
    assert last[1] > 800
    # ... and the worse one still gets about its floor (10% of users)
    assert 70 <= last[0] <= 160
    # with no floor, the worse variant is all but abandoned
    greedy = Counter(simulate([0.04, 0.12], users=4000, min_share=0.0, seed=seed)[-1000:])
    assert greedy[0] < last[0]


def test_the_floor_must_fit_the_variants() -> None:
    variants = [{"name": n, "next": "x"} for n in "abcd"]
    with pytest.raises(ValueError, match="more than everyone"):
        Experiment.model_validate({"key": "k", "variants": variants, "mode": "bandit",
                                   "min_share": 0.3})  # fmt: skip


EARLIER = datetime(2026, 1, 1, tzinfo=UTC)
BANDIT = """
journey: hero
name: Hero test
category: service
trigger: {event: Visited}
re_entry: always
goal: {event: Order Completed, within: 1d}
start: pick
steps:
  pick:
    experiment:
      key: hero_copy
      mode: bandit
      min_share: 0.1
      variants:
        - {name: plain, next: done}
        - {name: bold, next: done}
  done:
    exit: {}
"""


async def test_a_journey_bandit_follows_conversions_and_users_keep_their_variant(
    make_stack: StackFactory, engine: AsyncEngine
) -> None:
    stack = await make_stack({"hero": BANDIT})
    # history: 100 earlier users on each variant; "bold" converted 60 times, "plain" twice
    async with engine.begin() as conn:
        for n in range(200):
            variant = "bold" if n % 2 else "plain"
            converted = (variant == "bold" and n % 20 < 6 * 2) or (variant == "plain" and n < 4)
            enrollment = await conn.scalar(
                text(
                    "INSERT INTO enrollments (journey_key, version, user_id, status,"
                    " trigger_message_id, entered_at, converted_at)"
                    " VALUES ('hero', 1, :u, 'completed', :m, now(), :c) RETURNING id"
                ),
                {"u": f"past-{n}", "m": f"past-{n}", "c": EARLIER if converted else None},
            )
            await conn.execute(
                text(
                    "INSERT INTO assignments (journey_key, kind, experiment_key, mode, user_id,"
                    " arm, enrollment_id) VALUES ('hero', 'experiment', 'hero_copy', 'bandit',"
                    " :u, :v, :e)"
                ),
                {"u": f"past-{n}", "v": variant, "e": enrollment},
            )
    for n in range(30):
        await stack.track(f"new-{n}", "Visited")
    for n in range(30):
        await stack.result("hero", f"new-{n}")
    given = {
        r["user_id"]: r["variant"]
        for r in await rows(
            engine, "SELECT user_id, arm AS variant FROM assignments WHERE user_id LIKE 'new-%'"
        )
    }
    assert len(given) == 30
    assert Counter(given.values())["bold"] >= 22  # about 95% expected, 10% floor aside
    # each draw is logged with the chance it had: bold's is high, plain's near its floor
    chances = await rows(
        engine, "SELECT arm, propensity, mode FROM assignments WHERE user_id LIKE 'new-%'"
    )
    assert {r["mode"] for r in chances} == {"bandit"}
    assert all(0.1 <= r["propensity"] <= 0.95 for r in chances)
    assert min(r["propensity"] for r in chances if r["arm"] == "bold") > 0.8

    # a user who comes back keeps their variant, whatever the draws would say now
    await stack.track("new-0", "Visited")
    picks = (
        "SELECT s.outcome FROM enrollment_steps s JOIN enrollments e ON e.id = s.enrollment_id"
        " WHERE e.user_id = 'new-0' AND s.step = 'pick' ORDER BY s.id"
    )

    async def entered_twice() -> bool:
        return len(await rows(engine, picks)) == 2

    await eventually(entered_twice, skip=stack.skip)
    visits = await rows(engine, picks)
    assert [v["outcome"] for v in visits] == [f"variant {given['new-0']}"] * 2


COPY_TEST = """
journey: copy
name: Copy test
category: service
trigger: {event: Visited}
start: mail
steps:
  mail:
    send:
      channel: email
      template: copy_a
      variants: {key: subject_test, templates: [copy_b], reward: click}
    next: done
  done:
    exit: {}
"""
COPY_TEMPLATES = {
    "copy_a": 'email: {subject: "Plain subject", text: "a"}',
    "copy_b": 'email: {subject: "Bold subject!", text: "b"}',
}


async def test_a_bandit_picks_among_a_messages_templates_by_their_clicks(
    make_stack: StackFactory, engine: AsyncEngine, receiver: Receiver
) -> None:
    stack = await make_stack({"copy": COPY_TEST}, templates=COPY_TEMPLATES)
    # history: 100 users per template; copy_b's emails were clicked 40 times, copy_a's 3
    async with engine.begin() as conn:
        for n in range(200):
            template = "copy_b" if n % 2 else "copy_a"
            clicked = (template == "copy_b" and n % 5 != 0) if n < 100 else n < 6
            enrollment = await conn.scalar(
                text(
                    "INSERT INTO enrollments (journey_key, version, user_id, status,"
                    " trigger_message_id, entered_at) VALUES ('copy', 1, :u, 'completed', :u,"
                    " now()) RETURNING id"
                ),
                {"u": f"past-{n}"},
            )
            await conn.execute(
                text(
                    "INSERT INTO messages (id, enrollment_id, journey_key, version, user_id,"
                    " step, channel, template, status, clicked_at) VALUES (:m, :e, 'copy', 1,"
                    " :u, 'mail', 'email', :t, 'delivered', :c)"
                ),
                {"m": f"m-{n}", "e": enrollment, "u": f"past-{n}", "t": template,
                 "c": EARLIER if clicked else None},
            )  # fmt: skip
            await conn.execute(
                text(
                    "INSERT INTO assignments (journey_key, kind, experiment_key, mode, user_id,"
                    " arm, enrollment_id) VALUES ('copy', 'template', 'subject_test', 'bandit',"
                    " :u, :t, :e)"
                ),
                {"u": f"past-{n}", "t": template, "e": enrollment},
            )
    for n in range(20):
        await stack.track(f"new-{n}", "Visited")
    for n in range(20):
        await stack.result("copy", f"new-{n}")
    subjects = Counter(r.json["data"]["content"]["subject"] for r in receiver.at("/email"))
    assert sum(subjects.values()) == 20
    assert subjects["Bold subject!"] >= 14
    sent = await rows(
        engine, "SELECT template, count(*) AS n FROM messages WHERE user_id LIKE 'new-%'"
        " GROUP BY template ORDER BY template",
    )  # fmt: skip
    assert {r["template"]: r["n"] for r in sent} == dict(
        (("copy_a" if s == "Plain subject" else "copy_b"), n) for s, n in subjects.items()
    )


def test_a_missing_alternative_template_is_reported_at_its_position(tmp_path: Path) -> None:
    root = write_workspace(
        tmp_path / "ws", receiver_url="http://127.0.0.1:9", journeys={"copy": COPY_TEST},
        templates={"copy_a": COPY_TEMPLATES["copy_a"]},
    )  # fmt: skip
    [problem] = check_files([root / "journeys" / "copy.yaml"], load_workspace(root))
    assert (problem.line, problem.path) == (11, "steps.mail.send.variants.templates.0")
    assert "unknown template 'copy_b'" in problem.message
