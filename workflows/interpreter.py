"""The journey interpreter: moves one user through a deployed journey's step graph.

This is workflow code (deterministic; time, timers and side effects only through
`temporalio.workflow`), kept out of `workflows.journey` so that the sandbox, which
re-imports the workflow's module for every workflow run, does not compile it again
each time: this module is passed through, and it holds no mutable module state.

Signal handlers only queue events; the main loop decides what they mean (exit,
goal, the event a `wait_for` step awaits), so all logic runs in one place and in
one order. Side effects are activities with pinned names and idempotency keys
derived from the business identity (installation, journey, user, enrollment, step,
visit).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributePair
from temporalio.exceptions import ActivityError

from rules.expressions import context, holds
from rules.local_time import next_local_time, zone
from workflows import search
from workflows.choices import Choices
from workflows.details import current_details
from workflows.messages import (
    ENDED,
    GENERATION,
    MERGED,
    VARIANT_OUTCOME,
    AdoptInput,
    ArbitrateInput,
    ArbitrationResult,
    DeployedJourney,
    EnterSignal,
    EventSignal,
    HeardEvent,
    IdentifiedSignal,
    JourneyInput,
    JourneyResult,
    JourneyState,
    MigrateSignal,
    Profile,
    ProgressInput,
    SendInput,
    SendResult,
    Status,
    StepVisit,
    UpdateProfileInput,
    WebhookInput,
    WebhookResult,
)
from workflows.retries import LOCAL_TIMEOUT, SEND_RETRY, SIDE_EFFECT_RETRY
from workflows.runtime import WorkflowApi
from workflows.spec import (
    EXIT,
    BranchStep,
    EventMatch,
    ExitStep,
    ExperimentStep,
    Journey,
    SendStep,
    Step,
    UpdateProfileStep,
    WaitFor,
    WaitForStep,
    WaitStep,
    WaitUntil,
    WebhookStep,
    in_segment,
    step_kind,
)

ARBITRATION_PATCH = "central-arbitration"
# A `wait_for` looks back at events heard since the previous wait (histories recorded
# before it only saw events that arrived during the wait).
HEARD_EVENTS_PATCH = "events-between-waits"
# Message ids of journeys started without an installation id (before it existed). It
# is the same in every installation, so those ids repeat once enrollment ids restart.
MESSAGE_NAMESPACE = uuid.UUID("5b1c7e7e-3f53-4c4f-9d0e-6a4c2f1b8a10")
MAX_RECENT_STEPS = 50
MAX_SEEN_EVENTS = 500
MAX_HEARD_EVENTS = 200


@dataclass(frozen=True)
class _Go:
    """A step finished: go to `next` (None ends the journey)."""

    next: str | None
    outcome: str


class _Ended:
    """An exit or goal event ended the journey while a step was running."""


class _Resume:
    """History is long: continue-as-new, then resume this same step."""


class _Migrate:
    """A newer version takes this user in: move at this safe point."""


ENDED_BY_EVENT = _Ended()
RESUME = _Resume()
MIGRATE = _Migrate()
Interrupted = _Ended | _Resume | _Migrate


class JourneyInterpreter:
    """One user's journey: the state, and the loop that moves it through the steps."""

    def __init__(self, input: JourneyInput, runtime: WorkflowApi = workflow) -> None:
        self._rt = runtime
        self._input = input
        self._journey: DeployedJourney = input.journey
        self._spec: Journey = input.journey.spec
        self._state = input.carried or JourneyState(
            step=self._spec.start, assignments=dict(input.assignments)
        )
        if input.carried is None:
            self._remember(input.trigger.message_id)
            self._state.last_event = input.trigger
        self._profile: Profile | None = None
        self._reentries: list[EnterSignal] = []
        # Generation 2 (see workflows.messages.GENERATION): fewer billable actions.
        self._lean = input.generation >= 2
        self._unpublished: dict[str, SearchAttributePair[Any]] = {}
        self._listen()

    # ---- messages -------------------------------------------------------

    def on_event(self, event: EventSignal) -> None:
        """Queue an event; the main loop decides what it means."""
        if self._remember(event.message_id):
            self._state.pending.append(event)

    def on_enter(self, enter: EnterSignal) -> None:
        """Signal-with-start for an enrollment. A new one arriving as we finish re-enters."""
        if enter.enrollment_id != self._input.enrollment_id:
            self._reentries.append(enter)

    def _listen(self) -> None:
        """Which events this version's waits want kept, and whether any looks back."""
        waits = [s.wait_for for s in self._spec.steps.values() if isinstance(s, WaitForStep)]
        self._awaited = {w.event for w in waits}
        self._looks_back = any(w.since is not None for w in waits)

    def on_identified(self, identified: IdentifiedSignal) -> None:
        """The user was merged into another; the main loop follows at a safe point (two
        merges told at once: the adopt step reads whom the user belongs to now)."""
        ends = self._state.identified is not None and self._state.identified.ends
        self._state.identified = identified.model_copy(update={"ends": identified.ends or ends})

    def on_migrate(self, migrate: MigrateSignal) -> None:
        """A newer version takes this user in; the main loop moves them when it is safe."""
        if migrate.version > self._journey.version:
            self._state.migrate_to = max(migrate.version, self._state.migrate_to or 0)

    @property
    def state(self) -> JourneyState:
        return self._state

    # ---- the interpreter --------------------------------------------------

    async def run(self) -> JourneyResult:
        if self._input.carried is None:
            self._describe()
        while self._state.status not in ENDED:
            if self._state.identified is not None:
                await self._follow_identity()
                continue
            if self._state.migrate_to is not None:
                await self._migrate()
                continue
            if self._history_is_long():
                await self._continue_as_new()
            if await self._handle_pending(None) is ENDED_BY_EVENT:
                break
            step_id = self._state.step
            step = self._spec.steps[step_id]
            if not self._state.step_started:
                self._begin(step_id, step)
            result = await self._run_step(step_id, step)
            if isinstance(result, _Migrate):
                continue  # the loop's top moves the user
            if isinstance(result, _Resume):
                await self._continue_as_new()
            if isinstance(result, _Go):
                self._finish_step(step_id, result.outcome)
                if result.next is None:
                    self._end(
                        "completed",
                        "reached the end"
                        if not isinstance(step, ExitStep)
                        else f"exit step '{step_id}'",
                    )
                else:
                    self._state.step = result.next
                    self._state.step_started = False
        self._publish()
        await self._flush()
        await self._rt.wait_condition(self._rt.all_handlers_finished)
        if self._reentries:
            await self._reenter(self._reentries[-1])
        return JourneyResult(
            status=self._state.status,
            end_reason=self._state.end_reason,
            steps=sum(self._state.visits.values()),
            messages_sent=self._state.messages_sent,
        )

    async def _run_step(self, step_id: str, step: Step) -> _Go | Interrupted:
        match step:
            case WaitStep(wait=wait, next=following):
                if self._state.wake_at is None:
                    self._state.wake_at = await self._wake_time(wait)
                waited = await self._wait(self._state.wake_at, None)
                if not isinstance(waited, str):
                    return waited
                self._end_wait()
                return _Go(following, f"waited until {self._state.wake_at.isoformat()}")
            case WaitForStep(wait_for=wait_for):
                if self._state.wake_at is None:
                    self._state.wake_at = self._rt.now() + wait_for.timeout
                    self._state.waiting_for = wait_for.event
                    if self._patched(HEARD_EVENTS_PATCH) and (
                        heard := await self._heard_match(wait_for)
                    ):
                        self._state.last_event = heard.event
                        self._end_wait()
                        return _Go(wait_for.on_event, f"got {wait_for.event} (heard earlier)")
                waited = await self._wait(self._state.wake_at, wait_for)
                if not isinstance(waited, str):
                    return waited
                self._end_wait()
                if waited == "matched":
                    return _Go(wait_for.on_event, f"got {wait_for.event}")
                return _Go(wait_for.on_timeout, f"no {wait_for.event} before timeout")
            case BranchStep(branch=arms):
                context = await self._context()
                for index, arm in enumerate(arms):
                    if holds(arm.when, context):
                        label = f"arm {index + 1}" if arm.when else "default"
                        return _Go(arm.next, f"{label}: {arm.when or 'no condition held'}")
                raise AssertionError("validation guarantees a default arm")
            case ExperimentStep(experiment=experiment):
                name = await self._choices().variant(experiment)
                variant = next(v for v in experiment.variants if v.name == name)
                return _Go(variant.next, f"{VARIANT_OUTCOME}{name}")
            case SendStep():
                return await self._send(step_id, step)
            case UpdateProfileStep(update_profile=update, next=following):
                await self._side_effect(
                    "update_profile",
                    UpdateProfileInput(
                        user_id=self._user_id,
                        set=update.set,
                        unset=update.unset,
                        context=await self._context(),
                    ),
                    None,
                )
                self._profile = None
                changed = sorted([*update.set, *update.unset])
                return _Go(following, "updated " + ", ".join(changed))
            case WebhookStep(webhook=hook, next=following):
                try:
                    result = await self._side_effect(
                        "call_webhook",
                        WebhookInput(
                            request_id=self._idempotency_key(step_id),
                            url=hook.url,
                            method=hook.method,
                            body=hook.body,
                            headers=hook.headers,
                            context=await self._context(),
                        ),
                        WebhookResult,
                    )
                except ActivityError as exc:
                    return _Go(following, f"failed: {_cause(exc)}")
                return _Go(following, f"answered {result.status_code}")
            case ExitStep():
                return _Go(None, "exit")
        raise AssertionError(f"unknown step kind {step_kind(step)}")

    def _choices(self) -> Choices:
        return Choices(
            self._journey.key, self._user_id, self._input.enrollment_id,
            self._state.assignments, self._rt, self._lean,
        )  # fmt: skip

    async def _send(self, step_id: str, step: SendStep) -> _Go | Interrupted:
        send = step.send
        template = await self._choices().template(send)
        request = SendInput(
            message_id=self._idempotency_key(step_id),
            enrollment_id=self._input.enrollment_id,
            journey_key=self._journey.key,
            version=self._journey.version,
            journey_name=self._spec.name,
            category=self._spec.category.value,
            priority=self._spec.priority,
            user_id=self._user_id,
            step=step_id,
            channels=[c.value for c in send.channel_order],
            template_name=template,
            template=self._journey.templates[template],
            tags=send.tags,
            value=send.value,
            recommendations=send.content.recommendations if send.content else None,
            event=self._state.last_event,
            requested_at=self._state.recent_steps[-1].at,
        )
        if self._lean:
            return await self._arbitrated_send(step, request)
        # Journeys recorded before central arbitration went straight to delivery.
        if self._rt.patched(ARBITRATION_PATCH):
            while True:
                if request.user_id != self._user_id:  # merged while deferred
                    request = request.model_copy(update={"user_id": self._user_id})
                try:
                    # A local activity: a decision takes milliseconds, and a round trip
                    # through the server's task queue would add more than that.
                    decision: ArbitrationResult = await self._rt.execute_local_activity(
                        "arbitrate_message",
                        ArbitrateInput(message=request, now=self._rt.now()),
                        result_type=ArbitrationResult,
                        start_to_close_timeout=LOCAL_TIMEOUT,
                        retry_policy=SIDE_EFFECT_RETRY,
                    )
                except ActivityError as exc:
                    return _Go(step.next, f"failed: {_cause(exc)}")
                if decision.action == "send":
                    request = request.model_copy(update={"channel": decision.channel})
                    break
                if decision.action == "suppress":
                    return _Go(step.next, f"suppressed: {decision.reason}")
                assert decision.until is not None
                if interrupted := await self._deferred(request, decision.until, decision.reason):
                    return interrupted
        try:
            result = await self._deliver(request)
        except ActivityError as exc:
            return _Go(step.next, f"failed: {_cause(exc)}")
        return self._sent(step, result)

    async def _arbitrated_send(self, step: SendStep, request: SendInput) -> _Go | Interrupted:
        """Generation 2: one activity asks arbitration and delivers; a deferral comes
        back from it, and a durable timer (during which exits and goals still count)
        waits until it is asked again."""
        while True:
            request = request.model_copy(
                update={"user_id": self._user_id, "arbitrate_at": self._rt.now()}
            )  # the user may have been merged into another while deferred
            try:
                result = await self._deliver(request)
            except ActivityError as exc:
                return _Go(step.next, f"failed: {_cause(exc)}")
            if result.outcome != "deferred":
                return self._sent(step, result)
            assert result.until is not None
            assert result.reason is not None
            if interrupted := await self._deferred(request, result.until, result.reason):
                return interrupted

    async def _deferred(
        self, request: SendInput, until: datetime, reason: str
    ) -> Interrupted | None:
        """A deferred send's durable timer, during which exits and goals still count;
        None when it is time to ask again."""
        self._state.deferred = reason
        waited = await self._wait(until, None)
        self._state.deferred = None
        if isinstance(waited, _Migrate):
            # The new version decides anew: this request gives up its place.
            await self._rt.execute_local_activity(
                "withdraw_message", request.message_id,
                start_to_close_timeout=LOCAL_TIMEOUT, retry_policy=SIDE_EFFECT_RETRY,
            )  # fmt: skip
        return None if isinstance(waited, str) else waited

    async def _deliver(self, request: SendInput) -> SendResult:
        result: SendResult = await self._rt.execute_activity(
            "send_message",
            request,
            result_type=SendResult,
            start_to_close_timeout=timedelta(seconds=60),
            schedule_to_close_timeout=timedelta(days=1),
            # The activity heartbeats: a worker dying mid-delivery is noticed in 10 s.
            heartbeat_timeout=timedelta(seconds=10),
            retry_policy=SEND_RETRY,
            summary=f"send {request.template_name} to {request.user_id}",
        )
        return result

    def _sent(self, step: SendStep, result: SendResult) -> _Go:
        if result.outcome == "delivered":
            self._state.messages_sent += 1
            return _Go(step.next, f"delivered on {result.channel}")
        return _Go(step.next, f"suppressed: {result.reason}")

    # ---- waiting and events ----------------------------------------------------

    async def _wait(self, deadline: datetime, wait_for: WaitFor | None) -> str | Interrupted:
        """Wait for the deadline or a matching event: 'matched', 'timeout', or interrupted
        (ended by an event, resume after continue-as-new, move to a newer version)."""
        self._set_status("waiting")
        self._publish()
        self._describe()
        await self._flush()
        outcome = await self._wait_loop(deadline, wait_for)
        # Not in a `finally`: when a cached workflow is evicted, the coroutine is closed
        # and no workflow call may run any more.
        if self._state.status == "waiting":
            self._set_status("running")
        return outcome

    async def _wait_loop(self, deadline: datetime, wait_for: WaitFor | None) -> str | Interrupted:
        while True:
            handled = await self._handle_pending(wait_for)
            if handled is not None:
                return handled
            if self._state.migrate_to is not None:
                return MIGRATE
            if self._state.identified is not None:
                await self._follow_identity()
                if self._state.status in ENDED:
                    return ENDED_BY_EVENT
                continue
            if self._history_is_long():
                return RESUME
            remaining = deadline - self._rt.now()
            if remaining <= timedelta(0):
                return "timeout"
            try:
                await self._rt.wait_condition(
                    lambda: (
                        bool(self._state.pending)
                        or self._state.migrate_to is not None
                        or self._state.identified is not None
                    ),
                    timeout=remaining,
                )
            except TimeoutError:
                self._profile = None  # time has passed: read the profile afresh
                return "timeout"
            self._profile = None

    async def _handle_pending(self, wait_for: WaitFor | None) -> str | _Ended | None:
        """Consume queued events in order: a goal or exit ends; an awaited event matches."""
        while self._state.pending:
            event = self._state.pending.pop(0)
            goal = self._spec.goal
            in_window = goal is not None and self._rt.now() - self._input.entered_at <= goal.within
            if goal is not None and in_window and await self._matches(goal, event):
                self._state.converted_at = self._state.converted_at or self._rt.now()
                if goal.exit:
                    self._end("converted", f"goal {goal.event}")
                    return ENDED_BY_EVENT
            for match in self._spec.exit_on:
                if await self._matches(match, event):
                    self._end("exited", f"exit on {event.name}")
                    return ENDED_BY_EVENT
            if event.name in self._awaited:
                self._hear(event)
            if wait_for is not None and await self._matches(wait_for, event):
                self._state.last_event = event
                return "matched"
        return None

    def _end_wait(self) -> None:
        """A wait ended: later waits look back no further, unless one says `since`."""
        self._state.wait_mark = self._state.heard_count
        if not self._looks_back:
            self._state.heard.clear()

    def _hear(self, event: EventSignal) -> None:
        """Keep an event a later `wait_for` may look back at."""
        self._state.heard_count += 1
        heard = HeardEvent(seq=self._state.heard_count, at=self._rt.now(), event=event)
        self._state.heard.append(heard)
        del self._state.heard[:-MAX_HEARD_EVENTS]

    async def _heard_match(self, wait_for: WaitFor) -> HeardEvent | None:
        """The first event heard within the wait's look-back that it matches."""
        since = wait_for.since
        for heard in self._state.heard:
            if since is None and heard.seq <= self._state.wait_mark:
                continue
            if isinstance(since, timedelta) and heard.at < self._rt.now() - since:
                continue
            if await self._matches(wait_for, heard.event):
                return heard
        return None

    async def _matches(self, match: EventMatch | WaitFor, event: EventSignal) -> bool:
        if event.name != match.event or not in_segment(match.segment, event.properties):
            return False
        # A keyed journey hears only its own instance's events (its cart's, say).
        key = self._input.instance
        if (
            key
            and not match.any_instance
            and self._spec.instance_of(await self._context(event)) != key
        ):
            return False
        if match.where is None:
            return True
        return holds(match.where, await self._context(event))

    # ---- following the user through identify and alias -----------------------

    @property
    def _user_id(self) -> str:
        """Who the journey runs for now (message ids keep the id it entered as)."""
        return self._state.user_id or self._input.user_id

    async def _follow_identity(self) -> None:
        """Continue as the user ours was merged into. The merge moved this journey's data
        already; doing it again moves what a step running at that moment wrote since."""
        identified, self._state.identified = self._state.identified, None
        assert identified is not None
        user: str = await self._rt.execute_local_activity(
            "adopt_user",
            AdoptInput(source=identified.merged_from, target=identified.user_id),
            result_type=str,
            start_to_close_timeout=LOCAL_TIMEOUT,
            retry_policy=SIDE_EFFECT_RETRY,
        )
        self._state.user_id, self._profile = user, None
        self._set_attribute(search.USER_ID.value_set(user))
        self._publish()  # ops search by user: the Temporal UI names the known user at once
        if identified.ends:
            self._end("exited", MERGED)
        else:
            self._describe()

    # ---- moving to a newer version --------------------------------------------

    async def _migrate(self) -> None:
        """Move onto the version that asked, as its `migrate` maps this user's step.

        Called between steps or from inside a wait (which then ends here). A wait moved
        to a wait of the same kind keeps the time already waited; any other step starts
        afresh on the new version (a deferred send asks arbitration again)."""
        assert self._state.migrate_to is not None
        version, self._state.migrate_to = self._state.migrate_to, None
        new: DeployedJourney = await self._rt.execute_local_activity(
            "load_journey_version",
            args=[self._journey.key, version],
            result_type=DeployedJourney,
            start_to_close_timeout=LOCAL_TIMEOUT,
        )
        rule = new.spec.migrate
        if rule is None or self._journey.version not in rule.from_:
            return  # that version does not take this one's users
        old_id, old_step = self._state.step, self._spec.steps[self._state.step]
        target = rule.target(old_id, new.spec.steps)
        began = self._state.recent_steps[-1].at if self._state.step_started else None
        moved = f"moved to version {version}: " + (
            f"step '{target}'" if target not in (None, EXIT) else "exit"
        )
        if began is not None:
            self._finish_step(old_id, moved)
        self._journey, self._spec = new, new.spec
        self._input = self._input.model_copy(update={"journey": new})
        self._listen()
        self._set_attribute(search.JOURNEY_VERSION.value_set(version))
        if target is None or target == EXIT:
            self._end("exited", f"{moved} from '{old_id}'")
            return
        new_step = self._spec.steps[target]
        self._state.step, self._state.step_started = target, False
        kept = _kept_wait(old_step, new_step)
        if began is not None and kept is not None:
            self._begin(target, new_step)
            self._state.wake_at = began + kept
            if isinstance(new_step, WaitForStep):
                self._state.waiting_for = new_step.wait_for.event
        self._describe()

    # ---- helpers ------------------------------------------------------------

    async def _wake_time(self, wait: timedelta | WaitUntil) -> datetime:
        now = self._rt.now()
        if isinstance(wait, timedelta):
            return now + wait
        if wait.timezone == "user":
            traits = (await self._user()).traits
            tz = zone(traits.get("timezone"), self._input.default_timezone)
        else:
            tz = zone(wait.timezone, self._input.default_timezone)
        return next_local_time(now, wait.until, tz)

    async def _user(self) -> Profile:
        if self._profile is None:
            self._profile = await self._rt.execute_local_activity(
                "load_profile",
                self._user_id,
                result_type=Profile,
                start_to_close_timeout=LOCAL_TIMEOUT,
            )
        return self._profile

    async def _context(self, event: EventSignal | None = None) -> dict[str, Any]:
        profile = await self._user()
        journey = {
            "key": self._journey.key,
            "version": self._journey.version,
            "name": self._spec.name,
            "step": self._state.step,
            "entered_at": self._input.entered_at.isoformat(),
        }
        return context(profile.user_id, profile.traits, event or self._state.last_event, journey)

    async def _side_effect(self, name: str, arg: Any, result_type: type | None) -> Any:
        return await self._rt.execute_activity(
            name,
            arg,
            result_type=result_type,
            start_to_close_timeout=timedelta(seconds=30),
            schedule_to_close_timeout=timedelta(hours=1),
            retry_policy=SIDE_EFFECT_RETRY,
        )

    def _idempotency_key(self, step_id: str) -> str:
        # No `self._rt.patched()`: the namespace comes from the input, which a replay
        # reads back from history, and inputs recorded without one keep the old one.
        namespace = self._input.installation_id or MESSAGE_NAMESPACE
        visit = self._state.visits.get(step_id, 0)
        name = f"{self._journey.key}:{self._input.user_id}:{self._input.enrollment_id}"
        return str(uuid.uuid5(namespace, f"{name}:{step_id}:{visit}"))

    def _remember(self, message_id: str) -> bool:
        """Record an event id; False if it was seen already (a re-delivered signal)."""
        seen = self._state.seen_event_ids
        if message_id in seen:
            return False
        seen.append(message_id)
        del seen[:-MAX_SEEN_EVENTS]
        return True

    def _begin(self, step_id: str, step: Step) -> None:
        visit = self._state.visits.get(step_id, 0) + 1
        self._state.visits[step_id] = visit
        self._state.step_started = True
        self._state.wake_at = None
        self._state.waiting_for = None
        record = StepVisit(
            step=step_id, kind=step_kind(step) or "?", visit=visit, at=self._rt.now()
        )
        self._state.recent_steps.append(record)
        del self._state.recent_steps[:-MAX_RECENT_STEPS]
        self._state.unrecorded.append(record)
        self._set_attribute(search.JOURNEY_STEP.value_set(step_id))
        self._describe()

    def _finish_step(self, step_id: str, outcome: str) -> None:
        current = self._state.recent_steps[-1]
        done = current.model_copy(update={"outcome": outcome})
        self._state.recent_steps[-1] = done
        self._state.unrecorded = [
            v for v in self._state.unrecorded if (v.step, v.visit) != (step_id, current.visit)
        ]
        self._state.unrecorded.append(done)
        self._state.wake_at = None
        self._state.waiting_for = None

    def _end(self, status: Status, reason: str) -> None:
        self._state.end_reason = reason
        self._set_status(status)
        self._describe()

    def _set_status(self, status: Status) -> None:
        if status != self._state.status:
            self._state.status = status
            self._set_attribute(search.JOURNEY_STATUS.value_set(status))

    def _set_attribute(self, update: Any) -> None:
        """Generation 1 upserts at once; 2 keeps it for `_publish`, where the user rests."""
        if self._lean:
            self._unpublished[update.key.name] = update
        else:
            self._rt.upsert_search_attributes([update])

    def _publish(self) -> None:
        """Upsert what changed since the user last rested, in one command (one action)."""
        if self._unpublished:
            self._rt.upsert_search_attributes(list(self._unpublished.values()))
            self._unpublished.clear()

    def _patched(self, patch: str) -> bool:
        """Generation 2 journeys started after every patch: no version markers."""
        return self._lean or self._rt.patched(patch)

    async def _flush(self) -> None:
        """Store step visits and the enrollment's status in Postgres (for re-entry and reports)."""
        ended = self._state.status in ENDED
        if not self._state.unrecorded and not ended:
            return
        await self._rt.execute_local_activity(
            "record_progress",
            ProgressInput(
                enrollment_id=self._input.enrollment_id,
                visits=self._state.unrecorded,
                current_step=self._state.step,
                status=self._state.status if ended else None,
                end_reason=self._state.end_reason if ended else None,
                ended_at=self._rt.now() if ended else None,
                converted_at=self._state.converted_at,
                version=self._journey.version,
            ),
            start_to_close_timeout=LOCAL_TIMEOUT,
        )
        self._state.unrecorded = []

    def _history_is_long(self) -> bool:
        info = self._rt.info()
        return bool(
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= self._input.history_limit
        )

    async def _continue_as_new(self) -> None:
        self._publish()
        await self._flush()
        await self._rt.wait_condition(self._rt.all_handlers_finished)
        self._state.runs += 1
        self._rt.continue_as_new(self._input.model_copy(update={"carried": self._state}))

    async def _reenter(self, enter: EnterSignal) -> None:
        """A new enrollment signalled while this one finished: run it in a fresh run."""
        journey = self._journey
        if enter.version != journey.version:
            journey = await self._rt.execute_local_activity(
                "load_journey_version",
                args=[journey.key, enter.version],
                result_type=DeployedJourney,
                start_to_close_timeout=LOCAL_TIMEOUT,
            )
        self._rt.continue_as_new(
            JourneyInput(
                journey=journey,
                user_id=self._input.user_id,
                enrollment_id=enter.enrollment_id,
                entered_at=enter.trigger.timestamp,
                trigger=enter.trigger,
                default_timezone=self._input.default_timezone,
                history_limit=self._input.history_limit,
                installation_id=enter.installation_id or self._input.installation_id,
                instance=self._input.instance,
                generation=GENERATION,
            ),
            search_attributes=self._rt.info().typed_search_attributes.updated(
                SearchAttributePair(search.JOURNEY_VERSION, journey.version),
                SearchAttributePair(search.JOURNEY_STATUS, "running"),
                SearchAttributePair(search.JOURNEY_STEP, journey.spec.start),
            ),
        )

    def _describe(self) -> None:
        """Keep the Temporal UI's details current: where the user is and why."""
        self._rt.set_current_details(current_details(self._input, self._state))


def _kept_wait(old: Step, new: Step) -> timedelta | None:
    """How long the new step waits in all, when it is a wait of the same kind as the old
    (so the time already waited counts); None otherwise."""
    if isinstance(old, WaitForStep) and isinstance(new, WaitForStep):
        return new.wait_for.timeout
    if isinstance(old, WaitStep) and isinstance(new, WaitStep) and isinstance(old.wait, timedelta):
        return new.wait if isinstance(new.wait, timedelta) else None
    return None


def _cause(exc: ActivityError) -> str:
    """The innermost failure's message: what the activity itself raised."""
    cause: BaseException = exc
    while getattr(cause, "cause", None) is not None:
        cause = cause.cause  # type: ignore[attr-defined]
    return str(cause)[:300]
