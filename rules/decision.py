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
from operator import attrgetter
from typing import Any, Literal

from rules.checks import NOT_APPLIED, RULE, Check

__all__ = [
    "EVERYTHING", "GLOBAL_CONTROL", "NOT_APPLIED", "RULE", "Action", "Check", "Contact",
    "Decision", "Peer", "SendRequest", "Suppressed", "UserState", "decide",
]  # fmt: skip
from rules.compiled_policy import compiled
from rules.durations import format_duration
from rules.expressions import user_context
from rules.local_time import next_local_time, zone
from rules.policy import CHANNELS, Policy

Action = Literal["send", "defer", "suppress"]
EVERYTHING = "*"
GLOBAL_CONTROL = "global control"


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


_sent_at = attrgetter("sent_at")
_NO_TIME = timedelta(0)
_UNKNOWN: Any = object()
# Checks every decision may add, made once.
_HIGHEST_IN_WINDOW = Check("conflict window", True, "highest score in its window")
_OUTSIDE_QUIET_HOURS = Check("quiet hours", True, "outside quiet hours")
_ALLOWED: dict[str, Check] = {c: Check(f"channel {c}", True, "allowed") for c in CHANNELS}


def _allowed(channel: str) -> Check:
    return _ALLOWED.get(channel) or Check(f"channel {channel}", True, "allowed")


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
            self._newest_first = sorted(contacts, key=_sent_at, reverse=True)
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
    window = _NO_TIME if transactional else policy.conflicts.windows.get(request.category, _NO_TIME)
    window_end = state.window_end
    if window > _NO_TIME:
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
        checks.append(_HIGHEST_IN_WINDOW)

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
        checks.append(_OUTSIDE_QUIET_HOURS)
    return Decision("send", channel=chosen, window_end=window_end, score=score,
                    checks=tuple(checks))  # fmt: skip


def _apply_rules(request: SendRequest, state: UserState, policy: Policy) -> _Draft:
    draft = _Draft(channels=list(request.channels), priority=request.priority)
    if not policy.rules:
        return draft
    rules = compiled(policy)
    results = rules.tests(user_context(request.user_id, state.traits), request.describe())
    if not any(results):
        draft.checks = list(rules.none_applied)
        return draft
    checks = draft.checks
    for rule, held in zip(rules.rules, results, strict=False):  # stops at a suppression
        if not held:
            checks.append(rule.skipped)
            continue
        kind = rule.kind
        if kind == "suppress":
            checks.append(rule.acted)  # type: ignore[arg-type]
            draft.channels = []
            return draft
        if kind == "exempt_from_caps":
            draft.exempt_from_caps = True
            checks.append(rule.acted)  # type: ignore[arg-type]
        elif kind == "reroute":
            offered = ", ".join(draft.channels) or "no channel"
            draft.channels = [rule.channel]  # type: ignore[list-item]
            checks.append(Check(rule.name, True, f"rerouted {offered} -> {rule.channel}"))
        elif kind == "require_channel":
            if rule.channel not in draft.channels:
                checks.append(Check(rule.name, False, f"requires {rule.channel}, not offered"))
                draft.channels = []
                return draft
            draft.channels = [rule.channel]
            checks.append(rule.acted)  # type: ignore[arg-type]
        else:
            draft.priority = rule.priority
            checks.append(rule.acted)  # type: ignore[arg-type]
    return draft


def _effective_priority(request: SendRequest, state: UserState, policy: Policy) -> int:
    priority = request.priority
    rules = compiled(policy)
    if rules.sets_priority:
        results = rules.all_tests(user_context(request.user_id, state.traits),
                                  request.describe())  # fmt: skip
        for rule, held in zip(rules.rules, results, strict=True):
            if held and rule.kind == "priority":
                priority = rule.priority
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
            draft.checks.append(_allowed(channel))
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
        if not draft.exempt_from_caps and policy.caps:
            caps = compiled(policy).caps_for(channel, request.category, request.journey,
                                             request.tags)  # fmt: skip
            if caps:
                newest = draft.newest_first(state.contacts)
                full_until = draft.cap_full_until
                for cap in caps:
                    free_at = full_until.get(cap.name, _UNKNOWN)
                    if free_at is _UNKNOWN:  # the same for every channel
                        free_at = full_until[cap.name] = cap.full_until(newest, now)
                    if free_at:
                        failures.append((Check(name, False, cap.detail), free_at))
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
    if not reasons:
        return reasons
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
    answer = given.get(channel) if given is not None and isinstance(given, Mapping) else None
    if isinstance(answer, Mapping):
        answer = answer.get(request.category)
    mode = policy.consent.channels.get(channel, "opt_out")
    if answer is False:
        return f"no consent for {request.category} {channel}"
    if mode == "opt_in" and answer is not True:
        return f"{channel} needs opt-in consent"
    return None


def _quiet_until(channel: str, state: UserState, policy: Policy, now: datetime) -> datetime | None:
    if not policy.quiet_hours:
        return None
    tz = zone(state.traits.get(policy.timezone_trait), state.default_timezone)
    clock = now.astimezone(tz)
    local = f"{clock.hour:02d}:{clock.minute:02d}"
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
