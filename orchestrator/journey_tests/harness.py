"""Running one journey test: the real workflow and activities on Temporal's time-skipping
test server, with storage, arbitration state, channels and the catalogue held in memory.

What is real: the interpreter, `JourneyActivities` (the order of operations of a send),
`decide` with the workspace's policy, template rendering by the real channel adapters,
the ranking baseline, starting a journey as the router does. What is not: Postgres
(the store is a dict), the providers (a delivery is captured), a webhook step's call
(answered 200 on the spot), the ranking model (the popularity baseline of the
workspace's catalogue answers, as it does when a model is missing).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

import httpx
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from channels.adapters import ChannelDeps, build_channels
from channels.base import Channel, DeliveryRequest, Receipt, Rendered
from channels.ranking import Recommender, ScoredItem
from channels.unsubscribe import UnsubscribeLinks
from orchestrator.catalog import read_items, template_item
from orchestrator.enrollment import Entry, as_signal, start_journey
from orchestrator.event_store import StoredEvent
from orchestrator.journey_tests.cases import JourneyTest
from orchestrator.routing import journey_context
from orchestrator.simulation import MemoryArbitration
from orchestrator.temporal import journey_worker
from orchestrator.workspace import Workspace
from rules.decision import Contact, Decision, SendRequest, Suppressed
from rules.expressions import holds
from rules.policy import Policy
from workflows import search
from workflows.activities import JourneyActivities, MessageRecord
from workflows.assignment import in_holdout, pick_variant
from workflows.messages import (
    ArbitrateInput,
    ArbitrationResult,
    ChooseVariantInput,
    DeployedJourney,
    JourneyState,
    ProgressInput,
    SendInput,
    StepVisit,
)
from workflows.spec import AUDIENCE_EVENT, ReEntryAfter, in_segment

CATALOG_FILE = "catalog.csv"
# Message ids are drawn in this namespace: the same test gives the same ids every run.
TEST_INSTALLATION = uuid.UUID("00000000-0000-4000-8000-7e57000e7e57")


@dataclass(frozen=True)
class SentMessage:
    at: timedelta  # after the test's start
    step: str
    channel: str
    template: str
    content: dict[str, Any]

    @property
    def text(self) -> str:
        return json.dumps(self.content, ensure_ascii=False)


@dataclass(frozen=True)
class Held:
    """A suppression or deferral, at a step."""

    step: str
    reason: str
    at: timedelta


@dataclass
class Actual:
    """What happened to the test user."""

    entered: bool = False
    held_out: bool = False
    messages: list[SentMessage] = field(default_factory=list)
    suppressed: list[Held] = field(default_factory=list)
    deferred: list[Held] = field(default_factory=list)
    failed: list[Held] = field(default_factory=list)  # a send or webhook that failed
    steps: list[str] = field(default_factory=list)
    status: str | None = None
    end_reason: str | None = None
    converted: bool = False
    variants: dict[str, str] = field(default_factory=dict)
    instances: dict[str, str] = field(default_factory=dict)  # a keyed journey's, by key


class MemoryStore:
    """The `JourneyStore` of a test: one user's profile, their messages and visits."""

    def __init__(self, profiles: dict[str, dict[str, Any]], versions: list[DeployedJourney]):
        self.profiles = profiles
        self.versions = {(d.key, d.version): d for d in versions}
        self.visits: dict[tuple[int, str, int], StepVisit] = {}  # in first-seen order
        self.messages: dict[str, tuple[SendInput, Rendered, str]] = {}

    async def load_profile(self, user_id: str) -> dict[str, Any]:
        return dict(self.profiles.get(user_id, {}))

    async def update_traits(
        self, user_id: str, *, set: Mapping[str, Any], unset: Sequence[str]
    ) -> None:
        traits = self.profiles.setdefault(user_id, {})
        traits.update(set)
        for name in unset:
            traits.pop(name, None)

    async def record_progress(self, progress: ProgressInput) -> None:
        for visit in progress.visits:
            self.visits[(progress.enrollment_id, visit.step, visit.visit)] = visit

    async def load_version(self, journey_key: str, version: int) -> DeployedJourney:
        return self.versions[(journey_key, version)]

    async def prepare_send(
        self, message_id: str, user_id: str
    ) -> tuple[MessageRecord | None, dict[str, Any]]:
        known = self.messages.get(message_id)
        record = None
        if known is not None:
            _, rendered, status = known
            record = MessageRecord(status, rendered.channel, None, None, rendered.content)  # type: ignore[arg-type]
        return record, await self.load_profile(user_id)

    async def claim_message(self, request: SendInput, rendered: Rendered) -> None:
        self.messages.setdefault(request.message_id, (request, rendered, "sending"))

    async def mark_sent(self, message_id: str, receipt: Receipt) -> None:
        request, rendered, _ = self.messages[message_id]
        self.messages[message_id] = (request, rendered, "sent")

    async def choose_variant(self, choice: ChooseVariantInput) -> str:
        # No one has converted in a test: a bandit's draw is an even, sticky split.
        hashed = f"{choice.journey_key}/{choice.experiment_key}"
        return choice.variants[pick_variant(hashed, choice.user_id, [1] * len(choice.variants))]

    async def mark_failed(
        self, message_id: str, *, error: str, status_code: int | None, final: bool
    ) -> None:
        if message_id in self.messages:
            request, rendered, _ = self.messages[message_id]
            self.messages[message_id] = (request, rendered, "failed")


class MemoryArbiter:
    def __init__(self, arbitration: MemoryArbitration) -> None:
        self.arbitration = arbitration

    async def arbitrate(self, request: SendRequest, *, now: datetime) -> Decision:
        return self.arbitration.decide(request, now)

    async def withdraw(self, key: str) -> None:
        self.arbitration.withdraw(key)


class MemoryBox:
    async def put(self, rendered: Rendered, *, expires_at: datetime) -> None:
        return None


class CapturedChannel:
    """A real adapter's content, captured instead of delivered."""

    name: ClassVar[str] = "captured"

    def __init__(self, inner: Channel) -> None:
        self.inner = inner

    async def build(self, request: DeliveryRequest) -> Rendered:
        return await self.inner.build(request)

    async def deliver(self, rendered: Rendered, *, idempotency_key: str) -> Receipt:
        return Receipt(
            message_id=rendered.message_id,
            channel=rendered.channel,
            status_code=202,
            accepted_at=datetime.now().astimezone(),
        )


class MemoryCatalog:
    """The workspace's catalogue file, most popular first in file order."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = {item["id"]: item for item in items}
        count = len(items) or 1
        self.ranked = [ScoredItem(item_id=i, score=1 - n / count) for n, i in enumerate(self.items)]

    async def ready(self) -> None:
        return None

    def describe(self, item_ids: Sequence[str]) -> list[dict[str, Any]]:
        return [self.items[i] for i in item_ids if i in self.items]

    def popular(self, k: int, exclude: Collection[str]) -> list[ScoredItem]:
        return [s for s in self.ranked if s.item_id not in exclude][:k]

    async def purchased(self, user_id: str) -> set[str]:
        return set()


class RecordingActivities(JourneyActivities):
    """The journey's activities, recording each arbitration decision with its step."""

    decisions: list[tuple[datetime, ArbitrateInput, ArbitrationResult]]

    async def arbitrated(self, message: SendInput, *, now: datetime) -> ArbitrationResult:
        result = await super().arbitrated(message, now=now)
        self.decisions.append((now, ArbitrateInput(message=message, now=now), result))
        return result


def workspace_catalog(workspace: Workspace) -> list[dict[str, Any]]:
    """The available items of the workspace's catalogue file (the one `orchestrator dev`
    loads), as templates see them, most popular first in file order."""
    path = workspace.root / CATALOG_FILE
    return [template_item(i) for i in read_items(path) if i.available] if path.exists() else []


def _answer_webhooks(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"ok": True})


def webhook_client() -> httpx.AsyncClient:
    """An HTTP client whose every request is answered 200 on the spot: nothing leaves."""
    return httpx.AsyncClient(transport=httpx.MockTransport(_answer_webhooks))


def captured_activities(
    workspace: Workspace,
    *,
    store: MemoryStore,
    arbitration: MemoryArbitration,
    catalog: list[dict[str, Any]],
    http: httpx.AsyncClient,
) -> RecordingActivities:
    """The journey's real activities over memory: the workspace's channel adapters
    render, deliveries are captured, the catalogue's baseline fills recommendations."""
    config = workspace.config
    links = config.links.unsubscribe_links() or UnsubscribeLinks(
        base_url="http://127.0.0.1", secret="journey-tests"
    )
    deps = ChannelDeps(
        box=MemoryBox(), links=links, recommender=Recommender(catalog=MemoryCatalog(catalog))
    )
    channels = build_channels({name.value: None for name in config.channels}, deps)
    activities = RecordingActivities(
        store=store,
        channels={name: CapturedChannel(c) for name, c in channels.items()},
        http=http,
        arbiter=MemoryArbiter(arbitration),
        webhook_secret=(config.webhooks.signing_secret if config.webhooks else None)
        or "journey-tests",
    )
    activities.decisions = []
    return activities


@dataclass
class Harness:
    """What every test of a run shares: the workspace, its journeys and catalogue."""

    workspace: Workspace
    deployed: dict[str, DeployedJourney]
    catalog: list[dict[str, Any]]

    @classmethod
    def for_workspace(cls, workspace: Workspace, deployed: dict[str, DeployedJourney]) -> Harness:
        return cls(workspace, deployed, workspace_catalog(workspace))

    async def run(self, env: WorkflowEnvironment, journey_key: str, test: JourneyTest) -> Actual:
        deployed = self.deployed[journey_key]
        config = self.workspace.config
        policy = Policy.model_validate(test.policy) if test.policy else self.workspace.policy
        user = test.user.id
        now = await env.get_current_time()
        start = test.start_after(now)
        await env.sleep(start - now)
        profiles = {user: dict(test.user.traits)}
        store = MemoryStore(profiles, [deployed])
        arbitration = MemoryArbitration(
            policy,
            traits=lambda u: profiles.get(u, {}),
            suppressions={user: [Suppressed(s.reason, s.channel, s.category)
                                 for s in test.suppressions]},
            contacts={user: [
                Contact(key=f"earlier-{n}", channel=c.channel.value, category=c.category,
                        sent_at=start - c.ago, journey=c.journey, tags=tuple(c.tags))
                for n, c in enumerate(test.contacts)
            ]},
            default_timezone=config.default_timezone,
        )  # fmt: skip
        async with webhook_client() as http:
            activities = captured_activities(
                self.workspace, store=store, arbitration=arbitration, catalog=self.catalog,
                http=http,
            )  # fmt: skip
            queue = f"journey-test-{uuid.uuid4().hex[:8]}"
            async with journey_worker(env.client, task_queue=queue, activities=activities.all()):
                run = _Run(
                    env.client, queue, deployed, test, profiles, start, config.default_timezone
                )
                for index, item in enumerate(sorted(test.events, key=lambda i: i.at)):
                    await _sleep_until(env, start + item.at)
                    if item.traits is not None:
                        profiles[user].update(item.traits)
                    else:
                        assert item.event is not None
                        await run.happen(
                            index, item.event, item.properties, await env.get_current_time()
                        )
                await env.sleep(test.run_for)
                states = await run.states()
        return _actual(run, states, store, activities, start)


async def _sleep_until(env: WorkflowEnvironment, when: datetime) -> None:
    delta = when - await env.get_current_time()
    if delta > timedelta(0):
        await env.sleep(delta)


@dataclass
class Enrolled:
    at: datetime
    instance: str
    held_out: bool
    converted: bool = False
    # An enrollment from before a preview's period: it blocks entries as the router's
    # would (and its instance runs until `ended_at`), but is not the period's.
    before: bool = False
    ended_at: datetime | None = None


class EntryRules:
    """Who enters a journey and who converts, as the router decides it: the trigger (and
    its conditions), a keyed journey's key, the re-entry policy (the user's, across
    instances), one running instance per key, the holdout; a goal event converts every
    enrollment of its user still within the goal's window, ended or held out too. Journey
    tests and previews use it."""

    def __init__(self, deployed: DeployedJourney) -> None:
        self.deployed = deployed
        self.entries: dict[str, list[Enrolled]] = {}

    def instance(self, event: StoredEvent, traits: dict[str, Any]) -> str | None:
        """The instance the event would enter ('' for an unkeyed journey); None if it is
        not this journey's trigger (or a keyed journey's trigger without its key)."""
        spec = self.deployed.spec
        trigger_event = AUDIENCE_EVENT if spec.trigger.audience else spec.trigger.event
        if event.name != trigger_event or not in_segment(spec.trigger.segment, event.properties):
            return None
        context = journey_context(event, traits, self.deployed)
        if not holds(spec.trigger.when, context) or not holds(spec.audience, context):
            return None
        return spec.instance_of(context) if spec.instance else ""

    def may_enter(self, user: str, now: datetime, instance: str, running: bool) -> bool:
        """`running`: the user's instance for this key is still inside."""
        policy, entries = self.deployed.spec.re_entry, self.entries.get(user, [])
        running = running or any(
            e.before and e.instance == instance and (e.ended_at is None or e.ended_at > now)
            for e in entries
        )
        if running or (entries and policy == "never"):
            return False
        last = entries[-1].at if entries else None
        return not (isinstance(policy, ReEntryAfter) and last and now - last < policy.after)

    def enter(self, user: str, now: datetime, instance: str) -> bool:
        """Record an entry; False if the user is in the holdout (no workflow)."""
        held_out = in_holdout(self.deployed.key, user, self.deployed.spec.holdout)
        self.entries.setdefault(user, []).append(Enrolled(now, instance, held_out))
        return not held_out

    def convert(self, event: StoredEvent, traits: dict[str, Any], now: datetime) -> None:
        """Record the conversions a goal event makes (see `Router._notify`)."""
        spec, goal = self.deployed.spec, self.deployed.spec.goal
        if goal is None or event.name != goal.event:
            return
        if not in_segment(goal.segment, event.properties):
            return
        context = journey_context(event, traits, self.deployed)
        if not holds(goal.where, context):
            return
        key = spec.instance_of(context) if spec.instance and not goal.any_instance else None
        for entry in self.entries.get(event.user_id, []):
            mine = key is None or entry.instance == key
            if mine and not entry.converted and now - entry.at <= goal.within:
                entry.converted = True

    def converted(self) -> int:
        """How many of the entries (not those from before) converted."""
        found = (e for entries in self.entries.values() for e in entries if not e.before)
        return sum(e.converted for e in found)


class _Run:
    """Routes the test's events like the router: enter on the trigger (an instance per
    key, for a keyed journey), tell running workflows the events their journey hears."""

    def __init__(
        self,
        client: Client,
        queue: str,
        deployed: DeployedJourney,
        test: JourneyTest,
        profiles: dict[str, dict[str, Any]],
        start: datetime,
        default_timezone: str,
    ) -> None:
        self.client, self.queue, self.deployed, self.test = client, queue, deployed, test
        self.profiles, self.start, self.default_timezone = profiles, start, default_timezone
        self.rules = EntryRules(deployed)
        self.started: list[str] = []  # instances with a workflow, first entry first
        self.held_out = False

    @property
    def entered(self) -> bool:
        return bool(self.rules.entries)

    async def happen(
        self, index: int, name: str, properties: dict[str, Any], now: datetime
    ) -> None:
        user = self.test.user.id
        event = StoredEvent(index + 1, f"test-event-{index + 1}", name, user, properties, now)
        # As the router: an event that enters the user is not also news to the journey.
        if not await self._enter(event, now):
            self.rules.convert(event, self.profiles[user], now)
            if name in self.deployed.spec.interesting_events():
                for started in self.started:  # each workflow decides if it is its key's
                    if await self._running(started):
                        await self._handle(started).signal("event", as_signal(event))

    async def _enter(self, event: StoredEvent, now: datetime) -> bool:
        user = event.user_id
        instance = self.rules.instance(event, self.profiles[user])
        if instance is None:
            return False
        running = instance in self.started and await self._running(instance)
        if not self.rules.may_enter(user, now, instance, running):
            return False
        if not self.rules.enter(user, now, instance):
            self.held_out = True
            return True
        await start_journey(
            self.client,
            Entry(self.deployed, event, len(self.rules.entries[user]), now, instance),
            task_queue=self.queue,
            default_timezone=self.default_timezone,
            history_limit=2000,
            installation_id=TEST_INSTALLATION,
            assignments=self.test.variants,
        )
        if instance not in self.started:
            self.started.append(instance)
        return True

    def _handle(self, instance: str) -> Any:
        workflow_id = search.workflow_id(self.deployed.key, self.test.user.id, instance)
        return self.client.get_workflow_handle(workflow_id)

    async def _running(self, instance: str) -> bool:
        description = await self._handle(instance).describe()
        return bool(description.status == WorkflowExecutionStatus.RUNNING)

    async def states(self) -> dict[str, JourneyState]:
        """Each instance's state, in the order they first entered."""
        found = {}
        for instance in self.started:
            found[instance] = await self._handle(instance).query("state", result_type=JourneyState)
        return found


def _actual(
    run: _Run,
    states: dict[str, JourneyState],
    store: MemoryStore,
    activities: RecordingActivities,
    start: datetime,
) -> Actual:
    sent_at = {
        arbitrate.message.message_id: at
        for at, arbitrate, result in activities.decisions
        if result.action == "send"
    }
    messages = [
        SentMessage(
            at=sent_at.get(message_id, start) - start,
            step=request.step,
            channel=rendered.channel,
            template=request.template_name,
            content=rendered.content,
        )
        for message_id, (request, rendered, status) in store.messages.items()
        if status == "sent"
    ]
    visits = list(store.visits.values())
    suppressed = [
        Held(v.step, v.outcome.removeprefix("suppressed: "), v.at - start)
        for v in visits
        if v.outcome and v.outcome.startswith("suppressed: ")
    ]
    failed = [
        Held(v.step, v.outcome.removeprefix("failed: "), v.at - start)
        for v in visits
        if v.outcome and v.outcome.startswith("failed: ")
    ]
    deferred = [
        Held(arbitrate.message.step, result.reason, at - start)
        for at, arbitrate, result in activities.decisions
        if result.action == "defer"
    ]
    actual = Actual(
        entered=run.entered,
        converted=run.rules.converted() > 0,
        held_out=run.held_out,
        messages=sorted(messages, key=lambda m: m.at),
        suppressed=suppressed,
        deferred=deferred,
        failed=failed,
        steps=[v.step for v in visits],
    )
    if states:
        # The journey's status is its last instance's; `instances` has each one's.
        last = list(states.values())[-1]
        actual.status, actual.end_reason = last.status, last.end_reason
        actual.variants = {k: v for s in states.values() for k, v in s.assignments.items()}
        actual.instances = {key: s.status for key, s in states.items() if key}
    return actual
