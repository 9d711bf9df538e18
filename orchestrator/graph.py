"""Pictures of a journey: Mermaid text (for docs and pull requests), a standalone SVG,
and a PNG of that SVG (for chat tools that show no SVG)."""

from __future__ import annotations

import itertools
import struct
import textwrap
import zlib
from dataclasses import dataclass
from datetime import timedelta
from html import escape
from pathlib import Path

from rules.durations import format_duration
from workflows.spec import (
    BranchStep,
    EventMatch,
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


class PictureError(Exception):
    """A picture that cannot be drawn on this machine (no font for its text)."""


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
            return f"wait {_duration(wait)}"
        case WaitForStep(wait_for=w):
            since = ""
            if w.since == "entry":
                since = " (heard since entry)"
            elif isinstance(w.since, timedelta):
                since = f" (heard in the {_duration(w.since)} before)"
            mine = " of any instance" if w.any_instance else ""
            return f"wait up to {_duration(w.timeout)} for {w.event}{mine}{since}"
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


def entry_lines(journey: Journey) -> list[str]:
    """Who enters and when: the trigger with its condition, the audience, the holdout."""
    trigger = journey.trigger
    if trigger.audience is not None:
        schedule = trigger.audience.schedule
        when = f"once at {schedule.at.isoformat()}" if schedule.at else f"cron {schedule.cron}"
        zone = f" ({schedule.timezone})" if schedule.timezone else ""
        lines = [f"everyone in {trigger.audience.segment}, {when}{zone}"]
    else:
        segment = f" ({trigger.segment})" if trigger.segment else ""
        lines = [f"on {trigger.event}{segment}"]
        if trigger.when:
            lines.append(f"when {trigger.when}")
    if journey.audience:
        lines.append(f"audience: {journey.audience}")
    if journey.instance:
        lines.append(f"one instance per user and {journey.instance}")
    if journey.holdout:
        lines.append(f"holdout: {journey.holdout:g}% kept out as a control")
    return lines


def outcome_lines(journey: Journey) -> list[str]:
    """How users leave: the goal, and the events that end the journey early."""
    lines = []
    if (goal := journey.goal) is not None:
        ends = "reaching it ends the journey" if goal.exit else "the journey goes on after it"
        lines.append(f"goal: {_match(goal)} within {_duration(goal.within)}; {ends}")
    lines += [f"exits on {_match(m)}" for m in journey.exit_on]
    if journey.instance:
        lines.append("(waits, exits and the goal hear their own instance's events "
                     "unless marked)")  # fmt: skip
    return lines


def _duration(value: timedelta) -> str:
    """Whole days in days (`30d`, not `4w2d`), as journeys are written; else compact."""
    whole_days = value >= timedelta(days=1) and value == timedelta(days=value.days)
    return f"{value.days}d" if whole_days else format_duration(value)


def _match(match: EventMatch) -> str:
    segment = f" ({match.segment})" if match.segment else ""
    where = f" where {match.where}" if match.where else ""
    mine = " of any instance" if match.any_instance else ""
    return f"{match.event}{segment}{mine}{where}"


# ---- Mermaid ---------------------------------------------------------------

OUTCOMES = "__outcomes"


def mermaid(journey: Journey) -> str:
    """Mermaid flowchart text; the goal and exits in a box of their own beside the trigger."""
    lines = ["flowchart TD", f'  {TRIGGER}(["{_m(entry_lines(journey))}"])']
    if outcomes := outcome_lines(journey):
        lines += [
            f'  {OUTCOMES}["{_m(outcomes)}"]',
            f"  style {OUTCOMES} fill:#f7f7f7,stroke:#999,stroke-dasharray:4 3",
        ]
    for step_id, step in journey.steps.items():
        label = _m([f"{step_id}: {describe(step)}"])
        shape = {
            WaitStep: ('(["', '"])'),
            WaitForStep: ('(["', '"])'),
            BranchStep: ('{"', '"}'),
            ExperimentStep: ('{{"', '"}}'),
            ExitStep: ('((" ', ' "))'),
        }.get(type(step), ('["', '"]'))
        lines.append(f"  {step_id}{shape[0]}{label}{shape[1]}")
    for edge in edges(journey):
        arrow = f' -->|"{_m([edge.label], 36)}"| ' if edge.label else " --> "
        lines.append(f"  {edge.source}{arrow}{edge.target}")
    return "\n".join(lines) + "\n"


def _m(lines: list[str], width: int = 48) -> str:
    """Lines as one Mermaid label: wrapped, with `<br>` between them and entity codes for
    the characters Mermaid would read as syntax or HTML."""
    wrapped = [part for line in lines for part in _wrap_chars(line, width)]
    return "<br>".join(
        part.replace("#", "#35;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
        for part in wrapped
    )


def _wrap_chars(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, max(width, 8), break_on_hyphens=False) or [""]


# ---- SVG -------------------------------------------------------------------

_FONT = "Helvetica, Arial, 'Liberation Sans', 'DejaVu Sans', sans-serif"
# Character widths in em, rounded up from DejaVu Sans (the widest of the fonts named), so
# text measured here fits its box in any of them.
_NARROW, _SLIM = " ijl'|!.,:;`", 'frt()[]{}/\\-I"*'
_WIDE, _WIDEST = "=<>+~^ABCDEFGHJKLNOPQRSTUVXYZ", "mwMW@%&"
_STEP_W, _TRIGGER_W, _LABEL_W = 240, 320, 200
_GAP_X, _GAP_Y, _PAD = 28, 22, 24
_COLOURS = {
    WaitStep: "#fff4d6",
    WaitForStep: "#fff4d6",
    BranchStep: "#e3ecff",
    ExperimentStep: "#f0e3ff",
    SendStep: "#dff5e3",
    ExitStep: "#eeeeee",
}


@dataclass(frozen=True)
class _Text:
    """Lines of one style: font size, line height, weight."""

    lines: list[str]
    size: float
    step: float
    bold: bool = False

    @staticmethod
    def wrapped(texts: list[str], width: float, size: float, step: float, bold: bool = False
                ) -> _Text:  # fmt: skip
        return _Text(
            [part for t in texts for part in _wrap(t, width, size, bold)], size, step, bold
        )

    @property
    def width(self) -> float:
        return max((_measure(line, self.size, self.bold) for line in self.lines), default=0)

    @property
    def height(self) -> float:
        return len(self.lines) * self.step

    def svg(self, x: float, top: float, anchor: str = "middle") -> str:
        weight = ' font-weight="bold"' if self.bold else ""
        return "".join(
            f'<text x="{x:.1f}" y="{top + i * self.step + (self.step + self.size * 0.7) / 2:.1f}" '
            f'font-size="{self.size}"{weight} text-anchor="{anchor}">{escape(line)}</text>'
            for i, line in enumerate(self.lines)
        )


def _measure(text: str, size: float, bold: bool = False) -> float:
    em = sum(
        0.33 if c in _NARROW else 0.42 if c in _SLIM else 0.78 if c in _WIDE
        else 1.0 if c in _WIDEST else 0.64
        for c in text
    )  # fmt: skip
    return em * size * (1.12 if bold else 1.0)


def _wrap(text: str, width: float, size: float, bold: bool = False) -> list[str]:
    """Lines no wider than `width` pixels, broken at spaces; a word longer than a whole
    line is broken where it must be. Nothing is left out."""
    lines: list[str] = []
    line = ""
    for word in text.replace("\n", " ").split(" "):
        joined = f"{line} {word}" if line else word
        if _measure(joined, size, bold) <= width:
            line = joined
            continue
        if line:
            lines.append(line)
        while _measure(word, size, bold) > width:
            cut = len(word) - 1
            while cut > 1 and _measure(word[:cut], size, bold) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    return [*lines, line] if line or not lines else lines


@dataclass
class _Item:
    """A step, a bend of an edge through a layer, or an edge's label, in one layer."""

    width: float
    height: float
    anchor: float  # where edges pass, from the item's left
    label: _Text | None = None
    x: float = 0  # of the anchor, once placed


@dataclass(frozen=True)
class _Route:
    edge: Edge
    chain: list[str]  # items from the upper end down
    upward: bool  # a loop back up: drawn against the chain


@dataclass(frozen=True)
class _Picture:
    width: float
    height: float
    text: str


def svg(journey: Journey) -> str:
    """A standalone SVG: who enters and how they leave, then the steps in layers from the
    trigger down, with each edge's label beside it."""
    return _draw(journey).text


def _draw(journey: Journey) -> _Picture:
    """A layered (Sugiyama-style) drawing. Steps sit in even layers and each edge gets a
    point in every layer it crosses, so it never runs behind a step; the odd layers between
    steps hold those points and the labels, each label right of its own edge's point. Within
    a layer items never overlap and edges only run vertically, and between layers there is
    nothing but edges: so no label can touch an edge, a step or another label."""
    depth, back = _layers(journey)
    boxes = {node: _box(journey, node) for node in [TRIGGER, *journey.steps] if node in depth}
    items: dict[str, _Item] = {}
    layers: dict[int, list[str]] = {}
    loops: dict[str, Edge] = {}
    for edge in edges(journey):
        if edge.source == edge.target:  # a wait that repeats: its loop's labels as one
            kept = loops.get(edge.source)
            joined = ", ".join(x for x in (kept.label if kept else "", edge.label) if x)
            loops[edge.source] = Edge(edge.source, edge.target, joined)
    for node, box in boxes.items():
        items[node] = _Item(box.width, box.height, box.width / 2)
        if (loop := loops.get(node)) is not None:
            items[node].width += 34
            if loop.label:
                items[node].label = text = _label(loop.label)
                items[node].width += text.width + 8
                items[node].height = max(box.height, text.height + 4)
        layers.setdefault(2 * depth[node], []).append(node)
    routes: list[_Route] = []
    for edge in edges(journey):
        if edge.source == edge.target or edge.target not in depth:
            continue
        upward = (edge.source, edge.target) in back
        top, bottom = (edge.target, edge.source) if upward else (edge.source, edge.target)
        labelled = 2 * depth[bottom] - 1 if upward else 2 * depth[top] + 1  # next to its source
        chain = [top]
        for layer in range(2 * depth[top] + 1, 2 * depth[bottom]):
            key = f"{len(routes)}>{layer}"
            if edge.label and layer == labelled:
                text = _label(edge.label)
                items[key] = _Item(12 + text.width + 8, text.height + 4, 4, text)
            else:
                items[key] = _Item(8, 0, 4)
            layers.setdefault(layer, []).append(key)
            chain.append(key)
        routes.append(_Route(edge, [*chain, bottom], upward))
    above: dict[str, list[str]] = {}
    below: dict[str, list[str]] = {}
    for route in routes:
        for a, b in itertools.pairwise(route.chain):
            below.setdefault(a, []).append(b)
            above.setdefault(b, []).append(a)
    layers = _order(layers, above, below)
    _place(layers, items, above, below)

    left = min(it.x - it.anchor for it in items.values())
    right = max(it.x - it.anchor + it.width for it in items.values())
    wrap = max(560, right - left - 20)
    name = _Text.wrapped([journey.name], wrap, 16, 20, bold=True)
    outcomes = _Text.wrapped(outcome_lines(journey), wrap, 12, 16)
    header_h = name.height + outcomes.height + 16
    inner = max(right - left, name.width + 20, outcomes.width + 20)

    # vertical: each layer a band as tall as its tallest item; edges bend between bands
    y = _PAD + header_h + 20
    band: dict[str, tuple[float, float]] = {}
    for layer in sorted(layers):
        height = max(items[k].height for k in layers[layer])
        band |= dict.fromkeys(layers[layer], (y, y + height))
        y += height + _GAP_Y
    width, height = inner + 2 * _PAD, y - _GAP_Y + _PAD
    shift = _PAD + (inner - (right - left)) / 2 - left
    for item in items.values():
        item.x += shift

    def middle(key: str) -> float:
        return sum(band[key]) / 2

    # ports: a step's edges leave (and arrive) side by side, in the order they go
    ends: dict[tuple[str, str], list[tuple[float, int]]] = {}
    for i, route in enumerate(routes):
        ends.setdefault(("bottom", route.chain[0]), []).append((items[route.chain[1]].x, i))
        ends.setdefault(("top", route.chain[-1]), []).append((items[route.chain[-2]].x, i))
    ports: dict[tuple[str, int], float] = {}
    for (side, key), found in ends.items():
        spacing = min(20.0, (boxes[key].width - 20) / max(len(found) - 1, 1))
        for n, (_, i) in enumerate(sorted(found)):
            ports[side, i] = items[key].x + (n - (len(found) - 1) / 2) * spacing

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="{_FONT}">',
        "<defs><marker id='arrow' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='8' "
        "markerHeight='8' orient='auto-start-reverse'><path d='M 0 0 L 10 5 L 0 10 z' "
        "fill='#555'/></marker></defs>",
        f"<title>{escape(journey.name)}</title>",
        f'<rect class="background" width="{width:.0f}" height="{height:.0f}" fill="#fff"/>',
        f'<g class="header"><rect x="{_PAD}" y="{_PAD}" width="{inner:.1f}" '
        f'height="{header_h:.1f}" rx="4" fill="#f7f7f7" stroke="#bbb" stroke-dasharray="4 3"/>'
        f"{name.svg(_PAD + 10, _PAD + 8, 'start')}"
        f"{outcomes.svg(_PAD + 10, _PAD + 8 + name.height, 'start')}</g>",
    ]
    for i, route in enumerate(routes):
        top, bottom = route.chain[0], route.chain[-1]
        points = [
            (ports["bottom", i], middle(top) + boxes[top].height / 2),
            (ports["bottom", i], band[top][1]),
        ]
        for key in route.chain[1:-1]:
            points += [(items[key].x, band[key][0]), (items[key].x, band[key][1])]
        points += [
            (ports["top", i], band[bottom][0]),
            (ports["top", i], middle(bottom) - boxes[bottom].height / 2),
        ]
        parts.append(_edge_path(points[::-1] if route.upward else points, route.edge))
    for key, box in boxes.items():
        item, cy = items[key], middle(key)
        if (loop := loops.get(key)) is not None:
            parts.append(_edge_path([], loop, (item.x + box.width / 2, cy)))
            if item.label is not None:
                parts.append(_label_svg(item.label, item.x + box.width / 2 + 34, cy, loop))
        parts.append(box.svg(key, item.x, cy))
    for route in routes:
        for key in route.chain[1:-1]:
            if (label := items[key].label) is not None:
                parts.append(_label_svg(label, items[key].x + 8, middle(key), route.edge))
    parts.append("</svg>")
    return _Picture(width, height, "\n".join(parts) + "\n")


@dataclass(frozen=True)
class _Box:
    """A step's (or the trigger's) box: a bold title over its detail lines."""

    title: _Text
    detail: _Text
    width: float
    fill: str
    radius: float
    flush_left: bool = False  # long conditions read better from a straight left edge

    @property
    def height(self) -> float:
        return 16 + self.title.height + self.detail.height

    def svg(self, key: str, cx: float, cy: float) -> str:
        top = cy - self.height / 2
        detail = (
            self.detail.svg(cx - self.width / 2 + 10, top + 8 + self.title.height, "start")
            if self.flush_left
            else self.detail.svg(cx, top + 8 + self.title.height)
        )
        return (
            f'<g class="node" data-node="{escape(key)}"><rect x="{cx - self.width / 2:.1f}" '
            f'y="{top:.1f}" width="{self.width}" height="{self.height:.1f}" '
            f'rx="{self.radius}" fill="{self.fill}" stroke="#444"/>'
            f"{self.title.svg(cx, top + 8)}{detail}</g>"
        )


def _box(journey: Journey, node: str) -> _Box:
    if node == TRIGGER:
        title, details, fill, radius, width = (
            "trigger", entry_lines(journey), "#ffe0e0", 18.0, _TRIGGER_W
        )  # fmt: skip
    else:
        step = journey.steps[node]
        title, details = node, [describe(step)]
        fill, radius, width = _COLOURS.get(type(step), "#ffffff"), 6.0, _STEP_W
    return _Box(
        _Text.wrapped([title], width - 20, 13, 16, bold=True),
        _Text.wrapped(details, width - 20, 11, 14),
        width,
        fill,
        radius,
        flush_left=node == TRIGGER,
    )


def _label(text: str) -> _Text:
    return _Text.wrapped([text], _LABEL_W, 11, 14)


def _label_svg(text: _Text, x: float, cy: float, edge: Edge) -> str:
    """A label with its left side at x, on a background that hides nothing (it is placed
    clear of every edge) but keeps it readable where the picture is busy."""
    top = cy - (text.height + 4) / 2
    return (
        f'<g class="edge-label" data-edge="{escape(edge.source)}>{escape(edge.target)}">'
        f'<rect x="{x:.1f}" y="{top:.1f}" width="{text.width + 8:.1f}" '
        f'height="{text.height + 4:.1f}" rx="3" fill="#fff" stroke="#ccc"/>'
        f"{text.svg(x + 4, top + 2, 'start')}</g>"
    )


def _edge_path(points: list[tuple[float, float]], edge: Edge,
               loop_at: tuple[float, float] | None = None) -> str:  # fmt: skip
    """Straight down within a layer, a smooth bend between layers (vertical at each end);
    or, for a step that goes to itself, a loop off its right-hand side."""
    if loop_at is not None:
        x, y = loop_at
        d = f"M {x:.1f} {y - 10:.1f} C {x + 32:.1f} {y - 22:.1f}, {x + 32:.1f} {y + 22:.1f}, "
        d += f"{x:.1f} {y + 10:.1f}"
    else:
        points = [p for p, q in itertools.zip_longest(points, points[1:]) if p != q]
        (x, y), d = points[0], f"M {points[0][0]:.1f} {points[0][1]:.1f}"
        for nx, ny in points[1:]:
            if abs(nx - x) < 0.05:
                d += f" L {nx:.1f} {ny:.1f}"
            else:
                mid = (y + ny) / 2
                d += f" C {x:.1f} {mid:.1f}, {nx:.1f} {mid:.1f}, {nx:.1f} {ny:.1f}"
            x, y = nx, ny
    return (
        f'<path class="edge" data-edge="{escape(edge.source)}>{escape(edge.target)}" d="{d}" '
        f'fill="none" stroke="#555" stroke-width="1.4" marker-end="url(#arrow)"/>'
    )


def _order(layers: dict[int, list[str]], above: dict[str, list[str]],
           below: dict[str, list[str]]) -> dict[int, list[str]]:  # fmt: skip
    """Order each layer by its neighbours' mean position, sweeping down and up, and keep
    the order with the fewest crossings."""
    best, fewest = layers, _crossings(layers, below)
    current = {layer: list(keys) for layer, keys in layers.items()}
    for _ in range(4):
        for sweep, step, neighbours in (
            (sorted(current)[1:], -1, above),
            (sorted(current)[-2::-1], 1, below),
        ):
            for layer in sweep:
                where = {key: i for i, key in enumerate(current.get(layer + step, []))}
                mine = {key: float(i) for i, key in enumerate(current[layer])}
                for key in mine:
                    if found := [where[n] for n in neighbours.get(key, []) if n in where]:
                        mine[key] = sum(found) / len(found)
                current[layer].sort(key=mine.__getitem__)
            if (count := _crossings(current, below)) < fewest:
                best, fewest = {layer: list(keys) for layer, keys in current.items()}, count
    return best


def _crossings(layers: dict[int, list[str]], below: dict[str, list[str]]) -> int:
    total = 0
    for layer, keys in layers.items():
        where = {key: i for i, key in enumerate(layers.get(layer + 1, []))}
        pairs = [(i, where[b]) for i, a in enumerate(keys) for b in below.get(a, []) if b in where]
        total += sum(
            (a1 - a2) * (b1 - b2) < 0 for (a1, b1), (a2, b2) in itertools.combinations(pairs, 2)
        )
    return total


def _place(layers: dict[int, list[str]], items: dict[str, _Item],
           above: dict[str, list[str]], below: dict[str, list[str]]) -> None:  # fmt: skip
    """Put each item under (or over) the middle of its neighbours, sweeping down and up,
    as near as the layer's order and spacing let it."""
    for keys in layers.values():
        _spread([items[k] for k in keys], [0.0] * len(keys))
    for _ in range(6):
        for sweep, neighbours in ((sorted(layers)[1:], above), (sorted(layers)[-2::-1], below)):
            for layer in sweep:
                row = [items[k] for k in layers[layer]]
                wanted = [
                    sum(items[n].x for n in near) / len(near)
                    if (near := neighbours.get(k))
                    else it.x
                    for k, it in zip(layers[layer], row, strict=True)
                ]
                _spread(row, wanted)


def _spread(row: list[_Item], wanted: list[float]) -> None:
    """Least-squares positions for a row, in order and at least the gap apart: pooling
    adjacent violators over each item's offset from the first."""
    offsets = [0.0]
    for a, b in itertools.pairwise(row):
        offsets.append(offsets[-1] + a.width - a.anchor + _GAP_X + b.anchor)
    pools: list[tuple[float, int]] = []  # (sum of targets, how many)
    for target in (w - o for w, o in zip(wanted, offsets, strict=True)):
        total, count = target, 1
        while pools and pools[-1][0] / pools[-1][1] > total / count:
            total, count = total + pools[-1][0], count + pools[-1][1]
            pools.pop()
        pools.append((total, count))
    i = 0
    for total, count in pools:
        for _ in range(count):
            row[i].x = total / count + offsets[i]
            i += 1


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


# ---- PNG -------------------------------------------------------------------

PNG_SCALE = 2.0  # pixels per SVG unit: crisp on dense screens and after a chat's downscaling
_MAX_PIXELS = 40_000_000  # a very large journey is drawn smaller rather than at 160 MB
_FONT_PROBE = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20">'
    f'<text x="2" y="15" font-size="12" font-family="{_FONT}">Ag</text></svg>'
)


def png(journey: Journey, *, fonts: list[Path] | None = None) -> bytes:
    """The SVG as a PNG on white, drawn by resvg (no browser, no system library), with the
    system's fonts or only the given font files.

    resvg silently leaves out text it has no font for: so a probe word is drawn first,
    and a picture without words is refused."""
    import resvg_py

    only = fonts is not None
    files = [str(f) for f in fonts or []]
    probe = resvg_py.svg_to_bytes(svg_string=_FONT_PROBE, skip_system_fonts=only, font_files=files)
    if not _has_ink(probe):
        raise PictureError(
            "no font found to draw the picture's text: install one "
            "(on Debian or Ubuntu: apt-get install fonts-dejavu-core)"
        )
    picture = _draw(journey)
    scale = min(PNG_SCALE, (_MAX_PIXELS / (picture.width * picture.height)) ** 0.5)
    return resvg_py.svg_to_bytes(
        svg_string=picture.text,
        background="white",
        zoom=scale,
        skip_system_fonts=only,
        font_files=files,
    )


def _has_ink(data: bytes) -> bool:
    """Whether a PNG on a transparent background has any pixel drawn: a row of blank
    pixels filters to zeros whatever its filter, so any non-zero byte past each row's
    filter-type byte is ink."""
    chunks: dict[bytes, bytes] = {}
    at = 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8]
        chunks[kind] = chunks.get(kind, b"") + data[at + 8 : at + 8 + length]
        at += 12 + length
    _, rows = struct.unpack(">II", chunks[b"IHDR"][:8])
    raw = zlib.decompress(chunks[b"IDAT"])
    stride = len(raw) // rows
    return any(any(raw[r * stride + 1 : (r + 1) * stride]) for r in range(rows))
