"""A contact policy compiled once for `decide`, which runs for every message.

What a policy says does not change between decisions, so the work that depends on the
policy alone is done once per policy object and kept beside it:

- the CRM and loyalty rules' conditions become one generated function
  (`rules.condition_code`), and the check each rule adds when it does not apply, or
  acts, is made once;
- each cap becomes a generated function that counts only what its filters name (a cap
  that counts every message of a window reads one contact of the newest-first history
  instead of scanning it), with the detail of its failed check made once;
- which caps apply to a message is looked up once per kind of message (channel,
  category, journey, tags).

`decide` asks `compiled(policy)`; the results are the same as reading the policy
afresh (`tests/rules/test_decision.py` and `test_condition_code.py` compare them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from rules.checks import NOT_APPLIED, RULE, Check
from rules.condition_code import Tests, compile_tests
from rules.durations import format_duration
from rules.expressions import POLICY_NAMES
from rules.policy import Cap, Policy, RequireChannel, Reroute, SetPriority

RuleKind = Literal["suppress", "exempt_from_caps", "reroute", "require_channel", "priority"]
# Kinds of message seen (channel, category, journey, tags) kept per policy; past this
# the table starts again, so a caller inventing journeys cannot grow it for ever.
_KINDS_KEPT = 4096


@dataclass(frozen=True, slots=True)
class CompiledRule:
    kind: RuleKind
    name: str  # as checks name it: "rule <name>"
    skipped: Check  # what it adds when its condition does not hold
    acted: Check | None  # what it adds when it acts (reroute's depends on the message)
    channel: str | None = None  # reroute, require_channel
    priority: int = 0  # priority


@dataclass(frozen=True, slots=True)
class CompiledCap:
    name: str
    detail: str  # of the check a reached cap fails
    full_until: Callable[[Sequence[Any], datetime], datetime | None]


class CompiledPolicy:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        conditions = [rule.when for rule in policy.rules]
        stops = frozenset(i for i, rule in enumerate(policy.rules) if rule.then == "suppress")
        # Up to the first suppression that holds (nothing after it matters to the message)...
        self.tests: Tests = compile_tests(conditions, POLICY_NAMES, stop_after=stops)
        # ...or all of them (what priority a rival competes with).
        self.all_tests: Tests = compile_tests(conditions, POLICY_NAMES)
        self.rules = tuple(_rule(rule.name, rule.then) for rule in policy.rules)
        self.none_applied = tuple(rule.skipped for rule in self.rules)
        self.sets_priority = any(rule.kind == "priority" for rule in self.rules)
        self._caps = [(cap, _compile_cap(cap)) for cap in policy.caps]
        self._caps_by_kind: dict[tuple[str, str, str | None, tuple[str, ...]],
                                 tuple[CompiledCap, ...]] = {}  # fmt: skip

    def caps_for(
        self, channel: str, category: str, journey: str | None, tags: tuple[str, ...]
    ) -> tuple[CompiledCap, ...]:
        """The caps that count a message of this kind on `channel`, in policy order."""
        kind = (channel, category, journey, tags)
        found = self._caps_by_kind.get(kind)
        if found is None:
            if len(self._caps_by_kind) >= _KINDS_KEPT:
                self._caps_by_kind.clear()
            found = self._caps_by_kind[kind] = tuple(
                compiled
                for cap, compiled in self._caps
                if (cap.channel is None or cap.channel == channel)
                and (cap.category is None or cap.category == category)
                and (cap.journey is None or cap.journey == journey)
                and (cap.tag is None or cap.tag in tags)
            )
        return found


_compiled: dict[int, CompiledPolicy] = {}
_POLICIES_KEPT = 64


def compiled(policy: Policy) -> CompiledPolicy:
    """The policy compiled, made on first use. Kept by identity: a policy is frozen, and
    the entry holds the policy itself, so its id cannot be reused while it is kept."""
    found = _compiled.get(id(policy))
    if found is not None and found.policy is policy:
        return found
    if len(_compiled) >= _POLICIES_KEPT:
        _compiled.clear()
    found = _compiled[id(policy)] = CompiledPolicy(policy)
    return found


def _rule(name: str, then: Any) -> CompiledRule:
    named = f"{RULE}{name}"
    skipped = Check(named, True, NOT_APPLIED)
    match then:
        case "suppress":
            return CompiledRule("suppress", named, skipped,
                                Check(named, False, "suppresses the message"))  # fmt: skip
        case "exempt_from_caps":
            return CompiledRule("exempt_from_caps", named, skipped,
                                Check(named, True, "exempts the message from caps"))  # fmt: skip
        case Reroute(reroute=channel):
            return CompiledRule("reroute", named, skipped, None, channel=channel)
        case RequireChannel(require_channel=channel):
            acted = Check(named, True, f"requires {channel}")
            return CompiledRule("require_channel", named, skipped, acted, channel=channel)
        case SetPriority(priority=priority):
            return CompiledRule("priority", named, skipped,
                                Check(named, True, f"sets priority {priority}"),
                                priority=priority)  # fmt: skip
    raise ValueError(f"unknown rule action {then!r}")


def _compile_cap(cap: Cap) -> CompiledCap:
    """`full_until(newest_first, now)`: None when the cap has room; else when its oldest
    counted contact leaves the window (the `max`-th newest counted contact)."""
    detail = f"cap {cap.name} reached ({cap.max} per {format_duration(cap.window)})"
    namespace: dict[str, Any] = {"WINDOW": cap.window, "timedelta": timedelta}
    filters = [] if cap.counts_transactional else ["c.category != 'transactional'"]
    if cap.channel is not None:
        filters.append(f"c.channel == {cap.channel!r}")
    if cap.category is not None:
        filters.append(f"c.category == {cap.category!r}")
    if cap.journey is not None:
        filters.append(f"c.journey == {cap.journey!r}")
    if cap.tag is not None:
        filters.append(f"{cap.tag!r} in c.tags")
    if cap.max == 0:
        body = ["    return now + WINDOW"]  # nothing may go out within any window
    elif not filters:  # every contact counts: the max-th newest is the one
        body = [
            f"    if len(newest) >= {cap.max}:",
            f"        c = newest[{cap.max - 1}]",
            "        if c.sent_at > now - WINDOW:",
            "            return c.sent_at + WINDOW",
            "    return None",
        ]
    else:
        body = [
            "    since = now - WINDOW",
            "    seen = 0",
            "    for c in newest:",
            "        if c.sent_at <= since:",
            "            break",
            f"        if {' and '.join(filters)}:",
            "            seen += 1",
            f"            if seen == {cap.max}:",
            "                return c.sent_at + WINDOW",
            "    return None",
        ]
    source = "\n".join(["def full_until(newest, now):", *body])
    exec(compile(source, f"<cap {cap.name}>", "exec"), namespace)
    return CompiledCap(cap.name, detail, namespace["full_until"])
