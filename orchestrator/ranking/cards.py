"""A version's model card: what it learnt from, how, how well, for whom, and who put it live.

Stored with the version when it is trained (`training_card`: the features and
parameters, the held-out metrics overall and by group, whether it passed the gate);
`card` puts that together with the version's row (window, data counts, the gate's
figures and reason, canary or degraded state) and its audit log entries (every
activation, canary, promotion and rollback, with who and when). `orchestrator ranking
show N` prints it (`render`), `GET /v1/ranking/versions/{n}` returns it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.ranking.evaluation import Metrics
from orchestrator.ranking.fairness import (
    MAX_GROUPS,
    GroupingError,
    by_group,
    from_dict,
    summary,
)
from orchestrator.tables import audit_log, ranking_models

# What the built-in model reads (orchestrator/ranking/model.py says how).
FEATURES = (
    "purchases: which users bought which items, and when (time-decayed co-occurrence, "
    "and EASE item weights fitted on the time-decayed purchases)",
    "item text: the catalogue's name, category and description words, and a price band",
    "item popularity over the training window (time-decayed)",
    "the user's own purchases, weighted by how recent they are (at serving time)",
)
REPORTED = ("ndcg@10", "precision@10", "recall@10", "hit_rate@10", "coverage@10")
BY_GROUP = ("ndcg@10", "precision@10", "recall@10", "hit_rate@10")


def _by_group(
    held_out: Metrics, groups: Mapping[str, object], bands: Sequence[float] | None
) -> dict[str, Any]:
    """The held-out metrics by group; small groups are counted, never named (the card
    is kept for good, and a value few users share may say who they are)."""
    try:
        grouped = by_group(held_out.users, groups, metrics=BY_GROUP, bands=bands,
                           max_groups=MAX_GROUPS, name_folded=False)  # fmt: skip
    except GroupingError as exc:
        return {"skipped": str(exc)}
    return asdict(grouped)


def training_card(
    *,
    parameters: Mapping[str, Any],
    users: int,
    held_out: Metrics,
    cutoff: datetime,
    passed: bool,
    groups: Mapping[str, object] | None = None,
    bands: Sequence[float] | None = None,
) -> dict[str, Any]:
    """What a version stores about itself when trained (JSON-ready)."""
    return {
        "features": list(FEATURES),
        "parameters": dict(parameters),
        "users": users,
        "offline": {
            "held_out_from": cutoff.isoformat(),
            "users": len(held_out.users),
            "metrics": {key: held_out.values[key] for key in REPORTED},
        },
        "by_group": _by_group(held_out, groups, bands) if groups else {},
        "passed_gate": passed,
    }


async def card(conn: AsyncConnection, version: int) -> dict[str, Any] | None:
    """Version `version`'s whole card, or None if there is no such version."""
    row = (
        await conn.execute(
            select(*(c for c in ranking_models.c if c.name != "artifact")).where(
                ranking_models.c.version == version
            )
        )
    ).one_or_none()
    if row is None:
        return None
    stored = dict(row.card or {})
    history = await conn.execute(
        select(audit_log.c.at, audit_log.c.actor_kind, audit_log.c.actor, audit_log.c.action,
               audit_log.c.details)
        .where(audit_log.c.subject == f"ranking:v{version}")
        .order_by(audit_log.c.id)
    )  # fmt: skip
    return {
        "version": row.version,
        "status": row.status,
        "created_at": row.created_at.isoformat(),
        "training": {
            "source": row.source,
            "window_start": row.window_start.isoformat(),
            "window_end": row.window_end.isoformat(),
            "purchases": row.purchases,
            "items": row.items,
            "users": stored.get("users"),
        },
        "features": stored.get("features", []),
        "parameters": stored.get("parameters", {}),
        "offline": stored.get("offline", {}),
        "by_group": stored.get("by_group", {}),
        "gate": {
            "passed": stored.get("passed_gate"),
            "reason": row.reason,
            "figures": row.metrics,
        },
        "canary": None
        if row.status != "canary"
        else {
            "share": row.canary_share,
            "segment": row.canary_segment,
            "since": row.canary_since.isoformat(),
        },
        "degraded": None
        if row.degraded_at is None
        else {"at": row.degraded_at.isoformat(), "reason": row.degraded_reason},
        "history": [
            {
                **dict(h.details or {}),
                "at": h.at.isoformat(),
                "actor": f"{h.actor_kind}:{h.actor}",
                "action": h.action,
            }
            for h in history
        ],
    }


def render(found: Mapping[str, Any]) -> str:
    """The card as a person reads it."""
    training = found["training"]
    lines = [
        f"version {found['version']} ({found['status']}), trained {found['created_at']}",
        f"  data: {training['source']}, {training['window_start'][:10]} to "
        f"{training['window_end'][:10]}: {training['purchases']:,} purchases of "
        f"{training['items']:,} items"
        + (f" by {training['users']:,} users" if training.get("users") else ""),
    ]
    if found["features"]:
        lines.append("  features:")
        lines += [f"    - {feature}" for feature in found["features"]]
    if found["parameters"]:
        lines.append(
            "  parameters: " + ", ".join(f"{k}={v}" for k, v in found["parameters"].items())
        )
    offline = found["offline"]
    if offline:
        lines.append(
            f"  offline (held out from {offline['held_out_from'][:10]}, {offline['users']:,} "
            "users): " + ", ".join(f"{k} {v:.4f}" for k, v in offline["metrics"].items())
        )
    if "skipped" in found["by_group"]:
        lines.append(f"  held out, by group: not kept ({found['by_group']['skipped']})")
    elif found["by_group"]:
        lines.append(summary(from_dict(found["by_group"]), title="  held out, by group"))
    gate = found["gate"]
    passed = {True: "passed", False: "failed", None: "not recorded"}[gate["passed"]]
    lines.append(f"  gate: {passed}: {gate['reason']}")
    if found["canary"]:
        canary = found["canary"]
        where = f" of users where {canary['segment']}" if canary["segment"] else " of users"
        lines.append(f"  canary: {canary['share']:.0%}{where} since {canary['since']}")
    if found["degraded"]:
        lines.append(
            f"  DEGRADED since {found['degraded']['at']}: {found['degraded']['reason']} "
            "(the baseline answers)"
        )
    if found["history"]:
        lines.append("  history:")
        for entry in found["history"]:
            extra = {k: v for k, v in entry.items() if k not in ("at", "actor", "action")}
            said = ", ".join(f"{k}: {v}" for k, v in extra.items() if v is not None)
            lines.append(f"    {entry['at']} {entry['action']} by {entry['actor']}"
                         + (f" ({said})" if said else ""))  # fmt: skip
    return "\n".join(lines)
