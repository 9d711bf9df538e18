"""`orchestrator ranking monitor` as a person reads it (the figures: `monitoring.report`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.ranking.fairness import from_dict, summary


def _rate(estimate: Mapping[str, Any]) -> str:
    if estimate["value"] is None:
        return "n/a"
    if estimate["low"] is None:
        return f"{estimate['value']:.2%}"
    return f"{estimate['value']:.2%} [{estimate['low']:.2%}, {estimate['high']:.2%}]"


def _cell(c: Mapping[str, Any]) -> str:
    return (
        f"{c['messages']:>7,} messages  clicked {_rate(c['click_rate'])}  "
        f"bought {_rate(c['conversion_rate'])}"
    )


def render(found: Mapping[str, Any]) -> str:
    lines = [
        f"ranked content in messages sent {found['since']:%Y-%m-%d %H:%M} to "
        f"{found['until']:%Y-%m-%d %H:%M} UTC: {found['messages']:,} message(s) "
        "(clicks and purchases of the recommended items, per message, 95% intervals)"
    ]
    for model, c in found["by_model"].items():
        lines.append(f"  {model:<14} {_cell(c)}")
    if found["by_slot"]:
        lines.append("by slot and channel:")
        for row in found["by_slot"]:
            where = f"{row['model']} {row['slot'] or '-'} {row['channel']}"
            lines.append(f"  {where:<34} {_cell(row)}")
    if found["fallbacks"]:
        lines.append(
            "the baseline filled: "
            + ", ".join(f"{why} {n:,}" for why, n in found["fallbacks"].items())
        )
    active = found["active"]
    if active is None:
        lines.append("no version is active")
    else:
        offline = active["offline"]
        lines.append(
            f"active version {active['version']}: offline precision@10 "
            + (f"{offline['precision@10']:.4f}" if "precision@10" in offline else "not recorded")
            + ", online "
            + (_cell(active["online"]).strip() if active["online"] else "no messages")
        )
        if active["degraded"]:
            lines.append(f"  DEGRADED since {active['degraded']['at']:%Y-%m-%d %H:%M}: "
                         f"{active['degraded']['reason']} (the baseline answers)")  # fmt: skip
    if found["by_group"] is not None and not found["by_group"]["groups"]:
        lines.append(f"by {found['by_group']['by']}: no user has a value for it")
    elif found["by_group"]:
        grouped = found["by_group"]
        lines.append(
            summary(from_dict(grouped), title=f"users who clicked or bought, by {grouped['by']}")
        )
    canary = found["canary"]
    if canary is not None:
        info = canary["canary"]
        where = f" where {info['segment']}" if info["segment"] else ""
        lines.append(
            f"canary version {info['version']}: {info['share']:.0%} of users{where} since "
            f"{info['since']:%Y-%m-%d %H:%M}"
        )
        for name in ("canary", "active"):
            arm = canary["arms"][name]
            lines.append(
                f"  {name:<7} {arm['users']:,} users: clicked {arm['clicked_users']:,}, "
                f"bought {arm['converted_users']:,}; {arm['messages']:,} messages, "
                f"{arm['fallbacks']:,} filled by the baseline"
            )
        for what, key in (("clicked", "clicks"), ("bought", "conversions")):
            d = canary[key]["difference"]
            verdict = "clearly different" if canary[key]["significant"] else "no clear difference"
            interval = "" if d["low"] is None else f" ({d['low']:+.2%} to {d['high']:+.2%})"
            value = "n/a" if d["value"] is None else f"{d['value']:+.2%}"
            lines.append(f"  users who {what}, canary minus active: {value}{interval}, {verdict}")
    return "\n".join(lines)
