"""What a journey's deployed spec says about its randomised choices: which keys there
are and of what kind, their arms, configured shares and control, and the steps in the
order the journey reads. The reports and `experiments evaluate-policy` both ask here.

UnknownReport
└── no such journey, or no such experiment in it
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.reports import store
from orchestrator.tables import assignments, journey_versions, journeys
from workflows.spec import ExperimentStep, Journey, SendStep, successors

Kind = Literal["holdout", "experiment", "template", "global_control"]


class UnknownReport(LookupError):
    """No such journey or experiment."""


def _current() -> Select[tuple[str, Any]]:
    """Each journey's key and the spec of its current version."""
    return select(journey_versions.c.journey_key, journey_versions.c.spec).join(
        journeys,
        (journeys.c.key == journey_versions.c.journey_key)
        & (journeys.c.current_version == journey_versions.c.version),
    )


async def journey_spec(conn: AsyncConnection, journey: str) -> Journey:
    found = (await conn.execute(_current().where(journeys.c.key == journey))).one_or_none()
    if found is None:
        known = (await conn.execute(select(journeys.c.key).order_by(journeys.c.key))).scalars()
        raise UnknownReport(f"no journey {journey!r} (known: {', '.join(known) or 'none'})")
    return Journey.model_validate(found.spec)


def randomises(step: Any, key: str) -> bool:
    """Whether the step draws for experiment `key` (an experiment, a template test)."""
    if isinstance(step, ExperimentStep):
        return step.experiment.key == key
    if isinstance(step, SendStep) and step.send.variants is not None:
        return step.send.variants.key == key
    return False


def configured(spec: Journey) -> list[tuple[Kind, str]]:
    found: list[tuple[Kind, str]] = []
    for step in spec.steps.values():
        if isinstance(step, ExperimentStep):
            found.append(("experiment", step.experiment.key))
        elif isinstance(step, SendStep) and step.send.variants is not None:
            found.append(("template", step.send.variants.key))
    return found


async def journey_of(conn: AsyncConnection, key: str) -> str:
    """The journey whose experiment `key` is (`holdout` needs its journey named)."""
    found = set(
        (
            await conn.execute(
                select(assignments.c.journey_key)
                .where(assignments.c.experiment_key == key, assignments.c.journey_key != "*")
                .distinct()
            )
        ).scalars()
    )
    for row in await conn.execute(_current()):
        if any(k == key for _, k in configured(Journey.model_validate(row.spec))):
            found.add(row.journey_key)
    if len(found) != 1:
        where = f"in {', '.join(sorted(found))}: name one with --journey" if found else "anywhere"
        raise UnknownReport(f"experiment {key!r} is {where}" if found else f"no experiment {key!r}")
    return str(found.pop())


async def kind_of(conn: AsyncConnection, spec: Journey | None, journey: str, key: str) -> Kind:
    """What kind of randomised choice `key` names in the journey, if just one."""
    logged = await store.assignment_keys(conn, journey=journey)
    kinds: set[Kind] = {k["kind"] for k in logged if k["experiment_key"] == key}
    if spec is not None:
        kinds |= {kind for kind, k in configured(spec) if k == key}
        if key == "holdout" and spec.holdout:
            kinds.add("holdout")
    if len(kinds) != 1:
        known = {k["experiment_key"] for k in logged}
        if spec is not None:
            known |= {k for _, k in configured(spec)} | ({"holdout"} if spec.holdout else set())
        raise UnknownReport(f"no experiment {key!r} in journey {journey!r} "
                            f"(known: {', '.join(sorted(known)) or 'none'})")  # fmt: skip
    return next(iter(kinds))


def design(
    spec: Journey | None,
    kind: Kind,
    key: str,
    logged: Sequence[str],
    global_control: float,
) -> tuple[list[str], dict[str, float] | None, str]:
    """The arms in order (configured ones, then any only in the `logged` arms), their
    configured shares and the control arm."""
    if kind in ("holdout", "global_control"):
        percent = spec.holdout if kind == "holdout" and spec else global_control
        shares = {"control": percent / 100, "treatment": 1 - percent / 100} if percent else None
        return ["control", "treatment"], shares, "control"
    arms: list[str] = []
    shares = None
    for step in spec.steps.values() if spec else ():
        if not randomises(step, key):
            continue
        if isinstance(step, ExperimentStep):
            weights = {v.name: float(v.weight) for v in step.experiment.variants}
            arms = list(weights)
            shares = {a: w / sum(weights.values()) for a, w in weights.items()}
        elif isinstance(step, SendStep) and step.send.variants is not None:
            arms = [step.send.template, *step.send.variants.templates]
    arms += [a for a in dict.fromkeys(logged) if a not in arms]  # arms since removed
    if shares is not None and set(arms) != set(shares):
        shares = None  # the split changed since: no one set of shares to check against
    control = "control" if "control" in arms else (arms[0] if arms else "control")
    return arms or ["control"], shares, control


def journey_order(spec: Journey) -> list[str]:
    """Steps from the start, breadth first, as the journey reads."""
    order, queue = [], [spec.start]
    while queue:
        step = queue.pop(0)
        if step in order or step not in spec.steps:
            continue
        order.append(step)
        queue.extend(successors(spec.steps[step]))
    return order + sorted(set(spec.steps) - set(order))
