"""Ranking versions under governance on real Postgres: a canary served to its share and
promoted, a worse one rolled back by the guard, a degraded active version replaced by the
baseline, cards stored and shown, ranked content judged online."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from channels.ranking import Recommendations
from orchestrator.access.audit import command_line
from orchestrator.cli import app
from orchestrator.ranking import guard
from orchestrator.ranking.config import RankingConfig, RankingMonitoringConfig
from orchestrator.ranking.monitoring import report
from orchestrator.ranking.retail import read_retail
from orchestrator.ranking.rollout import (
    Canary,
    VersionError,
    activate,
    promote,
    rollback,
    start_canary,
)
from orchestrator.ranking.serving import BuiltInRanker
from orchestrator.ranking.versions import train
from orchestrator.reports import alerts
from orchestrator.worker import build_channel_deps
from orchestrator.workspace import WorkspaceConfig
from tests.conftest import StackFactory
from tests.orchestrator.test_ranking_logs import ITEMS, load_catalogue, store_version
from tests.support.db import insert_messages, rows

runner = CliRunner()
PERSON = command_line()
EVENTS = ["Order Completed"]
USERS = [f"user-{n}" for n in range(2000)]
SLICE = Path(__file__).resolve().parents[1] / "data" / "online_retail_slice.csv.gz"


def now() -> datetime:
    return datetime.now(UTC)


async def two_versions(engine: AsyncEngine) -> tuple[int, int]:
    """An active version (since 3 hours ago) and another one (tiny models over ITEMS)."""
    first = await store_version(engine, ITEMS[:3])
    second = await store_version(engine, ITEMS[3:6])
    await activate(engine, first, actor=PERSON, now=now() - timedelta(hours=3))
    return first, second


async def served(ranker: BuiltInRanker, users: list[str]) -> dict[str, int]:
    return {user: (await ranker.serving(user))[0] for user in users}


async def test_a_canary_serves_its_share_and_is_promoted(engine: AsyncEngine) -> None:
    first, second = await two_versions(engine)
    ranker = BuiltInRanker(engine, events=EVENTS, check_every=0)
    assert set((await served(ranker, USERS[:50])).values()) == {first}

    started = await start_canary(engine, second, share=0.1, segment=None, actor=PERSON,
                                 now=now())  # fmt: skip
    by_user = await served(ranker, USERS)
    in_canary = {u for u, v in by_user.items() if v == second}
    # about a tenth (binomial: 200 expected, sd 13), the same users as the hash says
    assert 150 < len(in_canary) < 250
    assert in_canary == {u for u in USERS if started.drawn(u)}
    assert await served(ranker, USERS) == by_user  # stable
    # what a message gets says which version answered
    deps_ranking = await ranker.rank(_request(sorted(in_canary)[0]))
    assert deps_ranking.model == f"hybrid-v{second}"

    # a larger share keeps everyone already in, and the comparison starts afresh
    widened = await start_canary(engine, second, share=0.3, segment=None, actor=PERSON,
                                 now=now())  # fmt: skip
    assert widened.since > started.since
    wider = {u for u, v in (await served(ranker, USERS)).items() if v == second}
    assert in_canary < wider
    assert 500 < len(wider) < 700

    # a new share keeps the segment unless told otherwise ("" for everyone)
    kept = await start_canary(engine, second, share=0.3, segment='user.country == "UK"',
                              actor=PERSON, now=now())  # fmt: skip
    kept = await start_canary(engine, second, share=0.3, segment=None, actor=PERSON, now=now())
    assert kept.segment == 'user.country == "UK"'
    everyone = await start_canary(engine, second, share=0.3, segment="", actor=PERSON, now=now())
    assert everyone.segment is None

    promoted = await promote(engine, actor=PERSON, now=now())
    assert promoted == second
    assert set((await served(ranker, USERS[:200])).values()) == {second}
    assert await _statuses(engine) == {first: "inactive", second: "active"}
    actions = await rows(engine, "SELECT action, actor, details ->> 'previous' AS previous"
                                 " FROM audit_log WHERE subject = :s ORDER BY id",
                         s=f"ranking:v{second}")  # fmt: skip
    assert [a["action"] for a in actions] == ["ranking.canary"] * 5 + ["ranking.promote"]
    assert actions[-1]["previous"] == str(first)
    assert {a["actor"] for a in actions} == {PERSON.name}

    # with no canary, a rollback goes back to the version active before
    said = await rollback(engine, actor=PERSON, now=now())
    assert said == f"version {first} is active again (instead of {second})"
    assert await _statuses(engine) == {first: "active", second: "inactive"}
    # a second rollback goes further back, not forth again: nothing is before the first
    with pytest.raises(VersionError, match=f"no version before {first} is recorded"):
        await rollback(engine, actor=PERSON, now=now())


async def test_a_canary_within_a_segment_serves_only_its_members(engine: AsyncEngine) -> None:
    _, second = await two_versions(engine)
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO profiles (user_id, traits) SELECT u, CAST(:t AS jsonb)"
                 " FROM unnest(CAST(:users AS text[])) AS u"),
            {"users": USERS[:1000], "t": '{"country": "UK"}'},
        )  # fmt: skip
    canary = await start_canary(engine, second, share=0.5, segment='user.country == "UK"',
                                actor=PERSON, now=now())  # fmt: skip
    by_user = await served(BuiltInRanker(engine, events=EVENTS, check_every=0), USERS)
    in_canary = {u for u, v in by_user.items() if v == second}
    assert in_canary == {u for u in USERS[:1000] if canary.drawn(u)}
    assert 400 < len(in_canary) < 600


async def test_bad_canary_requests_are_refused_and_change_nothing(engine: AsyncEngine) -> None:
    first, second = await two_versions(engine)
    third = await store_version(engine, ITEMS[5:])
    before = await _statuses(engine)
    for version, share, segment, said in [
        (second, 0.0, None, "a percentage above 0 and at most 50%"),
        (second, 0.6, None, "a percentage above 0 and at most 50%"),
        (99, 0.1, None, "there is no version 99"),
        (first, 0.1, None, f"version {first} is the active version already"),
        (second, 0.1, "user.country ==", "--segment:"),
    ]:
        with pytest.raises(VersionError, match=said):
            await start_canary(engine, version, share=share, segment=segment, actor=PERSON,
                               now=now())  # fmt: skip
    assert await _statuses(engine) == before
    await start_canary(engine, second, share=0.1, segment=None, actor=PERSON, now=now())
    with pytest.raises(VersionError, match=f"version {second} is the canary already"):
        await start_canary(engine, third, share=0.1, segment=None, actor=PERSON, now=now())
    said = await rollback(engine, actor=PERSON, now=now())
    assert said == f"the canary version {second} is stopped"
    with pytest.raises(VersionError, match="no canary is running"):
        await promote(engine, actor=PERSON, now=now())
    assert await _statuses(engine) == before


CONFIG = RankingMonitoringConfig(min_messages=100, canary_min_users=100)


async def test_the_guard_rolls_back_a_canary_worse_online(engine: AsyncEngine) -> None:
    first, second = await two_versions(engine)
    canary = await start_canary(engine, second, share=0.5, segment=None, actor=PERSON,
                                now=now() - timedelta(hours=2))  # fmt: skip
    # as good as the active version: it stays
    await traffic(engine, canary, first, USERS[:600], clicks={"canary": 0.3, "active": 0.3})
    assert await guard.check(engine, CONFIG, events=EVENTS, now=now()) == []
    assert (await _statuses(engine))[second] == "canary"

    # its users now click far less than the active version's
    await traffic(engine, canary, first, USERS[600:1400], clicks={"canary": 0.05, "active": 0.3})
    done = await guard.check(engine, CONFIG, events=EVENTS, now=now())
    assert len(done) == 1
    assert done[0].startswith(f"the canary version {second} is rolled back: its users clicked")
    assert await _statuses(engine) == {first: "active", second: "inactive"}
    [entry] = await rows(engine, "SELECT actor_kind, actor, details FROM audit_log"
                                 " WHERE action = 'ranking.rollback'")  # fmt: skip
    assert (entry["actor_kind"], entry["actor"]) == ("system", "ranking guard")
    assert "less often than the active version's" in entry["details"]["reason"]
    # the ranker serves everyone the active version again
    ranker = BuiltInRanker(engine, events=EVENTS, check_every=0)
    assert set((await served(ranker, USERS[:300])).values()) == {first}


async def test_the_guard_leaves_alone_a_canary_a_person_promoted(engine: AsyncEngine) -> None:
    first, second = await two_versions(engine)
    canary = await start_canary(engine, second, share=0.5, segment=None, actor=PERSON,
                                now=now() - timedelta(hours=2))  # fmt: skip
    await traffic(engine, canary, first, USERS[:800], clicks={"canary": 0.05, "active": 0.3})
    await promote(engine, actor=PERSON, now=now())
    assert await guard.check(engine, CONFIG, events=EVENTS, now=now()) == []
    assert await _statuses(engine) == {first: "inactive", second: "active"}
    assert not await rows(engine, "SELECT 1 FROM audit_log WHERE actor_kind = 'system'")


async def test_the_guard_rolls_back_a_canary_that_falls_back_too_often(
    engine: AsyncEngine,
) -> None:
    first, second = await two_versions(engine)
    canary = await start_canary(engine, second, share=0.5, segment=None, actor=PERSON,
                                now=now() - timedelta(hours=2))  # fmt: skip
    # the canary's answers time out for half its messages; opt-outs do not count
    await traffic(engine, canary, first, USERS[:400], clicks={"canary": 0.3, "active": 0.3},
                  fallback={"canary": "timeout", "active": "opted_out"},
                  fallback_share=0.5)  # fmt: skip
    done = await guard.check(engine, CONFIG, events=EVENTS, now=now())
    assert len(done) == 1
    assert "the baseline filled" in done[0]
    assert "limit 20%" in done[0]
    assert (await _statuses(engine))[second] == "inactive"


async def test_a_degraded_active_version_falls_back_to_the_baseline(
    engine: AsyncEngine, make_stack: StackFactory
) -> None:
    stack = await make_stack({}, workspace={"config": RANKING})
    await load_catalogue(engine)
    first, _ = await two_versions(engine)
    floor = RankingMonitoringConfig(min_messages=100, min_click_rate=0.1)
    await traffic(engine, None, first, USERS[:300], clicks={"active": 0.12})
    assert await guard.check(engine, floor, events=EVENTS, now=now()) == []

    await traffic(engine, None, first, USERS[300:900], clicks={"active": 0.01})
    [done] = await guard.check(engine, floor, events=EVENTS, now=now())
    assert done.startswith(f"version {first} is degraded, the baseline answers:")
    assert "under the floor of 10.00%" in done

    config = WorkspaceConfig.model_validate(
        {"workspace": "t", "sources": [{"name": "s", "write_key": "wk_test_0123456789"}],
         "ranking": {"builtin": True, "deadline_ms": 2000, "min_confidence": 0}}
    )  # fmt: skip
    async with httpx.AsyncClient() as http:
        deps = build_channel_deps(config, engine=engine, http=http, clock=now)
        assert deps.recommender is not None
        filled = await deps.recommender.recommend("user-1", {}, Recommendations(slot="home"))
        assert (filled.source, filled.fallback) == ("baseline", "degraded")
        assert f"version {first} is degraded" in filled.reason
        [raised] = await alerts.check(stack.services, now=now())
        assert (raised.kind, raised.subject) == ("ranking_degraded", f"ranking:v{first}")

        await activate(engine, first, actor=PERSON, now=now())  # a person puts it back
        deps.recommender.model.check_every = 0  # type: ignore[union-attr]
        again = await deps.recommender.recommend("user-1", {}, Recommendations(slot="home"))
        assert (again.source, again.model) == ("model", f"hybrid-v{first}")
    # judged afresh from its activation: the day before does not degrade it again
    assert await guard.check(engine, floor, events=EVENTS, now=now()) == []


RANKING = "ranking: {builtin: true}\n"


async def test_cards_are_stored_and_shown(
    engine: AsyncEngine, make_stack: StackFactory, postgres_url: str
) -> None:
    stack = await make_stack({}, workspace={"config": RANKING})
    dataset = read_retail(
        Path(__file__).resolve().parents[1] / "data" / "online_retail_slice.csv.gz"
    )
    groups = {p.user: ("odd" if int(p.user) % 2 else "even") for p in dataset.purchases}
    trained = await train(engine, dataset.purchases, dataset.items, source="slice",
                          actor=PERSON, groups=groups)  # fmt: skip
    answer = await stack.call("GET", f"/v1/ranking/versions/{trained.version}")
    assert answer.status_code == 200, answer.text
    card = answer.json()
    assert card["status"] == "active"
    assert card["training"]["purchases"] == len(dataset.purchases)
    assert card["training"]["users"] == len({p.user for p in dataset.purchases})
    assert card["parameters"]["half_life_days"] > 0
    assert any("item text" in f for f in card["features"])
    offline = card["offline"]["metrics"]
    assert offline["ndcg@10"] == pytest.approx(trained.metrics["candidate"])
    groups = card["by_group"]["groups"]
    assert {g["name"] for g in groups} == {"even", "odd"}
    assert sum(g["users"] for g in groups) == card["offline"]["users"]
    assert groups[0]["metrics"]["ndcg@10"]["low"] <= groups[0]["metrics"]["ndcg@10"]["mean"]
    assert card["by_group"]["flagged"] == []  # odd and even ids are served alike
    assert card["gate"]["passed"] is True
    assert card["gate"]["reason"] == trained.reason
    [activation] = card["history"]
    assert activation["action"] == "ranking.activate"
    assert activation["actor"] == f"cli:{PERSON.name}"
    assert activation["how"] == "trained: it won the gate"

    assert (await stack.call("GET", "/v1/ranking/versions/999")).status_code == 404
    assert (await stack.call("GET", "/v1/ranking/versions/1", key=None)).status_code == 401
    listed = (await stack.call("GET", "/v1/ranking/versions")).json()
    assert [v["version"] for v in listed] == [trained.version]

    env = {
        "ORCHESTRATOR_DATABASE_URL": postgres_url,
        "ORCHESTRATOR_WORKSPACE": str(stack.workspace),
    }
    shown = await asyncio.to_thread(runner.invoke, app, ["ranking", "show", str(trained.version)],
                                    env=env)  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert f"version {trained.version} (active)" in shown.output
    assert "gate: passed: ndcg@10" in shown.output
    assert f"ranking.activate by cli:{PERSON.name}" in shown.output
    assert "| even |" in shown.output
    assert "no group is served clearly worse than the rest" in shown.output
    as_json = await asyncio.to_thread(
        runner.invoke, app, ["ranking", "show", str(trained.version), "--json"], env=env
    )
    assert json.loads(as_json.output)["offline"] == card["offline"]
    missing = await asyncio.to_thread(runner.invoke, app, ["ranking", "show", "999"], env=env)
    assert missing.exit_code == 1
    assert "there is no version 999" in missing.output


async def test_ranked_content_is_judged_online_by_version_slot_and_channel(
    engine: AsyncEngine, make_stack: StackFactory, postgres_url: str
) -> None:
    stack = await make_stack({}, workspace={"config": RANKING})
    first, second = await two_versions(engine)
    canary = await start_canary(engine, second, share=0.5, segment=None, actor=PERSON,
                                now=now() - timedelta(hours=2))  # fmt: skip
    await traffic(engine, canary, first, USERS[:400], clicks={"canary": 0.2, "active": 0.4},
                  bought={"canary": 0.1, "active": 0.1})  # fmt: skip
    async with engine.connect() as conn:
        found = await report(conn, RankingConfig(builtin=True), since=timedelta(days=1),
                             now=now())  # fmt: skip
    arms = found["canary"]["arms"]
    assert arms["canary"]["users"] + arms["active"]["users"] == 400
    for arm in ("canary", "active"):
        model = f"hybrid-v{second if arm == 'canary' else first}"
        figures = found["by_model"][model]
        assert figures["messages"] == arms[arm]["messages"]
        # clicks as simulated (well within binomial noise of 200 users)
        expected = {"canary": 0.2, "active": 0.4}[arm]
        assert figures["click_rate"]["value"] == pytest.approx(expected, abs=0.12)
        assert figures["conversion_rate"]["value"] == pytest.approx(0.1, abs=0.08)
        assert figures["click_rate"]["low"] < figures["click_rate"]["value"]
    assert {(r["slot"], r["channel"]) for r in found["by_slot"]} == {("home", "email")}
    assert found["canary"]["clicks"]["difference"]["value"] < 0
    assert found["active"]["version"] == first
    assert found["by_group"] is None  # no trait asked for

    # the same figures by a trait: per group, whether users clicked or bought
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO profiles (user_id, traits) SELECT u, jsonb_build_object("
                 "'country', CASE WHEN n <= 300 THEN 'UK' ELSE 'DE' END)"
                 " FROM unnest(CAST(:users AS text[])) WITH ORDINALITY AS t(u, n)"),
            {"users": USERS[:400]},
        )  # fmt: skip
        grouped = (await report(conn, RankingConfig(builtin=True), since=timedelta(days=1),
                                now=now(), by="country"))["by_group"]  # fmt: skip
    assert [(g["name"], g["users"]) for g in grouped["groups"]] == [("UK", 300), ("DE", 100)]
    uk = grouped["groups"][0]["metrics"]["clicked"]
    assert uk["low"] < uk["mean"] < uk["high"]
    assert grouped["flagged"] == []  # both groups were served alike

    answer = await stack.call("GET", "/v1/ranking/monitor", params={"since": "2d"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["messages"] == 400
    for since in ("soon", "365d"):
        bad = await stack.call("GET", "/v1/ranking/monitor", params={"since": since})
        assert (bad.status_code, bad.json()["field"]) == (400, "since")
    # a trait nearly every user has their own value of is no group, and small groups
    # are counted, never named
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE profiles SET traits = traits || jsonb_build_object('email',"
                 " user_id || '@example.com', 'city', CASE WHEN user_id = 'user-0' THEN"
                 " 'Tiny Town' ELSE 'London' END)")
        )  # fmt: skip
    by_email = await stack.call("GET", "/v1/ranking/monitor", params={"by": "email"})
    assert (by_email.status_code, by_email.json()["field"]) == (400, "by")
    assert "at most 50 groups" in by_email.json()["error"]
    by_city = (await stack.call("GET", "/v1/ranking/monitor", params={"by": "city"})).json()
    other = next(g for g in by_city["by_group"]["groups"] if g["name"] == "other")
    assert (other["folded"], other["folded_groups"], other["users"]) == ([], 1, 1)
    assert "Tiny Town" not in json.dumps(by_city)
    env = {
        "ORCHESTRATOR_DATABASE_URL": postgres_url,
        "ORCHESTRATOR_WORKSPACE": str(stack.workspace),
    }
    printed = await asyncio.to_thread(runner.invoke, app, ["ranking", "monitor"], env=env)
    assert printed.exit_code == 0, printed.output
    assert f"canary version {second}: 50% of users" in printed.output
    assert "users who clicked, canary minus active" in printed.output


def _request(user: str) -> Any:
    from channels.ranking import RankRequest

    return RankRequest(user_id=user, slot="home", k=3)


async def _statuses(engine: AsyncEngine) -> dict[int, str]:
    found = await rows(engine, "SELECT version, status FROM ranking_models")
    return {r["version"]: r["status"] for r in found}


async def traffic(
    engine: AsyncEngine,
    canary: Canary | None,
    active: int,
    users: list[str],
    *,
    clicks: dict[str, float],
    bought: dict[str, float] | None = None,
    fallback: dict[str, str] | None = None,
    fallback_share: float = 0.0,
) -> None:
    """One delivered email per user with ranked content from the user's arm (the canary's
    when the hash draws them in), clicked and bought with the arm's chances."""
    rng = random.Random(len(users))
    at = now() - timedelta(hours=1)
    messages, receipts, purchases = [], [], []
    for user in users:
        arm = "canary" if canary is not None and canary.drawn(user) else "active"
        version = canary.version if arm == "canary" and canary else active
        message = f"m-{user}-{rng.random():.6f}"
        why = (fallback or {}).get(arm) if rng.random() < fallback_share else None
        source = {
            "source": "baseline" if why else "model", "fallback": why,
            "model": "popularity" if why else f"hybrid-v{version}",
            "slot": "home", "items": ["i0", "i1", "i2"],
        }  # fmt: skip
        messages.append((message, user, orjson.dumps(source).decode()))
        if rng.random() < clicks[arm]:
            body = {"type": "clicked", "data": {"message_id": message, "item_id": "i1"}}
            receipts.append((f"r-{message}", message, orjson.dumps(body).decode()))
        if rng.random() < (bought or {}).get(arm, 0.0):
            purchases.append((f"o-{message}", user))
    await insert_messages(engine, messages, receipts, at=at)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO events (message_id, source, type, event, user_id, properties,"
                " timestamp, received_at) SELECT id, 'test', 'track', 'Order Completed', u,"
                " CAST(:props AS jsonb), :bought, :bought"
                " FROM unnest(CAST(:ids AS text[]), CAST(:users AS text[])) AS t(id, u)"
            ),
            {"ids": [p[0] for p in purchases], "users": [p[1] for p in purchases],
             "props": '{"products": [{"product_id": "i2"}]}', "bought": at + timedelta(minutes=5)},
        )  # fmt: skip


def test_monitoring_bands_that_do_not_increase_are_refused() -> None:
    base = {"workspace": "t", "sources": [{"name": "s", "write_key": "wk_test_0123456789"}]}
    with pytest.raises(ValueError, match="bands must be increasing numbers"):
        WorkspaceConfig.model_validate(
            {**base, "ranking": {"monitoring": {"by": "age", "bands": [50, 25]}}}
        )
    config = WorkspaceConfig.model_validate(
        {**base, "ranking": {"monitoring": {"by": "age", "bands": [25, 50]}}}
    )
    assert config.ranking.monitoring.bands == [25, 50]
