"""Journey validation: schema, graph, channels and templates, every problem at `file:line:col`."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from croniter import croniter  # type: ignore[import-untyped]
from pydantic import ValidationError

from channels.templates import (
    RenderError,
    Template,
    check_syntax,
    limit_problems,
    render_section,
)
from orchestrator.sources import InvalidSource, Loc, Problem, Source, load
from orchestrator.workspace import Workspace
from rules.expressions import event_context, user_context
from workflows.spec import (
    AUDIENCE_EVENT,
    EXIT,
    BranchStep,
    ExperimentStep,
    Journey,
    SendStep,
    Step,
    UpdateProfileStep,
    WaitForStep,
    WebhookStep,
    is_wait,
    successors,
)


@dataclass(frozen=True)
class CheckedJourney:
    """A valid journey and the templates it uses, ready to deploy."""

    file: str
    source: Source
    journey: Journey
    templates: dict[str, Template]


def check_files(paths: Iterable[Path], workspace: Workspace) -> list[Problem]:
    """Every problem in the given journey files (and the templates they use)."""
    problems: set[Problem] = set()
    for path in paths:
        try:
            source = load(path, display=workspace.display(path))
        except InvalidSource as exc:
            problems.update(exc.problems)
            continue
        _, found = check_journey(source, workspace)
        problems.update(found)
    return sorted(problems)


def check_workspace(workspace: Workspace) -> tuple[list[CheckedJourney], list[Problem]]:
    """Validate every journey of a workspace; keys must be unique across files."""
    checked: list[CheckedJourney] = []
    problems: set[Problem] = set()
    seen: dict[str, str] = {}
    for path in workspace.journey_files:
        try:
            source = load(path, display=workspace.display(path))
        except InvalidSource as exc:
            problems.update(exc.problems)
            continue
        journey, found = check_journey(source, workspace)
        problems.update(found)
        if journey is None:
            continue
        if journey.journey in seen:
            problems.add(
                source.problem(
                    ["journey"],
                    f"journey key '{journey.journey}' is also used by {seen[journey.journey]}",
                )
            )
            continue
        seen[journey.journey] = source.file
        checked.append(checked_journey(source, journey, workspace))
    return checked, sorted(problems)


def checked_journey(source: Source, journey: Journey, workspace: Workspace) -> CheckedJourney:
    """A valid journey with the workspace's templates its sends use."""
    used = {t for s in journey.steps.values() if isinstance(s, SendStep) for t in s.send.templates}
    templates = {name: workspace.templates[name] for name in sorted(used)}
    return CheckedJourney(source.file, source, journey, templates)


def check_journey(source: Source, workspace: Workspace) -> tuple[Journey | None, list[Problem]]:
    """Parse one journey and check it against the workspace; (None, problems) if invalid."""
    if not isinstance(source.data, dict):
        return None, [source.problem([], "a journey file must be a mapping")]
    try:
        journey = Journey.model_validate(source.data)
    except ValidationError as exc:
        return None, source.problems_from(exc)
    problems = [
        *(source.problem(loc, msg) for loc, msg in graph_problems(journey)),
        *_send_problems(source, journey, workspace),
        *_inline_template_problems(source, journey),
        *(
            source.problem(
                ["steps", step_id, "webhook"],
                "webhook steps are signed: set `webhooks.signing_secret` in orchestrator.yaml",
            )
            for step_id, step in journey.steps.items()
            if isinstance(step, WebhookStep) and workspace.config.webhooks is None
        ),
        *_segment_problems(source, journey, workspace),
        *(source.problem(loc, msg) for loc, msg in _instance_problems(journey)),
        *(
            source.problem(
                ["migrate", "steps", old],
                f"no step '{new}' in this journey to move users to (a step, or `exit`)",
            )
            for old, new in (journey.migrate.steps.items() if journey.migrate else [])
            if new != EXIT and new not in journey.steps
        ),
    ]
    return (None if problems else journey), problems


def _instance_problems(journey: Journey) -> Iterator[tuple[Loc, str]]:
    """`any_instance` says something only in a keyed journey."""
    if journey.instance is not None:
        return
    matches: list[tuple[Loc, Any]] = [(["exit_on", i], m) for i, m in enumerate(journey.exit_on)]
    if journey.goal is not None:
        matches.append((["goal"], journey.goal))
    for step_id, step in journey.steps.items():
        if isinstance(step, WaitForStep):
            matches.append((["steps", step_id, "wait_for"], step.wait_for))
    for loc, match in matches:
        if match.any_instance:
            yield [*loc, "any_instance"], "`any_instance` needs a keyed journey (`instance:`)"


# ---- graph -----------------------------------------------------------------


def _next_refs(step_id: str, step: Step) -> Iterator[tuple[list[str | int], str]]:
    base: list[str | int] = ["steps", step_id]
    match step:
        case WaitForStep(wait_for=w):
            yield [*base, "wait_for", "on_event"], w.on_event
            yield [*base, "wait_for", "on_timeout"], w.on_timeout
        case BranchStep(branch=arms):
            for i, arm in enumerate(arms):
                yield [*base, "branch", i, "next"], arm.next
        case ExperimentStep(experiment=e):
            for i, variant in enumerate(e.variants):
                yield [*base, "experiment", "variants", i, "next"], variant.next
        case _:
            for target in successors(step):
                yield [*base, "next"], target


def graph_problems(journey: Journey) -> Iterator[tuple[Loc, str]]:
    steps = journey.steps
    if journey.start not in steps:
        yield ["start"], f"start step '{journey.start}' is not defined in steps"
    for step_id, step in steps.items():
        for loc, target in _next_refs(step_id, step):
            if target not in steps:
                yield loc, f"next step '{target}' is not defined in steps"
            elif target == step_id and not is_wait(step):
                yield loc, f"step '{step_id}' goes to itself with no wait"
    if journey.start in steps:
        reached = _reachable(journey)
        for step_id in steps:
            if step_id not in reached:
                yield ["steps", step_id], f"step '{step_id}' is unreachable from '{journey.start}'"
    experiment_keys: dict[str, str] = {}
    for step_id, step in steps.items():
        if isinstance(step, ExperimentStep):
            key = step.experiment.key
            if key in experiment_keys:
                yield (
                    ["steps", step_id, "experiment", "key"],
                    f"experiment key '{key}' is also used by step '{experiment_keys[key]}'",
                )
            experiment_keys.setdefault(key, step_id)
    for cycle in _cycles_without_wait(journey):
        path = " -> ".join([*cycle, cycle[0]])
        yield ["steps", cycle[0]], f"steps loop with no wait: {path}"


def _reachable(journey: Journey) -> set[str]:
    seen, queue = {journey.start}, deque([journey.start])
    while queue:
        for target in successors(journey.steps[queue.popleft()]):
            if target in journey.steps and target not in seen:
                seen.add(target)
                queue.append(target)
    return seen


def _cycles_without_wait(journey: Journey) -> list[list[str]]:
    """Strongly connected groups of non-waiting steps (Tarjan): loops that never pause."""
    steps = journey.steps
    nodes = [s for s, step in steps.items() if not is_wait(step)]
    edges = {
        s: [t for t in successors(steps[s]) if t in steps and not is_wait(steps[t]) and t != s]
        for s in nodes
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group, key=list(steps).index))

    for node in nodes:
        if node not in index:
            visit(node)
    return groups


# ---- channels and templates -------------------------------------------------


def _send_problems(source: Source, journey: Journey, workspace: Workspace) -> Iterator[Problem]:
    configured = set(workspace.config.channels)
    for step_id, step in journey.steps.items():
        if not isinstance(step, SendStep):
            continue
        send = step.send
        base: list[str | int] = ["steps", step_id, "send"]
        channel_locs: list[tuple[Loc, str]] = (
            [([*base, "channel"], send.channel)]
            if send.channel is not None
            else [([*base, "channels", i], c) for i, c in enumerate(send.channels or [])]
        )
        for loc, channel in channel_locs:
            if channel not in configured:
                yield source.problem(
                    loc,
                    f"unknown channel '{channel}': orchestrator.yaml configures "
                    + (", ".join(sorted(configured)) or "no channels"),
                )
        wanted = send.content.recommendations if send.content else None
        named: list[tuple[Loc, str]] = [([*base, "template"], send.template)]
        if send.variants is not None:
            named += [
                ([*base, "variants", "templates", i], name)
                for i, name in enumerate(send.variants.templates)
            ]
        for template_loc, name in named:
            template = workspace.templates.get(name)
            if template is None:
                known = ", ".join(sorted(workspace.templates)) or "none"
                yield source.problem(template_loc, f"unknown template '{name}' (known: {known})")
                continue
            for loc, channel in channel_locs:
                if channel in configured and getattr(template, channel) is None:
                    yield source.problem(loc, f"template '{name}' has no {channel} section")
            yield from _template_problems(
                name, template, journey, workspace, wanted.k if wanted else 0
            )


def _template_problems(
    name: str, template: Template, journey: Journey, workspace: Workspace, items: int
) -> Iterator[Problem]:
    """Syntax errors, failures to render against the workspace's sample profile (with
    `items` sample recommendations), and renderings over the channel's limits."""
    source = workspace.template_sources[name]
    sample = workspace.config.sample_profile
    examples = sample.recommendations
    context = {
        "user": user_context(sample.user_id, sample.traits),
        "event": event_context(journey.trigger.event or AUDIENCE_EVENT, sample.event),
        "journey": {"key": journey.journey, "name": journey.name, "version": 0},
        "recommendations": [examples[i % len(examples)] for i in range(items)],
    }
    for channel in template.channels():
        fields = template.fields(channel)
        broken = check_syntax(fields)
        for err in broken:
            yield source.problem(
                [channel, *err.field.split(".")],
                f"template does not parse: {err.reason}",
                line_in_value=err.line,
            )
        if broken:
            continue
        try:
            rendered = render_section(fields, context)
        except RenderError as err:
            yield source.problem(
                [channel, *err.field.split(".")],
                f"fails to render against the sample profile: {err.reason}",
                line_in_value=err.line,
            )
            continue
        for over in limit_problems(channel, rendered):
            yield source.problem([channel, over.field], f"with the sample profile, {over.reason}")


def _segment_problems(source: Source, journey: Journey, workspace: Workspace) -> Iterator[Problem]:
    """Segments a journey names must be in segments.yaml; cron schedules must parse;
    computed traits are not a journey's to set."""
    definitions = workspace.definitions
    trigger = journey.trigger
    named: list[tuple[Loc, str | None]] = [
        (("trigger", "segment"), trigger.segment),
        (("goal", "segment"), journey.goal.segment if journey.goal else None),
    ]
    named += [(("exit_on", i, "segment"), m.segment) for i, m in enumerate(journey.exit_on)]
    named += [
        (("steps", step_id, "wait_for", "segment"), step.wait_for.segment)
        for step_id, step in journey.steps.items()
        if isinstance(step, WaitForStep)
    ]
    if trigger.audience is not None:
        named.append((("trigger", "audience", "segment"), trigger.audience.segment))
        cron = trigger.audience.schedule.cron
        if cron is not None and not croniter.is_valid(cron):
            yield source.problem(["trigger", "audience", "schedule", "cron"],
                                 f"{cron!r} is not a cron schedule")  # fmt: skip
    known = ", ".join(sorted(definitions.segments)) or "none: add segments.yaml"
    for loc, key in named:
        if key is not None and key not in definitions.segments:
            yield source.problem(loc, f"unknown segment '{key}' (known: {known})")
    for step_id, step in journey.steps.items():
        if isinstance(step, UpdateProfileStep):
            update = step.update_profile
            for name in sorted(definitions.traits.keys() & {*update.set, *update.unset}):
                where = "set" if name in update.set else "unset"
                yield source.problem(
                    ["steps", step_id, "update_profile", where, name],
                    f"'{name}' is a computed trait (traits.yaml): events change it, not journeys",
                    key=True,
                )


def _inline_template_problems(source: Source, journey: Journey) -> Iterator[Problem]:
    """String values of update_profile and webhook steps are templates too."""
    for step_id, step in journey.steps.items():
        parts: list[tuple[list[str | int], Any]] = []
        if isinstance(step, UpdateProfileStep):
            parts.append((["steps", step_id, "update_profile", "set"], step.update_profile.set))
        elif isinstance(step, WebhookStep):
            parts.append((["steps", step_id, "webhook", "body"], step.webhook.body))
            parts.append((["steps", step_id, "webhook"], {"url": step.webhook.url}))
        for base, values in parts:
            for err in check_syntax(values):
                yield source.problem(
                    [*base, *err.field.split(".")],
                    f"template does not parse: {err.reason}",
                    line_in_value=err.line,
                )
