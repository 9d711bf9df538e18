"""`JourneyWorkflow`: one user's way through one deployed journey version.

Workflow id `journey:<journey>:<user>` (the user it entered as). Events arrive by the
`event` signal, a start by signal-with-start's `enter`, a merge of its user into another
by `identified`; the `state` query shows where the user is. The logic
lives in `workflows.interpreter` (see there why).
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.interpreter import JourneyInterpreter
    from workflows.messages import (
        EnterSignal,
        EventSignal,
        IdentifiedSignal,
        JourneyInput,
        JourneyResult,
        JourneyState,
        MigrateSignal,
    )


@workflow.defn(name="JourneyWorkflow")
class JourneyWorkflow:
    @workflow.init
    def __init__(self, input: JourneyInput) -> None:
        self._journey = JourneyInterpreter(input)

    @workflow.signal(name="event")
    def on_event(self, event: EventSignal) -> None:
        """Queue an event; the interpreter's loop decides what it means."""
        self._journey.on_event(event)

    @workflow.signal(name="enter")
    def on_enter(self, enter: EnterSignal) -> None:
        """Signal-with-start for an enrollment; a new one arriving as we finish re-enters."""
        self._journey.on_enter(enter)

    @workflow.signal(name="migrate")
    def on_migrate(self, migrate: MigrateSignal) -> None:
        """A newer version takes this user in; the move happens at the next safe point."""
        self._journey.on_migrate(migrate)

    @workflow.signal(name="identified")
    def on_identified(self, identified: IdentifiedSignal) -> None:
        """The user was merged into another (identify or alias): the journey follows."""
        self._journey.on_identified(identified)

    @workflow.query(name="state")
    def state(self) -> JourneyState:
        return self._journey.state

    @workflow.run
    async def run(self, input: JourneyInput) -> JourneyResult:
        return await self._journey.run()
