"""Replaying send requests against a policy, in memory, to try a change before deploying it.

A traffic file (YAML or JSON) lists users with their traits and requests with their
time; every request is decided by the same pure `decide` the service uses, in time
order, deferred ones coming back at their time, exactly as the store would hold them
(their conflict window, sends counting towards caps).

    users:
      ada: {email: ada@example.com, device_tokens: [t1], timezone: Europe/Paris}
    suppressions:
      - {user: ada, reason: unsubscribe, channel: email, category: promotional}
    requests:
      - {at: "2026-11-26T09:00:00Z", user: ada, journey: cart, channels: [push, email],
         category: promotional, priority: 70, template: cart_reminder, value: 25}
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.arbitration import MessageFields
from rules.decision import Contact, Decision, Peer, SendRequest, Suppressed, UserState, decide
from rules.policy import Policy, SuppressionReason


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrafficRequest(MessageFields):
    at: datetime
    user: str = Field(min_length=1)
    journey: str | None = None
    key: str | None = None


class TrafficSuppression(_Strict):
    user: str
    reason: SuppressionReason
    channel: str = "*"
    category: str = "*"


class Traffic(_Strict):
    """A traffic file."""

    users: dict[str, dict[str, Any]] = Field(default_factory=dict)
    suppressions: list[TrafficSuppression] = Field(default_factory=list)
    requests: list[TrafficRequest] = Field(min_length=1)


@dataclass(frozen=True)
class Outcome:
    at: datetime
    request: SendRequest
    decision: Decision


class MemoryArbitration:
    """Arbitration held in memory: the same `decide`, with the contact history and
    conflict windows kept as the store keeps them (a send counts towards caps, a request
    holds its place in its window). `simulate`, journey tests and previews use it."""

    def __init__(
        self,
        policy: Policy,
        *,
        traits: Callable[[str], Mapping[str, Any]],
        suppressions: Mapping[str, Sequence[Suppressed]] | None = None,
        contacts: Mapping[str, Sequence[Contact]] | None = None,
        default_timezone: str = "UTC",
    ) -> None:
        self.policy, self.traits, self.default_timezone = policy, traits, default_timezone
        self.suppressions = dict(suppressions or {})
        self.contacts = {user: list(sent) for user, sent in (contacts or {}).items()}
        # user -> request key -> the end of the request's conflict window
        self._windows: dict[str, dict[str, datetime]] = {}
        self._requests: dict[str, SendRequest] = {}

    def decide(self, request: SendRequest, now: datetime) -> Decision:
        self._requests[request.key] = request
        user = request.user_id
        windows = self._windows.setdefault(user, {})
        state = UserState(
            traits=self.traits(user),
            # (a preview loads history up to its period's end: none of it is news yet)
            contacts=[c for c in self.contacts.get(user, []) if c.sent_at <= now],
            suppressions=self.suppressions.get(user, ()),
            peers=[
                Peer(self._requests[key], end) for key, end in windows.items() if key != request.key
            ],
            window_end=windows.get(request.key),
            default_timezone=self.default_timezone,
        )
        decision = decide(request, state, self.policy, now)
        if decision.window_end is not None:
            windows[request.key] = decision.window_end
        else:
            windows.pop(request.key, None)
        if decision.action == "send" and decision.channel is not None:
            self.contacts.setdefault(user, []).append(
                Contact(
                    key=request.key,
                    channel=decision.channel,
                    category=request.category,
                    sent_at=now,
                    journey=request.journey,
                    tags=request.tags,
                    content_key=request.dedupe_key,
                )
            )
        return decision

    def withdraw(self, key: str) -> None:
        """The request is no longer made: it leaves its conflict window."""
        request = self._requests.get(key)
        if request is not None:
            self._windows.get(request.user_id, {}).pop(key, None)


def simulate(traffic: Traffic, policy: Policy, *, default_timezone: str = "UTC") -> list[Outcome]:
    """Every decision the requests get, in time order (a deferred request appears again)."""
    queue: list[tuple[datetime, int, SendRequest]] = []
    for index, item in enumerate(traffic.requests):
        at = item.at
        request = item.send_request(
            key=item.key or f"request-{index + 1}", user_id=item.user, source=item.journey, at=at
        )
        heapq.heappush(queue, (at, index, request))
    suppressions: dict[str, list[Suppressed]] = {}
    for s in traffic.suppressions:
        suppressions.setdefault(s.user, []).append(Suppressed(s.reason, s.channel, s.category))
    arbitration = MemoryArbitration(
        policy, traits=lambda user: traffic.users.get(user, {}), suppressions=suppressions,
        default_timezone=default_timezone,
    )  # fmt: skip
    outcomes: list[Outcome] = []
    while queue:
        if len(outcomes) > 100 * len(traffic.requests):
            raise RuntimeError("the policy keeps deferring: stopped after 100 decisions a request")
        now, order, request = heapq.heappop(queue)
        decision = arbitration.decide(request, now)
        outcomes.append(Outcome(now, request, decision))
        if decision.action == "defer" and decision.until is not None:
            heapq.heappush(queue, (decision.until, order, request))
    return outcomes
