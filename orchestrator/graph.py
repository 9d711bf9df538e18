"""Pictures of a journey: Mermaid text (for docs and pull requests) and a standalone SVG."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from html import escape

from rules.durations import format_duration
from workflows.spec import (
    BranchStep,
    ExitStep,
    ExperimentStep,
    Journey,
    SendStep,
    Step,
    UpdateProfileStep,
    WaitForStep,
    WaitStep,
    WaitUntil,
    WebhookStep,
)

TRIGGER = "__trigger"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    label: str = ""


def describe(step: Step) -> str:
    """A short label for a step, as a marketer would say it."""
    match step:
        case WaitStep(wait=wait):
            if isinstance(wait, WaitUntil):
                return f"wait until {wait.until} ({wait.timezone} time)"
            return f"wait {format_duration(wait)}"
        case WaitForStep(wait_for=w):
            return f"wait up to {format_duration(w.timeout)} for {w.event}"
        case BranchStep():
            return "branch"
        case ExperimentStep(experiment=e):
            return f"experiment {e.key}"
        case SendStep(send=s):
            return f"send {s.template} via {' / '.join(c.value for c in s.channel_order)}"
        case UpdateProfileStep(update_profile=u):
            return "update profile: " + ", ".join([*u.set, *(f"-{k}" for k in u.unset)])
        case WebhookStep(webhook=h):
            return f"call {h.method} {h.url}"
        case ExitStep():
            return "exit"
    return "?"


def edges(journey: Journey) -> list[Edge]:
    found = [Edge(TRIGGER, journey.start)]
    for step_id, step in journey.steps.items():
        match step:
            case WaitForStep(wait_for=w):
                found += [
                    Edge(step_id, w.on_event, w.event),
                    Edge(step_id, w.on_timeout, "timeout"),
                ]
            case BranchStep(branch=arms):
                found += [Edge(step_id, a.next, a.when or "otherwise") for a in arms]
            case ExperimentStep(experiment=e):
                total = sum(v.weight for v in e.variants)
                found += [
                    Edge(step_id, v.next, f"{v.name} {100 * v.weight / total:.0f}%")
                    for v in e.variants
                ]
            case ExitStep():
                pass
            case _:
                found.append(Edge(step_id, step.next))
    return found


def trigger_label(journey: Journey) -> str:
    trigger = journey.trigger
    if trigger.audience is not None:
        schedule = trigger.audience.schedule
        when = f"at {schedule.at.isoformat()}" if schedule.at else f"cron {schedule.cron}"
        return f"everyone in {trigger.audience.segment}, {when}"
    segment = f" ({trigger.segment})" if trigger.segment else ""
    when = f" when {trigger.when}" if trigger.when else ""
    return f"on {trigger.event}{segment}{when}"


def mermaid(journey: Journey) -> str:
    """Mermaid flowchart text."""
    lines = ["flowchart TD", f'  {TRIGGER}(["{_m(trigger_label(journey))}"])']
    for step_id, step in journey.steps.items():
        label = _m(f"{step_id}: {describe(step)}")
        shape = {
            WaitStep: ('(["', '"])'),
            WaitForStep: ('(["', '"])'),
            BranchStep: ('{"', '"}'),
            ExperimentStep: ('{{"', '"}}'),
            ExitStep: ('((" ', ' "))'),
        }.get(type(step), ('["', '"]'))
        lines.append(f"  {step_id}{shape[0]}{label}{shape[1]}")
    for edge in edges(journey):
        arrow = f' -->|"{_m(edge.label)}"| ' if edge.label else " --> "
        lines.append(f"  {edge.source}{arrow}{edge.target}")
    return "\n".join(lines) + "\n"


def _m(text: str) -> str:
    return text.replace('"', "#quot;")


# ---- SVG -------------------------------------------------------------------

_W, _H, _GAP_X, _GAP_Y, _PAD = 240, 46, 40, 70, 30
_COLOURS = {
    WaitStep: "#fff4d6",
    WaitForStep: "#fff4d6",
    BranchStep: "#e3ecff",
    ExperimentStep: "#f0e3ff",
    SendStep: "#dff5e3",
    ExitStep: "#eeeeee",
}


def svg(journey: Journey) -> str:
    """A standalone SVG: steps in layers from the trigger down, edges with their labels.

    A layered (Sugiyama-style) drawing: an edge that skips layers bends through
    placeholder points so it never runs behind a step, and each layer is ordered by
    the average position of its parents to keep crossings few.
    """
    depth, back = _layers(journey)
    rows: dict[int, list[str]] = {}
    routes: list[tuple[Edge, list[str]]] = []
    for node, level in sorted(depth.items(), key=lambda item: item[1]):
        rows.setdefault(level, []).append(node)
    for edge in edges(journey):
        if edge.target not in depth:
            continue
        chain = [edge.source]
        if (edge.source, edge.target) not in back:
            for level in range(depth[edge.source] + 1, depth[edge.target]):
                dummy = f"{edge.source}>{edge.target}>{level}>{len(routes)}"
                rows.setdefault(level, []).append(dummy)
                chain.append(dummy)
        routes.append((edge, [*chain, edge.target]))
    parents: dict[str, list[str]] = {}
    for _, chain in routes:
        for a, b in itertools.pairwise(chain):
            parents.setdefault(b, []).append(a)
    for level in sorted(rows)[1:]:  # order each layer by its parents' positions
        above = {n: i for i, n in enumerate(rows[level - 1])}

        def mean_parent(node: str, above: dict[str, int] = above) -> float:
            found = [above[p] for p in parents.get(node, []) if p in above]
            return sum(found) / len(found) if found else 0.0

        rows[level].sort(key=mean_parent)

    def width_of(node: str) -> float:
        return 24 if ">" in node else _W

    row_widths = {lv: sum(width_of(n) + _GAP_X for n in ns) - _GAP_X for lv, ns in rows.items()}
    width = max(row_widths.values()) + 2 * _PAD + 160
    height = (max(rows) + 1) * (_H + _GAP_Y) - _GAP_Y + 2 * _PAD
    at: dict[str, tuple[float, float]] = {}
    for level, nodes in rows.items():
        x = (width - 160 - row_widths[level]) / 2
        for node in nodes:
            at[node] = (x + width_of(node) / 2, _PAD + level * (_H + _GAP_Y) + _H / 2)
            x += width_of(node) + _GAP_X
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif">',
        "<defs><marker id='arrow' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='8' "
        "markerHeight='8' orient='auto-start-reverse'><path d='M 0 0 L 10 5 L 0 10 z' "
        "fill='#555'/></marker></defs>",
        f"<title>{escape(journey.name)}</title>",
    ]
    labels = []
    for edge, chain in routes:
        points = [at[n] for n in chain]
        (x1, y1), (x2, y2) = points[0], points[-1]
        if y2 > y1:
            path = _curve([(x1, y1 + _H / 2), *points[1:-1], (x2, y2 - _H / 2)])
            lx, ly = ((x1 + points[1][0]) / 2, y1 + _H / 2 + _GAP_Y / 2)
        else:  # a loop back up: around the right-hand side
            side = max(x1, x2) + _W / 2 + 60
            path = (
                f"M {x1 + _W / 2:.0f} {y1:.0f} C {side:.0f} {y1:.0f}, "
                f"{side:.0f} {y2:.0f}, {x2 + _W / 2:.0f} {y2:.0f}"
            )
            lx, ly = side - 10, (y1 + y2) / 2
        parts.append(
            f'<path d="{path}" fill="none" stroke="#555" stroke-width="1.4" '
            f'marker-end="url(#arrow)"/>'
        )
        if edge.label:
            text = _clip(edge.label, 34)
            box = 6.2 * len(text) + 8
            labels.append(
                f'<rect x="{lx - box / 2:.0f}" y="{ly - 11:.0f}" width="{box:.0f}" height="15" '
                f'rx="3" fill="#fff" opacity="0.9"/><text x="{lx:.0f}" y="{ly:.0f}" '
                f'font-size="11" text-anchor="middle" fill="#333">{escape(text)}</text>'
            )
    for node, (x, y) in at.items():
        if ">" in node:
            continue
        if node == TRIGGER:
            fill, title, detail, radius = "#ffe0e0", "trigger", trigger_label(journey), 23
        else:
            step = journey.steps[node]
            fill, title, detail, radius = (
                _COLOURS.get(type(step), "#ffffff"),
                node,
                describe(step),
                6,
            )
        parts.append(
            f'<rect x="{x - _W / 2:.0f}" y="{y - _H / 2:.0f}" width="{_W}" height="{_H}" '
            f'rx="{radius}" fill="{fill}" stroke="#444"/>'
            f'<text x="{x:.0f}" y="{y - 5:.0f}" font-size="13" font-weight="bold" '
            f'text-anchor="middle">{escape(_clip(title, 30))}</text>'
            f'<text x="{x:.0f}" y="{y + 12:.0f}" font-size="11" text-anchor="middle" '
            f'fill="#333">{escape(_clip(detail, 38))}</text>'
        )
    parts += labels
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _curve(points: list[tuple[float, float]]) -> str:
    """A smooth path through points, vertical at each end."""
    (x, y), rest = points[0], points[1:]
    path = f"M {x:.0f} {y:.0f}"
    for nx, ny in rest:
        mid = (y + ny) / 2
        path += f" C {x:.0f} {mid:.0f}, {nx:.0f} {mid:.0f}, {nx:.0f} {ny:.0f}"
        x, y = nx, ny
    return path


def _layers(journey: Journey) -> tuple[dict[str, int], set[tuple[str, str]]]:
    """Layer of each reachable step: the longest path from the trigger, loops ignored.

    Longest (not shortest) paths put a shared final step such as `done` at the
    bottom, so the picture reads top to bottom like the journey does.
    """
    following: dict[str, list[str]] = {}
    for edge in edges(journey):
        if edge.target in journey.steps:
            following.setdefault(edge.source, []).append(edge.target)
    order: list[str] = []  # reverse post-order of a depth-first search = topological order
    state: dict[str, int] = {}
    back: set[tuple[str, str]] = set()

    def visit(node: str) -> None:
        state[node] = 1
        for target in following.get(node, []):
            if state.get(target) == 1:
                back.add((node, target))
            elif target not in state:
                visit(target)
        state[node] = 2
        order.append(node)

    visit(TRIGGER)
    depth = dict.fromkeys(order, 0)
    for node in reversed(order):
        for target in following.get(node, []):
            if (node, target) not in back:
                depth[target] = max(depth[target], depth[node] + 1)
    return depth, back


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
