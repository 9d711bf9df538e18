"""Logged ranked content, read back to judge a model version on it
(`orchestrator ranking evaluate-logs`): the messages' shown items and their click
receipts (`clicked` with `item_id`), what each user had bought by then, and the
version's ranking for each; the estimate itself is `counterfactual`'s."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.catalog import PURCHASE_LINES
from orchestrator.ranking.counterfactual import (
    Impression,
    LogEvaluation,
    evaluate_impressions,
    target_ranking,
)
from orchestrator.ranking.versions import stored_model
from orchestrator.reports.offpolicy import RESAMPLES
from orchestrator.tables import catalog_items

# Messages that went out (a receipt may have moved them on to delivered) with ranked
# content, and the items clicked in each.
_MESSAGES = text(
    """
    SELECT m.id, m.user_id, m.created_at, m.status, m.content_source,
        coalesce(array_agg(DISTINCT r.payload -> 'data' ->> 'item_id') FILTER (
            WHERE r.kind = 'clicked' AND r.payload -> 'data' ->> 'item_id' IS NOT NULL
        ), '{}') AS clicked
    FROM messages AS m LEFT JOIN receipts AS r ON r.message_id = m.id
    WHERE m.content_source IS NOT NULL AND m.created_at >= :since
    GROUP BY m.id
    ORDER BY m.created_at, m.id
    """
)
_SHOWN = ("sent", "delivered")
_PURCHASES = text(
    f"""
    SELECT e.user_id, product ->> 'product_id' AS item, e.timestamp
    FROM {PURCHASE_LINES}
    WHERE e.event = ANY(:events) AND e.user_id = ANY(:users)
    """
)


@dataclass(frozen=True, slots=True)
class VersionOnLogs:
    version: int
    since: datetime
    messages: int  # with ranked content, created since
    undelivered: int  # failed, bounced or never confirmed sent: not shown
    baseline: int  # filled by the popularity baseline
    unlogged: int  # model-filled before shown items were logged
    result: LogEvaluation


async def evaluate_version(
    engine: AsyncEngine,
    *,
    version: int,
    since: datetime,
    events: Sequence[str],
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> VersionOnLogs:
    """Version `version`'s clicks per message on the model-filled messages sent since
    `since`, beside the logged policy's; raises VersionError for an unknown version."""
    async with engine.connect() as conn:
        model = await stored_model(conn, version)
        rows = (await conn.execute(_MESSAGES, {"since": since})).all()
        impressions: list[Impression] = []
        undelivered = baseline = unlogged = 0
        for row in rows:
            if row.status not in _SHOWN:
                undelivered += 1
                continue
            impression = Impression.logged(
                message_id=row.id, user_id=row.user_id, at=row.created_at,
                source=row.content_source, clicked=row.clicked,
            )  # fmt: skip
            if impression is not None:
                impressions.append(impression)
            elif row.content_source.get("source") == "baseline":
                baseline += 1
            else:
                unlogged += 1
        available = set(
            (
                await conn.execute(select(catalog_items.c.id).where(catalog_items.c.available))
            ).scalars()
        )
        bought: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
        users = sorted({i.user_id for i in impressions})
        for user, item, at in await conn.execute(
            _PURCHASES, {"events": list(events), "users": users}
        ):
            if item:
                bought[user].append((item, at))
    rankings = {}
    for impression in impressions:
        history: dict[str, datetime] = {}
        for item, at in bought[impression.user_id]:
            if at < impression.at and (item not in history or at > history[item]):
                history[item] = at
        rankings[impression.message_id] = target_ranking(
            model, history, len(impression.shown), available, impression.at
        )
    result = evaluate_impressions(
        impressions, rankings, rng=np.random.default_rng(seed), resamples=resamples
    )
    return VersionOnLogs(
        version=version,
        since=since,
        messages=len(rows),
        undelivered=undelivered,
        baseline=baseline,
        unlogged=unlogged,
        result=result,
    )
