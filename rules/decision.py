"""One decision for one message: send now on a channel, defer until a time, or suppress.

`decide` is pure: the request, the user's state (profile, contact history, hard
suppressions, other requests competing with this one), the policy and `now` go in; a
decision comes out with every check that was made and why it passed or failed. No
I/O, no clock, no randomness: the same inputs always give the same decision.

The order of checks:

0. The workspace's global control group: its users get no promotional message, so the
   difference all journeys together make can be measured against them.
1. CRM and loyalty rules, in policy order: suppress, reroute, require a channel,
   exempt from caps, change priority.
2. The conflict window (not for transactional messages): the first request opens a
   window for its user; requests arriving inside it are held until it closes, then
   the highest `priority x expected value` wins (ties: earliest request, then key);
   the others are deferred (to compete in a later window) or suppressed as the policy
   says. The winner is chosen on score alone, so every member of a window agrees on it
   whatever order they are decided in. A rival that could never be sent to this user
   (no reachable, consented channel; a rule or the global control group stops it) does
   not compete.
3. Channels in fallback order: the first the user is reachable on, not hard
   suppressed, consented, not a cross-channel duplicate and within every cap.
   Transactional messages skip consent, caps and quiet hours but obey the hard
   suppressions the policy names.
4. Quiet hours in the user's timezone: defer to their end, never drop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from rules.durations import format_duration
from rules.expressions import holds, user_context
from rules.local_time import next_local_time, zone
from rules.policy import Cap, Policy, RequireChannel, Reroute, SetPriority

Action = Literal["send", "defer", "suppress"]
EVERYTHING = "*"
GLOBAL_CONTROL = "global control"
# How the checks of CRM and loyalty rules are named, and what one that did not apply says:
# `Decision.reason` reads them back from stored decisions, which keep only the checks.
RULE = "rule "
NOT_APPLIED = "does not apply"


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A message some journey (or external system) wants to send to one user."""

    key: str  # idempotency key: the same message asked again gets the same answer
    user_id: str
    channels: tuple[str, ...]  # in fallback order
    category: str
    priority: int
    requested_at: datetime
    value: float | None = None
    propensity: float | None = None
    tags: tuple[str, ...] = ()
    journey: str | None = None
    template: str | None = None
    content_key: str | None = None

    @property
    def expected_value(self) -> float:
        return (1.0 if self.value is None else self.value) * (
            1.0 if self.propensity is None else self.propensity
        )

    @property
    def dedupe_key(self) -> str | None:
        return self.content_key or self.template

    def describe(self) -> dict[str, Any]:
        """The `message` that policy rule conditions see."""
        return {
            "key": self.key,
            "channel": self.channels[0] if self.channels else None,
            "channels": list(self.channels),
            "category": self.category,
            "priority": self.priority,
            "value": self.value,
            "propensity": self.propensity,
            "tags": list(self.tags),
            "journey": self.journey,
            "template": self.template,
            "content_key": self.dedupe_key,
        }


@dataclass(frozen=True, slots=True)
class Contact:
    """A message sent (or reserved to be sent) to the user."""

    key: str
    channel: str
    category: str
    sent_at: datetime
    journey: str | None = None
    tags: tuple[str, ...] = ()
    content_key: str | None = None

    @property
    def transactional(self) -> bool:
        return self.category == "transactional"


@dataclass(frozen=True, slots=True)
class Suppressed:
    """A standing stop: `channel` and `category` may be `*` for all."""

    reason: str  # unsubscribe | bounce | complaint | do_not_contact
    channel: str = EVERYTHING
    category: str = EVERYTHING


@dataclass(frozen=True, slots=True)
class Peer:
    """Another request for the same user that holds a place in a conflict window."""

    request: SendRequest
    window_end: datetime


@dataclass(frozen=True)
class UserState:
    traits: Mapping[str, Any]
    contacts: Sequence[Contact] = ()
    suppressions: Sequence[Suppressed] = ()
    peers: Sequence[Peer] = ()
    window_end: datetime | None = None  # this request's conflict window, once it has one
    default_timezone: str = "UTC"
    in_global_control: bool = False


@dataclass(frozen=True, slots=True)
class Check:
    rule: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    action: Action
    channel: str | None = None
    until: datetime | None = None
    window_end: datetime | None = None
    score: float = 0.0
    checks: tuple[Check, ...] = ()

    @property
    def reason(self) -> str:
        """Why, in one line: the checks that failed; when none did, the CRM and loyalty
        rules that acted on the message (a reroute, say), then the check that held it
        (for a deferral); else the last check."""
        shown = [c for c in self.checks if not c.passed]
        if not shown:
            acted = [c for c in self.checks if c.rule.startswith(RULE) and c.detail != NOT_APPLIED]
            held = self.action != "send" or not acted
            shown = acted + [c for c in self.checks[-1:] if held and c not in acted]
        return "; ".join(f"{c.rule}: {c.detail}" for c in shown)


@dataclass
class _Draft:
    """The request as the rules have reshaped it."""

    channels: list[str]
    priority: int
    exempt_from_caps: bool = False
    checks: list[Check] = field(default_factory=list)
    cap_full_until: dict[str, datetime | None] = field(default_factory=dict)
    _newest_first: list[Contact] | None = None

    def newest_first(self, contacts: Sequence[Contact]) -> list[Contact]:
        if self._newest_first is None:
            self._newest_first = sorted(contacts, key=lambda c: c.sent_at, reverse=True)
        return self._newest_first


def decide(request: SendRequest, state: UserState, policy: Policy, now: datetime) -> Decision:
    """The decision for one request; see the module docstring for the order of checks."""
    if _held_out(request, state):
        check = Check(GLOBAL_CONTROL, False, "the user is in the workspace's global control group")
        return Decision("suppress", checks=(check,))
    draft = _apply_rules(request, state, policy)
    checks = draft.checks
    score = draft.priority * request.expected_value
    if not draft.channels:
        return Decision("suppress", score=score, checks=tuple(checks))

    transactional = request.category == "transactional"
    window = timedelta(0) if transactional else policy.window_for(request.category)
    window_end = state.window_end
    if window > timedelta(0):
        if window_end is None:
            open_windows = [p.window_end for p in state.peers if p.window_end > now]
            window_end = min(open_windows) if open_windows else now + window
        if now < window_end:
            checks.append(
                Check(
                    "conflict window", True, f"decided with other requests at {window_end:%H:%M:%S}"
                )
            )
            return Decision("defer", until=window_end, window_end=window_end, score=score,
                            checks=tuple(checks))  # fmt: skip
        lost = _conflict_loser(request, score, state, policy, window_end)
        if lost is not None:
            checks.append(lost)
            until = now + policy.conflicts.defer_losers_by
            if (
                policy.conflicts.losers == "suppress"
                or until - request.requested_at > policy.max_defer
            ):
                return Decision("suppress", window_end=window_end, score=score,
                                checks=tuple(checks))  # fmt: skip
            # Tried again later, it competes in a new window: no window_end is kept.
            return Decision("defer", until=until, score=score, checks=tuple(checks))
        checks.append(Check("conflict window", True, "highest score in its window"))

    chosen, cap_free_at = _choose_channel(request, draft, state, policy, now, transactional)
    if chosen is None:
        if cap_free_at is not None and policy.on_cap == "defer":
            if cap_free_at - request.requested_at <= policy.max_defer:
                checks.append(Check("caps", False, f"deferred until {cap_free_at.isoformat()}"))
                return Decision("defer", until=cap_free_at, window_end=window_end, score=score,
                                checks=tuple(checks))  # fmt: skip
            longest = format_duration(policy.max_defer)
            checks.append(Check("caps", False, f"room comes later than max_defer ({longest})"))
        return Decision("suppress", window_end=window_end, score=score, checks=tuple(checks))

    if not transactional:
        quiet_until = _quiet_until(chosen, state, policy, now)
        if quiet_until is not None:
            checks.append(Check("quiet hours", False, f"{chosen} deferred until "
                                f"{quiet_until.isoformat()} (user's local time)"))  # fmt: skip
            return Decision("defer", until=quiet_until, window_end=window_end, score=score,
                            checks=tuple(checks))  # fmt: skip
        checks.append(Check("quiet hours", True, "outside quiet hours"))
    return Decision("send", channel=chosen, window_end=window_end, score=score,
                    checks=tuple(checks))  # fmt: skip


def _apply_rules(request: SendRequest, state: UserState, policy: Policy) -> _Draft:
    draft = _Draft(channels=list(request.channels), priority=request.priority)
    if not policy.rules:
        return draft
    context = {"user": user_context(request.user_id, state.traits), "message": request.describe()}
    for rule in policy.rules:
        name = f"{RULE}{rule.name}"
        if not holds(rule.when, context):
            draft.checks.append(Check(name, True, NOT_APPLIED))
            continue
        match rule.then:
            case "suppress":
                draft.checks.append(Check(name, False, "suppresses the message"))
                draft.channels = []
                return draft
            case "exempt_from_caps":
                draft.exempt_from_caps = True
                draft.checks.append(Check(name, True, "exempts the message from caps"))
            case Reroute(reroute=channel):
                offered = ", ".join(draft.channels) or "no channel"
                draft.channels = [channel]
                draft.checks.append(Check(name, True, f"rerouted {offered} -> {channel}"))
            case RequireChannel(require_channel=channel):
                if channel not in draft.channels:
                    draft.checks.append(Check(name, False, f"requires {channel}, not offered"))
                    draft.channels = []
                    return draft
                draft.channels = [channel]
                draft.checks.append(Check(name, True, f"requires {channel}"))
            case SetPriority(priority=priority):
                draft.priority = priority
                draft.checks.append(Check(name, True, f"sets priority {priority}"))
    return draft


def _effective_priority(request: SendRequest, state: UserState, policy: Policy) -> int:
    priority = request.priority
    if any(isinstance(rule.then, SetPriority) for rule in policy.rules):
        context = {"user": user_context(request.user_id, state.traits),
                   "message": request.describe()}  # fmt: skip
        for rule in policy.rules:
            if isinstance(rule.then, SetPriority) and holds(rule.when, context):
                priority = rule.then.priority
    return priority


def _conflict_loser(
    request: SendRequest, score: float, state: UserState, policy: Policy, window_end: datetime
) -> Check | None:
    """A failed check if another request in the same window beats this one. A rival that
    could never be sent to this user (no reachable, consented channel; a rule suppresses
    it) wins nothing: it would hold this one back for no message at all."""
    rivals = [
        p.request
        for p in state.peers
        if p.window_end == window_end and _deliverable(p.request, state, policy)
    ]
    best: tuple[float, datetime, str, SendRequest] = (score, request.requested_at, request.key,
                                                      request)  # fmt: skip
    for rival in rivals:
        rival_score = _effective_priority(rival, state, policy) * rival.expected_value
        candidate = (rival_score, rival.requested_at, rival.key, rival)
        # Higher score wins; then the earlier request; then the smaller key.
        if (-candidate[0], candidate[1], candidate[2]) < (-best[0], best[1], best[2]):
            best = candidate
    if best[3] is request:
        return None
    winner = best[3]
    return Check(
        "conflict window", False,
        f"lost to {winner.journey or winner.key} (score {best[0]:g} against {score:g})",
    )  # fmt: skip


def _held_out(request: SendRequest, state: UserState) -> bool:
    return state.in_global_control and request.category == "promotional"


def _deliverable(request: SendRequest, state: UserState, policy: Policy) -> bool:
    """Whether some channel of the request could reach the user, caps and time aside."""
    if _held_out(request, state):
        return False
    draft = _apply_rules(request, state, policy)
    transactional = request.category == "transactional"
    for channel in draft.channels:
        needed = policy.reachability.get(channel)
        if needed and not state.traits.get(needed):
            continue
        if _hard_suppressions(request, channel, state, policy, transactional):
            continue
        if not transactional and _consent_problem(request, channel, state, policy):
            continue
        return True
    return False


def _choose_channel(
    request: SendRequest,
    draft: _Draft,
    state: UserState,
    policy: Policy,
    now: datetime,
    transactional: bool,
) -> tuple[str | None, datetime | None]:
    """The first allowed channel; else None, and the earliest time a channel that only caps
    stand in the way of has room again (None if no channel is only capped)."""
    cap_free_at: datetime | None = None
    for channel in draft.channels:
        failures = _channel_failures(request, channel, draft, state, policy, now, transactional)
        if not failures:
            draft.checks.append(Check(f"channel {channel}", True, "allowed"))
            return channel, None
        draft.checks.extend(check for check, _ in failures)
        frees = [free_at for _, free_at in failures]
        if all(free_at is not None for free_at in frees):
            latest = max(f for f in frees if f is not None)  # every cap must have room
            cap_free_at = latest if cap_free_at is None else min(cap_free_at, latest)
    return None, cap_free_at


def _channel_failures(
    request: SendRequest,
    channel: str,
    draft: _Draft,
    state: UserState,
    policy: Policy,
    now: datetime,
    transactional: bool,
) -> list[tuple[Check, datetime | None]]:
    """Every reason `channel` may not be used now (with when a cap frees, for caps)."""
    traits = state.traits
    failures: list[tuple[Check, datetime | None]] = []
    name = f"channel {channel}"
    needed = policy.reachability.get(channel)
    if needed and not traits.get(needed):
        failures.append((Check(name, False, f"not reachable: the profile has no {needed}"), None))
    for reason in _hard_suppressions(request, channel, state, policy, transactional):
        failures.append((Check(name, False, f"suppressed: {reason}"), None))
    if not transactional:
        if problem := _consent_problem(request, channel, state, policy):
            failures.append((Check(name, False, problem), None))
        dedupe_key = request.dedupe_key
        if dedupe_key is not None and policy.dedupe.window:
            since = now - policy.dedupe.window
            for contact in state.contacts:
                if (
                    contact.content_key == dedupe_key
                    and contact.channel != channel
                    and contact.sent_at > since
                    and contact.key != request.key
                ):
                    detail = f"duplicate: {dedupe_key} went out on {contact.channel}"
                    failures.append((Check(name, False, detail), None))
                    break
        if not draft.exempt_from_caps:
            for cap in policy.caps:
                if not _cap_applies(cap, channel, request):
                    continue
                if cap.name not in draft.cap_full_until:  # the same for every channel
                    draft.cap_full_until[cap.name] = _cap_full_until(
                        cap, draft.newest_first(state.contacts), now
                    )
                if free_at := draft.cap_full_until[cap.name]:
                    detail = f"cap {cap.name} reached ({cap.max} per {format_duration(cap.window)})"
                    failures.append((Check(name, False, detail), free_at))
    return failures


def _hard_suppressions(
    request: SendRequest, channel: str, state: UserState, policy: Policy, transactional: bool
) -> list[str]:
    obeyed = set(policy.suppression.transactional_obeys) if transactional else None
    reasons = []
    if state.traits.get(policy.suppression.do_not_contact_trait):
        reasons.append("do_not_contact")
    for stop in state.suppressions:
        if stop.reason == "unsubscribe":
            continue  # a matter of consent, below
        if stop.channel in (channel, EVERYTHING) and stop.category in (
            request.category,
            EVERYTHING,
        ):
            reasons.append(stop.reason)
    return [r for r in dict.fromkeys(reasons) if obeyed is None or r in obeyed]


def _consent_problem(
    request: SendRequest, channel: str, state: UserState, policy: Policy
) -> str | None:
    for stop in state.suppressions:
        if (
            stop.reason == "unsubscribe"
            and stop.channel in (channel, EVERYTHING)
            and stop.category in (request.category, EVERYTHING)
        ):
            return f"unsubscribed from {stop.category} {stop.channel} messages".replace("*", "all")
    given = state.traits.get(policy.consent.trait)
    answer = given.get(channel) if isinstance(given, Mapping) else None
    if isinstance(answer, Mapping):
        answer = answer.get(request.category)
    mode = policy.consent.channels.get(channel, "opt_out")
    if answer is False:
        return f"no consent for {request.category} {channel}"
    if mode == "opt_in" and answer is not True:
        return f"{channel} needs opt-in consent"
    return None


def _cap_applies(cap: Cap, channel: str, request: SendRequest) -> bool:
    return (
        (cap.channel is None or cap.channel == channel)
        and (cap.category is None or cap.category == request.category)
        and (cap.journey is None or cap.journey == request.journey)
        and (cap.tag is None or cap.tag in request.tags)
    )


def _cap_full_until(cap: Cap, newest_first: Sequence[Contact], now: datetime) -> datetime | None:
    """None when the cap has room; else when its oldest counted contact leaves the window
    (the `max`-th newest counted contact, so the scan stops there)."""
    if cap.max == 0:
        return now + cap.window  # nothing may go out within any window
    since = now - cap.window
    seen = 0
    for c in newest_first:
        if c.sent_at <= since:
            break
        if (
            (cap.counts_transactional or c.category != "transactional")
            and (cap.channel is None or cap.channel == c.channel)
            and (cap.category is None or cap.category == c.category)
            and (cap.journey is None or cap.journey == c.journey)
            and (cap.tag is None or cap.tag in c.tags)
        ):
            seen += 1
            if seen == cap.max:
                return c.sent_at + cap.window
    return None


def _quiet_until(channel: str, state: UserState, policy: Policy, now: datetime) -> datetime | None:
    if not policy.quiet_hours:
        return None
    tz = zone(state.traits.get(policy.timezone_trait), state.default_timezone)
    local = now.astimezone(tz).strftime("%H:%M")
    for quiet in policy.quiet_hours:
        if channel not in quiet.channels:
            continue
        inside = (
            quiet.start <= local < quiet.end
            if quiet.start < quiet.end
            else local >= quiet.start or local < quiet.end  # across midnight
        )
        if inside:
            return next_local_time(now, quiet.end, tz)
    return None
