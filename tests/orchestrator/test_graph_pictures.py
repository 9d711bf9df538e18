"""Journey pictures: conditions, audience, holdout, goal and exits drawn in full; labels
clear of every edge, step and other label; a PNG that opens; bad input refused."""

from __future__ import annotations

import itertools
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.graph import TRIGGER, PictureError, edges, mermaid, png, svg
from workflows.spec import Journey

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples/retail/journeys").glob("*.yaml"))
SVG = "{http://www.w3.org/2000/svg}"
runner = CliRunner()

WHEN = (
    "event.properties.total >= 50 and user.country in ['GB', 'IE', 'FR', 'DE', 'NL'] "
    "and not user.do_not_contact and user.loyalty_tier != 'bronze'"
)
AUDIENCE = "user.email_verified and user.marketing_consent == 'granted' and user.age >= 18"
GOAL_WHERE = "event.properties.stars >= 4 and event.properties.product_id == user.last_product_id"
EXIT_WHERE = "event.properties.reason != 'duplicate account merged by support team'"
RETRY = "journey.attempts < 3 and user.last_seen_days <= 14 and event.properties.total >= 100"

# Everything that could crowd a picture: long conditions, an experiment with two arms to
# the same step, loops back up, a wait that repeats itself, a quote in a condition.
BUSY = f"""
journey: busy
name: A busy journey with loops, long conditions and labels that could collide
trigger:
  event: Order Completed
  when: "{WHEN}"
audience: "{AUDIENCE}"
holdout: 12.5
exit_on:
  - Unsubscribed
  - event: Account Deleted
    where: "{EXIT_WHERE}"
goal:
  event: Review Written
  where: "{GOAL_WHERE}"
  within: 30d
  exit: false
start: pick
steps:
  pick:
    experiment:
      key: busy_test
      variants:
        - {{name: short_copy_with_a_long_variant_name, weight: 1, next: ask}}
        - {{name: long_copy, weight: 2, next: ask}}
        - {{name: none, weight: 1, next: done}}
  ask:
    send: {{channel: email, template: review_ask}}
    next: wait_review
  wait_review:
    wait_for: {{event: Review Written, timeout: 3d, on_event: thanks, on_timeout: again}}
  again:
    branch:
      - when: "{RETRY}"
        next: nudge
      - when: 'user.tier == "vip"'
        next: ask
      - next: done
  nudge:
    wait: 1d
    next: wait_review
  thanks:
    wait_for: {{event: Photo Uploaded, timeout: 1d, on_event: thanks, on_timeout: done}}
  done:
    exit: {{}}
"""


def parse(text: str) -> Journey:
    return Journey.model_validate(YAML(typ="safe").load(text))


JOURNEYS = {path.stem: parse(path.read_text()) for path in EXAMPLES} | {"busy": parse(BUSY)}


def squash(text: str) -> str:
    """Text without its whitespace: wrapping may break a line anywhere but loses nothing."""
    return "".join(text.split())


# ---- the SVG's geometry, as a viewer would see it ---------------------------


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float

    @staticmethod
    def of(rect: ET.Element) -> Box:
        return Box(*(float(rect.get(k, 0)) for k in ("x", "y", "width", "height")))

    def grown(self, by: float) -> Box:
        return Box(self.x - by, self.y - by, self.w + 2 * by, self.h + 2 * by)

    def overlaps(self, other: Box) -> bool:
        return (
            self.x < other.x + other.w
            and other.x < self.x + self.w
            and self.y < other.y + other.h
            and other.y < self.y + self.h
        )

    def contains(self, x: float, y: float) -> bool:
        return self.x <= x <= self.x + self.w and self.y <= y <= self.y + self.h

    def crossed_by(self, p: tuple[float, float], q: tuple[float, float]) -> bool:
        """Whether segment pq touches the box (Liang-Barsky clipping)."""
        (x0, y0), (x1, y1) = p, q
        low, high = 0.0, 1.0
        for step, room in (
            (x0 - x1, x0 - self.x),
            (x1 - x0, self.x + self.w - x0),
            (y0 - y1, y0 - self.y),
            (y1 - y0, self.y + self.h - y0),
        ):
            if step == 0:
                if room < 0:
                    return False
            elif step < 0:
                low = max(low, room / step)
            else:
                high = min(high, room / step)
        return low <= high


def polyline(d: str) -> list[tuple[float, float]]:
    """An SVG path of M, L and C commands as points, each curve sampled 48 times."""
    tokens = re.findall(r"[MLC]|-?\d+(?:\.\d+)?", d)
    points: list[tuple[float, float]] = []
    command, i = "", 0
    while i < len(tokens):
        if tokens[i] in ("M", "L", "C"):
            command, i = tokens[i], i + 1
        numbers = [float(t) for t in tokens[i : i + (6 if command == "C" else 2)]]
        i += len(numbers)
        if command != "C":
            points.append((numbers[0], numbers[1]))
            continue
        (x0, y0), (x1, y1, x2, y2, x3, y3) = points[-1], numbers
        for n in range(1, 49):
            t = n / 48
            a, b, c, e = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3
            points.append((a * x0 + b * x1 + c * x2 + e * x3, a * y0 + b * y1 + c * y2 + e * y3))
    return points


@dataclass(frozen=True)
class Drawing:
    width: float
    height: float
    header: Box
    nodes: dict[str, Box]
    node_texts: dict[str, list[str]]
    labels: list[tuple[Box, list[str], list[tuple[float, float]]]]  # box, lines, text anchors
    paths: list[list[tuple[float, float]]]
    header_texts: list[str]


def drawing(text: str) -> Drawing:
    root = ET.fromstring(text)
    groups = list(root.iter(f"{SVG}g"))

    def rect(group: ET.Element) -> Box:
        found = group.find(f"{SVG}rect")
        assert found is not None
        return Box.of(found)

    def lines(group: ET.Element) -> list[str]:
        return [t.text or "" for t in group.iter(f"{SVG}text")]

    header = next(g for g in groups if g.get("class") == "header")
    nodes = [g for g in groups if g.get("class") == "node"]
    return Drawing(
        width=float(root.get("width", 0)),
        height=float(root.get("height", 0)),
        header=rect(header),
        nodes={g.get("data-node", ""): rect(g) for g in nodes},
        node_texts={g.get("data-node", ""): lines(g) for g in nodes},
        labels=[
            (
                rect(g),
                lines(g),
                [(float(t.get("x", 0)), float(t.get("y", 0))) for t in g.iter(f"{SVG}text")],
            )
            for g in groups
            if g.get("class") == "edge-label"
        ],
        paths=[
            polyline(p.get("d", "")) for p in root.iter(f"{SVG}path") if p.get("class") == "edge"
        ],
        header_texts=lines(header),
    )


# ---- everything drawn, nothing cut ------------------------------------------


def test_mermaid_draws_entry_and_outcomes_in_full() -> None:
    text = mermaid(JOURNEYS["busy"])
    assert text.startswith("flowchart TD\n")
    assert '|"user.tier == #quot;vip#quot;"|' in text  # a raw quote would end the label
    assert "#gt;= 100" in text  # and a raw > could start HTML
    readable = (
        text.replace("<br>", " ")
        .replace("#quot;", '"')
        .replace("#lt;", "<")
        .replace("#gt;", ">")
        .replace("#35;", "#")
    )
    trigger = next(line for line in readable.splitlines() if line.startswith(f"  {TRIGGER}("))
    for fact in ("on Order Completed", f"when {WHEN}", f"audience: {AUDIENCE}", "holdout: 12.5%"):
        assert fact in trigger
    for fact in (
        f"goal: Review Written where {GOAL_WHERE} within 30d; the journey goes on after it",
        "exits on Unsubscribed",
        f"exits on Account Deleted where {EXIT_WHERE}",
        f'again -->|"{RETRY}"| nudge',
        'again -->|"user.tier == "vip""| ask',
    ):
        assert fact in readable
    assert "…" not in text


def test_svg_draws_entry_and_outcomes_in_full() -> None:
    text = svg(JOURNEYS["busy"])
    picture = drawing(text)
    trigger = squash(" ".join(picture.node_texts[TRIGGER]))
    for fact in (f"when {WHEN}", f"audience: {AUDIENCE}", "holdout: 12.5% kept out as a control"):
        assert squash(fact) in trigger
    header = squash(" ".join(picture.header_texts))
    assert squash(JOURNEYS["busy"].name) in header
    for fact in (
        f"goal: Review Written where {GOAL_WHERE} within 30d; the journey goes on after it",
        "exits on Unsubscribed",
        f"exits on Account Deleted where {EXIT_WHERE}",
    ):
        assert squash(fact) in header
    assert "…" not in text


@pytest.mark.parametrize(
    ("name", "facts"),
    [
        (
            "cart_abandonment",
            [
                "on Cart Abandoned",
                "when event.properties.cart_value >= 20",
                "audience: not user.do_not_contact",
                "one instance per user and event.properties.cart_id",
            ],
        ),
        ("weekly_newsletter", ["everyone in newsletter, cron 0 9 * * MON", "holdout: 5%"]),
        ("welcome_series", ["on Signed Up"]),
        ("win_back", ["on Segment Entered (lapsed)", "holdout: 10%"]),
    ],
)
def test_examples_show_their_entry_goal_and_exits(name: str, facts: list[str]) -> None:
    journey = JOURNEYS[name]
    picture = drawing(svg(journey))
    trigger = squash(" ".join(picture.node_texts[TRIGGER]))
    assert all(squash(fact) in trigger for fact in facts)
    assert journey.goal is not None
    header = " ".join(picture.header_texts)
    goal = journey.goal
    anyone = " of any instance" if goal.any_instance else ""
    assert f"goal: {goal.event}{anyone} within {goal.within.days}d" in header
    assert all(f"exits on {match.event}" in header for match in journey.exit_on)
    if journey.instance:  # which events are any cart's, which this cart's
        assert "exits on Order Completed of any instance" in header
        assert "exits on Cart Emptied" in header
        assert "Cart Emptied of any instance" not in header


# ---- labels clear of edges, steps and each other -----------------------------


@pytest.mark.parametrize("name", sorted(JOURNEYS))
def test_labels_sit_clear_of_edges_steps_and_each_other(name: str) -> None:
    journey = JOURNEYS[name]
    picture = drawing(svg(journey))
    canvas = Box(0, 0, picture.width, picture.height)
    labels = [box for box, _, _ in picture.labels]
    assert len(picture.paths) == len(edges(journey))
    assert sorted(squash(" ".join(lines)) for _, lines, _ in picture.labels) == sorted(
        squash(e.label) for e in edges(journey) if e.label
    )
    for box, lines, anchors in picture.labels:
        near = box.grown(1)  # clear by at least a pixel, not merely not crossing
        for path in picture.paths:
            assert not any(near.crossed_by(p, q) for p, q in itertools.pairwise(path)), lines
        for step, other in picture.nodes.items():
            assert not near.overlaps(other), (lines, step)
        assert not near.overlaps(picture.header)
        assert sum(near.overlaps(other) for other in labels) == 1, lines  # itself only
        assert all(box.contains(x, y) for x, y in anchors)
    for (step, box), (other_step, other) in itertools.combinations(picture.nodes.items(), 2):
        assert not box.grown(1).overlaps(other), (step, other_step)
    for step, box in picture.nodes.items():
        inside = box.grown(-1)  # edges end on a box's border, never run through one
        for path in picture.paths:
            assert not any(inside.crossed_by(p, q) for p, q in itertools.pairwise(path)), step
    for box in [picture.header, *picture.nodes.values(), *labels]:
        assert canvas.contains(box.x, box.y)
        assert canvas.contains(box.x + box.w, box.y + box.h)
    for path in picture.paths:
        assert all(canvas.contains(x, y) for x, y in path)
        assert not any(picture.header.crossed_by(p, q) for p, q in itertools.pairwise(path))


# ---- PNG ---------------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int]:
    """Check a PNG chunk by chunk (signature, CRCs, IHDR first, IEND last, image data of
    the right length) and return its width and height."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        body = data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append((kind, body))
        at += 12 + length
    assert chunks[0][0] == b"IHDR"
    assert chunks[-1] == (b"IEND", b"")
    width, height, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
    assert depth == 8
    assert colour in (2, 6)  # RGB or RGBA
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(pixels) == height * (1 + width * (4 if colour == 6 else 3))
    assert len(set(pixels)) > 32  # a drawing, not a blank page
    return width, height


@pytest.mark.parametrize("name", ["cart_abandonment", "busy"])
def test_png_is_the_svg_at_twice_the_size(name: str) -> None:
    journey = JOURNEYS[name]
    picture = drawing(svg(journey))
    width, height = png_size(png(journey))
    assert (width, height) == (round(2 * picture.width), round(2 * picture.height))
    assert 400 < width < 4000
    assert 400 < height < 4000


def test_png_without_a_font_is_refused() -> None:
    with pytest.raises(PictureError, match="no font found"):
        png(JOURNEYS["win_back"], fonts=[])


# ---- the command -------------------------------------------------------------


def test_graph_command_prints_mermaid_and_writes_both_pictures(tmp_path: Path) -> None:
    out_svg, out_png = tmp_path / "cart.svg", tmp_path / "cart.png"
    result = runner.invoke(
        app,
        ["journeys", "graph", str(EXAMPLES[0]), "--svg", str(out_svg), "--png", str(out_png)],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("flowchart TD\n")
    assert f"wrote {out_png}" in result.stderr
    assert drawing(out_svg.read_text()).nodes.keys() == {TRIGGER, *JOURNEYS[EXAMPLES[0].stem].steps}
    png_size(out_png.read_bytes())


def test_graph_command_runs_as_installed(tmp_path: Path) -> None:
    command = Path(sys.executable).parent / "orchestrator"
    out = tmp_path / "win_back.png"
    done = subprocess.run(
        [str(command), "journeys", "graph", str(EXAMPLES[-1]), "--png", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "wait_response" in done.stdout
    png_size(out.read_bytes())


def _broken(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


CART = EXAMPLES[0].read_text()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "journey: broken\nname: Broken\ntrigger: {event: Signed Up\nstart: a\n",
            ["broken.yaml:4:6: YAML: expected ',' or '}', but got ':'"],
        ),
        ("- a list\n- not a journey\n", ["broken.yaml:1:1: a journey file must be a mapping"]),
        (
            _broken(CART, "timeout: 1d", "timeout: tomorrow"),
            ["broken.yaml:51:16: steps.wait_again.wait_for.timeout: 'tomorrow' is not a duration"],
        ),
        (
            _broken(CART, "on_event: done", "on_event: dnoe"),
            [
                "broken.yaml:34:17: steps.wait_for_purchase.wait_for.on_event: next step 'dnoe' "
                "is not defined in steps",
                "broken.yaml:52:17: steps.wait_again.wait_for.on_event: next step 'dnoe' "
                "is not defined in steps",
            ],
        ),
    ],
    ids=["yaml", "not-a-mapping", "schema", "graph"],
)
def test_graph_command_refuses_an_invalid_journey_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.yaml").write_text(text)
    result = runner.invoke(
        app, ["journeys", "graph", "broken.yaml", "--svg", "out.svg", "--png", "out.png"]
    )
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert len(lines) == len(expected)
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith(start), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.yaml"]


def test_graph_command_reports_an_unwritable_picture(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "cart.png"
    result = runner.invoke(app, ["journeys", "graph", str(EXAMPLES[0]), "--png", str(target)])
    assert result.exit_code == 1
    assert f"{target}: cannot write:" in result.stderr
