"""Warnings for journeys that read event properties the tracking plan does not define.

A condition or template that reads `event.properties.coupon` for an event whose plan
lists no `coupon` most likely has a typo, or a plan behind the app: the journey would
see a missing (falsy) value. Which event `event` is depends on where it is read: a
trigger's condition sees the trigger, a wait's, exit's or goal's `where` sees that
event, and a step sees the trigger or the event of any wait whose `on_event` leads
there. Only events the plan defines are checked, and only through `properties` (and
those of `allOf`/`anyOf`/`oneOf` members); a schema that lists none defines none.
Warnings never stop a deploy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from jinja2 import Environment, TemplateSyntaxError, nodes
from pydantic import ValidationError

from orchestrator.sources import InvalidSource, Loc, Problem, Source, load
from orchestrator.tracking_plan.plan import TrackingPlan
from orchestrator.workspace import Workspace
from workflows.spec import (
    BranchStep,
    Journey,
    SendStep,
    UpdateProfileStep,
    WaitForStep,
    WebhookStep,
    successors,
)

WARNING = "warning: "
_PARSER = Environment()  # parsing only: names, filters and tests are not looked up


def journey_warnings(paths: Iterable[Path], workspace: Workspace) -> list[Problem]:
    """The warnings of each valid journey among `paths` (none without a plan)."""
    plan = workspace.tracking_plan
    if plan is None:
        return []
    found: set[Problem] = set()
    for path in paths:
        try:
            source = load(path, display=workspace.display(path))
            journey = Journey.model_validate(source.data)
        except (InvalidSource, ValidationError):
            continue  # validation reports it
        found.update(property_warnings(source, journey, plan, workspace))
    return sorted(found)


def property_warnings(
    source: Source, journey: Journey, plan: TrackingPlan, workspace: Workspace
) -> Iterator[Problem]:
    for loc, events, text, template in _reads(journey, workspace):
        for path in _property_paths(text, template=template):
            for event in sorted(events):
                schema = plan.defines(event)
                if schema is None:
                    continue
                missing = _undefined(schema, path)
                if missing is not None:
                    read = ".".join(["event", "properties", *path])
                    shown = ".".join(missing)
                    yield source.problem(loc, f"{WARNING}{read}: the tracking plan defines no "
                                              f"property '{shown}' for '{event}'")  # fmt: skip


def _reads(journey: Journey, workspace: Workspace) -> Iterator[tuple[Loc, set[str], str, bool]]:
    """(where, the events `event` may be, the text, whether it is a whole template)."""
    trigger = {journey.trigger.event} if journey.trigger.event else set()
    if journey.trigger.when:
        yield ["trigger", "when"], trigger, journey.trigger.when, False
    if journey.instance:
        yield ["instance"], trigger, journey.instance, False
    for i, match in enumerate(journey.exit_on):
        if match.where:
            yield ["exit_on", i, "where"], {match.event}, match.where, False
    if journey.goal is not None and journey.goal.where:
        yield ["goal", "where"], {journey.goal.event}, journey.goal.where, False
    heard = _events_at_steps(journey, trigger)
    for step_id, step in journey.steps.items():
        base: list[str | int] = ["steps", step_id]
        events = heard.get(step_id, set())
        match step:
            case WaitForStep(wait_for=wait) if wait.where:
                yield [*base, "wait_for", "where"], {wait.event}, wait.where, False
            case BranchStep(branch=arms):
                for i, arm in enumerate(arms):
                    if arm.when:
                        yield [*base, "branch", i, "when"], events, arm.when, False
            case SendStep(send=send):
                for name in send.templates:
                    template = workspace.templates.get(name)
                    if template is None:
                        continue
                    for channel in template.channels():
                        for text in _strings(template.fields(channel)):
                            yield [*base, "send", "template"], events, text, True
            case UpdateProfileStep(update_profile=update):
                for text in _strings(update.set):
                    yield [*base, "update_profile", "set"], events, text, True
            case WebhookStep(webhook=hook):
                for text in [hook.url, *_strings(hook.body)]:
                    yield [*base, "webhook"], events, text, True


def _events_at_steps(journey: Journey, trigger: set[str]) -> dict[str, set[str]]:
    """The events `event` may be at each step: the trigger, or the event of a wait that
    led there (a timeout leaves it as it was)."""
    heard: dict[str, set[str]] = {journey.start: set(trigger)}
    queue = deque([journey.start])
    while queue:
        step_id = queue.popleft()
        step = journey.steps.get(step_id)
        if step is None:
            continue
        now = heard[step_id]
        if isinstance(step, WaitForStep):
            onward = [(step.wait_for.on_event, {step.wait_for.event}),
                      (step.wait_for.on_timeout, now)]  # fmt: skip
        else:
            onward = [(target, now) for target in successors(step)]
        for target, events in onward:
            known = heard.setdefault(target, set())
            if not events <= known:
                known |= events
                queue.append(target)
    return heard


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for inner in value.values():
            yield from _strings(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _strings(inner)


def _property_paths(text: str, *, template: bool) -> list[tuple[str, ...]]:
    """The longest `event.properties.a.b` (or `event.properties["a"]`) paths read."""
    try:
        if template:
            if "{" not in text:
                return []
            tree: nodes.Node = _PARSER.parse(text)
        else:
            tree = _PARSER.parse("{{ " + text + " }}")
    except TemplateSyntaxError:
        return []  # validation reports it
    paths: set[tuple[str, ...]] = set()
    # `event.properties.get('items')` reads `items` (the method is not a property).
    methods: set[int] = set()
    for call in tree.find_all(nodes.Call):
        method = call.node
        if isinstance(method, nodes.Getattr) and method.attr == "get" and call.args:
            methods.add(id(method))
            first, base = call.args[0], _chain(method.node)
            if isinstance(first, nodes.Const) and isinstance(first.value, str) and base:
                paths |= _read((*base, first.value))
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if id(node) not in methods and (chain := _chain(node)) is not None:
            paths |= _read(chain)
    return sorted(p for p in paths if not any(o != p and o[: len(p)] == p for o in paths))


def _read(chain: tuple[str, ...]) -> set[tuple[str, ...]]:
    """The property path a chain of names reads, if it reads one."""
    if len(chain) > 2 and chain[:2] == ("event", "properties"):
        return {chain[2:]}
    return set()


def _chain(node: nodes.Node) -> tuple[str, ...] | None:
    parts: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and (isinstance(node.arg.value, str))
        ):
            parts.append(node.arg.value)
            node = node.node
        elif isinstance(node, nodes.Name):
            parts.append(node.name)
            return tuple(reversed(parts))
        else:
            return None


def _undefined(schema: dict[str, Any], path: tuple[str, ...]) -> tuple[str, ...] | None:
    """The first part of `path` the schema does not define (None: defined, or cannot tell)."""
    for depth, name in enumerate(path):
        listed = _properties(schema)
        if listed is None:
            return None if depth else path[:1]
        if name not in listed:
            return path[: depth + 1]
        schema = listed[name] if isinstance(listed[name], dict) else {}
    return None


def _properties(schema: dict[str, Any]) -> dict[str, Any] | None:
    """The properties a schema lists, its composition's included; None when it has no
    `properties` anywhere (a nested object left open: nothing to tell)."""
    found: dict[str, Any] | None = None
    if isinstance(schema.get("properties"), dict):
        found = dict(schema["properties"])
    for key in ("allOf", "anyOf", "oneOf"):
        for member in schema.get(key) or []:
            if isinstance(member, dict) and isinstance(member.get("properties"), dict):
                found = {**(found or {}), **member["properties"]}
    if found is None and schema.get("additionalProperties") is False:
        return {}
    return found
